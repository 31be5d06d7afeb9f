"""Second derivatives are not implemented by these kernels: differentiating one of their gradients
(create_graph=True: a gradient penalty, MAML's inner step) raises, never returns wrong values.

Without this, PyTorch names an internal op ("no autograd formula was registered"), or, for a C++
op or a backward that uses saved intermediates as constants, treats part of the gradient as a
constant: silently wrong second derivatives.
"""
from __future__ import annotations

import functools

import torch
import torch.utils._pytree as pytree

__all__ = ["first_order_only", "refuse_forward_ad", "TAP_HINT", "SOFT_DTW_HINT"]

TAP_HINT = "tap_fast.kernels.tap_reference.tap_scores_reference is plain PyTorch and has them (small inputs)"
SOFT_DTW_HINT = "tap_fast.kernels.soft_dtw_reference.soft_dtw_reference is plain PyTorch and has them (small inputs)"


def refuse_forward_ad(name: str, tensors) -> None:
    """NotImplementedError naming the op when an input carries a forward-mode tangent: the ops have no
    forward-mode formula, and forward AD then drops the tangent (soft_dtw's jvp gave zeros) or fails
    deep inside PyTorch.  Looked at only while a dual level is open (no host cost otherwise)."""
    import torch.autograd.forward_ad as fwAD

    if not torch.compiler.is_compiling() and fwAD._current_level >= 0 and any(
            fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(f"{name}: forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) is not "
                                  "supported; use reverse mode (torch.autograd.grad)")


def _message(name: str, hint: str) -> str:
    return f"{name}: second derivatives (differentiating its gradient, create_graph=True) are not supported; {hint}"


class _Refuse(torch.autograd.Function):
    """Identity on the first n tensors whose backward raises. Its other inputs (the gradient's real
    dependencies) put it on every path a second derivative takes, so the engine cannot prune it."""

    @staticmethod
    def forward(ctx, message, n, *tensors):
        ctx.message = message
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def first_order_only(name: str, hint: str):
    """Decorator for a backward (an autograd.Function's, or one given to register_autograd): it runs
    without a graph, as a first-order backward does anyway; under create_graph=True its gradients
    pass through a node that raises when they are differentiated. No cost in first-order use."""
    message = _message(name, hint)

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled() or torch.compiler.is_compiling():
                return outputs
            sources = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
            if not sources:
                return outputs
            # outputs may nest (lists of weight gradients): route every tensor leaf through one node
            leaves, spec = pytree.tree_flatten(outputs)
            present = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
            for i, t in zip(present, _Refuse.apply(message, len(present), *[leaves[i] for i in present], *sources)):
                leaves[i] = t
            return pytree.tree_unflatten(leaves, spec)
        return wrapper
    return decorate
