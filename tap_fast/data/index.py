"""Dataset index: which video files exist, their class, split and length.

The index is the first arrow of the data flow (files -> index -> sampler -> decoder ->
transform). It is stored as JSON lines, one record per line, with paths relative to the
index file so a dataset directory can be moved or shared as a whole.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tap_fast.atomic_write import write_text_atomic

SPLITS = ("train", "val", "test")


class IndexFormatError(ValueError):
    """The index file or the records given to DatasetIndex are malformed or inconsistent."""


@dataclass(frozen=True)
class VideoRecord:
    """One video: its file, class, split and number of frames."""

    path: Path
    class_name: str
    split: str
    num_frames: int


def smaller_frame(smallest: tuple[int, int] | None, size) -> tuple[int, int]:
    """The smallest (width, height) so far, each side on its own, updated with one more frame size."""
    return tuple(size) if smallest is None else (min(smallest[0], size[0]), min(smallest[1], size[1]))


class DatasetIndex:
    """An immutable collection of VideoRecords with per-split and per-class lookup.

    Invariants checked on construction (IndexFormatError otherwise): split names in
    SPLITS, num_frames >= 1, non-empty class names, no duplicate paths, and every class
    belongs to exactly one split (few-shot splits are disjoint by class).

    codecs: the codec names of every video (FFmpeg's, "jpeg" for frame folders) when the index
    was built by probing each one (formats.build_dataset_index), else None; smallest_frames: for
    each video codec, the smallest (width, height) seen (NVDEC refuses videos under a per-codec
    minimum), likewise probed; unaligned_videos: how many videos have a frame width or height
    that is not a multiple of 16 (DALI's NVDEC decoding measured ~3x slower on such H.264 clips),
    likewise probed, None when unknown (frame folders). The decoder choice uses all three; none
    of them is saved with the index.
    """

    def __init__(self, records: Iterable[VideoRecord], codecs: Iterable[str] | None = None,
                 smallest_frames: dict[str, tuple[int, int]] | None = None,
                 unaligned_videos: int | None = None):
        self._records: tuple[VideoRecord, ...] = tuple(records)
        self.codecs = frozenset(codecs) if codecs is not None else None
        self.smallest_frames = dict(smallest_frames) if smallest_frames is not None else None
        self.unaligned_videos = unaligned_videos
        self._by_class: "OrderedDict[str, list[VideoRecord]]" = OrderedDict()
        class_split: dict[str, str] = {}
        seen_paths: set[Path] = set()
        for i, r in enumerate(self._records):
            if not isinstance(r, VideoRecord):
                raise IndexFormatError(f"record {i} is a {type(r).__name__}, expected VideoRecord")
            if r.split not in SPLITS:
                raise IndexFormatError(f"record {i} ({r.path}): split {r.split!r} is not one of {SPLITS}")
            if not isinstance(r.class_name, str) or not r.class_name:
                raise IndexFormatError(f"record {i} ({r.path}): empty class name")
            if not isinstance(r.num_frames, int) or isinstance(r.num_frames, bool) or r.num_frames < 1:
                raise IndexFormatError(f"record {i} ({r.path}): num_frames must be an int >= 1, got {r.num_frames!r}")
            if r.path in seen_paths:
                raise IndexFormatError(f"record {i}: duplicate path {r.path}")
            seen_paths.add(r.path)
            previous = class_split.setdefault(r.class_name, r.split)
            if previous != r.split:
                raise IndexFormatError(
                    f"class {r.class_name!r} appears in splits {previous!r} and {r.split!r}; "
                    "few-shot splits must be disjoint by class"
                )
            self._by_class.setdefault(r.class_name, []).append(r)
        self._class_split = class_split

    # ---- lookup -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        return iter(self._records)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatasetIndex) and self._records == other._records

    def records(self, split: str | None = None) -> list[VideoRecord]:
        """All records, or those of one split, in index order."""
        if split is None:
            return list(self._records)
        self._check_split(split)
        return [r for r in self._records if r.split == split]

    def classes(self, split: str | None = None) -> list[str]:
        """Class names (in first-appearance order), optionally restricted to one split."""
        if split is not None:
            self._check_split(split)
        return [c for c, s in self._class_split.items() if split is None or s == split]

    def videos(self, class_name: str) -> list[VideoRecord]:
        """Records of one class; KeyError naming the class if it is unknown."""
        try:
            return list(self._by_class[class_name])
        except KeyError:
            raise KeyError(f"class {class_name!r} is not in the index") from None

    def split_of(self, class_name: str) -> str:
        self.videos(class_name)  # raises a named KeyError for unknown classes
        return self._class_split[class_name]

    @staticmethod
    def _check_split(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON lines atomically (temp file in the same dir + os.replace).

        Paths under the index's directory are stored relative to it.
        """
        path = Path(path).resolve()
        root = path.parent
        root.mkdir(parents=True, exist_ok=True)
        lines = []
        for r in self._records:
            p = Path(r.path)
            # A relative record path means the working directory's (as open() reads it), but load()
            # resolves relative paths against the index's directory: never store one verbatim.
            try:
                p_str = p.resolve().relative_to(root).as_posix()
            except ValueError:
                p_str = str(p) if p.is_absolute() else os.path.abspath(p)
            lines.append(json.dumps({"path": p_str, "class_name": r.class_name, "split": r.split,
                                     "num_frames": r.num_frames}))
        write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetIndex":
        """Read a JSON-lines index; relative paths are resolved against the index's directory."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dataset index not found: {path}")
        root = path.resolve().parent
        records = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise IndexFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                missing = {"path", "class_name", "split", "num_frames"} - set(d) if isinstance(d, dict) else None
                if missing is None or missing:
                    raise IndexFormatError(f"{path}:{lineno}: record must be an object with keys "
                                           f"path, class_name, split, num_frames (missing {sorted(missing or [])})")
                p = Path(d["path"])
                records.append(VideoRecord(path=p if p.is_absolute() else root / p, class_name=d["class_name"],
                                           split=d["split"], num_frames=d["num_frames"]))
        try:
            return cls(records)
        except IndexFormatError as e:
            raise IndexFormatError(f"{path}: {e}") from None
