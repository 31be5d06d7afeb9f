"""bench/memory_model.py, the GPU peak-memory predictor that runs without a GPU, keeps working.

It runs in a subprocess: it sets TRITON_INTERPRET=1 for its own process, which would change how
later tests in this one run the Triton kernels on a GPU machine.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "memory_model.py"

_SCRIPT = """
import json, sys
sys.path.insert(0, {bench!r})
from memory_model import fused_peak_bytes
peak = lambda sms, backward: fused_peak_bytes(2, 3, 8, sms, backward, d=16, hidden=(32, 16, 8))
# W1 [512, 512] in bf16: the CPU's finite check would upcast it to a 1 MiB fp32 copy; a GPU makes none
wide = fused_peak_bytes(2, 3, 4, 8, False, d=256, hidden=(512, 16, 8))
print(json.dumps(dict(fwd=peak(8, False), bwd8=peak(8, True), bwd64=peak(64, True), fwd_wide=wide)))
"""


def test_memory_model_sees_the_backward_workspace():
    run = subprocess.run([sys.executable, "-c", _SCRIPT.format(bench=str(REPO / "bench"))],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < peaks["fwd"] < peaks["bwd8"]
    # more SMs -> more persistent programs, each with its weight slots and dz2 scratch
    assert peaks["bwd64"] > peaks["bwd8"]
    # the finite-input check is modelled as CUDA's multi-tensor norm (fp32 scalars), not the CPU
    # fallback's per-tensor fp32 copies (which would put W1's 1 MiB copy at the forward's peak)
    assert 0 < peaks["fwd_wide"] < 512 * 512 * 4 // 2


def _run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TAP_FAST_COMMIT"}  # the commit from git, below
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


def test_bad_numbers_are_refused_before_the_run():
    for args, word in ((["--sms", "0"], "--sms"), (["--t", "4", "0"], "--t"), (["--sms", "x"], "--sms")):
        run = _run(*args)
        assert run.returncode == 2 and f"argument {word}: expected an integer >= 1" in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr and not run.stdout


def test_out_folders_are_created_and_the_commit_recorded(tmp_path):
    out = tmp_path / "new" / "sub" / "mm"
    run = _run("--t", "4", "--episodes", "5w5s", "--modes", "fwd", "--out", str(out), cwd=tmp_path)  # cwd: not the repo
    assert run.returncode == 0, run.stderr[-3000:]
    assert "USDT" not in run.stderr and "gpuGetDeviceCount" not in run.stderr  # the profiler's log lines
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["fwd"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (not a tree copied without .git)
        assert result["commit"] == head.stdout.strip()
    # --out that cannot be written: one line, before the run
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = _run("--t", "4", "--out", str(blocker / "mm"))
    assert run.returncode == 2 and run.stderr.startswith("error: --out") and not run.stdout, run.stderr[-2000:]
