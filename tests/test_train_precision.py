"""Mixed precision choices and training under autocast on the CPU."""
from __future__ import annotations

import math

import pytest
import torch

from tap_fast.checkpoint import load_checkpoint
from tap_fast.precision import resolve_precision
from tap_fast.run_log import read_log
from tap_fast.train import RunOptions, parse_args, train
from tiny_training import one_thread, tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-synthetic"


def test_precision_defaults_and_errors():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"  # CPU default: fp32
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(ValueError, match="--precision must be one of"):
        resolve_precision("int8", torch.device("cpu"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_tsn_trains_under_autocast(data_root, tmp_path, precision):
    config = tiny_config(data_root, tmp_path, head="tsn", precision=precision, episodes=4, val_every=4)
    with one_thread():
        summary = train(config, RunOptions(progress=False))
    losses = [r["loss"] for r in read_log(tmp_path / "log.jsonl", "train")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    scaler = load_checkpoint(tmp_path / "last.pt")["scaler"]
    assert (scaler.get("scale") is not None) == (precision == "fp16")  # GradScaler for fp16 only
    assert all(v.dtype == torch.float32 for k, v in summary["final_state_dict"].items() if v.is_floating_point())


@pytest.mark.parametrize("head", ["tap", "otam"])
def test_alignment_heads_train_under_bf16_autocast(data_root, tmp_path, head):
    config = tiny_config(data_root, tmp_path, head=head, precision="bf16", episodes=2, val_every=2)
    with one_thread():
        train(config, RunOptions(progress=False))
    losses = [r["loss"] for r in read_log(tmp_path / "log.jsonl", "train")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_set_and_flags_parse(tmp_path):
    config, options = parse_args(["--set", "mlp_hidden=[32,16]", "--set", "optimizer=sgd", "--precision", "bf16",
                                  "--episodes-per-step", "4", "--stop-after", "7", "--profile"])
    assert config.mlp_hidden == (32, 16) and config.optimizer == "sgd" and config.precision == "bf16"
    assert config.episodes_per_step == 4 and config.feature_dim == 128  # the rest: the synthetic preset
    assert (options.resume, options.stop_after, options.profile) == (None, 7, True)
    # a bare --resume reads <out-dir>/last.pt while parsing (tests/test_resume.py covers a real one)
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path}/last.pt"):
        parse_args(["--resume", "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_args(["--set", "no_such_field=1"])
