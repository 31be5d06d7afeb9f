"""Markdown table + PNG plot (time vs an x parameter, one panel per benchmark group) from
pytest-benchmark JSON files.  Generic: used by the TAP and the soft-DTW suites.

    python bench/report.py out.json [more.json ...] --out bench/results/tap_cpu [--x T]

Per row: the time is extra_info["time_ms"] when the suite measured it (CUDA events), else the
benchmark's mean.  A series is a benchmark's parameters other than --x (e.g. impl=fused, mode=fwd);
other numeric extra_info fields (tflops, peak_mem_mib, ...) become table columns.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import InputError, prepare_out, read_json, run_cli  # noqa: E402

SKIP_COLUMNS = {"time_ms", "T", "Q", "S", "dense_tflops"}
HEADER_KEYS = ("device", "commit", "dtype", "dense_tflops", "knobs")


def _time_ms(path, b: dict) -> float:
    """extra_info["time_ms"] when the suite measured it (CUDA events), else the benchmark's mean."""
    extra = b.get("extra_info") or {}
    if "time_ms" in extra:
        return extra["time_ms"]
    try:
        return b["stats"]["mean"] * 1e3
    except (KeyError, TypeError):
        raise InputError(f"{path}: benchmark {b.get('name', '?')!r} has neither extra_info.time_ms nor stats.mean") from None


def load_rows(paths, x_param: str) -> tuple[list[dict], dict]:
    rows, machine = [], {}
    for path in paths:
        data = read_json(path, "pytest-benchmark JSON (--benchmark-json), an object")
        if "benchmarks" not in data:  # another script's JSON (compile_report, host_cost, ...), not an empty run
            raise InputError(f'{path} has no "benchmarks" list: not pytest-benchmark JSON (--benchmark-json)')
        machine = machine or data.get("machine_info", {})
        benchmarks = data["benchmarks"]
        if not isinstance(benchmarks, list) or not all(isinstance(b, dict) for b in benchmarks):
            raise InputError(f'{path}: "benchmarks" must be a list of objects')
        for b in benchmarks:
            for key in ("params", "extra_info"):  # hand-edited files: a list here was a traceback
                if not isinstance(b.get(key) or {}, dict):
                    raise InputError(f"{path}: benchmark {b.get('name', '?')!r}: {key} must be an object "
                                     f"(name: value), got {type(b[key]).__name__}")
            params = dict(b.get("params") or {})
            extra = dict(b.get("extra_info") or {})
            x = params.pop(x_param, extra.get(x_param))
            time_ms = _time_ms(path, b)
            series = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
            rows.append(dict(group=b.get("group") or "default", series=series or b.get("name", "?"), x=x,
                             time_ms=time_ms, extra=extra, name=b.get("name", "?")))
    return rows, machine


def _fmt(v):
    if isinstance(v, dict):  # e.g. the kernels' knobs in force
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "defaults"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def header_values(rows) -> dict[str, list[str]]:
    """For each header key, the distinct values (formatted, in order of appearance) of the rows that
    record it: a file mixing suites (e.g. decode rows, which record no commit, before the TAP rows)
    still gets its device and commit, and several are all listed."""
    values: dict[str, list[str]] = {}
    for key in HEADER_KEYS:
        for r in rows:
            if key in r["extra"]:
                text = _fmt(r["extra"][key])
                if text not in values.setdefault(key, []):
                    values[key].append(text)
    return values


def _extra_columns(rows) -> list[str]:
    return sorted({k for r in rows for k, v in r["extra"].items()
                   if k not in SKIP_COLUMNS and isinstance(v, (int, float)) and not isinstance(v, bool)})


def markdown(rows, x_param: str, title: str) -> str:
    lines = [f"# {title}", ""]
    for key, values in header_values(rows).items():
        lines.append(f"- {key}: {'; '.join(values)}")
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    for group in sorted(by_group):
        # the group's own columns: a whole run's file mixes suites, and each suite's columns elsewhere are empty
        extra_cols = _extra_columns(by_group[group])
        lines += ["", f"## {group}", "", "| " + " | ".join(["series", x_param, "time (ms)", *extra_cols]) + " |",
                  "|---" * (3 + len(extra_cols)) + "|"]
        for r in sorted(by_group[group], key=lambda r: (r["series"], r["x"] if r["x"] is not None else 0)):
            cells = [r["series"], _fmt(r["x"]), _fmt(r["time_ms"])] + [_fmt(r["extra"].get(c)) for c in extra_cols]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, x_param: str, title: str, path: Path) -> bool:
    """Time against x_param, one panel per group, for the rows that have x_param (rows without it,
    e.g. decode throughput, stay in the tables only).  False, and no file, when no row has it."""
    rows = [r for r in rows if r["x"] is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    # at most three panels a row: a whole run has 6 (CPU) or more groups, one strip of them is unreadable
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    # a log2 axis only for positive numbers: --x decoder (strings) plots categories
    numeric = all(isinstance(r["x"], (int, float)) and not isinstance(r["x"], bool) and r["x"] > 0 for r in rows)
    for ax, group in zip(axes.flat, groups):
        series = defaultdict(list)
        for r in rows:
            if r["group"] == group:
                series[r["series"]].append((r["x"], r["time_ms"]))
        for label, pts in sorted(series.items()):
            if numeric:
                pts.sort()
            ax.plot([p[0] if numeric else str(p[0]) for p in pts], [p[1] for p in pts], marker="o", label=label)
        if numeric:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x_param)
        ax.set_ylabel("time (ms)")
        ax.set_title(group)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    # the PNG names its device and commit, as the markdown's header does (it may travel without it)
    where = header_values(rows)
    names = (["; ".join(where["device"])] if "device" in where else []) + \
        (["commit " + ", ".join(where["commit"])] if "commit" in where else [])
    fig.suptitle(f"{title} ({', '.join(names)})" if names else title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    ap.add_argument("--out", required=True, help="output path prefix: writes <out>.md and <out>.png")
    ap.add_argument("--x", default="T", help="parameter on the x axis (default: T)")
    ap.add_argument("--title", default="benchmark results", help="heading of the table and the plot")
    args = ap.parse_args(argv)
    rows, _ = load_rows(args.json, args.x)
    if not rows:
        raise InputError(f"no benchmarks in {', '.join(args.json)}")
    out = prepare_out(args.out, (".md", ".png"))
    out.with_suffix(".md").write_text(markdown(rows, args.x, args.title))
    if plot(rows, args.x, args.title, out.with_suffix(".png")):
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    else:
        print(f"wrote {out.with_suffix('.md')} (no plot: no row has {args.x})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
