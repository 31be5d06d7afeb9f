"""Meta-test a trained model: accuracy over N-way K-shot episodes, mean and 95% CI.

    python -m tap_fast.evaluate --checkpoint runs/tap-synthetic/best.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tap_fast.checkpoint import load_checkpoint
from tap_fast.config import TrainConfig
from tap_fast.data.build import episode_dataset, load_index
from tap_fast.models import build_model
from tap_fast.stats import AccuracySummary, summarize_accuracies

# separate seed streams so validation and test episodes never coincide with training ones
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 1_000_003, 2_000_003


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class VideoFeatureCache:
    """Backbone features per video for evaluation.

    An evaluation clip is deterministic (segment centres, centre crop), so each video goes through
    the backbone once however many episodes it appears in: 1,000 test episodes cost about as
    much as one pass over the split's videos plus the (cheap) heads.
    """

    def __init__(self, model, dataset, device):
        self.model, self.dataset, self.device = model, dataset, device
        self._features: dict = {}

    def __call__(self, records) -> torch.Tensor:
        missing = [r for r in dict.fromkeys(records) if r.path not in self._features]
        for start in range(0, len(missing), 32):  # bounded batches of videos through the backbone
            chunk = missing[start:start + 32]
            clips = torch.stack([self.dataset.eval_clip(r) for r in chunk]).to(self.device)
            for record, features in zip(chunk, self.model.frame_features(clips)):
                self._features[record.path] = features
        return torch.stack([self._features[r.path] for r in records])


def _shard(episode_ids):
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return episode_ids[torch.distributed.get_rank()::torch.distributed.get_world_size()]
    return episode_ids


@torch.no_grad()
def meta_test(model, dataset, episode_ids: range, device, desc: str = "meta-test",
              progress: bool = True) -> AccuracySummary:
    """Accuracy over the episodes `episode_ids` of an evaluation EpisodeDataset (train=False).

    Under torch.distributed each rank scores its shard of the episodes and the results are gathered.
    """
    was_training = model.training
    model.eval()
    features = VideoFeatureCache(model, dataset, device)
    correct = []  # (episode id, accuracy)
    for k in tqdm(_shard(episode_ids), desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        episode = dataset.sampler.sample(k)
        logits = model.logits_from_features(features(episode.support), features(episode.query),
                                            len(episode.class_names))
        labels = torch.from_numpy(episode.query_labels).to(device)
        correct.append((k, (logits.argmax(-1) == labels).float().mean().item()))
    model.train(was_training)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, correct)
        correct = [pair for shard in shards for pair in shard]
    return summarize_accuracies([accuracy for _, accuracy in sorted(correct)])


def test_report(model, config: TrainConfig, index, device, split="test", shots=None, episodes=None,
                progress=True) -> dict[str, AccuracySummary]:
    """{'5-way 1-shot': summary, ...} on the given split."""
    results = {}
    for shot in shots or config.test_shots:
        dataset = episode_dataset(config, index, split, shot=shot, train=False, seed=config.seed + TEST_SEED_OFFSET)
        name = f"{config.way}-way {shot}-shot"
        results[name] = meta_test(model, dataset, range(episodes or config.test_episodes), device,
                                  desc=f"{split} {name}", progress=progress)
    return results


def format_report(results: dict[str, AccuracySummary], head: str) -> str:
    lines = ["| head | setting | accuracy (%) | 95% CI | episodes |", "|---|---|---|---|---|"]
    for name, summary in results.items():
        lines.append(f"| {head} | {name} | {summary.mean:.2f} | +- {summary.ci95:.2f} | {summary.episodes} |")
    return "\n".join(lines)


def model_from_checkpoint(path, device):
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(config)
    model.load_state_dict(checkpoint["model"])
    return model.to(device), config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tap_fast.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by tap_fast.train")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--shots", type=int, nargs="+", help="K values to test (default: the run's test_shots)")
    parser.add_argument("--episodes", type=int, help="episodes per setting (default: the run's test_episodes)")
    parser.add_argument("--data-root", help="override the dataset location stored in the checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    try:
        model, config = model_from_checkpoint(args.checkpoint, device)
        if args.data_root:
            config = config.replace(data_root=args.data_root)
        index = load_index(config, progress=not args.no_progress)
        results = test_report(model, config, index, device, args.split, args.shots, args.episodes,
                              progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(results, config.head))
    if args.json:
        Path(args.json).write_text(json.dumps({k: vars(v) for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
