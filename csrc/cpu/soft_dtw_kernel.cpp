// CPU soft-DTW forward and backward (both variants, float32 and float64).
//
// Speed comes from SIMD across the batch: a tile of L pairs is processed in lock
// step, each grid cell being one vector operation over the L lanes (lane-major row
// buffers, branch-free exp/log from lane_math.h). Tiles run in parallel with
// parallel_tiles (torch's inter-op pool). The recursion structure lives in soft_dtw_common.h.
//
// R layout on the CPU: tile-major. The tile of pairs [b, b + lanes) occupies R's
// elements [b * rows * cols, (b + lanes) * rows * cols) as [rows][cols][lanes], i.e.
// exactly the lane-major rows the kernels compute, so the forward writes R in place
// and the backward reads it in place (no transposes). R's shape stays [B, rows, cols]
// (same size), but its contents are only meant for soft_dtw_backward on the CPU.
//
// Soft-min with two exps: with lo <= mid <= hi the three preds, exp((lo - lo) / g) = 1,
// so z = 1 + exp((lo - mid) / g) + exp((lo - hi) / g).
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
#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <mutex>
#include <vector>

#include "../soft_dtw_common.h"
#include "../soft_dtw_ops.h"
#include "lane_math.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SDTW_HAVE_X86_VARIANTS 1
#include <immintrin.h>
#endif

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

// lo <= mid <= hi: the three preds sorted, lane-wise (+inf sorts last).
template <typename T>
SDTW_ALWAYS_INLINE void sort3(T a, T b, T c, T& lo, T& mid, T& hi) {
  const T ab_lo = std::min(a, b), ab_hi = std::max(a, b);
  lo = std::min(ab_lo, c);
  hi = std::max(ab_hi, c);
  mid = std::max(ab_lo, std::min(ab_hi, c));
}

// out = d + softmin_gamma(up, left, diag), lane-wise.
template <typename T, int L>
SDTW_ALWAYS_INLINE void softmin_cell(const T* __restrict__ up, const T* __restrict__ left,
                                     const T* __restrict__ diag, const T* __restrict__ d,
                                     T* __restrict__ out, T gamma, T inv_gamma) {
#pragma omp simd
  for (int k = 0; k < L; ++k) {
    T lo, mid, hi;
    sort3(up[k], left[k], diag[k], lo, mid, hi);
    const T z = T(1) + lane::exp_nonpos((lo - mid) * inv_gamma) +
                lane::exp_nonpos((lo - hi) * inv_gamma);
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
    T lo, mid, hi;
    sort3(a, b, c, lo, mid, hi);
    const T w_mid = lane::exp_nonpos((lo - mid) * inv_gamma);
    const T w_hi = lane::exp_nonpos((lo - hi) * inv_gamma);
    // Each pred's weight by its rank (ties get equal weights either way).
    const T wa = a <= lo ? T(1) : (a >= hi ? w_hi : w_mid);
    const T wb = b <= lo ? T(1) : (b >= hi ? w_hi : w_mid);
    const T wc = c <= lo ? T(1) : (c >= hi ? w_hi : w_mid);
    // 1 / z depends on R only: off the E dependency chain that runs along the row.
    const T s = e[k] * (T(1) / (T(1) + w_mid + w_hi));
    e_up[k] += s * wa;
    e_left[k] += s * wb;
    e_diag[k] += s * wc;
  }
}

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

#ifdef SDTW_HAVE_X86_VARIANTS
// 8 x 8 float transpose in registers: rows r[0..7] become columns.
__attribute__((target("avx2"))) inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Blocks of 8 pairs x 8 columns of a float row copy (pairs [0, lanes8), columns
// [0, width8), both multiples of 8) between per-pair rows and the lane-major
// buffer [width][L]; the rest is left to the scalar loops.
template <int L>
__attribute__((target("avx2"))) void load_blocks_avx2(const float* base, int64_t pair_stride,
                                                      int64_t row_offset, int width8, int lanes8,
                                                      float* __restrict__ dst) {
  for (int k0 = 0; k0 < lanes8; k0 += 8)
    for (int c0 = 0; c0 < width8; c0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i)
        r[i] = _mm256_loadu_ps(base + (k0 + i) * pair_stride + row_offset + c0);
      transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (c0 + j) * L + k0, r[j]);
    }
}
template <int L>
__attribute__((target("avx2"))) void store_blocks_avx2(const float* __restrict__ src, int width8,
                                                       int lanes8, float* base,
                                                       int64_t pair_stride, int64_t row_offset) {
  for (int k0 = 0; k0 < lanes8; k0 += 8)
    for (int c0 = 0; c0 < width8; c0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + (c0 + j) * L + k0);
      transpose8(r);
      for (int i = 0; i < 8; ++i)
        _mm256_storeu_ps(base + (k0 + i) * pair_stride + row_offset + c0, r[i]);
    }
}
#endif

