"""Meta-test a trained model: accuracy over N-way K-shot episodes, mean and 95% CI.

    python -m tap_fast.evaluate --checkpoint runs/tap-synthetic/best.pt
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tap_fast.atomic_write import write_text_atomic
from tap_fast.checkpoint import load_checkpoint, load_weights
from tap_fast.config import CHOICES, TrainConfig
from tap_fast.data.build import episode_dataset, load_index
from tap_fast.data.decode import as_decode_error
from tap_fast.interrupt import report_interrupted
from tap_fast.models import build_model
from tap_fast.stats import AccuracySummary, summarize_accuracies

# separate seed streams so validation and test episodes never coincide with training ones
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 1_000_003, 2_000_003


def pick_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N as a torch.device; a ValueError when it is no device or not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta...: the kernels and decoders have no such path
        raise ValueError(f"--device {name}: tap_fast runs on cpu or cuda devices only (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available (torch.cuda.is_available() is False); "
                             f"use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_episodes_fit(config: TrainConfig, index, split: str, shots, hint: str = "") -> None:
    """A ValueError now when the split cannot make config.way-way episodes for every shot in shots
    (too few classes, or a class with fewer than shot + query videos): cheap, no decoding."""
    from tap_fast.data.sampling import EpisodeSampler

    for shot in shots:
        try:
            EpisodeSampler(index, split, way=config.way, shot=shot, query=config.query)
        except ValueError as error:
            raise ValueError(f"{config.way}-way {shot}-shot episodes with {config.query} query video(s) per class "
                             f"do not fit the {split} split: {error}" + (f" ({hint})" if hint else "")) from None


class VideoFeatureCache:
    """Backbone features per video for evaluation.

    An evaluation clip is deterministic (segment centres, centre crop), so each video goes through
    the backbone once however many episodes it appears in: 1,000 test episodes cost about as
    much as one pass over the split's videos plus the (cheap) heads.
    """

    def __init__(self, model, dataset, device, progress: bool = False):
        self.model, self.dataset, self.device, self.progress = model, dataset, device, progress
        self._features: dict = {}

    def __call__(self, records) -> torch.Tensor:
        missing = [r for r in dict.fromkeys(records) if r.path not in self._features]
        starts = range(0, len(missing), 32)  # bounded batches of videos through the backbone
        for start in tqdm(starts, desc="features", unit="batch", leave=False, dynamic_ncols=True,
                          disable=not self.progress or len(starts) < 2):
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
    try:
        config = TrainConfig.from_dict(checkpoint["config"])
    except ValueError as error:  # "unknown config keys" alone would not say which file holds them
        raise ValueError(f"{path}: its saved config is not one this tap_fast reads (another project's "
                         f"checkpoint, or a newer tap_fast's?): {error}") from None
    model = build_model(config.replace(backbone_weights=None))  # the checkpoint holds every weight
    load_weights(model, checkpoint, path)
    return model.to(device), config


def add_run_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    """--device, --json and --no-progress: the options evaluate and predict share."""
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda | cuda:N")
    parser.add_argument("--json", help=json_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


def open_checkpoint(args) -> tuple[torch.nn.Module, TrainConfig, torch.device]:
    """(model, config, device) for args.checkpoint on args.device; a --json path that could not be
    written fails first, not after the work."""
    device = pick_device(args.device)
    if args.json:
        check_json_path(args.json)
        if Path(args.json).resolve() == Path(args.checkpoint).resolve():  # the results would replace the weights
            raise ValueError(f"--json {args.json} is the checkpoint itself; name another file")
    model, config = model_from_checkpoint(args.checkpoint, device)
    return model, config, device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tap_fast.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by tap_fast.train")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="whose classes the episodes draw from (default test; val: the model-selection split)")
    parser.add_argument("--shots", type=_positive_int, nargs="+",
                        help="K values to test (default: the run's test_shots)")
    parser.add_argument("--way", type=_at_least_two, help="classes per episode (default: the run's way)")
    parser.add_argument("--episodes", type=_positive_int,
                        help="episodes per setting (default: the run's test_episodes)")
    parser.add_argument("--data-root", help="override the dataset location stored in the checkpoint")
    parser.add_argument("--split-dir", help="split lists to use (default: the run's --split-dir if it had one, "
                                            "else <data root>/splits when present, else the 64/12/24 class split)")
    parser.add_argument("--bad-video-policy", choices=CHOICES["bad_video_policy"],
                        help="fail on unusable videos, or skip them (default: the run's)")
    parser.add_argument("--decoder", choices=CHOICES["decoder"],
                        help="video/frame decoder (default: the run's; auto picks by GPU and codec)")
    add_run_options(parser, json_help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.shots and len(set(args.shots)) < len(args.shots):  # the same test run twice, reported once
        parser.error(f"--shots names a K more than once ({' '.join(map(str, args.shots))}); give each once")

    def work():
        model, config, device = open_checkpoint(args)
        if args.way:  # the heads score any number of classes: a 5-way model can be tested 10-way
            config = config.replace(way=args.way)
        if not args.data_root and config.dataset_format != "synthetic" and not Path(config.data_root).is_dir():
            raise ValueError(f"the run's dataset root {config.data_root} is not there (moved, or another machine); "
                             "name where the data is with --data-root")
        if args.data_root:
            # the checkpoint's data must already be there: for a synthetic set a mistyped path
            # would otherwise quietly generate a whole new dataset in it
            if not Path(args.data_root).is_dir():
                raise ValueError(f"--data-root {args.data_root} is not a directory")
            if config.dataset_format == "synthetic":
                check_synthetic_copy(config, args.data_root)
            config = config.replace(data_root=os.path.abspath(args.data_root))
            if config.split_dir and not args.split_dir:  # say so: they may list another dataset's classes
                print(f"evaluate: using the run's split lists {config.split_dir} (--split-dir to use others)",
                      file=sys.stderr)
        if args.split_dir:
            if not Path(args.split_dir).is_dir():
                raise ValueError(f"--split-dir {args.split_dir} is not a directory")
            config = config.replace(split_dir=os.path.abspath(args.split_dir))
        if args.bad_video_policy:
            config = config.replace(bad_video_policy=args.bad_video_policy)
        if args.decoder:
            config = config.replace(decoder=args.decoder)
        elif config.decoder != "auto":  # say so: a run forced to dali-gpu met a machine without a GPU
            print(f"evaluate: using the run's decoder {config.decoder} (--decoder to choose another)",
                  file=sys.stderr)
        # an index cache that cannot go beside a read-only root goes beside the checkpoint, not into
        # the training run's out_dir (which may have moved, or be relative to another directory)
        config = config.replace(out_dir=str(Path(args.checkpoint).resolve().parent))
        index = load_index(config, progress=not args.no_progress)
        check_episodes_fit(config, index, args.split, args.shots or config.test_shots)
        return config, test_report(model, config, index, device, args.split, args.shots, args.episodes,
                                   progress=not args.no_progress)

    outcome, code = run_reporting_errors(work)
    if code:
        return code
    config, results = outcome
    print(f"meta-test on the {args.split} split, {args.checkpoint}:")  # a val table looks like a test one
    print(format_report(results, config.head))
    if args.json:  # what was measured, with what: results alone would not tell a val run from a test run
        write_text_atomic(args.json, json.dumps(
            {"checkpoint": os.path.abspath(args.checkpoint), "head": config.head, "split": args.split,
             "results": {k: vars(v) for k, v in results.items()}}, indent=2))
    return 0


def run_reporting_errors(work):
    """(work(), 0), or (None, exit code) after a one-line error: 2 for a bad input (ValueError,
    FileNotFoundError), 1 for a video that cannot be decoded, 130 for Ctrl-C; anything else propagates."""
    try:
        return work(), 0
    except KeyboardInterrupt:
        return None, report_interrupted()
    except (ValueError, FileNotFoundError) as error:
        if not names_its_problem(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return None, 2
    except Exception as error:
        decode_error = as_decode_error(error)
        if decode_error is None:
            raise
        print(f"error: {decode_error}; replace or remove the video", file=sys.stderr)
        return None, 1


def names_its_problem(error: Exception) -> bool:
    """Whether error's one line tells the user what to fix: not an OS FileNotFoundError without a
    path (raised inside a library: "[Errno 2] No such file or directory" alone says nothing, its
    traceback says where)."""
    return not (isinstance(error, FileNotFoundError) and error.errno is not None and error.filename is None)


def check_json_path(path: str) -> None:
    """A ValueError now when --json could not be written later (missing or read-only folder)."""
    folder = Path(path).parent
    if folder.exists() and not folder.is_dir():  # "does not exist" would send the user looking for it
        raise ValueError(f"--json {path}: {folder} is a file, not a directory")
    if not folder.is_dir():
        raise ValueError(f"--json {path}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--json {path}: the directory {folder} is not writable")
    if Path(path).is_dir():
        raise ValueError(f"--json {path} is a directory; name a file in it")


def check_synthetic_copy(config: TrainConfig, root: str) -> None:
    """A ValueError unless root holds the run's synthetic set: load_index would generate a new one
    there (2,000 videos written into, say, the user's own dataset) and report on it as if on root."""
    from tap_fast.data.build import synthetic_set_dir

    expected = synthetic_set_dir(config.replace(data_root=root))
    if not (expected / "manifest.json").is_file():
        raise ValueError(f"--data-root {root} holds no {expected.name}/, the synthetic set this run was trained "
                         f"and is tested on (evaluate does not generate it there); to label other videos with "
                         f"this model, use python -m tap_fast.predict")


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
    return value


def _at_least_two(text: str) -> int:  # a 1-way episode has nothing to choose between
    return _positive_int(text, least=2)


if __name__ == "__main__":
    sys.exit(main())
