// CPU soft-DTW forward and backward (both variants, float32 and float64).
//
// Speed comes from SIMD across the batch: a tile of L pairs is processed in lock
// step, each grid cell being one vector operation over the L lanes (lane-major row
// buffers, branch-free exp/log from lane_math.h). Tiles run in parallel with
// at::parallel_for. The recursion structure lives in soft_dtw_common.h.
//
// Backward is Blondel et al.'s E recursion in "push" form: walking the grid in
// reverse, each cell s hands E_s * w_{s<-p} to its predecessors p, where the weights
// w are the soft-min weights of the forward, recomputed from the saved R exactly as
// the forward formed them (max-subtracted, each in [0, 1]), so E stays in
// [0, |grad|] and never becomes NaN or inf, whatever gamma.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../soft_dtw_common.h"
#include "../soft_dtw_ops.h"
#include "lane_math.h"

namespace tap_fast {
namespace sdtw {
namespace {

template <typename T>
struct Lanes;  // pairs per tile: four 512-bit vectors, independent chains that hide exp/log latency
template <>
struct Lanes<float> {
  static constexpr int L = 64;
};
template <>
struct Lanes<double> {
  static constexpr int L = 32;
};

// out = d + softmin_gamma(up, left, diag), lane-wise.
template <typename T, int L>
SDTW_ALWAYS_INLINE void softmin_cell(const T* __restrict__ up, const T* __restrict__ left,
                                     const T* __restrict__ diag, const T* __restrict__ d,
                                     T* __restrict__ out, T gamma, T inv_gamma) {
#pragma omp simd
  for (int k = 0; k < L; ++k) {
    const T a = up[k], b = left[k], c = diag[k];
    const T lo = std::min(a, std::min(b, c));
    const T z = lane::exp_nonpos((lo - a) * inv_gamma) + lane::exp_nonpos((lo - b) * inv_gamma) +
                lane::exp_nonpos((lo - c) * inv_gamma);
    out[k] = d[k] + lo - gamma * lane::log_1_3(z);
  }
}

// Adds e * (soft-min weight of each pred) to the pred's E, lane-wise.
template <typename T, int L>
SDTW_ALWAYS_INLINE void push_cell(const T* __restrict__ up, const T* __restrict__ left,
                                  const T* __restrict__ diag, const T* __restrict__ e,
                                  T* __restrict__ e_up, T* __restrict__ e_left,
                                  T* __restrict__ e_diag, T inv_gamma) {
#pragma omp simd
  for (int k = 0; k < L; ++k) {
    const T a = up[k], b = left[k], c = diag[k];
    const T lo = std::min(a, std::min(b, c));
    const T wa = lane::exp_nonpos((lo - a) * inv_gamma);
    const T wb = lane::exp_nonpos((lo - b) * inv_gamma);
    const T wc = lane::exp_nonpos((lo - c) * inv_gamma);
    // 1 / z depends on R only: off the E dependency chain that runs along the row.
    const T s = e[k] * (T(1) / (wa + wb + wc));
    e_up[k] += s * wa;
    e_left[k] += s * wb;
    e_diag[k] += s * wc;
  }
}

// Copies row `row` of each of the tile's pairs ([B, rows, width] tensor data) into a
// lane-major buffer [width][L]; lanes past the batch get `fill`.
template <typename T, int L>
SDTW_ALWAYS_INLINE void load_rows(const T* base, int64_t pair_stride, int64_t row_offset,
                                  int width, int lanes, T fill, T* __restrict__ dst) {
  for (int k = 0; k < L; ++k) {
    const T* src = base + k * pair_stride + row_offset;
    if (k < lanes) {
      for (int c = 0; c < width; ++c) dst[c * L + k] = src[c];
    } else {
      for (int c = 0; c < width; ++c) dst[c * L + k] = fill;
    }
  }
}

template <typename T, int L>
SDTW_ALWAYS_INLINE void store_rows(const T* __restrict__ src, int width, int lanes, T* base,
                                   int64_t pair_stride, int64_t row_offset) {
  for (int k = 0; k < lanes; ++k) {
    T* dst = base + k * pair_stride + row_offset;
    for (int c = 0; c < width; ++c) dst[c] = src[c * L + k];
  }
}

// One tile of `lanes` (<= L) pairs starting at cost/R/out already offset to it.
template <typename T, int L>
SDTW_ALWAYS_INLINE void forward_tile(const T* cost, T* R, T* out, int lanes, Grid g, T gamma) {
  const T inf = std::numeric_limits<T>::infinity();
  const T inv_gamma = T(1) / gamma;
  const int rows = g.rows(), cols = g.cols();
  const int64_t cost_stride = int64_t(g.n) * g.m, r_stride = int64_t(rows) * cols;
  std::vector<T> buf(size_t(2 * cols + g.m + 2) * L);
  T* prev = buf.data();
  T* cur = prev + size_t(cols) * L;
  T* crow = cur + size_t(cols) * L;
  T* infs = crow + size_t(g.m) * L;
  T* zeros = infs + L;
  std::fill(infs, infs + L, inf);
  std::fill(zeros, zeros + L, T(0));

  // The row above the first computed one: standard's boundary row 0; for otam
  // there is none (row 0 reads only `left`), +inf keeps it out of every soft-min.
  for (int c = 0; c < cols; ++c)
    for (int k = 0; k < L; ++k) prev[c * L + k] = g.variant == kStandard ? g.row0(c, inf) : inf;
  if (g.variant == kStandard) store_rows<T, L>(prev, cols, lanes, R, r_stride, 0);

  for (int r = g.first_row(); r < rows; ++r) {
    load_rows<T, L>(cost, cost_stride, int64_t(g.cost_row(r)) * g.m, g.m, lanes, T(0), crow);
    for (int k = 0; k < L; ++k) cur[k] = g.col0(r, inf);
    for (int c = 1; c < cols; ++c) {
      const int p = g.preds(r, c);
      softmin_cell<T, L>((p & kUp) ? prev + c * L : infs, (p & kLeft) ? cur + (c - 1) * L : infs,
                         (p & kDiag) ? prev + (c - 1) * L : infs,
                         g.has_cost(c) ? crow + (c - 1) * L : zeros, cur + c * L, gamma, inv_gamma);
    }
    store_rows<T, L>(cur, cols, lanes, R, r_stride, int64_t(r) * cols);
    std::swap(prev, cur);
  }
  for (int k = 0; k < lanes; ++k) out[k] = prev[(cols - 1) * L + k];
}

template <typename T, int L>
SDTW_ALWAYS_INLINE void backward_tile(const T* grad_out, const T* R, T* grad, int lanes, Grid g,
                                      T gamma) {
  const T inf = std::numeric_limits<T>::infinity();
  const T inv_gamma = T(1) / gamma;
  const int rows = g.rows(), cols = g.cols();
  const int64_t cost_stride = int64_t(g.n) * g.m, r_stride = int64_t(rows) * cols;
  std::vector<T> buf(size_t(4 * cols + 1) * L);
  T* r_cur = buf.data();
  T* r_prev = r_cur + size_t(cols) * L;
  T* e_cur = r_prev + size_t(cols) * L;
  T* e_prev = e_cur + size_t(cols) * L;
  T* infs = e_prev + size_t(cols) * L;
  std::fill(infs, infs + L, inf);

  // E is scaled by grad_out from the start: the recursion is linear in it.
  std::fill(e_cur, e_cur + size_t(cols) * L, T(0));
  for (int k = 0; k < L; ++k) e_cur[(cols - 1) * L + k] = k < lanes ? grad_out[k] : T(0);
  load_rows<T, L>(R, r_stride, int64_t(rows - 1) * cols, cols, lanes, T(0), r_cur);

  for (int r = rows - 1; r >= g.first_row(); --r) {
    std::fill(e_prev, e_prev + size_t(cols) * L, T(0));
    if (r > 0)
      load_rows<T, L>(R, r_stride, int64_t(r - 1) * cols, cols, lanes, T(0), r_prev);
    else
      std::fill(r_prev, r_prev + size_t(cols) * L, inf);  // otam row 0: no row above
    for (int c = cols - 1; c >= 1; --c) {
      const int p = g.preds(r, c);
      // A missing pred reads +inf, gets weight 0, and its E slot is never used.
      push_cell<T, L>((p & kUp) ? r_prev + c * L : infs, (p & kLeft) ? r_cur + (c - 1) * L : infs,
                      (p & kDiag) ? r_prev + (c - 1) * L : infs, e_cur + c * L, e_prev + c * L,
                      e_cur + (c - 1) * L, e_prev + (c - 1) * L, inv_gamma);
    }
    // dR_final / dcost = E on the cells that read cost.
    store_rows<T, L>(e_cur + L, g.m, lanes, grad, cost_stride, int64_t(g.cost_row(r)) * g.m);
    std::swap(e_cur, e_prev);
    std::swap(r_cur, r_prev);
  }
}

// Tile loops, compiled once per instruction set so the lane loops use the widest
// vectors the running CPU has (dispatch below); the bodies are the same templates.
template <typename T>
SDTW_ALWAYS_INLINE void forward_tiles(const T* cost, T* R, T* out, int64_t batch, int64_t t0,
                                      int64_t t1, Grid g, T gamma) {
  constexpr int L = Lanes<T>::L;
  const int64_t cs = int64_t(g.n) * g.m, rs = int64_t(g.rows()) * g.cols();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t * L;
    const int lanes = int(std::min<int64_t>(L, batch - b));
    forward_tile<T, L>(cost + b * cs, R + b * rs, out + b, lanes, g, gamma);
  }
}

template <typename T>
SDTW_ALWAYS_INLINE void backward_tiles(const T* grad_out, const T* R, T* grad, int64_t batch,
                                       int64_t t0, int64_t t1, Grid g, T gamma) {
  constexpr int L = Lanes<T>::L;
  const int64_t cs = int64_t(g.n) * g.m, rs = int64_t(g.rows()) * g.cols();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t * L;
    const int lanes = int(std::min<int64_t>(L, batch - b));
    backward_tile<T, L>(grad_out + b, R + b * rs, grad + b * cs, lanes, g, gamma);
  }
}

#define SDTW_ISA_VARIANTS(NAME, TARGET)                                                        \
  TARGET void forward_tiles_##NAME(const float* a, float* b, float* c, int64_t n, int64_t t0, \
                                   int64_t t1, Grid g, float gm) {                             \
    forward_tiles<float>(a, b, c, n, t0, t1, g, gm);                                           \
  }                                                                                            \
  TARGET void forward_tiles_##NAME(const double* a, double* b, double* c, int64_t n,          \
                                   int64_t t0, int64_t t1, Grid g, double gm) {                \
    forward_tiles<double>(a, b, c, n, t0, t1, g, gm);                                          \
  }                                                                                            \
  TARGET void backward_tiles_##NAME(const float* a, const float* b, float* c, int64_t n,      \
                                    int64_t t0, int64_t t1, Grid g, float gm) {                \
    backward_tiles<float>(a, b, c, n, t0, t1, g, gm);                                          \
  }                                                                                            \
  TARGET void backward_tiles_##NAME(const double* a, const double* b, double* c, int64_t n,   \
                                    int64_t t0, int64_t t1, Grid g, double gm) {               \
    backward_tiles<double>(a, b, c, n, t0, t1, g, gm);                                         \
  }

