"""TAP vs TAM (OTAM) as T grows: one episode's similarity step, scores and gradients.

    pytest bench/test_bench_tap_vs_tam.py --benchmark-only --benchmark-json tvt.json
    python bench/report.py tvt.json --out bench/results/tap_vs_tam_<device> --x T

Episode: 5-way 5-shot, 1 query per class (Q = 5, S = 25), frame features D = 2048, T frames.
The step maps (query features, support features) -> [Q, S] scores and back-propagates to the
features (and, for TAP, the MLP weights):
  tap         tap_scores (fused kernel; MLP 4096 -> 1024 -> 256 -> 64 -> 1, cosine-weighted sum)
  otam_ours   1 - cos, soft_dtw(..., 0.1, "otam") in both directions (our compiled op)
  otam_loop   the same OTAM written as the public few-shot repositories do (Python loops over
              cells, soft_dtw_reference.otam_distance_loop)
TAP's cost grows as Q S T^2 x 0.56 MFLOP (MLP per frame pair); OTAM's as Q S T^2 cheap DP cells
plus a sequential T + T wavefront, so the plot shows where each dominates.
On a CPU-only machine the rows are capped in T (see CPU_MAX_T); the skip reason says so.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench_utils import time_cuda_adaptive
from tap_fast.kernels import soft_dtw, tap_scores
from tap_fast.kernels.soft_dtw_reference import otam_distance_loop
from tap_fast.kernels.tap_testing import PAPER_D, PAPER_HIDDEN, make_tap_inputs

Q, S = 5, 25
GAMMA = 0.1
T_VALUES = [4, 8, 16, 32, 64, 128]
IMPLS = ["tap", "otam_ours", "otam_loop"]
CPU_MAX_T = {"tap": 16, "otam_ours": 128, "otam_loop": 32}
GPU_MAX_T = {"tap": 128, "otam_ours": 128, "otam_loop": 32}  # the loop launches ~T^2 kernels per call


def frame_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[Q, T, D], [S, T, D] -> [Q, S, T, T] cosine of every frame pair."""
    return torch.einsum("qid,sjd->qsij", F.normalize(x, dim=-1), F.normalize(y, dim=-1))


def otam_scores_ours(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-(OTAM distance query->support + support->query), as the OTAM head scores pairs."""
    dist = 1 - frame_cosine(x, y)
    q, s, t, u = dist.shape
    fwd = soft_dtw(dist.reshape(q * s, t, u), GAMMA, "otam")
    bwd = soft_dtw(dist.transpose(-1, -2).reshape(q * s, u, t), GAMMA, "otam")
    return -(fwd + bwd).reshape(q, s)


def otam_scores_loop(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -otam_distance_loop(frame_cosine(x, y), GAMMA)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", T_VALUES)
def test_similarity_step(benchmark, bench_device, bench_device_info, T, impl):
    cuda = bench_device.type == "cuda"
    limit = (GPU_MAX_T if cuda else CPU_MAX_T)[impl]
    if T > limit:
        pytest.skip(f"{impl} on {bench_device.type}: T <= {limit} (time per call grows past minutes)")
    dtype = torch.bfloat16 if cuda and impl == "tap" else torch.float32
    x, y, ws, bs = make_tap_inputs(Q, S, T, T, PAPER_D, PAPER_HIDDEN, dtype=dtype,
                                   device=bench_device, seed=T, requires_grad=True)
    if impl == "tap":
        params = [x, y, *ws, *bs]
        step = lambda: tap_scores(x, y, ws, bs)  # noqa: E731
    else:
        params = [x, y]
        step = (lambda: otam_scores_ours(x, y)) if impl == "otam_ours" else (lambda: otam_scores_loop(x, y))

    def call():
        scores = step()
        torch.autograd.grad(scores.sum(), params)
        if cuda:
            torch.cuda.synchronize()

    benchmark.group = f"similarity step 5w5s ({bench_device.type})"
    benchmark.extra_info.update(impl=impl, T=T, Q=Q, S=S, dtype=str(dtype).replace("torch.", ""),
                                device=bench_device_info["name"], commit=bench_device_info["commit"])
    if cuda:
        ms, iters = time_cuda_adaptive(call)
        benchmark.extra_info["timed_calls"] = iters
        benchmark.pedantic(call, rounds=3, warmup_rounds=0, iterations=1)
    else:
        benchmark.pedantic(call, rounds=2, warmup_rounds=1, iterations=1)
        ms = benchmark.stats.stats.mean * 1e3
    benchmark.extra_info.update(time_ms=ms)
