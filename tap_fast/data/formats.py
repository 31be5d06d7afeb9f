"""Real dataset layouts -> a validated DatasetIndex, scanned once and cached next to the data.

Two on-disk layouts, as the few-shot community shares them:

* ``video-folders``: ``root/<class>/<video>.<ext>`` (mp4, webm, avi, mkv, ...).
* ``frame-folders``: ``root/<class>/<video>/<frame>.jpg`` (frames extracted once, the usual way
  Kinetics-100 and Something-Something v2 are shared for TRX/OTAM-style work). Frames are taken
  in file-name order with numbers compared as numbers (img_2.jpg before img_10.jpg).

Names starting with "." are skipped at every level (.DS_Store, macOS ``._v0.mp4`` AppleDouble
files, ``.ipynb_checkpoints/``).

Which class goes to which split comes from split lists in ``split_dir`` (files whose names start
with train / val / test, e.g. TRX's ``trainlist03.txt``, ``vallist03.txt``, ``testlist03.txt`` or
``train.txt``), each line one of:

* ``class/video`` (CMN / TRX lists; an extension on ``video`` is optional and need not be the
  file's: ``a/v0.mp4`` finds ``v0.MP4``, a transcoded ``v0.webm`` or a frame folder ``v0``; an
  entry matching two videos, ``v0.mp4`` and ``v0.avi``, is reported, not guessed),
* ``path [num_frames] label`` (OTAM/TSM-style annotation lines, whitespace separated; ``path`` is
  ``class/video`` (spaces allowed) or a bare video id, whose class is then ``label``),
* ``class`` alone (a list of class names; every video of the class is in that split).

A class may appear in one split's list only (few-shot splits are disjoint by class). A UTF-8
byte-order mark at the start of a list is ignored.
Without split lists the classes are split 64/12/24 (the CMN / OTAM proportion) by a fixed seed.

Probing a file (frame count, decodability) is the slow part, so the results are cached per file
(keyed by size and mtime; a frame folder by its file count and mtime, which editing a frame in
place does not change) in ``root/.tap_fast_index.json``, written atomically; a read-only root
falls back to ``cache_dir``. Problems (missing or a broken symlink, unreadable, empty, truncated,
too short) are reported by name (for frame folders: the first bad frame, every frame's first and
last bytes checked); ``policy="fail"`` raises BadVideoError, ``policy="skip"`` leaves them out.
The index carries the codec of every usable video (DatasetIndex.codecs), each codec's smallest
frame size (DatasetIndex.smallest_frames: NVDEC has minimum sizes) and how many videos are not
16-pixel aligned (DatasetIndex.unaligned_videos: NVDEC is slower on them) for the decoder choice.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tap_fast.atomic_write import write_text_atomic

from .index import SPLITS, DatasetIndex, VideoRecord, smaller_frame

FORMATS = ("video-folders", "frame-folders")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
POLICIES = ("fail", "skip")
CACHE_NAME = ".tap_fast_index.json"
CACHE_VERSION = 3  # 3: a video's frame size is kept (NVDEC's minimum); 2: every frame of a frame folder checked
CLASS_SPLIT = (64, 12, 24)  # train / val / test classes of Kinetics-100 and SSv2 few-shot splits

# Class counts the public splits have, checked (as a warning) when a preset names its dataset.
PRESET_CLASS_COUNTS = {
    "kinetics100": (64, 12, 24),
    "ssv2-small": (64, 12, 24),
    "ssv2-full": (64, 12, 24),
    "ucf101": (70, 10, 21),
    "hmdb51": (31, 10, 10),
}

# path may hold spaces (Kinetics class names: "air drumming/x1 12"): the numbers at the end split it off
_ANNOTATION_LINE = re.compile(r"^(?P<path>.+?)\s+(?:(?P<frames>\d+)\s+)?(?P<label>\d+)$")


class BadVideoError(ValueError):
    """Videos of a dataset that cannot be used; .problems lists (path, reason)."""

    def __init__(self, problems: list[tuple[str, str]], hint: str = ""):
        self.problems = list(problems)
        shown = "\n".join(f"  {p}: {why}" for p, why in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{len(self.problems)} unusable video(s):\n{shown}{more}{hint}")

    def __reduce__(self):
        return (type(self), (self.problems,))


class SplitListError(ValueError):
    """A split list is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Item:
    """One video of the dataset as the layout or a split list names it."""

    rel: str  # path relative to the root (a file or a frame folder)
    class_name: str
    split: str | None = None  # from a split list; None until assigned


