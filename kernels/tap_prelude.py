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

from .double_backward import TAP_HINT, first_order_only

__all__ = ["prelude", "wide_dtype"]

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


# F.normalize's eps: a frame feature with a smaller norm is divided by eps instead.
_NORM_EPS = 1e-12


def _normalized(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x2 / max(|x2|, eps) row by row, that denominator [N, 1]): F.normalize's values."""
    denom = torch.linalg.vector_norm(x2, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return x2 / denom, denom


def _normalize_backward(grad: torch.Tensor, xn: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """d/dx of x / max(|x|, eps) applied to grad: (grad - xn (xn . grad)) / |x| where |x| > eps, and
    grad / eps where the norm was clamped (the denominator is then a constant)."""
    radial = (xn * grad).sum(-1, keepdim=True) * (denom > _NORM_EPS)
    # Not torch.addcmul (one launch fewer): its fused multiply-add rounds differently, and that alone
    # moved the quick-start run's seed-0 meta-test from 75.2 to 65.9% (1-shot) through a different
    # training trajectory; the CPU path keeps the rounding its documented results were made with.
    return (grad - xn * radial) / denom


class _Prelude(torch.autograd.Function):
    """(U, V, cos) from inputs in any one dtype, as one autograd node.

    U = X W1[:, :D]^T and V = Y W1[:, D:]^T + b1 come out in fp32 (no wide copies of the inputs are
    made or saved).  cos is n(X) n(Y)^T in the inputs' dtype, as F.normalize and a GEMM give it.
    Why one Function with a hand-written backward: autograd through F.normalize and einsum records a
    dozen small nodes whose host cost (~0.2 ms per forward+backward on a 2-core CPU) small episodes pay.
    Gradients come back in the inputs' dtype: dU and dV are rounded to it once, then each gradient is
    one GEMM with fp32 accumulation, the precision eager PyTorch gives these GEMMs in that dtype."""

    @staticmethod
    def forward(ctx, x, y, w1, b1):
        ctx.set_materialize_grads(False)  # tap_alignment differentiates cos only: skip the U/V GEMMs
        d = x.shape[-1]
        x2, y2 = x.reshape(-1, d), y.reshape(-1, d)
        u = _mm_wide(x2, w1[:, :d].t())
        v = _mm_wide(y2, w1[:, d:].t())
        v += b1  # one launch: the add promotes b1 to V's wide dtype itself (a cast first took another)
        xn, x_denom = _normalized(x2)
        yn, y_denom = _normalized(y2)
        (n_q, tq), (n_s, ts) = x.shape[:2], y.shape[:2]
        # [Q Tq, S Ts] viewed as [Q, S, Tq, Ts] (the layout einsum would return; the kernels copy it)
        cos = (xn @ yn.t()).view(n_q, tq, n_s, ts).permute(0, 2, 1, 3)
        ctx.save_for_backward(x, y, w1, xn, x_denom, yn, y_denom)
        return u.view(n_q, tq, -1), v.view(n_s, ts, -1), cos

    @staticmethod
    @first_order_only("tap_scores / tap_alignment", TAP_HINT)  # the saved norms are constants here
    def backward(ctx, du, dv, dcos):
        x, y, w1, xn, x_denom, yn, y_denom = ctx.saved_tensors
        d = x.shape[-1]
        need_x, need_y, need_w1, need_b1 = ctx.needs_input_grad
        db1 = dv.sum((0, 1)).to(w1.dtype) if need_b1 and dv is not None else None
        dx2 = dy2 = None  # [N, D] in the inputs' dtype, or None when nothing flows there
        dw1_x = dw1_y = None
        if du is not None:
            du = du.reshape(-1, du.shape[-1]).to(x.dtype)
            dx2 = du @ w1[:, :d] if need_x else None
            dw1_x = du.t() @ x.reshape(-1, d) if need_w1 else None
        if dv is not None:
            dv = dv.reshape(-1, dv.shape[-1]).to(y.dtype)
            dy2 = dv @ w1[:, d:] if need_y else None
            dw1_y = dv.t() @ y.reshape(-1, d) if need_w1 else None
        if dcos is not None and (need_x or need_y):
            # back to [Q Tq, S Ts]: a view when dcos has cos's layout (the fused kernels write it so)
            g = dcos.permute(0, 2, 1, 3).reshape(xn.shape[0], yn.shape[0])
            if need_x:
                gx = _normalize_backward(g @ yn, xn, x_denom)
                dx2 = gx if dx2 is None else dx2 + gx
            if need_y:
                gy = _normalize_backward(g.t() @ xn, yn, y_denom)
                dy2 = gy if dy2 is None else dy2 + gy
        dw1 = None
        if dw1_x is not None or dw1_y is not None:
            dw1 = torch.cat([w1.new_zeros(w1.shape[0], d) if dw1_x is None else dw1_x,
                             w1.new_zeros(w1.shape[0], d) if dw1_y is None else dw1_y], dim=1)
        dx = None if dx2 is None else dx2.view(x.shape)
        dy = None if dy2 is None else dy2.view(y.shape)
        return dx, dy, dw1, db1


def prelude(x, y, weights, biases):
    """(U [Q, Tq, H1], V [S, Ts, H1], cos [Q, S, Tq, Ts]) for validated inputs in one dtype (see the
    module docstring); U and V in fp32 (fp64 for fp64 inputs), cos in the inputs' dtype."""
    return _Prelude.apply(x, y, weights[0], biases[0])
