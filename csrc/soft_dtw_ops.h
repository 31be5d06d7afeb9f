// Host-side argument checks shared by the CPU and CUDA implementations of the
// tap_fast::soft_dtw_forward / soft_dtw_backward ops (schemas in soft_dtw.cpp).
// The Python wrapper (kernels/soft_dtw.py) gives friendlier errors first; these
// guard direct calls of the ops.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "soft_dtw_common.h"

namespace tap_fast {
namespace sdtw {

inline Variant parse_variant(c10::string_view variant) {
  if (variant == "standard") return kStandard;
  if (variant == "otam") return kOtam;
  TORCH_CHECK_VALUE(false, "soft_dtw: variant must be 'standard' or 'otam', got '",
                    std::string(variant), "'");
}

inline Grid make_grid(const at::Tensor& cost, c10::string_view variant) {
  TORCH_CHECK_VALUE(cost.size(1) < (1 << 30) && cost.size(2) < (1 << 30),
                    "soft_dtw: sequence lengths too large");
  return Grid{int(cost.size(1)), int(cost.size(2)), parse_variant(variant)};
}

inline void check_forward_args(const at::Tensor& cost, double gamma, c10::string_view variant) {
  TORCH_CHECK_VALUE(cost.dim() == 3, "soft_dtw: cost must be [B, N, M], got ", cost.dim(),
                    " dims");
  TORCH_CHECK_VALUE(cost.size(1) >= 1 && cost.size(2) >= 1,
                    "soft_dtw: sequence lengths must be >= 1, got N=", cost.size(1),
                    ", M=", cost.size(2));
  TORCH_CHECK_TYPE(cost.scalar_type() == at::kFloat || cost.scalar_type() == at::kDouble,
                   "soft_dtw: cost must be float32 or float64, got ", cost.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma > 0, "soft_dtw: gamma must be > 0, got ",
                    gamma);
  parse_variant(variant);
}

inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& cost,
                                const at::Tensor& R, double gamma, c10::string_view variant) {
  check_forward_args(cost, gamma, variant);
  const Grid g = make_grid(cost, variant);
  TORCH_CHECK_VALUE(grad_out.dim() == 1 && grad_out.size(0) == cost.size(0),
                    "soft_dtw_backward: grad must be [B]");
  TORCH_CHECK_VALUE(R.dim() == 3 && R.size(0) == cost.size(0) && R.size(1) == g.rows() &&
                        R.size(2) == g.cols(),
                    "soft_dtw_backward: R has the wrong shape for this cost and variant");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == cost.scalar_type() &&
                       R.scalar_type() == cost.scalar_type(),
                   "soft_dtw_backward: grad, cost and R must share one dtype");
  TORCH_CHECK(grad_out.device() == cost.device() && R.device() == cost.device(),
              "soft_dtw_backward: grad, cost and R must be on one device");
}

}  // namespace sdtw
}  // namespace tap_fast
