"""TAP reference, memory-bounded torch path and input validation (CPU, float64 oracle)."""
import math

import pytest
import torch

from tap_fast.kernels import tap_alignment, tap_scores
from tap_fast.kernels.tap_reference import tap_alignment_reference, tap_scores_reference
from tap_fast.kernels.tap_testing import PAPER_HIDDEN, lowp_tolerance, make_tap_inputs, rel_err
from tap_fast.kernels import tap_torch
from tap_fast.kernels.tap_torch import DEFAULT_BUDGET_BYTES, chunk_activation_bytes, plan_chunk_rows


def _grads(out, inputs, seed):
    # A random cotangent so every score's gradient counts with a different weight.
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, cot)


# ---------------------------------------------------------------- reference vs a direct loop


def test_reference_matches_explicit_loop():
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 5, (7, 3), dtype=torch.float64, seed=1)
    scores = tap_scores_reference(x, y, ws, bs)
    for q in range(2):
        for s in range(2):
            total = 0.0
            for i in range(3):
                for j in range(4):
                    h = torch.cat([x[q, i], y[s, j]])
                    for k, (w, b) in enumerate(zip(ws, bs)):
                        h = w @ h + b
                        h = torch.relu(h) if k < len(ws) - 1 else torch.sigmoid(h)
                    cos = torch.dot(x[q, i], y[s, j]) / (x[q, i].norm() * y[s, j].norm())
                    total += h[0] * cos
            assert math.isclose(scores[q, s].item(), total.item(), rel_tol=1e-12)


# ---------------------------------------------------------------- torch path


SHAPES = [  # (Q, S, Tq, Ts, D, hidden)
    (1, 1, 1, 1, 3, (4,)),
    (2, 3, 5, 7, 12, (20, 10, 6)),
    (3, 2, 4, 3, 9, (17, 5)),
    (1, 2, 6, 6, 8, (8, 8, 8, 8)),
    (2, 2, 3, 5, 4, ()),  # no hidden layer: a single [1, 2D] layer
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("budget", [1, 4096, DEFAULT_BUDGET_BYTES])  # 1 byte -> one row per chunk
def test_torch_path_forward_and_grads_match_reference(shape, budget):
    q, s, tq, ts, d, hidden = shape
    inputs = make_tap_inputs(q, s, tq, ts, d, hidden, dtype=torch.float64, seed=hash(shape) % 1000, requires_grad=True)
    x, y, ws, bs = inputs
    flat = [x, y, *ws, *bs]
    got = tap_scores(x, y, ws, bs, backend="torch", budget_bytes=budget)
    want = tap_scores_reference(x, y, ws, bs)
    assert got.shape == (q, s)
    assert rel_err(got, want) < 1e-12
    for g, w in zip(_grads(got, flat, 3), _grads(want, flat, 3)):
        assert rel_err(g, w) < 1e-10


@pytest.mark.parametrize("shape", SHAPES[1:4])
@pytest.mark.parametrize("budget", [1, 3000, 20000])  # chunks that start and end inside pairs and queries
def test_torch_path_box_reduction_matches_reference(shape, budget, monkeypatch):
    """Off the CPU the torch path sums dU and dV box by box instead of index_add_ (atomics on CUDA):
    the same gradients, checked here on the CPU by forcing that path."""
    monkeypatch.setattr(tap_torch, "_reduce_by_boxes", lambda device: True)
    q, s, tq, ts, d, hidden = shape
    x, y, ws, bs = make_tap_inputs(q, s, tq, ts, d, hidden, dtype=torch.float64, seed=5, requires_grad=True)
    flat = [x, y, *ws, *bs]
    got = tap_scores(x, y, ws, bs, backend="torch", budget_bytes=budget)
    want = tap_scores_reference(x, y, ws, bs)
    for g, w in zip(_grads(got, flat, 4), _grads(want, flat, 4)):
        assert rel_err(g, w) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (index_add_ there adds with atomics)")
def test_torch_path_gradients_are_bitwise_reproducible_on_cuda():
    # A depth the fused kernels do not take, and chunks of many rows sharing each U and V row.
    x, y, ws, bs = make_tap_inputs(3, 7, 9, 11, 32, (64, 32), seed=8, requires_grad=True)
    flat = [t.cuda().detach().requires_grad_() for t in (x, y, *ws, *bs)]
    runs = [_grads(tap_scores(flat[0], flat[1], flat[2:5], flat[5:], backend="torch"), flat, 6) for _ in range(3)]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


@pytest.mark.parametrize("n_s,tq", [(1, 1), (3, 4), (2, 5)])
def test_row_boxes_cover_each_row_once_in_order(n_s, tq):
    n_rows = 3 * n_s * tq
    for r0 in range(n_rows):
        for r1 in range(r0 + 1, n_rows + 1):
            rows = []
            for at, (q0, q1), (s0, s1), (i0, i1) in tap_torch._row_boxes(r0, r1, n_s, tq):
                box = [(q * n_s + s) * tq + i for q in range(q0, q1) for s in range(s0, s1) for i in range(i0, i1)]
                assert box == list(range(r0 + at, r0 + at + len(box)))  # contiguous: a view of the chunk
                rows += box
            assert rows == list(range(r0, r1))
            assert len(list(tap_torch._row_boxes(r0, r1, n_s, tq))) <= 5


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)])
@pytest.mark.parametrize("shape,seed", [
    ((2, 3, 5, 4, 12, (20, 10, 6)), 7),
    # Seen on an H200 with U and V rounded to bf16 (the Triton and torch paths alike): dW1 3x and
    # db3 3.6x over the bound.  The fp32 prelude (tap_prelude.prelude) brings them under it.
    ((2, 3, 5, 7, 12, (20, 10, 6)), 29),
    ((3, 2, 3, 6, 7, (33, 17, 16)), 21),
])
def test_torch_path_low_precision(dtype, tol, shape, seed):
    x, y, ws, bs = make_tap_inputs(*shape[:5], shape[5], dtype=dtype, seed=seed, requires_grad=True)
    ref = [t.detach().double().requires_grad_() for t in (x, y, *ws, *bs)]
    got = tap_scores(x, y, ws, bs, backend="torch", budget_bytes=2048)
    want = tap_scores_reference(ref[0], ref[1], ref[2:6], ref[6:])
    eager = tap_scores_reference(x, y, ws, bs)  # same dtype, plain autograd: the error to compare with
    assert got.dtype == dtype
    assert rel_err(got, want) < tol
    grads = zip(_grads(got, [x, y, *ws, *bs], 5), _grads(eager, [x, y, *ws, *bs], 5), _grads(want, ref, 5))
    for g, e, w in grads:
        assert rel_err(g, w) <= lowp_tolerance(e, w, tol)