SDTW_ISA_VARIANTS(generic, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SDTW_HAVE_X86_VARIANTS 1
SDTW_ISA_VARIANTS(avx2, __attribute__((target("avx2,fma"))))
SDTW_ISA_VARIANTS(avx512, __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))))
#endif

enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa detect_isa() {
#ifdef SDTW_HAVE_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

const Isa kIsa = detect_isa();

template <typename T>
void run_forward(const T* cost, T* R, T* out, int64_t batch, int64_t t0, int64_t t1, Grid g,
                 T gamma) {
  switch (kIsa) {
#ifdef SDTW_HAVE_X86_VARIANTS
    case Isa::kAvx512:
      return forward_tiles_avx512(cost, R, out, batch, t0, t1, g, gamma);
    case Isa::kAvx2:
      return forward_tiles_avx2(cost, R, out, batch, t0, t1, g, gamma);
#endif
    default:
      return forward_tiles_generic(cost, R, out, batch, t0, t1, g, gamma);
  }
}

template <typename T>
void run_backward(const T* grad_out, const T* R, T* grad, int64_t batch, int64_t t0, int64_t t1,
                  Grid g, T gamma) {
  switch (kIsa) {
#ifdef SDTW_HAVE_X86_VARIANTS
    case Isa::kAvx512:
      return backward_tiles_avx512(grad_out, R, grad, batch, t0, t1, g, gamma);
    case Isa::kAvx2:
      return backward_tiles_avx2(grad_out, R, grad, batch, t0, t1, g, gamma);
#endif
    default:
      return backward_tiles_generic(grad_out, R, grad, batch, t0, t1, g, gamma);
  }
}

int64_t num_tiles(int64_t batch, at::ScalarType st) {
  const int64_t L = st == at::kDouble ? Lanes<double>::L : Lanes<float>::L;
  return (batch + L - 1) / L;
}

std::tuple<at::Tensor, at::Tensor> soft_dtw_forward_cpu(const at::Tensor& cost_in, double gamma,
                                                        c10::string_view variant) {
  check_forward_args(cost_in, gamma, variant);
  const at::Tensor cost = cost_in.contiguous();
  const Grid g = make_grid(cost, variant);
  const int64_t batch = cost.size(0);
  at::Tensor R = at::empty({batch, g.rows(), g.cols()}, cost.options());
  at::Tensor out = at::empty({batch}, cost.options());
  if (batch == 0) return {out, R};
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "soft_dtw_forward_cpu", [&] {
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    scalar_t* r = R.mutable_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles(batch, cost.scalar_type()), 1, [&](int64_t t0, int64_t t1) {
      run_forward<scalar_t>(c, r, o, batch, t0, t1, g, scalar_t(gamma));
    });
  });
  return {out, R};
}

at::Tensor soft_dtw_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& cost,
                                 const at::Tensor& R_in, double gamma, c10::string_view variant) {
  check_backward_args(grad_out_in, cost, R_in, gamma, variant);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor R = R_in.contiguous();
  const Grid g = make_grid(cost, variant);
  const int64_t batch = cost.size(0);
  at::Tensor grad = at::empty({batch, g.n, g.m}, cost.options());
  if (batch == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "soft_dtw_backward_cpu", [&] {
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* r = R.const_data_ptr<scalar_t>();
    scalar_t* gr = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_tiles(batch, cost.scalar_type()), 1, [&](int64_t t0, int64_t t1) {
      run_backward<scalar_t>(go, r, gr, batch, t0, t1, g, scalar_t(gamma));
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(tap_fast, CPU, m) {
  m.impl("soft_dtw_forward", &soft_dtw_forward_cpu);
  m.impl("soft_dtw_backward", &soft_dtw_backward_cpu);
}

}  // namespace sdtw
}  // namespace tap_fast
