"""Pick the fused TAP kernels' knobs from a tile sweep, as shell exports for the benchmarks after it.

    eval "$(python bench/tile_choice.py tile_sweep_gpu.json)"      # bench/gpu_session.sh does this

From bench/tile_sweep.py's JSON: the U/V read (TAP_FAST_UV_LOAD) with the lower fwd+bwd time at 64
rows, then the forward's tile height with that read, from the forward times (TAP_FAST_TILE_ROWS_FWD),
then the backward's SM split (TAP_FAST_BWD_COST_RATIO).  The backward's tile height stays at its
default (tap_triton.GPU_TILE_ROWS): 128 rows trade memory for time (see there); the sweep's
fwd+bwd times still show the trade.  Each comparison is the geometric mean of time ratios over the
sweep's shapes; a knob leaves its default only for a gain above MIN_GAIN (noise).  Prints nothing
for a knob that keeps its default; the reasons go to stderr.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tap_fast.kernels.tap_triton import GPU_TILE_ROWS

DEFAULTS = {"uv_load": "broadcast", "fwd_rows": GPU_TILE_ROWS["fwd"], "bwd_cost_ratio": 1.5}
MIN_GAIN = 0.03


def _shape(row) -> tuple:
    return row["Q"], row["S"], row["T"]


def _times(rows, pick, when) -> dict:
    return {_shape(r): pick(r) for r in rows if when(r) and pick(r) is not None}


def _ratio(new: dict, base: dict) -> float:
    """Geometric mean of new/base over the shapes both have (inf when they share none)."""
    shared = [k for k in new if k in base and base[k] > 0 and new[k] > 0]
    if not shared:
        return math.inf
    return math.exp(sum(math.log(new[k] / base[k]) for k in shared) / len(shared))


def _fwd(r):
    return r.get("fwd", {}).get("time_ms")


def _fwd_bwd(r):
    return r.get("fwd_bwd", {}).get("time_ms")


def _bwd(r):
    f, fb = _fwd(r), _fwd_bwd(r)
    return None if f is None or fb is None else fb - f


def choose(sweep: dict) -> tuple[dict, list[str]]:
    """({env var: value} for the knobs that should leave their defaults, reasons)."""
    rows = sweep["rows"]
    variants = [r for r in rows if "bwd_cost_ratio" not in r]
    exports, why = {}, []

    def better(name, new: dict, base: dict) -> bool:
        ratio = _ratio(new, base)
        why.append(f"{name}: {ratio:.3f}x the default's time")
        return ratio < 1 - MIN_GAIN

    def variant(rows_, uv):
        return lambda r: r["rows"] == rows_ and r["uv_load"] == uv

    uv = DEFAULTS["uv_load"]
    if better("uv_load=rows (fwd+bwd, 64 rows)", _times(variants, _fwd_bwd, variant(64, "rows")),
              _times(variants, _fwd_bwd, variant(64, "broadcast"))):
        uv = exports["TAP_FAST_UV_LOAD"] = "rows"
    default_rows = DEFAULTS["fwd_rows"]
    other_rows = 64 if default_rows == 128 else 128
    if better(f"fwd at {other_rows} rows ({uv})", _times(variants, _fwd, variant(other_rows, uv)),
              _times(variants, _fwd, variant(default_rows, uv))):
        exports["TAP_FAST_TILE_ROWS_FWD"] = str(other_rows)
    bwd_ratio = _ratio(_times(variants, _bwd, variant(128, uv)), _times(variants, _bwd, variant(64, uv)))
    why.append(f"bwd at 128 rows ({uv}): {bwd_ratio:.3f}x the time at 64 (not chosen: it costs memory)")
    first = variants[0] if variants else {"rows": None, "uv_load": None}  # the ratio rows re-run its config
    base = _times(variants, _fwd_bwd, variant(first["rows"], first["uv_load"]))
    ratios = sorted({r["bwd_cost_ratio"] for r in rows if "bwd_cost_ratio" in r})
    scored = [(_ratio(_times(rows, _fwd_bwd, lambda r, c=c: r.get("bwd_cost_ratio") == c), base), c) for c in ratios]
    if scored:
        score, ratio = min(scored)
        why.append(f"backward SM split: cost ratio {ratio} gives {score:.3f}x the default's fwd+bwd time")
        if score < 1 - MIN_GAIN:
            exports["TAP_FAST_BWD_COST_RATIO"] = str(ratio)
    return exports, why


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    exports, why = choose(json.loads(Path(args[0]).read_text()))
    for line in why:
        print(f"tile_choice: {line}", file=sys.stderr)
    if exports:
        print("export " + " ".join(f"{k}={v}" for k, v in exports.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
