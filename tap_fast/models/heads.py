"""Video-to-video similarity heads: query features [NQ, T, Df], support [NS, T, Df] -> [NQ, NS].

Higher means more alike; the few-shot model averages these over a class's support videos and
feeds the result to a softmax as class logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tap_fast.kernels import soft_dtw, tap_alignment, tap_scores


def frame_cosines(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """cos(query frame i, support frame j) for every pair: [NQ, NS, Tq, Ts]."""
    q, s = F.normalize(query, dim=-1), F.normalize(support, dim=-1)
    return torch.einsum("qid,sjd->qsij", q, s)


class TapHead(nn.Module):
    """Temporal Alignment Prediction: BiLSTM g_alpha, then sum_ij P_ij * S_ij (the paper, Eq. 3)."""

    def __init__(self, feature_dim: int, lstm_hidden: int, mlp_hidden: tuple[int, ...]):
        super().__init__()
        self.temporal = nn.LSTM(feature_dim, lstm_hidden, batch_first=True, bidirectional=True)
        dims = [4 * lstm_hidden, *mlp_hidden, 1]  # h_beta reads concat(X_i, Y_j)
        self.alignment = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.temporal(features)[0]

    def _mlp(self):
        return [layer.weight for layer in self.alignment], [layer.bias for layer in self.alignment]

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        return tap_scores(self.encode(query), self.encode(support), *self._mlp())

    @torch.no_grad()
    def alignment_maps(self, query: torch.Tensor, support: torch.Tensor):
        """(P, S), each [NQ, NS, T, T]: the predicted alignment and the cosine map."""
        return tap_alignment(self.encode(query), self.encode(support), *self._mlp())


class OtamHead(nn.Module):
    """TAM/OTAM (Cao et al. 2020): soft-DTW over 1 - cos of frame features, both directions."""

    def __init__(self, gamma: float = 0.1):
        super().__init__()
        self.gamma = gamma

    def _distance(self, cost: torch.Tensor) -> torch.Tensor:
        """OTAM distance of both directions [NQ, NS] from the cost 1 - cos [NQ, NS, Tq, Ts]."""
        nq, ns, tq, ts = cost.shape
        forward = soft_dtw(cost.reshape(nq * ns, tq, ts), self.gamma, variant="otam")
        backward = soft_dtw(cost.transpose(-1, -2).reshape(nq * ns, ts, tq), self.gamma, variant="otam")
        return (forward + backward).view(nq, ns)

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        # soft-DTW sums T + T terms through log-sum-exp: keep it in fp32 even under autocast
        return -self._distance(1 - frame_cosines(query, support).float())

    def alignment_maps(self, query, support):
        """(A, S), each [NQ, NS, Tq, Ts]: A is soft-DTW's expected alignment, d distance / d cost (how
        much each frame pair weighs on the soft path, in [0, 1]), averaged over the two directions;
        S the cosines.  A plays the part of TAP's P in the alignment plot."""
        cos = frame_cosines(query, support)
        with torch.enable_grad():
            cost = (1 - cos.detach().float()).requires_grad_()
            (align,) = torch.autograd.grad(self._distance(cost).sum(), cost)
        return align / 2, cos


class TsnHead(nn.Module):
    """FewShot-TSN: mean-pool the frames, cosine of the pooled vectors (order-blind by design)."""

    def __init__(self, initial_scale: float = 10.0):
        super().__init__()
        # cosine lives in [-1, 1]; a learned temperature lets the softmax become confident
        self.logit_scale = nn.Parameter(torch.tensor(float(initial_scale)))

    def forward(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        q = F.normalize(query.mean(1), dim=-1)
        s = F.normalize(support.mean(1), dim=-1)
        return self.logit_scale * q @ s.T

    def alignment_maps(self, query, support):
        return None, frame_cosines(query, support)


def build_head(name: str, feature_dim: int, lstm_hidden: int, mlp_hidden, otam_gamma: float) -> nn.Module:
    if name == "tap":
        return TapHead(feature_dim, lstm_hidden, tuple(mlp_hidden))
    if name == "otam":
        return OtamHead(otam_gamma)
    if name == "tsn":
        return TsnHead()
    raise ValueError(f"unknown head {name!r}; choose tap, otam or tsn")
