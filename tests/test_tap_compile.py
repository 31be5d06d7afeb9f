"""The fused TAP kernels compile for a Hopper GPU (sm_90) without one.

The interpreter runs the kernels' arithmetic but not Triton's compiler: layouts, the wgmma lowering
and shared-memory budgets only show up when the kernels are compiled.  bench/compile_report.py does
that on this CPU machine (Triton's bundled ptxas), through the real launchers in compile-only mode
(tap_triton.precompile), so a change that no longer compiles, outgrows shared memory or falls off
the tensor cores fails here rather than on a lent GPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "bench" / "compile_report.py"


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return Path(get_ptxas(90).path).exists()
    except Exception:  # no CUDA backend in this Triton build
        return False


@pytest.mark.skipif(not _ptxas_available(), reason="Triton's CUDA backend (ptxas) is not installed")
def test_fused_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TAP_FAST_AUTOTUNE="0", TRITON_CACHE_DIR=str(tmp_path / "cache"))  # one config, a cold cache
    variants = ["64/broadcast", "64/rows", "128/broadcast"]  # at T = 16 (a tile holds at most T x T pairs)
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, str(REPORT), "--tq", "16", "--variants", *variants, "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert not result["failures"]
    reports = result["reports"]
    assert sorted((r["kernel"], r["variant"]) for r in reports) == sorted(
        (k, v) for k in ("fwd", "bwd") for v in variants)  # one config each
    for r in reports:
        assert not r["over_smem_limit"], r
        assert r["wgmma"] > 0 and r["mma_sync"] == 0, f"GEMMs not on Hopper's warpgroup MMA: {r}"


# CUDA's launch limits per grid axis (x, y, z); the interpreter has none, so a grid past them only fails
# on a GPU ("Triton Error [CUDA]: invalid argument").
_CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


def test_fused_launch_grids_fit_cuda_limits(monkeypatch):
    """Q * S = 65536 clip pairs (Q = S = 256, a retrieval-sized batch) used to be the forward's second grid
    axis, past CUDA's 65535: the grids are checked here with the launches stubbed out."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    from tap_fast.kernels import tap_triton

    grids = []
    monkeypatch.setattr(tap_triton, "_launch", lambda kernel, grid, *args, **kw: grids.append((kernel.base_fn.__name__,
                                                                                                grid)))
    n_q = n_s = 256
    u = torch.zeros(n_q, 1, 16, requires_grad=True)
    v = torch.zeros(n_s, 1, 16, requires_grad=True)
    cos = torch.zeros(n_q, n_s, 1, 1, requires_grad=True)
    weights = [torch.zeros(o, i, requires_grad=True) for o, i in ((8, 16), (4, 8), (1, 4))]
    biases = [torch.zeros(o, requires_grad=True) for o in (8, 4, 1)]
    scores = tap_triton.tap_pairs_triton(u, v, cos, weights, biases)
    torch.autograd.grad(scores.sum(), [u, v, cos, *weights, *biases])
    tap_triton.tap_p_triton(u.detach(), v.detach(), cos.detach(), weights, biases)
    assert len(grids) == 3
    for name, grid in grids:
        assert all(n <= most for n, most in zip(grid, _CUDA_GRID_LIMITS)), (name, grid)
