"""bench/host_cost.py, the fused op's host-cost meter that runs without a GPU, keeps working.

It runs in a subprocess: it sets TRITON_INTERPRET=1 for its own process (see test_memory_model.py).
"""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "host_cost.py"

_SCRIPT = """
import json, sys
sys.path.insert(0, {bench!r})
from host_cost import host_cost
print(json.dumps([host_cost(2, 3, 4, backward, batches=2, calls=3) for backward in (False, True)]))
"""


def test_host_cost_reports_the_call_and_its_first_launch():
    run = subprocess.run([sys.executable, "-c", _SCRIPT.format(bench=str(REPO / "bench"))],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    fwd, fwd_bwd = json.loads(run.stdout.strip().splitlines()[-1])
    for row in (fwd, fwd_bwd):
        # the stubbed forward launch was reached, after the call had started; the minimum over every
        # timed call is below the best batch's mean whatever the machine's noise (its fastest call
        # launched before it ended)
        assert 0 < row["us_to_first_launch"] < row["us_per_call"]
    assert 0 < fwd["aten_ops"] < fwd_bwd["aten_ops"]


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_bad_numbers_are_refused_before_the_run():
    for flag, value in (("--calls", "0"), ("--batches", "-1"), ("--t", "0"), ("--calls", "many")):
        run = _run(flag, value)
        assert run.returncode == 2 and f"argument {flag}: expected an integer >= 1" in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr and not run.stdout


def test_out_folders_are_created(tmp_path):
    out = tmp_path / "new" / "hc"
    run = _run("--batches", "1", "--calls", "1", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "USDT" not in run.stderr and "gpuGetDeviceCount" not in run.stderr  # the profiler's log lines
    assert [r["mode"] for r in json.loads(out.with_suffix(".json").read_text())["rows"]] == ["fwd", "fwd_bwd"]
    assert out.with_suffix(".md").read_text().startswith("# Fused TAP op, host cost")
