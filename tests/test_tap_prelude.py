"""The prelude's hand-written autograd node (U, V, cos) against autograd through the plain ops.

On a GPU machine the inputs live on CUDA, where bf16/fp16 U and V come from GEMMs with fp32 output
(bench/gpu_session.sh runs this file there)."""
import pytest
import torch
import torch.nn.functional as F

from tap_fast.kernels.tap_prelude import prelude
from tap_fast.kernels.tap_testing import lowp_tolerance, make_tap_inputs, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _plain_prelude(x, y, w1, b1):
    """The same three outputs by autograd through F.normalize, einsum and wide GEMMs."""
    d = x.shape[-1]
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    u = x.to(wide) @ w1[:, :d].to(wide).t()
    v = y.to(wide) @ w1[:, d:].to(wide).t() + b1.to(wide)
    cos = torch.einsum("qid,sjd->qsij", F.normalize(x, dim=-1, eps=1e-12), F.normalize(y, dim=-1, eps=1e-12))
    return u, v, cos


def _inputs(dtype, seed, zero_rows=False):
    x, y, ws, bs = make_tap_inputs(3, 2, 5, 4, 7, (6, 3), dtype=torch.float64, seed=seed)
    if zero_rows:  # frame features of norm 0 and of norm below eps: F.normalize divides them by eps
        x[1, 2] = 0.0
        y[0, 3] = 0.0
        x[2, 0] *= 1e-14
        y[1, 1] *= 1e-14
    return [t.to(dtype=dtype, device=DEVICE).requires_grad_() for t in (x, y, ws[0], bs[0])]


def _cotangents(outs, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype=o.dtype, device=o.device) for o in outs]


@pytest.mark.parametrize("zero_rows", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_prelude_matches_plain_autograd_in_float64(seed, zero_rows):
    inputs = _inputs(torch.float64, seed, zero_rows)
    got = prelude(inputs[0], inputs[1], [inputs[2]], [inputs[3]])
    want = _plain_prelude(*inputs)
    cots = _cotangents(want, seed + 10)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    got_grads = torch.autograd.grad(got, inputs, cots)
    want_grads = torch.autograd.grad(want, inputs, cots)
    for name, g, w in zip(("dx", "dy", "dw1", "db1"), got_grads, want_grads):
        assert rel_err(g, w) < 1e-12, name


def test_prelude_gradcheck():
    inputs = _inputs(torch.float64, 3)
    assert torch.autograd.gradcheck(lambda *a: prelude(a[0], a[1], [a[2]], [a[3]]), inputs)


@pytest.mark.parametrize("outputs", [(2,), (0,), (0, 1), (0, 2), (1, 2)])
def test_prelude_grads_from_some_outputs_only(outputs):
    """tap_alignment differentiates cos alone; a caller may also use U or V only.  Unused outputs must
    count as zero gradients, whatever the node skips."""
    inputs = _inputs(torch.float64, 4)
    got = prelude(inputs[0], inputs[1], [inputs[2]], [inputs[3]])
    want = _plain_prelude(*inputs)
    cots = _cotangents(want, 5)
    used = [o for k, o in enumerate(got) if k in outputs], [o for k, o in enumerate(want) if k in outputs]
    picked = [cots[k] for k in outputs]
    got_grads = torch.autograd.grad(used[0], inputs, picked, allow_unused=True)
    want_grads = torch.autograd.grad(used[1], inputs, picked, allow_unused=True)
    for name, g, w in zip(("dx", "dy", "dw1", "db1"), got_grads, want_grads):
        if w is None:  # no path from the outputs used: nothing, or zeros
            assert g is None or not g.any(), name
        else:
            assert g is not None and rel_err(g, w) < 1e-12, name


def test_prelude_only_some_inputs_need_grads():
    x, y, w1, b1 = _inputs(torch.float64, 6)
    x.requires_grad_(False)
    b1.requires_grad_(False)
    got = prelude(x, y, [w1], [b1])
    want = _plain_prelude(x, y, w1, b1)
    cots = _cotangents(want, 7)
    for g, w in zip(torch.autograd.grad(got, [y, w1], cots), torch.autograd.grad(want, [y, w1], cots)):
        assert rel_err(g, w) < 1e-12


FLOORS = {torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float32: 1e-3}  # the bounds


@pytest.mark.parametrize("dtype", list(FLOORS))
def test_prelude_low_precision_against_float64(dtype):
    """U, V come out fp32 and cos in the input dtype; values and gradients within the dtype's bound
    (or 2x plain eager PyTorch's error in that dtype) of float64 on the same rounded inputs."""
    inputs = _inputs(dtype, 8)
    exact = [t.detach().double().requires_grad_() for t in inputs]
    got = prelude(inputs[0], inputs[1], [inputs[2]], [inputs[3]])
    eager = _plain_prelude(*inputs)
    want = _plain_prelude(*exact)
    assert [o.dtype for o in got] == [torch.float32, torch.float32, dtype]
    for g, e, w in zip(got, eager, want):
        assert rel_err(g, w) <= lowp_tolerance(e, w, FLOORS[dtype])
    cots = _cotangents(want, 9)
    lowp_cots = [c.to(o.dtype) for c, o in zip(cots, got)]
    got_grads = torch.autograd.grad(got, inputs, lowp_cots)
    eager_grads = torch.autograd.grad(eager, inputs, lowp_cots)
    want_grads = torch.autograd.grad(want, exact, cots)
    for name, g, e, w in zip(("dx", "dy", "dw1", "db1"), got_grads, eager_grads, want_grads):
        assert g.dtype == dtype, name
        assert rel_err(g, w) <= lowp_tolerance(e, w, FLOORS[dtype]), name
