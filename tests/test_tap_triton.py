"""Fused Triton TAP kernels vs the float64 reference: forward, every gradient, write coverage.

On a CPU-only machine tests/conftest.py sets TRITON_INTERPRET=1, so the same kernels run in the
Triton interpreter on CPU tensors (tiny shapes: programs run one by one).  With CUDA they run compiled.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from tap_fast.kernels import tap_alignment, tap_scores  # noqa: E402
from tap_fast.kernels import tap_triton  # noqa: E402
from tap_fast.kernels.tap_reference import tap_alignment_reference, tap_scores_reference  # noqa: E402
from tap_fast.kernels.tap_testing import lowp_tolerance, make_tap_inputs, rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

# fp32 error bound: tensor cores in tf32 mode round operands to 10 mantissa bits.
FP32_TOL = 3e-3 if DEVICE == "cuda" and torch.backends.cuda.matmul.allow_tf32 else 1e-3
DTYPES = [(torch.float32, FP32_TOL), (torch.float16, 2e-2)]
if DEVICE == "cuda":
    DTYPES.append((torch.bfloat16, 2e-2))

SHAPES = [  # (Q, S, Tq, Ts, D, (H1, H2, H3)): odd T, Tq != Ts, widths not multiples of the blocks
    (2, 3, 5, 7, 12, (20, 10, 6)),
    (1, 1, 1, 1, 3, (5, 3, 2)),
    (3, 2, 3, 6, 7, (33, 17, 16)),
    (1, 2, 9, 2, 4, (16, 40, 1)),
    (2, 2, 4, 3, 8, (32, 16, 8)),  # widths the blocks divide: the kernels drop their bound checks
]


def _run_all(dtype, shape, seed):
    """(grads of ours, grads of eager same-dtype reference, grads of float64 reference) + the 3 outputs."""
    x, y, ws, bs = make_tap_inputs(*shape[:5], shape[5], dtype=dtype, device=DEVICE, seed=seed, requires_grad=True)
    params = [x, y, *ws, *bs]
    exact = [t.detach().double().requires_grad_() for t in params]
    cot = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    outs, grads = [], []
    for fn, ps in (
        (lambda p: tap_scores(p[0], p[1], p[2:6], p[6:], backend="triton"), params),
        (lambda p: tap_scores_reference(p[0], p[1], p[2:6], p[6:]), params),
        (lambda p: tap_scores_reference(p[0], p[1], p[2:6], p[6:]), exact),
    ):
        out = fn(ps)
        outs.append(out)
        grads.append(torch.autograd.grad(out, ps, cot.to(out.dtype).to(out.device)))
    return outs, grads


def _check_forward_and_all_grads(dtype, tol, shape):
    (got, eager, want), (g_got, g_eager, g_want) = _run_all(dtype, shape, seed=sum(shape[:5]))
    assert got.dtype == dtype and got.shape == want.shape
    assert rel_err(got, want) <= lowp_tolerance(eager, want, tol) if dtype != torch.float32 else rel_err(got, want) <= tol
    names = ["x", "y", "W1", "W2", "W3", "W4", "b1", "b2", "b3", "b4"]
    for name, g, e, w in zip(names, g_got, g_eager, g_want):
        assert torch.isfinite(g).all(), name
        bound = tol if dtype == torch.float32 else lowp_tolerance(e, w, tol)
        assert rel_err(g, w) <= bound, f"grad {name}: {rel_err(g, w):.2e} > {bound:.2e}"


def _SHAPE_ID(shape) -> str:
    return "x".join(map(str, shape[:5])) + "-" + "_".join(map(str, shape[5]))


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=_SHAPE_ID)
def test_fused_forward_and_all_grads_match_float64(dtype, tol, shape):
    _check_forward_and_all_grads(dtype, tol, shape)


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=_SHAPE_ID)
def test_backward_v_in_registers_matches_float64(monkeypatch, dtype, tol, shape):
    """TAP_FAST_BWD_V=regs (the OWN_V pass forms dz1 per tile from dz2 held in registers, one dV
    read-modify-write per K-block, no phase B): the same checks as the default."""
    monkeypatch.setenv("TAP_FAST_BWD_V", "regs")
    _check_forward_and_all_grads(dtype, tol, shape)


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", SHAPES, ids=_SHAPE_ID)
def test_atomic_backward_matches_float64(monkeypatch, dtype, tol, shape):
    """deterministic=False (here through TAP_FAST_DETERMINISTIC=0, as a training script would set it):
    one backward pass adding dU and dV with atomics; the same checks as the default."""
    monkeypatch.setenv("TAP_FAST_DETERMINISTIC", "0")
    _check_forward_and_all_grads(dtype, tol, shape)


def _pair_operands(q, s, tq, ts, h1, h2, h3):
    """Random U [q, tq, h1], V [s, ts, h1] and layers 2..4 (W2, b2, W3, b3, W4, b4) for the kernels'
    own entry points (tap_triton._forward / _backward)."""
    u, v = torch.randn(q, tq, h1, device=DEVICE), torch.randn(s, ts, h1, device=DEVICE)
    layers = [torch.randn(*shape, device=DEVICE) for shape in ((h2, h1), (h2,), (h3, h2), (h3,), (1, h3), (1,))]
    return u, v, layers


def _float64_pairs(u, v, cos, layers, grad_scores=None):
    """(scores, gradients of every input) of the chunked torch path in float64 on the CPU: the oracle
    for the kernels' entry points; grad_scores None means the gradient of scores.sum()."""
    from tap_fast.kernels.tap_torch import tap_pairs_torch

    ref_in = [t.double().cpu().requires_grad_() for t in (u, v, cos, *layers)]
    out = tap_pairs_torch(ref_in[0], ref_in[1], ref_in[2], ref_in[3::2], ref_in[4::2])
    cot = torch.ones_like(out) if grad_scores is None else grad_scores.double().cpu()
    return out, torch.autograd.grad(out, ref_in, cot)