// How much of a width x lanes row copy the AVX2 blocks cover (0 x 0 if none).
template <typename T>
SDTW_ALWAYS_INLINE void block_extent(int width, int lanes, int& width8, int& lanes8) {
  width8 = lanes8 = 0;
#ifdef SDTW_HAVE_X86_VARIANTS
  if (std::is_same<T, float>::value && kIsa != Isa::kGeneric) {
    width8 = width & ~7;
    lanes8 = lanes & ~7;
  }
#endif
}

// Copies row `row` of each of the tile's pairs ([B, rows, width] tensor data) into a
// lane-major buffer [width][L]; lanes past the batch get `fill`.
// Kept out of line, hence compiled for the baseline ISA: inlined into the AVX-512
// loops GCC turns the strided stores into scatters, slower than plain scalar code.
template <typename T, int L>
__attribute__((noinline)) void load_rows(const T* base, int64_t pair_stride, int64_t row_offset,
                                         int width, int lanes, T fill, T* __restrict__ dst) {
  int width8, lanes8;
  block_extent<T>(width, lanes, width8, lanes8);
#ifdef SDTW_HAVE_X86_VARIANTS
  if constexpr (std::is_same<T, float>::value)
    if (width8 > 0 && lanes8 > 0)
      load_blocks_avx2<L>(base, pair_stride, row_offset, width8, lanes8, dst);
#endif
  for (int k = 0; k < L; ++k) {
    const T* src = base + k * pair_stride + row_offset;
    if (k < lanes) {
      for (int c = k < lanes8 ? width8 : 0; c < width; ++c) dst[c * L + k] = src[c];
    } else {
      for (int c = 0; c < width; ++c) dst[c * L + k] = fill;
    }
  }
}

// Inlined: here the vector form is gathers from the (L1-resident) lane-major buffer
// and contiguous stores, which beats scalar code.
template <typename T, int L>
SDTW_ALWAYS_INLINE void store_rows(const T* __restrict__ src, int width, int lanes, T* base,
                                   int64_t pair_stride, int64_t row_offset) {
  int width8, lanes8;
  block_extent<T>(width, lanes, width8, lanes8);
#ifdef SDTW_HAVE_X86_VARIANTS
  if constexpr (std::is_same<T, float>::value)
    if (width8 > 0 && lanes8 > 0)
      store_blocks_avx2<L>(src, width8, lanes8, base, pair_stride, row_offset);
#endif
  for (int k = 0; k < lanes; ++k) {
    T* dst = base + k * pair_stride + row_offset;
    for (int c = k < lanes8 ? width8 : 0; c < width; ++c) dst[c] = src[c * L + k];
  }
}

// Tile-major R row <-> lane-major buffer, for a partial tile (lanes < L) whose R rows
// have stride `lanes` (a full tile is used in place).
template <typename T, int L>
SDTW_ALWAYS_INLINE void pack_row(const T* __restrict__ src, int cols, int lanes,
                                 T* __restrict__ dst) {
  for (int c = 0; c < cols; ++c)
    for (int k = 0; k < L; ++k) dst[c * L + k] = k < lanes ? src[c * lanes + k] : T(0);
}
template <typename T, int L>
SDTW_ALWAYS_INLINE void unpack_row(const T* __restrict__ src, int cols, int lanes,
                                   T* __restrict__ dst) {
  for (int c = 0; c < cols; ++c)
    for (int k = 0; k < lanes; ++k) dst[c * lanes + k] = src[c * L + k];
}

// NaN when any entry of the lane-major buffer is NaN or +-inf (x * 0 is NaN then).
template <typename T, int L>
SDTW_ALWAYS_INLINE T nonfinite_probe(const T* __restrict__ buf, int n) {
  T acc[L] = {};
  for (int i = 0; i < n; ++i)
#pragma omp simd
    for (int k = 0; k < L; ++k) acc[k] += buf[i * L + k] * T(0);
  T sum = 0;
  for (int k = 0; k < L; ++k) sum += acc[k];
  return sum;
}

