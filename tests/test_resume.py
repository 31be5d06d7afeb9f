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


def test_resume_into_another_out_dir_matches_uninterrupted(data_root, uninterrupted, tmp_path):
    reference_dir, reference = uninterrupted
    with one_thread():
        train(tiny_config(data_root, tmp_path / "first", episodes=EPISODES), RunOptions(progress=False, stop_after=5))
        resumed = train(tiny_config(data_root, tmp_path / "second", episodes=EPISODES),
                        RunOptions(progress=False, resume=str(tmp_path / "first" / "last.pt")))
    _assert_same_state(resumed["final_state_dict"], reference["final_state_dict"])
    assert _train_losses(tmp_path / "second") == _train_losses(reference_dir)  # the first folder's records too
    # and TensorBoard's curves (they used to start at the resume, the rest left in the first folder)
    assert _tensorboard_steps(tmp_path / "second", "train/loss") == _tensorboard_steps(reference_dir, "train/loss")


def _tensorboard_steps(out_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]


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


def _ctrl_c_in_a_terminal(train_args, ready, delay=0.0) -> tuple[int, str]:
    """Run `python -m tap_fast.train train_args` in a process group of its own and, once ready() and
    `delay` seconds later, send SIGINT to the whole group, as a terminal's Ctrl-C does: (exit code, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "tap_fast.train", *train_args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a CI runner may ignore it
    deadline = time.time() + 120
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    return proc.returncode, output


def test_ctrl_c_with_loader_workers_stops_at_the_step_end(data_root, tmp_path):
    """Ctrl-C in a terminal reaches the DataLoader workers too: they used to die of it, and a step
    still owed batches ended in "DataLoader worker ... exited unexpectedly", with nothing saved."""
    config = tiny_config(data_root, tmp_path, episodes=64 * 32, episodes_per_step=32, workers=2,
                         checkpoint_every=1000, val_every=10 ** 6)
    log = tmp_path / "log.jsonl"
    # after the first step, mid-step: 31 of its 32 batches still to come, 4 prefetched
    returncode, output = _ctrl_c_in_a_terminal(tiny_cli_args(config), lambda: log.is_file() and log.read_text())
    assert returncode == 130 and "Traceback" not in output, output
    stopped_at = load_checkpoint(tmp_path / "last.pt")["episode"]
    assert f"stopped at episode {stopped_at} (SIGINT)" in output and stopped_at % 32 == 0


@pytest.mark.parametrize("when", ["starting", "writing"])
def test_ctrl_c_while_the_synthetic_set_is_made_is_one_line(tmp_path, when):
    """Ctrl-C in a terminal reaches the whole process group: the generating workers too, while they
    start (import) or write videos. It used to end in tracebacks from the parent and from every
    worker; now one line, exit 130, no half-made set."""
    gen = tmp_path / "gen"
    # every class folder made: the pool is being started; a video written: the workers are writing
    ready = ((lambda: len(list(gen.glob(".synthetic-*.tmp-*/videos/*"))) == 100) if when == "starting" else
             (lambda: bool(list(gen.glob(".synthetic-*.tmp-*/videos/*/*.webm")))))
    returncode, output = _ctrl_c_in_a_terminal(
        ["--data-root", str(gen), "--out-dir", str(tmp_path / "run"), "--no-progress"], ready,
        delay=0.8 if when == "starting" else 0)  # the workers are importing torch (about 2 s here)
    assert returncode == 130, output
    assert output.splitlines()[-1] == "tap_fast: interrupted (Ctrl-C)" and "Traceback" not in output, output
    assert list(gen.iterdir()) == []  # the temporary set is removed, no final one appears


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
    umask = os.umask(0)
    os.umask(umask)
    for name in ("last.pt", "best.pt", "results.json", "report.md"):  # readable as open() would create them
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_resume_from_best_pt_names_the_mistake(data_root, uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    config = tiny_config(data_root, tmp_path, episodes=EPISODES)
    with pytest.raises(ValueError, match="best.pt holds model weights only .*resume from last.pt"):
        train(config, RunOptions(progress=False, resume=str(reference_dir / "best.pt")))


def test_a_previous_run_is_not_overwritten_unasked(data_root, tmp_path, capsys):
    from tap_fast.train import main

    config = tiny_config(data_root, tmp_path, episodes=2, val_every=2)
    args = tiny_cli_args(config)
    with one_thread():
        assert main(args) == 0
    assert "wrote best.pt, last.pt, results.json, report.md, log.jsonl in" in capsys.readouterr().out  # no plots
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out-dir {tmp_path} already holds a previous run (last.pt, best.pt, results.json); "
                          f"continue it with --resume, pick a new --out-dir, or pass --overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()} == before  # untouched
    assert main([*args, "--overwrite", "--resume"]) == 2
    assert "--overwrite and --resume exclude each other" in capsys.readouterr().err
    with one_thread():
        assert main([*args, "--overwrite"]) == 0
    assert [r["episode"] for r in read_log(tmp_path / "log.jsonl", "train")] == [1, 2]
    if (tmp_path / "tensorboard").is_dir():  # the old run's events are gone, not mixed in
        assert len(list((tmp_path / "tensorboard").glob("events.*"))) == 1


def test_an_undecodable_video_mid_run_keeps_the_training_done(data_root, tmp_path, monkeypatch, capsys):
    """A decode failure in episode 3 (the index accepted the video): last.pt at episode 2, a one-line
    error naming the file, and --resume goes on from there."""
    from tap_fast.data.decode import CachedDecoder, VideoDecodeError
    from tap_fast.train import main

    decode, calls = CachedDecoder.decode, []

    def fails_in_episode_3(self, path, indices):
        calls.append(path)
        if len(calls) > 12:  # 3-way 1-shot 1-query: 6 videos an episode
            raise VideoDecodeError(path, "corrupt frame")
        return decode(self, path, indices)

    config = tiny_config(data_root, tmp_path, episodes=4, val_every=100, checkpoint_every=100)
    monkeypatch.setattr(CachedDecoder, "decode", fails_in_episode_3)
    with one_thread():
        assert main(tiny_cli_args(config)) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: cannot decode video ") and ": corrupt frame; last.pt saved at episode 2" in err
    assert load_checkpoint(tmp_path / "last.pt")["episode"] == 2
    monkeypatch.setattr(CachedDecoder, "decode", decode)
    with one_thread():
        assert train(config, RunOptions(progress=False, resume="auto"))["config"]["episodes"] == 4


def test_test_settings_are_checked_before_training(data_root, tmp_path, capsys):
    """--test-shots 5 on 3 videos per class fails before the first step, not after the training; a
    paper-style ResNet-50 without --backbone-weights is warned about."""
    config = tiny_config(data_root, tmp_path, test_shots=(1, 5), backbone="resnet50")
    with pytest.raises(ValueError, match=r"3-way 5-shot .* do not fit the test split: class .* has 3 videos, "
                                         r"the episode needs 6 .*\(lower --test-shots or --way\)"):
        train(config, RunOptions(progress=False))
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "log.jsonl").exists()
    assert "warning: no --backbone-weights: ResNet-50 starts from random weights" in capsys.readouterr().err


def test_an_out_dir_with_only_logs_is_a_previous_run(data_root, tmp_path, capsys):
    """A run killed before its first checkpoint left log.jsonl and tensorboard/: a new run would mix its
    records and events with them, so it is refused as any previous run; --overwrite clears them."""
    from tap_fast.train import main

    (tmp_path / "log.jsonl").write_text('{"kind": "train", "episode": 99, "step": 99, "loss": 9.0}\n')
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old")
    args = tiny_cli_args(tiny_config(data_root, tmp_path, episodes=2, val_every=2))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --out-dir {tmp_path} already holds a previous run (log.jsonl, tensorboard/); it stopped "
                   f"before its first checkpoint (nothing to resume); pick a new --out-dir, or pass --overwrite to "
                   f"delete it and start again\n")
    assert (tmp_path / "tensorboard" / "events.out.tfevents.old").exists()
    assert [r["episode"] for r in read_log(tmp_path / "log.jsonl")] == [99]  # untouched
    with one_thread():
        assert main([*args, "--overwrite"]) == 0
    assert [r["episode"] for r in read_log(tmp_path / "log.jsonl", "train")] == [1, 2]
    assert not (tmp_path / "tensorboard" / "events.out.tfevents.old").exists()


def test_cli_resume_continues_with_the_checkpoint_settings(data_root, tmp_path, monkeypatch, capsys):
    """`--resume` alone continues with the settings saved in last.pt (not the preset's defaults); options
    typed again override them, and the changes are named."""
    from tap_fast.train import main, parse_args

    config = tiny_config(data_root, tmp_path / "run", episodes=8, val_every=4)
    with one_thread():
        assert main([*tiny_cli_args(config), "--stop-after", "2"]) == 0
    capsys.readouterr()
    run = str(tmp_path / "run")
    resumed, options = parse_args(["--out-dir", run, "--resume"])
    assert resumed == config and options.resume == "auto"
    monkeypatch.chdir(tmp_path)  # a checkpoint named by path, from another directory: its own out_dir
    assert parse_args(["--resume", f"{run}/last.pt"])[0] == config
    assert capsys.readouterr().err == ""  # nothing changed: nothing said
    resumed, _ = parse_args(["--out-dir", run, "--resume", "--episodes", "10", "--set", "val_episodes=3"])
    assert resumed == config.replace(episodes=10, val_episodes=3)
    assert capsys.readouterr().err == "tap_fast: --resume: episodes 8 -> 10, val_episodes 2 -> 3\n"
    with one_thread():
        assert main(["--out-dir", run, "--resume", "--episodes", "10", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"] == config.replace(episodes=10).to_dict()
    assert [r["episode"] for r in read_log(tmp_path / "run" / "log.jsonl", "val")] == [4, 8, 10]
    # a changed setting that would change the training is still refused; a missing checkpoint named
    assert main(["--out-dir", run, "--resume", "--lr", "0.5", "--no-progress"]) == 2
    assert "(lr: 0.001 -> 0.5)" in capsys.readouterr().err
    assert main(["--out-dir", str(tmp_path / "none"), "--resume", "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: checkpoint not found: {tmp_path / 'none' / 'last.pt'}\n"


def test_resume_by_path_continues_in_the_checkpoints_folder(data_root, tmp_path, monkeypatch, capsys):
    """--resume PATH from another working directory: the run goes on beside PATH (its saved out_dir is
    relative to where it started), and another run's folder named by --out-dir is refused, not overwritten."""
    from tap_fast.train import main, parse_args

    config = tiny_config(data_root, "runs/rel", episodes=8, val_every=4)  # out_dir relative, as typed
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    monkeypatch.chdir(tmp_path / "A")
    with one_thread():
        assert main([*tiny_cli_args(config), "--stop-after", "2"]) == 0
    checkpoint = tmp_path / "A" / "runs" / "rel" / "last.pt"
    monkeypatch.chdir(tmp_path / "B")
    assert parse_args(["--resume", str(checkpoint)])[0].out_dir == str(checkpoint.parent)
    other = tiny_config(data_root, tmp_path / "B" / "other", episodes=2, val_every=2)
    with one_thread():
        assert main(tiny_cli_args(other)) == 0
    capsys.readouterr()
    assert main(["--resume", str(checkpoint), "--out-dir", str(tmp_path / "B" / "other"), "--no-progress"]) == 2
    assert "already holds another run" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "B" / "other" / "last.pt")["config"]["episodes"] == 2  # untouched
    with one_thread():
        assert main(["--resume", str(checkpoint), "--no-progress"]) == 0
    assert load_checkpoint(checkpoint)["episode"] == 8 and not (tmp_path / "B" / "runs").exists()


