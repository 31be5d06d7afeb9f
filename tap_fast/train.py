"""Train a few-shot video classifier episode by episode.

    python -m tap_fast.train                       # TAP on the embedded synthetic benchmark (CPU, minutes)
    python -m tap_fast.train --head tsn            # the FewShot-TSN baseline, same budget
    python -m tap_fast.train --preset ssv2-small --data-root /data/ssv2 --backbone-weights resnet50.pth
    torchrun --nproc_per_node=4 -m tap_fast.train --preset ssv2-small ...   # DDP, one process per GPU
    python -m tap_fast.train --resume              # continue <out-dir>/last.pt exactly, with its saved settings
    python -m tap_fast.train --overwrite           # start again in an <out-dir> that holds a previous run

Reads top to bottom: config -> processes -> checks (out-dir, resume) -> model -> optimizer -> data
(every split checked) -> resume -> loop (validate, checkpoint, log) -> test.

Scale-out: with W processes and --episodes-per-step E, optimizer step s consumes the episode ids
[s*E*W, (s+1)*E*W); rank r forwards the ids congruent to r mod W, one episode per forward, and
DDP averages the gradients, so W processes x E equals one process x E*W (same episodes, same
gradient). Rank 0 alone logs and writes checkpoints; validation and test episodes are split over
the ranks and gathered. SIGTERM/SIGINT stop at the next step boundary after writing last.pt.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tap_fast import distributed
from tap_fast.atomic_write import write_atomic, write_text_atomic
from tap_fast.checkpoint import load_checkpoint, load_weights, restore_rng_states, rng_states, save_atomic
from tap_fast.config import CHOICES, HEADS, PRESETS, TrainConfig, check_value, preset
from tap_fast.data.build import check_data_root, check_split_dir_applies, episode_dataset, episode_loader, load_index
from tap_fast.data.decode import VideoDecodeError, as_decode_error
from tap_fast.evaluate import (VAL_SEED_OFFSET, check_episodes_fit, format_report, meta_test, names_its_problem,
                               pick_device, test_report)
from tap_fast.interrupt import StopOnSignal, report_interrupted
from tap_fast.models import build_model, episode_loss, parameter_groups_to_clip
from tap_fast.precision import PRECISIONS, autocast, grad_scaler, resolve_precision
from tap_fast.run_log import RunLog
from tap_fast.step_timer import StepTimer


@dataclass
class RunOptions:
    """How to run, as opposed to what to train (TrainConfig)."""
    progress: bool = True  # progress bars (else plain log lines)
    resume: str | None = None  # a last.pt to continue from; "auto": <out_dir>/last.pt
    stop_after: int | None = None  # debug: stop as a SIGTERM would once this many episodes are done
    profile: bool = False  # print where step time goes at the end
    overwrite: bool = False  # clear a previous run's files in out_dir first (else such a dir is refused)


_OVERWRITE_AND_RESUME = ("--overwrite and --resume exclude each other: --resume continues the run in --out-dir, "
                         "--overwrite deletes it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tap_fast.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default synthetic)")
    parser.add_argument("--head", choices=HEADS, help="few-shot head (default tap; --out-dir default follows it)")
    parser.add_argument("--way", type=int, help="classes per episode (default: the preset's, 5)")
    parser.add_argument("--shot", type=int,
                        help="support videos per class in training and validation episodes (default 1)")
    parser.add_argument("--query", type=int, help="query videos per class")
    parser.add_argument("--frames", type=int, help="T, frames sampled per video")
    parser.add_argument("--episodes", type=int, help="training episodes in total (all processes together)")
    parser.add_argument("--episodes-per-step", type=int,
                        help="episodes each process averages into one optimizer step (global: x world size)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the preset's, 1e-3)")
    parser.add_argument("--data-root", help="dataset directory (synthetic: where to cache it)")
    parser.add_argument("--split-dir", help="directory holding train/val/test split lists")
    parser.add_argument("--dataset-format", choices=CHOICES["dataset_format"],
                        help="the layout on disk (default: the preset's)")
    parser.add_argument("--decoder", choices=CHOICES["decoder"],
                        help="video/frame decoder (default auto: DALI on a GPU, else by codec; logged)")
    parser.add_argument("--bad-video-policy", choices=CHOICES["bad_video_policy"],
                        help="unreadable/empty/truncated/too-short videos: stop with their names, or skip them")
    parser.add_argument("--backbone", choices=CHOICES["backbone"],
                        help="per-frame feature extractor (default: the preset's)")
    parser.add_argument("--resize", type=int, help="short side in pixels before cropping")
    parser.add_argument("--crop", type=int, help="square crop size in pixels")
    parser.add_argument("--backbone-weights", help="local ImageNet weights file for resnet50")
    parser.add_argument("--val-every", type=int, help="episodes between meta-validations")
    parser.add_argument("--val-episodes", type=int, help="episodes per meta-validation (default: the preset's)")
    parser.add_argument("--test-episodes", type=int, help="meta-test episodes per setting")
    parser.add_argument("--test-shots", type=int, nargs="+",
                        help="shots of the final meta-test, one setting each (default 1 5)")
    parser.add_argument("--workers", type=int, help="data loading processes")
    parser.add_argument("--seed", type=int, help="seed of the weights and of the training episodes (default 0)")
    parser.add_argument("--out-dir", help="where the run's files go (default runs/<head>-<preset>)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK; "
                                         "pick GPUs with CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast dtype (default auto: bf16 on CUDA, fp32 on CPU); fp16 uses a GradScaler")
    parser.add_argument("--checkpoint-every", type=int, help="optimizer steps between last.pt writes")
    parser.add_argument("--log-every", type=int, help="optimizer steps between log.jsonl/TensorBoard records")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any TrainConfig field, VALUE as JSON (e.g. --set mlp_hidden=[32,16]); repeatable")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help="continue from a last.pt (default <out-dir>/last.pt) with the settings saved in it; "
                             "options given again override them (only those that keep the trajectory, e.g. "
                             "--episodes, --val-every, --device)")
    parser.add_argument("--overwrite", action="store_true",
                        help="--out-dir holds a previous run: delete its files (checkpoints, results, logs, "
                             "plots, tensorboard/) and start again")
    parser.add_argument("--stop-after", type=int, metavar="EPISODES",
                        help="debug: stop as on SIGTERM (checkpoint, exit) after this many episodes")
    parser.add_argument("--profile", action="store_true", help="print where step time goes")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots at the end")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of bars")
    return parser


def parse_args(argv=None) -> tuple[TrainConfig, RunOptions]:
    args = build_parser().parse_args(argv)
    options = RunOptions(progress=not args.no_progress, resume=args.resume, stop_after=args.stop_after,
                         profile=args.profile, overwrite=args.overwrite)
    if args.overwrite and args.resume:  # before looking for a checkpoint: this is the mistake to name
        raise ValueError(_OVERWRITE_AND_RESUME)

    # the settings typed on this command line (flags and --set); the rest comes from the preset, or
    # with --resume from the checkpoint
    run_flags = ("no_progress", "set", "resume", "stop_after", "profile", "no_plots", "overwrite")
    typed = {key: value for key, value in vars(args).items() if key not in run_flags and value is not None}
    if "test_shots" in typed:
        typed["test_shots"] = tuple(typed["test_shots"])
    if args.no_plots:
        typed["plots"] = False
    set_values = _parse_set(args.set)
    for key in sorted(set(typed) & set(set_values)):  # which one should win is a guess: ask
        flag = "--no-plots" if key == "plots" else f"--{key.replace('_', '-')}"
        raise ValueError(f"{key} is given twice, by {flag} and by --set {key}=...; give it once")
    typed.update(set_values)
    # input locations absolute: the checkpoint then works from any directory (evaluate, --resume)
    for key in ("data_root", "split_dir"):
        if typed.get(key):
            typed[key] = os.path.abspath(os.path.expanduser(typed[key]))

    config = preset(args.preset or "synthetic")
    derived = {}
    if "head" in typed:
        derived["out_dir"] = config.out_dir.replace("tap-", f"{typed['head']}-", 1)
    config = TrainConfig.from_dict({**config.to_dict(), **derived, **typed})
    if args.resume:
        config = _resume_config(config, typed, args.resume)
    return config, options


def resume_path(out_dir, resume: str) -> Path:
    """The checkpoint --resume continues: <out-dir>/last.pt for a bare --resume, else the path given."""
    return Path(out_dir) / "last.pt" if resume == "auto" else Path(resume)


def _resume_config(fresh: TrainConfig, typed: dict, resume: str) -> TrainConfig:
    """--resume: the checkpoint's settings, with those typed on the command line (`typed`) on top;
    says which of them changed. The checkpoint: resume_path, with --out-dir as typed or by default
    (`fresh`: the command line's config)."""
    saved = TrainConfig.from_dict(load_checkpoint(resume_path(fresh.out_dir, resume))["config"])
    overrides = dict(typed)
    if resume == "auto" and Path(saved.out_dir).resolve() != Path(fresh.out_dir).resolve():
        overrides["out_dir"] = fresh.out_dir  # the run was found here (moved, or another working directory)
    elif resume != "auto" and "out_dir" not in typed:
        # the run goes on in the checkpoint's folder: the saved out_dir may be relative to another
        # working directory, or the run may have moved
        overrides["out_dir"] = str(Path(resume).parent)
    config = saved.replace(**overrides)
    # other changes are refused by check_resumable, which names them
    changed = [f"{key} {getattr(saved, key)!r} -> {getattr(config, key)!r}" for key in overrides
               if key in RESUMABLE_CHANGES and getattr(saved, key) != getattr(config, key)]
    if changed and os.environ.get("RANK", "0") == "0":
        print(f"tap_fast: --resume: {', '.join(changed)}", file=sys.stderr, flush=True)
    return config


def _parse_set(items: list[str]) -> dict:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a config field "
                             f"({', '.join(sorted(known))})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string
        try:
            values[key] = check_value(key, value)
        except ValueError as error:
            try:  # a string field given text that reads as JSON (out_dir=2024): the text as typed
                values[key] = check_value(key, raw)
            except ValueError:
                raise ValueError(f"--set {item}: {error}") from None
    return values


def validate_config(config: TrainConfig) -> None:
    """Cheap checks of the settings alone, before any data or model work."""
    shots = config.test_shots
    if isinstance(shots, tuple) and any(isinstance(shot, int) and shot < 1 for shot in shots):
        raise ValueError(f"--test-shots must each be >= 1, got {' '.join(map(str, shots))}")
    if isinstance(shots, tuple) and len(set(shots)) < len(shots):  # the same test run twice, reported once
        raise ValueError(f"--test-shots names a shot more than once ({' '.join(map(str, shots))}); give each once")
    for field in dataclasses.fields(TrainConfig):
        check_value(field.name, getattr(config, field.name))  # types, choices (--set, train(config) callers)
    for name in ("way", "shot", "query", "frames", "episodes", "episodes_per_step", "episodes_per_epoch",
                 "lr_step_epochs", "val_every", "val_episodes", "test_episodes", "checkpoint_every", "log_every",
                 "resize", "crop", "feature_dim", "lstm_hidden"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("seed", "workers", "weight_decay"):  # 0 is meaningful (no workers, no decay)
        if getattr(config, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    for name in ("lr", "clip_norm", "otam_gamma"):  # `not > 0` also refuses NaN; clip_norm inf: no clipping
        value = getattr(config, name)
        if not value > 0 or (name != "clip_norm" and math.isinf(value)):
            raise ValueError(f"--{name.replace('_', '-')} must be {'> 0' if name == 'clip_norm' else 'finite and > 0'}, "
                             f"got {value}")
    if not 0 < config.lr_gamma <= 1:
        raise ValueError(f"--lr-gamma must be in (0, 1] (the factor applied every lr_step_epochs), "
                         f"got {config.lr_gamma}")
    if not 0 <= config.momentum < 1:
        raise ValueError(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.way < 2:
        raise ValueError(f"--way must be >= 2 for a classification episode, got {config.way}")
    if config.crop > config.resize:
        raise ValueError(f"--crop {config.crop} is larger than --resize {config.resize} (the frame's short side)")
    check_split_dir_applies(config)
    check_data_root(config)  # before the model: ResNet-50 takes seconds to build
    pick_device(config.device)  # --device cuda without a GPU: say so now, not in a traceback


# what a run writes in out_dir (--overwrite deletes exactly these, and tensorboard/)
RUN_FILES = ("best.pt", "last.pt", "results.json", "report.md", "training.png", "alignment.png", "log.jsonl")


def previous_run(out_dir: Path) -> list[str]:
    """The files that show out_dir holds a run that a new one would overwrite or mix with."""
    found = [name for name in ("last.pt", "best.pt", "results.json") if (out_dir / name).exists()]
    # a run killed before its first checkpoint leaves only its logs: a new run would append to them
    return found or [name for name in ("log.jsonl", "tensorboard/") if (out_dir / name).exists()]


def out_dir_problem(out_dir: Path) -> str | None:
    """Why out_dir could not hold the run's files (a file, under a file, not writable), or None:
    found now, before the model and the data, not as a traceback when the first file is written."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"--out-dir {out_dir} is a file, not a directory"
    existing = Path(os.path.abspath(out_dir))
    while not existing.exists():  # the folder nearest to out_dir that is there: where it would be made
        existing = existing.parent
    if not existing.is_dir():
        return f"--out-dir {out_dir}: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out-dir {out_dir}: {existing} is not writable"
    return None


def clear_previous_run(out_dir: Path) -> None:
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
        for tmp in out_dir.glob(f".{name}.*.tmp"):  # left by a write that was killed mid-way
            tmp.unlink(missing_ok=True)
    shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)


def build_optimizer(model, config: TrainConfig, global_batch: int):
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    return optimizer, build_scheduler(optimizer, config, global_batch)


def build_scheduler(optimizer, config: TrainConfig, global_batch: int, last_step: int = -1):
    # the schedule counts episodes: x lr_gamma every lr_step_epochs "epochs", whatever the world size
    step_episodes = config.lr_step_epochs * config.episodes_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: config.lr_gamma ** ((step * global_batch) // step_episodes), last_epoch=last_step)


# fields a resumed run may change without changing the training trajectory
RESUMABLE_CHANGES = frozenset({
    "episodes", "device", "workers", "out_dir", "data_root", "split_dir", "decoder", "bad_video_policy",
    "val_every", "val_episodes", "test_episodes", "test_shots", "checkpoint_every", "log_every", "plots",
})


def check_resumable(saved: dict, config: TrainConfig) -> None:
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"--resume: the checkpoint was trained with other settings ({details}); keep the "
                         "checkpoint's values to continue exactly (on the command line: leave those options out)")


def train(config: TrainConfig, options: RunOptions | bool = True) -> dict:
    """Train, validate, checkpoint, meta-test; returns the summary (also written to results.json)."""
    if isinstance(options, bool):  # train(config, progress)
        options = RunOptions(progress=options)
    if options.stop_after is not None and options.stop_after < 1:  # 0 would still train a whole step
        raise ValueError(f"--stop-after must be >= 1 (episodes to train before stopping), got {options.stop_after}")
    validate_config(config)
    ctx = distributed.setup(config.device)
    try:
        summary = _train(config, options, ctx)
    except BaseException:
        if ctx.owns_group:
            distributed.cleanup(graceful=False)
        raise
    if ctx.owns_group:
        distributed.cleanup()
    return summary


def _train(config: TrainConfig, options: RunOptions, ctx: distributed.DistContext) -> dict:
    # ---- processes: rank r of W, one device each ----------------------------------------------
    device, main = ctx.device, ctx.is_main
    precision = resolve_precision(config.precision, device)
    progress = options.progress and main
    out_dir = Path(config.out_dir)
    global_batch = config.episodes_per_step * ctx.world_size  # episodes per optimizer step, all ranks
    total_steps = config.episodes // global_batch
    if total_steps < 1:
        raise ValueError(f"--episodes {config.episodes} is less than one step of {global_batch} episodes "
                         f"({config.episodes_per_step} per step x {ctx.world_size} processes)")
    if total_steps * global_batch != config.episodes and main:
        print(f"tap_fast: training {total_steps * global_batch} episodes, the multiple of the "
              f"{global_batch} episodes per step below --episodes {config.episodes}", file=sys.stderr)

    # ---- out_dir: a previous run's checkpoints and results are never replaced unasked ------------
    if options.overwrite and options.resume:
        raise ValueError(_OVERWRITE_AND_RESUME)
    problem, previous = distributed.broadcast_object(  # rank 0's disk: rank 0 alone writes there
        (out_dir_problem(out_dir), previous_run(out_dir)) if main else None, ctx)
    if problem:
        raise ValueError(problem)
    resumes_elsewhere = (options.resume not in (None, "auto")
                         and Path(options.resume).resolve().parent != out_dir.resolve())
    if previous and resumes_elsewhere:  # continuing one run in another run's folder would overwrite it
        raise ValueError(f"--out-dir {out_dir} already holds another run ({', '.join(previous)}); continue "
                         f"{options.resume} in its own folder (leave --out-dir out) or in a new --out-dir")
    if previous and not options.resume and not options.overwrite:
        if "last.pt" in previous:
            resume_hint = "continue it with --resume, "
        elif "best.pt" in previous or "results.json" in previous:
            resume_hint = "continue it with --resume PATH/last.pt, "
        else:
            resume_hint = "it stopped before its first checkpoint (nothing to resume); "
        raise ValueError(f"--out-dir {out_dir} already holds a previous run ({', '.join(previous)}); {resume_hint}"
                         f"pick a new --out-dir, or pass --overwrite to delete it and start again")

    # ---- resume: read and check the checkpoint now, before the data and the model are built -------
    checkpoint = None
    if options.resume:
        path = resume_path(out_dir, options.resume)
        checkpoint = load_checkpoint(path)
        if "optimizer" not in checkpoint:
            raise ValueError(f"--resume: {path} holds model weights only (best.pt: the weights chosen on "
                             f"validation); resume from last.pt")
        check_resumable(checkpoint["config"], config)
        if checkpoint["episode"] % global_batch:
            raise ValueError(f"--resume: {path} stopped at episode {checkpoint['episode']}, not a multiple of "
                             f"this run's {global_batch} episodes per step")
        # best.pt (the weights the final test reads) is kept beside last.pt: resumed into another --out-dir
        # it comes along (copied once the run starts); with none at all the next validation makes one
        best_source = distributed.broadcast_object(
            next((p for p in (out_dir / "best.pt", path.parent / "best.pt") if p.is_file()), None) if main else None,
            ctx)
        if best_source is None and checkpoint["episode"] >= total_steps * global_batch:
            raise ValueError(f"--resume: {path} is at the end of its run (episode {checkpoint['episode']}) and "
                             f"there is no best.pt beside it to test; raise --episodes to train on")
    if main and config.backbone == "resnet50" and not config.backbone_weights:
        print("tap_fast: warning: no --backbone-weights: ResNet-50 starts from random weights (the paper's "
              "settings assume ImageNet weights; expect much lower accuracy)", file=sys.stderr, flush=True)

    # ---- model and optimizer (before the data: bad --backbone-weights fail in seconds, not after a scan)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(model, config, global_batch)
    scaler = grad_scaler(precision, device)
    clipped = parameter_groups_to_clip(model)
    # what the finite check after each step reads: BatchNorm's running statistics overflow first
    weights = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    state = {"step": 0, "history": [], "best_accuracy": -math.inf, "running": [0.0, 0.0, 0],
             "meters": [0.0, 0.0, 0], "elapsed": 0.0}

    # ---- data (rank 0 first: it may generate the synthetic set or scan and cache a real one) ---
    if not main:
        distributed.barrier(ctx)
    index = load_index(config, progress=progress)
    if main:
        distributed.barrier(ctx)
    # every split can make its episodes (the test shots too): fail now, not after the training
    check_episodes_fit(config, index, "train", [config.shot])
    check_episodes_fit(config, index, "val", [config.shot])
    check_episodes_fit(config, index, "test", config.test_shots, hint="lower --test-shots or --way")

    if checkpoint is not None:
        load_weights(model, checkpoint, path)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state.update(checkpoint["loop"], step=checkpoint["episode"] // global_batch)
        if best_source is None:  # a validation no better than the lost best.pt would write none
            state["best_accuracy"] = -math.inf
        if checkpoint["global_batch"] == global_batch:
            scheduler.load_state_dict(checkpoint["scheduler"])
        else:  # another world size: the same schedule, counted in this run's steps
            scheduler = build_scheduler(optimizer, config, global_batch, last_step=state["step"] - 1)
        rng = checkpoint["rng"]
        restore_rng_states(rng[ctx.rank] if len(rng) == ctx.world_size else rng[0])
        if main:
            print(f"tap_fast: resumed from {path} at episode {checkpoint['episode']}", flush=True)
    ddp_model = model
    if ctx.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    if main:
        print(f"tap_fast: {config.head} head, {config.way}-way {config.shot}-shot, T={config.frames}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}, {precision}"
              + (f", {ctx.world_size} processes" if ctx.enabled else ""), flush=True)

    start_step = state["step"]
    train_loader = episode_loader(config, index, "train", shot=config.shot, train=True, seed=config.seed,
                                  episodes=range(start_step * global_batch, total_steps * global_batch))
    val_dataset = episode_dataset(config, index, "val", shot=config.shot, train=False,
                                  seed=config.seed + VAL_SEED_OFFSET)

    saved_episode = checkpoint["episode"] if checkpoint is not None else None  # the last.pt on disk

    def save_last(step: int) -> None:
        """last.pt: everything --resume needs to continue exactly (a collective: call on every rank)."""
        nonlocal saved_episode
        saved_episode = step * global_batch
        rng = distributed.gather_objects(rng_states(), ctx)
        if main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                         "loop": {k: v for k, v in state.items() if k != "step"},
                         "episode": step * global_batch, "global_batch": global_batch,
                         "config": config.to_dict()}, out_dir / "last.pt")

    def diverged(episode: int, what: str) -> ValueError:
        """The one-line error for a run whose numbers went NaN/inf (bar and log closed first)."""
        bar.close()
        log.close()
        kept = f"; last.pt is from episode {saved_episode}, before it" if saved_episode is not None else ""
        return ValueError(f"training diverged at episode {episode}: {what} became NaN or inf (--lr {config.lr:g} "
                          f"too high? lower it{', or use --precision fp32' if precision != 'fp32' else ''}){kept}")

    # ---- loop: one optimizer step = episodes_per_step episodes on each rank --------------------
    if main and options.overwrite:
        clear_previous_run(out_dir)
    if main and checkpoint is not None and best_source is not None and best_source != out_dir / "best.pt":
        with open(best_source, "rb") as source:
            write_atomic(out_dir / "best.pt", lambda f: shutil.copyfileobj(source, f))
    # resumed into another --out-dir, the log goes on from the checkpoint's (the training plot covers the whole run)
    log = RunLog(out_dir, enabled=main, resume_episode=start_step * global_batch if options.resume else None,
                 resumed_log=path.parent / "log.jsonl" if checkpoint is not None else None)
    timer = StepTimer(device, sync=options.profile)
    started = time.time() - state["elapsed"]
    bar = tqdm(total=total_steps * global_batch, initial=start_step * global_batch, desc="train", unit="ep",
               disable=not progress, dynamic_ncols=True)
    batches = iter(train_loader)
    model.train()
    stopped, done = None, start_step
    timed_steps = 0  # steps run by this process since the last train record: the timer's interval
    with StopOnSignal() as stop_signal:
        try:
            for step in range(start_step, total_steps):
                loss_sum = correct_sum = torch.zeros((), device=device)
                for micro in range(config.episodes_per_step):
                    with timer("data"):
                        batch = next(batches)
                    last_micro = micro == config.episodes_per_step - 1
                    # gradients are all-reduced once per step, on the last backward
                    with ddp_model.no_sync() if ctx.enabled and not last_micro else nullcontext():
                        with timer("forward"), autocast(precision, device):
                            try:
                                logits = ddp_model(batch["support"].to(device, non_blocking=True),
                                                   batch["query"].to(device, non_blocking=True), config.way)
                            except ValueError as error:
                                # the TAP/OTAM kernels refuse non-finite inputs: finite but huge weights
                                # overflowed the features (the weights check below comes a step late)
                                if "NaN or inf" not in str(error):
                                    raise
                                raise diverged(step * global_batch + 1, "the features") from error
                            labels = batch["query_labels"].to(device)
                            loss = episode_loss(logits, labels)
                        with timer("backward"):
                            scaler.scale(loss / config.episodes_per_step).backward()
                    loss_sum = loss_sum + loss.detach()
                    correct_sum = correct_sum + (logits.argmax(-1) == labels).float().mean()
                with timer("optimizer"):
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(clipped, config.clip_norm)
                    scale = scaler.get_scale()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    # fp16: a step with inf/NaN gradients is skipped and the scale lowered; the learning-rate
                    # schedule waits for the next real step (bf16/fp32: the scaler is off, scale stays 1)
                    if scaler.get_scale() >= scale:
                        scheduler.step()

                # weights gone NaN/inf (a diverged step; fp16's scaler skips such steps) would train on
                # silently, or fail in a head's kernel with a message that does not say why
                # (the largest |w|, by multi-tensor kernels on CUDA: one launch, not one per tensor)
                weights_ok = torch.isfinite(torch.nn.utils.get_total_norm(weights, math.inf))
                # one small collective a step: the global step's loss and accuracy, and any rank's stop signal
                loss_total, correct_total, stop_votes, bad_weights = distributed.all_reduce_sum(
                    [loss_sum.item(), correct_sum.item(), float(stop_signal.requested),
                     float(not weights_ok.item())], ctx)
                step_loss, step_accuracy = loss_total / global_batch, correct_total / global_batch
                episode, done = (step + 1) * global_batch, step + 1
                # fp16: an overflowing loss is the GradScaler's to handle (it skips the step)
                if bad_weights or (precision != "fp16" and not math.isfinite(step_loss)):
                    raise diverged(episode, "the weights" if bad_weights else "the loss")
                running, meters = state["running"], state["meters"]
                running[0] = 0.98 * running[0] + 0.02 * step_loss
                running[1] = 0.98 * running[1] + 0.02 * step_accuracy
                running[2] += 1
                meters[0] += step_loss
                meters[1] += step_accuracy
                meters[2] += 1
                timed_steps += 1
                bar.update(global_batch)
                if done % config.log_every == 0 or done == total_steps:
                    phases, wall = timer.pop_interval()
                    wall -= phases.get("validation", 0.0) + phases.get("checkpoint", 0.0)  # training time only
                    # loss and accuracy (%, as validation's) average the whole interval, steps before a resume
                    # included; the speed only the steps this process timed
                    log.record("train", episode, done, loss=meters[0] / meters[2],
                               accuracy=100 * meters[1] / meters[2], lr=scheduler.get_last_lr()[0],
                               episodes_per_s=timed_steps * global_batch / wall,
                               data_wait_fraction=phases.get("data", 0.0) / wall)
                    state["meters"], timed_steps = [0.0, 0.0, 0], 0
                    debias = 1 - 0.98 ** running[2]
                    bar.set_postfix(loss=f"{running[0] / debias:.3f}", acc=f"{100 * running[1] / debias:.1f}")

                stop_requested = stop_votes > 0 or (options.stop_after is not None and episode >= options.stop_after)
                validate = episode // config.val_every > (episode - global_batch) // config.val_every
                if validate or done == total_steps:
                    with timer("validation"), autocast(precision, device):
                        val = meta_test(model, val_dataset, range(config.val_episodes), device, desc="meta-val",
                                        progress=progress)
                    state["elapsed"] = time.time() - started
                    record = {"episode": episode, "train_loss": running[0] / (1 - 0.98 ** running[2]),
                              "val_accuracy": val.mean, "val_ci95": val.ci95, "seconds": state["elapsed"],
                              "lr": scheduler.get_last_lr()[0]}
                    state["history"].append(record)
                    log.record("val", episode, done, accuracy=val.mean, ci95=val.ci95)
                    if val.mean > state["best_accuracy"]:
                        state["best_accuracy"] = val.mean
                        if main:  # best.pt: the weights chosen on the meta-validation set
                            save_atomic({"model": model.state_dict(), "config": config.to_dict(), "episode": episode,
                                         "val_accuracy": val.mean}, out_dir / "best.pt")
                    message = (f"episode {episode}: loss {record['train_loss']:.3f}, "
                               f"val {config.way}-way {config.shot}-shot {val}")
                    if main:
                        tqdm.write(message) if progress else print(message, flush=True)
                if validate or done % config.checkpoint_every == 0 or done == total_steps or stop_requested:
                    state["elapsed"] = time.time() - started
                    with timer("checkpoint"):
                        save_last(done)
                    log.flush()
                if stop_requested and done < total_steps:
                    signum = stop_signal.signum
                    reason = signal.Signals(signum).name if signum else f"--stop-after {options.stop_after}"
                    stopped = {"episode": episode, "reason": reason, "signal": signum}
                    if main:
                        tqdm.write(f"tap_fast: stopped at episode {episode} ({reason}); last.pt saved, "
                                   f"continue with --resume")
                    break
        except Exception as error:
            decode_error = as_decode_error(error)
            if decode_error is None:
                raise
            # a video the index accepted fails to decode mid-run: keep the training done so far, as
            # SIGINT would. Steps up to `done` are complete (a validation the error cut short is not
            # redone on resume). Under DDP saving is a collective that the other ranks, busy
            # elsewhere, would never join: nothing is saved there.
            bar.close()
            log.close()
            if not ctx.enabled and done > start_step:
                state["elapsed"] = time.time() - started
                save_last(done)
                decode_error.saved = (out_dir / "last.pt", done * global_batch)
            raise decode_error from error
    bar.close()
    log.close()
    train_seconds = time.time() - started  # training and its validations, over every resumed part
    if options.profile and main:
        print(timer.report(done - start_step), flush=True)
    final_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if stopped is not None:
        return {"config": config.to_dict(), "history": state["history"], "stopped": stopped,
                "final_state_dict": final_state}

    # ---- test: meta-test the checkpoint chosen on the validation set ----------------------------
    distributed.barrier(ctx)  # best.pt is complete
    best = distributed.broadcast_object(load_checkpoint(out_dir / "best.pt")["model"] if main else None, ctx)
    model.load_state_dict(best)
    test_started = time.time()
    with autocast(precision, device):
        results = test_report(model, config, index, device, progress=progress)
    summary = {"config": config.to_dict(), "history": state["history"], "train_seconds": train_seconds,
               "test_seconds": time.time() - test_started, "test": {name: vars(s) for name, s in results.items()}}
    if main:
        report = format_report(results, config.head)
        print(report, flush=True)
        write_text_atomic(out_dir / "results.json", json.dumps(summary, indent=2))
        write_text_atomic(out_dir / "report.md", report + "\n")
        written = ["best.pt", "last.pt", "results.json", "report.md", "log.jsonl"]
        if config.plots:
            written += _save_plots(model, config, index, device, state["history"], out_dir)
        print(f"wrote {', '.join(written)} in {out_dir}/", flush=True)
    summary["final_state_dict"] = final_state  # the weights at the last step (not written: last.pt has them)
    return summary


def _save_plots(model, config, index, device, history, out_dir: Path) -> list[str]:
    from tap_fast.plots import plot_alignment_example, plot_training_curves
    from tap_fast.run_log import read_log

    log = out_dir / "log.jsonl"
    records = read_log(log, "train") if log.is_file() else []  # the loss at every --log-every step
    plot_training_curves(history, out_dir / "training.png", records)
    plot_alignment_example(model, config, index, device, out_dir / "alignment.png")
    return ["training.png", "alignment.png"]


def main(argv=None) -> int:
    config = None
    try:
        config, options = parse_args(argv)
        summary = train(config, options)
    except (ValueError, FileNotFoundError) as error:
        if not names_its_problem(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a first Ctrl-C in the loop stops it cleanly; this is any other one
        saved = config is not None and (Path(config.out_dir) / "last.pt").is_file()
        return report_interrupted("; last.pt holds the last checkpoint, continue with --resume" if saved else "")
    except VideoDecodeError as error:
        saved = getattr(error, "saved", None)
        kept = (f"; last.pt saved at episode {saved[1]} ({saved[0]}), continue with --resume" if saved else "")
        # the index probes headers and first frames only, so --bad-video-policy skip cannot catch this one
        print(f"error: {error}{kept}; replace or remove the video (the index is rebuilt for changed files; "
              f"--bad-video-policy skip leaves out only the videos the index finds unreadable)", file=sys.stderr)
        return 1
    stopped = summary.get("stopped")
    if stopped and stopped["signal"]:
        return 128 + stopped["signal"]  # the shell convention for "ended by this signal"
    return 0


if __name__ == "__main__":
    sys.exit(main())