def test_torch_path_gradcheck():
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 2, 3, (5, 4), dtype=torch.float64, seed=11, requires_grad=True)

    def fn(x, y, *p):
        return tap_scores(x, y, list(p[:3]), list(p[3:]), backend="torch", budget_bytes=200)

    assert torch.autograd.gradcheck(fn, (x, y, *ws, *bs))


def test_alignment_matches_reference():
    x, y, ws, bs = make_tap_inputs(2, 3, 5, 4, 6, (9, 5, 3), dtype=torch.float64, seed=2)
    p, cos = tap_alignment(x, y, ws, bs, backend="torch", budget_bytes=500)
    p_ref, cos_ref = tap_alignment_reference(x, y, ws, bs)
    assert p.shape == cos.shape == (2, 3, 5, 4)
    assert rel_err(p, p_ref) < 1e-12 and rel_err(cos, cos_ref) < 1e-12


def test_autocast_cpu_runs_in_bf16():
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 8, (16, 8, 4), seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tap_scores(x, y, ws, bs, backend="torch")
    assert got.dtype == torch.bfloat16
    assert rel_err(got, tap_scores_reference(*[t.double() for t in (x, y)], [w.double() for w in ws], [b.double() for b in bs])) < 2e-2


def test_torch_compile_of_torch_path():
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 8, (16, 8, 4), seed=9, requires_grad=True)
    compiled = torch.compile(lambda *a: tap_scores(a[0], a[1], list(a[2:6]), list(a[6:]), backend="torch"), backend="eager")
    got = compiled(x, y, *ws, *bs)
    want = tap_scores(x, y, ws, bs, backend="torch")
    assert rel_err(got, want) < 1e-6
    g1 = torch.autograd.grad(got.sum(), [x, *ws])
    g2 = torch.autograd.grad(want.sum(), [x, *ws])
    assert max(rel_err(a, b) for a, b in zip(g1, g2)) < 1e-6


