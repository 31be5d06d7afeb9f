"""Train a few-shot video classifier episode by episode.

    python -m tap_fast.train                       # TAP on the embedded synthetic benchmark (CPU, minutes)
    python -m tap_fast.train --head tsn            # the FewShot-TSN baseline, same budget
    python -m tap_fast.train --preset ssv2-small --data-root /data/ssv2 --backbone-weights resnet50.pth

Reads top to bottom: config -> data -> model -> optimizer -> loop (validate, checkpoint) -> test.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tap_fast.checkpoint import save_atomic
from tap_fast.config import HEADS, PRESETS, TrainConfig, preset
from tap_fast.data.build import episode_loader, load_index
from tap_fast.evaluate import (
    VAL_SEED_OFFSET, format_report, meta_test, model_from_checkpoint, pick_device, test_report,
)
from tap_fast.models import build_model, episode_loss, parameter_groups_to_clip


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    parser = argparse.ArgumentParser(prog="python -m tap_fast.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="synthetic", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--head", choices=HEADS)
    parser.add_argument("--way", type=int)
    parser.add_argument("--shot", type=int)
    parser.add_argument("--query", type=int, help="query videos per class")
    parser.add_argument("--frames", type=int, help="T, frames sampled per video")
    parser.add_argument("--episodes", type=int, help="training episodes in total")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--data-root", help="dataset directory (synthetic: where to cache it)")
    parser.add_argument("--split-dir", help="directory holding train/val/test split lists")
    parser.add_argument("--dataset-format", help="synthetic | auto | video-folders | frame-folders")
    parser.add_argument("--decoder", choices=("auto", "dali-gpu", "dali-cpu", "pyav", "pil"),
                        help="video/frame decoder (default auto: DALI on a GPU, else by codec; logged)")
    parser.add_argument("--bad-video-policy", choices=("fail", "skip"),
                        help="unreadable/empty/truncated/too-short videos: stop with their names, or skip them")
    parser.add_argument("--backbone", help="small | resnet50")
    parser.add_argument("--resize", type=int, help="short side in pixels before cropping")
    parser.add_argument("--crop", type=int, help="square crop size in pixels")
    parser.add_argument("--backbone-weights", help="local ImageNet weights file for resnet50")
    parser.add_argument("--val-every", type=int, help="episodes between meta-validations")
    parser.add_argument("--val-episodes", type=int)
    parser.add_argument("--test-episodes", type=int, help="meta-test episodes per setting")
    parser.add_argument("--test-shots", type=int, nargs="+")
    parser.add_argument("--workers", type=int, help="data loading processes")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out-dir")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of bars")
    args = parser.parse_args(argv)

    config = preset(args.preset)
    overrides = {
        key: value for key, value in vars(args).items()
        if key not in ("preset", "no_progress") and value is not None
    }
    for key in ("test_shots",):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    if "head" in overrides and "out_dir" not in overrides:
        overrides["out_dir"] = config.out_dir.replace("tap-", f"{overrides['head']}-", 1)
    return config.replace(**overrides), not args.no_progress


def validate_config(config: TrainConfig) -> None:
    for name in ("way", "shot", "query", "frames", "episodes", "val_every", "val_episodes", "test_episodes"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.way < 2:
        raise ValueError(f"--way must be >= 2 for a classification episode, got {config.way}")


def build_optimizer(model, config: TrainConfig):
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    # the schedule counts episodes: x lr_gamma every lr_step_epochs "epochs"
    step_episodes = config.lr_step_epochs * config.episodes_per_epoch
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_episodes, gamma=config.lr_gamma)
    return optimizer, scheduler


def train(config: TrainConfig, progress: bool = True) -> dict:
    validate_config(config)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    index = load_index(config)
    train_loader = episode_loader(config, index, "train", shot=config.shot, train=True, seed=config.seed,
                                  episodes=range(config.episodes))
    val_loader = episode_loader(config, index, "val", shot=config.shot, train=False,
                                seed=config.seed + VAL_SEED_OFFSET, episodes=range(config.val_episodes))

    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(model, config)
    clipped = parameter_groups_to_clip(model)
    print(f"tap_fast: {config.head} head, {config.way}-way {config.shot}-shot, T={config.frames}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}", flush=True)

    history, best_accuracy, started = [], -math.inf, time.time()
    running_loss = running_correct = 0.0
    bar = tqdm(train_loader, total=config.episodes, desc="train", disable=not progress, dynamic_ncols=True)
    model.train()
    for episode, batch in enumerate(bar, start=1):
        logits = model(batch["support"].to(device), batch["query"].to(device), config.way)
        labels = batch["query_labels"].to(device)
        loss = episode_loss(logits, labels) / config.episodes_per_step
        loss.backward()
        if episode % config.episodes_per_step == 0:
            torch.nn.utils.clip_grad_norm_(clipped, config.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        running_loss = 0.98 * running_loss + 0.02 * loss.item() * config.episodes_per_step
        running_correct = 0.98 * running_correct + 0.02 * (logits.argmax(-1) == labels).float().mean().item()
        if episode % 50 == 0:
            debias = 1 - 0.98 ** episode
            bar.set_postfix(loss=f"{running_loss / debias:.3f}", acc=f"{100 * running_correct / debias:.1f}")

        if episode % config.val_every == 0 or episode == config.episodes:
            val = meta_test(model, val_loader, device, desc="meta-val", progress=progress)
            record = {"episode": episode, "train_loss": running_loss / (1 - 0.98 ** episode),
                      "val_accuracy": val.mean, "val_ci95": val.ci95, "seconds": time.time() - started,
                      "lr": scheduler.get_last_lr()[0]}
            history.append(record)
            checkpoint = {"model": model.state_dict(), "config": config.to_dict(), "episode": episode,
                          "val_accuracy": val.mean}
            save_atomic(checkpoint, out_dir / "last.pt")
            if val.mean > best_accuracy:
                best_accuracy = val.mean
                save_atomic(checkpoint, out_dir / "best.pt")
            message = (f"episode {episode}: loss {record['train_loss']:.3f}, "
                       f"val {config.way}-way {config.shot}-shot {val}")
            tqdm.write(message) if progress else print(message, flush=True)

    # meta-test the checkpoint chosen on the validation set
    model, _ = model_from_checkpoint(out_dir / "best.pt", device)
    results = test_report(model, config, index, device, progress=progress)
    report = format_report(results, config.head)
    print(report, flush=True)

    summary = {"config": config.to_dict(), "history": history, "train_seconds": time.time() - started,
               "test": {name: vars(s) for name, s in results.items()}}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "report.md").write_text(report + "\n")
    _save_plots(model, config, index, device, history, out_dir)
    print(f"checkpoint, report and plots in {out_dir}/", flush=True)
    return summary


def _save_plots(model, config, index, device, history, out_dir: Path) -> None:
    from tap_fast.plots import plot_alignment_example, plot_training_curves

    plot_training_curves(history, out_dir / "training.png")
    plot_alignment_example(model, config, index, device, out_dir / "alignment.png")


def main(argv=None) -> int:
    try:
        config, progress = parse_args(argv)
        train(config, progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
