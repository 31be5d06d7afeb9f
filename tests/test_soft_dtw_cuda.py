"""The CUDA soft-DTW kernels (csrc/cuda) against float64 oracles; skipped without a GPU.

Small shapes are checked against the Python reference; long ones (diagonals longer than a block,
shared memory too small so the global scratch is used) against the CPU op in float64, which
tests/test_soft_dtw.py checks against the reference.
"""
import pytest
import torch

from tap_fast.kernels import soft_dtw
from tap_fast.kernels.soft_dtw_reference import soft_dtw_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VARIANTS = ("standard", "otam")
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def _tolerance(dtype, n, m):
    """float32 rounding grows with the path length: on an H200, 1000 x 900 costs gave gradient errors
    of 3.4e-4, the same as the CPU float32 kernel's (1.8e-7 per step); allow 4e-7 per step."""
    tol = dict(TOL[dtype])
    if dtype == torch.float32:
        tol["atol"] = max(tol["atol"], 4e-7 * (n + m))
    return tol


def _compare(batch, n, m, gamma, variant, dtype, oracle, seed):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * 2  # 1 - cos range
    weights = torch.rand(batch, generator=gen, dtype=torch.float64)
    ref_in = cost.clone().requires_grad_()
    ref = oracle(ref_in, gamma, variant)
    (ref * weights).sum().backward()

    x = cost.to("cuda", dtype).requires_grad_()
    out = soft_dtw(x, gamma, variant)
    (out * weights.to("cuda", dtype)).sum().backward()
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == (batch,)
    tol = _tolerance(dtype, n, m)
    torch.testing.assert_close(out.double().cpu(), ref.detach(), **tol)
    # Gradients are expected alignments in [0, 1]: an absolute bound is the meaningful one.
    torch.testing.assert_close(x.grad.double().cpu(), ref_in.grad, **tol)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gamma", (0.01, 0.1, 1.0))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_small_shapes_match_reference(variant, gamma, dtype):
    for k, (n, m) in enumerate(((1, 1), (1, 4), (4, 1), (2, 3), (7, 5), (13, 13), (32, 29))):
        _compare(9, n, m, gamma, variant, dtype, soft_dtw_reference, seed=100 + k)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("batch,n,m", [
    (250, 32, 32),   # the benchmark's episode
    (6, 256, 250),   # one block per pair, diagonals of 250 cells
    (3, 600, 520),   # diagonals longer than the 512-thread block: a thread loops over cells
    (2, 1000, 900),  # float64 backward needs 7 x 1000 x 8 B > 48 KiB: the global-scratch path
    (4, 1, 700),
    (4, 700, 1),
])
def test_long_sequences_match_cpu_float64(variant, dtype, batch, n, m):
    _compare(batch, n, m, 0.1, variant, dtype, soft_dtw, seed=n * 1000 + m)  # float64 costs: the CPU op


def test_cuda_errors_and_edge_cases():
    cost = torch.rand(4, 6, 5, device="cuda")
    t = cost.transpose(1, 2)
    torch.testing.assert_close(soft_dtw(t, 0.1), soft_dtw(t.contiguous(), 0.1))
    assert soft_dtw(torch.zeros(0, 3, 3, device="cuda"), 0.1).shape == (0,)
    bad = cost.clone()
    bad[2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        soft_dtw(bad, 0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        soft_dtw(cost.half(), 0.1)


def test_cuda_op_under_autocast_and_compile():
    cost = torch.rand(5, 9, 7, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = soft_dtw(cost, 0.1, "otam")
    assert out.dtype == torch.float32
    compiled = torch.compile(lambda c: soft_dtw(c, 0.1, "otam"), fullgraph=True)
    torch.testing.assert_close(compiled(cost), soft_dtw(cost, 0.1, "otam"))