def test_torch_path_op_with_fp32_prelude_and_bf16_layers():
    """The prelude hands the op fp32 U, V beside bf16 layers: the fake (meta) kernel torch.compile
    traces with must give the real op's output dtype, and opcheck compares them."""
    x, y, ws, bs = make_tap_inputs(2, 3, 3, 4, 6, (10, 8, 4), dtype=torch.bfloat16, seed=11)
    from tap_fast.kernels.tap_prelude import prelude as _prelude

    u, v, cos = _prelude(x, y, ws, bs)
    assert u.dtype == v.dtype == torch.float32
    args = (u.requires_grad_(), v.requires_grad_(), cos.requires_grad_(),
            [w.requires_grad_() for w in ws[1:]], [b.requires_grad_() for b in bs[1:]], 5)
    assert torch.ops.tap_fast.tap_pairs_torch_fwd(*args).dtype == torch.bfloat16
    torch.library.opcheck(torch.ops.tap_fast.tap_pairs_torch_fwd.default, args)


# ---------------------------------------------------------------- memory bound (computed, not allocated)


@pytest.mark.parametrize("t", [4, 8, 16, 32, 64, 128, 512])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_chunk_plan_respects_budget_at_paper_widths(t, itemsize):
    widths = [PAPER_HIDDEN[0], PAPER_HIDDEN[1], PAPER_HIDDEN[2]]
    rows = plan_chunk_rows(t, widths, itemsize)
    assert rows >= 1
    assert chunk_activation_bytes(rows, t, widths, itemsize) <= DEFAULT_BUDGET_BYTES
    # The 5-way 5-shot episode (Q=5, S=25) never holds the full hidden tensor [Q, S, T, T, H1].
    full_hidden = 5 * 25 * t * t * PAPER_HIDDEN[0] * itemsize
    if full_hidden > DEFAULT_BUDGET_BYTES:
        assert chunk_activation_bytes(rows, t, widths, itemsize) < full_hidden


# ---------------------------------------------------------------- bad inputs


def _good():
    return make_tap_inputs(2, 3, 4, 5, 6, (8, 4, 2), seed=0)


