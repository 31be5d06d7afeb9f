"""bench/memory_model.py, the GPU peak-memory predictor that runs without a GPU, keeps working.

It runs in a subprocess: it sets TRITON_INTERPRET=1 for its own process, which would change how
later tests in this one run the Triton kernels on a GPU machine.
"""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys
sys.path.insert(0, {bench!r})
from memory_model import fused_peak_bytes
peak = lambda sms, backward: fused_peak_bytes(2, 3, 8, sms, backward, d=16, hidden=(32, 16, 8))
print(json.dumps(dict(fwd=peak(8, False), bwd8=peak(8, True), bwd64=peak(64, True))))
"""


def test_memory_model_sees_the_backward_workspace():
    run = subprocess.run([sys.executable, "-c", _SCRIPT.format(bench=str(REPO / "bench"))],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < peaks["fwd"] < peaks["bwd8"]
    # more SMs -> more persistent programs, each with its weight slots and dz2 scratch
    assert peaks["bwd64"] > peaks["bwd8"]
