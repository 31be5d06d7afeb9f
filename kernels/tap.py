"""Public TAP ops and backend dispatch.

    tap_scores(x, y, weights, biases)    -> [Q, S]
    tap_alignment(x, y, weights, biases) -> (P, S), each [Q, S, Tq, Ts]

Both backends share the cheap, differentiable prelude (tap_prelude.py: GEMMs and the cosines):
    U   = X W1x^T            [Q, Tq, H1]     (W1 = [W1x | W1y] acts on concat(x_i, y_j); fp32)
    V   = Y W1y^T + b1       [S, Ts, H1]
    cos = n(X) n(Y)^T        [Q, S, Tq, Ts]  (F.normalize semantics, eps 1e-12)
so gradients to x, y, W1, b1 come from autograd through these, and a backend only has to reduce
    scores[q, s] = sum_ij sigmoid(MLP_{2..L}(relu(U_qi + V_sj))) * cos_qsij
and give dU, dV, dcos and the grads of layers 2..L.

Backends: "triton" (fused kernels, CUDA; CPU tensors only under TRITON_INTERPRET=1) for the paper's
depth (3 hidden layers); "torch" (memory-bounded chunks, any device and depth).  "auto" picks
triton for CUDA tensors with a supported depth and dtype (not float64), else torch.  The environment variable
TAP_FAST_BACKEND overrides "auto" (useful to force a path in tests or benches).

Determinism: every backend's gradients are bitwise reproducible by default.  deterministic=False
(or TAP_FAST_DETERMINISTIC=0 when the argument is not given) lets the fused backward add dU and dV
with atomics in one pass instead of two (less work, results that differ from run to run in the last
bits); torch.use_deterministic_algorithms(True) keeps the deterministic kernels whatever is asked.
The torch backend is deterministic either way.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Sequence

import torch

from .double_backward import refuse_forward_ad
from .tap_checks import require_tensors, validate_tap_inputs
from .tap_prelude import prelude
from .tap_torch import DEFAULT_BUDGET_BYTES, tap_p_torch, tap_pairs_torch

__all__ = ["tap_scores", "tap_alignment", "resolve_backend", "resolve_deterministic"]

_BACKENDS = ("auto", "torch", "triton")
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _fused_supports(widths: Sequence[int]) -> bool:
    # Lazy import: the torch path must work where Triton is missing or broken.
    try:
        from .tap_triton import fused_supports_widths
    except ImportError:
        return False
    return fused_supports_widths(widths)


def resolve_backend(x: torch.Tensor, widths: Sequence[int], backend: str = "auto") -> str:
    """Which backend runs for these inputs: "torch" or "triton"."""
    if backend == "auto":
        backend = os.environ.get("TAP_FAST_BACKEND", "auto")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        # float64 stays on the torch path: the fused kernels accumulate in fp32 (tl.dot has no fp64)
        return "triton" if x.is_cuda and x.dtype in _FUSED_DTYPES and _fused_supports(widths) else "torch"
    if backend == "triton":
        if x.dtype not in _FUSED_DTYPES:
            raise ValueError(f"the fused Triton kernels compute in fp32, fp16 or bf16, got {x.dtype}; "
                             "use backend='torch' (or 'auto') for float64")
        if not _fused_supports(widths):
            raise ValueError(
                f"the fused Triton kernels support 3 hidden layers with H2, H3 <= 256 (widths {list(widths)}); "
                "use backend='torch'"
            )
        if not x.is_cuda and not _triton_interpreting():
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta): no autocast there
        return False


def _common_dtype(x, y, weights, biases):
    """Under autocast run everything in the autocast dtype (the fused op takes one dtype).  As autocast
    does, only floating-point tensors narrower than float64 are cast: integer inputs then fail
    validation as they would without autocast, and float64 stays float64."""
    dev = x.device.type
    if _autocast_on(dev):
        dt = torch.get_autocast_dtype(dev)

        def cast(t):
            return t.to(dt) if t.is_floating_point() and t.dtype != torch.float64 else t

        return cast(x), cast(y), [cast(w) for w in weights], [cast(b) for b in biases], True
    return x, y, list(weights), list(biases), False


def resolve_deterministic(deterministic: bool | None = None) -> bool:
    """Whether the fused backward keeps its deterministic reductions (see the module docstring)."""
    if deterministic is None:
        value = os.environ.get("TAP_FAST_DETERMINISTIC", "1")
        if value not in ("0", "1"):
            raise ValueError(f"TAP_FAST_DETERMINISTIC must be 0 or 1, got {value!r}")
        deterministic = value == "1"
    elif not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True, False or None, got {deterministic!r}")
    return deterministic or torch.are_deterministic_algorithms_enabled()


def _refuse_functorch(name: str) -> None:
    # Under torch.func (grad, vmap, jacrev, ...) the ops' hand-written autograd nodes and the finite
    # check fail deep inside PyTorch ("must override the setup_context staticmethod", "Batching rule not
    # implemented for aten::_foreach_norm"): say so by name instead.
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        raise NotImplementedError(
            f"{name}: torch.func transforms (grad, vmap, jacrev, ...) are not supported; use torch.autograd "
            "(or tap_fast.kernels.tap_reference, plain PyTorch, on small inputs)")


def _prepare(name, x, y, weights, biases, budget_bytes):
    """Cast (under autocast) then validate; also returns the context the computation runs in."""
    _refuse_functorch(name)
    weights, biases = require_tensors(x, y, weights, biases)
    refuse_forward_ad(name, (x, y, *weights, *biases))
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
        raise ValueError(f"budget_bytes must be a positive int (bytes), got {budget_bytes!r}")
    # cast before validating: under autocast the inputs legitimately arrive in mixed dtypes
    x, y, weights, biases, autocast = _common_dtype(x, y, weights, biases)
    widths = validate_tap_inputs(x, y, weights, biases)
    precision = torch.autocast(x.device.type, enabled=False) if autocast else nullcontext()
    return x, y, weights, biases, widths, precision


def _single_layer_p(u, v):
    """P [Q, S, Tq, Ts] when there is no hidden layer: the first layer is the logit."""
    return torch.sigmoid(u[:, None, :, None, 0] + v[None, :, None, :, 0])


def tap_scores(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    *,
    backend: str = "auto",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """TAP scores [Q, S] = sum_ij P_ij * S_ij for x [Q, Tq, D], y [S, Ts, D] (see module docstring).

    ``budget_bytes`` bounds the hidden activations per chunk of the torch backend.  ``deterministic``
    False lets the fused backward use atomics (faster; see the module docstring); None reads
    TAP_FAST_DETERMINISTIC (default 1).
    """
    deterministic = resolve_deterministic(deterministic)
    x, y, weights, biases, widths, precision = _prepare("tap_scores", x, y, weights, biases, budget_bytes)
    backend = resolve_backend(x, widths, backend)  # named errors first, whatever the depth
    with precision:
        u, v, cos = prelude(x, y, weights, biases)
        if len(weights) == 1:  # no hidden layer: the first layer is the logit, nothing to fuse
            return (_single_layer_p(u, v) * cos).sum(dim=(-2, -1)).to(x.dtype)
        if backend == "triton":
            from .tap_triton import tap_pairs_triton

            return tap_pairs_triton(u, v, cos, weights[1:], biases[1:], deterministic)
        return tap_pairs_torch(u, v, cos, weights[1:], biases[1:], budget_bytes)


def tap_alignment(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    *,
    backend: str = "auto",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, S), each [Q, S, Tq, Ts], for inspection and plots.

    S is differentiable; P is computed without an autograd graph (memory-bounded, never storing the
    hidden activations).  Use tap_alignment_reference for a differentiable P on small inputs.
    """
    x, y, weights, biases, widths, precision = _prepare("tap_alignment", x, y, weights, biases, budget_bytes)
    backend = resolve_backend(x, widths, backend)
    with precision:
        u, v, cos = prelude(x, y, weights, biases)
        with torch.no_grad():
            if len(weights) == 1:
                return _single_layer_p(u, v).to(x.dtype), cos
            if backend == "triton":
                from .tap_triton import tap_p_triton

                return tap_p_triton(u.detach(), v.detach(), cos.detach(), weights[1:], biases[1:]), cos
            return tap_p_torch(u, v, weights[1:], biases[1:], budget_bytes), cos

