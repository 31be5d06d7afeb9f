"""Host cost of one fused TAP call, measured on a CPU with the Triton kernels stubbed out.

    python bench/host_cost.py                                   # 5w5s episode, T = 4, fwd and fwd_bwd
    python bench/host_cost.py --out bench/results/host_cost_cpu_<date>

What it measures: the Python and dispatcher work of tap_scores (validation, the finite-input check,
the prelude, the launchers, the backward's plan and reductions) with every Triton launch a no-op and
widths so small that the CPU's arithmetic is negligible.  On a GPU this work runs before and between
the kernels, and a small episode waits for it: v1's 5w5s forward took 0.97 ms on an H200 at T = 4,
where its kernel has ~20 us of work.  Reported per call (the best of several batches, since this
machine is shared): microseconds in all, microseconds until the first fused launch (the GPU idles
that long at the start of a call), and the number of ATen ops issued (each GPU kernel among them
costs a launch too).  Absolute times depend on the CPU; compare commits on one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors are accepted by the fused path; nothing is interpreted

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import git_commit, positive_int, prepare_out, quiet_profiler_logs, run_cli  # noqa: E402
from memory_model import stubbed_kernels  # noqa: E402
from test_bench_tap import EPISODES  # noqa: E402

from tap_fast.kernels import tap_scores  # noqa: E402
from tap_fast.kernels.tap_testing import make_tap_inputs  # noqa: E402

quiet_profiler_logs()  # no Kineto USDT / "gpuGetDeviceCount failed" lines from the ATen-op count


def _aten_ops(call) -> int:
    """ATen ops the call issues at the top level (ops called from inside other ops not counted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    events = prof.events()
    return sum(1 for e in events if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def host_cost(q: int, s: int, t: int, backward: bool, batches: int = 15, calls: int = 50,
              d: int = 16, hidden=(16, 16, 16), sms: int = 132) -> dict:
    """Best-batch microseconds per call, microseconds to the first fused launch, ATen ops per call."""
    x, y, ws, bs = make_tap_inputs(q, s, t, t, d, hidden, seed=0, requires_grad=backward)
    params = [x, y, *ws, *bs]
    first_launch = []

    def on_launch():
        if first_launch and first_launch[-1] is None:
            first_launch[-1] = time.perf_counter()

    def call():
        first_launch.append(None)
        start = time.perf_counter()
        out = tap_scores(x, y, ws, bs, backend="triton")
        if backward:
            torch.autograd.grad(out.sum(), params)
        first_launch[-1] -= start

    with stubbed_kernels(sms, on_launch):
        for _ in range(20):  # warm-up: lazy imports, caches
            call()
        best = float("inf")
        for _ in range(batches):
            first_launch.clear()
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            best = min(best, (time.perf_counter() - t0) / calls)
        to_launch = min(first_launch)
        ops = _aten_ops(call)
    return dict(Q=q, S=s, T=t, mode="fwd_bwd" if backward else "fwd", us_per_call=best * 1e6,
                us_to_first_launch=to_launch * 1e6, aten_ops=ops)


def _table(rows) -> str:
    lines = ["| episode | T | mode | host us per call | us to first fused launch | ATen ops |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['episode']} | {r['T']} | {r['mode']} | {r['us_per_call']:.0f} | {r['us_to_first_launch']:.0f} "
              f"| {r['aten_ops']} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", nargs="+", default=["5w5s"], choices=list(EPISODES))
    ap.add_argument("--t", nargs="+", type=positive_int, default=[4])
    ap.add_argument("--batches", type=positive_int, default=15, help="batches of --calls calls; the best batch counts")
    ap.add_argument("--calls", type=positive_int, default=50)
    ap.add_argument("--out", help="write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, (".md", ".json")) if args.out else None  # before the run, not after it
    torch.set_num_threads(1)  # tiny tensors: threads only add noise
    rows = []
    for episode in args.episodes:
        q, s = EPISODES[episode]
        for t in args.t:
            for backward in (False, True):
                row = dict(episode=episode, **host_cost(q, s, t, backward, args.batches, args.calls))
                rows.append(row)
                print(f"{episode:6s} T={t:3d} {row['mode']:8s} {row['us_per_call']:7.0f} us/call "
                      f"{row['us_to_first_launch']:6.0f} us to the first launch {row['aten_ops']:4d} ATen ops", flush=True)
    if out:
        head = (f"# Fused TAP op, host cost per call with the kernels stubbed out (CPU), commit {git_commit()}\n\n"
                "Made by `bench/host_cost.py`: see its docstring for what is measured.\n\n")
        out.with_suffix(".md").write_text(head + _table(rows) + "\n")
        out.with_suffix(".json").write_text(json.dumps(dict(commit=git_commit(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
