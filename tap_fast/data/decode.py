"""Video decoding behind one small interface, so a GPU (DALI) backend can slot in beside it.

Every backend implements ``VideoDecoder.decode(path, indices) -> uint8 [T, H, W, 3]`` (RGB) and
raises the errors defined here:

* FileNotFoundError naming the path when the file does not exist,
* VideoDecodeError(path, reason) when it cannot be read (corrupt, truncated to nothing, no
  video stream),
* FrameIndexError (a VideoDecodeError and an IndexError) when an index is outside the decoded
  frames (e.g. a truncated file that is shorter than its index entry says).

The clips here are short (tens of frames), so the CPU backend decodes whole files: VP9 seeking
only lands on key frames anyway, and CachedDecoder keeps decoded videos in memory (decoding a
64x64x32 VP9 clip costs milliseconds, an episode needs ten clips, training needs many episodes).
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


class VideoDecodeError(RuntimeError):
    """A video file exists but cannot be decoded."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def as_decode_error(error: BaseException) -> VideoDecodeError | None:
    """The VideoDecodeError behind error, if any. A DataLoader worker's one arrives as a RuntimeError
    ("Caught VideoDecodeError in DataLoader worker process 0 ...", or FrameIndexError) holding the
    original's text."""
    if re.search(r"Caught (VideoDecodeError|FrameIndexError) ", str(error)):
        found = re.findall(r"(?:VideoDecodeError|FrameIndexError): cannot decode video (.+?): (.*)", str(error))
        if found:
            return VideoDecodeError(*found[-1])
    return error if isinstance(error, VideoDecodeError) else None


class FrameIndexError(VideoDecodeError, IndexError):
    """A requested frame index is outside the video. A VideoDecodeError too: a video that decodes to
    fewer frames than its index entry says stops training with the same one-line error naming it
    (and IndexError for callers that catch that)."""

    def __init__(self, path: str | os.PathLike, index: int, num_frames: int):
        self.index, self.num_frames = int(index), int(num_frames)
        super().__init__(path, f"frame index {self.index} is out of range for this video, "
                               f"which has {self.num_frames} frames")

    def __reduce__(self):
        return (type(self), (self.path, self.index, self.num_frames))


@runtime_checkable
class VideoDecoder(Protocol):
    """What the episode pipeline needs from a decoder backend."""

    def decode(self, path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 RGB frames [len(indices), H, W, 3] at the given frame indices (repeats allowed)."""
        ...


_local = threading.local()
# A forked child (DataLoader worker) must not reuse the parent's swscale context.
os.register_at_fork(after_in_child=lambda: _local.__dict__.clear())


def _to_rgb(frame) -> np.ndarray:
    # One swscale context per thread, reused across frames and files: letting each frame build
    # its own (frame.to_ndarray(format="rgb24")) made RGB conversion ~4x slower than decoding.
    # threads=1: a slice-thread pool inherited through fork() deadlocks the child.
    from av.video.reformatter import VideoReformatter

    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file with PyAV: uint8 RGB [N, H, W, 3]."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # PyAV's answer for codec parameters cut off (truncated header)
                raise VideoDecodeError(path, "no codec parameters for the video stream (truncated or corrupt header)")
            stream.thread_type = "NONE"  # tiny clips: threads cost more than they save
            frames = [_to_rgb(f) for f in container.decode(stream)]
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, EOFError) as e:
        raise VideoDecodeError(path, f"{type(e).__name__}: {e}") from e
    if not frames:
        raise VideoDecodeError(path, "no frames could be decoded (empty or truncated file)")
    return np.stack(frames)


def check_frame_indices(path, indices, num_frames: int) -> np.ndarray:
    """indices as a 1-D int array, each in [0, num_frames) (TypeError / FrameIndexError naming path)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"frame indices must be a 1-D sequence of ints, got {idx.dtype} with shape {idx.shape}")
    bad = idx[(idx < 0) | (idx >= num_frames)]
    if bad.size:
        raise FrameIndexError(path, int(bad[0]), num_frames)
    return idx


def _select(path, video: np.ndarray, indices) -> np.ndarray:
    return video[check_frame_indices(path, indices, len(video))]


def decode_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 RGB frames [len(indices), H, W, 3] of one video (decodes the file each call)."""
    return _select(path, decode_video(path), indices)


class PyAVDecoder:
    """Uncached CPU decoder (VideoDecoder)."""

    def decode(self, path, indices) -> np.ndarray:
        return decode_frames(path, indices)


class CachedDecoder:
    """VideoDecoder keeping whole decoded videos in an in-memory LRU bounded by bytes.

    Each DataLoader worker process holds its own cache (it is copied or rebuilt per process);
    within a process it is thread-safe. A video larger than max_bytes is decoded but not kept.
    """

    def __init__(self, max_bytes: int = 2 << 30, decode_fn: Callable[[str | os.PathLike], np.ndarray] = decode_video):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes, self._decode_fn = max_bytes, decode_fn
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    def video(self, path: str | os.PathLike) -> np.ndarray:
        """All frames of a video (read-only array), from the cache when possible."""
        key = os.fspath(path)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        video = self._decode_fn(key)
        video.setflags(write=False)  # shared between callers: nobody may modify it
        with self._lock:
            if key not in self._cache and video.nbytes <= self.max_bytes:
                self._cache[key] = video
                self._bytes += video.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._bytes -= old.nbytes
        return video

    def decode(self, path, indices) -> np.ndarray:
        return _select(path, self.video(path), indices)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._bytes = 0

    def __getstate__(self):  # a worker process starts with an empty cache and a new lock
        state = self.__dict__.copy()
        state.update(_cache=OrderedDict(), _bytes=0, _lock=None, hits=0, misses=0)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
