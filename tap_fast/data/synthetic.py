"""The embedded synthetic benchmark: procedural shape motions in which order matters.

Classes come in FAMILIES of eight. A family is one (shape, motion kind) pair, e.g. a disc moving
horizontally; its classes differ only in the temporal order of the same motion parameter
u in [0, 1] (position along the path, size, angle, brightness, ...):

    forward         u = s                     e.g. left to right
    backward        forward played in reverse (its time-reversed twin), e.g. right to left
    out_and_back    u = 1 - |2s - 1|          e.g. left -> right -> left
    back_and_out    u = |2s - 1|              e.g. right -> left -> right
    twice_forward   u = 2s mod 1 (sawtooth)   e.g. left to right, jump back, left to right
    twice_backward  twice_forward reversed    e.g. right to left, jump back, right to left
    out_back_twice  out_and_back at 2x rate   e.g. left -> right -> left -> right -> left
    back_out_twice  back_and_out at 2x rate   e.g. right -> left -> right -> left -> right

with s the progress of the motion. All orders give u the same (uniform) distribution over the
motion and share the same nuisance distribution, so one frame, or the mean of all frames, shows
the family but hardly the class: only the order does. Families are assigned whole to a split:
train 8 families x 8 orders = 64 classes, val 1 x 8 + 1 x 4 (the first four orders) = 12,
test 3 x 8 = 24. In a 5-way test episode a query's same-looking rivals are then present in most
episodes (see README.md, "The embedded synthetic benchmark").

Per-video nuisance (independent of the class): motion duration 80-100% of the clip (the double
orders must stay readable from T = 8 sampled frames; the same range for every order, so the
duration is no cue) with a random start offset, path centre and extent jitter, shape size, shape
and background colours, static background clutter, per-frame noise, and 1-2 distractor shapes
(static or drifting).

Files: VP9 .webm (PyAV, libvpx-vp9, yuv420p) under ``<dir>/videos/<class>/<nnn>.webm`` plus
``<dir>/index.jsonl`` (see index.py) and ``<dir>/manifest.json``. The dataset directory is
generated in a temporary sibling and renamed into place, so a directory that exists is complete.

CLI: ``python -m tap_fast.data.synthetic --list`` prints the class table;
``python -m tap_fast.data.synthetic`` generates the default dataset and prints its index path.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tap_fast.interrupt import ignore_ctrl_c, report_interrupted

from .index import DatasetIndex, VideoRecord

GENERATOR_VERSION = 2  # v2: families of 8 orders, motion covers 80-100% of the clip
ORDERS = ("forward", "backward", "out_and_back", "back_and_out",
          "twice_forward", "twice_backward", "out_back_twice", "back_out_twice")
BASIC_ORDERS = ORDERS[:4]  # a family may use only these (one val family does)
# Orders rendered as another order's clip played backwards (exact time-reversed twins).
_REVERSED_RENDERING = {"backward": "forward", "twice_backward": "twice_forward"}
DEFAULT_FPS = 12
VP9_OPTIONS = {"crf": "28", "b:v": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}

# Per motion kind: the class-name label of each basic order (same order as BASIC_ORDERS) and a
# description. The double orders append "_twice" (e.g. left_right_left_twice = L->R->L->R->L).
MOTIONS: dict[str, tuple[tuple[str, str, str, str], str]] = {
    "horizontal": (("left_to_right", "right_to_left", "left_right_left", "right_left_right"),
                   "translates along a horizontal path"),
    "vertical": (("top_to_bottom", "bottom_to_top", "top_bottom_top", "bottom_top_bottom"),
                 "translates along a vertical path"),
    "diagonal": (("topleft_to_bottomright", "bottomright_to_topleft",
                  "topleft_bottomright_topleft", "bottomright_topleft_bottomright"),
                 "translates along the main diagonal"),
    "scale": (("growing", "shrinking", "grow_then_shrink", "shrink_then_grow"),
              "stays in place and changes size"),
    "rotation": (("rotating_clockwise", "rotating_counterclockwise", "rotating_cw_then_ccw",
                  "rotating_ccw_then_cw"), "stays in place and rotates by 90 degrees"),
    "brightness": (("fading_in", "fading_out", "fade_in_then_out", "fade_out_then_in"),
                   "stays in place and changes contrast against the background"),
    "orbit": (("orbiting_clockwise", "orbiting_counterclockwise", "orbiting_cw_then_ccw",
               "orbiting_ccw_then_cw"), "moves along a 270-degree arc around a centre"),
    "stretch": (("lengthening", "shortening", "lengthen_then_shorten", "shorten_then_lengthen"),
                "stays in place and changes length"),
}
_ORDER_WORDS = {"twice_forward": "twice in a row, jumping back to the start in between",
                "twice_backward": "twice in a row, jumping back to the start in between",
                "out_back_twice": "twice in a row", "back_out_twice": "twice in a row"}

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar", "tee")

# (shape, motion, split, number of orders). Every motion kind of val/test also appears in train
# with another shape, and every val/test shape appears in train with another motion, so neither
# alone identifies a family (and within a family the shape is shared by all classes).
_FAMILY_TABLE: tuple[tuple[str, str, str, int], ...] = (
    ("disc", "horizontal", "train", 8), ("cross", "vertical", "train", 8), ("tee", "diagonal", "train", 8),
    ("square", "scale", "train", 8), ("bar", "rotation", "train", 8), ("triangle", "brightness", "train", 8),
    ("ring", "orbit", "train", 8), ("bar", "stretch", "train", 8),
    ("square", "orbit", "val", 8), ("triangle", "horizontal", "val", 4),
    ("cross", "horizontal", "test", 8), ("triangle", "scale", "test", 8), ("tee", "rotation", "test", 8),
)


@dataclass(frozen=True)
class SyntheticClass:
    name: str          # e.g. "disc_left_to_right"
    family: str        # e.g. "disc_horizontal"
    shape: str
    motion: str
    order: str         # one of ORDERS
    split: str
    description: str


def _order_label(basic_labels: Sequence[str], order: str) -> str:
    i = ORDERS.index(order)
    return basic_labels[i] if i < 4 else basic_labels[i - 4] + "_twice"


def _build_families() -> dict[str, tuple[SyntheticClass, ...]]:
    out = {}
    for shape, motion, split, n_orders in _FAMILY_TABLE:
        labels, what = MOTIONS[motion]
        fam = f"{shape}_{motion}"
        members = []
        for order in ORDERS[:n_orders]:
            label = _order_label(labels, order)
            words = labels[ORDERS.index(order) % 4].replace("_", " ")
            if order in _ORDER_WORDS:
                words += f", {_ORDER_WORDS[order]}"
            members.append(SyntheticClass(f"{shape}_{label}", fam, shape, motion, order, split,
                                          f"a {shape} {what}: {words}"))
        out[fam] = tuple(members)
    return out


#: family name -> its classes (8, or the 4 basic orders), in ORDERS order. 13 families,
#: 100 classes, 64/12/24.
SYNTHETIC_FAMILIES: dict[str, tuple[SyntheticClass, ...]] = _build_families()
#: class name -> SyntheticClass.
SYNTHETIC_CLASSES: dict[str, SyntheticClass] = {c.name: c for f in SYNTHETIC_FAMILIES.values() for c in f}
_TWIN_ORDER = {**_REVERSED_RENDERING, **{v: k for k, v in _REVERSED_RENDERING.items()}}


def time_reversed_twin(class_name: str) -> str:
    """The class whose clips are this class's clips played backwards (palindromic orders are
    their own reversal)."""
    c = _lookup_class(class_name)
    twin_order = _TWIN_ORDER.get(c.order, c.order)
    return next(k.name for k in SYNTHETIC_FAMILIES[c.family] if k.order == twin_order)


def _lookup_class(name: str) -> SyntheticClass:
    try:
        return SYNTHETIC_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown synthetic class {name!r}; see `python -m tap_fast.data.synthetic --list`") from None


# ---------------------------------------------------------------------------------------------
# Nuisance and rendering (pure numpy)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nuisance:
    """Everything about one clip that is not its class. Distributions are time-symmetric
    (offset, drift direction, noise), so reversing a clip gives a clip of the twin class with an
    equally likely nuisance."""

    frames: int
    size: int
    motion_start: float      # frame where the motion starts
    motion_frames: float     # its duration in frames (80-100% of the clip)
    centre: tuple[float, float]
    extent: float            # path length / size range / orbit radius, in pixels
    shape_size: float        # half-size of the shape, pixels
    angle0: float            # base orientation, radians
    shape_rgb: tuple[float, float, float]
    background: np.ndarray   # [H, W, 3] float32 in [0, 1], static clutter included
    noise_seed: int
    noise_std: float
    distractors: tuple[dict, ...]  # shape, rgb, size, angle, start (x, y), velocity (px/frame)


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def sample_nuisance(rng: np.random.Generator, shape: str, frames: int = 32, size: int = 64) -> Nuisance:
    """Draw one clip's nuisance. `shape` is the class's shape (distractors use other shapes)."""
    scale = size / 64.0
    span = frames - 1
    duration = rng.uniform(0.8, 1.0) * span
    start = rng.uniform(0.0, span - duration)
    centre = (size / 2 + rng.uniform(-5, 5) * scale, size / 2 + rng.uniform(-5, 5) * scale)
    extent = rng.uniform(30, 40) * scale
    shape_size = rng.uniform(6.0, 8.5) * scale
    hue = rng.uniform()
    shape_rgb = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.8, 1.0))
    # Dark, tinted background with low-contrast static clutter (blobs and bars).
    bg_rgb = np.array(_hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = np.broadcast_to(bg_rgb, (size, size, 3)).copy()
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0, size, 2)
        sx, sy = rng.uniform(3, 14, 2) * scale
        amp = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
        bg += np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))[..., None] * amp
    others = [s for s in SHAPES if s != shape]
    distractors = []
    for _ in range(int(rng.integers(1, 3))):
        drifting = rng.uniform() < 0.5
        speed = rng.uniform(0.2, 0.6) * scale if drifting else 0.0
        heading = rng.uniform(0, 2 * math.pi)
        distractors.append(dict(
            shape=str(rng.choice(others)),
            rgb=_hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.45, 0.75)),
            size=float(rng.uniform(3.5, 6.0) * scale),
            angle=float(rng.uniform(0, 2 * math.pi)),
            # position at the clip's middle frame, so the drift is symmetric in time
            mid=(float(rng.uniform(6, size - 6)), float(rng.uniform(6, size - 6))),
            velocity=(speed * math.cos(heading), speed * math.sin(heading)),
        ))
    return Nuisance(frames, size, float(start), float(duration), centre, float(extent), float(shape_size),
                    float(rng.uniform(0, 2 * math.pi)), tuple(map(float, shape_rgb)),
                    np.clip(bg, 0, 1).astype(np.float32), int(rng.integers(1 << 31)),
                    float(rng.uniform(0.0, 0.03)), tuple(distractors))


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray, r: float, length: float = 1.0) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of a shape of half-size r centred
    at the origin, in the shape's own (rotated) frame. `length` stretches bars/tees along x."""
    if shape == "disc":
        return np.hypot(x, y) - r
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.85 * r
    if shape == "ring":
        return np.abs(np.hypot(x, y) - 0.75 * r) - 0.3 * r
    if shape == "bar":
        return np.maximum(np.abs(x) - 1.3 * r * length, np.abs(y) - 0.4 * r)
    if shape == "cross":
        return np.minimum(np.maximum(np.abs(x) - r, np.abs(y) - 0.3 * r),
                          np.maximum(np.abs(y) - r, np.abs(x) - 0.3 * r))
    if shape == "tee":  # a T: top bar plus stem; no rotational symmetry
        top = np.maximum(np.abs(x) - r * length, np.abs(y + 0.7 * r) - 0.3 * r)
        stem = np.maximum(np.abs(x) - 0.3 * r, np.abs(y - 0.15 * r) - 0.85 * r)
        return np.minimum(top, stem)
    if shape == "triangle":  # equilateral, pointing up (-y); distance to the three edges
        d = -np.inf
        for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            d = np.maximum(d, -(x * math.cos(a) + y * math.sin(a)) - 0.5 * r)
        return d / 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _draw(canvas: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, rgb,
          alpha: float = 1.0, length: float = 1.0, grid=None) -> None:
    """Alpha-blend an anti-aliased shape into canvas [H, W, 3] in place. Positive angle is
    clockwise on screen (image y points down)."""
    yy, xx = grid
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    # rotate points by -angle into the shape frame
    d = _signed_distance(shape, c * dx + s * dy, -s * dx + c * dy, r, length)
    cover = np.clip(0.5 - d, 0.0, 1.0)[..., None] * alpha
    canvas *= 1.0 - cover
    canvas += cover * np.asarray(rgb, np.float32)


