"""Real dataset layouts -> a validated DatasetIndex, scanned once and cached next to the data.

Two on-disk layouts, as the few-shot community shares them:

* ``video-folders``: ``root/<class>/<video>.<ext>`` (mp4, webm, avi, mkv, ...).
* ``frame-folders``: ``root/<class>/<video>/<frame>.jpg`` (frames extracted once, the usual way
  Kinetics-100 and Something-Something v2 are shared for TRX/OTAM-style work). Frames are taken
  in file-name order with numbers compared as numbers (img_2.jpg before img_10.jpg).

Names starting with "." are skipped at every level (.DS_Store, macOS ``._v0.mp4`` AppleDouble
files, ``.ipynb_checkpoints/``). An index holds one layout (the decoders read one): ``auto`` takes
the one most entries follow, and the other layout's entries (and, for video folders, subfolders
holding videos) are left out with a warning that counts them.

Which class goes to which split comes from split lists in ``split_dir`` (files whose names start
with train / val / test, e.g. TRX's ``trainlist03.txt``, ``vallist03.txt``, ``testlist03.txt`` or
``train.txt``), each line one of:

* ``class/video`` (CMN / TRX lists; an extension on ``video`` is optional and need not be the
  file's: ``a/v0.mp4`` finds ``v0.MP4``, a transcoded ``v0.webm`` or a frame folder ``v0``; an
  entry matching two videos, ``v0.mp4`` and ``v0.avi``, is reported, not guessed),
* ``path [num_frames] label`` (OTAM/TSM-style annotation lines, whitespace separated; ``path`` is
  ``class/video`` (spaces allowed) or a bare video id, whose class is then ``label``),
* ``class`` alone (a list of class names; every video of the class is in that split).

A line that reads as an annotation line but names nothing on disk is read whole (``a/clip 2``
for ``a/clip 2.mp4``, a class ``Set 1``). Lines starting with ``#`` are comments, and so is the
rest of a line from a `` #`` (a class ``Set #1`` that is on disk is still read whole). Lists are UTF-8.

A class may appear in one split's list only (few-shot splits are disjoint by class). A UTF-8
byte-order mark at the start of a list is ignored.
Without split lists the classes are split 64/12/24 (the CMN / OTAM proportion) by a fixed seed.

Probing a file (frame count, decodability) is the slow part, so the results are cached per file
(keyed by size and mtime; a frame folder by its file count and mtime, which editing a frame in
place does not change) in ``root/.tap_fast_index.json``, written atomically; a read-only root
falls back to ``cache_dir``. A cached entry with a problem is probed again every time (a file made
readable again keeps its size and mtime). Problems (missing or a broken symlink, unreadable files
and folders, empty, truncated, too short) are reported by name (for frame folders: the first bad
frame, every frame's first and last bytes checked); ``policy="fail"`` raises BadVideoError,
``policy="skip"`` leaves them out. A video's frame count is the frames its decoder outputs (an mp4
edit list's discarded packets are not counted); truncated means fewer packets than the header's
frame count or, without one (mkv/webm), less time than the video stream's own declared duration.
The index carries the codec of every usable video (DatasetIndex.codecs), each codec's smallest
frame size (DatasetIndex.smallest_frames: NVDEC has minimum sizes) and how many videos are not
16-pixel aligned (DatasetIndex.unaligned_videos: NVDEC is slower on them) for the decoder choice.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tap_fast.atomic_write import write_text_atomic

from .index import SPLITS, DatasetIndex, VideoRecord, smaller_frame

FORMATS = ("video-folders", "frame-folders")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
POLICIES = ("fail", "skip")
CACHE_NAME = ".tap_fast_index.json"
# 4: discarded packets not counted, truncation judged on the video stream's own duration;
# 3: a video's frame size is kept (NVDEC's minimum); 2: every frame of a frame folder checked
CACHE_VERSION = 4
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
_INLINE_COMMENT = re.compile(r"\s+#")  # a '#' after a space; a '#' inside a name ("C#") is kept
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


def _class_dirs(root: Path) -> list[Path]:
    try:
        entries = visible_entries(root)
    except OSError as e:  # a ValueError: the entry points turn those into a one-line error
        raise ValueError(f"dataset root {root} cannot be listed ({e.strerror or e})") from e
    return [p for p in entries if p.is_dir()]


def entry_kind(entry: Path) -> str | None:
    """"video" (a video file), "folder" (a directory: a frame folder in that layout) or None (not a
    video). A broken symbolic link counts as what its name says (a video's name: a video, a frame
    image's: nothing, else a folder), so that probing reports it by name instead of it going missing."""
    if entry.is_symlink() and not entry.exists():
        if is_video_file(entry.name):
            return "video"
        return None if is_frame_file(entry.name) else "folder"
    if entry.is_dir():
        return "folder"
    return "video" if is_video_file(entry.name) and entry.is_file() else None


def _holds_frames(folder: Path) -> bool:
    try:
        return bool(frame_files(folder))
    except OSError:  # unreadable: not evidence either way
        return False


def _class_entries(root: Path) -> tuple[list[tuple[Path, Path, str]], list[tuple[str, str]]]:
    """(class folder, entry, entry_kind) for every entry under root/<class>/ that has a kind, by class
    then name, and the class folders that cannot be listed as (path, problem)."""
    found, unreadable = [], []
    for class_dir in _class_dirs(root):
        try:
            entries = visible_entries(class_dir)
        except OSError as e:
            unreadable.append((str(class_dir), f"unreadable class folder ({e.strerror or e})"))
            continue
        found += [(class_dir, entry, kind) for entry in entries if (kind := entry_kind(entry)) is not None]
    return found, unreadable


def detect_format(root: str | os.PathLike) -> str:
    """"video-folders" or "frame-folders": the layout most entries under root/<class>/ follow (a
    stray frame folder sorting first must not make a video dataset a frame-folder one)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found or not a directory: {root}")
    found, _ = _class_entries(root)  # unreadable class folders: scan_layout reports them
    videos = [entry for _, entry, kind in found if kind == "video"]
    folders = [entry for _, entry, kind in found if kind == "folder"]
    if len(folders) >= len(videos) and any(_holds_frames(f) for f in folders):
        return "frame-folders"
    if videos:
        return "video-folders"
    raise ValueError(f"{root}: found neither root/<class>/<video>.<ext> ({', '.join(VIDEO_EXTENSIONS)}) "
                     f"nor root/<class>/<video>/<frame>.jpg; is --data-root the dataset's top folder?")


@dataclass
class Layout:
    """What scan_layout found: the videos, class folders it could not list, and warning lines for
    entries it left out (the other layout's)."""

    items: list[Item]
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def scan_layout(root: str | os.PathLike, fmt: str) -> Layout:
    """Every video under root/<class>/ in the given layout, sorted by class then name; names
    starting with "." are skipped. A broken symlink is kept (see entry_kind) and a class folder
    that cannot be listed is a problem, so that both are reported by name, not silently missing.
    Entries of the other layout are left out with a warning: one index holds one layout."""
    if fmt not in FORMATS:
        raise ValueError(f"dataset format {fmt!r} is not one of {FORMATS}")
    root = Path(root)
    want = "video" if fmt == "video-folders" else "folder"
    found, unreadable = _class_entries(root)
    layout = Layout([Item(f"{c.name}/{entry.name}", c.name) for c, entry, kind in found if kind == want], unreadable)
    other = [entry for _, entry, kind in found if kind != want]
    if not layout.items and not layout.problems:
        raise ValueError(_no_items_message(root, fmt))
    layout.warnings = _left_out_warnings(fmt, other)
    return layout


def _left_out_warnings(fmt: str, other: list[Path]) -> list[str]:
    """A warning line per kind of entry scan_layout left out, counted, with an example and what reads
    them. A video-folders root's folders count only when they hold frames or videos (else they are
    no data: an empty or junk folder)."""
    if fmt == "frame-folders":
        groups = [(other, "video file(s)", "--dataset-format video-folders reads them instead of the frame folders")]
    else:
        other = [p for p in other if p.exists()]  # a broken link not named like a video says nothing
        frames = [p for p in other if _holds_frames(p)]
        nested = [p for p in other if p not in set(frames) and _holds_videos(p)]
        groups = [(frames, "frame folder(s)", "--dataset-format frame-folders reads them instead of the video files"),
                  (nested, "subfolder(s) holding video files",
                   "videos are read one level deep, <class>/<video>.<ext>: move them up")]
    return [f"tap_fast.data: warning: {len(paths)} {what} left out (e.g. {paths[0]}): the index reads one layout, "
            f"{fmt} here; {fix}" for paths, what, fix in groups if paths]


def _holds_videos(folder: Path) -> bool:
    try:
        return any(is_video_file(n) for n in _visible(os.listdir(folder)))
    except OSError:
        return False


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


def split_line_readings(line: str) -> list[tuple[str, str | None]]:
    """The ways one split-list line reads, most likely first, each (class, video or None for a
    class-name line): an annotation line first when it looks like one, then the whole line as
    ``class/video`` or a class name (``a/clip 2`` and a class ``Set 1`` look like annotations)."""
    line = line.strip().replace("\\", "/")  # lists written on Windows
    comment = _INLINE_COMMENT.search(line)
    if comment and comment.start() > 0:  # "class_a  # 12 clips": the part before, then the whole line
        return _line_readings(line[:comment.start()]) + _line_readings(line)
    return _line_readings(line)


def _line_readings(line: str) -> list[tuple[str, str | None]]:
    readings = []
    m = _ANNOTATION_LINE.match(line)
    if m:
        path = m.group("path").strip("/")
        readings.append(_class_and_video(path) if "/" in path else (m.group("label"), path))
    whole = line.rstrip("/")  # "class_0/": a class name
    readings.append(_class_and_video(whole) if "/" in whole else (whole, None))
    return readings


def _class_and_video(path: str) -> tuple[str, str]:
    cls, video = path.rsplit("/", 1)
    return cls.rsplit("/", 1)[-1], video


def parse_split_line(line: str) -> tuple[str, str | None]:
    """One split-list line -> (class, video or None for a class-name line), its likeliest reading.
    See the module doc."""
    return split_line_readings(line)[0]


def read_split_lists(split_dir: str | os.PathLike, exists=None) -> dict[str, list[tuple[str, str | None]]]:
    """{split: [(class, video-or-None), ...]} from the split lists in split_dir.

    exists(class, video) says whether a reading names something on disk: a line that reads as an
    annotation naming nothing is then read whole when that names something. Without it the
    likeliest reading is taken.

    SplitListError when a class is listed in two splits' lists: few-shot splits are disjoint by
    class, and silently keeping the first would move the class out of the split the other list meant.
    """
    out = {}
    first_seen: dict[str, tuple[Path, int]] = {}  # class -> (list file, line) that first named it
    for split, path in find_split_files(split_dir).items():
        entries = []
        for lineno, raw in enumerate(_read_list_lines(path), 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            readings = split_line_readings(raw)
            cls, video = next((r for r in readings if exists and exists(*r)), readings[0])
            if not cls:
                raise SplitListError(f"{path}:{lineno}: empty class name in {raw!r}")
            other, other_line = first_seen.setdefault(_nfc(cls), (path, lineno))
            if other != path:
                raise SplitListError(f"class {cls!r} is listed in two split lists, {other}:{other_line} and "
                                     f"{path}:{lineno}; few-shot splits must be disjoint by class")
            entries.append((cls, video))
        if not entries:
            raise SplitListError(f"{path}: the {split} list is empty")
        out[split] = entries
    return out


def _read_list_lines(path: Path) -> list[str]:
    try:  # utf-8-sig: a byte-order mark (Windows editors add one) would stick to the first entry
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise SplitListError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the list as UTF-8") from e


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


def _nfc(name: str) -> str:
    # one spelling of accented names: macOS writes file names (and often lists) decomposed (NFD),
    # Linux tools composed (NFC); "café" typed either way names the same video
    return unicodedata.normalize("NFC", name)


def _nearest_class(listed: str, classes) -> str | None:
    """The class folder a listed class name most likely means: the same but for case, spaces /
    underscores / hyphens (Kinetics class names are shared both ways), else a close spelling."""
    loose = lambda name: re.sub(r"[\s_-]+", " ", name).strip().casefold()
    same = [c for c in classes if loose(c) == loose(listed)]
    return same[0] if same else next(iter(difflib.get_close_matches(_nfc(listed), list(classes), n=1, cutoff=0.8)),
                                     None)


def assign_splits(items: list[Item], split_dir: str | os.PathLike | None,
                  seed: int = 0) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items with their split set, plus (path, reason) for split-list entries not on disk or
    matching several videos.

    With lists, only the listed videos are used; without, every video is, by class split.
    An entry names a video by its full name or by its name without the video extension
    (``a/v0.mp4`` finds ``v0.MP4``, a transcoded ``v0.webm`` or a frame folder ``v0``); accented
    names match whether composed or decomposed (NFC / NFD).
    """
    if split_dir is None:
        split_of = default_class_split([it.class_name for it in items], seed)
        return [Item(it.rel, it.class_name, split_of[it.class_name]) for it in items], []
    by_class: dict[str, list[Item]] = {}
    by_name: dict[tuple[str, str], Item] = {}
    by_stem: dict[tuple[str, str], list[Item]] = {}
    for it in items:
        cls, name = _nfc(it.class_name), _nfc(it.rel.rsplit("/", 1)[-1])
        by_class.setdefault(cls, []).append(it)
        by_name[(cls, name)] = it
        by_stem.setdefault((cls, _stem(name)), []).append(it)

    def matches(cls: str, video: str | None) -> list[Item]:
        cls = _nfc(cls)
        if video is None:
            return by_class.get(cls, [])
        exact = by_name.get((cls, _nfc(video)))
        return [exact] if exact else by_stem.get((cls, _stem(_nfc(video))), [])

    lists = read_split_lists(split_dir, exists=lambda cls, video: bool(matches(cls, video)))
    out, problems, seen = [], [], set()
    for split, entries in lists.items():
        for cls, video in entries:
            found = matches(cls, video)
            if not found:
                where = "" if _nfc(cls) in by_class else f": the root has no class folder {cls!r}" + (
                    f" (nearest: {near!r})" if (near := _nearest_class(cls, by_class)) else "")
                problems.append((f"{cls}/{video}" if video else f"{cls}/", "listed in the "
                                 f"{split} split list but not found under the root{where}"))
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
    first frame; a header that declares more frames (or seconds of video) than are present means
    a truncated file.

    Never raises for a bad file: whatever PyAV does with a corrupt one (FFmpeg errors, or None /
    odd attributes, e.g. no codec_context for a header cut short) becomes the problem string.
    """
    frames, codec, problem, _ = probe_video_and_size(path)
    return frames, codec, problem


def _missing(path: Path) -> str:
    """Why a path that does not exist is unusable (stat() would fail: say what is wrong with the name)."""
    if path.is_symlink():
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    return "missing (no such file)"


def probe_video_and_size(path: str | os.PathLike) -> tuple[int, str | None, str | None, list[int] | None]:
    """probe_video's (frames, codec, problem) and the first frame's [width, height] (None when
    no frame decodes): NVDEC refuses videos under a per-codec minimum size."""
    import av

    path = Path(path)
    if not path.exists():
        return 0, None, _missing(path), None
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
            frames, packets, seconds = _count_packets(container, stream)
            truncated = _truncation(stream, packets, seconds, _declared_seconds(container, stream))
        if frames == 0:
            return 0, codec, "no video frames (empty or truncated file)", None
        with av.open(str(path)) as container:
            first = next(container.decode(video=0))
            size = [int(first.width), int(first.height)]
    except StopIteration:
        return 0, None, "no frame could be decoded", None
    except Exception as e:  # a corrupt file must be reported by name, whatever PyAV raised for it
        return 0, None, f"unreadable ({type(e).__name__}: {e})", None
    return frames, codec, truncated, size


def _count_packets(container, stream) -> tuple[int, int, float | None]:
    """(frames the decoder outputs, packets present, seconds of video they span or None when they
    carry no timestamps). Discarded packets (an mp4 edit list's, e.g. `ffmpeg -ss ... -c copy`
    cuts) are demuxed and decoded as references but never output: frames leaves them out."""
    frames = packets = 0
    start = end = None
    for packet in container.demux(stream):
        if not packet.size:  # the demuxer's flush packet
            continue
        packets += 1
        frames += not packet.is_discard
        if packet.pts is not None:  # B-frames come out of order: the earliest start, the latest end
            last = packet.pts + (packet.duration or 0)
            start = packet.pts if start is None else min(start, packet.pts)
            end = last if end is None else max(end, last)
    seconds = float((end - start) * stream.time_base) if start is not None and stream.time_base else None
    return frames, packets, seconds


def _declared_seconds(container, stream) -> float | None:
    """How long the header says the video stream lasts, or None when it does not say it reliably:
    the stream's own duration, or Matroska's per-track DURATION tag (mkv/webm streams have no
    frame count); container.duration is the longest stream's (audio often outlasts video), so it
    stands for the video only in a file with no other stream."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tagged = _duration_tag(stream.metadata)
    if tagged is not None:
        return tagged
    if len(container.streams) == 1 and container.duration:
        return container.duration / 1e6
    return None


_DURATION_TAG = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")  # Matroska's "00:00:02.493000000"


def _duration_tag(metadata) -> float | None:
    for key, value in (metadata or {}).items():
        m = _DURATION_TAG.match(str(value).strip()) if key.upper().startswith("DURATION") else None
        if m:
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return None


def _truncation(stream, packets: int, seconds: float | None, declared_seconds: float | None) -> str | None:
    """The "truncated" problem, or None. A declared frame count is compared with the packets present
    (an mp4's count includes discarded ones); without one, the declared duration with the time the
    packets span, which holds for variable frame rates too (duration x frame rate does not).
    Nothing is said when the header declares neither reliably."""
    declared = stream.frames
    if declared:
        if packets < declared - max(1, declared // 20):
            return f"truncated (header declares ~{declared} frames, {packets} present)"
        return None
    if not declared_seconds or seconds is None:
        return None
    frame_time = 1 / float(stream.average_rate) if stream.average_rate else 0.0
    if seconds < declared_seconds - max(1.5 * frame_time, declared_seconds / 20):
        return f"truncated (header declares {declared_seconds:.2f} s of video, {seconds:.2f} s present)"
    return None


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
    if not Path(path).exists():
        return 0, None, _missing(Path(path))
    try:
        names = frame_files(path)
    except OSError as e:
        return 0, None, f"unreadable folder ({e.strerror or e})"
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
    """The cache's entries; {} when it is missing, stale or not shaped as _save_cache writes it (a
    hand-edited or foreign file): a bad cache only costs a rescan."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not (isinstance(data, dict) and data.get("version") == CACHE_VERSION and data.get("format") == fmt):
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict) or not all(_valid_entry(e) for e in entries.values()):
        return {}
    return entries


def _valid_entry(entry) -> bool:
    """Whether a cache entry has every field probe_items writes, of the right type."""
    return (isinstance(entry, dict) and isinstance(entry.get("sig", 0), (list, type(None)))
            and isinstance(entry.get("frames"), int) and not isinstance(entry.get("frames"), bool)
            and all(isinstance(entry.get(k, 0), (str, type(None))) for k in ("codec", "problem"))
            and isinstance(entry.get("size", 0), (list, type(None))))


def _save_cache(path: Path, fmt: str, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic, fsynced, and readable by the others sharing the dataset folder (umask permitting)
    write_text_atomic(path, json.dumps({"version": CACHE_VERSION, "format": fmt, "entries": entries}))


def _signature(path: Path) -> list[int] | None:
    """What changes when the file (or frame folder) does; None when it cannot be read (then
    there is nothing to compare, and the probe says what is wrong)."""
    try:
        if not path.exists():  # a broken symlink: the link itself, so replacing it means a new probe
            st = path.lstat()
            return [-1, st.st_mtime_ns]
        st = path.stat()
        if path.is_dir():  # a frame folder changes when files are added or removed
            return [len(os.listdir(path)), st.st_mtime_ns]
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


def probe_items(root: Path, fmt: str, items: list[Item], cache_file: Path | None,
                progress: bool = False) -> dict[str, dict]:
    """{rel: {"frames", "codec", "problem", "size"}} for every item, probing only what the cache
    lacks ("size": a video's [width, height], None for frame folders). An entry with a problem is
    probed again every time (they are few): fixing a file's permissions changes neither its size
    nor its mtime."""
    cached = _load_cache(cache_file, fmt) if cache_file is not None else {}
    probe = probe_video_and_size if fmt == "video-folders" else (lambda p: (*probe_frame_folder(p), None))
    results, changed = {}, False
    from tqdm.auto import tqdm

    for it in tqdm(items, desc="indexing videos", unit="video", disable=not progress or len(items) < 50,
                   file=sys.stderr):
        path = root / it.rel
        sig = _signature(path)
        hit = cached.get(it.rel)
        if hit is not None and sig is not None and hit["sig"] == sig and hit["problem"] is None:
            results[it.rel] = hit
            continue
        frames, codec, problem, size = probe(path)
        results[it.rel] = {"sig": sig, "frames": frames, "codec": codec, "problem": problem, "size": size}
        changed = changed or results[it.rel] != hit
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
    warnings: list[str] = field(default_factory=list)  # entries left out, already printed


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
    layout = scan_layout(root, fmt)
    for line in layout.warnings:
        print(line, file=sys.stderr, flush=True)
    if not layout.items:
        raise BadVideoError(layout.problems, hint=f"\n{root}: no usable video is left")
    items, listed_problems = assign_splits(layout.items, split_dir, seed)
    problems = layout.problems + _beside_unreadable(listed_problems, layout.problems)
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
    return IndexReport(index, codecs, problems, cache_file, layout.warnings)


def _beside_unreadable(listed: list[tuple[str, str]], unreadable: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Split-list problems less those in a class folder already reported unreadable ("not found"
    would hide the cause)."""
    classes = {Path(folder).name for folder, _ in unreadable}
    return [(entry, why) for entry, why in listed if entry.split("/", 1)[0] not in classes]


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
