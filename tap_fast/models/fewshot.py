"""The few-shot classifier: backbone per frame -> head -> class scores -> loss."""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone
from .heads import build_head


class FewShotModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, T, 3, H, W] -> per-frame features [B, T, Df]."""
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise ValueError(f"clips must be [videos, frames, 3, H, W], got {tuple(clips.shape)}")
        b, t = clips.shape[:2]
        features = self.backbone(clips.flatten(0, 1))
        return features.view(b, t, -1)

    def forward(self, support: torch.Tensor, query: torch.Tensor, way: int) -> torch.Tensor:
        """Class logits [NQ, way]. support is class-major: support[c * shot + k] is class c."""
        _check_support(support.shape[0], way)  # before the backbone runs
        features = self.frame_features(torch.cat([support, query]))
        return self.logits_from_features(features[: len(support)], features[len(support):], way)

    def logits_from_features(self, support_features: torch.Tensor, query_features: torch.Tensor,
                             way: int) -> torch.Tensor:
        """Class logits [NQ, way] from per-frame features [N, T, Df] (class-major support)."""
        _check_support(support_features.shape[0], way)
        similarity = self.head(query_features, support_features)  # [NQ, NS]
        shot = support_features.shape[0] // way
        # c(V, k): mean similarity to the class's support videos
        return similarity.view(len(query_features), way, shot).mean(-1)

    def alignment_maps(self, support: torch.Tensor, query: torch.Tensor):
        features = self.frame_features(torch.cat([support, query]))
        return self.head.alignment_maps(features[len(support):], features[: len(support)])


def _check_support(num_support: int, way: int) -> None:
    # Zero support videos would pass a bare `% way` test and give NaN logits (mean over nothing).
    if isinstance(way, bool) or not isinstance(way, numbers.Integral) or way < 1:
        raise ValueError(f"way must be an int >= 1, got {way!r}")
    if num_support == 0 or num_support % way:
        raise ValueError(f"{num_support} support videos do not split into {way} classes "
                         f"(need shot >= 1 videos per class, class-major)")


def episode_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def build_model(config) -> FewShotModel:
    backbone = build_backbone(config.backbone, config.feature_dim, config.backbone_weights)
    head = build_head(
        config.head, backbone.feature_dim, config.lstm_hidden, config.mlp_hidden, config.otam_gamma
    )
    return FewShotModel(backbone, head)


def parameter_groups_to_clip(model: FewShotModel) -> list[nn.Parameter]:
    """The paper clips the gradients of theta (backbone) and alpha (BiLSTM) only."""
    params = list(model.backbone.parameters())
    temporal = getattr(model.head, "temporal", None)
    if temporal is not None:
        params += list(temporal.parameters())
    return params
