"""Resume: a run stopped mid-way (--stop-after, or a real SIGTERM) and resumed ends with exactly the
parameters, buffers and loss curve of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tap_fast.checkpoint import load_checkpoint
from tap_fast.run_log import read_log
from tap_fast.train import RunOptions, train
from tiny_training import one_thread, tiny_cli_args, tiny_config

EPISODES = 12


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-synthetic"  # shared by the training tests


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    with one_thread():
        summary = train(tiny_config(data_root, out, episodes=EPISODES), RunOptions(progress=False))
    return out, summary


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _train_losses(out_dir):
    return [(r["episode"], r["loss"], r["accuracy"]) for r in read_log(out_dir / "log.jsonl", "train")]


def test_stop_and_resume_matches_uninterrupted(data_root, uninterrupted, tmp_path):
    reference_dir, reference = uninterrupted
    config = tiny_config(data_root, tmp_path, episodes=EPISODES)
    with one_thread():
        first = train(config, RunOptions(progress=False, stop_after=5))
        assert first["stopped"]["episode"] == 5 and load_checkpoint(tmp_path / "last.pt")["episode"] == 5
        resumed = train(config, RunOptions(progress=False, resume="auto"))
    _assert_same_state(resumed["final_state_dict"], reference["final_state_dict"])
    assert _train_losses(tmp_path) == _train_losses(reference_dir)  # the loss curve, record for record
    without_time = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert without_time(resumed["history"]) == without_time(reference["history"])
    assert [h["episode"] for h in resumed["history"]] == [4, 8, 12]
    assert resumed["test"] == reference["test"]


def test_resume_refuses_other_settings(data_root, uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    config = tiny_config(data_root, reference_dir, episodes=EPISODES, lr=0.5)
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.5"):
        train(config, RunOptions(progress=False, resume="auto"))


def test_sigterm_checkpoints_and_resume_is_exact(data_root, uninterrupted, tmp_path):
    """A real SIGTERM to `python -m tap_fast.train`: it saves last.pt at a step boundary and exits
    143; --resume then finishes with the uninterrupted run's parameters."""
    _, reference = uninterrupted
    config = tiny_config(data_root, tmp_path, episodes=EPISODES, checkpoint_every=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tap_fast.train", *tiny_cli_args(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "last.pt").exists():  # the first step is done: interrupt mid-run
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    stopped_at = load_checkpoint(tmp_path / "last.pt")["episode"]
    assert 1 <= stopped_at < EPISODES, output
    assert f"stopped at episode {stopped_at} (SIGTERM)" in output
    with one_thread():
        resumed = train(config, RunOptions(progress=False, resume=str(tmp_path / "last.pt")))
    _assert_same_state(resumed["final_state_dict"], reference["final_state_dict"])


def test_checkpoint_holds_everything_resume_needs(uninterrupted):
    out, _ = uninterrupted
    last = load_checkpoint(out / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "loop", "episode", "config"} <= last.keys()
    assert last["episode"] == EPISODES and len(last["rng"]) == 1
    assert {"python", "numpy", "torch"} <= last["rng"][0].keys()
    best = load_checkpoint(out / "best.pt")
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in torch.load(
        out / "last.pt", weights_only=False)["loop"]["history"])
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
