"""tap_fast.kernels.soft_dtw (compiled ops) against the float64 reference."""
import math

import pytest
import torch

from tap_fast.kernels import soft_dtw
from tap_fast.kernels.soft_dtw_reference import (
    otam_cum_dist_loop, soft_dtw_reference)

VARIANTS = ("standard", "otam")
GAMMAS = (0.01, 0.1, 1.0)
SHAPES = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 5), (5, 1), (3, 7), (8, 5), (13, 13))
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def grad_tol(dtype, gamma):
    """Gradient tolerance: float32 R carries ~eps * |R| of rounding (|R| ~ N + M here), and the
    soft-min weights, exp(-(R_p - R_min) / gamma), turn it into a relative error of ~eps * |R| / gamma.
    A flat 2e-5 failed for a 13 x 13 cost at gamma 0.01 in about one run in a hundred (the inputs
    are fresh each run; e.g. PYTHONHASHSEED=245)."""
    if dtype == torch.float64:
        return TOL[dtype]
    scale = max(1.0, 0.1 / gamma)
    return {k: v * scale for k, v in TOL[dtype].items()}


def softmin(values, gamma):
    return -gamma * math.log(sum(math.exp(-v / gamma) for v in values))


def hand_standard(c, g):
    """Textbook 2-loop recursion, scalar Python, for hand-checkable cases."""
    n, m = len(c), len(c[0])
    R = [[math.inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i][j] = c[i - 1][j - 1] + softmin([R[i - 1][j - 1], R[i - 1][j], R[i][j - 1]], g)
    return R[n][m]


def test_hand_checked_small_cases():
    g = 1.0
    # 1x1: no choice, the one cost.
    assert soft_dtw(torch.tensor([[[0.7]]], dtype=torch.float64), g).item() == pytest.approx(0.7)
    # 1x2 standard: a path along the row: c00 + c01 (the other preds are +inf).
    c = torch.tensor([[[0.5, 1.25]]], dtype=torch.float64)
    assert soft_dtw(c, g).item() == pytest.approx(1.75, abs=1e-12)
    # 2x2 standard: R11 = c00, R12 = R11 + c01, R21 = R11 + c10,
    # R22 = c11 + softmin(R11, R12, R21).
    c = [[0.1, 0.4], [0.3, 0.2]]
    r22 = 0.2 + softmin([0.1, 0.5, 0.4], g)
    assert r22 == pytest.approx(hand_standard(c, g))
    out = soft_dtw(torch.tensor([c], dtype=torch.float64), g)
    assert out.item() == pytest.approx(r22, abs=1e-12)
    # otam 1xM: row 0 is a plain cumulative sum of the row (pads are 0).
    c = torch.tensor([[[0.5, 1.25, 0.25]]], dtype=torch.float64)
    assert soft_dtw(c, g, "otam").item() == pytest.approx(2.0, abs=1e-12)
    # otam 2x2, by hand from soft_dtw's docstring (padded width 4, columns 0..3):
    # row 0: [0, .1, .5, .5]; row 1: col1 = .3 + sm(0, .1, 0), col2 = .2 + sm(.1, col1),
    # col3 = 0 + sm(.5, .5, col2).
    d = [[0.1, 0.4], [0.3, 0.2]]
    col1 = 0.3 + softmin([0.0, 0.1, 0.0], g)
    col2 = 0.2 + softmin([0.1, col1], g)
    col3 = softmin([0.5, 0.5, col2], g)
    out = soft_dtw(torch.tensor([d], dtype=torch.float64), g, "otam")
    assert out.item() == pytest.approx(col3, abs=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hard_limit_is_dtw(variant):
    """As gamma -> 0 soft-DTW tends to the min-cost path: check a case with one
    clearly cheapest path."""
    c = torch.ones(1, 4, 4, dtype=torch.float64)
    c[0, range(4), range(4)] = 0.0
    out = soft_dtw(c, 0.01, variant).item()
    assert abs(out) < 0.05


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_forward_and_grad_match_reference(variant, gamma, dtype):
    seed = hash((variant, gamma, str(dtype))) % 2**31  # str hashes vary per run: fresh inputs
    gen = torch.Generator().manual_seed(seed)
    for n, m in SHAPES:
        batch = 19  # not a multiple of the CPU tile width (8 / 16 lanes)
        cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * 2  # 1 - cos range
        ref_in = cost.clone().requires_grad_()
        ref = soft_dtw_reference(ref_in, gamma, variant)
        weights = torch.rand(batch, generator=gen, dtype=torch.float64)
        (ref * weights).sum().backward()

        x = cost.to(dtype).requires_grad_()
        out = soft_dtw(x, gamma, variant)
        (out * weights.to(dtype)).sum().backward()
        assert out.dtype == dtype and out.shape == (batch,)
        torch.testing.assert_close(out.double(), ref.detach(), **TOL[dtype], msg=lambda text: f"seed {seed}: {text}")
        torch.testing.assert_close(x.grad.double(), ref_in.grad, **grad_tol(dtype, gamma),
                                   msg=lambda text: f"seed {seed}, shape {(n, m)}: {text}")


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_several_tiles_and_threads_match_reference(threads, variant, dtype):
    """Batch 150: several CPU tiles (64 / 32 lanes) with a partial last one, split over
    threads; a NaN in a tile that a worker thread runs is still reported."""
    gen = torch.Generator().manual_seed(11)
    batch, n, m = 150, 9, 13  # m = 13: 8-column transpose blocks plus a scalar tail
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * 2
    ref_in = cost.clone().requires_grad_()
    ref = soft_dtw_reference(ref_in, 0.1, variant)
    weights = torch.rand(batch, generator=gen, dtype=torch.float64)
    (ref * weights).sum().backward()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = cost.to(dtype).requires_grad_()
        out = soft_dtw(x, 0.1, variant)
        (out * weights.to(dtype)).sum().backward()
        torch.testing.assert_close(out.double(), ref.detach(), **TOL[dtype])
        torch.testing.assert_close(x.grad.double(), ref_in.grad, **TOL[dtype])
        bad = cost.to(dtype, copy=True)
        bad[batch - 3, n // 2, m // 2] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            soft_dtw(bad, 0.1, variant)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_gradcheck_float64(variant, gamma):
    gen = torch.Generator().manual_seed(7)
    for n, m in ((1, 1), (1, 3), (2, 2), (4, 3)):
        cost = (torch.rand(3, n, m, generator=gen, dtype=torch.float64) * 2).requires_grad_()
        assert torch.autograd.gradcheck(lambda c: soft_dtw(c, gamma, variant), (cost,),
                                        eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_large_costs_and_small_gamma_stay_finite(variant, dtype):
    """Costs in [0, 2] with gamma 0.01 over long sequences, and huge costs: R reaches
    thousands of gamma units; no overflow, no NaN/inf in the gradient."""
    gen = torch.Generator().manual_seed(3)
    for cost in (torch.rand(5, 96, 80, generator=gen) * 2,
                 torch.rand(5, 16, 12, generator=gen) * 1e4):
        x = cost.to(dtype).requires_grad_()
        out = soft_dtw(x, 0.01, variant)
        out.sum().backward()
        assert torch.isfinite(out).all()
        assert torch.isfinite(x.grad).all()
        # dR/dcost is an expected alignment: each entry in [0, 1].
        assert x.grad.min() >= 0 and x.grad.max() <= 1 + 1e-5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("variant", VARIANTS)
def test_path_sums_past_float32_max_are_named(variant, device):
    """Finite float32 costs near its largest value overflow along the path: this was NaN, silently."""
    with pytest.raises(ValueError, match=r"soft_dtw: the accumulated cost overflowed torch.float32 "
                                         r"\(\|cost\| up to 3e\+38, summed along a path of up to 7 cells\)"):
        soft_dtw(torch.full((2, 3, 4), 3e38, device=device), 0.1, variant)
    # the same costs in float64 are fine, and a single huge cost the path can avoid stays finite
    assert torch.isfinite(soft_dtw(torch.full((2, 3, 4), 3e38, dtype=torch.float64, device=device), 0.1, variant)).all()
    cost = torch.rand(2, 3, 4, device=device)
    cost[:, 1, 2] = 3e38
    assert torch.isfinite(soft_dtw(cost, 0.1, variant)).all()


def test_the_gpu_overflow_check_trusts_only_a_bound_that_holds():
    """On a GPU the output is looked at (a second host sync) only when the input check's largest |cost|
    does not bound every path sum; the decision, checked on CPU tensors."""
    from tap_fast.kernels.soft_dtw import _check_no_overflow

    cost, nan = torch.zeros(2, 3, 4), torch.full((2,), float("nan"))
    _check_no_overflow(cost, 0.1, nan, largest=1e30)  # 7 cells x 1e30 cannot overflow: not looked at
    with pytest.raises(ValueError, match="overflowed torch.float32 \\(\\|cost\\| up to 1e\\+38"):
        _check_no_overflow(cost, 0.1, nan, largest=1e38)  # 9 x 1e38 might: looked at
    _check_no_overflow(cost, 0.1, torch.zeros(2), largest=1e38)  # looked at, and finite


def test_large_costs_match_reference():
    cost = torch.rand(4, 10, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cost = cost * 1e5
    for variant in VARIANTS:
        ref = soft_dtw_reference(cost, 0.01, variant)
        torch.testing.assert_close(soft_dtw(cost, 0.01, variant), ref, rtol=1e-12, atol=1e-8)


def test_otam_reference_matches_public_repo_loop():
    """Our OTAM reference equals the public repositories' loop (when its unstabilised
    exp does not underflow: gamma 1, small costs)."""
    gen = torch.Generator().manual_seed(11)
    d = torch.rand(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    loop = otam_cum_dist_loop(d, lbda=1.0)
    ours = soft_dtw(d.reshape(6, 5, 4), 1.0, "otam").reshape(2, 3)
    torch.testing.assert_close(ours, loop, rtol=1e-12, atol=1e-12)


def test_noncontiguous_and_empty_batch():
    cost = torch.rand(4, 6, 5, dtype=torch.float64)
    t = cost.transpose(1, 2)  # [4, 5, 6], not contiguous
    torch.testing.assert_close(soft_dtw(t, 0.1), soft_dtw(t.contiguous(), 0.1))
    assert soft_dtw(torch.zeros(0, 3, 3), 0.1).shape == (0,)


@pytest.mark.parametrize("variant", VARIANTS)
def test_second_derivatives_raise_instead_of_being_wrong(variant):
    """A gradient penalty through soft_dtw: its backward op has no derivative of its own, which
    PyTorch would treat as a constant (a warning, then wrong values)."""
    theta = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(soft_dtw(theta ** 2, 0.1, variant).sum(), theta, create_graph=True)
    expected, = torch.autograd.grad(soft_dtw_reference(theta ** 2, 0.1, variant).sum(), theta)
    torch.testing.assert_close(grad.detach(), expected)  # the first derivative is still right
    with pytest.raises(RuntimeError, match="soft_dtw: second derivatives .* not supported"):
        torch.autograd.grad((grad ** 2).sum(), theta)


def test_meta_tensors_give_shapes():
    cost = torch.rand(2, 3, 4, device="meta", requires_grad=True)
    for variant in VARIANTS:
        out = soft_dtw(cost, 0.1, variant)
        assert out.shape == (2,) and out.is_meta
        out.sum().backward()
        assert cost.grad.shape == cost.shape


@pytest.mark.parametrize(
    "cost, gamma, variant, error, match",
    [
        (torch.rand(3, 3), 0.1, "standard", ValueError, r"\[B, N, M\]"),
        (torch.rand(2, 3, 3, 1), 0.1, "standard", ValueError, r"\[B, N, M\]"),
        (torch.rand(2, 0, 3), 0.1, "standard", ValueError, ">= 1"),
        (torch.full((2, 3, 3), float("nan")), 0.1, "standard", ValueError, "NaN"),
        (torch.tensor([[[0.0, float("inf")]]]), 0.1, "otam", ValueError, "NaN or inf"),
        (torch.rand(2, 3, 3), 0.0, "standard", ValueError, "gamma"),
        (torch.rand(2, 3, 3), -1.0, "standard", ValueError, "gamma"),
        (torch.rand(2, 3, 3), float("nan"), "standard", ValueError, "gamma"),
        (torch.rand(2, 3, 3), 0.1, "tam", ValueError, "variant"),
        (torch.rand(2, 3, 3).half(), 0.1, "standard", TypeError, "float32 or float64"),
        (torch.ones(2, 3, 3, dtype=torch.int64), 0.1, "standard", TypeError, "float32"),
        ([[[0.1]]], 0.1, "standard", TypeError, "torch.Tensor"),
        (torch.rand(2, 3, 3), 1e-39, "standard", ValueError, "out of range for torch.float32"),
        (torch.rand(2, 3, 3), 1e39, "otam", ValueError, "out of range for torch.float32"),
        (torch.rand(2, 3, 3, dtype=torch.float64), 1e-320, "standard", ValueError, "out of range for torch.float64"),
    ],
)
def test_bad_input(cost, gamma, variant, error, match):
    with pytest.raises(error, match=match):
        soft_dtw(cost, gamma, variant)


def test_ops_are_registered_and_compile():
    """Real dispatcher ops: schema visible, opcheck passes (fake kernel, autograd
    registration), and torch.compile traces through without a graph break."""
    cost = torch.rand(3, 5, 4, dtype=torch.float64, requires_grad=True)
    for variant in VARIANTS:
        torch.library.opcheck(torch.ops.tap_fast.soft_dtw_forward.default, (cost, 0.1, variant))
    compiled = torch.compile(lambda c: soft_dtw(c, 0.1, "otam"), backend="aot_eager",
                             fullgraph=True)
    torch.testing.assert_close(compiled(cost), soft_dtw(cost, 0.1, "otam"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_op_of_a_transposed_cost(variant):
    """Both directions of an alignment pass a transposed cost: the backward's fake kernel must give
    the strides the real one returns (contiguous), or inductor's stride assertion fails."""
    cost = torch.rand(3, 4, 5, dtype=torch.float64).transpose(1, 2)
    _, R = torch.ops.tap_fast.soft_dtw_forward(cost, 0.1, variant)
    torch.library.opcheck(torch.ops.tap_fast.soft_dtw_backward.default, (torch.rand(3, dtype=torch.float64), cost, R,
                                                                         0.1, variant))


# --- CUDA kernel code, checked on the host -------------------------------------------
# No GPU here: csrc/testing/wavefront_emulator.cpp compiles the CUDA wavefront kernels
# with g++ (one emulated thread per block) so their indexing, boundary handling and
# message passing are tested against the reference on every run.

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wavefront_emulator(tmp_path_factory):
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA-kernel emulator")
    exe = tmp_path_factory.mktemp("emu") / "wavefront_emulator"
    subprocess.run([cxx, "-O1", "-std=c++17", "-I", str(REPO / "csrc"), "-o", str(exe),
                    str(REPO / "csrc" / "testing" / "wavefront_emulator.cpp")], check=True)
    return exe


def run_emulator(exe, cost, grad_out, gamma, variant, dtype, smem):
    import subprocess

    batch, n, m = cost.shape
    header = f"{variant} {dtype} {int(smem)} {gamma!r} {batch} {n} {m}\n"
    body = "\n".join(repr(v) for v in cost.flatten().tolist() + grad_out.tolist())
    res = subprocess.run([str(exe)], input=header + body, capture_output=True, text=True,
                         check=True)
    vals = torch.tensor([float(v) for v in res.stdout.split()], dtype=torch.float64)
    return vals[:batch], vals[batch:].reshape(batch, n, m)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ("double", "float"))
def test_cuda_wavefront_emulated(wavefront_emulator, variant, dtype):
    gen = torch.Generator().manual_seed(17)
    tol = TOL[torch.float64 if dtype == "double" else torch.float32]
    for (n, m), gamma, smem in (((1, 1), 0.1, True), ((1, 4), 1.0, True), ((4, 1), 0.01, True),
                                ((2, 2), 0.1, False), ((7, 3), 0.01, True), ((5, 9), 1.0, False),
                                ((12, 12), 0.1, True)):
        cost = torch.rand(3, n, m, generator=gen, dtype=torch.float64) * 2
        grad_out = torch.rand(3, generator=gen, dtype=torch.float64)
        ref_in = cost.clone().requires_grad_()
        ref = soft_dtw_reference(ref_in, gamma, variant)
        (ref * grad_out).sum().backward()
        out, grad = run_emulator(wavefront_emulator, cost, grad_out, gamma, variant, dtype, smem)
        torch.testing.assert_close(out, ref.detach(), **tol)
        torch.testing.assert_close(grad, ref_in.grad, **tol)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func.jvp's own import
@pytest.mark.parametrize("mode", ["jvp", "forward_ad"])
def test_forward_mode_ad_is_refused_not_zero(mode):
    """The op has no forward-mode formula: torch.func.jvp used to return zero tangents, silently."""
    import torch.autograd.forward_ad as fwAD

    cost = torch.rand(2, 4, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="soft_dtw: forward-mode AD .* not supported"):
        if mode == "jvp":
            torch.func.jvp(lambda c: soft_dtw(c, 0.1), (cost,), (torch.ones_like(cost),))
        else:
            with fwAD.dual_level():
                soft_dtw(fwAD.make_dual(cost, torch.ones_like(cost)), 0.1)
    with fwAD.dual_level():  # a cost without a tangent is fine inside a dual level
        torch.testing.assert_close(soft_dtw(cost, 0.1), soft_dtw_reference(cost, 0.1))


@pytest.mark.parametrize("transform", ["grad", "jacrev"])
def test_torch_func_grad_is_refused_by_name(transform):
    """torch.func.grad of a cost failed with PyTorch's "autograd.Function ... must override the setup_context
    staticmethod" (the caller wrote none); vmap, and grad of something else, still work."""
    cost = torch.rand(2, 4, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="soft_dtw: torch.func grad transforms"):
        getattr(torch.func, transform)(lambda c: soft_dtw(c, 0.1).sum())(cost)
    batched = torch.func.vmap(lambda c: soft_dtw(c, 0.1, "otam"))(cost[None].expand(2, 2, 4, 3))
    torch.testing.assert_close(batched[1], soft_dtw_reference(cost, 0.1, "otam"))
    w = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(torch.func.grad(lambda v: (v * soft_dtw(cost, 0.1)).sum())(w), soft_dtw(cost, 0.1))
