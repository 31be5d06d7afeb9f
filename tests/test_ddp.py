"""DDP on the CPU (gloo): 2 processes x 1 episode per step == 1 process x 2 episodes per step.

Both ranks must end with identical parameters, equal to the single-process run's (same episode
ids, same averaged gradient), also across a stop at a step boundary and --resume. BatchNorm
running statistics are excluded: each rank updates them from its own episodes and DDP copies
rank 0's, so they cannot equal one process's running average over all episodes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tap_fast import distributed
from tap_fast.config import TrainConfig
from tap_fast.models import build_model
from tap_fast.run_log import read_log
from tap_fast.train import RunOptions, train
from tiny_training import model_parameters, one_thread, tiny_cli_args, tiny_config

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def _rank(rank: int, world: int, init_file: str, uninterrupted: dict, interrupted: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        summary = train(TrainConfig.from_dict(uninterrupted), RunOptions(progress=False))
        torch.save(summary["final_state_dict"], os.path.join(out, f"ddp-rank{rank}.pt"))
        config = TrainConfig.from_dict(interrupted)
        assert train(config, RunOptions(progress=False, stop_after=4))["stopped"]["episode"] == 4
        summary = train(config, RunOptions(progress=False, resume="auto"))
        torch.save(summary["final_state_dict"], os.path.join(out, f"resumed-rank{rank}.pt"))
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-synthetic"


def test_two_gloo_ranks_equal_one_process(data_root, tmp_path):
    ddp = tiny_config(data_root, tmp_path / "ddp", episodes=8, episodes_per_step=1)
    with one_thread():  # the single-process reference; also generates the tiny set before the ranks start
        single = train(ddp.replace(episodes_per_step=2, out_dir=str(tmp_path / "single")), RunOptions(progress=False))
    interrupted = ddp.replace(out_dir=str(tmp_path / "ddp-resumed"))
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), ddp.to_dict(), interrupted.to_dict(), str(tmp_path)),
             nprocs=2, join=True)

    reference = model_parameters(single["final_state_dict"])
    for name in ("ddp", "resumed"):
        ranks = [model_parameters(torch.load(tmp_path / f"{name}-rank{r}.pt")) for r in (0, 1)]
        for key, value in reference.items():
            assert torch.equal(ranks[0][key], ranks[1][key]), f"{name}: ranks differ in {key}"
            torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
        print(name, "max |ddp - single| =", max((ranks[0][k] - v).abs().max().item() for k, v in reference.items()))
    # the parameters moved: equality is not the trivial "nothing trained"
    torch.manual_seed(ddp.seed)
    initial = model_parameters(build_model(ddp).state_dict())
    assert all(not torch.equal(initial[k], v) for k, v in reference.items())
    # the global loss curve (all-reduced over ranks) is the single run's
    single_losses = [r["loss"] for r in read_log(tmp_path / "single" / "log.jsonl", "train")]
    ddp_losses = [r["loss"] for r in read_log(tmp_path / "ddp" / "log.jsonl", "train")]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    assert len(ddp_losses) == 4  # rank 0 alone logs: one record per step, not two


def test_torchrun_cli(data_root, tmp_path):
    """The real launcher: `python -m torch.distributed.run --nproc_per_node=2 -m tap_fast.train`."""
    config = tiny_config(data_root, tmp_path / "run", episodes=4, val_every=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "tap_fast.train", *tiny_cli_args(config)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 processes" in result.stdout and result.stdout.count("| tap | 3-way 1-shot |") == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["3-way 1-shot"]["episodes"] == 2  # split over the ranks, gathered
    assert [r["episode"] for r in read_log(tmp_path / "run" / "log.jsonl", "train")] == [2, 4]


@pytest.mark.parametrize("device, gpus, error", [
    ("cuda:1", 4, r"--device cuda:1 under torchrun with 2 processes per node would put them all on one GPU; "
                  r"use --device cuda"),
    ("cuda", 1, r"--device cuda: process 1 \(LOCAL_RANK 1\) needs cuda:1, but this process sees 1 GPU\(s\)"),
])
def test_torchrun_device_each_process_gets_its_own_gpu(monkeypatch, device, gpus, error):
    """Named before the process group is joined: NCCL's own error comes from deep in a collective."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device reached"))
    with pytest.raises(ValueError, match=error):
        distributed.setup(device)
    assert not dist.is_initialized()