# ---------------------------------------------------------------------------------------------
# Layout: which videos exist
# ---------------------------------------------------------------------------------------------
def is_frame_file(name: str) -> bool:
    return name.lower().endswith(FRAME_EXTENSIONS)


def is_video_file(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _visible(names):
    """Names not starting with ".": hidden and OS junk (.DS_Store, macOS ._v0.mp4 AppleDouble
    files, .ipynb_checkpoints/) would otherwise be taken for videos, frames or frame folders."""
    return [n for n in names if not n.startswith(".")]


def visible_entries(folder: Path) -> list[Path]:
    """folder's entries by name, hidden ones (names starting with ".") left out."""
    return [folder / n for n in sorted(_visible(os.listdir(folder)))]


def detect_format(root: str | os.PathLike) -> str:
    """"video-folders" or "frame-folders", from the first class folder that has content."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found or not a directory: {root}")
    for class_dir in (p for p in visible_entries(root) if p.is_dir()):
        for entry in visible_entries(class_dir):
            if entry.is_file() and is_video_file(entry.name):
                return "video-folders"
            if entry.is_dir() and frame_files(entry):
                return "frame-folders"
    raise ValueError(f"{root}: found neither root/<class>/<video>.<ext> ({', '.join(VIDEO_EXTENSIONS)}) "
                     f"nor root/<class>/<video>/<frame>.jpg; is --data-root the dataset's top folder?")


def scan_layout(root: str | os.PathLike, fmt: str) -> list[Item]:
    """Every video under root/<class>/ in the given layout, sorted by class then name; names
    starting with "." are skipped. A broken symlink named like a video is kept, so that probing
    reports it by name instead of the video silently going missing."""
    if fmt not in FORMATS:
        raise ValueError(f"dataset format {fmt!r} is not one of {FORMATS}")
    root = Path(root)
    items = []
    for class_dir in (p for p in visible_entries(root) if p.is_dir()):
        for entry in visible_entries(class_dir):
            if (fmt == "video-folders" and is_video_file(entry.name)
                    and (entry.is_file() or (entry.is_symlink() and not entry.exists()))):
                items.append(Item(f"{class_dir.name}/{entry.name}", class_dir.name))
            elif fmt == "frame-folders" and entry.is_dir():
                items.append(Item(f"{class_dir.name}/{entry.name}", class_dir.name))
    if not items:
        raise ValueError(_no_items_message(root, fmt))
    return items


def _no_items_message(root: Path, fmt: str) -> str:
    """Why scan_layout found nothing: most often the other layout was asked for."""
    want = "<class>/<video>/ frame folders" if fmt == "frame-folders" else "<class>/<video>.<ext> video files"
    try:
        other = detect_format(root)
    except ValueError as e:
        return str(e)
    holds = "video files" if other == "video-folders" else "frame folders"
    return f"no {want} under {root} (it holds {holds}: use --dataset-format {other} or auto)"


# ---------------------------------------------------------------------------------------------
# Split lists
# ---------------------------------------------------------------------------------------------
def find_split_files(split_dir: str | os.PathLike) -> dict[str, Path]:
    """{split: file} for the files in split_dir whose names start with train / val / test."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise SplitListError(f"split directory not found: {split_dir}")
    found: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for p in sorted(split_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in (".txt", ".list", ".csv", ""):
            for s in SPLITS:
                if p.name.lower().startswith(s):
                    found[s].append(p)
    for s, files in found.items():
        if len(files) > 1:
            raise SplitListError(f"{split_dir}: several {s} lists ({', '.join(f.name for f in files)}); "
                                 "keep one per split")
    missing = [s for s, files in found.items() if not files]
    if missing:
        raise SplitListError(f"{split_dir}: no split list for {', '.join(missing)} "
                             "(expected files named e.g. trainlist01.txt / vallist01.txt / testlist01.txt)")
    return {s: files[0] for s, files in found.items()}


def parse_split_line(line: str) -> tuple[str, str | None]:
    """One split-list line -> (class, video or None for a class-name line). See the module doc."""
    line = line.strip().replace("\\", "/")  # lists written on Windows
    m = _ANNOTATION_LINE.match(line)
    if m:
        path = m.group("path").strip("/")
        if "/" in path:
            cls, video = path.rsplit("/", 1)
            return cls.rsplit("/", 1)[-1], video
        return m.group("label"), path
    if "/" in line:
        cls, video = line.rstrip("/").rsplit("/", 1)
        return cls.rsplit("/", 1)[-1], video
    return line, None


def read_split_lists(split_dir: str | os.PathLike) -> dict[str, list[tuple[str, str | None]]]:
    """{split: [(class, video-or-None), ...]} from the split lists in split_dir.

    SplitListError when a class is listed in two splits' lists: few-shot splits are disjoint by
    class, and silently keeping the first would move the class out of the split the other list meant.
    """
    out = {}
    first_seen: dict[str, tuple[Path, int]] = {}  # class -> (list file, line) that first named it
    for split, path in find_split_files(split_dir).items():
        entries = []
        # utf-8-sig: a byte-order mark (Windows editors add one) would stick to the first entry
        for lineno, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            cls, video = parse_split_line(raw)
            if not cls:
                raise SplitListError(f"{path}:{lineno}: empty class name in {raw!r}")
            other, other_line = first_seen.setdefault(cls, (path, lineno))
            if other != path:
                raise SplitListError(f"class {cls!r} is listed in two split lists, {other}:{other_line} and "
                                     f"{path}:{lineno}; few-shot splits must be disjoint by class")
            entries.append((cls, video))
        if not entries:
            raise SplitListError(f"{path}: the {split} list is empty")
        out[split] = entries
    return out


def default_class_split(classes: list[str], seed: int = 0, ratios=CLASS_SPLIT) -> dict[str, str]:
    """Classes shuffled by a fixed seed and cut in the 64/12/24 proportion (>= 1 class each)."""
    classes = sorted(set(classes))
    if len(classes) < 3:
        raise ValueError(f"a train/val/test class split needs at least 3 classes, found {len(classes)}")
    order = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    total = sum(ratios)
    n_val = max(1, round(len(order) * ratios[1] / total))
    n_test = max(1, round(len(order) * ratios[2] / total))
    n_train = len(order) - n_val - n_test
    if n_train < 1:
        n_train, n_test = 1, len(order) - 1 - n_val
    split_of = {c: "train" for c in order[:n_train]}
    split_of.update({c: "val" for c in order[n_train:n_train + n_val]})
    split_of.update({c: "test" for c in order[n_train + n_val:]})
    return split_of


def _stem(name: str) -> str:
    """A video name without its video extension (any case); a frame folder's name as it is."""
    return os.path.splitext(name)[0] if is_video_file(name) else name


def assign_splits(items: list[Item], split_dir: str | os.PathLike | None,
                  seed: int = 0) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items with their split set, plus (path, reason) for split-list entries not on disk or
    matching several videos.

    With lists, only the listed videos are used; without, every video is, by class split.
    An entry names a video by its full name or by its name without the video extension
    (``a/v0.mp4`` finds ``v0.MP4``, a transcoded ``v0.webm`` or a frame folder ``v0``).
    """
    if split_dir is None:
        split_of = default_class_split([it.class_name for it in items], seed)
        return [Item(it.rel, it.class_name, split_of[it.class_name]) for it in items], []
    lists = read_split_lists(split_dir)
    by_class: dict[str, list[Item]] = {}
    by_name: dict[tuple[str, str], Item] = {}
    by_stem: dict[tuple[str, str], list[Item]] = {}
    for it in items:
        by_class.setdefault(it.class_name, []).append(it)
        name = it.rel.rsplit("/", 1)[-1]
        by_name[(it.class_name, name)] = it
        by_stem.setdefault((it.class_name, _stem(name)), []).append(it)
    out, problems, seen = [], [], set()
    for split, entries in lists.items():
        for cls, video in entries:
            if video is None:
                found = by_class.get(cls, [])
            else:
                exact = by_name.get((cls, video))
                found = [exact] if exact else by_stem.get((cls, _stem(video)), [])
            if not found:
                problems.append((f"{cls}/{video}" if video else f"{cls}/", "listed in the "
                                 f"{split} split list but not found under the root"))
                continue
            if video is not None and len(found) > 1:  # v0.mp4 and v0.avi: which one was meant is unknown
                problems.append((f"{cls}/{video}", f"listed in the {split} split list, matches several videos "
                                 f"({', '.join(it.rel for it in found)}): list the full name or remove one"))
                continue
            for it in found:
                if it.rel not in seen:
                    seen.add(it.rel)
                    out.append(Item(it.rel, it.class_name, split))
    return out, problems


# ---------------------------------------------------------------------------------------------
# Probing: frame counts and the problems that make a video unusable
# ---------------------------------------------------------------------------------------------
def probe_video(path: str | os.PathLike) -> tuple[int, str | None, str | None]:
    """(frames, codec, problem) of a video file: counts packets (no full decode) and decodes the
    first frame; a header that declares more frames than are present means a truncated file.

    Never raises for a bad file: whatever PyAV does with a corrupt one (FFmpeg errors, or None /
    odd attributes, e.g. no codec_context for a header cut short) becomes the problem string.
    """
    frames, codec, problem, _ = probe_video_and_size(path)
    return frames, codec, problem


def probe_video_and_size(path: str | os.PathLike) -> tuple[int, str | None, str | None, list[int] | None]:
    """probe_video's (frames, codec, problem) and the first frame's [width, height] (None when
    no frame decodes): NVDEC refuses videos under a per-codec minimum size."""
    import av

    path = Path(path)
    if not path.exists():  # stat() would fail: say what is wrong with the name, not an errno
        if path.is_symlink():
            return 0, None, f"broken symbolic link (its target {os.readlink(path)} does not exist)", None
        return 0, None, "missing (no such file)", None
    try:
        if path.stat().st_size == 0:
            return 0, None, "empty file (0 bytes)", None
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0, None, "no video stream", None
            stream = container.streams.video[0]
            if stream.codec_context is None:  # the stream's codec parameters are missing (truncated header)
                return 0, None, "unreadable (no codec parameters for the video stream: truncated or corrupt header)", None
            codec = stream.codec_context.name
            frames = sum(1 for packet in container.demux(stream) if packet.size)
            declared = stream.frames
            if not declared and container.duration and stream.average_rate:
                declared = int(round(container.duration / 1e6 * float(stream.average_rate)))
        if frames == 0:
            return 0, codec, "no video frames (empty or truncated file)", None
        with av.open(str(path)) as container:
            first = next(container.decode(video=0))
            size = [int(first.width), int(first.height)]
    except StopIteration:
        return 0, None, "no frame could be decoded", None
    except Exception as e:  # a corrupt file must be reported by name, whatever PyAV raised for it
        return 0, None, f"unreadable ({type(e).__name__}: {e})", None
    if declared and frames < declared - max(1, declared // 20):
        return frames, codec, f"truncated (header declares ~{declared} frames, {frames} present)", size
    return frames, codec, None, size


def frame_files(folder: str | os.PathLike) -> list[str]:
    """The frame images of a frame folder in temporal order: names sorted with their numbers
    compared as numbers, so img_2.jpg comes before img_10.jpg (zero-padded names sort as before);
    names starting with "." (macOS ._img_00001.jpg) are not frames."""
    return sorted((n for n in _visible(os.listdir(folder)) if is_frame_file(n)), key=_natural_key)


def _natural_key(name: str) -> tuple:
    # unpadded frame numbers sorted as text would scramble the frame order, silently: TAP's whole
    # signal; (0, number) / (1, text) pairs keep digit and text runs comparable with each other,
    # and the name itself breaks ties (img_01 / img_1)
    return [(0, int(run)) if run.isdigit() else (1, run) for run in re.split(r"(\d+)", name)], name


# (type, first bytes, end marker, its name) per image type. A file cut short loses its end marker:
# JPEG's end-of-image FF D9, PNG's IEND chunk (type + CRC); a little padding may follow the end.
_JPEG = ("JPEG", b"\xff\xd8\xff", b"\xff\xd9", "end-of-image marker FF D9")
_PNG = ("PNG", b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82", "IEND chunk")
_IMAGE_MARKERS = {".jpg": _JPEG, ".jpeg": _JPEG, ".png": _PNG}
_TAIL_BYTES = 32  # how far before the end of a file its end marker may lie


def check_image_file(path: str | os.PathLike) -> str | None:
    """Why an image file is unusable (empty, wrong start, truncated), or None; reads only its
    first and last few bytes, so it is cheap enough to run on every frame of a dataset."""
    kind, start, end, end_name = _IMAGE_MARKERS[os.path.splitext(path)[1].lower()]
    try:
        with open(path, "rb") as f:
            head = f.read(len(start))
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    if head != start:
        return f"not a {kind} file (no {kind} signature at its start: corrupt or mislabelled)"
    if end not in tail:
        return f"truncated (no {kind} {end_name} in its last {_TAIL_BYTES} bytes)"
    return None


def probe_frame_folder(path: str | os.PathLike) -> tuple[int, str | None, str | None]:
    """(frames, "jpeg", problem) of a frame folder; every frame's start and end bytes are checked
    (not decoded), so a truncated frame is found here, not mid-training. Names the first bad one."""
    try:
        names = frame_files(path)
    except OSError as e:
        return 0, None, f"unreadable folder ({e})"
    if not names:
        return 0, None, "empty frame folder (no .jpg/.png)"
    for name in names:
        p = Path(path) / name
        problem = check_image_file(p)
        if problem is not None:
            return 0, None, f"frame {p} is not a valid image: {problem}"
    return len(names), "jpeg", None


# ---------------------------------------------------------------------------------------------
# The cached, validated index
# ---------------------------------------------------------------------------------------------
def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def cache_path(root: Path, cache_dir: str | os.PathLike | None) -> Path:
    """root/.tap_fast_index.json, or <cache_dir>/<root name>-<hash>.json for a read-only root."""
    if _writable_dir(root):
        return root / CACHE_NAME
    if cache_dir is None:
        raise PermissionError(f"{root} is read-only and no cache_dir was given for its index")
    import hashlib

    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"index-{root.name}-{digest}.json"


def _load_cache(path: Path, fmt: str) -> dict:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == CACHE_VERSION and data.get("format") == fmt:
            return data["entries"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # a missing or stale cache only costs a rescan
    return {}


def _save_cache(path: Path, fmt: str, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic, fsynced, and readable by the others sharing the dataset folder (umask permitting)
    write_text_atomic(path, json.dumps({"version": CACHE_VERSION, "format": fmt, "entries": entries}))


def _signature(path: Path) -> list[int]:
    if not path.exists():  # a broken symlink: the link itself, so replacing it means a new probe
        st = path.lstat()
        return [-1, st.st_mtime_ns]
    st = path.stat()
    if path.is_dir():  # a frame folder changes when files are added or removed
        return [len(os.listdir(path)), st.st_mtime_ns]
    return [st.st_size, st.st_mtime_ns]


def probe_items(root: Path, fmt: str, items: list[Item], cache_file: Path | None,
                progress: bool = False) -> dict[str, dict]:
    """{rel: {"frames", "codec", "problem", "size"}} for every item, probing only what the cache
    lacks ("size": a video's [width, height], None for frame folders)."""
    cached = _load_cache(cache_file, fmt) if cache_file is not None else {}
    probe = probe_video_and_size if fmt == "video-folders" else (lambda p: (*probe_frame_folder(p), None))
    results, changed = {}, False
    from tqdm.auto import tqdm

    for it in tqdm(items, desc="indexing videos", unit="video", disable=not progress or len(items) < 50,
                   file=sys.stderr):
        path = root / it.rel
        sig = _signature(path)
        hit = cached.get(it.rel)
        if hit is not None and hit.get("sig") == sig:
            results[it.rel] = hit
            continue
        frames, codec, problem, size = probe(path)
        results[it.rel] = {"sig": sig, "frames": frames, "codec": codec, "problem": problem, "size": size}
        changed = True
    if cache_file is not None and (changed or set(cached) - set(results)):
        merged = dict(cached)
        merged.update(results)
        _save_cache(cache_file, fmt, merged)
    return results


@dataclass
class IndexReport:
    """What building the index found: the index, codecs seen and the videos left out."""

    index: DatasetIndex
    codecs: set
    problems: list[tuple[str, str]]
    cache_file: Path | None


def build_dataset_index(root: str | os.PathLike, fmt: str = "auto", split_dir: str | os.PathLike | None = None,
                        min_frames: int = 1, policy: str = "fail", cache_dir: str | os.PathLike | None = None,
                        seed: int = 0, progress: bool = False) -> IndexReport:
    """Scan, probe (cached), split and validate a dataset root; see the module doc."""
    if policy not in POLICIES:
        raise ValueError(f"bad-video policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(min_frames, int) or min_frames < 1:
        raise ValueError(f"min_frames must be an int >= 1, got {min_frames!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found or not a directory: {root}")
    fmt = detect_format(root) if fmt in ("auto", None) else fmt
    if fmt not in FORMATS:
        raise ValueError(f"dataset format {fmt!r} is not one of {FORMATS} (or auto)")
    items, problems = assign_splits(scan_layout(root, fmt), split_dir, seed)
    try:
        cache_file = cache_path(root, cache_dir)
    except PermissionError:
        cache_file = None
    probed = probe_items(root, fmt, items, cache_file, progress)
    records, codecs, smallest, sizes = [], set(), {}, []
    for it in items:
        r = probed[it.rel]
        if r["problem"] is None and r["frames"] < min_frames:
            problems.append((str(root / it.rel), f"too short ({r['frames']} frames, need >= {min_frames})"))
        elif r["problem"] is not None:
            problems.append((str(root / it.rel), r["problem"]))
        else:
            records.append(VideoRecord(root / it.rel, it.class_name, it.split, int(r["frames"])))
            codecs.add(r["codec"])
            if r.get("size"):
                smallest[r["codec"]] = smaller_frame(smallest.get(r["codec"]), r["size"])
                sizes.append(r["size"])
    if problems and not records:
        raise BadVideoError(problems, hint=f"\n{root}: no usable video is left")
    if problems and policy == "fail":
        raise BadVideoError(problems, hint="\n(fix or remove them, or pass --bad-video-policy skip)")
    if problems:
        print(f"tap_fast.data: skipping {len(problems)} unusable video(s), e.g. "
              f"{problems[0][0]}: {problems[0][1]}", file=sys.stderr, flush=True)
    if not records:
        raise ValueError(f"{root}: no usable videos")
    index = DatasetIndex(records, codecs=codecs, smallest_frames=smallest or None,
                         unaligned_videos=count_unaligned(sizes) if sizes else None)
    return IndexReport(index, codecs, problems, cache_file)


def count_unaligned(sizes: list[list[int]]) -> int:
    """How many [width, height] sizes are not multiples of 16 in both: DALI's NVDEC decoder
    compares the coded size (H.264: rounded up to 16) with the frame size and, when they differ,
    makes a new decoder for every clip (measured ~3x slower on an H200)."""
    return sum(1 for w, h in sizes if w % 16 or h % 16)


def check_class_counts(index: DatasetIndex, preset: str) -> str | None:
    """A warning line when a preset's dataset does not have its public split's class counts."""
    expected = PRESET_CLASS_COUNTS.get(preset)
    if expected is None:
        return None
    found = tuple(len(index.classes(s)) for s in SPLITS)
    if found != expected:
        return (f"tap_fast.data: warning: {preset} expects {'/'.join(map(str, expected))} train/val/test classes, "
                f"this index has {'/'.join(map(str, found))}")
    return None
