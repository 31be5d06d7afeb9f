// Shared description of the two soft-DTW recursions (see kernels/soft_dtw.py, soft_dtw).
//
// Both variants are computed on one padded grid R[rows][cols]; column 0 (and, for
// "standard", row 0) holds fixed boundary values, every other cell is
//     R[r][c] = D(r, c) + softmin_gamma(preds(r, c))
// where preds are a subset of up (r-1, c), left (r, c-1), diag (r-1, c-1).
//   standard: rows = N+1, cols = M+1, D(r,c) = cost[r-1][c-1], all three preds,
//             R[0][0] = 0, R[0][c>0] = R[r>0][0] = +inf.
//   otam:     rows = N, cols = M+2 (a zero column padded on both sides of M),
//             D(r,c) = cost[r][c-1] for c <= M and 0 in the last column,
//             row 0 has only `left` (softmin of one value = the value: a cumulative
//             sum), columns 1 and M+1 all three preds, columns 2..M diag + left;
//             R[r][0] = 0.
// The result is R[rows-1][cols-1]. A missing pred is read as +inf, which gives it a
// soft-min weight of exactly 0, so one code path serves both variants.
//
// Kernel code only: no Python, no ATen, so both g++ and nvcc compile it.
#pragma once

#ifdef __CUDACC__
#define SDTW_HD __host__ __device__ __forceinline__
#else
#define SDTW_HD inline
#endif

namespace tap_fast {
namespace sdtw {

enum Variant : int { kStandard = 0, kOtam = 1 };

enum PredMask : int { kUp = 1, kLeft = 2, kDiag = 4 };

struct Grid {
  int n;  // cost rows
  int m;  // cost columns
  Variant variant;

  SDTW_HD int rows() const { return variant == kStandard ? n + 1 : n; }
  SDTW_HD int cols() const { return variant == kStandard ? m + 1 : m + 2; }
  // First grid row whose cells are computed (row 0 of "standard" is boundary).
  SDTW_HD int first_row() const { return variant == kStandard ? 1 : 0; }
  // Cost row feeding grid row r.
  SDTW_HD int cost_row(int r) const { return variant == kStandard ? r - 1 : r; }
  // Whether grid column c (>= 1) reads cost column c-1 (the otam pad column does not).
  SDTW_HD bool has_cost(int c) const { return c <= m; }
  // Which predecessors take part in cell (r, c), c >= 1, r >= first_row().
  SDTW_HD int preds(int r, int c) const {
    if (variant == kStandard) return kUp | kLeft | kDiag;
    if (r == 0) return kLeft;
    if (c == 1 || c == m + 1) return kUp | kLeft | kDiag;
    return kLeft | kDiag;
  }
  // Fixed value of the boundary column 0 in row r.
  template <typename T>
  SDTW_HD T col0(int r, T inf) const {
    return variant == kStandard ? (r == 0 ? T(0) : inf) : T(0);
  }
  // Fixed value of boundary row 0 (standard only) in column c.
  template <typename T>
  SDTW_HD T row0(int c, T inf) const { return c == 0 ? T(0) : inf; }
};

}  // namespace sdtw
}  // namespace tap_fast
