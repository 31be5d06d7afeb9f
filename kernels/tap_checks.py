"""Input validation shared by every TAP entry point (reference, torch path, Triton path).

One place so that all backends reject the same bad inputs with the same clear message.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["require_tensors", "validate_tap_inputs"]


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    # NaN/inf anywhere (inputs or weights) silently poisons every score, so every tensor is checked,
    # with one multi-tensor reduction: the L1 norm of each (fp32 accumulation, so NaN and inf
    # propagate), their sum, then one host sync for all of them (per-tensor isfinite().all() cost two
    # launches per tensor, host time small episodes pay).  Only when that sum is not finite are the
    # tensors checked one by one, to name the bad ones; a sum that merely overflowed passes there.
    # It is data-dependent, so it is skipped while torch.compile traces (a compiled graph cannot
    # branch on tensor values) and while a CUDA graph is being captured (a sync would end the capture).
    if torch.compiler.is_compiling():
        return
    named = [(name, t) for name, t in tensors.items() if t.numel()]
    if not named or named[0][1].is_meta or (named[0][1].is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    with torch.no_grad():
        acc = torch.promote_types(named[0][1].dtype, torch.float32)  # fp32, or fp64 for fp64
        if math.isfinite(torch.stack(torch._foreach_norm([t for _, t in named], 1, dtype=acc)).sum().item()):
            return
        bad = [name for name, t in named if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{' and '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or inf values")


def require_tensors(x, y, weights, biases) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Check that x and y are tensors and weights and biases sequences of tensors, before anything
    reads them; returns (weights, biases) as lists."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(weights, torch.Tensor) or isinstance(biases, torch.Tensor):
        raise TypeError("weights and biases must be sequences (list/tuple) of tensors, one per layer")
    weights, biases = list(weights), list(biases)
    for group, seq in (("weights", weights), ("biases", biases)):
        for k, t in enumerate(seq):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{group}[{k}] must be a torch.Tensor, got {type(t).__name__}")
    return weights, biases


def validate_tap_inputs(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
) -> list[int]:
    """Check shapes/dtypes/devices; return the MLP widths [2D, H1, ..., 1].

    x [Q, Tq, D], y [S, Ts, D]; weights[0] [H1, 2D], weights[k] [H_{k+1}, H_k], weights[-1] [1, H_last];
    biases[k] [H_{k+1}].  Tq != Ts is allowed.
    """
    weights, biases = require_tensors(x, y, weights, biases)
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape [batch, frames, features], got rank {t.dim()} {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if 0 in t.shape:
            raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got x {x.dtype} and y {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got x on {x.device} and y on {y.device}")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"feature size mismatch: x has D={x.shape[2]} but y has D={y.shape[2]}")
    if len(weights) == 0:
        raise ValueError("weights must hold at least one layer (the final [1, H] layer)")
    if len(biases) != len(weights):
        raise ValueError(f"got {len(weights)} weight matrices but {len(biases)} bias vectors")

    d = x.shape[2]
    widths = [2 * d]
    for k, (w, b) in enumerate(zip(weights, biases)):
        for name, t in ((f"weights[{k}]", w), (f"biases[{k}]", b)):
            if t.dtype != x.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; cast them to one dtype")
            if t.device != x.device:
                raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if w.dim() != 2:
            raise ValueError(f"weights[{k}] must be a matrix [out, in], got shape {tuple(w.shape)}")
        if w.shape[1] != widths[-1]:
            if k == 0:
                raise ValueError(
                    f"feature size mismatch: weights[0] has {w.shape[1]} input features but concat(x_i, y_j) "
                    f"has 2*D = {2 * d}"
                )
            raise ValueError(
                f"weights[{k}] has {w.shape[1]} input features but layer {k - 1} outputs {widths[-1]}"
            )
        if w.shape[0] == 0:
            raise ValueError(f"weights[{k}] has 0 output features (shape {tuple(w.shape)}); every layer needs at least one")
        if b.shape != (w.shape[0],):
            raise ValueError(f"biases[{k}] must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        widths.append(w.shape[0])
    if widths[-1] != 1:
        raise ValueError(f"the last layer must output 1 value (weights[-1] is [1, H]), got {widths[-1]}")
    _check_finite({"x": x, "y": y, **{f"weights[{k}]": w for k, w in enumerate(weights)},
                   **{f"biases[{k}]": b for k, b in enumerate(biases)}})
    return widths
