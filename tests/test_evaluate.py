"""Meta-testing: cached per-video features give exactly the episode-by-episode result; the CLI."""
import json

import pytest
import torch

from tap_fast.data.build import episode_dataset, load_index
from tap_fast.evaluate import main as evaluate_main
from tap_fast.evaluate import meta_test
from tap_fast.models import build_model
from tiny_training import one_thread, tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-synthetic"


@pytest.mark.parametrize("head", ["tap", "otam", "tsn"])
def test_cached_features_match_full_episode_forward(data_root, tmp_path, head):
    config = tiny_config(data_root, tmp_path, head=head, test_shots=(2,))
    index = load_index(config)
    torch.manual_seed(0)
    model = build_model(config).eval()
    dataset = episode_dataset(config, index, "test", shot=2, train=False, seed=7)
    with one_thread():
        summary = meta_test(model, dataset, range(6), torch.device("cpu"), progress=False)
        expected = []
        with torch.no_grad():
            for k in range(6):
                batch = dataset[k]
                logits = model(batch["support"], batch["query"], config.way)
                expected.append((logits.argmax(-1) == batch["query_labels"]).float().mean().item())
    assert summary.episodes == 6
    assert summary.mean == pytest.approx(100 * sum(expected) / 6)


def test_eval_clip_refuses_training_datasets(data_root, tmp_path):
    config = tiny_config(data_root, tmp_path)
    index = load_index(config)
    dataset = episode_dataset(config, index, "train", shot=1, train=True, seed=0)
    with pytest.raises(ValueError, match="train=False"):
        dataset.eval_clip(index.records("train")[0])


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A tiny TSN run's out_dir (best.pt, last.pt, ...)."""
    from tap_fast.train import RunOptions, train

    out = tmp_path_factory.mktemp("trained")
    with one_thread():
        train(tiny_config(data_root, out, head="tsn", episodes=2, val_every=2), RunOptions(progress=False))
    return out


def test_evaluate_cli_reports_and_names_a_missing_checkpoint(trained, tmp_path, capsys):
    with one_thread():
        assert evaluate_main(["--checkpoint", str(trained / "best.pt"), "--episodes", "3",
                              "--json", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "3-way 1-shot" in out.out and f"meta-test on the test split, {trained / 'best.pt'}:" in out.out
    assert "it/s" not in out.err and "episode/s" not in out.err  # --no-progress: no bars
    assert json.loads((tmp_path / "eval.json").read_text())["results"]["3-way 1-shot"]["episodes"] == 3
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    assert evaluate_main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_evaluate_another_way(trained, capsys):
    """The heads score any number of classes: a 3-way run tested 2-way; too many classes for the
    test split, or a 1-way episode, are refused."""
    best = str(trained / "best.pt")
    with one_thread():
        assert evaluate_main(["--checkpoint", best, "--way", "2", "--episodes", "2", "--no-progress"]) == 0
    assert "| 2-way 1-shot |" in capsys.readouterr().out
    assert evaluate_main(["--checkpoint", best, "--way", "9", "--no-progress"]) == 2
    assert "9-way 1-shot episodes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", best, "--way", "1"])
    assert "expected an integer >= 2, got '1'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--episodes", "--shots"])
