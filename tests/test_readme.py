"""The README's Kernel API example runs as written (a snippet users copy must not rot)."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _kernel_api_example() -> str:
    section = README.read_text().split("## Kernel API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_kernel_api_example_runs():
    scope = {}
    exec(compile(_kernel_api_example(), "README.md (Kernel API)", "exec"), scope)
    q, s, t = scope["Q"], scope["S"], scope["T"]
    assert scope["scores"].shape == (q, s) and torch.isfinite(scope["scores"]).all()
    assert scope["P"].shape == scope["S_cos"].shape == (q, s, t, t)
    assert scope["distance"].shape == (250,) and torch.isfinite(scope["distance"]).all()
    assert all(w.grad is not None for w in scope["weights"])
