"""A tiny synthetic set and model for training tests (seconds on 2 CPU cores).

Three families (one per split: 8, 4 and 8 classes), 3 videos each, 16 frames of 32 px; 3-way 1-shot,
T = 4, 28 px crops, a few thousand parameters. One dataset per pytest session (cached by name).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from tap_fast.config import TrainConfig

FAMILIES = ("disc_horizontal", "triangle_horizontal", "cross_horizontal")  # train, val, test


def tiny_config(data_root, out_dir, **overrides) -> TrainConfig:
    values = dict(
        data_root=str(data_root), synthetic_videos_per_class=3, synthetic_frames=16, synthetic_size=32,
        synthetic_families=FAMILIES, way=3, shot=1, query=1, frames=4, resize=32, crop=28,
        feature_dim=16, lstm_hidden=8, mlp_hidden=(16, 8), episodes=8, val_every=4, val_episodes=2,
        test_episodes=2, test_shots=(1,), checkpoint_every=2, log_every=1, plots=False, device="cpu",
        out_dir=str(out_dir),
    )
    values.update(overrides)
    return TrainConfig(**values)


def tiny_cli_args(config: TrainConfig) -> list[str]:
    """The same config as `python -m tap_fast.train` arguments (every field through --set)."""
    import json

    args = []
    for key, value in config.to_dict().items():
        args += ["--set", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return args + ["--no-progress"]


def model_parameters(state_dict: dict) -> dict:
    """Trainable tensors only (BatchNorm running statistics are buffers, not parameters)."""
    return {k: v for k, v in state_dict.items() if "running_" not in k and "num_batches_tracked" not in k}


@contextmanager
def one_thread():
    """2 busy cores: intra-op threads only slow these tiny ops down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
