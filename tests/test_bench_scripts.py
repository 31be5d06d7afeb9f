"""The bench scripts' shared command-line helpers (bench/bench_utils.py), bench/report.py and
bench/compile_report.py's argument checks: bad inputs give one-line errors, before the work; and
bench/profile_tap.py's record of the autotuner's candidates."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402
from bench_utils import InputError, git_commit, prepare_out, run_cli  # noqa: E402


def _bench(name, params, extra, group=None, mean=0.001):
    return {"name": name, "group": group, "params": params, "extra_info": extra, "stats": {"mean": mean}}


def _results(tmp_path, name, benchmarks) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    return str(path)


def test_git_commit_is_the_bench_scripts_checkout_from_any_directory(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    monkeypatch.delenv("TAP_FAST_COMMIT", raising=False)
    monkeypatch.chdir(tmp_path)  # not a repository
    assert git_commit() == head.stdout.strip()
    monkeypatch.setenv("TAP_FAST_COMMIT", "abc1234")
    assert git_commit() == "abc1234"


def test_prepare_out_creates_folders_and_refuses_unusable_paths(tmp_path):
    assert prepare_out(tmp_path / "a" / "b" / "out", (".md", ".json")) == tmp_path / "a" / "b" / "out"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("")
    (tmp_path / "d.md").mkdir()
    for bad, suffixes in ((tmp_path / "f" / "out", ()), (tmp_path / "d", (".md",)), (".", (".md",))):
        with pytest.raises(InputError, match="--out"):
            prepare_out(bad, suffixes)


def test_report_header_takes_device_and_commit_from_the_rows_that_have_them(tmp_path, capsys):
    decode = [_bench("test_decode[pyav]", {"decoder": "pyav"}, {"device": "cpu", "clips_per_s": 100.0})]
    tap = [_bench(f"test_tap[{t}]", {"T": t, "impl": "fused"}, {"device": "CPU (x86_64, 2 threads)", "commit": "abc1234",
                                                                 "time_ms": 2.0 * t}, group="tap") for t in (4, 8)]
    other = [_bench("test_tap[16]", {"T": 16, "impl": "fused"}, {"commit": "def5678", "time_ms": 40.0}, group="tap")]
    files = [_results(tmp_path, "a.json", decode + tap), _results(tmp_path, "b.json", other)]
    out = tmp_path / "reports" / "run"  # a folder that does not exist yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_cli(report.main, [*files, "--out", str(out)]) == 0
    assert not [w for w in caught if "legend" in str(w.message)], [str(w.message) for w in caught]
    text = out.with_suffix(".md").read_text()
    assert "- device: cpu; CPU (x86_64, 2 threads)\n" in text
    assert "- commit: abc1234; def5678\n" in text
    assert "| decoder=pyav |  |" in text  # the row without T stays in the tables
    assert out.with_suffix(".png").is_file()
    assert "wrote" in capsys.readouterr().out


def test_report_plots_only_rows_with_the_x_parameter(tmp_path):
    rows, _ = report.load_rows([_results(tmp_path, "d.json", [_bench("d", {"decoder": "pyav"}, {"device": "cpu"})])], "T")
    assert report.plot(rows, "T", "t", tmp_path / "p.png") is False and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("not json", "is not JSON"), ("[]", "holds an array"),
    ('{"benchmarks": []}', "no benchmarks in"), ('{"benchmarks": [{"name": "x"}]}', "neither extra_info.time_ms"),
    ('{"reports": [], "arch": 90}', 'has no "benchmarks" list: not pytest-benchmark JSON'),  # another script's JSON
    ('{"benchmarks": [{"name": "x", "params": [64], "stats": {"mean": 1}}]}',
     "benchmark 'x': params must be an object (name: value), got list"),
    ('{"benchmarks": [{"name": "x", "extra_info": "fast", "stats": {"mean": 1}}]}',
     "benchmark 'x': extra_info must be an object (name: value), got str"),
])
def test_report_bad_inputs_give_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert run_cli(report.main, [str(path), "--out", str(tmp_path / "out" / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _plotted_figure(monkeypatch):
    """The figure report.plot draws (kept from savefig, which plot calls before closing it)."""
    from matplotlib.figure import Figure

    saved, real_savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or real_savefig(fig, *a, **k))
    return saved


def test_report_plot_names_device_and_commit_and_wraps_many_groups(tmp_path, monkeypatch):
    """The PNG names its device and commit (README: each result file does), and a whole run's many
    groups wrap into rows of panels instead of one strip thousands of pixels wide."""
    groups = [f"g{i}" for i in range(7)]
    benchmarks = [_bench(f"t[{g}-{t}]", {"T": t, "impl": "fused"},
                         {"device": "CPU (x86_64, 2 threads)", "commit": "abc1234", "time_ms": 1.0 * t}, group=g)
                  for g in groups for t in (4, 8)]
    rows, _ = report.load_rows([_results(tmp_path, "r.json", benchmarks)], "T")
    saved = _plotted_figure(monkeypatch)
    assert report.plot(rows, "T", "run", tmp_path / "p.png")
    fig = saved[0]
    title = fig._suptitle.get_text()
    assert "run" in title and "CPU (x86_64, 2 threads)" in title and "abc1234" in title, title
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == len(groups) and len({round(ax.get_position().x0, 3) for ax in shown}) <= 3
    assert fig.get_size_inches()[0] <= 16  # at most three 5-inch panels side by side


def test_report_plot_of_a_text_parameter_is_not_a_log_axis(tmp_path, monkeypatch):
    """--x decoder (strings) plots categories: a log2 axis labelled 2^0, 2^1 for them meant nothing."""
    benchmarks = [_bench(f"d[{d}]", {"decoder": d}, {"device": "cpu", "clips_per_s": 1.0}, mean=m)
                  for d, m in (("pyav", 0.2), ("pyav-cached", 0.03), ("dali-cpu", 0.1))]
    rows, _ = report.load_rows([_results(tmp_path, "d.json", benchmarks)], "decoder")
    saved = _plotted_figure(monkeypatch)
    assert report.plot(rows, "decoder", "t", tmp_path / "p.png")
    ax = saved[0].axes[0]
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "log"
    assert {t.get_text() for t in ax.get_xticklabels()} == {"pyav", "pyav-cached", "dali-cpu"}


def test_report_tables_show_only_their_groups_columns(tmp_path):
    """A whole run mixes suites: each group's table has the columns its rows record, not every suite's."""
    decode = [_bench("d[pyav]", {"decoder": "pyav"}, {"clips_per_s": 100.0, "crop": 56})]
    tap = [_bench("t[4]", {"T": 4, "impl": "fused"}, {"time_ms": 2.0, "tflops": 0.1}, group="tap")]
    rows, _ = report.load_rows([_results(tmp_path, "r.json", decode + tap)], "T")
    text = report.markdown(rows, "T", "run")
    assert "| series | T | time (ms) | clips_per_s | crop |\n" in text
    assert "| series | T | time (ms) | tflops |\n|---|---|---|---|\n| impl=fused | 4 | 2 | 0.1 |" in text


def test_compile_report_help_has_the_whole_description():
    """--help's description was the docstring's first line, cut mid-sentence ("...and report what the")."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "compile_report.py"), "--help"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "what the\ncompiler made of them" in run.stdout and "python bench/compile_report.py --tq" in run.stdout
    assert "128/broadcast \\\n        --out" in run.stdout  # the example's line continuation kept


