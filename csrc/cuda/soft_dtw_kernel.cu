// CUDA soft-DTW ops: launchers for the wavefront kernels in soft_dtw_wavefront.cuh
// (both variants, float32 and float64), registered for the CUDA dispatch key. Shared
// memory falls back to a global scratch for very long sequences.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../soft_dtw_common.h"
#include "../soft_dtw_ops.h"
#include "soft_dtw_wavefront.cuh"

namespace tap_fast {
namespace sdtw {
namespace {

constexpr int kMaxThreads = 512;
constexpr size_t kSmemLimit = 48 * 1024;  // default dynamic shared memory per block

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
