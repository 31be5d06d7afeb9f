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
from tap_fast.data.build import episode_loader, load_index
from tap_fast.models import build_model
from tap_fast.stats import AccuracySummary, summarize_accuracies

# separate seed streams so validation and test episodes never coincide with training ones
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 1_000_003, 2_000_003


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def meta_test(model, loader, device, desc: str = "meta-test", progress: bool = True) -> AccuracySummary:
    was_training = model.training
    model.eval()
    correct = []  # (episode id, accuracy)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        logits = model(batch["support"].to(device), batch["query"].to(device), len(batch["class_names"]))
        labels = batch["query_labels"].to(device)
        correct.append((batch["episode"], (logits.argmax(-1) == labels).float().mean().item()))
    model.train(was_training)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # the loader gave this rank its shard of the episodes (episode_loader): gather them all
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, correct)
        correct = [pair for shard in shards for pair in shard]
    return summarize_accuracies([accuracy for _, accuracy in sorted(correct)])


def test_report(model, config: TrainConfig, index, device, split="test", shots=None, episodes=None,
                progress=True) -> dict[str, AccuracySummary]:
    """{'5-way 1-shot': summary, ...} on the given split."""
    results = {}
    for shot in shots or config.test_shots:
        loader = episode_loader(
            config, index, split, shot=shot, train=False, seed=config.seed + TEST_SEED_OFFSET,
            episodes=range(episodes or config.test_episodes),
        )
        name = f"{config.way}-way {shot}-shot"
        results[name] = meta_test(model, loader, device, desc=f"{split} {name}", progress=progress)
    return results


def format_report(results: dict[str, AccuracySummary], head: str) -> str:
    lines = [f"| head | setting | accuracy (%) | 95% CI | episodes |", "|---|---|---|---|---|"]
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
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, config = model_from_checkpoint(args.checkpoint, device)
    if args.data_root:
        config = config.replace(data_root=args.data_root)
    index = load_index(config)
    results = test_report(model, config, index, device, args.split, args.shots, args.episodes)
    print(format_report(results, config.head))
    if args.json:
        Path(args.json).write_text(json.dumps({k: vars(v) for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
