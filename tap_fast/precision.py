"""Mixed precision: which autocast dtype a run uses, and the GradScaler fp16 needs.

"auto" is bf16 on a CUDA device that supports it and fp32 elsewhere: on a CPU, bf16 autocast is
slower than fp32 for this model's small convolutions and LSTM and costs accuracy for nothing.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """bf16 | fp16 | fp32 for this device; a ValueError for an unknown or unsupported choice."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use fp16 or fp32")
    return name


def autocast(precision: str, device: torch.device):
    """The forward-pass context: torch.autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (bf16 has fp32's range; disabled it passes through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
