"""EpisodeDataset: sampler + decoder + transform -> one episode's tensors.

Indexed by episode id, so DataLoader workers and DDP ranks split the work by handing out ids
(e.g. DistributedSampler over range(len(dataset))); episode k is the same tensor everywhere
because all its randomness derives from (seed, k).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import CachedDecoder, VideoDecoder
from .index import DatasetIndex, VideoRecord
from .sampling import STREAM_FRAMES, STREAM_TRANSFORM, EpisodeSampler, episode_rng, tsn_frame_indices
from .transforms import ClipTransform


class EpisodeDataset(Dataset):
    """Few-shot episodes as tensors.

    item k -> {"support": float [way*shot, T, 3, H, W], "query": float [way*query, T, 3, H, W],
               "support_labels": long [way*shot], "query_labels": long [way*query],
               "class_names": list[str], "episode": k}
    Support/query are class-major (row c*shot + i is class c). Frames follow TSN (random per
    segment when train, segment centres otherwise); the transform's crop/flip are random only
    when train.
    """

    def __init__(self, index: DatasetIndex, split: str, way: int = 5, shot: int = 1, query: int = 1,
                 frames: int = 8, train: bool = False, transform: ClipTransform | None = None,
                 decoder: VideoDecoder | None = None, seed: int = 0, num_episodes: int = 10_000):
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        if not isinstance(num_episodes, int) or num_episodes < 1:
            raise ValueError(f"num_episodes must be an int >= 1, got {num_episodes!r}")
        self.sampler = EpisodeSampler(index, split, way=way, shot=shot, query=query, seed=seed)
        self.frames, self.train, self.seed, self.num_episodes = frames, bool(train), int(seed), num_episodes
        self.transform = transform if transform is not None else ClipTransform(train=train)
        if self.transform.train != self.train:
            raise ValueError(f"transform.train={self.transform.train} but the dataset has train={self.train}")
        self.decoder = decoder if decoder is not None else CachedDecoder()
        if not isinstance(self.decoder, VideoDecoder):
            raise TypeError(f"decoder must have decode(path, indices), got {type(self.decoder).__name__}")

    def __len__(self) -> int:
        return self.num_episodes

    def _clip(self, record: VideoRecord, frame_rng: np.random.Generator, aug_rng: np.random.Generator) -> torch.Tensor:
        idx = tsn_frame_indices(record.num_frames, self.frames, self.train, frame_rng)
        return self.transform(self.decoder.decode(record.path, idx), aug_rng)

    def eval_clip(self, record: VideoRecord) -> torch.Tensor:
        """One video's clip as evaluation sees it (segment centres, centre crop): the same in every
        episode, so callers may compute its features once and reuse them."""
        if self.train:
            raise ValueError("eval_clip is for evaluation datasets (train=False): training clips are random")
        return self._clip(record, None, None)

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < self.num_episodes:
            raise IndexError(f"episode {k} is out of range for {self.num_episodes} episodes")
        ep = self.sampler.sample(k)
        frame_rng = episode_rng(self.seed, k, STREAM_FRAMES)
        aug_rng = episode_rng(self.seed, k, STREAM_TRANSFORM)
        # numpy stacking: torch.stack of these small tensors spent ~50 ms in OpenMP start-up on
        # a busy 2-core machine, far more than the whole rest of the episode.
        support = np.stack([self._clip(r, frame_rng, aug_rng).numpy() for r in ep.support])
        query = np.stack([self._clip(r, frame_rng, aug_rng).numpy() for r in ep.query])
        return {
            "support": torch.from_numpy(support),
            "query": torch.from_numpy(query),
            "support_labels": torch.from_numpy(ep.support_labels),
            "query_labels": torch.from_numpy(ep.query_labels),
            "class_names": ep.class_names,
            "episode": int(k),
        }
