"""Label new videos with a trained model and a few labelled examples of each class.

    python -m tap_fast.predict --checkpoint runs/tap-synthetic/best.pt --support my_actions/ --query clips/

--support is a folder of labelled examples in either dataset layout, <class>/<video>.mp4 or
<class>/<video>/<frame>.jpg: two or more classes, one or more videos each (the shots; classes may
have different numbers). The classes need not be ones the model was trained on: that is what
few-shot means. --query names video files, frame folders, or folders holding them.

Each query gets the class with the highest score, the mean similarity of the query to that
class's support videos (as in training and meta-testing); the probabilities are the softmax of
those scores, the distribution the training loss fitted. Clips are sampled as meta-testing
samples them: segment centres, centre crop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tap_fast.atomic_write import write_text_atomic
from tap_fast.data.decode import PyAVDecoder
from tap_fast.data.formats import (BadVideoError, entry_kind, frame_files, is_video_file, probe_frame_folder,
                                   probe_video, visible_entries)
from tap_fast.data.frame_folder_decode import FrameFolderDecoder
from tap_fast.data.index import VideoRecord
from tap_fast.data.sampling import tsn_frame_indices
from tap_fast.data.transforms import ClipTransform
from tap_fast.evaluate import VideoFeatureCache, add_run_options, open_checkpoint, run_reporting_errors


@dataclass(frozen=True)
class Prediction:
    query: str
    predicted: str
    probabilities: dict[str, float]  # class -> softmax of the class scores, classes sorted by name


class EvalClips:
    """eval_clip(record) for videos and frame folders alike, sampled as meta-testing samples them."""

    def __init__(self, config):
        self.frames = config.frames
        self.transform = ClipTransform(resize=config.resize, crop=config.crop, train=False)
        self._video_decoder, self._folder_decoder = PyAVDecoder(), FrameFolderDecoder()

    def eval_clip(self, record: VideoRecord) -> torch.Tensor:
        decoder = self._folder_decoder if Path(record.path).is_dir() else self._video_decoder
        indices = tsn_frame_indices(record.num_frames, self.frames, train=False)
        return self.transform(decoder.decode(record.path, indices), None)


def support_records(root, min_frames: int, progress: bool = False) -> list[VideoRecord]:
    """The labelled examples under root/<class>/ (video files and frame folders alike), class by
    class; BadVideoError naming every unusable or too-short one, ValueError for a class folder
    without examples or fewer than two classes. Nothing is written to root."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--support {root} is not a directory (expected <class>/<video> inside)")
    try:
        entries = visible_entries(root)
    except OSError as e:  # unreadable (permissions): one line, as the dataset root's
        raise ValueError(f"--support {root} cannot be listed ({e.strerror or e})") from e
    examples, empty, records, problems = [], [], [], []
    for class_dir in (p for p in entries if p.is_dir()):
        try:
            videos = videos_in(class_dir)
        except OSError as e:  # reported with the unusable videos, by path
            problems.append((str(class_dir), f"unreadable class folder ({e.strerror or e})"))
            continue
        empty += [] if videos else [class_dir.name]
        examples += [(class_dir.name, path) for path in videos]
    if empty:  # a class left out silently would still be "predicted" among the others
        raise ValueError(f"--support {root}: no video files or frame folders in class folder(s) {', '.join(empty)}")
    if not examples and not problems:
        raise ValueError(f"--support {root} holds no class folders: expected {root}/<class>/<video>.mp4 "
                         f"or {root}/<class>/<video>/<frame>.jpg")
    for class_name, path in _probing(examples, "support", progress):
        frames, problem = _probe(path, min_frames)
        if problem:
            problems.append((str(path), problem))
        else:
            records.append(VideoRecord(path, class_name, "test", frames))
    if problems:
        raise BadVideoError(problems, hint="\n(fix or remove them from the support folder)")
    classes = sorted({r.class_name for r in records})
    if len(classes) < 2:
        raise ValueError(f"--support {root} holds {len(classes)} class ({', '.join(classes)}); "
                         f"a prediction needs at least two classes to choose among")
    return records


def _probing(items: list, desc: str, progress: bool):
    """items, with a bar while they are probed (from 50 videos: a folder of clips takes a while)."""
    return tqdm(items, desc=desc, unit="video", leave=False, dynamic_ncols=True, disable=not progress or len(items) < 50)


