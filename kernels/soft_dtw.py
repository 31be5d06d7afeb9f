"""soft_dtw: batched soft-DTW (standard and OTAM variants) backed by the compiled
ops tap_fast::soft_dtw_forward / soft_dtw_backward (csrc/, built as tap_fast._C).

The ops are registered with the dispatcher (CPU and, when built, CUDA kernels); this
module adds their autograd formula and fake kernels, so autograd, torch.compile and
torch.library see real ops. Recursions: soft_dtw's docstring below; float64 reference:
soft_dtw_reference.py.
"""
import math
import numbers

import torch

from .double_backward import SOFT_DTW_HINT, first_order_only, refuse_forward_ad

try:  # importing the extension registers torch.ops.tap_fast.*
    from tap_fast import _C  # noqa: F401
    _IMPORT_ERROR = None
except ImportError as exc:  # kept so soft_dtw can explain how to build it
    _C = None
    _IMPORT_ERROR = exc

_VARIANTS = ("standard", "otam")
_BUILD_HINT = ("build it from the repository root with "
               "`pip install --no-build-isolation -e .` "
               "(TAP_FAST_BUILD_EXT=cuda to require the CUDA kernels, =cpu for C++ only)")


def _grid_shape(n: int, m: int, variant: str):
    return (n + 1, m + 1) if variant == "standard" else (n, m + 2)


if _C is not None:
    @torch.library.register_fake("tap_fast::soft_dtw_forward")
    def _forward_fake(cost, gamma, variant):
        batch, n, m = cost.shape
        return cost.new_empty(batch), cost.new_empty((batch, *_grid_shape(n, m, variant)))

    @torch.library.register_fake("tap_fast::soft_dtw_backward")
    def _backward_fake(grad, cost, R, gamma, variant):
        return cost.new_empty(cost.shape)  # contiguous, as the kernels allocate it, whatever cost's strides

    def _setup_context(ctx, inputs, output):
        cost, gamma, variant = inputs
        # R is saved state, not a result: without this autograd would fill a zero
        # gradient of R's size (as large as the costs) on every backward.
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(cost, output[1])
        ctx.gamma, ctx.variant = gamma, variant

    @first_order_only("soft_dtw", SOFT_DTW_HINT)
    def _backward(ctx, grad_values, _grad_R):
        cost, R = ctx.saved_tensors
        if grad_values is None:
            return None, None, None
        grad = torch.ops.tap_fast.soft_dtw_backward(
            grad_values.contiguous(), cost, R, ctx.gamma, ctx.variant)
        return grad, None, None

    torch.library.register_autograd(
        "tap_fast::soft_dtw_forward", _backward, setup_context=_setup_context)


def _has_kernel(device_type: str) -> bool:
    if device_type == "meta":  # the fake kernels above give shapes
        return True
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "tap_fast::soft_dtw_forward", key)


def _check(cost, gamma, variant) -> float | None:
    """Errors for bad arguments; returns the largest |cost| where the finite check measured it
    (devices other than the CPU), else None."""
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"soft_dtw: cost must be a torch.Tensor, got {type(cost).__name__}")
    if cost.dim() != 3:
        raise ValueError(f"soft_dtw: cost must have shape [B, N, M], got {tuple(cost.shape)}")
    if cost.shape[1] < 1 or cost.shape[2] < 1:
        raise ValueError(f"soft_dtw: N and M must be >= 1, got shape {tuple(cost.shape)}")
    if cost.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"soft_dtw: cost must be float32 or float64, got {cost.dtype} "
                        "(cast with .float())")
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"soft_dtw: gamma must be a real number, got {type(gamma).__name__}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"soft_dtw: gamma must be finite and > 0, got {gamma}")
    info = torch.finfo(cost.dtype)
    if not info.tiny <= gamma <= info.max:  # the kernels compute in cost's dtype, 1 / gamma too
        raise ValueError(f"soft_dtw: gamma {gamma} is out of range for {cost.dtype} cost "
                         f"({info.tiny:.3g} to {info.max:.3g}, so that gamma and 1 / gamma are finite)")
    if variant not in _VARIANTS:
        raise ValueError(f"soft_dtw: variant must be one of {_VARIANTS}, got {variant!r}")
    # The CPU kernel checks finiteness while it loads the costs (same ValueError). Other
    # devices: one cheap reduction (NaN propagates into min/max; a host sync on GPU);
    # skipped while torch.compile traces, and for meta tensors (shapes only, no values).
    if cost.device.type not in ("cpu", "meta") and not torch.compiler.is_compiling() and cost.numel() > 0:
        lowest, highest = torch.stack(torch.aminmax(cost.detach())).tolist()
        if not (math.isfinite(lowest) and math.isfinite(highest)):
            raise ValueError("soft_dtw: cost contains NaN or inf")
        return max(-lowest, highest)
    return None