def _triangle_wave(x: np.ndarray) -> np.ndarray:
    """0 -> 1 -> 0 over each unit interval of x (x >= 0)."""
    return 1.0 - np.abs(2.0 * (x - np.floor(x)) - 1.0)


def _order_u(order: str, s: np.ndarray) -> np.ndarray:
    """The motion parameter u over the motion's progress s in [0, 1]. Every order maps a uniform
    s to a uniform u (the same occupancy of positions/sizes/angles)."""
    s = np.asarray(s, np.float64)
    if order in _REVERSED_RENDERING:  # rendered as its twin, then reversed in time
        order = _REVERSED_RENDERING[order]
    if order == "forward":
        return s
    if order == "out_and_back":
        return 1.0 - np.abs(2.0 * s - 1.0)
    if order == "back_and_out":
        return np.abs(2.0 * s - 1.0)
    if order == "twice_forward":  # sawtooth; ends at 1 like forward, so the hold after it matches
        return np.where(s <= 0.5, 2.0 * s, 2.0 * s - 1.0)
    if order == "out_back_twice":
        return _triangle_wave(2.0 * s)
    if order == "back_out_twice":
        return 1.0 - _triangle_wave(2.0 * s)
    raise ValueError(f"unknown order {order!r}")


def render_clip(class_name: str, nuisance: Nuisance) -> np.ndarray:
    """Render one clip of a class: uint8 [frames, size, size, 3]."""
    cls = _lookup_class(class_name)
    nz = nuisance
    t = np.arange(nz.frames, dtype=np.float64)
    s = np.clip((t - nz.motion_start) / max(nz.motion_frames, 1e-6), 0.0, 1.0)
    u = _order_u(cls.order, s)
    size = nz.size
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    noise_rng = np.random.default_rng(nz.noise_seed)
    cx0, cy0 = nz.centre
    out = np.empty((nz.frames, size, size, 3), np.uint8)
    for f in range(nz.frames):
        canvas = nz.background.copy()
        for dis in nz.distractors:
            k = f - (nz.frames - 1) / 2
            _draw(canvas, dis["shape"], dis["mid"][0] + k * dis["velocity"][0], dis["mid"][1] + k * dis["velocity"][1],
                  dis["size"], dis["angle"], dis["rgb"], grid=grid)
        cx, cy, r, angle, alpha, length = cx0, cy0, nz.shape_size, nz.angle0, 1.0, 1.0
        uf, half = float(u[f]), nz.extent / 2
        if cls.motion == "horizontal":
            cx = cx0 + (uf - 0.5) * 2 * half
        elif cls.motion == "vertical":
            cy = cy0 + (uf - 0.5) * 2 * half
        elif cls.motion == "diagonal":
            cx, cy = cx0 + (uf - 0.5) * 2 * half / math.sqrt(2), cy0 + (uf - 0.5) * 2 * half / math.sqrt(2)
        elif cls.motion == "scale":
            r = nz.shape_size * (0.4 + 1.1 * uf)
        elif cls.motion == "rotation":
            angle = nz.angle0 + uf * math.pi / 2
            r = nz.shape_size * 1.3
        elif cls.motion == "brightness":
            alpha = 0.15 + 0.85 * uf
            r = nz.shape_size * 1.2
        elif cls.motion == "orbit":
            a = nz.angle0 + uf * 1.5 * math.pi
            rad = nz.extent * 0.45
            cx, cy = cx0 + rad * math.cos(a), cy0 + rad * math.sin(a)
        elif cls.motion == "stretch":
            angle = nz.angle0
            length = 0.35 + 1.15 * uf
        # keep the path inside the frame
        cx, cy = min(max(cx, r), size - 1 - r), min(max(cy, r), size - 1 - r)
        _draw(canvas, cls.shape, cx, cy, r, angle, nz.shape_rgb, alpha=alpha, length=length, grid=grid)
        if nz.noise_std > 0:
            canvas += noise_rng.normal(0.0, nz.noise_std, canvas.shape).astype(np.float32)
        out[f] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if cls.order in _REVERSED_RENDERING:
        out = out[::-1].copy()
    return out


