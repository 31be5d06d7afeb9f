"""Which frames and which videos: TSN frame sampling and few-shot episode sampling.

Everything random here is a pure function of (seed, episode_id), so any DataLoader worker or
DDP rank can rebuild episode k on its own without sharing state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .index import DatasetIndex, VideoRecord

# Independent random streams of one episode (same (seed, k), different purpose), so changing
# e.g. the crop policy never changes which videos an episode holds.
STREAM_EPISODE = 0
STREAM_FRAMES = 1
STREAM_TRANSFORM = 2


def episode_rng(seed: int, episode_id: int, stream: int = STREAM_EPISODE) -> np.random.Generator:
    """A numpy Generator determined by (seed, episode_id, stream) alone."""
    for name, v in (("seed", seed), ("episode_id", episode_id), ("stream", stream)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return np.random.default_rng([int(seed), int(episode_id), int(stream)])


def tsn_frame_indices(num_frames: int, num_segments: int, train: bool,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """TSN sparse sampling: split [0, num_frames) into num_segments equal segments and take one
    random frame per segment (train) or each segment's centre (test).

    Returns a sorted int64 array of length num_segments. When num_frames < num_segments the
    segments are shorter than a frame and indices repeat (each segment gets the frame it starts in).
    """
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if not isinstance(num_segments, (int, np.integer)) or num_segments < 1:
        raise ValueError(f"num_segments must be an int >= 1, got {num_segments!r}")
    # Segment k is [k * n / T, (k + 1) * n / T). Exact integer arithmetic: in floating point
    # k * (n / T) misses integer boundaries (7 * (29 / 7) = 29.000000000000004), which moved
    # test-time centres by a frame and drew boundary frames twice as often in training.
    n, t = int(num_frames), int(num_segments)
    k = np.arange(t, dtype=np.int64)
    if not train:
        return np.minimum((2 * k + 1) * n // (2 * t), n - 1)
    if rng is None:
        raise ValueError("tsn_frame_indices(train=True) needs an rng (np.random.Generator)")
    start = k * n // t  # floor
    # Last frame whose start lies inside the segment (ceil - 1); at least `start` for sub-frame segments.
    end = np.maximum(-(-(k + 1) * n // t) - 1, start)
    return np.minimum(rng.integers(start, end, endpoint=True), n - 1)


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode; support and query are ordered class-major.

    support[c * shot + k] and query[c * query + j] belong to class_names[c].
    """

    episode_id: int
    class_names: list[str]
    support: list[VideoRecord]
    query: list[VideoRecord]
    support_labels: np.ndarray
    query_labels: np.ndarray


class EpisodeSampler:
    """Draws few-shot episodes from one split, deterministically by (seed, episode_id).

    Iterating yields episodes 0, 1, 2, ... (num_episodes of them, or forever if None).
    """

    def __init__(self, index: DatasetIndex, split: str, way: int = 5, shot: int = 1, query: int = 1,
                 seed: int = 0, num_episodes: int | None = None):
        for name, v in (("way", way), ("shot", shot), ("query", query)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if num_episodes is not None and num_episodes < 0:
            raise ValueError(f"num_episodes must be >= 0 or None, got {num_episodes!r}")
        self.index, self.split = index, split
        self.way, self.shot, self.query = int(way), int(shot), int(query)
        self.seed, self.num_episodes = int(seed), num_episodes
        self.class_names = index.classes(split)
        if len(self.class_names) < self.way:
            raise ValueError(f"split {split!r} has {len(self.class_names)} classes, "
                             f"a {self.way}-way episode needs at least {self.way}")
        need = self.shot + self.query
        self._videos = {c: index.videos(c) for c in self.class_names}
        for c, vids in self._videos.items():
            if len(vids) < need:
                raise ValueError(f"class {c!r} has {len(vids)} videos, the episode needs {need} "
                                 f"(shot {self.shot} + query {self.query})")

    def sample(self, episode_id: int) -> Episode:
        rng = episode_rng(self.seed, episode_id, STREAM_EPISODE)
        chosen = rng.choice(len(self.class_names), size=self.way, replace=False)
        names = [self.class_names[i] for i in chosen]
        support, query = [], []
        for c in names:
            vids = self._videos[c]
            pick = rng.choice(len(vids), size=self.shot + self.query, replace=False)
            support.extend(vids[i] for i in pick[:self.shot])
            query.extend(vids[i] for i in pick[self.shot:])
        return Episode(
            episode_id=int(episode_id),
            class_names=names,
            support=support,
            query=query,
            support_labels=np.repeat(np.arange(self.way, dtype=np.int64), self.shot),
            query_labels=np.repeat(np.arange(self.way, dtype=np.int64), self.query),
        )

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("EpisodeSampler without num_episodes is endless and has no len()")
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        k = 0
        while self.num_episodes is None or k < self.num_episodes:
            yield self.sample(k)
            k += 1