// One tile of `lanes` (<= L) pairs starting at cost/R/out already offset to it.
// Returns false when the tile's costs hold NaN or inf.
template <typename T, int L>
SDTW_ALWAYS_INLINE bool forward_tile(const T* cost, T* R, T* out, int lanes, Grid g, T gamma) {
  const T inf = std::numeric_limits<T>::infinity();
  const T inv_gamma = T(1) / gamma;
  const int rows = g.rows(), cols = g.cols();
  const int64_t cost_stride = int64_t(g.n) * g.m;
  const int64_t row_len = int64_t(cols) * lanes;  // one tile-major R row
  const bool in_place = lanes == L;
  std::vector<T> buf(size_t(2 * cols + g.m + 2) * L);
  T* prev = buf.data();
  T* cur = prev + size_t(cols) * L;
  T* crow = cur + size_t(cols) * L;
  T* infs = crow + size_t(g.m) * L;
  T* zeros = infs + L;
  std::fill(infs, infs + L, inf);
  std::fill(zeros, zeros + L, T(0));
  T probe = 0;

  // The row above the first computed one: standard's boundary row 0; for otam
  // there is none (row 0 reads only `left`), +inf keeps it out of every soft-min.
  if (in_place && g.variant == kStandard) prev = R;
  for (int c = 0; c < cols; ++c)
    for (int k = 0; k < L; ++k) prev[c * L + k] = g.variant == kStandard ? g.row0(c, inf) : inf;
  if (!in_place && g.variant == kStandard) unpack_row<T, L>(prev, cols, lanes, R);

  for (int r = g.first_row(); r < rows; ++r) {
    load_rows<T, L>(cost, cost_stride, int64_t(g.cost_row(r)) * g.m, g.m, lanes, T(0), crow);
    probe += nonfinite_probe<T, L>(crow, g.m);
    if (in_place) cur = R + r * row_len;
    for (int k = 0; k < L; ++k) cur[k] = g.col0(r, inf);
    for (int c = 1; c < cols; ++c) {
      const int p = g.preds(r, c);
      softmin_cell<T, L>((p & kUp) ? prev + c * L : infs, (p & kLeft) ? cur + (c - 1) * L : infs,
                         (p & kDiag) ? prev + (c - 1) * L : infs,
                         g.has_cost(c) ? crow + (c - 1) * L : zeros, cur + c * L, gamma, inv_gamma);
    }
    if (!in_place) unpack_row<T, L>(cur, cols, lanes, R + r * row_len);
    std::swap(prev, cur);
  }
  for (int k = 0; k < lanes; ++k) out[k] = prev[(cols - 1) * L + k];
  return probe == T(0);
}

template <typename T, int L>
SDTW_ALWAYS_INLINE void backward_tile(const T* grad_out, const T* R, T* grad, int lanes, Grid g,
                                      T gamma) {
  const T inf = std::numeric_limits<T>::infinity();
  const T inv_gamma = T(1) / gamma;
  const int rows = g.rows(), cols = g.cols();
  const int64_t cost_stride = int64_t(g.n) * g.m;
  const int64_t row_len = int64_t(cols) * lanes;
  const bool in_place = lanes == L;
  std::vector<T> buf(size_t(5 * cols + 1) * L);
  T* r_buf0 = buf.data();
  T* r_buf1 = r_buf0 + size_t(cols) * L;
  T* e_cur = r_buf1 + size_t(cols) * L;
  T* e_prev = e_cur + size_t(cols) * L;
  T* inf_row = e_prev + size_t(cols) * L;  // otam row 0 has no row above
  T* infs = inf_row;
  std::fill(inf_row, inf_row + size_t(cols) * L + L, inf);
  // Lane-major view of R row r (in place for a full tile, else packed into `spare`).
  auto r_row = [&](int r, T* spare) -> const T* {
    if (r < 0) return inf_row;
    if (in_place) return R + r * row_len;
    pack_row<T, L>(R + r * row_len, cols, lanes, spare);
    return spare;
  };

  // E is scaled by grad_out from the start: the recursion is linear in it.
  std::fill(e_cur, e_cur + size_t(cols) * L, T(0));
  for (int k = 0; k < L; ++k) e_cur[(cols - 1) * L + k] = k < lanes ? grad_out[k] : T(0);
  const T* r_cur = r_row(rows - 1, r_buf0);

  for (int r = rows - 1; r >= g.first_row(); --r) {
    std::fill(e_prev, e_prev + size_t(cols) * L, T(0));
    const T* r_prev = r_row(r - 1, r_cur == r_buf0 ? r_buf1 : r_buf0);
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
    r_cur = r_prev;
  }
}