def test_first_speed_record_after_resume_counts_only_its_own_steps(data_root, tmp_path, monkeypatch):
    """A log interval cut by a stop: after --resume its loss and accuracy still average all its steps (as
    an uninterrupted run's), but episodes/s divides only the steps timed since the resume."""
    from tap_fast.step_timer import StepTimer

    monkeypatch.setattr(StepTimer, "pop_interval", lambda self: ({}, 1.0))  # every interval: 1 s
    config = tiny_config(data_root, tmp_path, episodes=8, log_every=4, val_every=8)
    with one_thread():
        train(config, RunOptions(progress=False, stop_after=3))
        train(config, RunOptions(progress=False, resume="auto"))
    speeds = [(r["episode"], r["episodes_per_s"]) for r in read_log(tmp_path / "log.jsonl", "train")]
    assert speeds == [(4, 1.0), (8, 4.0)]  # 1 step since the resume in the first interval, not 4


def test_an_out_dir_that_cannot_hold_the_run_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    """A file, a path under a file, a read-only folder: named before the model and the data (was a
    FileExistsError/NotADirectoryError traceback when the log was first opened)."""
    from tap_fast import train as train_module

    afile = tmp_path / "afile"
    afile.write_text("")
    for out, message in [(afile, f"--out-dir {afile} is a file, not a directory"),
                         (afile / "sub", f"--out-dir {afile / 'sub'}: {afile} is a file, not a directory")]:
        assert train_module.main(tiny_cli_args(tiny_config(data_root, out, episodes=2, val_every=2))) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    monkeypatch.setattr(train_module.os, "access", lambda path, mode: False)  # root writes anywhere: pretend
    assert train_module.main(tiny_cli_args(tiny_config(data_root, tmp_path / "ro" / "run"))) == 2
    assert capsys.readouterr().err == f"error: --out-dir {tmp_path / 'ro' / 'run'}: {tmp_path} is not writable\n"


