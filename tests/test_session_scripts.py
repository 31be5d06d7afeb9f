"""The device-session scripts (bench/gpu_session.sh, bench/dali_session.sh) name what they run:
every file exists and every `-k` selection selects benchmarks, checked here because a lent GPU's
minutes are too few to find out there (a selection that matches nothing passes its stage silently)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench/gpu_session.sh", "bench/dali_session.sh"]
# `bench/<suite>.py -k "<expression>"` or `-k <word>`, as the stages pass them to pytest
SELECTION = re.compile(r"(bench/test_\w+\.py)\s+-k\s+(?:\"([^\"]*)\"|(\S+))")
# Counts the items each (file, -k expression) selects, in one process (one torch import for all),
# collected as on the GPU machine (collection only: nothing runs): some suites add CUDA rows only
# where CUDA is available, and the soft-DTW suite needs pysdtw, a wheel the session carries there.
COLLECTOR = """
import importlib.util, json, sys, types
import pytest
import torch

torch.cuda.is_available = lambda: True
if importlib.util.find_spec("pysdtw") is None:
    for name in ("pysdtw", "pysdtw.sdtw_cpu", "pysdtw.sdtw_cuda"):
        stub = sys.modules[name] = types.ModuleType(name)
        stub.__getattr__ = lambda attr: None  # PEP 562: any name the suite imports from it

class Count:
    def pytest_collection_finish(self, session):
        self.n = len(session.items)

counts = []
for path, expr in json.loads(sys.argv[1]):
    count = Count()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", path, "-k", expr], plugins=[count])
    counts.append(getattr(count, "n", 0) if code in (0, 5) else -1)
print(json.dumps(counts))
"""


def _script_text(name: str) -> str:
    # one logical line per shell command: the stages wrap long commands with backslash-newlines
    return (REPO / name).read_text().replace("\\\n", " ")


def _selections() -> list[tuple[str, str, str]]:
    found = []
    for script in SCRIPTS:
        for match in SELECTION.finditer(_script_text(script)):
            found.append((script, match[1], match[2] if match[2] is not None else match[3]))
    return found


def test_the_scripts_name_files_that_exist():
    named = set()
    for script in SCRIPTS:
        named.update(re.findall(r"\b((?:bench|tests)/[\w/]+\.(?:py|sh))\b", _script_text(script)))
    assert len(named) > 10, named  # the pattern still finds the stages' files
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert not missing, f"the session scripts name files that do not exist: {missing}"
    tests = {(path, name) for script in SCRIPTS
             for path, name in re.findall(r"\b(tests/\w+\.py)::(\w+)", _script_text(script))}
    undefined = sorted(f"{path}::{name}" for path, name in tests
                       if not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M))
    assert not undefined, f"the session scripts name tests that do not exist: {undefined}"


def test_every_k_selection_selects_benchmarks():
    selections = _selections()
    assert len(selections) >= 8, selections  # the pattern still finds the stages' selections
    jobs = [(path, expr) for _, path, expr in selections]
    done = subprocess.run([sys.executable, "-c", COLLECTOR, json.dumps(jobs)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    empty = [f"{script}: {path} -k {expr!r} ({'collection failed' if n < 0 else 'selects nothing'})"
             for (script, path, expr), n in zip(selections, counts) if n <= 0]
    assert not empty, "\n".join(empty)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
