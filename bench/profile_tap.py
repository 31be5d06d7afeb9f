"""Where one fused TAP call spends its time: GPU kernels by name, and the wall time they leave idle.

    python bench/profile_tap.py --out bench/results/profile_<device>_<date>     # on a GPU
    python bench/profile_tap.py --t 4 --hidden 64 32 16 --d 32                  # CPU smoke run

For each (T, mode) the call is the benchmark's (bench/test_bench_tap.py: tap_scores, 5w5s by default,
bf16 on CUDA, gradients of every input for fwd_bwd), warmed up (autotuning, compilation), then run
under torch.profiler.  Reported per call: wall time (host included, synchronised), the summed device
time of the kernels, and idle = wall - kernels: host overhead (Python, launches, the finite-input
check's sync) that no kernel tuning removes.  On an H200 (commit 69e0fe6) the 5w5s forward took
0.97 ms at T = 4 and 1.13 ms at T = 32 while its work at T = 32 is ~0.1 ms at the measured
fraction of dense: this tells which part is host.  Also per call, without the profiler (medians):
host milliseconds from the call's start to the forward and backward kernels' launches (the GPU has
nothing long to run before the backward's, so at 5w5s T = 32 that is the host time on the critical
path), and microseconds spent inside each launch (Triton's launcher and the driver); and, for a
kernel that autotuned during the warm-up, every candidate's benchmark time and the one chosen.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import device_info, positive_int  # noqa: E402
from test_bench_tap import EPISODES, benchmark_call  # noqa: E402

from tap_fast.kernels import tap_scores, tap_triton  # noqa: E402
from tap_fast.kernels.tap_testing import PAPER_D, PAPER_HIDDEN  # noqa: E402


def _device_time_us(event) -> float:
    """Device time of a GPU-side event (kernel, memcpy, memset); 0 for CPU ops, whose "self device
    time" repeats the time of the kernels they launched."""
    if event.device_type == torch.autograd.DeviceType.CPU:
        return 0.0
    return event.self_device_time_total


@contextmanager
def timed_launches():
    """Records, for every fused-kernel launch, (kernel, host seconds when its launcher was called, seconds
    it took): Triton's own host cost per launch, and how far into a call each kernel is queued."""
    records = []
    launch = tap_triton._launch

    def timed(kernel, grid, *args, **kwargs):
        t0 = time.perf_counter()
        launch(kernel, grid, *args, **kwargs)
        records.append(("bwd" if kernel is tap_triton._tap_bwd_kernel else "fwd", t0, time.perf_counter() - t0))

    with mock.patch.object(tap_triton, "_launch", timed):
        yield records


def _launch_timing(call, calls: int) -> dict:
    """Medians over ``calls`` calls: ms from the call's start to each fused launch, us inside each launch."""
    per_call = []
    with timed_launches() as records:
        for _ in range(calls):
            records.clear()
            start = time.perf_counter()
            call()
            per_call.append({name: (t0 - start, took) for name, t0, took in records})
    out = {}
    for name in ("fwd", "bwd"):
        seen = [c[name] for c in per_call if name in c]
        if seen:
            out[f"host_ms_to_{name}_launch"] = statistics.median(a for a, _ in seen) * 1e3
            out[f"{name}_launch_us"] = statistics.median(b for _, b in seen) * 1e6
    return out


def _config_name(config) -> str:
    kw = config.all_kwargs()
    blocks = " ".join(f"{k}={kw[k]}" for k in ("BK", "BKB") if k in kw)
    return f"{blocks} warps={kw.get('num_warps')} stages={kw.get('num_stages')}"


def _fused_kernels():
    return (("fwd", tap_triton._tap_fwd_kernel), ("bwd", tap_triton._tap_bwd_kernel))


def _autotuned(before: dict) -> dict:
    """Per fused kernel that autotuned since ``before`` (its configs_timings then), each candidate's
    benchmark time (ms) and the one chosen: which K-blocks, warps and stages won, and by how much."""
    out = {}
    for name, kernel in _fused_kernels():
        timings = getattr(kernel, "configs_timings", None)
        if timings and timings is not before.get(name):
            out[name] = dict(chosen=_config_name(kernel.best_config),
                             candidates={_config_name(c): t for c, t in timings.items()})
    return out


