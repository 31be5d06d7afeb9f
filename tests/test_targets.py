"""bench/targets.py reads the issues' GPU targets off benchmark results (here: the H200 session's)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_utils import run_cli  # noqa: E402
from targets import load, main, targets  # noqa: E402

H200 = sorted((REPO / "bench" / "results").glob("tap_h200_*_20261127.json"))


def _by_target(rows):
    return {r["target"]: r for r in rows}


def test_h200_session_targets_read_as_recorded_in_its_notes():
    rows = _by_target(targets(*load(H200)))
    fwd = rows["fused forward, Q = S = 64: >= 50% of dense bf16"]
    assert fwd["met"] is False and "31.4%" in fwd["measured"]
    speed = rows["5w5s T=32 fwd+bwd: >= 3x faster than torch.compile"]
    assert speed["met"] is False and speed["measured"].startswith("0.60x")
    assert rows["5w5s T=32 fwd+bwd: >= 10x less peak memory"]["met"] is False
    assert rows["5w5s T=64 fwd+bwd: >= 10x less peak memory"]["met"] is True
    assert rows["fused rows vs float64 within their bounds"]["met"] is True
    assert all(r["met"] is None for r in rows.values() if r["issue"] in (4, 5))


def test_soft_dtw_sweep_and_dali_rows(tmp_path):
    def bench(name, params, extra):
        return {"name": name, "params": params, "extra_info": extra}

    soft_dtw = [bench(f"sd{t}{impl}", {"device": "cuda", "T": t, "impl": impl, "mode": "fwd_bwd"}, {"time_ms": ms})
                for t, impl, ms in ((32, "ours", 0.5), (32, "pysdtw", 3.0), (256, "ours", 1.4), (256, "pysdtw", 5.0))]
    decode = [bench("h264-dali", {"decoder": "dali-gpu"}, {"decoder": "dali-gpu", "clips_per_s": 900.0, "resize": 256}),
              bench("h264-dali-t", {"decoder": "dali-gpu"}, {"decoder": "dali-gpu", "clips_per_s": 700.0, "resize": 256,
                                                              "width": 352, "dali_threads": 10}),
              bench("h264-pyav", {"decoder": "pyav"}, {"decoder": "pyav", "clips_per_s": 20.0, "resize": 256})]
    sweep = {"rows": [{"Q": 64, "S": 64, "T": 64, "rows": 128, "uv_load": "broadcast", "fwd": {"pct_of_dense": 52.0}}]}
    paths = []
    for i, data in enumerate(({"benchmarks": soft_dtw + decode}, sweep)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(data))
    rows = _by_target(targets(*load(paths)))
    assert rows["soft-DTW CUDA fwd+bwd, B = 250, T = 32: >= 5x pysdtw's CUDA code"]["met"] is True  # 6x
    assert rows["soft-DTW CUDA fwd+bwd, B = 250, T = 256: >= 5x pysdtw's CUDA code"]["met"] is False  # 3.6x
    assert rows["DALI mixed decoding, H.264 256 px: clips/s recorded"]["measured"] == (
        "clips/s: 900 (340 px wide, 2 threads), 700 (352 px wide, 10 threads); PyAV (1 thread) 20")
    fwd = rows["fused forward, Q = S = 64: >= 50% of dense bf16"]
    assert fwd["met"] is True and "128/broadcast" in fwd["measured"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("# not JSON\n", "is not JSON"),
    ("[1, 2]", "holds an array; expected"),
    ('{"benchmarks": 3}', '"benchmarks" must be a list of objects'),
    ('{"rows": [1]}', '"rows" must be a list of objects'),
])
def test_bad_result_files_give_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert run_cli(main, [str(path), "--out", str(tmp_path / "t.md")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {path}") and message in err and err.count("\n") == 1, err
    assert not out and not (tmp_path / "t.md").exists()


def test_out_folders_are_created_and_an_unusable_out_fails_before_the_table(tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "targets.md"
    assert run_cli(main, [*map(str, H200), "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    (tmp_path / "file").write_text("")
    for bad in (tmp_path / "file" / "t.md", tmp_path):  # a file in the way; a folder named as the file
        assert run_cli(main, [*map(str, H200), "--out", str(bad)]) == 2
        printed, err = capsys.readouterr()
        assert err.startswith(f"error: --out {bad}") and not printed, err


def test_a_bad_file_among_several_is_skipped_with_a_warning(tmp_path, capsys):
    """A GPU session passes every JSON it made; one cut short by a killed stage must not cost the table."""
    (tmp_path / "cut.json").write_text('{"benchmarks": [')
    assert run_cli(main, [*map(str, H200), str(tmp_path / "cut.json")]) == 0
    out, err = capsys.readouterr()
    assert "fused forward" in out and err.startswith("warning: skipped") and "cut.json" in err
    assert run_cli(main, [str(tmp_path / "cut.json"), str(tmp_path / "missing.json")]) == 2
    assert "no readable result file" in capsys.readouterr().err


def test_graphed_rows_are_compared_on_their_own(tmp_path):
    rows = [{"name": f"g{impl}", "params": {}, "extra_info": {"impl": impl, "T": 32, "time_ms": ms}}
            for impl, ms in (("fused_graphed", 1.0), ("compiled_ref_cudagraphs", 3.5))]
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"benchmarks": rows}))
    got = _by_target(targets(*load([path])))
    row = got["5w5s T=32 fwd+bwd, both in CUDA graphs: >= 3x faster than torch.compile (reduce-overhead)"]
    assert row["met"] is True and row["measured"] == "3.50x (1 vs 3.5 ms)"
    assert got["5w5s T=32 fwd+bwd: >= 3x faster than torch.compile, >= 10x less memory"]["met"] is None


def test_atomic_rows_are_reported_apart_from_the_default(tmp_path):
    """deterministic=False rows (impl fused_atomic) get their own target row; the default's stays the
    default's, and both kinds of float64 check count."""
    def row(impl, ms, mib, margin=None):
        info = {"impl": impl, "episode": "5w5s", "mode": "fwd_bwd", "T": 64, "time_ms": ms, "peak_mem_mib": mib}
        if margin is not None:
            info["rel_err_margin"] = margin
        return {"name": impl, "params": {}, "extra_info": info}

    path = tmp_path / "a.json"
    path.write_text(json.dumps({"benchmarks": [row("fused", 10.0, 150.0, 1.5), row("fused_atomic", 7.5, 200.0, 0.9),
                                               row("compiled_ref", 24.0, 6000.0)]}))
    got = _by_target(targets(*load([path])))
    atomic = got["5w5s T=64 fwd+bwd, deterministic=False (atomics): >= 3x faster than torch.compile"]
    assert atomic["met"] is True and atomic["measured"] == "3.20x (7.5 vs 24 ms), memory 30.0x lower"
    assert got["5w5s T=64 fwd+bwd: >= 3x faster than torch.compile"]["measured"].startswith("2.40x")
    assert got["fused rows vs float64 within their bounds"]["met"] is False  # the atomic row's 0.9