def test_resume_in_another_out_dir_takes_best_pt_along(data_root, uninterrupted, tmp_path):
    """The final test reads <out-dir>/best.pt: resumed into a new --out-dir the run's best.pt comes along
    (was 'checkpoint not found: <out-dir>/best.pt' after the training, unless a validation improved)."""
    import shutil

    reference_dir, reference = uninterrupted
    with one_thread():  # a finished run: no step left, straight to the test
        resumed = train(tiny_config(data_root, tmp_path / "moved", episodes=EPISODES),
                        RunOptions(progress=False, resume=str(reference_dir / "last.pt")))
    assert (tmp_path / "moved" / "best.pt").read_bytes() == (reference_dir / "best.pt").read_bytes()
    assert resumed["test"] == reference["test"]
    # and its log: the training plot covers the whole run, not only the resumed part
    assert read_log(tmp_path / "moved" / "log.jsonl") == read_log(reference_dir / "log.jsonl")
    # last.pt alone: nothing to test at the end of its run; with episodes to go, the next validation picks one
    (tmp_path / "alone").mkdir()
    shutil.copy(reference_dir / "last.pt", tmp_path / "alone" / "last.pt")
    with pytest.raises(ValueError, match="is at the end of its run .episode 12. and there is no best.pt beside it"):
        train(tiny_config(data_root, tmp_path / "alone", episodes=EPISODES), RunOptions(progress=False, resume="auto"))
    with one_thread():
        train(tiny_config(data_root, tmp_path / "alone", episodes=EPISODES + 4),
              RunOptions(progress=False, resume="auto"))
    assert load_checkpoint(tmp_path / "alone" / "best.pt")["episode"] == EPISODES + 4