@pytest.mark.parametrize("bwd_v", ["scratch", "regs"])
@pytest.mark.parametrize("groups_u,groups_v,nprog,chunk",
                         [(1, 1, 1, 1), (2, 3, 2, 2), (3, 2, 5, 3), (1, 2, 2, 64), (None, None, None, None)])
def test_backward_work_split_is_exact(monkeypatch, groups_u, groups_v, nprog, chunk, bwd_v):
    """Every split of the backward (s-groups, q-groups, persistent programs, tiles per phase-B chunk)
    gives the same gradients, with either OWN_V pass (TAP_FAST_BWD_V): several items per program and
    several tiles per item adding to the same dV rows.  The accumulators start as NaN: whatever the
    split, each element's first write must come before any read."""
    monkeypatch.setenv("TAP_FAST_BWD_V", bwd_v)
    monkeypatch.setattr(tap_triton, "_new_output", _poisoned)
    q, s, tq, ts, h1 = 3, 3, 4, 5, 18
    x, y, ws, bs = make_tap_inputs(q, s, tq, ts, 6, (h1, 12, 7), dtype=torch.float64, device="cpu", seed=5)
    from tap_fast.kernels.tap_prelude import prelude as _prelude

    u, v, cos = (t.float().to(DEVICE) for t in _prelude(x, y, ws, bs))
    layers = [t.float().to(DEVICE) for t in (ws[1], bs[1], ws[2], bs[2], ws[3], bs[3])]
    gs = torch.randn(q, s, device=DEVICE)
    split = dict(groups_u=groups_u, groups_v=groups_v, nprog=nprog) | ({"chunk": chunk} if chunk else {})
    got = tap_triton._backward(gs, u, v, cos, *layers, **split)
    _, want = _float64_pairs(u, v, cos, layers, gs)
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-3


def _spy_backward_launches(monkeypatch) -> list:
    """The backward kernel's launches from here on, each as (grid, args, kwargs); they still run."""
    seen = []
    launch = tap_triton._launch

    def spy(kernel, grid, *args, **kwargs):
        if kernel is tap_triton._tap_bwd_kernel:
            seen.append((grid, args, kwargs))
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(tap_triton, "_launch", spy)
    return seen


