"""A run's metrics on disk: <out_dir>/log.jsonl (one JSON object a line) and TensorBoard scalars.

Written by rank 0 only (`enabled`). On resume, records after the checkpoint (written by the run
that died after it) are dropped from the JSON log and purged from TensorBoard, so the files read
as one uninterrupted run. TensorBoard: `tensorboard --logdir <out_dir>/tensorboard`.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tap_fast.atomic_write import write_text_atomic


class RunLog:
    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_episode: int | None = None,
                 resumed_log: str | Path | None = None):
        """resumed_log: the resumed run's log.jsonl when that run is in another folder (default: this
        one's), whose records up to resume_episode start this log and this folder's TensorBoard."""
        self.enabled = enabled
        self.path = Path(out_dir) / "log.jsonl"
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept, source = [], Path(resumed_log) if resumed_log is not None else self.path
        if resume_episode is not None and source.is_file():
            for line in source.read_text().splitlines():
                try:
                    if json.loads(line)["episode"] <= resume_episode:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    break  # a line torn by the crash: nothing after it is trustworthy
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))  # a crash keeps the old log
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the JSON log still has everything
            print("tap_fast: tensorboard is not installed (pip install tensorboard); "
                  "writing log.jsonl only", file=sys.stderr, flush=True)
        else:
            self._writer = SummaryWriter(str(Path(out_dir) / "tensorboard"),
                                         purge_step=resume_episode + 1 if resume_episode is not None else None)
            if source != self.path:  # resumed from another folder: its curves start this one's too
                for line in kept:
                    record = json.loads(line)
                    self._add_scalars(record.pop("kind"), record.pop("episode"),
                                      {k: v for k, v in record.items() if k != "step"})

    def _add_scalars(self, kind: str, episode: int, values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"{kind}/{name}", value, global_step=episode)

    def record(self, kind: str, episode: int, step: int, **values) -> None:
        """One record: kind "train" | "val" | ..., x-axis = episodes seen."""
        if not self.enabled:
            return
        record = {"kind": kind, "episode": episode, "step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            self._add_scalars(kind, episode, values)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_log(path: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a log.jsonl, optionally only those of one kind."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
