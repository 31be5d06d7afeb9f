"""Predict the fused TAP op's peak GPU memory on a machine without a GPU.

    python bench/memory_model.py                          # 5w5s and large, T = 4..128, 132 SMs (H100/H200)
    python bench/memory_model.py --sms 132 --t 32 64 --out bench/results/memory_model_<date>

What it predicts: the number bench/test_bench_tap.py records as peak_mem_mib for impl=fused, i.e.
torch.cuda.max_memory_allocated above the level before one call of tap_scores (and, for fwd_bwd,
torch.autograd.grad of every input), in bf16 at the paper's widths.

How: the same call runs on CPU tensors with the Triton launches replaced by no-ops, and the CPU
allocations are summed in the order the profiler saw them.  Every buffer the fused path allocates
has a size fixed by the shapes and the SM count (the persistent backward's per-program slots), and
the kernels themselves allocate nothing, so the CPU sequence is the GPU's, but for two PyTorch ops
whose CPU fallbacks make fp32 copies that their CUDA versions do not (the prelude's wide-output
GEMMs, the finite-input check's torch._foreach_norm): stand-ins that allocate what the CUDA ops
allocate replace them (_mm_wide_as_on_cuda, _foreach_norm_as_on_cuda).  Checked against the H200
session (commit 69e0fe6): the model at that commit gives 42.2 / 45.7 / 164.5 / 310.4 / 337.6 MiB for
5w5s T = 4 / 8 / 16 / 32 / 64; measured 42.19 / 45.67 / 164.5 / 310.4 / 338.2 MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

# The fused backend accepts CPU tensors only under the interpreter; nothing is interpreted here (the
# launches are no-ops), but the tiles must be the GPU's (tap_triton.GPU_TILE_ROWS) unless the caller
# set TAP_FAST_TILE_ROWS[_FWD|_BWD].
os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from tap_fast.kernels import tap_scores, tap_triton  # noqa: E402
from tap_fast.kernels.tap_testing import PAPER_D, PAPER_HIDDEN, make_tap_inputs  # noqa: E402

try:
    from tap_fast.kernels import tap_prelude as prelude  # noqa: E402
except ImportError:
    prelude = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import git_commit, positive_int, prepare_out, quiet_profiler_logs, run_cli  # noqa: E402
from test_bench_tap import EPISODES  # noqa: E402

quiet_profiler_logs()  # no Kineto USDT / "gpuGetDeviceCount failed" lines per profiled call on a CPU
for _kernel, _rows in tap_triton.GPU_TILE_ROWS.items():  # the tiles are read per call: set before any
    if not os.environ.get("TAP_FAST_TILE_ROWS"):
        os.environ.setdefault(f"TAP_FAST_TILE_ROWS_{_kernel.upper()}", str(_rows))

MIB = 2**20
FOREACH_CHUNK = 65536  # elements per chunk of ATen's multi-tensor kernels (kChunkSize, MultiTensorApply.cuh)


class _NoLaunch:
    """Stands in for an autotuned kernel: kernel[grid](*args) does nothing (``on_launch`` is called,
    when given: bench/host_cost.py times the host path up to the launches)."""

    def __init__(self, on_launch=None):
        self.on_launch = on_launch or (lambda: None)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.on_launch()


@contextmanager
def stubbed_kernels(sms: int, on_launch=None):
    """The fused op with its Triton launches replaced by no-ops, as on a GPU with ``sms``
    multiprocessors (the persistent backward's work split depends on it)."""
    with ExitStack() as stack:
        for name in ("_tap_fwd_kernel", "_tap_bwd_kernel"):
            if hasattr(tap_triton, name):
                stack.enter_context(mock.patch.object(tap_triton, name, _NoLaunch(on_launch)))
        stack.enter_context(mock.patch.object(tap_triton, "_sm_count", lambda device: sms))
        yield


def _mm_wide_as_on_cuda(a, b):
    """What tap_prelude._mm_wide allocates on CUDA: only its fp32 result (values are not needed)."""
    return torch.empty(a.shape[0], b.shape[1], dtype=prelude.wide_dtype(a.dtype))


def _foreach_norm_as_on_cuda(tensors, ord=2, dtype=None):
    """What torch._foreach_norm allocates on CUDA, standing in for the CPU op in the modelled call.

    The finite-input check (kernels/tap_checks.py) takes the L1 norm of every input, weight and bias
    with torch._foreach_norm(..., dtype=float32).  On CPU tensors that op falls back to one
    linalg.vector_norm per tensor, which upcasts each bf16 tensor first: W1 (1024 x 4096 at the paper's
    widths) becomes a 16 MiB fp32 copy, which would set the forward's modelled peak at small T.  On
    CUDA the multi-tensor kernel (foreach_tensor_norm_cuda's fast path: one dtype, one device, L1)
    reads bf16 and writes fp32 norms, allocating only a zeroed per-chunk scratch (tensors x the
    largest tensor's chunks, opmath dtype), a 320-element zeroed global buffer, one 0-dim result per
    tensor and a 0-dim global norm; the scratch and global buffers go when it returns.  Those are
    allocated here.  The norms are zeros, so the check passes: the model's inputs are finite."""
    out_dtype = dtype or tensors[0].dtype
    opmath = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    chunks = max(-(-t.numel() // FOREACH_CHUNK) for t in tensors)
    scratch = torch.zeros(len(tensors) * chunks, dtype=opmath)
    global_out = torch.zeros(320, dtype=opmath)
    norms = [torch.zeros((), dtype=out_dtype) for _ in tensors]
    global_norm = torch.empty((), dtype=out_dtype)
    del scratch, global_out, global_norm
    return norms


def _allocation_peak(events) -> int:
    """Largest running sum of the profiler's allocation (+) and free (-) records, in time order."""
    level = peak = 0
    for ev in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        level += ev.nbytes()
        peak = max(peak, level)
    return peak


def fused_peak_bytes(q: int, s: int, t: int, sms: int, backward: bool, d: int = PAPER_D,
                     hidden=PAPER_HIDDEN, dtype=torch.bfloat16) -> int:
    """Predicted peak (bytes above the starting level) of one fused call at these sizes on a GPU with
    ``sms`` multiprocessors."""
    x, y, ws, bs = make_tap_inputs(q, s, t, t, d, hidden, dtype=dtype, seed=0, requires_grad=backward)
    params = [x, y, *ws, *bs]
    with ExitStack() as stack:
        stack.enter_context(stubbed_kernels(sms))
        # On CUDA the prelude's low-precision GEMMs write fp32 directly (torch.mm out_dtype); the CPU
        # fallback would add upcast copies of X, Y and W1 that a GPU never makes.
        if prelude is not None:  # (older commits upcast on every device: nothing to patch)
            stack.enter_context(mock.patch.object(prelude, "_mm_wide", _mm_wide_as_on_cuda))
        # Likewise the finite-input check's multi-tensor norm: CUDA's kernel makes no fp32 copies.
        stack.enter_context(mock.patch.object(torch, "_foreach_norm", _foreach_norm_as_on_cuda))
        prof = stack.enter_context(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                          profile_memory=True))
        out = tap_scores(x, y, ws, bs, backend="triton")
        if backward:
            torch.autograd.grad(out.sum(), params)  # as the benchmark's call: the grads are dropped
        del out
    return _allocation_peak(prof.profiler.kineto_results.events())


def _table(rows) -> str:
    lines = ["| episode | T | mode | predicted peak (MiB) |", "|---|---|---|---|"]
    lines += [f"| {r['episode']} | {r['T']} | {r['mode']} | {r['peak_mib']:.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sms", type=positive_int, default=132,
                    help="multiprocessors of the GPU modelled (H100 SXM, H200: 132)")
    ap.add_argument("--episodes", nargs="+", default=list(EPISODES), choices=list(EPISODES),
                    help="episode shapes, query x support clips (default all)")
    ap.add_argument("--t", nargs="+", type=positive_int, default=[4, 8, 16, 32, 64, 128],
                    help="frames per clip (default 4 8 16 32 64 128)")
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"],
                    help="forward alone and/or forward+backward (default both)")
    ap.add_argument("--out", help="write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    out = prepare_out(args.out, (".md", ".json")) if args.out else None  # before the run, not after it
    rows = []
    for episode in args.episodes:
        q, s = EPISODES[episode]
        for t in args.t:
            for mode in args.modes:
                peak = fused_peak_bytes(q, s, t, args.sms, backward=mode == "fwd_bwd")
                rows.append(dict(episode=episode, T=t, mode=mode, peak_mib=peak / MIB))
                print(f"{episode:6s} T={t:4d} {mode:8s} {peak / MIB:9.1f} MiB", flush=True)
    if out:
        head = (f"# Fused TAP op, predicted peak memory (bf16, paper widths, {args.sms} SMs), commit {git_commit()}\n\n"
                "Made by `bench/memory_model.py` on a CPU (no GPU): see its docstring for the method and its check "
                "against a measured H200 run.\n\n")
        out.with_suffix(".md").write_text(head + _table(rows) + "\n")
        out.with_suffix(".json").write_text(json.dumps(dict(sms=args.sms, commit=git_commit(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
