"""The open issues' GPU targets, read off benchmark results: one markdown table, target by target.

    python bench/targets.py bench/results/tap_h200_*.json bench/results/soft_dtw_h200_*.json \
        [tile_sweep_gpu.json decode_gpu.json ...] [--out bench/results/targets_<device>_<date>.md]

Takes pytest-benchmark JSON from bench/test_bench_tap.py, bench/test_bench_soft_dtw.py and
bench/test_bench_decode.py, and bench/tile_sweep.py's JSON, in any mix.  Each target's row says
what was measured and whether it is met; "not measured" where the rows it needs are missing.
Targets (issues 3-5):
  * fused TAP forward at the large size (Q = S = 64) >= 50% of the measured dense bf16 rate;
  * fused fwd+bwd >= 3x faster than torch.compile of the reference at T >= 32, and peak memory >= 10x
    lower (the rows both have: 5-way 5-shot);
  * the fused rows checked against float64 within their bounds (rel_err_margin >= 1);
  * soft-DTW CUDA fwd+bwd >= 5x pysdtw's CUDA code at B = 250, T = 32 and T = 256;
  * DALI "mixed" (GPU) decoding of H.264 at 256 px: clips/s recorded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import InputError, prepare_out, read_json, run_cli  # noqa: E402

WHAT = "pytest-benchmark JSON (--benchmark-json) or bench/tile_sweep.py's JSON, an object"


def _objects(path, data: dict, key: str) -> list[dict]:
    """data[key] (absent: []), which must be a list of JSON objects."""
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InputError(f"{path}: \"{key}\" must be a list of objects")
    return items


def load(paths) -> tuple[list[dict], list[dict]]:
    """(benchmark rows as params | extra_info dicts, tile-sweep rows).  InputError for a file that is
    missing, not JSON, or not shaped like either kind of result (other JSON objects, e.g. the
    session's host_cost or train results beside them, contribute nothing).  Given several files, a
    bad one is skipped with a warning: a GPU session's stage killed mid-write must not cost the
    table of the others."""
    bench, sweep, bad = [], [], []
    for path in paths:
        try:
            data = read_json(path, WHAT)
            file_bench = [{**(b.get("extra_info") or {}), **(b.get("params") or {}), "name": b.get("name", "?")}
                          for b in _objects(path, data, "benchmarks")]
            file_sweep = _objects(path, data, "rows") if "benchmarks" not in data else []
        except InputError as error:
            if len(paths) == 1:
                raise
            bad.append(str(error))
            continue
        bench += file_bench
        sweep += file_sweep
    if bad and len(bad) == len(paths):
        raise InputError("no readable result file: " + "; ".join(bad))
    for message in bad:
        print(f"warning: skipped {message}", file=sys.stderr)
    return bench, sweep


def _pick(rows, **want):
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def _one(rows, **want):
    found = _pick(rows, **want)
    return found[0] if found else None


def tap_forward_rows(bench, sweep) -> list[tuple[str, float]]:
    """(where, % of dense) for every large-episode fused forward measured."""
    out = [(f"bench T={r['T']}", r["pct_of_dense"]) for r in _pick(bench, impl="fused", episode="large", mode="fwd")
           if r.get("pct_of_dense") is not None]
    for r in sweep:
        if r.get("Q") == 64 and r.get("S") == 64 and "fwd" in r and "bwd_cost_ratio" not in r:
            out.append((f"sweep T={r['T']} {r['rows']}/{r['uv_load']}", r["fwd"]["pct_of_dense"]))
    return out


def targets(bench, sweep) -> list[dict]:
    rows = []

    def add(issue, target, measured, met):
        rows.append(dict(issue=issue, target=target, measured=measured, met=met))

    fwd = tap_forward_rows(bench, sweep)
    if fwd:
        where, best = max(fwd, key=lambda w: w[1])
        add(3, "fused forward, Q = S = 64: >= 50% of dense bf16", f"best {best:.1f}% ({where})", best >= 50)
    else:
        add(3, "fused forward, Q = S = 64: >= 50% of dense bf16", "not measured", None)
    for t in (32, 64, 128):
        compiled_graphed = _one(bench, impl="compiled_ref_cudagraphs", T=t)
        for impl, kind in (("fused_graphed", ""), ("fused_atomic_graphed", ", deterministic=False")):
            graphed = _one(bench, impl=impl, T=t)
            if graphed and compiled_graphed:  # the same comparison with host work out of both sides
                speed = compiled_graphed["time_ms"] / graphed["time_ms"]
                add(3, f"5w5s T={t} fwd+bwd{kind}, both in CUDA graphs: >= 3x faster than torch.compile "
                    "(reduce-overhead)",
                    f"{speed:.2f}x ({graphed['time_ms']:.3g} vs {compiled_graphed['time_ms']:.3g} ms)", speed >= 3)
        fused = _one(bench, impl="fused", episode="5w5s", mode="fwd_bwd", T=t)
        compiled = _one(bench, impl="compiled_ref", episode="5w5s", mode="fwd_bwd", T=t)
        atomic = _one(bench, impl="fused_atomic", episode="5w5s", mode="fwd_bwd", T=t)
        if atomic and compiled:  # deterministic=False, an opt-in the issue allows: its own rows
            speed = compiled["time_ms"] / atomic["time_ms"]
            memory = ""
            if atomic.get("peak_mem_mib") and compiled.get("peak_mem_mib"):
                memory = f", memory {compiled['peak_mem_mib'] / atomic['peak_mem_mib']:.1f}x lower"
            add(3, f"5w5s T={t} fwd+bwd, deterministic=False (atomics): >= 3x faster than torch.compile",
                f"{speed:.2f}x ({atomic['time_ms']:.3g} vs {compiled['time_ms']:.3g} ms){memory}", speed >= 3)
        if not (fused and compiled):
            if t <= 64:
                add(3, f"5w5s T={t} fwd+bwd: >= 3x faster than torch.compile, >= 10x less memory", "not measured", None)
            continue
        speed = compiled["time_ms"] / fused["time_ms"]
        add(3, f"5w5s T={t} fwd+bwd: >= 3x faster than torch.compile",
            f"{speed:.2f}x ({fused['time_ms']:.3g} vs {compiled['time_ms']:.3g} ms)", speed >= 3)
        if fused.get("peak_mem_mib") and compiled.get("peak_mem_mib"):
            mem = compiled["peak_mem_mib"] / fused["peak_mem_mib"]
            add(3, f"5w5s T={t} fwd+bwd: >= 10x less peak memory",
                f"{mem:.1f}x ({fused['peak_mem_mib']:.0f} vs {compiled['peak_mem_mib']:.0f} MiB)", mem >= 10)
    checked = [r for r in _pick(bench, impl="fused") + _pick(bench, impl="fused_atomic")
               if r.get("rel_err_margin") is not None]
    if checked:
        worst = min(checked, key=lambda r: r["rel_err_margin"])
        add(3, "fused rows vs float64 within their bounds",
            f"{len(checked)} rows, smallest margin {worst['rel_err_margin']:.2f} ({worst['name']})",
            worst["rel_err_margin"] >= 1)
    else:
        add(3, "fused rows vs float64 within their bounds", "not measured", None)
    for t in (32, 256):
        ours = _one(bench, device="cuda", impl="ours", mode="fwd_bwd", T=t)
        theirs = _one(bench, device="cuda", impl="pysdtw", mode="fwd_bwd", T=t)
        if ours and theirs:
            speed = theirs["time_ms"] / ours["time_ms"]
            add(4, f"soft-DTW CUDA fwd+bwd, B = 250, T = {t}: >= 5x pysdtw's CUDA code",
                f"{speed:.1f}x ({ours['time_ms']:.3g} vs {theirs['time_ms']:.3g} ms)", speed >= 5)
        else:
            add(4, f"soft-DTW CUDA fwd+bwd, B = 250, T = {t}: >= 5x pysdtw's CUDA code",
                "not measured" if not ours else "pysdtw CUDA rows missing", None)
    dali = [r for r in bench if r.get("decoder") == "dali-gpu" and r.get("resize") == 256]
    pyav = [r for r in bench if r.get("decoder") == "pyav" and r.get("resize") == 256]
    if dali:
        def setting(r):  # rows from before the width / thread variants were 340 px wide, 2 threads
            return f"{r.get('width', 340)} px wide, {r.get('dali_threads', 2)} threads"

        pyav_rates = ", ".join(f"{r['clips_per_s']:.0f}" for r in pyav)
        versus = f"; PyAV (1 thread) {pyav_rates}" if pyav else ""
        seen = ", ".join(f"{r['clips_per_s']:.0f} ({setting(r)})" for r in dali)
        add(5, "DALI mixed decoding, H.264 256 px: clips/s recorded", f"clips/s: {seen}{versus}", True)
    else:
        add(5, "DALI mixed decoding, H.264 256 px: clips/s recorded", "not measured", None)
    return rows


def markdown(rows) -> str:
    mark = {True: "yes", False: "no", None: "-"}
    lines = ["| issue | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {r['issue']} | {r['target']} | {r['measured']} | {mark[r['met']]} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="benchmark / tile-sweep JSON files")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    results = load(args.results)
    out = prepare_out(args.out) if args.out else None  # a bad --out fails before the table, not after it
    table = markdown(targets(*results))
    print(table, end="")
    if out:
        out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
