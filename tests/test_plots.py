"""training.png (the loss from log.jsonl's per-step records, smoothed, and the validation curve) and
alignment.png (the paper's Figure 2) for every head."""
import math

import numpy as np
import pytest
import torch

from tap_fast.data.build import load_index
from tap_fast.models import build_model
from tap_fast.plots import plot_alignment_example, plot_training_curves, training_loss_curve
from tiny_training import one_thread, tiny_config


def test_training_loss_curve_uses_every_record_and_smooths_noise():
    records = [{"kind": "train", "episode": 10 * (i + 1), "step": i + 1, "loss": 1.0 + (-1) ** i * 0.5}
               for i in range(200)]
    episodes, losses, smoothed = training_loss_curve(records)
    assert episodes == [r["episode"] for r in records] and losses == [r["loss"] for r in records]
    spread = lambda xs: max(xs) - min(xs)  # noqa: E731
    assert spread(smoothed[50:]) < 0.2 * spread(losses)  # the alternation averaged away
    assert math.isclose(smoothed[0], losses[0])  # debiased: no pull towards 0 at the start
    few = records[:5]
    assert training_loss_curve(few)[2] == [r["loss"] for r in few]  # too few to smooth


def test_training_plot_is_written_from_log_records(tmp_path):
    history = [{"episode": 100, "train_loss": 1.0, "val_accuracy": 40.0, "val_ci95": 2.0},
               {"episode": 200, "train_loss": 0.8, "val_accuracy": 50.0, "val_ci95": 2.0}]
    records = [{"kind": "train", "episode": e, "step": e, "loss": 1.5 - e / 400} for e in range(1, 201)]
    path = plot_training_curves(history, tmp_path / "training.png", records)
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("head, rows", [("tap", 3), ("otam", 3), ("tsn", 1)])
def test_alignment_plot_for_every_head(tmp_path_factory, tmp_path, monkeypatch, head, rows):
    """alignment.png: P, S and P*S where the head aligns frames (TAP's P, OTAM's soft-DTW path), S alone
    for TSN; the maps handed to the figure are the head's own."""
    from matplotlib import pyplot

    config = tiny_config(tmp_path_factory.getbasetemp() / "tiny-synthetic", tmp_path, head=head)
    torch.manual_seed(0)
    model = build_model(config).eval()
    shown = []
    real_imshow = pyplot.Axes.imshow

    def imshow(ax, image, **kwargs):
        shown.append(image)
        return real_imshow(ax, image, **kwargs)

    monkeypatch.setattr(pyplot.Axes, "imshow", imshow)
    with one_thread():
        path = plot_alignment_example(model, config, load_index(config), torch.device("cpu"), tmp_path / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert len(shown) == 2 * rows and all(image.shape == (config.frames, config.frames) for image in shown)
    if rows == 3:  # P * S is the product of the two maps above it
        assert np.allclose(shown[4], shown[0] * shown[2], atol=1e-6)


def test_few_loss_records_are_drawn_with_markers(tmp_path, monkeypatch):
    """One train record (a run shorter than two --log-every intervals) is a single point: as a plain line
    it would draw nothing."""
    from matplotlib import pyplot

    lines, real_plot = [], pyplot.Axes.plot
    monkeypatch.setattr(pyplot.Axes, "plot", lambda ax, *a, **k: lines.extend(real_plot(ax, *a, **k)) or lines)
    history = [{"episode": 10, "train_loss": 1.0, "val_accuracy": 40.0, "val_ci95": 2.0}]
    plot_training_curves(history, tmp_path / "training.png", [{"kind": "train", "episode": 10, "step": 10,
                                                                "loss": 1.1}])
    assert lines and all(line.get_marker() not in (None, "", "None") for line in lines)
