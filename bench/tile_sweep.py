"""Tile sweep for the fused TAP kernels on a GPU: GEMM rows per tile (64, 128) x how the K-loop
reads U and V (broadcast of the tile's distinct rows, or one load per pair row).

    python bench/tile_sweep.py --out bench/results/tile_sweep_<device>.json

Neither is autotuned: the tile height (BM = BI * BJ frame pairs) fixes the partial-sum buffers'
shapes, and the U/V read is a design choice to settle once; TAP_FAST_TILE_ROWS and TAP_FAST_UV_LOAD
override them per call. For each variant: forward and forward+backward time (CUDA events, after
autotuning) at the paper's widths, bf16, and the relative difference of scores and input gradients
against the first variant (the default, checked against float64 in bench/test_bench_tap.py).
Then forward+backward of the first variant with other splits of the SMs between the backward's two
passes (TAP_FAST_BWD_COST_RATIO, see tap_triton.plan_backward).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import device_info, env_vars, matmul_tflops, positive_int, time_cuda_adaptive  # noqa: E402
from compile_report import variant_env, variant_name  # noqa: E402
from test_bench_tap import useful_flops  # noqa: E402

from tap_fast.kernels import tap_scores  # noqa: E402
from tap_fast.kernels.tap_testing import PAPER_D, PAPER_HIDDEN, make_tap_inputs, rel_err  # noqa: E402


def measure(q, s, t, rows, uv_load, dense, modes=("fwd", "fwd_bwd")):
    x, y, ws, bs = make_tap_inputs(q, s, t, t, PAPER_D, PAPER_HIDDEN, dtype=torch.bfloat16, device="cuda",
                                   seed=t, requires_grad=True)

    def fwd():
        return tap_scores(x, y, ws, bs)

    def fwd_bwd():
        out = fwd()
        return out, torch.autograd.grad(out.sum(), [x, y])

    row = {"Q": q, "S": s, "T": t, "rows": rows, "uv_load": uv_load}
    for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        if mode not in modes:
            continue
        ms, _ = time_cuda_adaptive(fn, budget_ms=800)
        tflops = useful_flops(q, s, t, backward=mode == "fwd_bwd") / (ms * 1e-3) / 1e12
        row[mode] = {"time_ms": ms, "tflops": tflops, "pct_of_dense": 100 * tflops / dense}
    out, (gx, gy) = fwd_bwd()
    return row, [out.detach(), gx, gy]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the JSON file to write (rewritten after every row)")
    ap.add_argument("--variants", nargs="+", type=variant_name,
                    default=["64/broadcast", "64/rows", "128/broadcast", "128/rows"],
                    help="ROWS/UV_LOAD pairs; the first is the reference for rel_diff_vs_first")
    ap.add_argument("--T", type=positive_int, nargs="+", default=[32, 64], help="frames per clip (default 32 64)")
    ap.add_argument("--bwd-cost-ratios", type=float, nargs="*", default=[1.25, 2.0],
                    help="forward+backward of the first variant again with these TAP_FAST_BWD_COST_RATIO values "
                         "(how plan_backward splits the SMs between the passes; default 1.5)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tile_sweep: needs a CUDA GPU", file=sys.stderr)
        return 2
    dense = matmul_tflops("cuda")
    rows_out = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every row: a stage cut off by its time cap keeps what it measured
        result = {"device": device_info("cuda"), "date": time.strftime("%Y-%m-%d"), "dense_tflops": dense,
                  "rows": rows_out}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)

    for q, s in ((64, 64), (5, 25)):
        for t in args.T:
            baseline = None
            for variant in args.variants:
                rows, uv_load = variant.split("/")
                with variant_env(variant):
                    row, outs = measure(q, s, t, int(rows), uv_load, dense)
                if baseline is None:
                    baseline = outs
                else:
                    row["rel_diff_vs_first"] = max(rel_err(a, b) for a, b in zip(outs, baseline))
                rows_out.append(row)
                save()
                print(json.dumps(row), flush=True)
            for ratio in args.bwd_cost_ratios:
                rows, uv_load = args.variants[0].split("/")
                with variant_env(args.variants[0]), env_vars(TAP_FAST_BWD_COST_RATIO=str(ratio)):
                    row, _ = measure(q, s, t, int(rows), uv_load, dense, modes=("fwd_bwd",))
                row["bwd_cost_ratio"] = ratio
                rows_out.append(row)
                save()
                print(json.dumps(row), flush=True)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