@pytest.mark.parametrize("groups_u,nprog,chunk", [(1, 1, 1), (2, 2, 2), (3, 5, 3), (4, 2, 64), (None, None, None)])
def test_atomic_backward_work_split_is_exact(monkeypatch, groups_u, nprog, chunk):
    """The atomic backward (one pass, dU and dV added with atomics into zeroed buffers) over its work
    splits: several items per program, several programs and groups adding to the same dU and dV rows.
    The weight slots start as NaN: each program's first write must still come before any read."""
    monkeypatch.setattr(tap_triton, "_new_output", _poisoned)
    q, s, tq, ts, h1 = 3, 3, 4, 5, 18
    u, v, layers = _pair_operands(q, s, tq, ts, h1, 12, 7)
    cos, gs = torch.randn(q, s, tq, ts, device=DEVICE), torch.randn(q, s, device=DEVICE)
    split = dict(groups_u=groups_u, nprog=nprog) | ({"chunk": chunk} if chunk else {})
    got = tap_triton._backward(gs, u, v, cos, *layers, deterministic=False, **split)
    _, want = _float64_pairs(u, v, cos, layers, gs)
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-3


@pytest.mark.parametrize("n_q,n_s,n_ib,n_jb,sms", [(5, 25, 16, 1, 132), (5, 25, 64, 1, 132), (64, 64, 2, 1, 132),
                                                     (1, 1, 1, 1, 4), (3, 7, 2, 3, 1)])