// Tile loops, compiled once per instruction set so the lane loops use the widest
// vectors the running CPU has (dispatch below); the bodies are the same templates.
template <typename T>
SDTW_ALWAYS_INLINE bool forward_tiles(const T* cost, T* R, T* out, int64_t batch, int64_t t0,
                                      int64_t t1, Grid g, T gamma) {
  constexpr int L = Lanes<T>::L;
  const int64_t cs = int64_t(g.n) * g.m, rs = int64_t(g.rows()) * g.cols();
  bool finite = true;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t * L;
    const int lanes = int(std::min<int64_t>(L, batch - b));
    finite &= forward_tile<T, L>(cost + b * cs, R + b * rs, out + b, lanes, g, gamma);
  }
  return finite;
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
  TARGET bool forward_tiles_##NAME(const float* a, float* b, float* c, int64_t n, int64_t t0, \
                                   int64_t t1, Grid g, float gm) {                             \
    return forward_tiles<float>(a, b, c, n, t0, t1, g, gm);                                    \
  }                                                                                            \
  TARGET bool forward_tiles_##NAME(const double* a, double* b, double* c, int64_t n,          \
                                   int64_t t0, int64_t t1, Grid g, double gm) {                \
    return forward_tiles<double>(a, b, c, n, t0, t1, g, gm);                                   \
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
SDTW_ISA_VARIANTS(avx2, __attribute__((target("avx2,fma"))))
SDTW_ISA_VARIANTS(avx512, __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))))
#endif


template <typename T>
bool run_forward(const T* cost, T* R, T* out, int64_t batch, int64_t t0, int64_t t1, Grid g,
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

// Runs body(t0, t1) over [0, ntiles) on up to torch.get_num_threads() threads.
// Not at::parallel_for: its threading is an inline `#pragma omp parallel`, which
// this extension (built with -fopenmp-simd only, so as not to load a second OpenMP
// runtime beside torch's) compiles away, leaving it serial. Instead the caller
// works on chunks too and hands the others to torch's inter-op pool (at::launch);
// chunks are claimed from a counter, so the caller never waits on a task that has
// not started (no deadlock when the pool is busy: it then does all chunks itself).
template <typename F>
void parallel_tiles(int64_t ntiles, const F& body) {
  const int64_t nthreads = std::min<int64_t>(at::get_num_threads(), ntiles);
  if (nthreads <= 1 || at::in_parallel_region()) {
    if (ntiles > 0) body(int64_t(0), ntiles);
    return;
  }
  const int64_t chunk = (ntiles + nthreads - 1) / nthreads;
  const int64_t nchunks = (ntiles + chunk - 1) / chunk;
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;  // guarded by m
    std::mutex m;
    std::condition_variable cv;
    std::exception_ptr error;  // guarded by m
    std::function<void(int64_t, int64_t)> body;  // used only for claimed chunks
  };
  auto st = std::make_shared<State>();
  st->body = [&body](int64_t a, int64_t b) { body(a, b); };
  // A task that starts after the caller returned claims nothing and touches only *st.
  auto work = [st, nchunks, chunk, ntiles] {
    for (int64_t i; (i = st->next.fetch_add(1)) < nchunks;) {
      std::exception_ptr err;
      try {
        st->body(i * chunk, std::min(ntiles, (i + 1) * chunk));
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(st->m);
      if (err && !st->error) st->error = err;
      if (++st->done == nchunks) st->cv.notify_all();
    }
  };
  for (int64_t i = 1; i < nchunks; ++i) at::launch(work);
  work();
  std::unique_lock<std::mutex> lk(st->m);
  st->cv.wait(lk, [&] { return st->done == nchunks; });
  if (st->error) std::rethrow_exception(st->error);
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
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "soft_dtw_forward_cpu", [&] {
    const scalar_t* c = cost.const_data_ptr<scalar_t>();
    scalar_t* r = R.mutable_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    parallel_tiles(num_tiles(batch, cost.scalar_type()), [&](int64_t t0, int64_t t1) {
      if (!run_forward<scalar_t>(c, r, o, batch, t0, t1, g, scalar_t(gamma))) finite = false;
    });
  });
  // Checked here, as a by-product of loading the costs, instead of a separate pass.
  TORCH_CHECK_VALUE(finite.load(), "soft_dtw: cost contains NaN or inf");
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
    parallel_tiles(num_tiles(batch, cost.scalar_type()), [&](int64_t t0, int64_t t1) {
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
