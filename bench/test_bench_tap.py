"""TAP head benchmarks: fused kernels vs the materialising reference (eager and torch.compile).

    pytest bench/test_bench_tap.py --benchmark-only --benchmark-json out.json
    python bench/report.py out.json --out bench/results/<name>

Rows: T in 4..128 at paper widths (D = 2048, MLP 4096 -> 1024 -> 256 -> 64 -> 1), a 5-way 5-shot
episode (Q = 5 queries, S = 25 supports) and a large batch (Q = S = 64); forward and forward+backward.
extra_info per row: time_ms (CUDA events after warm-up on GPU, perf_counter on CPU), peak_mem_mib
(CUDA only), tflops = useful FLOPs / time (split first layer: 2(Q Tq + S Ts) D H1 + per pair
2(H1 H2 + H2 H3 + H3 + D); x3 with backward) and pct_of_dense = tflops / the measured bf16 matmul rate.
On a CPU-only machine only the cheap rows run (5w5s, T <= 8, no torch.compile); the rest are skipped
with a reason.  "fused" is tap_scores with backend="auto": Triton on CUDA, the chunked torch path on CPU;
"fused_atomic" the same with deterministic=False (the one-pass backward with atomic dU / dV adds; fwd_bwd
rows only, its forward is "fused"'s).
On CUDA every fused fwd_bwd row of the episode size with T <= 32 is also checked against the float64
reference on the same inputs (scores and every gradient; extra_info rel_err), so the autotuned
kernels are verified at the paper's widths.  Each torch.compile row is a fresh compilation (tens of
seconds): on a short GPU lease select rows with -k, as bench/gpu_session.sh does.
test_tap_scores_without_host_overhead: 5w5s fwd+bwd at T = 32 and 64 with both sides in CUDA graphs
(the fused op captured whole, with either backward, the reference under torch.compile(mode="reduce-overhead")).
"""
from __future__ import annotations

import pytest
import torch

from bench_utils import peak_memory_bytes, time_cuda_adaptive
from tap_fast.kernels import tap_scores
from tap_fast.kernels.tap_reference import tap_scores_reference
from tap_fast.kernels.tap_testing import PAPER_D, PAPER_HIDDEN, lowp_tolerance, make_tap_inputs, rel_err

T_VALUES = [4, 8, 16, 32, 64, 128]
EPISODES = {"5w5s": (5, 25), "large": (64, 64)}
IMPLS = ["fused", "fused_atomic", "eager_ref", "compiled_ref"]
MODES = ["fwd", "fwd_bwd"]
CPU_MAX_T = 8
CHECK_MAX_T = 32  # float64 check of the fused rows (episode size) up to this T
BF16_TOL = 2e-2

_compiled_reference = None


def useful_flops(q: int, s: int, t: int, d: int = PAPER_D, hidden=PAPER_HIDDEN, backward: bool = False) -> float:
    h1, h2, h3 = hidden
    prelude = 2 * (q + s) * t * d * h1
    per_pair = 2 * (h1 * h2 + h2 * h3 + h3 + d)
    fwd = prelude + q * s * t * t * per_pair
    return 3 * fwd if backward else fwd


def _reference_bytes(q, s, t, itemsize, backward):
    # The reference materialises concat pairs [.., 2D] and every activation; backward keeps them all.
    per_pair = (2 * PAPER_D + 2 * sum(PAPER_HIDDEN)) * itemsize
    return q * s * t * t * per_pair * (2 if backward else 1)