def test_atomic_plan_covers_the_work_in_fewer_units_than_two_passes(n_q, n_s, n_ib, n_jb, sms):
    """The atomic plan: one pass on at most the SMs, every (s, j-block) pair of an item's side in one
    group; and its busiest program does less GEMM work (3 units a tile: forward, dz1, dW2) than the
    two-pass plan's busier pass (OWN_U 3 units a tile, OWN_V 2), the point of the option."""
    plan = tap_triton.plan_backward_atomic(n_q, n_s, n_ib, n_jb, sms)
    items, _ = plan.items(n_q, n_s, n_ib, n_jb)
    assert plan.nprog_v == 0 and 1 <= plan.nprog_u <= min(items, max(sms, 1))
    assert (plan.groups_u - 1) * plan.per_u < n_s * n_jb <= plan.groups_u * plan.per_u
    two = tap_triton.plan_backward(n_q, n_s, n_ib, n_jb, sms)
    items_u, items_v = two.items(n_q, n_s, n_ib, n_jb)
    two_units = max(3 * -(-items_u // two.nprog_u) * two.per_u, 2 * -(-items_v // two.nprog_v) * two.per_v)
    assert 3 * -(-items // plan.nprog_u) * plan.per_u <= two_units


def test_deterministic_algorithms_keep_the_deterministic_backward(monkeypatch):
    """deterministic=False is a request: torch.use_deterministic_algorithms(True) keeps the two-pass
    backward (as PyTorch picks its own deterministic kernels then); None reads TAP_FAST_DETERMINISTIC."""
    from tap_fast.kernels.tap import resolve_deterministic

    launches = _spy_backward_launches(monkeypatch)
    x, y, ws, bs = make_tap_inputs(1, 2, 3, 2, 4, (6, 5, 3), device=DEVICE, seed=2, requires_grad=True)
    for asked in (True, False):
        torch.autograd.grad(tap_scores(x, y, ws, bs, backend="triton", deterministic=asked).sum(), [x])
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.autograd.grad(tap_scores(x, y, ws, bs, backend="triton", deterministic=False).sum(), [x])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert [kwargs["ATOMIC"] for _, _, kwargs in launches] == [False, True, False]
    assert "ATOMIC" in tap_triton._tap_bwd_kernel.keys
    assert resolve_deterministic() is True
    monkeypatch.setenv("TAP_FAST_DETERMINISTIC", "0")
    assert resolve_deterministic() is False and resolve_deterministic(True) is True


@pytest.mark.parametrize("env,kwargs,error,message", [
    ("no", {}, ValueError, "TAP_FAST_DETERMINISTIC must be 0 or 1, got 'no'"),
    (None, {"deterministic": 0}, TypeError, "deterministic must be True, False or None, got 0")])
def test_bad_determinism_request_is_named(monkeypatch, env, kwargs, error, message):
    if env is not None:
        monkeypatch.setenv("TAP_FAST_DETERMINISTIC", env)
    x, y, ws, bs = make_tap_inputs(1, 1, 2, 2, 3, (5, 3, 2), device=DEVICE, seed=0)
    with pytest.raises(error, match=message):
        tap_scores(x, y, ws, bs, backend="triton", **kwargs)


@pytest.mark.parametrize("n_q,n_s,n_ib,n_jb,sms", [(5, 25, 16, 1, 132), (64, 64, 1, 2, 132), (1, 1, 1, 1, 4),
                                                     (3, 7, 2, 3, 1), (5, 25, 1, 1, 132)])
def test_backward_plan_shares_the_sms_between_the_passes(n_q, n_s, n_ib, n_jb, sms):
    """Both passes run in one launch: their programs together fit the SMs, each has work for every
    program, and every (index, block) pair of the other side is in exactly one group."""
    plan = tap_triton.plan_backward(n_q, n_s, n_ib, n_jb, sms)
    items_u, items_v = plan.items(n_q, n_s, n_ib, n_jb)
    assert plan.nprog_u + plan.nprog_v <= max(sms, 2)
    assert 1 <= plan.nprog_u <= items_u and 1 <= plan.nprog_v <= items_v
    for groups, per, n_other in ((plan.groups_u, plan.per_u, n_s * n_jb), (plan.groups_v, plan.per_v, n_q * n_ib)):
        assert (groups - 1) * per < n_other <= groups * per  # every (index, block) pair in one group


def test_backward_plan_gives_the_heavier_pass_more_programs():
    """OWN_U does 1.5x OWN_V's GEMM work per tile; with equal items on both sides it gets more SMs,
    and fewer weight-gradient slots than a pass with every SM would own."""
    plan = tap_triton.plan_backward(64, 64, 1, 2, 132)
    assert plan.nprog_v < plan.nprog_u < 132


SMALL_ROWS = 8 if DEVICE == "cpu" else 16  # compiled kernels need 16 GEMM rows at least (tl.dot)


@pytest.mark.parametrize("uv_load,tile_rows,bwd_v", [("rows", None, "scratch"), ("broadcast", SMALL_ROWS, "scratch"),
                                                     ("rows", 32, "scratch"), ("broadcast", SMALL_ROWS, "regs"),
                                                     ("rows", 32, "regs")])
def test_uv_read_and_tile_height_knobs_match_float64(monkeypatch, uv_load, tile_rows, bwd_v):
    """The benchmarking knobs (bench/tile_sweep.py) change how tiles are read and cut, never the result:
    the row-wise U/V read and other tile heights (BI > 1 and BJ < Ts included) against float64, with
    either OWN_V pass."""
    monkeypatch.setenv("TAP_FAST_UV_LOAD", uv_load)
    monkeypatch.setenv("TAP_FAST_BWD_V", bwd_v)
    if tile_rows:
        monkeypatch.setenv("TAP_FAST_TILE_ROWS", str(tile_rows))
    (got, _, want), (g_got, _, g_want) = _run_all(torch.float32, (2, 2, 6, 11, 5, (20, 10, 6)), seed=11)
    assert rel_err(got, want) <= FP32_TOL
    for g, w in zip(g_got, g_want):
        assert rel_err(g, w) <= FP32_TOL


def test_forward_and_backward_tile_heights_are_independent(monkeypatch):
    """TAP_FAST_TILE_ROWS_FWD / _BWD cut the two kernels' tiles differently; the result does not change."""
    monkeypatch.setenv("TAP_FAST_TILE_ROWS_FWD", str(SMALL_ROWS))
    monkeypatch.setenv("TAP_FAST_TILE_ROWS_BWD", "32")
    assert tap_triton._tile_shape(6, 11, "fwd") == (1, SMALL_ROWS) and tap_triton._tile_shape(6, 11, "bwd") == (2, 16)
    (got, _, want), (g_got, _, g_want) = _run_all(torch.float32, (2, 2, 6, 11, 5, (20, 10, 6)), seed=13)
    assert rel_err(got, want) <= FP32_TOL
    for g, w in zip(g_got, g_want):
        assert rel_err(g, w) <= FP32_TOL


@pytest.mark.parametrize("t,fwd,bwd", [(4, (4, 4), (4, 4)), (8, (8, 8), (8, 8)), (32, (4, 32), (2, 32)),
                                       (128, (1, 128), (1, 64)), (1, (16, 1), (16, 1))])
def test_gpu_tiles_hold_at_most_a_clip_pairs_frame_pairs(monkeypatch, t, fwd, bwd):
    """On a GPU (GPU_TILE_ROWS: 128 forward, 64 backward) a tile is capped at pow2(Tq) x pow2(Ts) rows,
    16 at least (tl.dot's minimum): short clips are not mostly padding; long ones keep the defaults."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the shape rule only: nothing is launched
    assert tap_triton._tile_shape(t, t, "fwd") == fwd and tap_triton._tile_shape(t, t, "bwd") == bwd
    monkeypatch.setenv("TAP_FAST_TILE_ROWS", "128")  # the knobs are capped the same way
    assert tap_triton._tile_shape(t, t, "bwd") == fwd


@pytest.mark.parametrize("value", ["24", "0", "big"])
def test_bad_tile_rows_knob_is_named(monkeypatch, value):
    monkeypatch.setenv("TAP_FAST_TILE_ROWS_BWD", value)
    with pytest.raises(ValueError, match="TAP_FAST_TILE_ROWS_BWD must be a power of two"):
        tap_triton._tile_shape(4, 4, "bwd")


def test_bad_uv_load_knob_is_named(monkeypatch):
    monkeypatch.setenv("TAP_FAST_UV_LOAD", "gather")
    x, y, ws, bs = make_tap_inputs(1, 1, 2, 2, 3, (5, 3, 2), device=DEVICE, seed=0)
    with pytest.raises(ValueError, match="TAP_FAST_UV_LOAD"):
        tap_scores(x, y, ws, bs, backend="triton")


def test_bad_bwd_v_knob_is_named(monkeypatch):
    """TAP_FAST_BWD_V is read by the backward alone; a bad value fails there, naming the knob."""
    monkeypatch.setenv("TAP_FAST_BWD_V", "registers")
    x, y, ws, bs = make_tap_inputs(1, 1, 2, 2, 3, (5, 3, 2), device=DEVICE, seed=0, requires_grad=True)
    scores = tap_scores(x, y, ws, bs, backend="triton")
    with pytest.raises(ValueError, match="TAP_FAST_BWD_V must be 'scratch' or 'regs', got 'registers'"):
        torch.autograd.grad(scores.sum(), [x, y])


@pytest.mark.parametrize("bwd_v", ["scratch", "regs"])
def test_backward_v_in_registers_shrinks_the_scratch(monkeypatch, bwd_v):
    """With TAP_FAST_BWD_V=regs the OWN_V programs park one tile (h2), not a chunk's dz2; the knob is a
    constexpr of the kernel and part of its autotune key, so both variants coexist in one process."""
    monkeypatch.setenv("TAP_FAST_BWD_V", bwd_v)
    launches = _spy_backward_launches(monkeypatch)
    q, s, tq, ts, h2 = 2, 3, 5, 7, 10
    u, v, layers = _pair_operands(q, s, tq, ts, 12, h2, 4)
    cos = torch.randn(q, s, tq, ts, device=DEVICE)
    tap_triton._backward(torch.randn(q, s, device=DEVICE), u, v, cos, *layers, nprog=2, chunk=3)
    bi, bj = tap_triton._tile_shape(tq, ts, "bwd")
    tiles = 2 * 3 + 2 * (1 if bwd_v == "regs" else 3)  # OWN_U programs x chunk + OWN_V programs x (1 or chunk)
    (grid, args, kwargs), = launches
    seen = dict(scratch=args[19].numel(), programs=grid[0], v_regs=kwargs["V_REGS"])
    assert seen == dict(scratch=tiles * bi * bj * 16, programs=4, v_regs=bwd_v == "regs")
    assert "V_REGS" in tap_triton._tap_bwd_kernel.keys


def _poisoned(shape, dtype, device, stride=None):
    """tap_triton._new_output, NaN-filled: an element a kernel reads or returns before writing it shows."""
    stride = stride or torch.empty(shape, device="meta").stride()  # dcos comes with cos's strides
    return torch.empty_strided(shape, stride, dtype=dtype, device=device).fill_(float("nan"))


def test_every_output_element_is_written(monkeypatch):
    """Outputs and the backward's accumulators start as NaN: a skipped element, or an accumulator read
    before its first write, would surface as NaN."""
    monkeypatch.setattr(tap_triton, "_new_output", _poisoned)
    x, y, ws, bs = make_tap_inputs(2, 3, 7, 5, 5, (19, 9, 5), device=DEVICE, seed=3, requires_grad=True)
    scores = tap_scores(x, y, ws, bs, backend="triton")
    grads = torch.autograd.grad(scores.sum(), [x, y, *ws, *bs])
    p, _ = tap_alignment(x, y, ws, bs, backend="triton")
    for t in (scores, p, *grads):
        assert not torch.isnan(t).any()


def _layouts(cos: torch.Tensor) -> dict:
    """The same cos values in the layouts the kernels may be given."""
    q, s, tq, ts = cos.shape
    gemm = cos.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # the prelude's: [Q Tq, S Ts] viewed
    wide = torch.zeros(q, s, tq, ts + 3, device=cos.device, dtype=cos.dtype)
    wide[..., :ts] = cos
    return {"contiguous": cos.contiguous(), "gemm": gemm, "not_dense": wide[..., :ts]}


@pytest.mark.parametrize("layout", ["contiguous", "gemm", "not_dense"])
def test_kernels_read_cos_and_grad_scores_through_their_strides(layout):
    """cos in any layout (the prelude's permuted GEMM result is read in place; a layout with gaps is
    copied first) and an expanded grad_scores (what scores.sum() sends back) give the same scores and
    gradients; dcos comes back in cos's layout, so the prelude's backward gets a view, not a copy."""
    q, s, tq, ts = 2, 3, 5, 4
    u, v, layers = _pair_operands(q, s, tq, ts, 20, 9, 5)
    cos = _layouts(torch.randn(q, s, tq, ts, device=DEVICE))[layout]
    scores, _ = tap_triton._forward(u, v, cos, *layers, False)
    grads = tap_triton._backward(torch.ones(()).expand(q, s).to(DEVICE), u, v, cos, *layers)
    out, want = _float64_pairs(u, v, cos, layers)
    assert rel_err(scores, out) <= FP32_TOL
    for g, w in zip(grads, want):
        assert rel_err(g, w) <= FP32_TOL
    if layout != "not_dense":
        assert grads[2].stride() == cos.stride()


def test_weight_grads_share_one_buffer_in_eager_mode_only():
    """The eager backward returns the weight and bias gradients as views of one reduced buffer (one sum,
    one cast); the custom op, which torch.compile calls, may not return aliases and gives each its own."""
    q, s, tq, ts = 2, 2, 3, 3
    u, v, layers = _pair_operands(q, s, tq, ts, 12, 8, 4)
    cos, gs = torch.randn(q, s, tq, ts, device=DEVICE), torch.randn(q, s, device=DEVICE)
    eager = tap_triton._backward(gs, u, v, cos, *layers)
    op = torch.ops.tap_fast.tap_pairs_bwd(gs, u, v, cos, *layers)
    assert len({g.untyped_storage().data_ptr() for g in eager[3:]}) == 1
    assert len({g.untyped_storage().data_ptr() for g in op}) == len(op)
    for a, b in zip(eager, op):
        assert torch.equal(a, b)


def test_fused_alignment_matches_reference():
    x, y, ws, bs = make_tap_inputs(2, 2, 5, 3, 6, (21, 11, 3), device=DEVICE, seed=8)
    p, cos = tap_alignment(x, y, ws, bs, backend="triton")
    p_ref, cos_ref = tap_alignment_reference(*[t.double() for t in (x, y)], [w.double() for w in ws], [b.double() for b in bs])
    assert rel_err(p, p_ref) <= FP32_TOL and rel_err(cos, cos_ref) <= 1e-6


@pytest.mark.parametrize("deterministic", [True, False])
def test_fused_op_under_torch_compile(deterministic):
    """The custom ops carry the determinism request from the forward to the backward."""
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 5, (17, 9, 4), device=DEVICE, seed=6, requires_grad=True)
    fn = torch.compile(lambda *a: tap_scores(a[0], a[1], list(a[2:6]), list(a[6:]), backend="triton",
                                             deterministic=deterministic), backend="eager", fullgraph=True)
    got = fn(x, y, *ws, *bs)
    want = tap_scores(x, y, ws, bs, backend="triton")
    assert rel_err(got, want) <= 1e-6
    g1 = torch.autograd.grad(got.sum(), [y, ws[1]])
    g2 = torch.autograd.grad(want.sum(), [y, ws[1]])
    assert max(rel_err(a, b) for a, b in zip(g1, g2)) <= 1e-6


def test_fused_second_derivatives_raise():
    """The kernels' backward recomputes activations as constants: a gradient penalty through the
    fused op must raise, not return a partial second derivative."""
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 5, (17, 9, 4), device=DEVICE, seed=6, requires_grad=True)
    grad_w2, = torch.autograd.grad(tap_scores(x, y, ws, bs, backend="triton").sum(), ws[1], create_graph=True)
    with pytest.raises(RuntimeError, match="tap_scores: second derivatives .* not supported"):
        torch.autograd.grad((grad_w2 ** 2).sum(), ws[2])


def test_fused_op_fake_dtypes_with_fp32_prelude():
    """fp16 inputs: the prelude's U, V are fp32 while the layers stay fp16; the fake kernel must give
    the real op's dtypes (scores and P in the layers' dtype), as opcheck verifies."""
    from tap_fast.kernels.tap_prelude import prelude as _prelude

    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 5, (17, 9, 4), dtype=torch.float16, device=DEVICE, seed=12)
    u, v, cos = _prelude(x, y, ws, bs)
    args = (u, v, cos, ws[1], bs[1], ws[2], bs[2], ws[3], bs[3], True)
    scores, p = torch.ops.tap_fast.tap_pairs_fwd(*args)
    assert u.dtype == torch.float32 and scores.dtype == p.dtype == torch.float16
    torch.library.opcheck(torch.ops.tap_fast.tap_pairs_fwd.default, args, test_utils=("test_schema", "test_faketensor"))


def test_unsupported_depth_falls_back_or_errors():
    x, y, ws, bs = make_tap_inputs(1, 2, 3, 3, 4, (8, 4), device=DEVICE, seed=1)  # 2 hidden layers
    with pytest.raises(ValueError, match="3 hidden layers"):
        tap_scores(x, y, ws, bs, backend="triton")
    assert tap_scores(x, y, ws, bs).shape == (1, 2)  # auto -> torch path


def _captured(fn, warmups: int = 1):
    """(graph, fn's outputs in it): fn warmed up on a side stream (autotuning, compilation, one-time
    probes), as torch.cuda.graph's docs ask, then captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_fused_scores_replay_in_a_cuda_graph():
    """After a warm-up call (autotuning, the prelude's one-time probe), the forward captures into a CUDA
    graph (the finite-input check, a host sync, stands aside during capture) and replays exactly."""
    x, y, ws, bs = make_tap_inputs(2, 3, 5, 7, 12, (20, 10, 6), dtype=torch.bfloat16, device=DEVICE, seed=21)
    want = tap_scores(x, y, ws, bs, backend="triton")
    graph, got = _captured(lambda: tap_scores(x, y, ws, bs, backend="triton"))
    x.copy_(torch.randn_like(x))  # the graph reads its inputs' memory at replay
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(got, tap_scores(x, y, ws, bs, backend="triton")) <= 1e-6 and rel_err(got, want) > 0


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("deterministic", [True, False])
def test_fused_forward_and_backward_replay_in_a_cuda_graph(deterministic):
    """Forward and every gradient capture into one CUDA graph too (the backward's accumulators are
    initialised by its kernel, or by a zero fill inside the graph for the atomic backward), and
    replays with new input values give what eager calls give."""
    shape = (2, 3, 6, 5, 16, (32, 16, 8))
    x, y, ws, bs = make_tap_inputs(*shape, device=DEVICE, seed=21, requires_grad=True)
    params = [x, y, *ws, *bs]

    def step():
        out = tap_scores(params[0], params[1], params[2:6], params[6:], backend="triton", deterministic=deterministic)
        return (out, *torch.autograd.grad(out.sum(), params))

    graph, captured = _captured(step, warmups=3)
    for seed in (22, 23):
        fx, fy, fws, fbs = make_tap_inputs(*shape, device=DEVICE, seed=seed)
        with torch.no_grad():
            for p, f in zip(params, [fx, fy, *fws, *fbs]):
                p.copy_(f)
        graph.replay()
        for got, want in zip(captured, step()):
            assert rel_err(got, want) <= 1e-5


def test_autotune_candidates_are_pruned_by_width_and_tile_height():
    """K-blocks wider than H1 go (masked work), and 4-warp candidates go for 128-row tiles (they spill
    inside the K-loop on sm_90); something always remains."""
    configs = [triton.Config({"BK": bk}, num_warps=w) for bk, w in ((32, 8), (64, 4), (64, 8), (128, 8))]
    kept = tap_triton._prune_configs(configs, {"H1": 1024}, BI=4, BJ=32)
    assert [(c.kwargs["BK"], c.num_warps) for c in kept] == [(32, 8), (64, 8), (128, 8)]
    kept = tap_triton._prune_configs(configs, {"H1": 1024}, BI=2, BJ=32)
    assert [(c.kwargs["BK"], c.num_warps) for c in kept] == [(32, 8), (64, 4), (64, 8), (128, 8)]
    assert [c.kwargs["BK"] for c in tap_triton._prune_configs(configs, {"H1": 40}, BI=2, BJ=32)] == [32, 64, 64]
    assert tap_triton._prune_configs(configs[1:2], {"H1": 1024}, BI=8, BJ=16) == configs[1:2]
    # the backward's phase-B K-block counts too
    split = [triton.Config({"BK": 16, "BKB": 16}, num_warps=8), triton.Config({"BK": 16, "BKB": 64}, num_warps=8)]
    assert [c.kwargs["BKB"] for c in tap_triton._prune_configs(split, {"H1": 20}, BI=2, BJ=8)] == [16]
    assert [c.kwargs["BKB"] for c in tap_triton._prune_configs(split, {"H1": 40}, BI=2, BJ=8)] == [16, 64]


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA's 65535 cap on grid axes 1 and 2 exists only on a GPU")
def test_more_clip_pairs_than_a_grid_axis_holds():
    """Q = S = 257 (66049 clip pairs, past the 65535 programs CUDA allows on a second grid axis):
    forward and gradients still match the float64 reference (the launch grids are one-dimensional)."""
    _check_forward_and_all_grads(torch.float32, FP32_TOL, (257, 257, 2, 3, 8, (16, 8, 4)))
