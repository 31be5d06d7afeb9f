"""Fused Triton TAP kernels (forward + recompute backward) for the paper's 3-hidden-layer MLP.

What is fused.  ``tap.py`` computes U = X W1x^T [Q, Tq, H1], V = Y W1y^T + b1 [S, Ts, H1] and
cos [Q, S, Tq, Ts] with plain GEMMs (cos in any dense layout: the kernels read it, and write dcos,
through its strides).  Here one tile = BI x BJ frame pairs (q, s, i-block, j-block), i.e.
BM = BI*BJ GEMM rows:

    A  = relu(U[q, i, k] + V[s, j, k])      built on the fly, K-block by K-block (never stored)
    z2 = A @ W2^T + b2, h2 = relu(z2)       tl.dot, fp32 accumulator [BM, H2]
    z3 = h2 @ W3^T + b3, h3 = relu(z3)      tl.dot [BM, H3], in registers
    P  = sigmoid(h3 . w4 + b4)              row reduction
    partial[q, s, tile] = sum P * cos       -> scores = partial.sum(-1)  (deterministic)

The A operand is built from the tile's BI rows of U and BJ rows of V, loaded once per K-block and
broadcast to the BI*BJ pair rows in registers (TAP_FAST_UV_LOAD=rows loads one U and one V row per
pair row instead, kept for comparison on a GPU).

No Q*S*T*T*H tensor is ever written.  Backward recomputes the tile (as FlashAttention does) and
pushes the gradient back through layers 4, 3, 2 and the relu(U + V) operand:

    dU[q, i] = sum_{s, j} dz1,   dV[s, j] = sum_{q, i} dz1

Each of dU and dV needs a different owner to be reduced without atomics, so the backward has two
passes (constexpr OWN_U), run side by side in one launch of one program per SM:
  * OWN_U: a work item is (q, i-block, s-group); it loops over the s in its group and all j-blocks,
    accumulates dU into its own slice of dU_part[s-group] and writes dcos; the program also
    accumulates the weight/bias gradients into its own partial slot (persistent programs, each with
    one slot: memory NPROG_U * |weights|, summed afterwards in a fixed order).
  * OWN_V: a work item is (s, j-block, q-group); it only accumulates dV into dV_part[q-group].
plan_backward splits the SMs between the passes (and picks the groups) so that both finish together.
Within an item, tiles go in chunks of BWD_CHUNK, in two phases.  Phase A, tile by tile: recompute
the forward and push the gradient back to dz2 [BM, H2], parked in the program's scratch slot.
Phase B, K-block by K-block: dz1 = (dz2 @ W2) * [z1 > 0] and dW2 += dz2^T h1 for every tile of the
chunk, accumulated in registers, then one read-modify-write of the dU/dV and dW2 partials per chunk
(at paper widths that traffic is 2 MiB per tile; the first version paid it per tile, held W3 in
registers across its loop, and ran its backward at ~20x its forward's time on an H200).
TAP_FAST_BWD_V=regs (a knob, default scratch) runs the OWN_V pass without phase B: each tile keeps
its dz2 in registers and loops over H1 itself, adding each K-block's dz1 row sums to the dV partial
(a [BJ, BK] read-modify-write per K-block and tile instead of re-reading dz2 from scratch per K-block).
All reductions are deterministic (fixed loop order, owned buffers, torch sums of partials).  The
cost is one extra forward+dz1 recompute.  deterministic=False (ATOMIC) avoids it: one pass of OWN_U
items only, whose phase B also adds each tile's dz1, summed over its i rows, to dV with atomics, and
dU to one zeroed buffer likewise (plan_backward_atomic; the weight slots stay program-owned, one per
program); results then differ from run to run in the last bits.

Extra memory: O(G_u * Q * Tq * H1 + G_v * S * Ts * H1 + NPROG_U * |weights| + NPROG * BWD_CHUNK * BM * H2 + Q*S*tiles)
(with TAP_FAST_BWD_V=regs the scratch is (NPROG_U * BWD_CHUNK + NPROG_V) * BM * H2; with ATOMIC,
G_u = G_v = 1 and NPROG_U = NPROG, up to the SM count).

dtypes: fp32 (tf32 tensor cores when torch.backends.cuda.matmul.allow_tf32), fp16, bf16 operands,
always fp32 accumulation.  Under TRITON_INTERPRET=1 (CPU tests) one small config is used; on GPU the
K-blocks (the backward's phase B has its own), warps and stages are autotuned (tile rows BM = BI*BJ
are chosen by a heuristic because they fix the shape of the partial-sum buffers).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .double_backward import TAP_HINT, first_order_only

__all__ = ["fused_supports_widths", "tap_pairs_triton", "tap_p_triton", "MAX_FUSED_WIDTH"]

# h2 [BM, H2] and h3 [BM, H3] live in registers for the whole tile: cap their padded widths.
MAX_FUSED_WIDTH = 256


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_supports_widths(widths) -> bool:
    """widths = [2D, H1, H2, H3, 1]: 3 hidden layers with H2, H3 small enough to stay in registers."""
    return len(widths) == 5 and widths[-1] == 1 and max(widths[2], widths[3]) <= MAX_FUSED_WIDTH


def _next_pow2(n: int) -> int:
    # host code: triton.next_power_of_2 / triton.cdiv are constexpr functions, ~10 us a call in Triton 3.8
    return 1 << max(0, int(n) - 1).bit_length()


def _pad(n: int) -> int:
    return max(16, _next_pow2(n))  # tl.dot needs every dim >= 16


# GEMM rows per tile on a GPU. Forward 128: on an H200 (bench/results/h200_20261127_2/tile_sweep_gpu.json)
# it ran 1.34x faster than 64 at Q = S = 64, T = 64 (59% of dense bf16) and 1.12x at 5w5s, same memory.
# Backward 64: 128 was ~9% faster but doubles the per-program dz2 scratch (5w5s T = 32 peak 171 MiB
# against 138, 8.8x instead of 10.9x below torch.compile's; bench/memory_model.py, exact on that run).
GPU_TILE_ROWS = {"fwd": 128, "bwd": 64}


def _tile_shape(tq: int, ts: int, kernel: str) -> tuple[int, int]:
    """(BI, BJ) for kernel "fwd" or "bwd": GPU_TILE_ROWS GEMM rows per tile on a GPU, 16 under the
    interpreter (tiny test shapes), but never more than a clip pair's frame pairs rounded up to powers
    of two (16 at least, compiled): at T = 8 a 128-row forward tile was half padding, at T = 4 a
    64-row backward tile three quarters.  BJ follows Ts so short clips waste little.  Benchmarking
    knobs (bench/tile_sweep.py), a power of two each: TAP_FAST_TILE_ROWS sets both kernels' row
    count, TAP_FAST_TILE_ROWS_FWD / _BWD one kernel's (the forward's partial sums do not constrain
    the backward's tiles); the same cap applies."""
    name = next((n for n in (f"TAP_FAST_TILE_ROWS_{kernel.upper()}", "TAP_FAST_TILE_ROWS") if os.environ.get(n)), None)
    rows = os.environ[name] if name else (16 if _interpreting() else GPU_TILE_ROWS[kernel])
    least = 1 if _interpreting() else 16  # compiled, tl.dot needs 16 rows at least
    if name and not (str(rows).isdigit() and int(rows) >= least and int(rows) & (int(rows) - 1) == 0):
        raise ValueError(f"{name} must be a power of two >= {least}, got {rows!r}")
    bj = _next_pow2(ts)
    rows = min(int(rows), max(least, _next_pow2(tq) * bj))
    bj = min(bj, rows)
    return max(1, rows // bj), bj


def _uv_broadcast() -> bool:
    """How the K-loop reads U and V (see _h1_block): TAP_FAST_UV_LOAD=rows keeps the row-wise loads, a
    benchmarking knob for comparing the two on a GPU (bench/tile_sweep.py)."""
    mode = os.environ.get("TAP_FAST_UV_LOAD", "broadcast")
    if mode not in ("broadcast", "rows"):
        raise ValueError(f"TAP_FAST_UV_LOAD must be 'broadcast' or 'rows', got {mode!r}")
    return mode == "broadcast"


def _bwd_v_regs() -> bool:
    """How the backward's OWN_V pass forms dz1 (see _bwd_role).  TAP_FAST_BWD_V=scratch (the default)
    parks a chunk's dz2 in the program's scratch slot and re-reads it on every K-block of phase B;
    regs keeps one tile's dz2 in registers and loops over H1 inside the tile, with a read-modify-write
    of the [BJ, BK] dV partial per K-block and tile instead (no dz2 re-reads; the V programs' scratch
    shrinks to the one tile that parks h2).  A knob for comparing the two on a GPU."""
    mode = os.environ.get("TAP_FAST_BWD_V", "scratch")
    if mode not in ("scratch", "regs"):
        raise ValueError(f"TAP_FAST_BWD_V must be 'scratch' or 'regs', got {mode!r}")
    return mode == "regs"


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _configs(kernel: str) -> list:
    """Autotune candidates for kernel "fwd" or "bwd".  Few on purpose: each is compiled once per tile
    shape (5 of them over T = 4..128) and benchmarked once per shape key.  They span the K-block,
    warps and pipeline depths that fit a 64 x 256 fp32 accumulator and its operand stages; the
    backward keeps to 8 warps and BK <= 64, where it does not spill inside its K-loops (4 warps and
    BK = 128 did: bench/compile_report.py compiles them for sm_90 without a GPU)."""
    if _interpreting():  # the backward's phase B on its own K-block, as a GPU candidate may have it
        return [triton.Config({"BK": 16} | ({} if kernel == "fwd" else {"BKB": 32}), num_warps=1, num_stages=1)]
    if os.environ.get("TAP_FAST_AUTOTUNE", "1") == "0":  # one config: quick CUDA test runs (phase B's own K-block)
        return [triton.Config({"BK": 32} | ({} if kernel == "fwd" else {"BKB": 64}), num_warps=8, num_stages=2)]
    if kernel == "fwd":
        return [
            triton.Config({"BK": 32}, num_warps=8, num_stages=4),
            triton.Config({"BK": 64}, num_warps=4, num_stages=3),
            triton.Config({"BK": 64}, num_warps=8, num_stages=3),
            triton.Config({"BK": 128}, num_warps=8, num_stages=2),
        ]
    # BKB: phase B's K-block, apart from phase A's BK (the forward recompute).  Phase B re-reads a
    # tile's dz2 from scratch once per K-block, so a wider BKB halves those bytes (the largest part
    # of a backward tile's L2 traffic at BKB = 32, bench/KERNEL_NOTES.md "v5 timed") while phase A
    # keeps the K-block that suits it.
    return [
        triton.Config({"BK": 32, "BKB": 32}, num_warps=8, num_stages=3),
        triton.Config({"BK": 32, "BKB": 64}, num_warps=8, num_stages=2),
        triton.Config({"BK": 32, "BKB": 64}, num_warps=8, num_stages=3),
        triton.Config({"BK": 64, "BKB": 64}, num_warps=8, num_stages=2),
        triton.Config({"BK": 64, "BKB": 64}, num_warps=8, num_stages=3),
    ]


def _prune_configs(configs, named_args, **kwargs):
    """Drop K-blocks wider than the first hidden width (mostly masked work, and a compilation each), and
    4-warp candidates for tiles of 128 rows or more: compiled for sm_90 at 128 rows the forward's
    spilled 4.5 KB per thread with 945 spill instructions in its K-loop (bench/compile_report.py), a
    compilation and a benchmark each GPU session paid for a candidate that cannot win."""
    rows = kwargs.get("BI", 1) * kwargs.get("BJ", 1)
    h1 = _pad(named_args["H1"])
    kept = [c for c in configs
            if max(c.kwargs["BK"], c.kwargs.get("BKB", 0)) <= h1 and (rows < 128 or c.num_warps >= 8)]
    return kept or configs[:1]


_PRUNE = {"early_config_prune": _prune_configs}
# Set per autotune candidate: whether its K-blocks divide the first hidden width.
_EVEN_K = {"EVEN_K": lambda args: args["H1"] % args["BK"] == 0}
_EVEN_KB = {"EVEN_KB": lambda args: args["H1"] % args["BKB"] == 0}


# ------------------------------------------------------------------------------------------ tile math


@triton.jit
def _tile_rows(q, s, i0, j0, Tq, Ts, BI: tl.constexpr, BJ: tl.constexpr):
    m = tl.arange(0, BI * BJ)
    i = i0 + m // BJ
    j = j0 + m % BJ
    ok = (i < Tq) & (j < Ts)
    return i, j, ok


@triton.jit
def _below(idx, n, ALWAYS: tl.constexpr):
    """idx < n, or all-true when the caller knows it always holds (BK divides H1, H2 is its padded
    width: the paper's widths).  The compiler then drops the bound checks and selects from the
    K-loops, ~15% of their instructions on sm_90."""
    if ALWAYS:
        return tl.full(idx.shape, True, tl.int1)
    return idx < n


@triton.jit
def _h1_block(U, V, q, s, i0, j0, i, j, ok, k0, Tq, Ts, H1,
              BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, UV_BCAST: tl.constexpr, EVEN_K: tl.constexpr):
    """First hidden activation for the tile's rows and K-block k0: (z1 > 0 mask, relu(U_qi + V_sj)) in fp32.
    UV_BCAST loads the tile's BI rows of U and BJ rows of V once and broadcasts them to the BI*BJ
    pair rows in registers; otherwise each pair row loads its own U and V rows (BI*BJ of each, the
    repeats served by the caches).  At paper widths the K-loop streams W2 (32 KiB per K-block) plus
    these rows from L2, so loading only the distinct rows (8.7 KiB instead of 32 KiB of fp32 at
    BI x BJ = 2 x 32) raises the GEMM's FLOPs per L2 byte by ~1.5x."""
    k = k0 + tl.arange(0, BK)
    km = _below(k, H1, EVEN_K)
    if UV_BCAST:
        ii = i0 + tl.arange(0, BI)
        jj = j0 + tl.arange(0, BJ)
        u = tl.load(U + (q * Tq + ii)[:, None] * H1 + k[None, :], mask=(ii < Tq)[:, None] & km[None, :], other=0.0)
        v = tl.load(V + (s * Ts + jj)[:, None] * H1 + k[None, :], mask=(jj < Ts)[:, None] & km[None, :], other=0.0)
        # Padding rows (i >= Tq or j >= Ts) get finite values here; nothing downstream reads them
        # (the score sum and P store mask them, and their dz4 is zero).
        z1 = tl.reshape(u.to(tl.float32)[:, None, :] + v.to(tl.float32)[None, :, :], (BI * BJ, BK))
    else:
        msk = ok[:, None] & km[None, :]
        u = tl.load(U + (q * Tq + i)[:, None] * H1 + k[None, :], mask=msk, other=0.0).to(tl.float32)
        v = tl.load(V + (s * Ts + j)[:, None] * H1 + k[None, :], mask=msk, other=0.0).to(tl.float32)
        z1 = u + v
    return z1 > 0, tl.maximum(z1, 0.0)


@triton.jit
def _tile_forward(U, V, W2, B2, W3, B3, W4, B4, q, s, i0, j0, i, j, ok, Tq, Ts, H1, H2, H3,
                  BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, BH2: tl.constexpr,
                  BH3: tl.constexpr, DOT_PREC: tl.constexpr, UV_BCAST: tl.constexpr, EVEN_K: tl.constexpr,
                  FULL_H2: tl.constexpr):
    """Layers 2..4 of the tile: returns h2 [BM, BH2] in the operand dtype (the layer-3 GEMM's input),
    h3 [BM, BH3] fp32 and P [BM].  Only post-relu values are returned: relu's mask is h > 0, and
    dropping z2 keeps one [BM, BH2] tile fewer live in the backward (which spilled with both)."""
    n2 = tl.arange(0, BH2)
    n3 = tl.arange(0, BH3)
    acc = tl.zeros((BI * BJ, BH2), dtype=tl.float32)
    for k0 in range(0, H1, BK):
        _, h1 = _h1_block(U, V, q, s, i0, j0, i, j, ok, k0, Tq, Ts, H1, BI, BJ, BK, UV_BCAST, EVEN_K)
        k = k0 + tl.arange(0, BK)
        # W2^T block [BK, BH2]: W2 is [H2, H1] row-major.
        w2t = tl.load(W2 + n2[None, :] * H1 + k[:, None],
                      mask=_below(n2, H2, FULL_H2)[None, :] & _below(k, H1, EVEN_K)[:, None], other=0.0)
        acc = tl.dot(h1.to(w2t.dtype), w2t, acc, input_precision=DOT_PREC)
    b2 = tl.load(B2 + n2, mask=n2 < H2, other=0.0).to(tl.float32)
    w3t = tl.load(W3 + n3[None, :] * H2 + n2[:, None], mask=(n3 < H3)[None, :] & (n2 < H2)[:, None], other=0.0)
    h2 = tl.maximum(acc + b2[None, :], 0.0).to(w3t.dtype)
    z3 = tl.dot(h2, w3t, input_precision=DOT_PREC)
    z3 = z3 + tl.load(B3 + n3, mask=n3 < H3, other=0.0).to(tl.float32)[None, :]
    h3 = tl.maximum(z3, 0.0)
    w4 = tl.load(W4 + n3, mask=n3 < H3, other=0.0).to(tl.float32)
    z4 = tl.sum(h3 * w4[None, :], axis=1) + tl.load(B4).to(tl.float32)
    p = tl.sigmoid(z4)
    return h2, h3, p


# ------------------------------------------------------------------------------------------ forward


@triton.autotune(configs=_configs("fwd"), key=["H1", "H2", "H3", "Tq", "Ts", "BI", "BJ", "UV_BCAST"],
                 prune_configs_by=_PRUNE)
@triton.heuristics(_EVEN_K)
@triton.jit
def _tap_fwd_kernel(U, V, COS, W2, B2, W3, B3, W4, B4, PARTIAL, P_OUT,
                    S, Tq, Ts, H1, H2, H3, n_jb, n_tiles, cs_q, cs_s, cs_i, cs_j,
                    STORE_P: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                    BH2: tl.constexpr, BH3: tl.constexpr, DOT_PREC: tl.constexpr, UV_BCAST: tl.constexpr,
                    EVEN_K: tl.constexpr, FULL_H2: tl.constexpr):
    # One grid axis: CUDA caps axes 1 and 2 at 65535 programs, which a (Q S) axis passed at Q = S = 256
    # ("invalid argument" at launch); the tiles of one clip pair still run next to each other.
    pid = tl.program_id(0)
    pid_t = pid % n_tiles
    pid_qs = pid // n_tiles
    q = pid_qs // S
    s = pid_qs % S
    i0 = (pid_t // n_jb) * BI
    j0 = (pid_t % n_jb) * BJ
    i, j, ok = _tile_rows(q, s, i0, j0, Tq, Ts, BI, BJ)
    _, _, p = _tile_forward(U, V, W2, B2, W3, B3, W4, B4, q, s, i0, j0, i, j, ok, Tq, Ts, H1, H2, H3,
                            BI, BJ, BK, BH2, BH3, DOT_PREC, UV_BCAST, EVEN_K, FULL_H2)
    c = tl.load(COS + q * cs_q + s * cs_s + i * cs_i + j * cs_j, mask=ok, other=0.0).to(tl.float32)
    # PARTIAL is [Q S, tiles] fp32, or the scores [Q, S] in the output dtype when a pair is one tile
    total = tl.sum(tl.where(ok, p * c, 0.0), axis=0)
    tl.store(PARTIAL + pid_qs * n_tiles + pid_t, total.to(PARTIAL.dtype.element_ty))
    if STORE_P:
        tl.store(P_OUT + (pid_qs * Tq + i) * Ts + j, p.to(P_OUT.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------------------------------ backward


@triton.jit
def _add_to(ptr, value, mask, keep):
    """ptr[mask] += value, a read-modify-write of a slot only this program writes (deterministic); when
    keep is false this is the slot's first write and stores value (the buffers start unset: no zero
    fill, a launch and ~30 us of memset before the backward kernel at 5w5s T = 32)."""
    tl.store(ptr, tl.load(ptr, mask=mask & keep, other=0.0) + value, mask=mask)


@triton.jit
def _other_side(n_ib, n_jb, Q, S, OWN_U: tl.constexpr):
    """(blocks per own index, blocks per other index, other indices) of a pass.  OWN_U: own = q over
    i-blocks, other = s over j-blocks; OWN_V swaps the roles."""
    if OWN_U:
        return n_ib, n_jb, S
    return n_jb, n_ib, Q


@triton.jit
def _item_tiles(item, per_group, n_ib, n_jb, Q, S, OWN_U: tl.constexpr):
    """How many tiles work item ``item`` has: per_group, fewer in the last group."""
    _, n_other_blocks, n_other = _other_side(n_ib, n_jb, Q, S, OWN_U)
    n_groups = (n_other * n_other_blocks + per_group - 1) // per_group
    return tl.minimum(per_group, n_other * n_other_blocks - (item % n_groups) * per_group)


@triton.jit
def _tile_coords(item, t, per_group, n_ib, n_jb, Q, S, OWN_U: tl.constexpr):
    """(q, s, i-block, j-block, group) of inner tile t of a work item.  An item is (own index, own
    block, group); a group is per_group consecutive (other index, other block) pairs, so items can be
    as fine as one tile whatever the clip length."""
    n_own_blocks, n_other_blocks, n_other = _other_side(n_ib, n_jb, Q, S, OWN_U)
    n_groups = (n_other * n_other_blocks + per_group - 1) // per_group
    g = item % n_groups
    own_block = item // n_groups
    own, ob = own_block // n_own_blocks, own_block % n_own_blocks
    flat = g * per_group + t
    other, xb = flat // n_other_blocks, flat % n_other_blocks
    if OWN_U:
        return own, other, ob, xb, g
    return other, own, xb, ob, g


@triton.jit
def _bwd_role(U, V, COS, GS, W2, B2, W3, B3, W4, B4,
              DCOS, DU_PART, DV_PART, DW2_P, DB2_P, DW3_P, DB3_P, DW4_P, DB4_P, DZ2_SCRATCH,
              Q, S, Tq, Ts, H1, H2, H3, n_ib, n_jb, per_group, n_items, pid, NPROG, slot0, CHUNK,
              cs_q, cs_s, cs_i, cs_j, gs_q, gs_s, WROW,
              OWN_U: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
              BKB: tl.constexpr, EVEN_KB: tl.constexpr,
              BH2: tl.constexpr, BH3: tl.constexpr, DOT_PREC: tl.constexpr, UV_BCAST: tl.constexpr,
              EVEN_K: tl.constexpr, FULL_H2: tl.constexpr, REGS: tl.constexpr, ATOMIC: tl.constexpr):
    """One persistent program of one pass (OWN_U or OWN_V): rank ``pid`` of the pass's NPROG programs
    takes items pid, pid + NPROG, ...; its scratch slot is the tiles slot0, slot0 + 1, ... (CHUNK of
    them, 1 with REGS), disjoint over both passes.  REGS (OWN_V only, TAP_FAST_BWD_V=regs): each tile
    forms its dz1 right after phase A from dz2 held in registers, K-block by K-block, and adds it to
    the dV partial per K-block; no phase B, so the chunk is one tile and dz2 never goes to scratch.
    ATOMIC (OWN_U only, deterministic=False): the one pass there is; phase B also reduces each tile's
    dz1 over its i rows and adds it to dV with atomics, and dU goes to one zeroed buffer with atomics
    (no groups), so no OWN_V pass recomputes the forward only to own dV."""
    BM: tl.constexpr = BI * BJ
    n2 = tl.arange(0, BH2)
    n3 = tl.arange(0, BH3)
    m2 = _below(n2, H2, FULL_H2)
    m3 = n3 < H3
    rows = tl.arange(0, BM)
    if REGS:
        step = 1
    else:
        step = CHUNK
    for item in range(pid, n_items, NPROG):
        # OWN_U: item = (q, i-block, group of (s, j-block) pairs); OWN_V: (s, j-block, group of (q, i-block))
        n_inner = _item_tiles(item, per_group, n_ib, n_jb, Q, S, OWN_U)
        for c0 in range(0, n_inner, step):
            c1 = tl.minimum(c0 + step, n_inner)
            # Phase A, tile by tile: recompute the forward, push the gradient back to dz2 (layers 4, 3
            # and their small weight grads), park dz2 [BM, H2] in this program's scratch slot.
            for t in range(c0, c1):
                q, s, ib, jb, g = _tile_coords(item, t, per_group, n_ib, n_jb, Q, S, OWN_U)
                i, j, ok = _tile_rows(q, s, ib * BI, jb * BJ, Tq, Ts, BI, BJ)
                h2, h3, p = _tile_forward(U, V, W2, B2, W3, B3, W4, B4, q, s, ib * BI, jb * BJ, i, j, ok,
                                          Tq, Ts, H1, H2, H3, BI, BJ, BK, BH2, BH3, DOT_PREC, UV_BCAST, EVEN_K,
                                          FULL_H2)
                # h2 waits in the tile's scratch slot while dz3 is formed, then is read back in the
                # GEMM accumulator's layout (held across, it spilled); dz2 later overwrites it.
                slot = (slot0 + (t - c0)) * BM + rows
                slot_ptr = DZ2_SCRATCH + slot[:, None] * BH2 + n2[None, :]
                tl.store(slot_ptr, h2.to(DZ2_SCRATCH.dtype.element_ty))
                pair = q * cs_q + s * cs_s + i * cs_i + j * cs_j  # DCOS has COS's strides
                c = tl.load(COS + pair, mask=ok, other=0.0).to(tl.float32)
                gs = tl.load(GS + q * gs_q + s * gs_s).to(tl.float32)
                # d score / d logit = g * cos * P (1 - P); zero on padding rows so nothing below leaks.
                dz4 = tl.where(ok, gs * c * p * (1.0 - p), 0.0)
                w4 = tl.load(W4 + n3, mask=m3, other=0.0).to(tl.float32)
                dz3 = tl.where(h3 > 0, dz4[:, None] * w4[None, :], 0.0)  # [BM, BH3]
                # the program's first tile writes its weight slots first (they start unset)
                keep_w = (item != pid) | (t != 0)
                if OWN_U:
                    tl.store(DCOS + pair, (gs * p).to(DCOS.dtype.element_ty), mask=ok)
                    # The small weight grads go to the program's slots per tile (a few KiB): held in
                    # registers across the loop, their slice layouts cost ~60 registers and spilled.
                    db4 = tl.load(DB4_P + pid * WROW, mask=keep_w, other=0.0)
                    tl.store(DB4_P + pid * WROW, db4 + tl.sum(dz4, axis=0))
                    _add_to(DW4_P + pid * WROW + n3, tl.sum(dz4[:, None] * h3, axis=0), m3, keep_w)
                    _add_to(DB3_P + pid * WROW + n3, tl.sum(dz3, axis=0), m3, keep_w)
                tl.debug_barrier()  # h2, stored by all threads, is read back in another layout
                h2 = tl.load(slot_ptr)
                if OWN_U:
                    # dW3 slot [H3, H2] += dz3^T h2, accumulated by the GEMM itself (program-owned
                    # slot: plain read-modify-write), before dz2 exists, so fewer tiles are live.
                    w3_ptr = DW3_P + pid * WROW + n3[:, None] * H2 + n2[None, :]
                    w3_msk = m3[:, None] & m2[None, :]
                    dw3 = tl.load(w3_ptr, mask=w3_msk & keep_w, other=0.0)
                    dw3 = tl.dot(tl.trans(dz3.to(h2.dtype)), h2, dw3, input_precision=DOT_PREC)
                    tl.store(w3_ptr, dw3, mask=w3_msk)
                # W3 [BH3, BH2] (row-major [H3, H2]) for dz2 = dz3 @ W3; loaded per tile (L1/L2) rather
                # than held in registers across the loop.
                w3 = tl.load(W3 + n3[:, None] * H2 + n2[None, :], mask=m3[:, None] & m2[None, :], other=0.0)
                dz2 = tl.dot(dz3.to(w3.dtype), w3, input_precision=DOT_PREC)
                dz2 = tl.where(h2 > 0, dz2, 0.0)  # [BM, BH2]
                if OWN_U:
                    _add_to(DB2_P + pid * WROW + n2, tl.sum(dz2, axis=0), m2, keep_w)
                if REGS:
                    # dz1 = (dz2 @ W2) * [z1 > 0] for this tile alone, K-block by K-block: dz2 (rounded to
                    # the operand dtype, as the scratch would store it) stays in registers as the A
                    # operand, and each K-block's [BJ, BKB] sum goes straight to the dV partial (its rows
                    # are this item's; the end-of-chunk barrier orders the next tile's read after it).
                    dz2 = dz2.to(W2.dtype.element_ty)
                    jj = jb * BJ + tl.arange(0, BJ)
                    dv_rows = (g * S + s) * Ts + jj
                    for k0 in range(0, H1, BKB):
                        k = k0 + tl.arange(0, BKB)
                        km = _below(k, H1, EVEN_KB)
                        w2 = tl.load(W2 + n2[:, None] * H1 + k[None, :], mask=m2[:, None] & km[None, :], other=0.0)
                        pos1, _ = _h1_block(U, V, q, s, ib * BI, jb * BJ, i, j, ok, k0, Tq, Ts, H1,
                                            BI, BJ, BKB, UV_BCAST, EVEN_KB)
                        dz1 = tl.where(pos1, tl.dot(dz2, w2, input_precision=DOT_PREC), 0.0)  # [BM, BKB]
                        acc = tl.sum(tl.reshape(dz1, (BI, BJ, BKB)), axis=0)  # rows are i-major
                        _add_to(DV_PART + dv_rows[:, None] * H1 + k[None, :], acc, (jj < Ts)[:, None] & km[None, :],
                                t != 0)  # the item's first tile writes its dV rows first
                else:
                    tl.debug_barrier()  # every thread has read its h2 before dz2 overwrites the slot
                    tl.store(slot_ptr, dz2.to(DZ2_SCRATCH.dtype.element_ty))
            if not REGS:
                tl.debug_barrier()  # the chunk's dz2 rows, written by all threads, are read back below
                # Phase B, K-block by K-block over the whole chunk: dz1 = (dz2 @ W2) * [z1 > 0] reduced into
                # the item's dU (or dV) rows, and dW2 += dz2^T h1, both in registers across the chunk's
                # tiles: one read-modify-write of the partial buffers per chunk instead of per tile.
                for k0 in range(0, H1, BKB):
                    k = k0 + tl.arange(0, BKB)
                    km = _below(k, H1, EVEN_KB)
                    w2 = tl.load(W2 + n2[:, None] * H1 + k[None, :], mask=m2[:, None] & km[None, :], other=0.0)
                    acc_w2 = tl.zeros((BH2, BKB), dtype=tl.float32)
                    # Every tile of an item maps its rows to the same own rows (i for OWN_U, j for OWN_V),
                    # so dz1 is summed over the chunk's tiles first and reduced to those rows once per
                    # K-block: the row reduction (warp shuffles, shared memory) was the loop's largest cost.
                    acc_rows = tl.zeros((BM, BKB), dtype=tl.float32)
                    for t in range(c0, c1):
                        q, s, ib, jb, _ = _tile_coords(item, t, per_group, n_ib, n_jb, Q, S, OWN_U)
                        i, j, ok = _tile_rows(q, s, ib * BI, jb * BJ, Tq, Ts, BI, BJ)
                        pos1, h1 = _h1_block(U, V, q, s, ib * BI, jb * BJ, i, j, ok, k0, Tq, Ts, H1,
                                             BI, BJ, BKB, UV_BCAST, EVEN_KB)
                        slot = (slot0 + (t - c0)) * BM + rows
                        dz2 = tl.load(DZ2_SCRATCH + slot[:, None] * BH2 + n2[None, :])
                        dz1 = tl.dot(dz2, w2, input_precision=DOT_PREC)  # [BM, BKB]
                        if ATOMIC:
                            # this tile's dV rows (s, j-block) are other items' too: an atomic add of
                            # dz1 summed over the tile's i rows (rows are i-major)
                            dz1 = tl.where(pos1, dz1, 0.0)
                            acc_rows += dz1
                            jj = jb * BJ + tl.arange(0, BJ)
                            tl.atomic_add(DV_PART + ((s * Ts + jj)[:, None] * H1 + k[None, :]),
                                          tl.sum(tl.reshape(dz1, (BI, BJ, BKB)), axis=0),
                                          mask=(jj < Ts)[:, None] & km[None, :], sem="relaxed")
                        else:
                            acc_rows += tl.where(pos1, dz1, 0.0)
                        if OWN_U:
                            acc_w2 = tl.dot(tl.trans(dz2), h1.to(w2.dtype), acc_w2, input_precision=DOT_PREC)
                    q, s, ib, jb, g = _tile_coords(item, c0, per_group, n_ib, n_jb, Q, S, OWN_U)
                    if OWN_U:
                        acc = tl.sum(tl.reshape(acc_rows, (BI, BJ, BKB)), axis=1)  # rows are i-major
                    else:
                        acc = tl.sum(tl.reshape(acc_rows, (BI, BJ, BKB)), axis=0)
                    if OWN_U:
                        w2_ptr = DW2_P + pid * WROW + n2[:, None] * H1 + k[None, :]
                        w2_msk = m2[:, None] & km[None, :]
                        _add_to(w2_ptr, acc_w2, w2_msk, (item != pid) | (c0 != 0))  # first chunk: first write
                        ii = ib * BI + tl.arange(0, BI)
                        ptr = DU_PART + ((g * Q + q) * Tq + ii)[:, None] * H1 + k[None, :]
                        msk = (ii < Tq)[:, None] & km[None, :]
                    else:
                        jj = jb * BJ + tl.arange(0, BJ)
                        ptr = DV_PART + ((g * S + s) * Ts + jj)[:, None] * H1 + k[None, :]
                        msk = (jj < Ts)[:, None] & km[None, :]
                    if ATOMIC:  # one dU buffer, zeroed: the q's items of every group add to its rows
                        tl.atomic_add(DU_PART + (q * Tq + ii)[:, None] * H1 + k[None, :], acc, mask=msk,
                                      sem="relaxed")
                    else:
                        _add_to(ptr, acc, msk, c0 != 0)  # the item's first chunk writes its rows first
            tl.debug_barrier()  # the next chunk overwrites the scratch slot (REGS: and adds to the same dV rows)


@triton.autotune(configs=_configs("bwd"), key=["H1", "H2", "H3", "Tq", "Ts", "BI", "BJ", "UV_BCAST", "V_REGS",
                                                "ATOMIC"],
                 prune_configs_by=_PRUNE)
@triton.heuristics(_EVEN_K | _EVEN_KB)
@triton.jit
def _tap_bwd_kernel(U, V, COS, GS, W2, B2, W3, B3, W4, B4,
                    DCOS, DU_PART, DV_PART, DW2_P, DB2_P, DW3_P, DB3_P, DW4_P, DB4_P, DZ2_SCRATCH,
                    Q, S, Tq, Ts, H1, H2, H3, n_ib, n_jb, per_u, items_u, nprog_u, per_v, items_v, nprog_v, CHUNK,
                    cs_q, cs_s, cs_i, cs_j, gs_q, gs_s, WROW, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                    BKB: tl.constexpr, EVEN_KB: tl.constexpr,
                    BH2: tl.constexpr, BH3: tl.constexpr, DOT_PREC: tl.constexpr, UV_BCAST: tl.constexpr,
                    EVEN_K: tl.constexpr, FULL_H2: tl.constexpr, V_REGS: tl.constexpr, ATOMIC: tl.constexpr):
    """Both backward passes in one launch: programs [0, nprog_u) run OWN_U, the rest OWN_V, side by
    side.  Only the OWN_U programs own weight-gradient slots, so the slots (1 MiB each at the paper's
    widths) number nprog_u, not the SM count, and neither pass waits for the other's tail.  V_REGS
    (TAP_FAST_BWD_V=regs) runs the OWN_V pass without phase B; its programs' scratch slots are then
    one tile each, after the OWN_U programs' CHUNK tiles.  ATOMIC (deterministic=False): every
    program runs OWN_U, adding dU and dV with atomics (nprog_v is 0)."""
    pid = tl.program_id(0)
    if ATOMIC:
        _bwd_role(U, V, COS, GS, W2, B2, W3, B3, W4, B4,
                  DCOS, DU_PART, DV_PART, DW2_P, DB2_P, DW3_P, DB3_P, DW4_P, DB4_P, DZ2_SCRATCH,
                  Q, S, Tq, Ts, H1, H2, H3, n_ib, n_jb, per_u, items_u, pid, nprog_u, pid * CHUNK, CHUNK,
                  cs_q, cs_s, cs_i, cs_j, gs_q, gs_s, WROW,
                  True, BI, BJ, BK, BKB, EVEN_KB, BH2, BH3, DOT_PREC, UV_BCAST, EVEN_K, FULL_H2, False, True)
    elif pid < nprog_u:
        _bwd_role(U, V, COS, GS, W2, B2, W3, B3, W4, B4,
                  DCOS, DU_PART, DV_PART, DW2_P, DB2_P, DW3_P, DB3_P, DW4_P, DB4_P, DZ2_SCRATCH,
                  Q, S, Tq, Ts, H1, H2, H3, n_ib, n_jb, per_u, items_u, pid, nprog_u, pid * CHUNK, CHUNK,
                  cs_q, cs_s, cs_i, cs_j, gs_q, gs_s, WROW,
                  True, BI, BJ, BK, BKB, EVEN_KB, BH2, BH3, DOT_PREC, UV_BCAST, EVEN_K, FULL_H2, False, False)
    else:
        if V_REGS:
            slot0 = nprog_u * CHUNK + (pid - nprog_u)
        else:
            slot0 = pid * CHUNK
        _bwd_role(U, V, COS, GS, W2, B2, W3, B3, W4, B4,
                  DCOS, DU_PART, DV_PART, DW2_P, DB2_P, DW3_P, DB3_P, DW4_P, DB4_P, DZ2_SCRATCH,
                  Q, S, Tq, Ts, H1, H2, H3, n_ib, n_jb, per_v, items_v, pid - nprog_u, nprog_v, slot0, CHUNK,
                  cs_q, cs_s, cs_i, cs_j, gs_q, gs_s, WROW,
                  False, BI, BJ, BK, BKB, EVEN_KB, BH2, BH3, DOT_PREC, UV_BCAST, EVEN_K, FULL_H2, V_REGS, False)


# ------------------------------------------------------------------------------------------ launchers


# Set by compile_only(): launches become compilations, recorded here as
# (kernel name, triton.Config, launch keyword arguments, CompiledKernel).
_compiled: list | None = None


@contextlib.contextmanager
def compile_only():
    """Within this context the fused ops launch nothing: every call compiles each autotune candidate
    of its kernels for exactly the arguments it was given (into Triton's on-disk cache, so a later
    real call of the same shapes loads instead of compiling) and leaves its outputs unwritten.
    Yields the list that collects (kernel name, triton.Config, launch kwargs, CompiledKernel).

    Uses: bench/precompile.py fills the cache from many processes at once on a lent GPU, where
    autotuning compiles one candidate at a time; bench/compile_report.py compiles for sm_90 on a
    machine without a GPU."""
    global _compiled
    saved, _compiled = _compiled, []
    try:
        yield _compiled
    finally:
        _compiled = saved


def _launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs), or its compilation only inside compile_only()."""
    if _compiled is None:
        kernel[grid](*args, **kwargs)
        return
    kernel.nargs = dict(zip(kernel.arg_names, args))  # what Autotuner.warmup sets before pruning
    configs = kernel.prune_configs(kwargs)
    kernel.nargs = None
    for config in configs:
        compiled = kernel.fn.warmup(*args, grid=grid, **kwargs, **config.all_kwargs())
        _compiled.append((kernel.base_fn.__name__, config, kwargs, compiled))


def precompile(n_q: int, n_s: int, tq: int, ts: int, hidden: tuple[int, int, int], dtype: torch.dtype,
               device="cuda", deterministic: bool | None = None) -> list:
    """Compile, without running, every autotune candidate of the forward and both backward passes for
    the fused ops' arguments at these sizes (hidden = (H1, H2, H3); U, V in fp32 and the rest in
    dtype, as tap.py passes them).  Returns [(label, triton.Config, launch kwargs, CompiledKernel)],
    label fwd or bwd.  Run it with the device (and environment knobs) of the real calls:
    the work split, hence the kernels' integer arguments, depends on the device's SM count.
    deterministic: the backward's kind (None: as tap_scores would choose it, TAP_FAST_DETERMINISTIC)."""
    from .tap import resolve_deterministic  # (tap.py imports this module lazily: no cycle at import)

    deterministic = resolve_deterministic(deterministic)
    h1, h2, h3 = hidden
    u = torch.zeros(n_q, tq, h1, device=device, requires_grad=True)
    v = torch.zeros(n_s, ts, h1, device=device, requires_grad=True)
    cos = torch.zeros(n_q, n_s, tq, ts, dtype=dtype, device=device, requires_grad=True)
    weights = [torch.zeros(o, i, dtype=dtype, device=device, requires_grad=True) for o, i in ((h2, h1), (h3, h2), (1, h3))]
    biases = [torch.zeros(o, dtype=dtype, device=device, requires_grad=True) for o in (h2, h3, 1)]
    with compile_only() as compiled:
        scores = tap_pairs_triton(u, v, cos, weights, biases, deterministic)
        torch.autograd.grad(scores.sum(), [u, v, cos, *weights, *biases])
    return [("fwd" if "fwd" in name else "bwd", config, kwargs, kernel) for name, config, kwargs, kernel in compiled]


def _new_output(shape, dtype, device, stride=None) -> torch.Tensor:
    """Allocation of kernel outputs and accumulators that a kernel writes before it reads them (every
    element used), contiguous or with the given strides.  Tests swap it for a NaN-filled allocation to
    prove that."""
    if stride is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty_strided(shape, stride, dtype=dtype, device=device)


def _dense(t: torch.Tensor) -> bool:
    """Whether t's elements cover a block of memory exactly once, in any order of its dimensions: the
    kernels then read it through its strides, and an output allocated with the same strides is written
    without overlap."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _operands(u, v, cos, w2, b2, w3, b3, w4, b4) -> list[torch.Tensor]:
    """The kernels' operands: U, V and the weights contiguous (no-ops when they already are); cos in any
    dense layout, read through its strides.  The prelude's cos is a permuted view of its GEMM's
    [Q Tq, S Ts] result: a copy into [Q, S, Tq, Ts] order cost a launch before the forward kernel, and
    dcos, written in the same layout, reaches the prelude's backward as a view of that GEMM's shape."""
    return [u.contiguous(), v.contiguous(), _cos_operand(cos), *(t.contiguous() for t in (w2, b2, w3, b3, w4, b4))]


def _cos_operand(cos: torch.Tensor) -> torch.Tensor:
    return cos if _dense(cos) else cos.contiguous()


def _new_dcos(cos: torch.Tensor) -> torch.Tensor:
    """dcos, written by the backward kernel through cos's strides (cos is dense: _operands)."""
    return _new_output(cos.shape, cos.dtype, cos.device, cos.stride())


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _meta(u, v, w2, w3, kernel: str):
    n_q, tq, h1 = u.shape
    n_s, ts, _ = v.shape
    bi, bj = _tile_shape(tq, ts, kernel)
    return dict(n_q=n_q, n_s=n_s, tq=tq, ts=ts, h1=h1, h2=w2.shape[0], h3=w3.shape[0], bi=bi, bj=bj,
                n_ib=-(-tq // bi), n_jb=-(-ts // bj))


def _tile_constexprs(m: dict, dtype: torch.dtype) -> dict:
    """The compile-time arguments the forward and backward kernels share."""
    return dict(BI=m["bi"], BJ=m["bj"], BH2=_pad(m["h2"]), BH3=_pad(m["h3"]), DOT_PREC=_dot_precision(dtype),
                UV_BCAST=_uv_broadcast(), FULL_H2=_pad(m["h2"]) == m["h2"])


def _forward(u, v, cos, w2, b2, w3, b3, w4, b4, store_p: bool):
    u, v, cos, w2, b2, w3, b3, w4, b4 = _operands(u, v, cos, w2, b2, w3, b3, w4, b4)
    m = _meta(u, v, w2, w3, "fwd")
    n_tiles = m["n_ib"] * m["n_jb"]
    # One tile per clip pair (T <= 8 at the default tiles): the kernel writes the scores themselves,
    # in the output dtype; otherwise per-tile partial sums in fp32, summed here in a fixed order.
    single = n_tiles == 1
    partial = _new_output((m["n_q"], m["n_s"]) if single else (m["n_q"] * m["n_s"], n_tiles),
                          w2.dtype if single else torch.float32, u.device)
    p_out = _new_output((m["n_q"], m["n_s"], m["tq"], m["ts"]) if store_p else (1,), w2.dtype, u.device)
    _launch(_tap_fwd_kernel, (n_tiles * m["n_q"] * m["n_s"],),
        u, v, cos, w2, b2, w3, b3, w4, b4, partial, p_out,
        m["n_s"], m["tq"], m["ts"], m["h1"], m["h2"], m["h3"], m["n_jb"], n_tiles, *cos.stride(),
        STORE_P=store_p, **_tile_constexprs(m, w2.dtype),
    )
    if single:
        return partial, p_out
    return partial.sum(-1).reshape(m["n_q"], m["n_s"]).to(w2.dtype), p_out


# Tiles per phase-B sweep of the backward: dz2 of CHUNK tiles (CHUNK x BM x H2 in the operand dtype,
# 256 KiB at BM = 64, H2 = 256, bf16) is parked per program; small enough to stay in L2 for all
# programs, large enough to divide the partial buffers' read-modify-write traffic by CHUNK.
BWD_CHUNK = 8
# Most groups either pass splits its other side into (each group costs a dU or dV partial buffer).
MAX_BWD_GROUPS = 8
# GEMM work per tile of an OWN_U program over an OWN_V one: OWN_U recomputes the forward and forms
# dz2, dW3, dz1 and dW2 (3 x (H1 H2 + H2 H3) per row), OWN_V the forward, dz2 and dz1 (2 x).
BWD_COST_U_OVER_V = 1.5


class BackwardPlan(NamedTuple):
    """How the backward's work is cut, per pass: the groups the other side's (index, block) pairs are cut
    into (one dU or dV partial buffer each), tiles per group (per work item) and programs."""
    groups_u: int
    per_u: int
    nprog_u: int
    groups_v: int
    per_v: int
    nprog_v: int

    def items(self, n_q: int, n_s: int, n_ib: int, n_jb: int) -> tuple[int, int]:
        return n_q * n_ib * self.groups_u, n_s * n_jb * self.groups_v


def _group_options(n_other: int, fixed, most: int = MAX_BWD_GROUPS) -> list[tuple[int, int]]:
    """Distinct (groups, members per group) splits of n_other (index, block) pairs into at most
    ``most`` groups, or the one asked for."""
    wanted = [fixed] if fixed is not None else range(1, min(n_other, most) + 1)
    out = {}
    for g in wanted:
        per = math.ceil(n_other / max(1, min(int(g), n_other)))
        out[math.ceil(n_other / per)] = per
    return sorted(out.items())


@functools.lru_cache(maxsize=256)
def plan_backward(n_q: int, n_s: int, n_ib: int, n_jb: int, sms: int, cost_ratio: float = BWD_COST_U_OVER_V,
                  groups_u=None, groups_v=None, nprog=None, sizes: tuple[int, int, int] = (1, 1, 1)) -> BackwardPlan:
    """Choose the groups and how many of the ``sms`` persistent programs each pass gets, so that the two
    passes, running side by side in one launch, finish together.  A pass's time is modelled as its
    busiest program's tiles (items go round-robin; every tile of a pass costs the same) times its cost
    per tile; among plans within 3% of the fastest, the one needing the least memory wins: sizes =
    (bytes of a dU group's partial buffer, of a dV group's, of an OWN_U program's weight slots).
    groups_u/groups_v/nprog pin those choices (tests)."""
    sms = max(sms, 2)  # one program per pass at least
    best = []
    for gu, tiles_u in _group_options(n_s * n_jb, groups_u):
        items_u = n_q * n_ib * gu
        for gv, tiles_v in _group_options(n_q * n_ib, groups_v):
            items_v = n_s * n_jb * gv
            if nprog is not None:
                splits = [(min(items_u, nprog), min(items_v, nprog))]
            else:
                splits = [(nu, min(items_v, sms - nu)) for nu in range(1, min(items_u, sms - 1) + 1)]
            for nu, nv in splits:
                time = max(cost_ratio * math.ceil(items_u / nu) * tiles_u, math.ceil(items_v / nv) * tiles_v)
                memory = gu * sizes[0] + gv * sizes[1] + nu * sizes[2]
                best.append((time, memory, nu + nv, BackwardPlan(gu, tiles_u, nu, gv, tiles_v, nv)))
    fastest = min(b[0] for b in best)
    return min((b for b in best if b[0] <= 1.03 * fastest), key=lambda b: b[1:3])[3]


# A phase-B chunk's fixed cost in tiles: its read-modify-write of the program's dW2 slot (as many bytes
# as a tile's dz2 re-reads at BKB = 32) and its dU rows; an estimate (bench/KERNEL_NOTES.md, "v7").
ATOMIC_CHUNK_COST = 0.5


@functools.lru_cache(maxsize=256)
def plan_backward_atomic(n_q: int, n_s: int, n_ib: int, n_jb: int, sms: int, chunk: int = BWD_CHUNK,
                         groups_u=None, nprog=None) -> BackwardPlan:
    """The work split of the atomic backward (deterministic=False): one pass, OWN_U items (q, i-block,
    group of (s, j-block) pairs) on up to ``sms`` programs.  Groups cost no memory there (dU and dV are
    added with atomics), so they are as fine as balancing the programs asks: the busiest program's
    tiles plus ATOMIC_CHUNK_COST per phase-B chunk, least; among ties the fewest programs (each owns a
    weight slot), then the largest groups.  groups_u/nprog pin those choices (tests)."""
    best = None
    for g, per in _group_options(n_s * n_jb, groups_u, most=n_s * n_jb):
        items = n_q * n_ib * g
        programs = min(items, nprog if nprog is not None else max(sms, 1))
        rounds = math.ceil(items / programs)
        cost = rounds * (per + math.ceil(per / chunk) * ATOMIC_CHUNK_COST)
        key = (cost, programs, -per)
        if best is None or key < best[0]:
            best = (key, BackwardPlan(g, per, programs, 0, 0, 0))
    return best[1]


def _bwd_cost_ratio() -> float:
    """TAP_FAST_BWD_COST_RATIO overrides BWD_COST_U_OVER_V: a knob for balancing the passes on a GPU."""
    return float(os.environ.get("TAP_FAST_BWD_COST_RATIO", BWD_COST_U_OVER_V))


def _carved_f32(device, *shapes) -> list[torch.Tensor]:
    """Contiguous fp32 tensors of these shapes carved from one allocation, left unset: the backward
    kernel writes each element first and adds to it after (_add_to's keep flag), so no zero fill
    runs before it.  Allocated through _new_output, which tests poison with NaN to prove that."""
    sizes = [math.prod(shape) for shape in shapes]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + _aligned(size))
    flat = _new_output((starts[-1],), torch.float32, device)
    return [flat[start:start + size].view(shape) for start, size, shape in zip(starts, sizes, shapes)]


def _aligned(n: int) -> int:
    # Each part of a shared buffer starts 128-byte aligned, as its own allocation would (Triton
    # specialises pointers on 16-byte alignment).
    return -(-n // 32) * 32


def _weight_slot_layout(h1: int, h2: int, h3: int) -> tuple[list[int], list[int], int]:
    """(sizes, offsets, row length) of one OWN_U program's weight-gradient slot row: dW2, db2, dW3, db3,
    dW4, db4 side by side.  All slots form one [programs, row] buffer, so one sum and one cast
    reduce them (they were 6 sums and 6 casts, 12 launches after the backward kernel)."""
    sizes = [h2 * h1, h2, h3 * h2, h3, h3, 1]
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + _aligned(size))
    return sizes, offsets, offsets[-1] + _aligned(sizes[-1])


def _backward(grad_scores, u, v, cos, w2, b2, w3, b3, w4, b4, groups_u=None, groups_v=None, nprog=None,
              chunk=BWD_CHUNK, aliases_ok=True, deterministic=True):
    """All gradients of scores w.r.t. (u, v, cos, w2, b2, w3, b3, w4, b4).  groups_u/groups_v/nprog/chunk
    override the work split (tests use them to cover every split; the result must not change); nprog
    is then the program count of each pass.  aliases_ok: the weight and bias gradients may be views of
    one tensor (one cast for all); False gives each its own storage (a custom op may not return aliases).
    The partials are always summed, even one group's: a view of one would keep the whole carved buffer,
    the weight slots included (~80 MiB at paper widths), alive through the prelude's backward.
    deterministic=False: one pass adding dU and dV with atomics (plan_backward_atomic; groups_v unused)."""
    u, v, cos, w2, b2, w3, b3, w4, b4 = _operands(u, v, cos, w2, b2, w3, b3, w4, b4)
    m = _meta(u, v, w2, w3, "bwd")
    n_q, n_s, tq, ts, h1, h2, h3 = (m[k] for k in ("n_q", "n_s", "tq", "ts", "h1", "h2", "h3"))
    dev = u.device
    slot_sizes, slot_offsets, slot_row = _weight_slot_layout(h1, h2, h3)
    # OWN_U programs: dU, dcos and all weight/bias grads of layers 2..4, each program into its own
    # slot row (nprog_u x slot_row in fp32).  OWN_V programs: dV only.
    dcos = _new_dcos(cos)
    if deterministic:
        sizes = (n_q * tq * h1 * 4, n_s * ts * h1 * 4, slot_row * 4)  # fp32 partials and slots
        plan = plan_backward(n_q, n_s, m["n_ib"], m["n_jb"], _sm_count(dev), _bwd_cost_ratio(), groups_u, groups_v,
                             nprog, sizes)
        du_part, dv_part, slots = _carved_f32(dev, (plan.groups_u, n_q, tq, h1), (plan.groups_v, n_s, ts, h1),
                                              (plan.nprog_u, slot_row))
    else:  # atomics add to dU and dV from the start: zeroed, in one fill unless they may not alias
        plan = plan_backward_atomic(n_q, n_s, m["n_ib"], m["n_jb"], _sm_count(dev), chunk, groups_u, nprog)
        (slots,) = _carved_f32(dev, (plan.nprog_u, slot_row))
        if aliases_ok:
            du_dv = torch.zeros(n_q * tq * h1 + n_s * ts * h1, dtype=torch.float32, device=dev)
            du_part, dv_part = du_dv[:n_q * tq * h1].view(1, n_q, tq, h1), du_dv[n_q * tq * h1:].view(1, n_s, ts, h1)
        else:
            du_part = torch.zeros(1, n_q, tq, h1, dtype=torch.float32, device=dev)
            dv_part = torch.zeros(1, n_s, ts, h1, dtype=torch.float32, device=dev)
    items_u, items_v = plan.items(n_q, n_s, m["n_ib"], m["n_jb"])
    nprog_u = plan.nprog_u
    slot_parts = [slots[:, at:at + size] for at, size in zip(slot_offsets, slot_sizes)]
    programs = nprog_u + plan.nprog_v
    v_regs = _bwd_v_regs()  # OWN_V programs then park one tile (h2) instead of a chunk's dz2
    scratch_tiles = nprog_u * chunk + plan.nprog_v * (1 if v_regs else chunk)
    scratch = torch.empty(scratch_tiles * m["bi"] * m["bj"] * _pad(h2), dtype=w2.dtype, device=dev)
    _launch(_tap_bwd_kernel, (programs,),
        u, v, cos, grad_scores, w2, b2, w3, b3, w4, b4,
        dcos, du_part, dv_part, *slot_parts, scratch,
        n_q, n_s, tq, ts, h1, h2, h3, m["n_ib"], m["n_jb"],
        plan.per_u, items_u, nprog_u, plan.per_v, items_v, plan.nprog_v, chunk,
        *cos.stride(), *grad_scores.stride(), slot_row,
        **_tile_constexprs(m, w2.dtype), V_REGS=v_regs and deterministic, ATOMIC=not deterministic,
    )
    slot_sum = slots.sum(0)
    if aliases_ok:
        slot_sum = slot_sum.to(w2.dtype)
    weight_grads = [slot_sum[at:at + size].view(t.shape).to(t.dtype, copy=not aliases_ok)
                    for at, size, t in zip(slot_offsets, slot_sizes, (w2, b2, w3, b3, w4, b4))]
    if not deterministic:  # one buffer each: nothing to sum
        return du_part[0].to(u.dtype), dv_part[0].to(v.dtype), dcos, *weight_grads
    return du_part.sum(0).to(u.dtype), dv_part.sum(0).to(v.dtype), dcos, *weight_grads


# ------------------------------------------------------------------------------------------ torch ops
# Registered as custom ops so torch.compile treats the fused kernels as one opaque node (no graph
# break, no tracing into Triton), with autograd through register_autograd.  Eager calls take the
# plain autograd.Function below instead (same kernels, less host work).


@torch.library.custom_op("tap_fast::tap_pairs_fwd", mutates_args=())
def _tap_pairs_fwd(u: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                   w3: torch.Tensor, b3: torch.Tensor, w4: torch.Tensor, b4: torch.Tensor,
                   store_p: bool, deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(u, v, cos, w2, b2, w3, b3, w4, b4, store_p)  # deterministic: for the backward


@_tap_pairs_fwd.register_fake
def _(u, v, cos, w2, b2, w3, b3, w4, b4, store_p, deterministic=True):
    p_shape = (u.shape[0], v.shape[0], u.shape[1], v.shape[1]) if store_p else (1,)
    return u.new_empty(u.shape[0], v.shape[0], dtype=w2.dtype), u.new_empty(p_shape, dtype=w2.dtype)


@torch.library.custom_op("tap_fast::tap_pairs_bwd", mutates_args=())
def _tap_pairs_bwd(grad_scores: torch.Tensor, u: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   w2: torch.Tensor, b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor, w4: torch.Tensor,
                   b4: torch.Tensor, deterministic: bool = True) -> tuple[
                       torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                       torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_scores, u, v, cos, w2, b2, w3, b3, w4, b4, aliases_ok=False, deterministic=deterministic)


@_tap_pairs_bwd.register_fake
def _(grad_scores, u, v, cos, w2, b2, w3, b3, w4, b4, deterministic=True):
    dcos = _new_dcos(_cos_operand(cos))  # the strides the real kernel writes
    return u.new_empty(u.shape), v.new_empty(v.shape), dcos, *(t.new_empty(t.shape) for t in (w2, b2, w3, b3, w4, b4))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.deterministic = inputs[10]  # the op fills in its defaults


@first_order_only("tap_scores", TAP_HINT)
def _backward_rule(ctx, grad_scores, grad_p):
    # grad_p is ignored: P is an inspection output (tap_alignment runs without autograd).
    grads = torch.ops.tap_fast.tap_pairs_bwd(grad_scores, *ctx.saved_tensors, ctx.deterministic)
    return (*grads, None, None)


_tap_pairs_fwd.register_autograd(_backward_rule, setup_context=_setup_context)


class _TapPairsEager(torch.autograd.Function):
    """The same forward and backward as the custom ops, as a plain autograd node: what eager calls go
    through.  The custom ops' dispatch (schema checks, defaults, the autograd wrapper) costs ~0.1 ms
    of host time per forward+backward on a 2-core CPU, more than the kernels' work on small episodes;
    torch.compile needs the ops (an opaque node it can trace around), eager mode does not."""

    @staticmethod
    def forward(ctx, u, v, cos, w2, b2, w3, b3, w4, b4, deterministic):
        args = _operands(u, v, cos, w2, b2, w3, b3, w4, b4)  # saved as the kernels read them
        ctx.save_for_backward(*args)
        ctx.deterministic = deterministic
        scores, _ = _forward(*args, False)
        return scores

    @staticmethod
    @first_order_only("tap_scores", TAP_HINT)  # the kernels' gradients are not differentiable themselves
    def backward(ctx, grad_scores):
        return (*_backward(grad_scores, *ctx.saved_tensors, deterministic=ctx.deterministic), None)


def _prepare(u, v, cos, weights, biases):
    if len(weights) != 3:
        raise ValueError(f"the fused kernels take layers 2..4 (3 matrices), got {len(weights)}")
    return [u, v, cos, weights[0], biases[0], weights[1], biases[1], weights[2], biases[2]]


def tap_pairs_triton(u, v, cos, weights, biases, deterministic: bool = True) -> torch.Tensor:
    """Scores [Q, S] from U, V (b1 included), cos and layers 2..4 (weights/biases lists of 3).
    deterministic=False: the backward adds dU and dV with atomics in one pass (faster, not bitwise
    reproducible from run to run)."""
    args = _prepare(u, v, cos, weights, biases)
    if torch.compiler.is_compiling():
        scores, _ = torch.ops.tap_fast.tap_pairs_fwd(*args, False, deterministic)
        return scores
    return _TapPairsEager.apply(*args, deterministic)


def tap_p_triton(u, v, cos, weights, biases) -> torch.Tensor:
    """P [Q, S, Tq, Ts] from the fused forward (hidden activations never stored)."""
    _, p = torch.ops.tap_fast.tap_pairs_fwd(*_prepare(u, v, cos, weights, biases), True)
    return p
