"""Memory-bounded PyTorch TAP path (any device, any MLP depth).

Why: the plain formula materialises a [Q, S, Tq, Ts, H1] hidden tensor (about 1.2 GB in bf16 for a
5-way 5-shot episode at T = 64 with paper widths).  Here the first layer is split outside (see
``tap.py``: U = X W1x^T, V = Y W1y^T + b1), and the rest of the MLP runs over frame pairs in chunks
sized from a memory budget.  The backward recomputes each chunk (FlashAttention style) instead of
keeping activations, so training memory is bounded too.

Frame pairs are enumerated as "rows" r = (q, s, i) in row-major order; one row holds the Ts pairs
(q, s, i, 0..Ts-1).  A chunk is a contiguous range of rows.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .double_backward import TAP_HINT, first_order_only
from .tap_prelude import wide_dtype

__all__ = ["DEFAULT_BUDGET_BYTES", "plan_chunk_rows", "chunk_activation_bytes", "tap_pairs_torch", "tap_p_torch"]

# Hidden activations held per chunk (forward or backward recompute).  64 MiB keeps the GEMMs large
# enough to be efficient while capping the working set far below the materialised tensor.
DEFAULT_BUDGET_BYTES = 64 * 2**20


def _row_bytes(ts: int, hidden_widths: Sequence[int], itemsize: int) -> int:
    # Backward holds, per pair, every hidden activation (for the ReLU masks and weight grads) plus one
    # gradient of the widest layer at a time; forward holds less.  Count both to be safe.
    return ts * (sum(hidden_widths) + max(hidden_widths)) * itemsize


def plan_chunk_rows(ts: int, hidden_widths: Sequence[int], itemsize: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Rows (q, s, i) per chunk so that chunk_activation_bytes(...) <= budget (at least one row)."""
    return max(1, budget_bytes // _row_bytes(ts, hidden_widths, itemsize))


def chunk_activation_bytes(rows: int, ts: int, hidden_widths: Sequence[int], itemsize: int) -> int:
    """Bytes of hidden activations one chunk of ``rows`` rows holds (the quantity the budget bounds)."""
    return rows * _row_bytes(ts, hidden_widths, itemsize)


def _row_indices(r0: int, r1: int, n_s: int, tq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(r0, r1, device=device)
    q = r // (n_s * tq)
    s = (r // tq) % n_s
    i = r % tq
    return q * tq + i, s  # index into U flattened to [Q*Tq, H1], and support index into V


def _chunk_forward(u_flat, v, uidx, sidx, weights, biases):
    """Activations of one chunk: [z1, h1, z2, h2, ..., z_L] with z_L the final logit [R, Ts]."""
    z = u_flat.index_select(0, uidx)[:, None, :] + v.index_select(0, sidx)  # [R, Ts, H1]
    acts = [z]
    h = torch.relu(z).to(weights[0].dtype)  # U, V may be wider (fp32) than the layers' dtype
    for k, (w, b) in enumerate(zip(weights, biases)):
        acts.append(h)
        z = torch.nn.functional.linear(h, w, b)
        if k < len(weights) - 1:
            acts.append(z)
            h = torch.relu(z)
    acts.append(z.squeeze(-1))
    return acts


# Registered as custom ops (like the Triton path) so torch.compile treats the chunk loops as opaque
# nodes: traced as a plain autograd.Function, torch 2.11's dynamo returned zero gradients here.


@torch.library.custom_op("tap_fast::tap_pairs_torch_fwd", mutates_args=())
def _pairs_fwd(u: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, weights: list[torch.Tensor],
               biases: list[torch.Tensor], rows_per_chunk: int) -> torch.Tensor:
    """scores[q, s] = sum_ij sigmoid(MLP_{2..L}(relu(U_qi + V_sj))) * C_qsij, chunk by chunk."""
    n_q, tq, _ = u.shape
    n_s, ts, _ = v.shape
    acc = wide_dtype(u.dtype)
    u_flat = u.reshape(n_q * tq, -1)
    cos_rows = cos.reshape(n_q * n_s * tq, ts)
    row_sums = torch.empty(n_q * n_s * tq, dtype=acc, device=u.device)
    for r0 in range(0, row_sums.numel(), rows_per_chunk):
        r1 = min(row_sums.numel(), r0 + rows_per_chunk)
        uidx, sidx = _row_indices(r0, r1, n_s, tq, u.device)
        logit = _chunk_forward(u_flat, v, uidx, sidx, weights, biases)[-1]
        row_sums[r0:r1] = (torch.sigmoid(logit.to(acc)) * cos_rows[r0:r1].to(acc)).sum(-1)
    return row_sums.reshape(n_q, n_s, tq).sum(-1).to(weights[0].dtype)


@_pairs_fwd.register_fake
def _(u, v, cos, weights, biases, rows_per_chunk):
    return u.new_empty(u.shape[0], v.shape[0], dtype=weights[0].dtype)


@torch.library.custom_op("tap_fast::tap_pairs_torch_bwd", mutates_args=())
def _pairs_bwd(grad_scores: torch.Tensor, u: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
               weights: list[torch.Tensor], biases: list[torch.Tensor], rows_per_chunk: int) -> list[torch.Tensor]:
    """[du, dv, dcos, *dweights, *dbiases], recomputing each chunk's activations."""
    n_layers = len(weights)
    n_q, tq, h1 = u.shape
    n_s, ts, _ = v.shape
    acc = wide_dtype(u.dtype)
    u_flat = u.reshape(n_q * tq, h1)
    cos_rows = cos.reshape(n_q * n_s * tq, ts)
    g_rows = grad_scores.to(acc).reshape(n_q * n_s, 1).expand(n_q * n_s, tq).reshape(-1)
    du = torch.zeros(n_q * tq, h1, dtype=acc, device=u.device)
    dv = torch.zeros(v.shape, dtype=acc, device=u.device)
    dcos = torch.empty(cos_rows.shape, dtype=acc, device=u.device)
    dws = [torch.zeros(w.shape, dtype=acc, device=u.device) for w in weights]
    dbs = [torch.zeros(b.shape, dtype=acc, device=u.device) for b in biases]
    n_rows = cos_rows.shape[0]
    for r0 in range(0, n_rows, rows_per_chunk):
        r1 = min(n_rows, r0 + rows_per_chunk)
        uidx, sidx = _row_indices(r0, r1, n_s, tq, u.device)
        acts = _chunk_forward(u_flat, v, uidx, sidx, weights, biases)
        p = torch.sigmoid(acts[-1].to(acc))  # [R, Ts]
        g = g_rows[r0:r1, None]
        dcos[r0:r1] = g * p
        dz = (g * cos_rows[r0:r1].to(acc) * p * (1 - p)).unsqueeze(-1).to(weights[0].dtype)  # d logit, [R, Ts, 1]
        # Walk the layers backwards: acts = [z1, h1, z2, h2, ..., h_L-1, z_L].
        for k in range(n_layers - 1, -1, -1):
            h_in = acts[2 * k + 1]
            dws[k] += torch.einsum("rto,rti->oi", dz, h_in).to(acc)
            dbs[k] += dz.sum(dim=(0, 1)).to(acc)
            dh = dz @ weights[k]
            dz = dh * (acts[2 * k] > 0)
        if _reduce_by_boxes(u.device):
            _add_rows_by_boxes(du.view(n_q, tq, h1), dv, r0, dz.to(acc), n_s)
        else:  # index_add_ on the CPU adds rows in their order: deterministic
            du.index_add_(0, uidx, dz.sum(1).to(acc))
            dv.index_add_(0, sidx, dz.to(acc))
    grads = [du.reshape(u.shape).to(u.dtype), dv.to(v.dtype), dcos.reshape(cos.shape).to(cos.dtype)]
    return grads + [d.to(w.dtype) for d, w in zip(dws, weights)] + [d.to(b.dtype) for d, b in zip(dbs, biases)]


def _row_boxes(r0: int, r1: int, n_s: int, tq: int):
    """The rows [r0, r1) of the (q, s, i) grid as at most five boxes, each contiguous in row order:
    (offset from r0, q range, s range, i range)."""
    r = r0
    while r < r1:
        q, rest = divmod(r, n_s * tq)
        s, i = divmod(rest, tq)
        if i or r1 - r < tq:  # part of one (q, s) pair's rows
            n = min(tq - i, r1 - r)
            box = ((q, q + 1), (s, s + 1), (i, i + n))
        elif s or r1 - r < n_s * tq:  # whole pairs of one query
            n_pairs = min(n_s - s, (r1 - r) // tq)
            n, box = n_pairs * tq, ((q, q + 1), (s, s + n_pairs), (0, tq))
        else:  # whole queries
            n_queries = (r1 - r) // (n_s * tq)
            n, box = n_queries * n_s * tq, ((q, q + n_queries), (0, n_s), (0, tq))
        yield r - r0, *box
        r += n


def _add_rows_by_boxes(du, dv, r0, dz, n_s):
    """du [Q, Tq, H1] += dz summed over supports and support frames, dv [S, Ts, H1] += dz summed over
    queries and query frames, for dz [R, Ts, H1] holding rows r0.. of the (q, s, i) grid, box by box
    with plain reductions: a fixed order, unlike index_add_ on CUDA (atomics)."""
    _, tq, _ = du.shape
    for at, (q0, q1), (s0, s1), (i0, i1) in _row_boxes(r0, r0 + dz.shape[0], n_s, tq):
        box = dz[at:at + (q1 - q0) * (s1 - s0) * (i1 - i0)].view(q1 - q0, s1 - s0, i1 - i0, *dz.shape[1:])
        du[q0:q1, i0:i1] += box.sum((1, 3))
        dv[s0:s1] += box.sum((0, 2))


def _reduce_by_boxes(device: torch.device) -> bool:
    """Whether the backward sums dU and dV box by box: everywhere but the CPU, whose index_add_ is
    deterministic (and whose training runs keep their bits)."""
    return device.type != "cpu"


@_pairs_bwd.register_fake
def _(grad_scores, u, v, cos, weights, biases, rows_per_chunk):
    return [t.new_empty(t.shape) for t in (u, v, cos, *weights, *biases)]


def _setup_context(ctx, inputs, output):
    u, v, cos, weights, biases, rows_per_chunk = inputs
    ctx.save_for_backward(u, v, cos, *weights, *biases)
    ctx.n_layers, ctx.rows_per_chunk = len(weights), rows_per_chunk


@first_order_only("tap_scores", TAP_HINT)
def _backward_rule(ctx, grad_scores):
    u, v, cos, *params = ctx.saved_tensors
    weights, biases = params[:ctx.n_layers], params[ctx.n_layers:]
    grads = torch.ops.tap_fast.tap_pairs_torch_bwd(grad_scores, u, v, cos, weights, biases, ctx.rows_per_chunk)
    n = ctx.n_layers
    return grads[0], grads[1], grads[2], grads[3:3 + n], grads[3 + n:], None


_pairs_fwd.register_autograd(_backward_rule, setup_context=_setup_context)


def tap_pairs_torch(u, v, cos, weights, biases, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """Scores [Q, S] from U [Q, Tq, H1], V [S, Ts, H1] (b1 included), cos [Q, S, Tq, Ts] and layers 2..L."""
    widths = [u.shape[-1]] + [w.shape[0] for w in weights[:-1]]
    rows = plan_chunk_rows(v.shape[1], widths, u.element_size(), budget_bytes)
    return torch.ops.tap_fast.tap_pairs_torch_fwd(u, v, cos, list(weights), list(biases), rows)


@torch.no_grad()
def tap_p_torch(u, v, weights, biases, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """P [Q, S, Tq, Ts] computed chunk by chunk (inspection only: no autograd graph)."""
    n_q, tq, h1 = u.shape
    n_s, ts, _ = v.shape
    widths = [h1] + [w.shape[0] for w in weights[:-1]]
    rows = plan_chunk_rows(ts, widths, u.element_size(), budget_bytes)
    u_flat = u.reshape(n_q * tq, h1)
    p = torch.empty(n_q * n_s * tq, ts, dtype=weights[0].dtype, device=u.device)
    for r0 in range(0, p.shape[0], rows):
        r1 = min(p.shape[0], r0 + rows)
        uidx, sidx = _row_indices(r0, r1, n_s, tq, u.device)
        p[r0:r1] = torch.sigmoid(_chunk_forward(u_flat, v, uidx, sidx, weights, biases)[-1])
    return p.reshape(n_q, n_s, tq, ts)