# ---------------------------------------------------------------------------------------------
# Encoding and dataset generation
# ---------------------------------------------------------------------------------------------
def write_webm(path: str | os.PathLike, frames: np.ndarray, fps: int = DEFAULT_FPS) -> None:
    """Encode uint8 [T, H, W, 3] RGB frames to a VP9 .webm (yuv420p) with PyAV."""
    import av  # imported lazily: listing classes needs no codec

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {frames.shape[1]}x{frames.shape[2]}")
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps, options=dict(VP9_OPTIONS))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_seed(seed: int, class_name: str, video: int) -> list[int]:
    # Hash of the class name (not its position) so subsets render the same clips as the full set.
    h = int.from_bytes(hashlib.sha256(class_name.encode()).digest()[:4], "little")
    return [int(seed), h, int(video), GENERATOR_VERSION]


def _generate_one(job: tuple) -> tuple[str, int]:
    out_path, class_name, seed, video, frames, size = job
    cls = SYNTHETIC_CLASSES[class_name]
    nz = sample_nuisance(np.random.default_rng(_video_seed(seed, class_name, video)), cls.shape, frames, size)
    write_webm(out_path, render_clip(class_name, nz))
    return out_path, frames


def default_data_root() -> Path:
    """`$TAP_FAST_DATA_DIR` if set, else ~/.cache/tap_fast."""
    env = os.environ.get("TAP_FAST_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tap_fast"


def _resolve_classes(families: Sequence[str] | None, classes: Sequence[str] | None) -> list[str]:
    if families is not None and classes is not None:
        raise ValueError("give families or classes, not both")
    if classes is not None:
        names = [_lookup_class(c).name for c in classes]
    elif families is not None:
        unknown = [f for f in families if f not in SYNTHETIC_FAMILIES]
        if unknown:
            raise ValueError(f"unknown synthetic families {unknown}; known: {sorted(SYNTHETIC_FAMILIES)}")
        names = [c.name for f in families for c in SYNTHETIC_FAMILIES[f]]
    else:
        names = list(SYNTHETIC_CLASSES)
    if len(set(names)) != len(names) or not names:
        raise ValueError("the class list must be non-empty and without repeats")
    return names


def dataset_dir_name(seed: int, videos_per_class: int, frames: int, size: int, class_names: Sequence[str]) -> str:
    """Directory name encoding everything that changes the data, so changed settings regenerate."""
    name = f"synthetic-v{GENERATOR_VERSION}-seed{seed}-{len(class_names)}c-{videos_per_class}v-{frames}f-{size}px"
    if list(class_names) != list(SYNTHETIC_CLASSES):
        name += "-" + hashlib.sha256(",".join(class_names).encode()).hexdigest()[:10]
    return name


def synthetic_dataset_dir(root: str | os.PathLike | None = None, seed: int = 0, videos_per_class: int = 20,
                          frames: int = 32, size: int = 64, families: Sequence[str] | None = None,
                          classes: Sequence[str] | None = None) -> Path:
    """Where ensure_synthetic_dataset with these arguments keeps the set, generated or not."""
    parent = Path(root).expanduser() if root is not None else default_data_root()
    return parent / dataset_dir_name(seed, videos_per_class, frames, size, _resolve_classes(families, classes))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_temp_dirs(parent: Path, final_name: str) -> None:
    """Remove leftovers of interrupted generations (their owning process is gone)."""
    for p in parent.glob(f".{final_name}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            pid = -1
        if pid <= 0 or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


SYNTHETIC_MAX = 1024  # frames and pixels per side: a 1024-frame 1024 px clip is already 3 GiB drawn


def ensure_synthetic_dataset(root: str | os.PathLike | None = None, seed: int = 0, videos_per_class: int = 20,
                             frames: int = 32, size: int = 64, workers: int = 2, progress: bool = True,
                             families: Sequence[str] | None = None,
                             classes: Sequence[str] | None = None) -> Path:
    """Generate the synthetic benchmark once (cached) and return the path of its index.jsonl.

    root: parent directory of the dataset (default: default_data_root()); the dataset itself
    lives in `root/dataset_dir_name(...)`. families / classes: optional subset (tests).
    The same arguments always give byte-identical frames before encoding and the same index.
    """
    for name, v, lo in (("videos_per_class", videos_per_class, 1), ("frames", frames, 2), ("size", size, 16),
                        ("workers", workers, 1)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if size % 2:
        raise ValueError(f"size must be even (yuv420p), got {size}")
    for name, v in (("size", size), ("frames", frames)):  # each clip is drawn whole in memory
        if v > SYNTHETIC_MAX:
            raise ValueError(f"{name} must be <= {SYNTHETIC_MAX} for the synthetic set, got {v}")
    names = _resolve_classes(families, classes)
    final = synthetic_dataset_dir(root, seed, videos_per_class, frames, size, classes=names)
    parent = final.parent
    index_path = final / "index.jsonl"
    if (final / "manifest.json").is_file() and index_path.is_file():
        return index_path
    if final.exists():  # our directories appear complete (rename), so this one was made by hand
        raise FileExistsError(f"{final} exists but has no manifest.json/index.jsonl, so it is not a complete "
                              "synthetic dataset; delete it to regenerate")
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temp_dirs(parent, final.name)
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        jobs, records = [], []
        for c in names:
            (tmp / "videos" / c).mkdir(parents=True)
            for v in range(videos_per_class):
                rel = Path("videos") / c / f"{v:03d}.webm"
                jobs.append((str(tmp / rel), c, seed, v, frames, size))
                records.append(VideoRecord(final / rel, c, SYNTHETIC_CLASSES[c].split, frames))
        if not progress:  # no bar: say what the wait is for
            print(f"tap_fast.data: generating the synthetic set ({len(jobs)} videos) in {final}",
                  file=sys.stderr, flush=True)
        _run_jobs(jobs, workers, progress)
        # Index paths are relative to the index file, so writing it inside tmp is fine.
        DatasetIndex([VideoRecord(tmp / r.path.relative_to(final), r.class_name, r.split, r.num_frames)
                      for r in records]).save(tmp / "index.jsonl")
        manifest = dict(generator_version=GENERATOR_VERSION, seed=seed, videos_per_class=videos_per_class,
                        frames=frames, size=size, fps=DEFAULT_FPS, codec="libvpx-vp9", vp9_options=VP9_OPTIONS,
                        classes=[asdict(SYNTHETIC_CLASSES[c]) for c in names],
                        generation_seconds=round(time.perf_counter() - t0, 2))
        # The manifest is the completeness marker: written last, then the whole dir renamed.
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # not a concurrent generator finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index_path


def _run_jobs(jobs: list[tuple], workers: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress, file=sys.stderr)
    if workers == 1:
        for job in jobs:
            _generate_one(job)
            bar.update()
    else:
        import multiprocessing as mp

        # spawn, not fork: safe after torch/threads were started in the parent.
        # workers ignore Ctrl-C: the parent alone stops (and removes the half-made set), rather
        # than every worker printing its own KeyboardInterrupt traceback. They start with SIGINT
        # blocked (the mask survives exec) until their initializer ignores it: a Ctrl-C while one
        # is still importing would otherwise be a traceback too (CPython's resource tracker does the
        # same, bpo-33613; started first, as its own start would unblock SIGINT again).
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pool = mp.get_context("spawn").Pool(workers, initializer=ignore_ctrl_c)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C meanwhile lands here
        with pool:
            for _ in pool.imap_unordered(_generate_one, jobs, chunksize=8):
                bar.update()
    bar.close()


def class_table() -> str:
    """A text table of all families and classes (for --list and the README)."""
    lines = [f"{len(SYNTHETIC_CLASSES)} classes in {len(SYNTHETIC_FAMILIES)} families "
             f"(orders: {', '.join(ORDERS)}; 'backward' and 'twice_backward' are the forward clips reversed)"]
    for fam, members in SYNTHETIC_FAMILIES.items():
        lines.append(f"[{members[0].split:5s}] {fam}: {MOTIONS[members[0].motion][1]}")
        for c in members:
            lines.append(f"    {c.name:42s} {c.order}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tap_fast.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="print the class list and exit")
    ap.add_argument("--root", default=None, help="parent directory (default $TAP_FAST_DATA_DIR or ~/.cache/tap_fast)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clips' shapes and motions (default 0)")
    ap.add_argument("--videos-per-class", type=int, default=20, help="videos of each of the 100 classes (default 20)")
    ap.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    ap.add_argument("--size", type=int, default=64, help="frame width and height in pixels, even (default 64)")
    ap.add_argument("--workers", type=int, default=2, help="encoding processes (default 2)")
    args = ap.parse_args(argv)
    if args.list:
        print(class_table())
        return 0
    t0 = time.perf_counter()
    try:
        path = ensure_synthetic_dataset(args.root, args.seed, args.videos_per_class, args.frames, args.size,
                                        args.workers)
    except (ValueError, FileExistsError) as error:  # a bad size, a folder made by hand: one line
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return report_interrupted()
    print(f"{path}  ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
