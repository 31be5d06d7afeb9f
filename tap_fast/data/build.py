"""Builds the data pipeline a run asks for: config -> index -> EpisodeDataset -> DataLoader."""
from __future__ import annotations

from pathlib import Path

import torch

from .index import DatasetIndex


def load_index(config) -> DatasetIndex:
    """The dataset index for config.dataset_format (the synthetic set is generated on first use)."""
    if config.dataset_format == "synthetic":
        from .synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset(root=config.data_root, seed=0)
        return DatasetIndex.load(Path(root) / "index.jsonl" if Path(root).is_dir() else root)
    raise ValueError(f"unknown dataset format {config.dataset_format!r}")


def episode_dataset(config, index: DatasetIndex, split: str, shot: int, train: bool, seed: int,
                    num_episodes: int = 1_000_000):
    from .decode import CachedDecoder
    from .episodes import EpisodeDataset
    from .transforms import ClipTransform

    transform = ClipTransform(resize=config.resize, crop=config.crop, train=train, flip=config.flip and train)
    return EpisodeDataset(
        index, split, way=config.way, shot=shot, query=config.query, frames=config.frames,
        train=train, transform=transform, decoder=CachedDecoder(), seed=seed, num_episodes=num_episodes,
    )


def episode_loader(config, index: DatasetIndex, split: str, shot: int, train: bool, seed: int,
                   episodes: range) -> torch.utils.data.DataLoader:
    """Episodes `episodes` of the split, one per batch, decoded in config.workers processes."""
    dataset = episode_dataset(config, index, split, shot, train, seed, num_episodes=episodes.stop)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=episodes, num_workers=config.workers,
        persistent_workers=config.workers > 0,
    )
