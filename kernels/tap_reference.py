"""Plain, materialising TAP reference: the test oracle (run it in float64).

It builds the full [Q, S, Tq, Ts, 2D] pair tensor and runs the MLP with nn.functional ops, exactly as
the paper writes it.  Memory is O(Q*S*Tq*Ts*H): only for tests and small benchmarks.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .tap_checks import validate_tap_inputs

__all__ = ["tap_alignment_reference", "tap_scores_reference"]


def tap_alignment_reference(
    x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, S), each [Q, S, Tq, Ts]: P = sigmoid(MLP(concat(x_i, y_j))), S = cos(x_i, y_j)."""
    validate_tap_inputs(x, y, weights, biases)
    q, tq, d = x.shape
    s, ts, _ = y.shape
    pairs = torch.cat(
        [x[:, None, :, None, :].expand(q, s, tq, ts, d), y[None, :, None, :, :].expand(q, s, tq, ts, d)], dim=-1
    )
    h = pairs
    for k, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w, b)
        if k < len(weights) - 1:
            h = F.relu(h)
    p = torch.sigmoid(h.squeeze(-1))
    cos = torch.einsum("qid,sjd->qsij", F.normalize(x, dim=-1, eps=1e-12), F.normalize(y, dim=-1, eps=1e-12))
    return p, cos


def tap_scores_reference(
    x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> torch.Tensor:
    """[Q, S] TAP scores: sum over i, j of P_ij * S_ij."""
    p, cos = tap_alignment_reference(x, y, weights, biases)
    return (p * cos).sum(dim=(-2, -1))