def test_evaluate_refuses_zero_counts(trained, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:  # 0 used to mean "the run's default"
        evaluate_main(["--checkpoint", str(trained / "best.pt"), flag, "0"])
    assert exit_info.value.code == 2 and "expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_evaluate_checks_its_inputs_before_the_meta_test(trained, tmp_path, monkeypatch, capsys):
    from tap_fast import evaluate

    def no_meta_test(*args, **kwargs):
        raise AssertionError("the meta-test ran before the inputs were checked")

    monkeypatch.setattr(evaluate, "test_report", no_meta_test)
    best = str(trained / "best.pt")
    assert evaluate_main(["--checkpoint", best, "--json", str(tmp_path / "no" / "dir" / "x.json")]) == 2
    assert f"the directory {tmp_path / 'no' / 'dir'} does not exist" in capsys.readouterr().err
    # a synthetic-set checkpoint would generate a whole new set in a mistyped --data-root
    assert evaluate_main(["--checkpoint", best, "--data-root", str(tmp_path / "typo"), "--no-progress"]) == 2
    assert "--data-root" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    # 5 support + 1 query videos per class: the tiny set has 3
    assert evaluate_main(["--checkpoint", best, "--shots", "1", "5", "--no-progress"]) == 2
    assert "3-way 5-shot episodes with 1 query video(s) per class do not fit the test split" in \
        capsys.readouterr().err


def test_evaluate_names_an_undecodable_video(trained, monkeypatch, capsys):
    from tap_fast.data.decode import CachedDecoder, VideoDecodeError

    def broken(self, path, indices):
        raise VideoDecodeError(path, "corrupt frame 3")

    monkeypatch.setattr(CachedDecoder, "decode", broken)
    assert evaluate_main(["--checkpoint", str(trained / "best.pt"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: cannot decode video ") and "corrupt frame 3" in err
    assert "Traceback" not in err


def test_evaluate_needs_no_backbone_weights_file(data_root, tmp_path):
    """The checkpoint holds every weight: the ImageNet file named in training may be gone (or relative)."""
    from tap_fast.checkpoint import save_atomic
    from tap_fast.evaluate import model_from_checkpoint

    config = tiny_config(data_root, tmp_path)
    torch.manual_seed(0)
    model = build_model(config)
    path = save_atomic({"model": model.state_dict(),
                        "config": config.replace(backbone_weights="gone/resnet50.pth").to_dict()}, tmp_path / "b.pt")
    loaded, _ = model_from_checkpoint(path, torch.device("cpu"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_evaluate_on_another_root_with_its_own_split_lists(tmp_path, monkeypatch, capsys):
    """A run trained with --split-dir, evaluated on another dataset: the run's lists are used unless
    --split-dir names others (with a note saying so); the index cache of a read-only root goes
    beside the checkpoint, never into the training run's old out_dir."""
    import shutil

    from test_data_formats import make_root

    from tap_fast.checkpoint import save_atomic
    from tap_fast.data import formats

    first = make_root(tmp_path / "first", "frames", classes=6, videos=2)
    first_lists = tmp_path / "first_lists"
    first_lists.mkdir()
    for split, classes in (("train", (0, 1)), ("val", (2, 3)), ("test", (4, 5))):
        (first_lists / f"{split}list.txt").write_text("".join(f"class_{c}\n" for c in classes))
    second = tmp_path / "second"
    second_lists = second / "lists"
    make_root(tmp_path / "made", "frames", classes=6, videos=2)
    for c in range(6):
        shutil.move(tmp_path / "made" / f"class_{c}", second / f"other_{c}")
    second_lists.mkdir()
    for split, classes in (("train", (0, 1)), ("val", (2, 3)), ("test", (4, 5))):
        (second_lists / f"{split}list.txt").write_text("".join(f"other_{c}\n" for c in classes))

    config = tiny_config(first, tmp_path / "old_run", dataset_format="auto", split_dir=str(first_lists), way=2)
    torch.manual_seed(0)
    run = tmp_path / "moved_run"
    run.mkdir()
    best = save_atomic({"model": build_model(config).state_dict(), "config": config.to_dict()}, run / "best.pt")
    args = ["--checkpoint", str(best), "--episodes", "2", "--no-progress"]

    assert evaluate_main(args + ["--data-root", str(second)]) == 2
    err = capsys.readouterr().err
    assert f"using the run's split lists {first_lists}" in err and "class_0" in err
    assert evaluate_main(args + ["--data-root", str(second), "--split-dir", str(tmp_path / "nope")]) == 2
    assert "--split-dir" in capsys.readouterr().err
    monkeypatch.setattr(formats, "_writable_dir", lambda path: path != second)  # a read-only root
    with one_thread():
        assert evaluate_main(args + ["--data-root", str(second), "--split-dir", str(second_lists)]) == 0
    assert "2-way 1-shot" in capsys.readouterr().out
    assert list(run.glob("index-second-*.json")) and not (tmp_path / "old_run").exists()


def test_evaluate_refuses_a_repeated_shot(trained, monkeypatch, capsys):
    from tap_fast import evaluate

    monkeypatch.setattr(evaluate, "test_report", lambda *a, **k: pytest.fail("the meta-test ran"))
    with pytest.raises(SystemExit) as exit_info:  # was: the 1-shot test run twice, reported once
        evaluate_main(["--checkpoint", str(trained / "best.pt"), "--shots", "1", "1"])
    assert exit_info.value.code == 2 and "--shots names a K more than once (1 1)" in capsys.readouterr().err


def test_evaluate_json_under_a_file_is_named_a_file(trained, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert evaluate_main(["--checkpoint", str(trained / "best.pt"), "--json", str(tmp_path / "afile" / "x.json")]) == 2
    assert capsys.readouterr().err == f"error: --json {tmp_path / 'afile' / 'x.json'}: {tmp_path / 'afile'} is a file, " \
                                      f"not a directory\n"


def test_evaluate_names_weights_that_do_not_fit_the_config(trained, tmp_path, capsys):
    """An edited or foreign checkpoint: one line naming the mismatch, not load_state_dict's key dump."""
    checkpoint = torch.load(trained / "best.pt", weights_only=False)  # a TSN run
    checkpoint["config"]["head"] = "tap"
    torch.save(checkpoint, tmp_path / "edited.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "edited.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'edited.pt'}: its weights do not fit the model its saved config "
                          f"describes (head 'tap', backbone 'small': missing head.temporal.")
    assert len(err.splitlines()) == 1
    checkpoint["model"] = 3
    torch.save(checkpoint, tmp_path / "edited.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "edited.pt"), "--no-progress"]) == 2
    assert "its 'model' entry is not a state dict (int)" in capsys.readouterr().err


def test_evaluate_of_a_run_whose_data_moved_says_to_name_it(trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "best.pt", weights_only=False)
    checkpoint["config"].update(dataset_format="video-folders", data_root=str(tmp_path / "moved"))
    torch.save(checkpoint, tmp_path / "real.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "real.pt"), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: the run's dataset root {tmp_path / 'moved'} is not there (moved, or "
                                       "another machine); name where the data is with --data-root\n")


def test_evaluate_refuses_split_lists_for_a_synthetic_run(trained, tmp_path, capsys):
    # the synthetic set keeps its own split: the lists were ignored without a word
    assert evaluate_main(["--checkpoint", str(trained / "best.pt"), "--split-dir", str(tmp_path)]) == 2
    assert f"error: --split-dir {tmp_path}: the synthetic set has its own class split" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_evaluate_refuses_a_device_it_has_no_path_for(trained, device, capsys):
    # was: a traceback from model.to("mps"), or from .item() on meta tensors after the data was loaded
    assert evaluate_main(["--checkpoint", str(trained / "best.pt"), "--device", device, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: --device {device}: tap_fast runs on cpu or cuda devices only " \
                                      f"(auto, cpu, cuda or cuda:N)\n"


def test_evaluate_names_a_checkpoint_from_another_project(tmp_path, capsys):
    """{"model", "config"} is a common layout: a config that is an argparse Namespace was a TypeError
    traceback, a dict of other keys an "unknown config keys" error that named no file."""
    import argparse

    weights = {"fc.weight": torch.zeros(2, 2)}
    torch.save({"model": weights, "config": argparse.Namespace(lr=0.1)}, tmp_path / "namespace.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "namespace.pt"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'namespace.pt'} is not a tap_fast checkpoint (its " \
                                      f"'config' entry is a Namespace, not the dict tap_fast.train saves)\n"
    torch.save({"model": weights, "config": {"lr": 0.1, "arch": "resnet18"}}, tmp_path / "other.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "other.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'other.pt'}: its saved config is not one this tap_fast reads")
    assert err.endswith("unknown config keys: ['arch']\n")


def test_evaluate_json_never_replaces_the_checkpoint(trained, tmp_path, monkeypatch, capsys):
    import shutil

    from tap_fast import evaluate

    monkeypatch.setattr(evaluate, "test_report", lambda *a, **k: pytest.fail("the meta-test ran"))
    best = shutil.copy(trained / "best.pt", tmp_path / "best.pt")
    (tmp_path / "link.json").symlink_to(best)
    for target in (best, tmp_path / "link.json"):  # was: the weights overwritten by the results
        assert evaluate_main(["--checkpoint", str(best), "--json", str(target), "--no-progress"]) == 2
        assert capsys.readouterr().err == f"error: --json {target} is the checkpoint itself; name another file\n"
    assert torch.load(best, weights_only=False)["model"]


def test_evaluate_json_says_what_it_measured(trained, tmp_path, capsys):
    # was: only {"3-way 1-shot": {...}}, the same for a val run as for a test run of any checkpoint
    with one_thread():
        assert evaluate_main(["--checkpoint", str(trained / "best.pt"), "--split", "val", "--episodes", "2",
                              "--json", str(tmp_path / "val.json"), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "val.json").read_text())
    assert {k: v for k, v in saved.items() if k != "results"} == {
        "checkpoint": str(trained / "best.pt"), "head": "tsn", "split": "val"}
    assert list(saved["results"]) == ["3-way 1-shot"] and saved["results"]["3-way 1-shot"]["episodes"] == 2


def test_evaluate_decoder_overrides_the_runs(trained, tmp_path, monkeypatch, capsys):
    """A run forced to --decoder dali-gpu, evaluated on a machine without a GPU: the error named a
    --decoder option that evaluate did not have."""
    checkpoint = torch.load(trained / "best.pt", weights_only=False)
    checkpoint["config"]["decoder"] = "dali-gpu"
    torch.save(checkpoint, tmp_path / "dali.pt")
    args = ["--checkpoint", str(tmp_path / "dali.pt"), "--device", "cpu", "--episodes", "2", "--no-progress"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert evaluate_main(args) == 2
    err = capsys.readouterr().err
    assert "evaluate: using the run's decoder dali-gpu (--decoder to choose another)" in err
    assert "error: --decoder dali-gpu needs" in err
    with one_thread():
        assert evaluate_main(args + ["--decoder", "pyav"]) == 0
    out = capsys.readouterr()
    assert "3-way 1-shot" in out.out and "using the run's decoder" not in out.err


def test_evaluate_of_a_synthetic_run_never_generates_in_another_root(trained, data_root, tmp_path, capsys):
    # was: a new synthetic set written into the folder named (say the user's own dataset), then
    # "evaluated on" it: the report looked like one on that dataset
    (tmp_path / "my_videos" / "waving").mkdir(parents=True)
    args = ["--checkpoint", str(trained / "best.pt"), "--episodes", "2", "--no-progress", "--data-root"]
    assert evaluate_main(args + [str(tmp_path / "my_videos")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data-root {tmp_path / 'my_videos'} holds no synthetic-v")
    assert "use python -m tap_fast.predict" in err
    assert sorted(p.name for p in (tmp_path / "my_videos").iterdir()) == ["waving"]
    with one_thread():  # where the set is (moved, or as here where it was made): evaluated
        assert evaluate_main(args + [str(data_root)]) == 0
    assert "3-way 1-shot" in capsys.readouterr().out


def test_ctrl_c_in_evaluate_or_predict_is_one_line(capsys):
    from tap_fast.evaluate import run_reporting_errors

    def interrupted():
        raise KeyboardInterrupt  # was: a traceback from wherever the meta-test or the probing stood

    assert run_reporting_errors(interrupted) == (None, 130)
    assert capsys.readouterr().err == "tap_fast: interrupted (Ctrl-C)\n"


def test_a_file_not_found_without_a_path_keeps_its_traceback(monkeypatch, capsys):
    import tap_fast.train as train_module
    from tap_fast.evaluate import run_reporting_errors

    def lost():  # as from a library's internals (a worker's shared memory): the one line said nothing
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(FileNotFoundError):
        run_reporting_errors(lost)
    monkeypatch.setattr(train_module, "train", lambda *args: lost())
    with pytest.raises(FileNotFoundError):
        train_module.main(["--no-progress"])

    def named():  # with its path, or our own message: still one line
        raise FileNotFoundError(2, "No such file or directory", "/data/x.mp4")

    assert run_reporting_errors(named) == (None, 2)
    assert capsys.readouterr().err == "error: [Errno 2] No such file or directory: '/data/x.mp4'\n"
