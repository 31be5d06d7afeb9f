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
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # not a torch file, truncated, or pickled objects beyond tensors
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"cannot read backbone weights {path}: not a PyTorch state dict file "
                             f"({type(error).__name__}: {reason[:200]})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path} is not a ResNet-50 state dict (expected a dict of tensors, "
                             f"got {type(state).__name__})")
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        # shapes first: load_state_dict would raise a long RuntimeError for, e.g., ResNet-18 weights
        expected = model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (ResNet-50: {tuple(expected[k].shape)})"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
        # older torchvision files lack the BatchNorm counters, which are no weights
        missing = [k for k in expected if k not in state and not k.startswith("fc.")
                   and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in expected]
        if wrong or missing or unexpected:
            raise ValueError(f"{path} is not a ResNet-50 state dict: "
                             + "; ".join(f"{what} {items[:3]}" for what, items in
                                         (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected))
                                         if items))
        model.load_state_dict(state, strict=False)
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
