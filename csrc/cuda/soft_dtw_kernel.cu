// CUDA soft-DTW forward and backward (both variants, float32 and float64).
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
// (soft_dtw_common.h). Shared memory falls back to a global scratch for very long
// sequences.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../soft_dtw_common.h"
#include "../soft_dtw_ops.h"

namespace tap_fast {
namespace sdtw {
namespace {

constexpr int kMaxThreads = 512;
constexpr size_t kSmemLimit = 48 * 1024;  // default dynamic shared memory per block

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
  extern __shared__ unsigned char smem_raw[];
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
  extern __shared__ unsigned char smem_raw[];
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

int threads_for(const Grid& g) {
  const int longest = min(g.rows(), g.cols());  // cells on the longest diagonal
  return min(kMaxThreads, ((longest + 31) / 32) * 32);
}

std::tuple<at::Tensor, at::Tensor> soft_dtw_forward_cuda(const at::Tensor& cost_in, double gamma,
                                                         c10::string_view variant) {
  check_forward_args(cost_in, gamma, variant);
  const c10::cuda::CUDAGuard guard(cost_in.device());
  const at::Tensor cost = cost_in.contiguous();
  const Grid g = make_grid(cost, variant);
  const int64_t batch = cost.size(0);
  at::Tensor R = at::empty({batch, g.rows(), g.cols()}, cost.options());
  at::Tensor out = at::empty({batch}, cost.options());
  if (batch == 0) return {out, R};
  TORCH_CHECK(batch <= std::numeric_limits<int>::max(), "soft_dtw: batch too large");
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "soft_dtw_forward_cuda", [&] {
    const size_t smem = size_t(3) * g.rows() * sizeof(scalar_t);
    const bool use_smem = smem <= kSmemLimit;
    at::Tensor scratch = use_smem ? at::Tensor() : at::empty({batch, 3 * g.rows()}, cost.options());
    forward_kernel<scalar_t><<<int(batch), threads_for(g), use_smem ? smem : 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        cost.const_data_ptr<scalar_t>(), R.mutable_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(),
        use_smem ? nullptr : scratch.mutable_data_ptr<scalar_t>(), g, scalar_t(gamma), use_smem);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, R};
}

at::Tensor soft_dtw_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& cost,
                                  const at::Tensor& R_in, double gamma, c10::string_view variant) {
  check_backward_args(grad_out_in, cost, R_in, gamma, variant);
  const c10::cuda::CUDAGuard guard(cost.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor R = R_in.contiguous();
  const Grid g = make_grid(cost, variant);
  const int64_t batch = cost.size(0);
  at::Tensor grad = at::empty({batch, g.n, g.m}, cost.options());
  if (batch == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "soft_dtw_backward_cuda", [&] {
    const size_t smem = size_t(7) * g.rows() * sizeof(scalar_t);
    const bool use_smem = smem <= kSmemLimit;
    at::Tensor scratch = use_smem ? at::Tensor() : at::empty({batch, 7 * g.rows()}, cost.options());
    backward_kernel<scalar_t><<<int(batch), threads_for(g), use_smem ? smem : 0,
                                c10::cuda::getCurrentCUDAStream()>>>(
        grad_out.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(),
        grad.mutable_data_ptr<scalar_t>(),
        use_smem ? nullptr : scratch.mutable_data_ptr<scalar_t>(), g, scalar_t(gamma), use_smem);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(tap_fast, CUDA, m) {
  m.impl("soft_dtw_forward", &soft_dtw_forward_cuda);
  m.impl("soft_dtw_backward", &soft_dtw_backward_cuda);
}

}  // namespace sdtw
}  // namespace tap_fast