def profile_call(q, s, t, mode, device, dtype, d, hidden, calls=5, top=12) -> dict:
    call, _ = benchmark_call(tap_scores, q, s, t, dtype, device, mode == "fwd_bwd", d, hidden)
    cuda = device.type == "cuda"

    before = {name: getattr(k, "configs_timings", None) for name, k in _fused_kernels()}
    for _ in range(3):  # autotuning and compilation happen here, not in the profile
        call()
    autotuned = _autotuned(before)
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    wall_ms = (time.perf_counter() - t0) * 1e3 / calls
    launches = _launch_timing(call, calls)  # empty on the CPU's torch path (no fused kernels)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            call()
    averages = prof.key_averages()
    kernels = sorted(((e.key, _device_time_us(e) / calls / 1e3, e.count // calls) for e in averages
                      if _device_time_us(e) > 0), key=lambda r: -r[1])
    device_ms = sum(ms for _, ms, _ in kernels)
    return dict(
        T=t, mode=mode, Q=q, S=s, wall_ms=wall_ms, device_ms=device_ms,
        idle_ms=wall_ms - device_ms if cuda else None, **launches, autotuned=autotuned,
        kernels=[dict(name=n[:90], ms=ms, per_call=c) for n, ms, c in kernels[:top]],
        table=averages.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=top),
    )


def _markdown(rows, info) -> str:
    out = [f"# Fused TAP call profile, {info.get('name', info['device'])}, commit {info['commit']}", "",
           "| T | mode | wall (ms) | kernels (ms) | idle (ms) | host ms to fwd launch | to bwd launch "
           "| us in fwd launch | in bwd launch |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(r, key, fmt):
        return "" if r.get(key) is None else format(r[key], fmt)

    for r in rows:
        out.append(f"| {r['T']} | {r['mode']} | {r['wall_ms']:.3f} | {r['device_ms']:.3f} | {cell(r, 'idle_ms', '.3f')} "
                   f"| {cell(r, 'host_ms_to_fwd_launch', '.3f')} | {cell(r, 'host_ms_to_bwd_launch', '.3f')} "
                   f"| {cell(r, 'fwd_launch_us', '.0f')} | {cell(r, 'bwd_launch_us', '.0f')} |")
    for r in rows:
        for name, tuned in r.get("autotuned", {}).items():
            out += ["", f"## T = {r['T']}, {r['mode']}: {name} kernel autotuning (chosen: {tuned['chosen']})", "",
                    "| candidate | benchmark ms |", "|---|---|"]
            out += [f"| {c} | {t if isinstance(t, (int, float)) else ' / '.join(f'{x:.4f}' for x in t)} |"
                    for c, t in tuned["candidates"].items()]
        out += ["", f"## T = {r['T']}, {r['mode']}: kernels per call", "", "| kernel | ms | launches |", "|---|---|---|"]
        out += [f"| `{k['name']}` | {k['ms']:.4f} | {k['per_call']} |" for k in r["kernels"]]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episode", default="5w5s", choices=list(EPISODES),
                    help="episode shape, query x support clips (default 5w5s)")
    ap.add_argument("--t", nargs="+", type=positive_int, default=[4, 32, 64], help="frames per clip (default 4 32 64)")
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"],
                    help="forward alone and/or forward+backward (default both)")
    ap.add_argument("--d", type=positive_int, default=PAPER_D, help=f"feature width D (default {PAPER_D})")
    ap.add_argument("--hidden", type=positive_int, nargs=3, default=list(PAPER_HIDDEN),
                    help=f"the alignment MLP's widths H1 H2 H3 (default {' '.join(map(str, PAPER_HIDDEN))})")
    ap.add_argument("--calls", type=positive_int, default=5, help="profiled calls per row (default 5)")
    ap.add_argument("--out", help="write OUT.md, OUT.json and the profiler tables in OUT.txt")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, s = EPISODES[args.episode]
    rows = []
    for t in args.t:
        for mode in args.modes:
            r = profile_call(q, s, t, mode, device, dtype, args.d, tuple(args.hidden), args.calls)
            rows.append(r)
            idle = "" if r["idle_ms"] is None else f", idle {r['idle_ms']:.3f} ms"
            to = "".join(f", {k} at {r[f'host_ms_to_{k}_launch']:.3f} ms ({r[f'{k}_launch_us']:.0f} us)"
                         for k in ("fwd", "bwd") if f"host_ms_to_{k}_launch" in r)
            print(f"T={t} {mode}: wall {r['wall_ms']:.3f} ms, kernels {r['device_ms']:.3f} ms{idle}{to}", flush=True)
    info = device_info(device)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".md").write_text(_markdown(rows, info))
        out.with_suffix(".txt").write_text("\n\n".join(f"T={r['T']} {r['mode']}\n{r['table']}" for r in rows))
        out.with_suffix(".json").write_text(json.dumps(
            dict(device=info, rows=[{k: v for k, v in r.items() if k != "table"} for r in rows]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
