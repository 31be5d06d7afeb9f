"""Presets carry the paper's hyper-parameters; unknown names fail clearly."""
import pytest

from tap_fast.config import PRESETS, TrainConfig, preset
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