def soft_dtw(cost: torch.Tensor, gamma: float, variant: str = "standard") -> torch.Tensor:
    """Soft-DTW value of each cost matrix: cost [B, N, M] -> [B] (cost's dtype).

    variant "standard": R00 = 0, R_i0 = R_0j = +inf,
        R_ij = cost_ij + softmin_gamma(R_i-1,j-1, R_i-1,j, R_i,j-1), result R_NM.
    variant "otam" (Cao et al. 2020): pad a zero column on both sides of the M axis (width
        M+2); row 0 is a plain cumulative sum; for rows l >= 1, column 1 takes the softmin
        of (l-1, 0), (l-1, 1), (l, 0); columns 2..M of (l-1, m-1), (l, m-1) (diagonal and
        horizontal steps only); the last (padded) column of (l-1, M), (l-1, M+1), (l, M);
        column 0 stays 0; result: the bottom-right cell.
    softmin_gamma(a...) = -gamma log sum exp(-a / gamma). Differentiable in cost (first
    order, reverse mode: forward-mode AD and torch.func.grad raise; vmap runs); float32 or
    float64; CPU, and CUDA when the extension was built with it.
    """
    largest = _check(cost, gamma, variant)
    refuse_forward_ad("soft_dtw", (cost,))
    if _C is None:
        raise RuntimeError(f"soft_dtw needs the compiled extension tap_fast._C, which failed "
                           f"to import ({_IMPORT_ERROR}); {_BUILD_HINT}")
    if not torch.compiler.is_compiling() and not _has_kernel(cost.device.type):
        raise RuntimeError(f"soft_dtw: tap_fast._C has no kernel for device '{cost.device.type}'"
                           + ("; it was built without CUDA: " + _BUILD_HINT
                              if cost.device.type == "cuda" else ""))
    try:
        values, _ = torch.ops.tap_fast.soft_dtw_forward(cost, float(gamma), variant)
    except RuntimeError as err:
        # torch.func.grad / jacrev of a cost: the autograd that torch.library generates for the op
        # does not support functorch, and its error speaks of an autograd.Function the caller never wrote.
        if "functorch transforms" not in str(err):
            raise
        raise NotImplementedError("soft_dtw: torch.func grad transforms (grad, jacrev, ...) are not "
                                  "supported (vmap is); use torch.autograd, or tap_fast.kernels.soft_dtw_reference "
                                  "(plain PyTorch) on small inputs") from err
    _check_no_overflow(cost, gamma, values, largest)
    return values


def _check_no_overflow(cost, gamma, values, largest):
    """Finite costs whose path sums pass the dtype's largest value (float32: 3.4e38) would give NaN
    (inf - inf in the soft-min): say so. On the CPU values (B entries) are looked at; on a GPU only
    when the input check's largest |cost| does not already bound every cell (no second host sync
    in the common case): a cell adds at most |cost| and gamma log 3 along a path of at most
    N + M + 2 cells (OTAM's padded columns included)."""
    if (torch.compiler.is_compiling() or values.device.type == "meta" or values.numel() == 0
            or torch._C._functorch.is_functorch_wrapped_tensor(values)):  # vmap: no data-dependent branch
        return
    path = cost.shape[1] + cost.shape[2]
    if largest is not None and (largest + 2 * gamma) * (path + 2) < torch.finfo(cost.dtype).max:
        return
    if not bool(values.detach().isfinite().all()):
        if largest is None:
            largest = cost.detach().abs().max().item()
        raise ValueError(f"soft_dtw: the accumulated cost overflowed {cost.dtype} (|cost| up to {largest:.3g}, "
                         f"summed along a path of up to {path} cells); scale the costs "
                         "down or compute in float64 (cost.double())")