def _bad_cases():
    x, y, ws, bs = _good()
    nan_x = x.clone()
    nan_x[0, 1, 2] = float("nan")
    inf_y = y.clone()
    inf_y[1, 0, 0] = float("inf")
    nan_w = [w.clone() for w in ws]
    nan_w[1][0, 0] = float("nan")
    inf_b = [b.clone() for b in bs]
    inf_b[0][1] = float("inf")
    return {
        "rank": ((x[0], y, ws, bs), ValueError, "rank"),
        "feature mismatch x/y": ((x, y[..., :5], ws, bs), ValueError, "feature size mismatch"),
        "feature mismatch weights": ((x[..., :5], y[..., :5], ws, bs), ValueError, r"weights\[0\]"),
        "nan x": ((nan_x, y, ws, bs), ValueError, "x contains NaN"),
        "inf y": ((x, inf_y, ws, bs), ValueError, "y contains NaN or inf"),
        "nan weight": ((x, y, nan_w, bs), ValueError, r"^weights\[1\] contains NaN"),
        "inf bias and nan x": ((nan_x, y, ws, inf_b), ValueError, r"^x and biases\[0\] contain NaN or inf"),
        "numpy x": ((x.numpy(), y, ws, bs), TypeError, "x must be a torch.Tensor, got ndarray"),
        "numpy weight": ((x, y, [ws[0].numpy()] + ws[1:], bs), TypeError, r"weights\[0\] must be a torch.Tensor"),
        "tensor as weights": ((x, y, ws[0], bs), TypeError, "sequences"),
        "dtype": ((x, y.double(), ws, bs), TypeError, "same dtype"),
        "weight dtype": ((x, y, [ws[0].double()] + ws[1:], bs), TypeError, r"weights\[0\]"),
        "int input": ((x.long(), y.long(), ws, bs), TypeError, "floating-point"),
        "empty weights": ((x, y, [], []), ValueError, "at least one layer"),
        "bias count": ((x, y, ws, bs[:-1]), ValueError, "bias vectors"),
        "bias shape": ((x, y, ws, [bs[0][:-1]] + bs[1:]), ValueError, r"biases\[0\]"),
        "layer chain": ((x, y, [ws[0], ws[2], ws[3]], [bs[0], bs[2], bs[3]]), ValueError, r"weights\[1\]"),
        "last width": ((x, y, ws[:-1], bs[:-1]), ValueError, "1 value"),
        "device": ((x, y.to("meta"), ws, bs), ValueError, "same device"),
        "empty x": ((x[:, :0], y, ws, bs), ValueError, "empty"),
        "zero-width layer": ((x, y, [ws[0][:0], ws[1][:, :0], ws[2], ws[3]], [bs[0][:0], *bs[1:]]), ValueError,
                             r"weights\[0\] has 0 output features"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
@pytest.mark.parametrize("fn", [tap_scores, tap_alignment, tap_scores_reference])
def test_bad_inputs_raise_clear_errors(case, fn):
    args, exc, msg = _bad_cases()[case]
    with pytest.raises(exc, match=msg):
        fn(*args)


def test_huge_finite_inputs_pass_the_finite_check():
    """The check sums every tensor's L1 norm; a sum that overflows to inf (here 2 x 3e38) sends it to the
    per-tensor check, which finds every value finite: no error, and the scores are computed."""
    x, y, ws, bs = _good()
    x[0, 0, 0], y[0, 0, 0] = 3e38, 3e38
    assert tap_scores(x, y, ws, bs).shape == (2, 3)


@pytest.mark.parametrize("budget", [0, -5, 1.5, True, "64MiB"])
@pytest.mark.parametrize("fn", [tap_scores, tap_alignment])
def test_bad_budget_rejected(fn, budget):
    with pytest.raises(ValueError, match="budget_bytes must be a positive int"):
        fn(*_good(), budget_bytes=budget)


def test_meta_tensors_give_shapes_only():
    """Shape inference on the meta device (no values, so no finite check) and no autocast probe error."""
    x, y, ws, bs = (t.to("meta") if isinstance(t, torch.Tensor) else [w.to("meta") for w in t] for t in _good())
    assert tap_scores(x, y, ws, bs).shape == (2, 3)


def test_tq_differs_from_ts_is_fine():
    x, y, ws, bs = make_tap_inputs(2, 3, 3, 7, 6, (8, 4, 2), seed=0)
    assert tap_scores(x, y, ws, bs).shape == (2, 3)


@pytest.mark.parametrize("hidden", [(), (5,), (5, 4, 3)])
@pytest.mark.parametrize("output", ["scores", "S"])
def test_second_derivatives_raise_instead_of_being_wrong(hidden, output):
    """A gradient penalty (create_graph=True): the backward treats saved norms and recomputed
    activations as constants, so a second derivative would be wrong; it must raise instead."""
    x, y, ws, bs = make_tap_inputs(2, 2, 3, 4, 4, hidden, dtype=torch.float64, seed=1, requires_grad=True)
    out = tap_scores(x, y, ws, bs, backend="torch") if output == "scores" else tap_alignment(x, y, ws, bs)[1]
    grad_x, = torch.autograd.grad(out.sum(), x, create_graph=True)
    ref = (tap_scores_reference(x, y, ws, bs) if output == "scores" else tap_alignment_reference(x, y, ws, bs)[1])
    expected, = torch.autograd.grad(ref.sum(), x)
    assert rel_err(grad_x.detach(), expected) < 1e-12  # first order unchanged
    with pytest.raises(RuntimeError, match="second derivatives .* not supported"):
        torch.autograd.grad((grad_x ** 2).sum(), ws[-1] if output == "scores" else y)


def test_float64_stays_off_the_fused_kernels(monkeypatch):
    """The fused kernels accumulate in fp32: auto sends float64 CUDA inputs to the torch path, and an
    explicit backend='triton' says why it refuses them."""
    from types import SimpleNamespace

    from tap_fast.kernels import tap as tap_module

    monkeypatch.setattr(tap_module, "_fused_supports", lambda widths: True)
    monkeypatch.delenv("TAP_FAST_BACKEND", raising=False)
    widths = (16, 8, 4)
    assert tap_module.resolve_backend(SimpleNamespace(is_cuda=True, dtype=torch.float64), widths) == "torch"
    assert tap_module.resolve_backend(SimpleNamespace(is_cuda=True, dtype=torch.float32), widths) == "triton"
    with pytest.raises(ValueError, match="float64"):
        tap_scores(*[t.double() if isinstance(t, torch.Tensor) else [w.double() for w in t] for t in _good()],
                   backend="triton")


@pytest.mark.parametrize("hidden", [(8, 4, 2), ()])  # () : the shortcut without a hidden layer
@pytest.mark.parametrize("fn", [tap_scores, tap_alignment])
def test_unknown_backend_rejected(hidden, fn, monkeypatch):
    inputs = make_tap_inputs(2, 3, 4, 5, 6, hidden, seed=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(*inputs, backend="cuda")
    monkeypatch.setenv("TAP_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(*inputs)


@pytest.mark.parametrize("cast", ["long", "bool"])
def test_autocast_does_not_cast_integer_inputs(cast):
    """Autocast casts floating-point tensors only: integer inputs are refused as without it."""
    x, y, ws, bs = _good()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="floating-point"):
        tap_scores(getattr(x, cast)(), getattr(y, cast)(), ws, bs)


def test_autocast_leaves_float64_in_float64():
    x, y, ws, bs = make_tap_inputs(2, 3, 4, 5, 6, (8, 4, 2), dtype=torch.float64, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tap_scores(x, y, ws, bs)
    assert got.dtype == torch.float64
    assert rel_err(got, tap_scores_reference(x, y, ws, bs)) < 1e-12


@pytest.mark.parametrize("transform", ["grad", "vmap"])
@pytest.mark.parametrize("hidden", [(8, 4, 2), ()])
@pytest.mark.parametrize("fn", [tap_scores, tap_alignment])
def test_torch_func_transforms_are_refused_by_name(transform, hidden, fn):
    """The README says torch.func is not supported: it used to fail inside PyTorch ("must override the
    setup_context staticmethod", "Batching rule not implemented for aten::_foreach_norm")."""
    x, y, ws, bs = make_tap_inputs(2, 3, 4, 5, 6, hidden, dtype=torch.float64, seed=0)

    def total(a):
        out = fn(a, y, ws, bs)
        return (out if fn is tap_scores else out[1]).sum()

    f = torch.func.grad(total) if transform == "grad" else torch.func.vmap(total)
    with pytest.raises(NotImplementedError, match=f"{fn.__name__}: torch.func transforms .* are not supported"):
        f(x if transform == "grad" else x[None].expand(2, *x.shape).clone())
    # the reference is plain PyTorch and does run under torch.func
    grad = torch.func.grad(lambda a: tap_scores_reference(a, y, ws, bs).sum())(x)
    assert grad.shape == x.shape


@pytest.mark.parametrize("dual", ["x", "weights[1]"])
@pytest.mark.parametrize("fn", [tap_scores, tap_alignment])
def test_forward_mode_ad_is_refused_by_name(dual, fn):
    """forward_ad dual inputs used to fail inside the finite check ("Trying to set a forward gradient that
    has a different size ..."); inputs without a tangent still run inside a dual level."""
    import torch.autograd.forward_ad as fwAD

    x, y, ws, bs = make_tap_inputs(2, 3, 4, 5, 6, (8, 4, 2), dtype=torch.float64, seed=0)
    with fwAD.dual_level():
        if dual == "x":
            args = (fwAD.make_dual(x, torch.ones_like(x)), y, ws, bs)
        else:
            args = (x, y, [ws[0], fwAD.make_dual(ws[1], torch.ones_like(ws[1])), *ws[2:]], bs)
        with pytest.raises(NotImplementedError, match=f"{fn.__name__}: forward-mode AD .* not supported"):
            fn(*args)
        assert rel_err(tap_scores(x, y, ws, bs), tap_scores_reference(x, y, ws, bs)) < 1e-12
