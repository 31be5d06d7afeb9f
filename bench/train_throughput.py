"""Training throughput by precision: the same synthetic TAP run in bf16, fp32 (and fp16 on request).

    python bench/train_throughput.py --out bench/results/train_<device> [--episodes 1500]

Each precision trains `python -m tap_fast.train` (default preset, fused kernel on CUDA) for the same
episodes and seed in its own process. From its log.jsonl: episodes/s of each logging interval after
the first (which holds cuDNN / Triton autotuning and the decoder cache filling), their median, and
the fraction of step time spent waiting for data; from results.json the meta-test accuracies.
Writes <out>.json and <out>.md (device, date, commit).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import device_info, int_at_least, positive_int  # noqa: E402


def run_one(precision: str, args, workdir: Path) -> dict:
    out_dir = workdir / precision
    cmd = [sys.executable, "-m", "tap_fast.train", "--precision", precision, "--episodes", str(args.episodes),
           "--val-every", str(args.episodes), "--val-episodes", "100", "--test-episodes", str(args.test_episodes),
           "--workers", str(args.workers), "--log-every", str(args.log_every), "--out-dir", str(out_dir),
           "--no-progress", "--no-plots"]  # no --profile: its device syncs would slow the steps
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{precision} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    steady = train[1:] or train
    results = json.loads((out_dir / "results.json").read_text())
    return {
        "precision": precision,
        "episodes_per_s_median": statistics.median(r["episodes_per_s"] for r in steady),
        "episodes_per_s_intervals": [round(r["episodes_per_s"], 2) for r in train],
        "data_wait_fraction": statistics.mean(r["data_wait_fraction"] for r in steady),
        "wall_s": wall,
        "train_seconds": results["train_seconds"],
        "test": {k: {"mean": v["mean"], "ci95": v["ci95"]} for k, v in results["test"].items()},
    }


def write_report(out: Path, info: dict, episodes: int, runs: list[dict]) -> None:
    summary = {"device": info, "date": time.strftime("%Y-%m-%d"), "episodes": episodes, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Training throughput, synthetic preset, TAP head ({episodes} episodes)", "",
             f"{info['name']}, torch {info['torch']}, triton {info['triton']}, commit {info['commit']}, "
             f"{summary['date']}", "",
             "| precision | episodes/s (median) | data wait | 5w1s acc | 5w5s acc | wall s |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        acc = [f"{v['mean']:.2f} ± {v['ci95']:.2f}" for v in r["test"].values()]
        acc += [""] * (2 - len(acc))
        lines.append(f"| {r['precision']} | {r['episodes_per_s_median']:.1f} | {100 * r['data_wait_fraction']:.0f}% "
                     f"| {acc[0]} | {acc[1]} | {r['wall_s']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output path without extension")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"],
                    help="one training run each (default bf16 fp32)")
    ap.add_argument("--episodes", type=positive_int, default=1500, help="training episodes per run (default 1500)")
    ap.add_argument("--test-episodes", type=positive_int, default=300, help="meta-test episodes per setting (default 300)")
    ap.add_argument("--log-every", type=positive_int, default=100,
                    help="optimizer steps per logging interval, one speed sample each (default 100)")
    ap.add_argument("--workers", type=int_at_least(0), default=4, help="data loading processes (default 4)")
    args = ap.parse_args(argv)

    info = device_info()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            run = run_one(precision, args, Path(tmp))
            runs.append(run)
            print(f"{precision}: {run['episodes_per_s_median']:.1f} episodes/s "
                  f"(data wait {100 * run['data_wait_fraction']:.0f}%), {run['wall_s']:.0f} s", flush=True)
            write_report(Path(args.out), info, args.episodes, runs)  # after each run: a cut-off keeps it
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
