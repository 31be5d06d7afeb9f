"""Presets carry the paper's hyper-parameters; unknown names fail clearly."""
import pytest

from tap_fast.config import CHOICES, PRESETS, TrainConfig, preset
from tap_fast.stats import summarize_accuracies


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'kinetics'.*kinetics100"):
        preset("kinetics")


@pytest.mark.parametrize("name", ["kinetics100", "ssv2-small", "ssv2-full", "ucf101", "hmdb51"])
def test_paper_presets_use_the_paper_settings(name):
    config = preset(name)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == ("sgd", 1e-3, 0.9, 1e-4)
    assert (config.lr_step_epochs, config.lr_gamma, config.clip_norm) == (200, 0.1, 40.0)
    assert (config.backbone, config.lstm_hidden, config.mlp_hidden) == ("resnet50", 1024, (1024, 256, 64))
    assert (config.frames, config.resize, config.crop) == (6, 256, 224)
    # Something-Something labels say left/right: flipping would swap classes
    assert config.flip == (not name.startswith("ssv2"))


def test_config_round_trips_through_a_dict():
    config = PRESETS["synthetic"].replace(shot=5, mlp_hidden=(8, 4, 2))
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"wat": 1})


def test_accuracy_summary_has_a_95_percent_interval():
    summary = summarize_accuracies([1.0, 0.0] * 50)
    assert summary.mean == pytest.approx(50.0)
    assert summary.ci95 == pytest.approx(1.96 * 50.251 / 10, rel=1e-3)
    with pytest.raises(ValueError):
        summarize_accuracies([])


def test_train_cli_names_bad_choices(capsys):
    from tap_fast.train import main

    assert main(["--preset", "kinetics", "--no-progress"]) == 2
    assert "unknown preset 'kinetics'" in capsys.readouterr().err
    assert main(["--way", "1", "--no-progress"]) == 2
    assert "--way must be >= 2" in capsys.readouterr().err


# ---- settings are checked before any data or model work ------------------------------------------
def test_test_shots_must_be_positive(capsys):
    from tap_fast.train import main, validate_config

    with pytest.raises(ValueError, match="--test-shots must each be >= 1, got 1 0"):
        validate_config(PRESETS["synthetic"].replace(test_shots=(1, 0)))
    assert main(["--test-shots", "0", "--no-progress"]) == 2
    assert "--test-shots must each be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("item, message", [
    ("frames=abc", "frames takes an integer, got 'abc'"),
    ("frames=true", "frames takes an integer, got True"),  # bool is no int: would silently be T=1
    ("mlp_hidden=[0]", "mlp_hidden takes a non-empty list of positive integers"),
    ("mlp_hidden=16", "mlp_hidden takes a non-empty list"),
    ("bad_video_policy=maybe", "bad_video_policy must be one of fail, skip"),
    ("optimizer=adam", "optimizer must be one of adamw, sgd"),
    ("plots=1", "plots takes true or false"),
    ("lr=fast", "lr takes a number"),
])
def test_set_values_are_type_checked(item, message, capsys):
    from tap_fast.train import main, parse_args

    with pytest.raises(ValueError, match=f"--set {item}: {message}".replace("[", r"\[").replace("]", r"\]")):
        parse_args(["--set", item])
    assert main(["--set", item, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set") and err.count("\n") == 1  # one line, no traceback


def test_set_values_are_coerced():
    from tap_fast.train import parse_args

    config, _ = parse_args(["--set", "lr=1", "--set", "out_dir=2024", "--set", "split_dir=null",
                            "--set", "test_shots=[1,2]", "--set", "synthetic_families=null"])
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.out_dir == "2024" and config.split_dir is None  # a string field keeps the text as typed
    assert config.test_shots == (1, 2) and config.synthetic_families is None


def test_relative_data_root_is_stored_absolute(tmp_path, monkeypatch):
    from tap_fast.train import parse_args

    monkeypatch.chdir(tmp_path)
    config, _ = parse_args(["--data-root", "data/ssv2", "--split-dir", "lists"])
    assert config.data_root == str(tmp_path / "data" / "ssv2") and config.split_dir == str(tmp_path / "lists")


def _index(test_classes: int, videos: int):
    from tap_fast.data.index import DatasetIndex, VideoRecord

    records = []
    for split, classes in (("train", 5), ("val", 5), ("test", test_classes)):
        for c in range(classes):
            records += [VideoRecord(path=f"{split}{c}/v{v}.mp4", class_name=f"{split}{c}", split=split,
                                    num_frames=16) for v in range(videos)]
    return DatasetIndex(records)


def test_episodes_must_fit_every_split():
    from tap_fast.evaluate import check_episodes_fit

    config = PRESETS["synthetic"].replace(way=5, query=1)
    check_episodes_fit(config, _index(test_classes=5, videos=6), "test", (1, 5))
    with pytest.raises(ValueError, match=r"5-way 1-shot .* test split: split 'test' has 3 classes"):
        check_episodes_fit(config, _index(test_classes=3, videos=6), "test", (1,))
    with pytest.raises(ValueError, match=r"5-way 5-shot .* test split: class 'test0' has 3 videos, the episode "
                                         r"needs 6 \(shot 5 \+ query 1\) \(lower --test-shots\)"):
        check_episodes_fit(config, _index(test_classes=5, videos=3), "test", (1, 5), hint="lower --test-shots")


def test_device_without_cuda_is_one_line(monkeypatch, capsys):
    import torch

    from tap_fast.evaluate import main as evaluate_main
    from tap_fast.train import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--no-progress"]) == 2
    assert "error: --device cuda: no CUDA GPU is available" in capsys.readouterr().err
    assert main(["--device", "gpu", "--no-progress"]) == 2
    assert "error: --device 'gpu' is not a device" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", "nope.pt", "--device", "cuda:0"]) == 2
    assert "error: --device cuda:0: no CUDA GPU is available" in capsys.readouterr().err


def test_config_choices_agree_with_the_modules_that_act_on_them():
    """config.CHOICES (checked by --set and validate_config) lists what the code behind each field accepts."""
    from tap_fast.data.formats import FORMATS, POLICIES
    from tap_fast.data.select_decoder import DECODERS
    from tap_fast.precision import PRECISIONS

    assert CHOICES["decoder"] == DECODERS and CHOICES["precision"] == PRECISIONS
    assert CHOICES["bad_video_policy"] == POLICIES
    assert set(CHOICES["dataset_format"]) == {"synthetic", "auto", *FORMATS}


@pytest.mark.parametrize("changes, message", [
    ({"episodes_per_epoch": 0}, "--episodes-per-epoch must be >= 1, got 0"),  # was a ZeroDivisionError
    ({"lr_step_epochs": 0}, "--lr-step-epochs must be >= 1, got 0"),
    ({"feature_dim": 0}, "--feature-dim must be >= 1"),
    ({"lstm_hidden": 0}, "--lstm-hidden must be >= 1"),
    ({"resize": 0}, "--resize must be >= 1"),
    ({"crop": 80}, "--crop 80 is larger than --resize 64"),
    ({"lr": 0.0}, "--lr must be finite and > 0, got 0.0"),
    ({"lr": float("nan")}, "--lr must be finite and > 0, got nan"),
    ({"lr": float("inf")}, "--lr must be finite and > 0, got inf"),  # one step, then NaN weights
    ({"clip_norm": -1.0}, "--clip-norm must be > 0"),
    ({"otam_gamma": 0.0}, "--otam-gamma must be finite and > 0"),
    ({"otam_gamma": float("inf")}, "--otam-gamma must be finite and > 0"),
    ({"lr_gamma": 0.0}, r"--lr-gamma must be in \(0, 1\]"),
    ({"lr_gamma": 2.0}, r"--lr-gamma must be in \(0, 1\]"),
    ({"momentum": 1.0}, r"--momentum must be in \[0, 1\)"),
    ({"weight_decay": -1e-4}, "--weight-decay must be >= 0"),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"workers": -1}, "--workers must be >= 0"),
])
def test_numeric_settings_are_checked(changes, message):
    from tap_fast.train import validate_config

    with pytest.raises(ValueError, match=message):
        validate_config(PRESETS["synthetic"].replace(**changes))


