// Soft-DTW wavefront kernels (device code only: no ATen, no Python).
//
// One thread block per pair walks the grid by anti-diagonals (wavefront): the cells of
// one diagonal are independent, each thread takes cells r = lo + tid, lo + tid + nt,
// ... so there is no length cap. Forward keeps the last three diagonals of R in shared
// memory (indexed by grid row) and writes R to global memory for the backward.
// Backward is Blondel's E recursion in "message" form: a cell whose E is final sends
// E * (soft-min weight) to each predecessor through shared memory; the receiver sums
// its (at most three) messages one or two diagonals later, so no atomics are needed.
// Weights are recomputed from the saved R with the max subtracted (each in [0, 1]),
// so nothing overflows for any gamma. Same recursion as the CPU kernel
// (soft_dtw_common.h).
//
// Kept free of host headers so tests/test_soft_dtw_cuda_emulated.py can compile it with
// g++ (one emulated thread per block, SDTW_EMULATE_CUDA) and check the indexing on a
// machine without a GPU.
#pragma once

#include <limits>

#include "../soft_dtw_common.h"

#ifdef SDTW_EMULATE_CUDA
#define SDTW_DYNAMIC_SMEM(name) unsigned char* name = sdtw_emu_smem
#else
#define SDTW_DYNAMIC_SMEM(name) extern __shared__ unsigned char name[]
#endif

namespace tap_fast {
namespace sdtw {

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ T dinf() {
  return std::numeric_limits<T>::infinity();
}

// Predecessor values of cell (r, c) from the saved grid R of one pair; +inf where the
// pred takes no part.
template <typename T>
__device__ __forceinline__ void read_preds(const T* R, const Grid& g, int r, int c, T& up, T& left,
                                           T& diag) {
  const int cols = g.cols();
  const int p = g.preds(r, c);
  up = (p & kUp) ? R[(r - 1) * cols + c] : dinf<T>();
  left = (p & kLeft) ? R[r * cols + c - 1] : dinf<T>();
  diag = (p & kDiag) ? R[(r - 1) * cols + c - 1] : dinf<T>();
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ cost, T* __restrict__ R_all,
                               T* __restrict__ out, T* __restrict__ scratch, Grid g, T gamma,
                               bool use_smem) {
  SDTW_DYNAMIC_SMEM(smem_raw);
  const int b = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
  const int rows = g.rows(), cols = g.cols(), r0 = g.first_row();
  const T inf = dinf<T>();
  const T inv_gamma = T(1) / gamma;
  const T* C = cost + int64_t(b) * g.n * g.m;
  T* R = R_all + int64_t(b) * rows * cols;
  // Three diagonals, each indexed by grid row.
  T* diag_buf = use_smem ? reinterpret_cast<T*>(smem_raw) : scratch + int64_t(b) * 3 * rows;

  // Boundary cells of the saved grid.
  for (int r = tid; r < rows; r += nt) R[r * cols] = g.col0(r, inf);
  if (g.variant == kStandard)
    for (int c = 1 + tid; c < cols; c += nt) R[c] = g.row0(c, inf);

  const int d_first = r0 + 1, d_last = rows - 1 + cols - 1;
  for (int d = d_first; d <= d_last; ++d) {
    T* cur = diag_buf + (d % 3) * rows;
    const T* p1 = diag_buf + ((d + 2) % 3) * rows;  // diagonal d - 1
    const T* p2 = diag_buf + ((d + 1) % 3) * rows;  // diagonal d - 2
    const int r_lo = max(r0, d - (cols - 1)), r_hi = min(rows - 1, d - 1);
    for (int r = r_lo + tid; r <= r_hi; r += nt) {
      const int c = d - r;
      const int p = g.preds(r, c);
      // Neighbours come from the diagonal buffers, or from the boundary formulas.
      const T up = !(p & kUp) ? inf : (r - 1 >= r0 ? p1[r - 1] : g.row0(c, inf));
      const T left = !(p & kLeft) ? inf : (c == 1 ? g.col0(r, inf) : p1[r]);
      const T diag = !(p & kDiag)  ? inf
                     : c == 1      ? g.col0(r - 1, inf)
                     : r - 1 < r0 ? g.row0(c - 1, inf)
                                   : p2[r - 1];
      const T lo = min(up, min(left, diag));
      const T z = dexp((lo - up) * inv_gamma) + dexp((lo - left) * inv_gamma) +
                  dexp((lo - diag) * inv_gamma);
      const T dc = g.has_cost(c) ? C[int64_t(g.cost_row(r)) * g.m + c - 1] : T(0);
      const T v = dc + lo - gamma * dlog(z);
      cur[r] = v;
      R[r * cols + c] = v;
    }
    __syncthreads();
  }
  if (tid == 0) out[b] = diag_buf[(d_last % 3) * rows + rows - 1];
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ R_all,
                                T* __restrict__ grad, T* __restrict__ scratch, Grid g, T gamma,
                                bool use_smem) {
  SDTW_DYNAMIC_SMEM(smem_raw);
  const int b = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
  const int rows = g.rows(), cols = g.cols(), r0 = g.first_row();
  const T inv_gamma = T(1) / gamma;
  const T* R = R_all + int64_t(b) * rows * cols;
  T* G = grad + int64_t(b) * g.n * g.m;
  // Messages indexed by the sender's row: to its up and left preds (read one diagonal
  // later, 2 slots), and to its diag pred (read two diagonals later, 3 slots).
  T* msg = use_smem ? reinterpret_cast<T*>(smem_raw) : scratch + int64_t(b) * 7 * rows;
  T* msg_up = msg;
  T* msg_left = msg + 2 * rows;
  T* msg_diag = msg + 4 * rows;
  const T g_out = grad_out[b];

  const int d_first = r0 + 1, d_last = rows - 1 + cols - 1;
  for (int d = d_last; d >= d_first; --d) {
    const int r_lo = max(r0, d - (cols - 1)), r_hi = min(rows - 1, d - 1);
    for (int r = r_lo + tid; r <= r_hi; r += nt) {
      const int c = d - r;
      // E of this cell (scaled by grad_out): the messages of its successors.
      T e = (d == d_last) ? g_out : T(0);
      if (r + 1 < rows) e += msg_up[((d + 1) % 2) * rows + r + 1];
      if (c + 1 < cols) e += msg_left[((d + 1) % 2) * rows + r];
      if (r + 1 < rows && c + 1 < cols) e += msg_diag[((d + 2) % 3) * rows + r + 1];
      T up, left, diag;
      read_preds(R, g, r, c, up, left, diag);
      const T lo = min(up, min(left, diag));
      const T wa = dexp((lo - up) * inv_gamma);
      const T wb = dexp((lo - left) * inv_gamma);
      const T wc = dexp((lo - diag) * inv_gamma);
      const T s = e / (wa + wb + wc);
      msg_up[(d % 2) * rows + r] = s * wa;
      msg_left[(d % 2) * rows + r] = s * wb;
      msg_diag[(d % 3) * rows + r] = s * wc;
      if (g.has_cost(c)) G[int64_t(g.cost_row(r)) * g.m + c - 1] = e;
    }
    __syncthreads();
  }
}

}  // namespace sdtw
}  // namespace tap_fast
