"""Random TAP inputs for tests and benchmarks (one helper, shared by both)."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["PAPER_D", "PAPER_HIDDEN", "make_tap_inputs"]

PAPER_D = 2048  # BiLSTM output width Dg
PAPER_HIDDEN = (1024, 256, 64)  # MLP 2*Dg -> 1024 -> 256 -> 64 -> 1


def make_tap_inputs(
    q: int,
    s: int,
    tq: int,
    ts: int,
    d: int,
    hidden: Sequence[int] = PAPER_HIDDEN,
    *,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    seed: int = 0,
    requires_grad: bool = False,
):
    """(x, y, weights, biases) with nn.Linear-like init (so activations stay O(1) at any width)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    x, y = rand(q, tq, d), rand(s, ts, d)
    weights, biases, prev = [], [], 2 * d
    for width in list(hidden) + [1]:
        weights.append(rand(width, prev, scale=prev**-0.5))
        biases.append(rand(width, scale=0.1))
        prev = width
    return x, y, weights, biases


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| computed in float64 on the CPU (a and b may sit on different devices)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def lowp_tolerance(eager_lowp: torch.Tensor, exact: torch.Tensor, floor: float) -> float:
    """FlashAttention-style bound for low-precision results: at most 2x the error that plain eager PyTorch
    makes in the same dtype (tiny weight-gradient sums cancel, so a fixed bound alone is meaningless
    there), and never stricter than ``floor``."""
    return max(floor, 2.0 * rel_err(eager_lowp, exact))