def test_compile_report_refuses_bad_variant_names_before_compiling():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for variant in ("64/foo", "64", "48/rows"):
        run = subprocess.run([sys.executable, str(REPO / "bench" / "compile_report.py"), "--variants", "64/rows", variant],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "argument --variants: expected ROWS/UV_LOAD" in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr and not run.stdout


def test_profile_records_each_autotune_candidate_and_the_choice(monkeypatch):
    """bench/profile_tap.py reports, for a fused kernel that autotuned during its warm-up, every
    candidate's benchmark time and the chosen config (which K-blocks won on the GPU, and by how much)."""
    triton = pytest.importorskip("triton")
    import profile_tap
    from tap_fast.kernels import tap_triton

    kernel = tap_triton._tap_bwd_kernel
    before = {"fwd": getattr(tap_triton._tap_fwd_kernel, "configs_timings", None),
              "bwd": getattr(kernel, "configs_timings", None)}
    wide = triton.Config({"BK": 32, "BKB": 64}, num_warps=8, num_stages=3)
    even = triton.Config({"BK": 64, "BKB": 64}, num_warps=8, num_stages=2)
    monkeypatch.setattr(kernel, "configs_timings", {wide: [0.5, 0.4, 0.6], even: [0.7, 0.6, 0.8]}, raising=False)
    monkeypatch.setattr(kernel, "best_config", wide, raising=False)
    tuned = profile_tap._autotuned(before)
    assert tuned == {"bwd": {"chosen": "BK=32 BKB=64 warps=8 stages=3",
                             "candidates": {"BK=32 BKB=64 warps=8 stages=3": [0.5, 0.4, 0.6],
                                            "BK=64 BKB=64 warps=8 stages=2": [0.7, 0.6, 0.8]}}}
    assert profile_tap._autotuned({"bwd": kernel.configs_timings, "fwd": before["fwd"]}) == {}  # nothing new
    row = dict(T=32, mode="fwd_bwd", wall_ms=1.0, device_ms=0.5, idle_ms=0.5, kernels=[], autotuned=tuned)
    md = profile_tap._markdown([row], {"device": "cuda", "commit": "abc1234"})
    assert "bwd kernel autotuning (chosen: BK=32 BKB=64 warps=8 stages=3)" in md
    assert "| BK=64 BKB=64 warps=8 stages=2 | 0.7000 / 0.6000 / 0.8000 |" in md


_HELP_PROBE = """
import argparse, importlib, json, os, sys
sys.path.insert(0, {bench!r})

class Parsed(Exception):  # raised in place of parsing: the parser main() built, before any work
    pass

parsers = []

def capture(parser, *args, **kwargs):
    parsers.append(parser)
    raise Parsed

argparse.ArgumentParser.parse_args = capture
missing = {{}}
for module in {modules!r}:
    try:
        importlib.import_module(module).main([])
    except Parsed:
        pass
    missing[module] = [a.option_strings or a.dest for a in parsers[-1]._actions if not a.help]
print(json.dumps(missing))
"""


def test_every_command_line_option_has_help():
    modules = ["tap_fast.train", "tap_fast.evaluate", "tap_fast.predict", "tap_fast.data.synthetic", "compile_report",
               "host_cost", "memory_model", "precompile", "profile_tap", "report", "slim_dali", "targets", "tile_sweep",
               "train_throughput"]
    # a subprocess: compile_report refuses TRITON_INTERPRET (set for the tests) and sets knobs when imported
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _HELP_PROBE.format(bench=str(REPO / "bench"), modules=modules)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    missing = {module: options for module, options in json.loads(run.stdout.splitlines()[-1]).items() if options}
    assert not missing, f"--help says nothing about these options: {missing}"
