"""Fill Triton's on-disk cache with the fused TAP kernels a benchmark run will need, compiling from
many processes at once.

Autotuning compiles its candidates one after another, ~2-4 s each at the paper's widths: ~10
kernels per problem shape, ~30 shapes in bench/gpu_session.sh, minutes of a lent GPU's time.  Run
this first (it launches nothing on the GPU); the benchmarks then load every kernel from the cache.

    python bench/precompile.py --jobs 12                 # what bench/gpu_session.sh benchmarks
    python bench/precompile.py --episodes 5x25 --tq 32 --variants 64/broadcast --jobs 2

The environment (TAP_FAST_* knobs, TRITON_CACHE_DIR) and the device must be those of the later
runs: the kernels' integer arguments follow the device's SM count.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import positive_int  # noqa: E402
from compile_report import PAPER_WIDTHS, variant_env  # noqa: E402

DEFAULT_VARIANT = "64/broadcast"
DEFAULT_VARIANTS = ["128/broadcast", "64/broadcast"]  # the default forward, the default backward
SWEEP_VARIANTS = ["64/broadcast", "128/broadcast", "64/rows"]  # bench/tile_sweep.py in bench/gpu_session.sh
EPISODES = ((64, 64), (5, 25))
# In the order bench/gpu_session.sh needs them (the pool starts them in this order): the 5w5s rows,
# the large rows (both at the defaults: forward 128 rows, backward 64, tap_triton.GPU_TILE_ROWS, that
# is 128/broadcast's forward and 64/broadcast's backward; a job compiles both kernels of its
# variant), with the atomic backward (deterministic=False, the fused_atomic rows) after each shape's
# deterministic pair, then the tile sweep's third variant (64/rows, T = 64).  A job is
# (variant, Q, S, T, deterministic).
DEFAULT_JOBS = list(dict.fromkeys(
    [(v, q, s, t, det) for q, s in reversed(EPISODES) for t in (4, 8, 16, 32, 64, 128)
     for v, det in [(v, True) for v in DEFAULT_VARIANTS] + [(DEFAULT_VARIANT, False)]]
    + [(v, q, s, 64, True) for q, s in reversed(EPISODES) for v in SWEEP_VARIANTS]))


def _compile(variant: str, q: int, s: int, t: int, deterministic: bool, device: str) -> tuple[str, int, float]:
    import torch

    from tap_fast.kernels import tap_triton  # the module the benchmarks call: same kernels, same cache keys

    start = time.perf_counter()
    with variant_env(variant):
        kernels = tap_triton.precompile(q, s, t, t, tuple(PAPER_WIDTHS.values()), torch.bfloat16, device=device,
                                        deterministic=deterministic)
    kind = "" if deterministic else " atomic"
    return f"{variant}{kind} Q={q} S={s} T={t}", len(kernels), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=positive_int, default=max(1, (os.cpu_count() or 2) - 2),
                        help="compiling processes (default: the CPUs less two)")
    parser.add_argument("--episodes", nargs="+", help="QxS pairs, e.g. 5x25 64x64 (default: the benchmarks')")
    parser.add_argument("--tq", type=positive_int, nargs="+", help="clip lengths")
    parser.add_argument("--variants", nargs="+", help="TILE_ROWS/UV_LOAD pairs")
    parser.add_argument("--device", default="cuda", help="the GPU to compile for (default cuda)")
    parser.add_argument("--atomic", action="store_true", help="the atomic backward "
                        "(deterministic=False) instead of the default")
    args = parser.parse_args(argv)
    if args.episodes or args.tq or args.variants or args.atomic:
        episodes = [tuple(map(int, e.split("x"))) for e in (args.episodes or ["5x25", "64x64"])]
        jobs = [(v, q, s, t, not args.atomic) for v in (args.variants or [DEFAULT_VARIANT]) for q, s in episodes
                for t in (args.tq or [32, 64])]
    else:
        jobs = DEFAULT_JOBS
    start, failed = time.perf_counter(), 0
    # spawn: each worker gets its own CUDA context (fork after CUDA init is not allowed).
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_compile, *job, args.device) for job in jobs]
        for n, future in enumerate(as_completed(futures), start=1):
            try:
                name, count, seconds = future.result()
                print(f"[{n}/{len(jobs)}] {name}: {count} kernels in {seconds:.0f} s", flush=True)
            except Exception as exc:  # report and go on: the benchmark compiles what is missing
                failed += 1
                print(f"[{n}/{len(jobs)}] failed: {type(exc).__name__}: {exc}", flush=True)
    print(f"precompile: {len(jobs)} shapes, {failed} failed, {time.perf_counter() - start:.0f} s with {args.jobs} processes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
