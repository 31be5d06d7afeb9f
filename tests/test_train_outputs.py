"""What a finished run reports: train accuracy in percent (as validation's), and the training time
apart from the meta-test's."""
from __future__ import annotations

import json
import re
import time
import types

import pytest
import torch

from tap_fast.run_log import read_log
from tap_fast.train import RunOptions, train
from tiny_training import one_thread, tiny_cli_args, tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-synthetic"


def test_train_accuracy_is_a_percent_and_train_seconds_exclude_the_test(data_root, tmp_path, monkeypatch):
    import tap_fast.train as train_module

    # a clock that jumps 1000 s during the meta-test
    offset, real_time, real_report = [0.0], time.time, train_module.test_report
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(time=lambda: real_time() + offset[0]))

    def slow_test_report(*args, **kwargs):
        offset[0] += 1000.0
        return real_report(*args, **kwargs)

    monkeypatch.setattr(train_module, "test_report", slow_test_report)
    config = tiny_config(data_root, tmp_path, episodes=8, log_every=1)
    with one_thread():
        summary = train(config, RunOptions(progress=False))
    assert summary["train_seconds"] < 1000 <= summary["test_seconds"]
    assert json.loads((tmp_path / "results.json").read_text())["train_seconds"] == summary["train_seconds"]

    # 3-way, 1 query per class: an episode's accuracy is 0, 1/3, 2/3 or 1, logged in percent
    accuracies = [r["accuracy"] for r in read_log(tmp_path / "log.jsonl", "train")]
    assert len(accuracies) == 8 and max(accuracies) > 1
    assert all(a in (0.0, pytest.approx(100 / 3), pytest.approx(200 / 3), 100.0) for a in accuracies), accuracies


@pytest.mark.parametrize("head", ["tap", "tsn"])
def test_a_diverged_run_stops_with_one_line(data_root, tmp_path, head, capsys):
    """--lr far too high: TSN used to train on with NaN weights to a chance-level "result", TAP to stop
    with its kernel's 'x and y contain NaN or inf values'. The last.pt kept is from before it."""
    from tap_fast.checkpoint import load_checkpoint
    from tap_fast.train import main

    with one_thread():
        assert main(tiny_cli_args(tiny_config(data_root, tmp_path, head=head, lr=1e12, checkpoint_every=1))) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: training diverged at episode \d+: the (weights|features|loss) became NaN or inf "
                        r"\(--lr 1e\+12 too high\? lower it\); last.pt is from episode \d+, before it", err.splitlines()[-1])
    assert not (tmp_path / "results.json").exists()
    weights = load_checkpoint(tmp_path / "last.pt")["model"].values()
    assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())
