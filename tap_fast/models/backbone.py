"""Per-frame feature extractors f_theta: frames [B, 3, H, W] -> features [B, Df]."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SmallConvNet(nn.Module):
    """A small CNN for the CPU demo.

    It keeps a coarse spatial map (flattened, not average-pooled) because the synthetic classes
    differ by where a shape is over time: global pooling would throw position away.
    """

    def __init__(self, feature_dim: int = 128, width: int = 32, in_size: int = 56):
        super().__init__()
        layers, channels = [], 3
        for out_channels in (width, width, 2 * width, 2 * width):
            layers += [
                nn.Conv2d(channels, out_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.project = nn.Linear(channels * 16, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(frames).flatten(1))


def resnet50_backbone(weights_path: str | None) -> nn.Module:
    """torchvision ResNet-50 without its classifier (Df = 2048).

    ImageNet weights come only from a local file the user names (nothing is downloaded).
    """
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file not found: {path}. Pass a local ResNet-50 ImageNet "
                "state dict (e.g. torchvision's resnet50-11ad3fa6.pth) with --backbone-weights, "
                "or omit it to start from random weights."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} is not a ResNet-50 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    model.fc = nn.Identity()
    model.feature_dim = 2048
    return model


def build_backbone(name: str, feature_dim: int, weights_path: str | None = None) -> nn.Module:
    if name == "small":
        if weights_path is not None:
            raise ValueError("--backbone-weights applies to the resnet50 backbone only")
        return SmallConvNet(feature_dim)
    if name == "resnet50":
        return resnet50_backbone(weights_path)
    raise ValueError(f"unknown backbone {name!r}; choose 'small' or 'resnet50'")
