"""The TAP prelude: the first MLP layer split over the frame pair, and the frame cosines.

    U   = X W1x^T            [Q, Tq, H1]     (W1 = [W1x | W1y] acts on concat(x_i, y_j))
    V   = Y W1y^T + b1       [S, Ts, H1]
    cos = n(X) n(Y)^T        [Q, S, Tq, Ts]  (F.normalize semantics, eps 1e-12)

U and V come out in fp32 (fp64 for fp64 inputs) whatever the input dtype.  Why: both backends add
U_qi + V_sj per frame pair, and two separately rounded low-precision halves flip relu masks near
z1 = 0 far more often than one rounded GEMM does (measured on an H200: 3-6x eager bf16's error in
dW1 at small widths).

How, for bf16/fp16 inputs on CUDA: one low-precision GEMM with fp32 accumulation and fp32 output
(torch.mm's out_dtype), so neither an fp32 copy of W1 (16 MiB at the paper's widths) nor its fp32
gradient is ever made, and the GEMM runs on the tensor cores rather than in fp32.  Elsewhere (CPU,
or a torch without out_dtype) the operands are upcast, which gives the same products.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

__all__ = ["prelude", "first_layer_wide"]

_LOG = logging.getLogger(__name__)
_LOWP = (torch.float16, torch.bfloat16)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=None)
def _out_dtype_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch.mm(..., out_dtype=float32) runs for this device and input dtype (torch >= 2.8 on
    CUDA); probed once, on a tiny product, outside any compiled graph."""
    try:
        a = torch.ones(16, 16, dtype=dtype, device=device)
        return bool(torch.mm(a, a, out_dtype=torch.float32)[0, 0] == 16)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        _LOG.warning("torch.mm(out_dtype=float32) is unavailable for %s on %s (%s); the TAP prelude "
                     "upcasts its operands instead (more memory, same result)", dtype, device, err)
        return False


def _mm_wide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D a, b in one dtype, result in fp32 (fp64 for fp64)."""
    wide = wide_dtype(a.dtype)
    if a.dtype in _LOWP and a.is_cuda and (torch.compiler.is_compiling() or _out_dtype_mm_works(a.device, a.dtype)):
        return torch.mm(a, b, out_dtype=wide)
    return torch.mm(a.to(wide), b.to(wide))


class _FirstLayerWide(torch.autograd.Function):
    """(U, V) = (X W1[:, :D]^T, Y W1[:, D:]^T + b1) in fp32 from inputs in any one dtype.

    Saves only the inputs (no wide copies).  Gradients come back in the inputs' dtype: dU and dV are
    rounded to it once, then each gradient is one GEMM with fp32 accumulation, the precision eager
    PyTorch gives these GEMMs in that dtype."""

    @staticmethod
    def forward(ctx, x, y, w1, b1):
        d = x.shape[-1]
        ctx.save_for_backward(x, y, w1)
        u = _mm_wide(x.reshape(-1, d), w1[:, :d].t())
        v = _mm_wide(y.reshape(-1, d), w1[:, d:].t())
        v = v + b1.to(v.dtype)
        return u.reshape(*x.shape[:-1], -1), v.reshape(*y.shape[:-1], -1)

    @staticmethod
    def backward(ctx, du, dv):
        x, y, w1 = ctx.saved_tensors
        d = x.shape[-1]
        h1 = w1.shape[0]
        du = (du if du is not None else x.new_zeros(*x.shape[:-1], h1)).reshape(-1, h1)
        dv = (dv if dv is not None else y.new_zeros(*y.shape[:-1], h1)).reshape(-1, h1)
        db1 = dv.sum(0).to(w1.dtype) if ctx.needs_input_grad[3] else None
        du, dv = du.to(x.dtype), dv.to(y.dtype)
        dx = (du @ w1[:, :d]).reshape(x.shape) if ctx.needs_input_grad[0] else None
        dy = (dv @ w1[:, d:]).reshape(y.shape) if ctx.needs_input_grad[1] else None
        dw1 = None
        if ctx.needs_input_grad[2]:
            dw1 = torch.cat([du.t() @ x.reshape(-1, d), dv.t() @ y.reshape(-1, d)], dim=1)
        return dx, dy, dw1, db1


def first_layer_wide(x, y, w1, b1):
    """(U [Q, Tq, H1], V [S, Ts, H1]) in fp32 (fp64 for fp64 inputs); differentiable."""
    return _FirstLayerWide.apply(x, y, w1, b1)


def prelude(x, y, weights, biases):
    """(U, V, cos) for validated inputs in one dtype (see the module docstring)."""
    u, v = first_layer_wide(x, y, weights[0], biases[0])
    cos = torch.einsum("qid,sjd->qsij", F.normalize(x, dim=-1, eps=1e-12), F.normalize(y, dim=-1, eps=1e-12))
    return u, v, cos
