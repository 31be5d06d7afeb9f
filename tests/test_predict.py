"""Labelling new videos: the scores are meta-testing's, for any shots per class; the CLI and its errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tap_fast.checkpoint import save_atomic
from tap_fast.data.build import episode_dataset, load_index
from tap_fast.data.decode import decode_video
from tap_fast.models import build_model
from tap_fast.predict import EvalClips, class_scores, main, query_records, support_records
from tiny_training import one_thread, tiny_config

SHOTS = {"cross_left_to_right": 2, "cross_right_to_left": 1, "cross_left_right_left": 2}  # 3 videos per tiny class


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, model, checkpoint, support folder with unequal shots, query videos by class)."""
    base = tmp_path_factory.mktemp("predict")
    config = tiny_config(tmp_path_factory.getbasetemp() / "tiny-synthetic", base, head="tap")
    index = load_index(config, progress=False)
    torch.manual_seed(0)
    model = build_model(config).eval()
    checkpoint = save_atomic({"model": model.state_dict(), "config": config.to_dict()}, base / "best.pt")
    support, queries = base / "support", {}
    for name, shots in SHOTS.items():
        videos = index.videos(name)
        (support / name).mkdir(parents=True)
        for record in videos[:shots]:
            shutil.copy(record.path, support / name / record.path.name)
        queries[name] = videos[shots:]
    return config, model, checkpoint, support, queries


def test_eval_clips_are_meta_testings(setup):
    config, _, _, _, queries = setup
    record = queries["cross_left_to_right"][0]
    index = load_index(config, progress=False)
    expected = episode_dataset(config, index, "test", shot=1, train=False, seed=0).eval_clip(record)
    assert torch.equal(EvalClips(config).eval_clip(record), expected)


def test_scores_are_the_mean_similarity_per_class(setup):
    config, model, _, support_root, queries = setup
    support = support_records(support_root, config.frames)
    query = [r for videos in queries.values() for r in videos]
    clips = EvalClips(config)
    with one_thread():
        classes, scores = class_scores(model, clips, support, query, torch.device("cpu"))
        with torch.no_grad():
            features = model.frame_features(torch.stack([clips.eval_clip(r) for r in support + query]))
            similarity = model.head(features[len(support):], features[:len(support)])
    assert classes == sorted(SHOTS) and scores.shape == (len(query), 3)
    for c, name in enumerate(classes):
        columns = [i for i, r in enumerate(support) if r.class_name == name]
        assert len(columns) == SHOTS[name]
        torch.testing.assert_close(scores[:, c], similarity[:, columns].mean(1))


def test_equal_shots_give_the_episode_logits(setup, tmp_path):
    config, model, _, support_root, queries = setup
    for name in SHOTS:  # one shot per class: the model's own class-major episode forward
        (tmp_path / name).mkdir()
        shutil.copy(sorted((support_root / name).iterdir())[0], tmp_path / name)
    support = support_records(tmp_path, config.frames)
    query = [videos[0] for videos in queries.values()]
    clips = EvalClips(config)
    with one_thread():
        _, scores = class_scores(model, clips, support, query, torch.device("cpu"))
        with torch.no_grad():
            logits = model(torch.stack([clips.eval_clip(r) for r in support]),
                           torch.stack([clips.eval_clip(r) for r in query]), way=3)
    torch.testing.assert_close(scores, logits)


