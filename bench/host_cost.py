"""Host cost of one fused TAP call, measured on a CPU with the Triton kernels stubbed out.

    python bench/host_cost.py                                   # 5w5s episode, T = 4, fwd and fwd_bwd
    python bench/host_cost.py --out bench/results/host_cost_cpu_<date>

What it measures: the Python and dispatcher work of tap_scores (validation, the finite-input check,
the prelude, the launchers, the backward's plan and reductions) with every Triton launch a no-op and
widths so small that the CPU's arithmetic is negligible.  On a GPU this work runs before and between
the kernels, and a small episode waits for it: v1's 5w5s forward took 0.97 ms on an H200 at T = 4,
where its kernel has ~20 us of work.  Reported per call, in bf16 as the benchmark runs (the best of
several batches, since this machine is shared): microseconds in all; microseconds until the first
fused launch (the GPU idles that long at the start of a call) and until the backward kernel's launch
(at 5w5s T >= 32 the backward kernel outlasts the host work queued behind it, so this is the host
time on the critical path of a forward+backward); the number of ATen ops issued, and how many of
them would each launch a kernel on CUDA (each launch costs host time there beyond what is measured
here: the H200 session's profile put the whole 5w5s T = 4 forward+backward at ~2.6 ms of host time).
The prelude's fp32-output GEMMs run as one launch each, as on CUDA (the CPU path upcasts first).
Absolute times depend on the CPU; compare commits on one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors are accepted by the fused path; nothing is interpreted

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import git_commit, positive_int, prepare_out, quiet_profiler_logs, run_cli  # noqa: E402
from memory_model import _mm_wide_as_on_cuda, stubbed_kernels  # noqa: E402
from test_bench_tap import EPISODES  # noqa: E402

from tap_fast.kernels import tap_prelude as prelude  # noqa: E402
from tap_fast.kernels import tap_scores  # noqa: E402
from tap_fast.kernels.tap_testing import make_tap_inputs  # noqa: E402

quiet_profiler_logs()  # no Kineto USDT / "gpuGetDeviceCount failed" lines from the ATen-op count


# Ops that launch no device kernel on CUDA: views, allocations without a fill, dtype queries, the
# host side of a sync.  An op that copies (to, contiguous, reshape of a non-view) shows its copy as a
# child op, which is counted instead.
_NO_KERNEL = frozenset("aten::" + name for name in (
    "view", "reshape", "_reshape_alias", "_unsafe_view", "t", "transpose", "permute", "slice", "select", "narrow",
    "split", "expand", "as_strided", "alias", "detach", "unsqueeze", "squeeze", "empty", "empty_strided",
    "empty_like", "new_empty", "zeros", "new_zeros", "promote_types", "result_type", "is_nonzero", "item",
    "_local_scalar_dense", "to", "contiguous", "matmul", "lift_fresh", "resolve_conj", "resolve_neg"))


def _ops(call) -> tuple[int, int]:
    """(ATen ops the call issues at the top level, of them or their children the ops that would each
    launch a kernel on CUDA).  Each costs host time on a GPU machine beyond the Python measured here."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]

    def under(e, pred) -> bool:
        p = e.cpu_parent
        while p is not None:
            if pred(p):
                return True
            p = p.cpu_parent
        return False

    def launches(e) -> bool:
        return e.name.startswith("aten::") and e.name not in _NO_KERNEL

    top = sum(1 for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    kernels = sum(1 for e in aten if launches(e) and not under(e, launches))
    return top, kernels


def _mm_wide_one_launch(a, b):
    """Stands in for the prelude's GEMM with an fp32 output, which on CUDA is one kernel (torch.mm
    out_dtype); the CPU path would upcast both operands first (two more ops a GPU never runs).  The
    memory model's stand-in allocates what CUDA's does; the fill makes it count as the one launch."""
    return _mm_wide_as_on_cuda(a, b).zero_()


def host_cost(q: int, s: int, t: int, backward: bool, batches: int = 15, calls: int = 50,
              d: int = 16, hidden=(16, 16, 16), sms: int = 132, dtype=torch.bfloat16) -> dict:
    """Best-batch microseconds per call, microseconds to the first fused launch and to the backward's
    launch (the minimum over calls), ATen ops and CUDA kernel launches per call; in the benchmark's dtype."""
    x, y, ws, bs = make_tap_inputs(q, s, t, t, d, hidden, dtype=dtype, seed=0, requires_grad=backward)
    params = [x, y, *ws, *bs]
    launched = []  # per call: [start, first launch, second launch]

    def on_launch():
        launched[-1].append(time.perf_counter())

    def call():
        launched.append([time.perf_counter()])
        out = tap_scores(x, y, ws, bs, backend="triton")
        if backward:
            torch.autograd.grad(out.sum(), params)

    with stubbed_kernels(sms, on_launch), mock.patch.object(prelude, "_mm_wide", _mm_wide_one_launch):
        for _ in range(20):  # warm-up: lazy imports, caches
            call()
        best = float("inf")
        launched.clear()  # over every timed call, so the fastest batch's calls are among them
        for _ in range(batches):
            t0 = time.perf_counter()
            for _ in range(calls):
                call()
            best = min(best, (time.perf_counter() - t0) / calls)
        to_launch = [min(c[k] - c[0] for c in launched) for k in range(1, len(launched[0]))]
        ops, kernels = _ops(call)
    return dict(Q=q, S=s, T=t, mode="fwd_bwd" if backward else "fwd", dtype=str(dtype).replace("torch.", ""),
                us_per_call=best * 1e6, us_to_first_launch=to_launch[0] * 1e6,
                us_to_bwd_launch=to_launch[1] * 1e6 if backward else None, aten_ops=ops, kernel_launches=kernels)


def _table(rows) -> str:
    lines = ["| episode | T | mode | host us per call | us to first fused launch | us to backward launch | ATen ops "
             "| kernel launches on CUDA |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bwd = "" if r["us_to_bwd_launch"] is None else f"{r['us_to_bwd_launch']:.0f}"
        lines.append(f"| {r['episode']} | {r['T']} | {r['mode']} | {r['us_per_call']:.0f} | {r['us_to_first_launch']:.0f} "
                     f"| {bwd} | {r['aten_ops']} | {r['kernel_launches']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", nargs="+", default=["5w5s"], choices=list(EPISODES),
                    help="episode shapes, query x support clips (default 5w5s)")
    ap.add_argument("--t", nargs="+", type=positive_int, default=[4], help="frames per clip (default 4)")
    ap.add_argument("--batches", type=positive_int, default=15, help="batches of --calls calls; the best batch counts")
    ap.add_argument("--calls", type=positive_int, default=50, help="calls per batch (default 50)")
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
                bwd = "" if row["us_to_bwd_launch"] is None else f", {row['us_to_bwd_launch']:.0f} to the backward's"
                print(f"{episode:6s} T={t:3d} {row['mode']:8s} {row['us_per_call']:7.0f} us/call, "
                      f"{row['us_to_first_launch']:.0f} us to the first launch{bwd}, {row['aten_ops']} ATen ops, "
                      f"{row['kernel_launches']} kernel launches", flush=True)
    if out:
        head = (f"# Fused TAP op, host cost per call with the kernels stubbed out (CPU), commit {git_commit()}\n\n"
                "Made by `bench/host_cost.py`: see its docstring for what is measured.\n\n")
        out.with_suffix(".md").write_text(head + _table(rows) + "\n")
        out.with_suffix(".json").write_text(json.dumps(dict(commit=git_commit(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
