"""Meta-testing: cached per-video features give exactly the episode-by-episode result; the CLI."""
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


def test_evaluate_cli_reports_and_names_a_missing_checkpoint(data_root, tmp_path, capsys):
    from tap_fast.train import RunOptions, train

    config = tiny_config(data_root, tmp_path, head="tsn", episodes=2, val_every=2)
    with one_thread():
        train(config, RunOptions(progress=False))
        assert evaluate_main(["--checkpoint", str(tmp_path / "best.pt"), "--episodes", "3",
                              "--json", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "3-way 1-shot" in out.out
    assert "it/s" not in out.err and "episode/s" not in out.err  # --no-progress: no bars
    assert (tmp_path / "eval.json").is_file()
    assert evaluate_main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