def _skip_reason(device, impl, episode, t, mode, dtype):
    q, s = EPISODES[episode]
    if impl == "fused_atomic" and mode == "fwd":
        return "the forward does not depend on deterministic (fused_atomic differs in the backward only)"
    if device.type != "cuda":
        if episode != "5w5s" or t > CPU_MAX_T:
            return f"CPU run: only 5w5s with T <= {CPU_MAX_T} (GPU rows need CUDA)"
        if impl == "compiled_ref":
            return "CPU run: torch.compile of the reference skipped (compile time dominates on CPU)"
        return None
    if impl != "fused":
        need = _reference_bytes(q, s, t, torch.finfo(dtype).bits // 8, mode == "fwd_bwd")
        have = torch.cuda.get_device_properties(device).total_memory
        if need > 0.7 * have:
            return f"reference would materialise ~{need / 2**30:.0f} GiB (> 70% of {have / 2**30:.0f} GiB)"
    return None


def _fused_atomic(x, y, weights, biases):
    return tap_scores(x, y, weights, biases, deterministic=False)


def _impl_fn(impl):
    global _compiled_reference
    if impl == "fused":
        return tap_scores
    if impl == "fused_atomic":
        return _fused_atomic
    if impl == "eager_ref":
        return tap_scores_reference
    if _compiled_reference is None:
        # One specialised graph per row (dynamic=False): raise the recompile cap (8 by default) so
        # the later rows are compiled too rather than silently falling back to eager.
        import torch._dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        _compiled_reference = torch.compile(tap_scores_reference, dynamic=False)
    return _compiled_reference


def benchmark_call(fn, q, s, t, dtype, device, backward: bool, d=PAPER_D, hidden=PAPER_HIDDEN):
    """(call, params): call() runs fn on fresh inputs (seeded by t) and, when backward, the gradients of
    every input; on CUDA it synchronises, so a timed call includes the GPU work."""
    x, y, ws, bs = make_tap_inputs(q, s, t, t, d, hidden, dtype=dtype, device=device, seed=t, requires_grad=backward)
    params = [x, y, *ws, *bs]

    def call():
        out = fn(x, y, ws, bs)
        if backward:
            torch.autograd.grad(out.sum(), params)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return call, params


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("episode", list(EPISODES))
def test_tap_scores(benchmark, bench_device, bench_device_info, dense_tflops, episode, T, impl, mode):
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    reason = _skip_reason(bench_device, impl, episode, T, mode, dtype)
    if reason:
        pytest.skip(reason)
    q, s = EPISODES[episode]
    backward = mode == "fwd_bwd"
    fn = _impl_fn(impl)
    cuda = bench_device.type == "cuda"
    call, params = benchmark_call(fn, q, s, T, dtype, bench_device, backward)

    benchmark.group = f"tap {episode} {mode}"
    benchmark.extra_info.update(
        impl=impl, mode=mode, episode=episode, T=T, Q=q, S=s, dtype=str(dtype).replace("torch.", ""),
        device=bench_device_info["name"], commit=bench_device_info["commit"], dense_tflops=dense_tflops,
        knobs=bench_device_info["knobs"],
    )
    if cuda:
        ms, iters = time_cuda_adaptive(call)  # CUDA events; its warm-up call autotunes / compiles
        peak = peak_memory_bytes(call, bench_device)
        benchmark.pedantic(call, rounds=3, warmup_rounds=0, iterations=1)
        benchmark.extra_info["timed_calls"] = iters
        if impl.startswith("fused") and backward and episode == "5w5s" and T <= CHECK_MAX_T:
            _check_against_float64(params, fn, benchmark.extra_info)
    else:  # CPU: synchronous, so the benchmark's own wall-clock stats are the timing (kept short)
        peak = None
        benchmark.pedantic(call, rounds=2, warmup_rounds=1, iterations=1)
        ms = benchmark.stats.stats.mean * 1e3
    tflops = useful_flops(q, s, T, backward=backward) / (ms * 1e-3) / 1e12
    benchmark.extra_info.update(
        time_ms=ms, tflops=tflops, pct_of_dense=100 * tflops / dense_tflops,
        peak_mem_mib=None if peak is None else peak / 2**20,
    )


GRAPHED_T = [32, 64]


def graphed_fwd_bwd(fn, params):
    """fn's forward and the gradients of every input captured in one CUDA graph (static inputs): the
    returned call replays it, so a timing holds no host work (Python, dispatch, launches)."""
    def step():
        out = fn(params[0], params[1], params[2:6], params[6:])
        return torch.autograd.grad(out.sum(), params)

    side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graph requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # autotuning, compilation, the allocator's first blocks
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def call():
        graph.replay()
        torch.cuda.synchronize()

    return call


@pytest.mark.parametrize("impl", ["fused_graphed", "fused_atomic_graphed", "compiled_ref_cudagraphs"])
@pytest.mark.parametrize("T", GRAPHED_T)
def test_tap_scores_without_host_overhead(benchmark, bench_device, bench_device_info, dense_tflops, T, impl):
    """5w5s fwd+bwd with the host's work taken out on both sides: the fused op captured in a CUDA
    graph against torch.compile(mode="reduce-overhead") of the reference (CUDA graphs too). At
    5w5s T = 32 host work is about half of an eager fused call (bench/KERNEL_NOTES.md)."""
    if bench_device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA GPU")
    q, s = EPISODES["5w5s"]
    x, y, ws, bs = make_tap_inputs(q, s, T, T, PAPER_D, PAPER_HIDDEN, dtype=torch.bfloat16, device=bench_device,
                                   seed=T, requires_grad=True)
    params = [x, y, *ws, *bs]
    if impl in ("fused_graphed", "fused_atomic_graphed"):
        call = graphed_fwd_bwd(tap_scores if impl == "fused_graphed" else _fused_atomic, params)
    else:
        compiled = torch.compile(tap_scores_reference, mode="reduce-overhead", dynamic=False)

        def call():
            out = compiled(x, y, ws, bs)
            torch.autograd.grad(out.sum(), params)
            torch.cuda.synchronize()

        for _ in range(3):  # compile, then record the graphs (cudagraph trees record on a later call)
            call()
    ms, iters = time_cuda_adaptive(call)
    benchmark.pedantic(call, rounds=3, warmup_rounds=0, iterations=1)
    tflops = useful_flops(q, s, T, backward=True) / (ms * 1e-3) / 1e12
    benchmark.group = "tap 5w5s fwd_bwd, CUDA graphs"
    benchmark.extra_info.update(
        impl=impl, mode="fwd_bwd", episode="5w5s", T=T, Q=q, S=s, dtype="bfloat16", time_ms=ms, timed_calls=iters,
        tflops=tflops, pct_of_dense=100 * tflops / dense_tflops, device=bench_device_info["name"],
        commit=bench_device_info["commit"], dense_tflops=dense_tflops, knobs=bench_device_info["knobs"])


def _check_against_float64(params, fn, info: dict) -> None:
    """Scores and every gradient against the float64 reference: each relative error within
    max(2e-2, twice the error eager bf16 PyTorch makes on the same inputs); recorded in ``info``."""
    cot = torch.randn(params[0].shape[0], params[1].shape[0], dtype=torch.float64, device=params[0].device)

    def outputs(f, ps):
        out = f(ps[0], ps[1], ps[2:6], ps[6:])
        return [out, *torch.autograd.grad(out, ps, cot.to(out.dtype))]

    got = outputs(fn, params)
    eager = outputs(tap_scores_reference, params)
    want = outputs(tap_scores_reference, [p.detach().double().requires_grad_() for p in params])
    errors = [rel_err(a, b) for a, b in zip(got, want)]
    bounds = [lowp_tolerance(e, b, BF16_TOL) for e, b in zip(eager, want)]
    info.update(rel_err=max(errors), rel_err_margin=min(b / max(e, 1e-30) for e, b in zip(errors, bounds)))
    bad = [(i, f"{e:.2e} > {b:.2e}") for i, (e, b) in enumerate(zip(errors, bounds)) if e > b]
    assert not bad, f"fused kernel vs float64 (output index, error > bound): {bad}"