def test_cli_labels_videos_folders_and_frame_folders(setup, tmp_path, capsys):
    config, _, checkpoint, support, queries = setup
    folder = tmp_path / "clips"
    folder.mkdir()
    for record in queries["cross_right_to_left"]:
        shutil.copy(record.path, folder / record.path.name)
    frames = tmp_path / "as_frames"
    frames.mkdir()
    for t, image in enumerate(decode_video(queries["cross_left_to_right"][0].path)):
        Image.fromarray(image).save(frames / f"img_{t + 1:05d}.jpg", quality=95)
    single = queries["cross_left_right_left"][0].path
    out = tmp_path / "predictions.json"
    with one_thread():
        assert main(["--checkpoint", str(checkpoint), "--support", str(support), "--query", str(folder),
                     str(frames), str(single), str(single), "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())["predictions"]
    expected = sorted(folder.iterdir()) + [frames, single]  # folder expanded by name; a repeat once
    assert [p["query"] for p in result] == [str(p) for p in expected]
    for p in result:
        probabilities = p["probabilities"]
        assert list(probabilities) == sorted(SHOTS)
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert p["predicted"] == max(probabilities, key=probabilities.get)
        assert f"| {p['query']} | {p['predicted']} | {probabilities[p['predicted']]:.3f} |" in printed


def _run(args, capsys):
    with one_thread():
        code = main(args + ["--no-progress"])
    return code, capsys.readouterr().err


def test_cli_names_bad_inputs(setup, tmp_path, capsys):
    config, _, checkpoint, support, queries = setup
    base = ["--checkpoint", str(checkpoint), "--support", str(support), "--query"]
    video = str(queries["cross_right_to_left"][0].path)

    code, err = _run(base + [str(tmp_path / "missing.mp4")], capsys)
    assert code == 2 and "missing.mp4: no such file" in err
    (tmp_path / "notes.txt").write_text("x")
    code, err = _run(base + [str(tmp_path / "notes.txt")], capsys)
    assert code == 2 and "not a video file" in err
    (tmp_path / "empty").mkdir()
    code, err = _run(base + [str(tmp_path / "empty")], capsys)
    assert code == 2 and "no video files and no frame folders" in err

    corrupt = tmp_path / "corrupt.webm"
    corrupt.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(200))
    code, err = _run(base + [str(corrupt)], capsys)
    assert code == 2 and "corrupt.webm" in err and "unusable" in err
    short = tmp_path / "short"
    short.mkdir()
    for t in range(config.frames - 1):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(short / f"img_{t:05d}.jpg")
    code, err = _run(base + [str(short)], capsys)
    assert code == 2 and f"too short ({config.frames - 1} frames" in err

    one_class = tmp_path / "one_class"
    shutil.copytree(support / "cross_left_to_right", one_class / "cross_left_to_right")
    code, err = _run(["--checkpoint", str(checkpoint), "--support", str(one_class), "--query", video], capsys)
    assert code == 2 and "at least two classes" in err
    code, err = _run(["--checkpoint", str(checkpoint), "--support", str(tmp_path / "nope"), "--query", video],
                     capsys)
    assert code == 2 and "is not a directory" in err
    code, err = _run(base + [video, "--json", str(tmp_path / "no_dir" / "p.json")], capsys)
    assert code == 2 and "does not exist" in err


def test_query_records_keep_order_and_drop_repeats(setup):
    config, _, _, _, queries = setup
    a, b = (r.path for r in queries["cross_right_to_left"][:2])
    records = query_records([str(b), str(a), str(b)], config.frames)
    assert [r.path for r in records] == [b, a]


def _as_frame_folder(video, folder):
    folder.mkdir(parents=True)
    for t, image in enumerate(decode_video(video)):
        Image.fromarray(image).save(folder / f"img_{t + 1:05d}.jpg", quality=95)
    return folder


def test_support_classes_may_mix_layouts_and_none_is_dropped(setup, tmp_path):
    config, _, _, support, queries = setup
    mixed = tmp_path / "mixed"
    shutil.copytree(support / "cross_left_to_right", mixed / "cross_left_to_right")
    shutil.copytree(support / "cross_right_to_left", mixed / "cross_right_to_left")
    video = sorted((support / "cross_left_right_left").iterdir())[0]
    _as_frame_folder(video, mixed / "cross_left_right_left" / video.stem)  # this class as frame folders
    records = support_records(mixed, config.frames)
    assert sorted({r.class_name for r in records}) == sorted(SHOTS)
    (mixed / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no video files or frame folders in class folder.s. empty_class"):
        support_records(mixed, config.frames)
    with pytest.raises(ValueError, match="holds no class folders"):
        support_records(mixed / "empty_class", config.frames)


def test_support_broken_links_and_unreadable_folders_are_named(setup, tmp_path, monkeypatch):
    """Left out, they would go missing silently; the dataset index reports them too."""
    import os

    from tap_fast.data.formats import BadVideoError

    config, _, _, support, _ = setup
    root = tmp_path / "support"
    shutil.copytree(support, root)
    link = root / "cross_left_to_right" / "moved.webm"
    link.symlink_to(tmp_path / "elsewhere.webm")
    listdir, denied = os.listdir, str(root / "cross_right_to_left")

    def unlistable(path="."):  # as a chmod 000 folder (a test run as root reads those)
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", unlistable)
    with pytest.raises(BadVideoError) as err:
        support_records(root, config.frames)
    assert err.value.problems == [
        (denied, "unreadable class folder (Permission denied)"),
        (str(link), f"broken symbolic link (its target {tmp_path}/elsewhere.webm does not exist)")]


def test_an_unlistable_support_root_is_one_line(setup, monkeypatch):
    import os

    config, _, _, support, _ = setup
    listdir = os.listdir

    def unlistable(path="."):  # as a chmod 000 folder (a test run as root reads those)
        if str(path) == str(support):
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", unlistable)
    with pytest.raises(ValueError, match=f"--support {support} cannot be listed \\(Permission denied\\)"):
        support_records(support, config.frames)


def test_a_video_decoding_to_fewer_frames_than_probed_is_a_one_line_error(setup, capsys):
    from tap_fast.data.index import VideoRecord
    from tap_fast.evaluate import run_reporting_errors

    config, _, _, _, queries = setup
    path = queries["cross_right_to_left"][0].path
    clips = EvalClips(config)
    result, code = run_reporting_errors(lambda: clips.eval_clip(VideoRecord(path, "q", "test", 1000)))
    assert (result, code) == (None, 1)
    assert capsys.readouterr().err.startswith(f"error: cannot decode video {path}: frame index ")


def test_query_folder_of_videos_beside_images(setup, tmp_path):
    """A folder holding videos is a folder of queries, even with a cover image or thumbnails beside
    them; only a folder of images alone is one frame-folder video."""
    config, _, _, _, queries = setup
    folder = tmp_path / "clips"
    folder.mkdir()
    videos = [shutil.copy(r.path, folder / r.path.name) for r in queries["cross_right_to_left"]]
    for t in range(config.frames + 1):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / f"thumb_{t}.jpg")
    assert [r.path for r in query_records([str(folder)], config.frames)] == sorted(Path(v) for v in videos)


def test_query_that_is_a_support_example_is_flagged(setup, capsys):
    config, model, _, support, _ = setup
    from tap_fast.predict import predict

    example = sorted((support / "cross_left_to_right").iterdir())[0]
    with one_thread():
        (result,) = predict(model, config, support, [str(example)], torch.device("cpu"))
    assert result.query == str(example)
    assert f"query {example} is also a support example of cross_left_to_right" in capsys.readouterr().err


def test_cli_names_a_bad_checkpoint(setup, tmp_path, capsys):
    _, _, _, support, queries = setup
    video = str(queries["cross_right_to_left"][0].path)
    code, err = _run(["--checkpoint", str(tmp_path), "--support", str(support), "--query", video], capsys)
    assert code == 2 and "is a directory; name a .pt file" in err
    (tmp_path / "garbage.pt").write_text("not a checkpoint\n")
    code, err = _run(["--checkpoint", str(tmp_path / "garbage.pt"), "--support", str(support), "--query", video],
                     capsys)
    assert code == 2 and "not a complete file written by torch.save" in err


def test_query_probing_shows_a_progress_bar(setup, tmp_path, capsys):
    # as the support's: a folder of many clips was probed without a word
    _, _, checkpoint, support, queries = setup
    folder = tmp_path / "clips"
    folder.mkdir()
    video = queries["cross_right_to_left"][0].path
    for k in range(50):  # 50 names, one small file
        (folder / f"clip_{k:02d}{video.suffix}").symlink_to(video)
    with one_thread():
        assert main(["--checkpoint", str(checkpoint), "--support", str(support), "--query", str(folder)]) == 0
    assert "query: " in capsys.readouterr().err


def test_cli_json_never_replaces_the_checkpoint(setup, tmp_path, capsys):
    _, _, checkpoint, support, queries = setup
    best = shutil.copy(checkpoint, tmp_path / "best.pt")
    code, err = _run(["--checkpoint", str(best), "--support", str(support), "--query",
                      str(queries["cross_right_to_left"][0].path), "--json", str(best)], capsys)
    assert code == 2 and err == f"error: --json {best} is the checkpoint itself; name another file\n"
    assert torch.load(best, weights_only=False)["model"]