def test_zero_where_zero_means_something_is_accepted(capsys):
    from tap_fast.train import main, validate_config

    validate_config(PRESETS["synthetic"].replace(workers=0, weight_decay=0.0, momentum=0.0, seed=0, lr_gamma=1.0,
                                                 clip_norm=float("inf")))
    assert main(["--set", "episodes_per_epoch=0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --episodes-per-epoch must be >= 1, got 0\n"  # one line, no traceback


@pytest.mark.parametrize("args, key, flag", [
    (["--episodes", "2", "--set", "episodes=4"], "episodes", "--episodes"),  # was: 4 episodes, silently
    (["--no-plots", "--set", "plots=true"], "plots", "--no-plots"),
    (["--out-dir", "a", "--set", "out_dir=b"], "out_dir", "--out-dir"),
])
def test_a_setting_given_by_flag_and_set_is_refused(args, key, flag, capsys):
    from tap_fast.train import main, parse_args

    message = f"{key} is given twice, by {flag} and by --set {key}=...; give it once"
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_args(args)
    assert main([*args, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_test_shots_must_not_repeat(capsys):
    from tap_fast.train import main, validate_config

    with pytest.raises(ValueError, match=r"--test-shots names a shot more than once \(1 5 1\)"):
        validate_config(PRESETS["synthetic"].replace(test_shots=(1, 5, 1)))  # was: the 1-shot test twice
    assert main(["--test-shots", "5", "5", "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: --test-shots names a shot more than once (5 5); give each once\n"


def test_data_root_that_is_a_file_is_one_line(tmp_path, capsys):
    from tap_fast.train import main

    (tmp_path / "afile").write_text("")
    # synthetic: was a FileExistsError traceback from generating the set in it, after the model was built
    assert main(["--data-root", str(tmp_path / "afile"), "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: --data-root {tmp_path / 'afile'} is a file, not a directory\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("data_root", [None, "missing"])
def test_a_real_preset_without_its_data_is_one_line_before_the_model(tmp_path, capsys, data_root):
    from tap_fast.train import main

    args = ["--preset", "ucf101", "--out-dir", str(tmp_path / "run"), "--no-progress"]
    if data_root:
        args += ["--data-root", str(tmp_path / data_root)]
    # was: ResNet-50 built first, its "no --backbone-weights" warning printed, then the error
    assert main(args) == 2
    expected = (f"--data-root {tmp_path / data_root} does not exist" if data_root else
                "--data-root is required for the ucf101 preset (a folder in the video-folders or frame-folders layout)")
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert not (tmp_path / "run").exists()


def test_split_dir_on_the_synthetic_set_is_refused(tmp_path):
    from tap_fast.train import parse_args, validate_config

    config, _ = parse_args(["--split-dir", str(tmp_path)])
    # the synthetic set keeps its own split: the lists were ignored without a word
    with pytest.raises(ValueError, match=f"--split-dir {tmp_path}: the synthetic set has its own class split"):
        validate_config(config)


def test_stop_after_must_be_positive(tmp_path, capsys):
    from tap_fast.train import main

    # 0 trained a whole step and wrote a checkpoint before "stopping"
    assert main(["--stop-after", "0", "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: --stop-after must be >= 1 (episodes to train before stopping), got 0\n"
    assert not (tmp_path / "run").exists()