def query_records(paths, min_frames: int, progress: bool = False) -> list[VideoRecord]:
    """Every video a --query argument names: a video file, a frame folder, or a folder holding
    video files or frame folders (one level; loose images beside them are not a video);
    BadVideoError naming every unusable or too-short one."""
    found: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--query {path}: no such file or folder")
        try:
            inside = [] if path.is_file() else videos_in(path)
        except OSError as e:
            raise ValueError(f"--query {path}: unreadable folder ({e.strerror or e})") from e
        if path.is_file():
            if not is_video_file(path.name):
                raise ValueError(f"--query {path}: not a video file (extensions: mp4, webm, avi, mkv, ...)")
            found.append(path)
        elif inside:
            found += inside
        elif frame_files(path):
            found.append(path)
        else:
            raise ValueError(f"--query {path}: holds no video files and no frame folders (folders are "
                             f"read one level deep: name its subfolders, e.g. {path}/*)")
    records, problems = [], []
    unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in found))  # a video named twice is labelled once
    for path in _probing(unique, "query", progress):
        frames, problem = _probe(path, min_frames)
        if problem:
            problems.append((str(path), problem))
        else:
            records.append(VideoRecord(path, "query", "test", frames))
    if problems:
        raise BadVideoError(problems)
    return records


def videos_in(folder: Path) -> list[Path]:
    """The video files and frame folders directly inside folder, by name. Broken symbolic links
    (as the dataset index reads them: formats.entry_kind) and subfolders that cannot be listed are
    kept, for the probe to report them: dropped, they would go missing silently."""
    return [p for p in visible_entries(folder) if _is_video_entry(p)]


def _is_video_entry(p: Path) -> bool:
    kind = entry_kind(p)
    if kind != "folder" or not p.exists():
        return kind is not None
    try:
        return bool(frame_files(p))
    except OSError:
        return True


def _probe(path: Path, min_frames: int) -> tuple[int, str | None]:
    frames, _, problem = probe_frame_folder(path) if path.is_dir() else probe_video(path)
    return int(frames), problem or _too_short(frames, min_frames)


def _too_short(frames: int, min_frames: int) -> str | None:
    # as in the dataset index: TSN sampling would otherwise repeat frames the model never saw repeated
    return f"too short ({frames} frames, the model samples {min_frames})" if frames < min_frames else None


@torch.no_grad()
def class_scores(model, clips: EvalClips, support: list[VideoRecord], query: list[VideoRecord], device,
                 progress: bool = False) -> tuple[list[str], torch.Tensor]:
    """(classes, scores [len(query), len(classes)]): a class's score is the query's mean similarity
    to that class's support videos, so classes may have different numbers of shots."""
    was_training = model.training
    model.eval()
    features = VideoFeatureCache(model, clips, device, progress=progress)
    similarity = model.head(features(query), features(support)).float()  # [NQ, NS]
    model.train(was_training)
    classes = sorted({r.class_name for r in support})
    column_class = torch.tensor([classes.index(r.class_name) for r in support], device=similarity.device)
    totals = similarity.new_zeros(len(query), len(classes)).index_add_(1, column_class, similarity)
    shots = torch.bincount(column_class, minlength=len(classes)).to(similarity.dtype)
    return classes, totals / shots


def predict(model, config, support_root, query_paths, device, progress: bool = False) -> list[Prediction]:
    """One Prediction per query video (in the order given, folders expanded by name)."""
    support = support_records(support_root, config.frames, progress=progress)
    query = query_records(query_paths, config.frames, progress=progress)
    labelled = {r.path.resolve(): r.class_name for r in support}
    for record in query:
        if record.path.resolve() in labelled:  # allowed (a sanity check), but its score is no test
            print(f"predict: query {record.path} is also a support example of {labelled[record.path.resolve()]} "
                  f"(it is compared with itself)", file=sys.stderr)
    classes, scores = class_scores(model, EvalClips(config), support, query, device, progress=progress)
    probabilities = scores.softmax(-1).cpu()
    return [Prediction(str(record.path), classes[int(row.argmax())],
                       {name: float(p) for name, p in zip(classes, row)})
            for record, row in zip(query, probabilities)]


def format_predictions(predictions: list[Prediction]) -> str:
    """A markdown table: each query, its class and probability, and the runner-up."""
    lines = ["| query | predicted | probability | runner-up |", "|---|---|---|---|"]
    for p in predictions:
        ranked = sorted(p.probabilities.items(), key=lambda kv: -kv[1])
        runner_up = f"{ranked[1][0]} ({ranked[1][1]:.3f})"
        lines.append(f"| {p.query} | {p.predicted} | {p.probabilities[p.predicted]:.3f} | {runner_up} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tap_fast.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by tap_fast.train (best.pt)")
    parser.add_argument("--support", required=True, help="folder of labelled examples: <class>/<video>")
    parser.add_argument("--query", required=True, nargs="+",
                        help="video files, frame folders, or folders holding them")
    add_run_options(parser, json_help="also write every class's probability per query to this JSON file")
    args = parser.parse_args(argv)

    def work():
        model, config, device = open_checkpoint(args)
        return predict(model, config, args.support, args.query, device, progress=not args.no_progress)

    predictions, code = run_reporting_errors(work)
    if code:
        return code
    print(format_predictions(predictions))
    if args.json:
        write_text_atomic(args.json, json.dumps(
            {"checkpoint": os.path.abspath(args.checkpoint), "support": os.path.abspath(args.support),
             "predictions": [vars(p) for p in predictions]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
