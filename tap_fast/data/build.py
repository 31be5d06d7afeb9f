"""Builds the data pipeline a run asks for: config -> index -> decoder -> episode loader.

    load_index(config)            synthetic set (generated on first use), or a real root in the
                                  video-folders / frame-folders layout (formats.py), scanned once,
                                  cached and validated (its index carries every video's codec,
                                  for the decoder choice)
    episode_loader(config, ...)   an iterable of episode dicts (see EpisodeDataset): a torch
                                  DataLoader over EpisodeDataset (pyav / pil decoders), or a
                                  DaliEpisodeLoader (dali-cpu / dali-gpu), per select_decoder.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from tap_fast.interrupt import ignore_ctrl_c

from .index import DatasetIndex

_decoder_choices: dict[tuple, tuple[str, str]] = {}  # (index id, requested) -> (decoder, reason), logged once


def load_index(config, progress: bool = True) -> DatasetIndex:
    """The dataset index for config.dataset_format (synthetic | auto | video-folders | frame-folders);
    progress=False: no bars while the synthetic set is generated or a real root scanned."""
    check_split_dir_applies(config)
    if config.dataset_format == "synthetic":
        from .synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset(root=config.data_root, seed=0, progress=progress, **_synthetic_sizes(config))
        index = DatasetIndex.load(Path(root) / "index.jsonl" if Path(root).is_dir() else root)
        _check_synthetic_length(index, config.frames)
        return index
    from .formats import FORMATS, build_dataset_index, check_class_counts

    if config.dataset_format not in FORMATS + ("auto",):
        raise ValueError(f"unknown dataset format {config.dataset_format!r}; "
                         f"one of synthetic, auto, {', '.join(FORMATS)}")
    check_data_root(config)
    split_dir = config.split_dir
    if split_dir is None and (Path(config.data_root) / "splits").is_dir():
        split_dir = Path(config.data_root) / "splits"  # lists shipped beside the data
    report = build_dataset_index(
        config.data_root, fmt=config.dataset_format, split_dir=split_dir, min_frames=config.frames,
        policy=getattr(config, "bad_video_policy", "fail"), cache_dir=config.out_dir, progress=progress)
    warning = check_class_counts(report.index, config.preset)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return report.index


def check_split_dir_applies(config) -> None:
    """A ValueError for split lists given with the synthetic set, which keeps its own class split
    (they would be ignored without a word)."""
    if config.dataset_format == "synthetic" and getattr(config, "split_dir", None):  # duck-typed configs too
        raise ValueError(f"--split-dir {config.split_dir}: the synthetic set has its own class split; split "
                         "lists are read for real datasets (--dataset-format auto, video-folders or frame-folders)")


def check_data_root(config) -> None:
    """A ValueError for a --data-root that cannot hold the dataset: missing for a real dataset, a file,
    or (real datasets) not there. Cheap, so train checks it before building a model."""
    root = config.data_root
    if root and Path(root).exists() and not Path(root).is_dir():
        # synthetic: the set would be generated into it (a FileExistsError traceback later)
        raise ValueError(f"--data-root {root} is a file, not a directory")
    if config.dataset_format == "synthetic":
        return  # None or a new folder: the set is generated there
    from .formats import FORMATS

    if not root:
        raise ValueError(f"--data-root is required for the {config.preset} preset "
                         f"(a folder in the {' or '.join(FORMATS)} layout)")
    if not Path(root).exists():
        raise ValueError(f"--data-root {root} does not exist")


def synthetic_set_dir(config) -> Path:
    """The directory load_index reads (or would generate) the synthetic set of config in."""
    from .synthetic import synthetic_dataset_dir

    return synthetic_dataset_dir(config.data_root, seed=0, **_synthetic_sizes(config))


def _synthetic_sizes(config) -> dict:
    return {k: getattr(config, f"synthetic_{k}") for k in ("videos_per_class", "frames", "size", "families")
            if hasattr(config, f"synthetic_{k}")}  # config.synthetic_*: tiny sets for tests


def _check_synthetic_length(index: DatasetIndex, frames: int) -> None:
    """BadVideoError when T = frames exceeds the synthetic clips' length, as a real dataset's index
    rejects videos shorter than T (TSN sampling would otherwise silently repeat frames)."""
    from .formats import BadVideoError

    short = [(str(r.path), f"too short ({r.num_frames} frames, need >= {frames})") for r in index
             if r.num_frames < frames]
    if short:
        have = min(r.num_frames for r in index)
        raise BadVideoError(short, hint=f"\nthe synthetic clips have {have} frames: ask for --frames <= {have}, "
                                        f"or generate longer clips with --set synthetic_frames={frames}")


def episode_dataset(config, index: DatasetIndex, split: str, shot: int, train: bool, seed: int,
                    num_episodes: int = 1_000_000, decoder=None):
    from .decode import CachedDecoder
    from .episodes import EpisodeDataset
    from .transforms import ClipTransform

    from .frame_folder_decode import FrameFolderDecoder
    from .select_decoder import dataset_kind

    if decoder is None:  # one clip at a time (evaluation's feature cache, plots): per layout and choice
        if dataset_kind(index) == "frames":
            decoder = FrameFolderDecoder()
        elif pick_decoder(config, index) in ("dali-cpu", "dali-gpu"):
            from .dali_pipeline import DaliVideoDecoder

            device = "gpu" if pick_decoder(config, index) == "dali-gpu" else "cpu"
            decoder = DaliVideoDecoder(device, device_id=torch.cuda.current_device() if device == "gpu" else 0)
        else:
            decoder = CachedDecoder()
    transform = ClipTransform(resize=config.resize, crop=config.crop, train=train, flip=config.flip and train)
    return EpisodeDataset(
        index, split, way=config.way, shot=shot, query=config.query, frames=config.frames,
        train=train, transform=transform, decoder=decoder,
        seed=seed, num_episodes=num_episodes,
    )


def pick_decoder(config, index: DatasetIndex) -> str:
    """The decoder for this index (config.decoder, "auto" resolved), logged the first time."""
    from .select_decoder import choose_decoder

    requested = getattr(config, "decoder", "auto")
    key = (id(index), requested)
    if key not in _decoder_choices:
        name, reason = choose_decoder(requested, index)
        print(f"tap_fast.data: decoder {name} ({reason})", file=sys.stderr, flush=True)
        _decoder_choices[key] = (name, reason)
    return _decoder_choices[key][0]


def _default_shard() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def episode_loader(config, index: DatasetIndex, split: str, shot: int, train: bool, seed: int,
                   episodes: range, shard_id: int | None = None, num_shards: int | None = None):
    """Episodes `episodes` of the split, one per batch (every num_shards-th one from shard_id on;
    by default the torch.distributed rank and world size when a process group is up)."""
    if shard_id is None or num_shards is None:
        shard_id, num_shards = _default_shard()
    decoder = pick_decoder(config, index)
    if decoder in ("dali-cpu", "dali-gpu"):
        from .dali_pipeline import DaliEpisodeLoader

        device_id = torch.cuda.current_device() if decoder == "dali-gpu" else 0
        return DaliEpisodeLoader(
            index, split, episodes, way=config.way, shot=shot, query=config.query, frames=config.frames,
            train=train, resize=config.resize, crop=config.crop, flip=config.flip, seed=seed,
            device="gpu" if decoder == "dali-gpu" else "cpu", num_threads=max(2, config.workers),
            device_id=device_id, shard_id=shard_id, num_shards=num_shards)
    # pil: FrameFolderDecoder; pyav: CachedDecoder (PyAV, whole clips kept in memory)
    dataset = episode_dataset(config, index, split, shot, train, seed, num_episodes=episodes.stop)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=episodes[shard_id::num_shards], num_workers=config.workers,
        persistent_workers=config.workers > 0,
        # a worker that died of Ctrl-C left the loop a batch short: "DataLoader worker exited
        # unexpectedly" instead of the clean stop at the step's end (tap_fast.interrupt)
        worker_init_fn=ignore_ctrl_c,
    )
