"""Training configuration as plain values, and the presets that fill them.

A preset names a dataset and the hyper-parameters that go with it. The paper presets follow the
TAP paper (Section 5.2): T = 6 sparse frames, resize 256, crop 224, ResNet-50 from ImageNet
weights, BiLSTM 2048 -> 2 x 1024, MLP 1024-256-64-1, SGD lr 1e-3 x0.1 every 200 epochs, momentum
0.9, weight decay 1e-4, gradient-norm clip 40 on the backbone and BiLSTM, horizontal flip on
Kinetics, UCF101 and HMDB51 (never on Something-Something, whose labels say left/right). The
"synthetic" preset is sized to train on a laptop CPU in minutes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

HEADS = ("tap", "otam", "tsn")


@dataclass
class TrainConfig:
    preset: str = "synthetic"
    # data
    data_root: str | None = None  # synthetic: cache dir (default ~/.cache/tap_fast); others: required
    dataset_format: str = "synthetic"  # synthetic | auto | video-folders | frame-folders (tap_fast.data.formats)
    split_dir: str | None = None  # directory with train/val/test split lists (default: <data_root>/splits if present)
    decoder: str = "auto"  # auto | dali-gpu | dali-cpu | pyav | pil (tap_fast.data.select_decoder)
    bad_video_policy: str = "fail"  # fail | skip: unreadable, empty, truncated or too-short videos
    frames: int = 8  # T, sparse TSN segments per video
    # synthetic generator sizes (dataset_format "synthetic"; defaults: the embedded benchmark)
    synthetic_videos_per_class: int = 20
    synthetic_frames: int = 32
    synthetic_size: int = 64
    synthetic_families: tuple[str, ...] | None = None  # a subset of the families (tests, quick runs)
    resize: int = 64
    crop: int = 56
    flip: bool = False  # horizontal flip in training; never for order/direction-sensitive labels
    # model
    backbone: str = "small"  # small | resnet50
    backbone_weights: str | None = None  # local file with ImageNet weights (resnet50)
    feature_dim: int = 128  # Df of the small backbone (ResNet-50: 2048)
    lstm_hidden: int = 64  # per direction; Dg = 2 * lstm_hidden
    mlp_hidden: tuple[int, ...] = (128, 64, 32)
    head: str = "tap"
    otam_gamma: float = 0.1
    # episodes
    way: int = 5
    shot: int = 1
    query: int = 1
    episodes: int = 6000  # training episodes in total
    episodes_per_epoch: int = 500  # an "epoch" for the lr schedule and logging
    episodes_per_step: int = 1  # episodes averaged into one optimizer step, per process (DDP: x world size)
    # optimisation
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_epochs: int = 200  # multiply lr by lr_gamma every this many epochs
    lr_gamma: float = 0.1
    clip_norm: float = 40.0  # on backbone + BiLSTM parameters, as the paper
    # evaluation
    val_every: int = 1000  # episodes between meta-validation runs
    val_episodes: int = 200
    test_episodes: int = 1000
    test_shots: tuple[int, ...] = (1, 5)
    # run
    precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp32) | bf16 | fp16 (GradScaler) | fp32
    checkpoint_every: int = 250  # optimizer steps between last.pt writes (also at validation, SIGTERM, SIGINT)
    log_every: int = 50  # optimizer steps between log.jsonl / TensorBoard records
    plots: bool = True  # training curves and an alignment example in out_dir at the end
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    out_dir: str = "runs/tap-synthetic"
    device: str = "auto"

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        values = dict(values)
        for key in ("mlp_hidden", "test_shots", "synthetic_families"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# the enumerated fields and their values (the rest are checked by type only)
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset_format": ("synthetic", "auto", "video-folders", "frame-folders"),
    "decoder": ("auto", "dali-gpu", "dali-cpu", "pyav", "pil"),
    "bad_video_policy": ("fail", "skip"),
    "backbone": ("small", "resnet50"),
    "head": HEADS,
    "optimizer": ("adamw", "sgd"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}  # strings (postponed annotations)


def check_value(name: str, value):
    """value as field `name` holds it (a JSON list -> tuple, an int -> float for float fields), or a
    ValueError saying what the field takes. bool is not an int here: `frames=true` is a mistake."""
    kind = _FIELD_TYPES[name]
    if value is None and kind.endswith("| None"):
        return None
    kind = kind.removesuffix(" | None")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} takes an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} takes a number, got {value!r}")
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name} takes a string, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    elif kind == "tuple[int, ...]":  # layer widths, shot counts: a zero or negative one is always a mistake
        if (not isinstance(value, (list, tuple)) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
            raise ValueError(f"{name} takes a non-empty list of positive integers (e.g. [32,16]), got {value!r}")
        value = tuple(value)
    elif kind == "tuple[str, ...]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} takes a list of strings, got {value!r}")
        value = tuple(value)
    return value


def _paper(**overrides) -> TrainConfig:
    """The TAP paper's settings (Section 5.2) for a real dataset."""
    base = dict(
        dataset_format="auto",  # video files or JPEG frame folders, detected from --data-root
        frames=6,
        resize=256,
        crop=224,
        backbone="resnet50",
        feature_dim=2048,
        lstm_hidden=1024,
        mlp_hidden=(1024, 256, 64),
        optimizer="sgd",
        lr=1e-3,
        momentum=0.9,
        weight_decay=1e-4,
        lr_step_epochs=200,
        lr_gamma=0.1,
        clip_norm=40.0,
        episodes=10_000 * 50,
        episodes_per_epoch=500,
        val_every=10_000,
        val_episodes=1000,
        test_episodes=10_000,
    )
    base.update(overrides)
    return TrainConfig(**base)


PRESETS: dict[str, TrainConfig] = {
    "synthetic": TrainConfig(),
    "kinetics100": _paper(preset="kinetics100", flip=True, out_dir="runs/tap-kinetics100"),
    "ssv2-small": _paper(preset="ssv2-small", flip=False, out_dir="runs/tap-ssv2-small"),
    "ssv2-full": _paper(preset="ssv2-full", flip=False, out_dir="runs/tap-ssv2-full"),
    "ucf101": _paper(preset="ucf101", flip=True, out_dir="runs/tap-ucf101"),
    "hmdb51": _paper(preset="hmdb51", flip=True, out_dir="runs/tap-hmdb51"),
}


def preset(name: str) -> TrainConfig:
    """The named preset, or a ValueError listing the known ones."""
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
