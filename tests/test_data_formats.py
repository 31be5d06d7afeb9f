"""Real-dataset layouts, split lists, the cached validated index, and train on each layout."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tap_fast.data import formats
from tap_fast.data.decode import FrameIndexError, VideoDecodeError
from tap_fast.data.formats import (
    BadVideoError, SplitListError, build_dataset_index, default_class_split, detect_format, parse_split_line,
    read_split_lists,
)
from tap_fast.data.frame_folder_decode import FrameFolderDecoder

FRAMES = 10


def clip(c: int, v: int, frames: int = FRAMES, h: int = 48, w: int = 64) -> np.ndarray:
    """A small clip whose frames differ (a bar moving right), tinted by class."""
    out = np.full((frames, h, w, 3), 30 + 30 * c, np.uint8)
    for t in range(frames):
        x = (5 * t + 3 * v) % (w - 10)
        out[t, 10:30, x:x + 10] = 255
    return out


def make_root(root: Path, kind: str, classes: int = 6, videos: int = 3, frames: int = FRAMES) -> Path:
    from PIL import Image

    from tap_fast.data.synthetic import write_webm

    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for v in range(videos):
            x = clip(c, v, frames)
            if kind == "video":
                write_webm(d / f"vid{v}.webm", x)
            else:
                (d / f"vid{v}").mkdir()
                for t in range(frames):
                    Image.fromarray(x[t]).save(d / f"vid{v}" / f"img_{t + 1:05d}.jpg", quality=95)
    return root


def write_splits(root: Path, kind: str) -> Path:
    """The three list styles at once: class/video (train), class names (val), annotation lines (test)."""
    s = root / "splits"
    s.mkdir()
    (s / "trainlist01.txt").write_text("".join(f"class_{c}/vid{v}\n" for c in (0, 1) for v in range(3)))
    (s / "vallist01.txt").write_text("class_2\nclass_3\n")
    ext = ".webm" if kind == "video" else ""
    (s / "testlist01.txt").write_text("".join(f"class_{c}/vid{v}{ext} {FRAMES} {c}\n" for c in (4, 5) for v in range(3)))
    return s


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    root = make_root(tmp_path_factory.mktemp("videos") / "data", "video")
    write_splits(root, "video")
    return root


@pytest.fixture(scope="module")
def frame_root(tmp_path_factory) -> Path:
    root = make_root(tmp_path_factory.mktemp("frames") / "data", "frames")
    write_splits(root, "frames")
    return root


# ---- layouts and split lists -----------------------------------------------------------------
def test_detect_format(video_root, frame_root, tmp_path):
    assert detect_format(video_root) == "video-folders"
    assert detect_format(frame_root) == "frame-folders"
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="found neither"):
        detect_format(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_format(tmp_path / "nope")


@pytest.mark.parametrize("line, expected", [
    ("abseiling/-3B32lodo2M_000059_000069", ("abseiling", "-3B32lodo2M_000059_000069")),
    ("Pouring something into something/80562", ("Pouring something into something", "80562")),
    ("class_4/vid0.webm 10 4", ("class_4", "vid0.webm")),
    ("class_4/vid0 4", ("class_4", "vid0")),
    ("12345 37 17", ("17", "12345")),
    ("air drumming", ("air drumming", None)),
])
def test_parse_split_line(line, expected):
    assert parse_split_line(line) == expected


def test_split_lists_need_all_three(tmp_path):
    (tmp_path / "trainlist01.txt").write_text("a/b\n")
    with pytest.raises(SplitListError, match="no split list for val, test"):
        read_split_lists(tmp_path)
    (tmp_path / "vallist01.txt").write_text("\n")
    (tmp_path / "testlist01.txt").write_text("c/d\n")
    with pytest.raises(SplitListError, match="val list is empty"):
        read_split_lists(tmp_path)


def test_default_class_split_is_64_12_24_and_deterministic():
    classes = [f"c{i}" for i in range(100)]
    split = default_class_split(classes, seed=0)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 64, "val": 12, "test": 24}
    assert split == default_class_split(list(reversed(classes)), seed=0)
    assert split != default_class_split(classes, seed=1)
    small = default_class_split(["a", "b", "c", "d", "e", "f"])
    assert set(small.values()) == {"train", "val", "test"}


# ---- the index ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["video", "frames"])
def test_index_from_split_lists(kind, video_root, frame_root):
    root = video_root if kind == "video" else frame_root
    report = build_dataset_index(root, split_dir=root / "splits", min_frames=4)
    index = report.index
    assert index.classes("train") == ["class_0", "class_1"]
    assert index.classes("val") == ["class_2", "class_3"]
    assert index.classes("test") == ["class_4", "class_5"]
    assert len(index) == 18 and all(r.num_frames == FRAMES for r in index)
    assert report.codecs == ({"vp9"} if kind == "video" else {"jpeg"})
    assert report.cache_file == root / formats.CACHE_NAME and report.cache_file.is_file()


def test_index_without_lists_uses_class_split(video_root):
    index = build_dataset_index(video_root).index
    assert sum(len(index.classes(s)) for s in ("train", "val", "test")) == 6
    assert all(index.classes(s) for s in ("train", "val", "test"))


def test_index_cache_is_reused_and_refreshed(tmp_path, monkeypatch):
    root = make_root(tmp_path / "d", "video", classes=3, videos=1)
    first = build_dataset_index(root).index
    cache = json.loads((root / formats.CACHE_NAME).read_text())
    assert len(cache["entries"]) == 3

    def no_probe(path):
        raise AssertionError(f"probed {path} although the cache has it")

    monkeypatch.setattr(formats, "probe_video", no_probe)
    assert build_dataset_index(root).index == first
    monkeypatch.undo()
    from tap_fast.data.synthetic import write_webm

    write_webm(root / "class_0" / "vid0.webm", clip(0, 0, frames=6))  # changed file: probed again
    os.utime(root / "class_0" / "vid0.webm", ns=(1, 1))
    again = build_dataset_index(root).index
    assert again.videos("class_0")[0].num_frames == 6


def test_read_only_root_caches_in_cache_dir(tmp_path, monkeypatch):
    root = make_root(tmp_path / "d", "frames", classes=3, videos=1)
    monkeypatch.setattr(formats, "_writable_dir", lambda p: False)
    report = build_dataset_index(root, cache_dir=tmp_path / "out")
    assert report.cache_file.parent == tmp_path / "out" and report.cache_file.is_file()
    assert not (root / formats.CACHE_NAME).exists()


def test_bad_videos_are_named_and_policy_applies(tmp_path):
    root = make_root(tmp_path / "d", "video", classes=3, videos=2)
    good = (root / "class_0" / "vid0.webm").read_bytes()
    (root / "class_0" / "truncated.webm").write_bytes(good[: len(good) // 2])
    (root / "class_1" / "junk.webm").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "class_2" / "empty.webm").write_bytes(b"")
    with pytest.raises(BadVideoError) as err:
        build_dataset_index(root)
    message = str(err.value)
    assert "truncated.webm: truncated" in message
    assert "junk.webm: unreadable" in message
    assert "empty.webm: empty file" in message
    assert len(err.value.problems) == 3 and "--bad-video-policy skip" in message
    index = build_dataset_index(root, policy="skip").index
    assert sorted(r.path.name for r in index) == ["vid0.webm"] * 3 + ["vid1.webm"] * 3
    with pytest.raises(BadVideoError, match="too short .10 frames, need >= 11"):
        build_dataset_index(root, policy="skip", min_frames=11)  # every video too short: none left
    with pytest.raises(ValueError, match="policy must be one of"):
        build_dataset_index(root, policy="ignore")


def test_bad_frame_folders_and_missing_listed_videos(tmp_path):
    root = make_root(tmp_path / "d", "frames", classes=3, videos=2)
    (root / "class_0" / "hollow").mkdir()
    (root / "class_1" / "vid0" / "img_00010.jpg").write_bytes(b"")  # last frame empty
    s = tmp_path / "splits"
    s.mkdir()
    (s / "train.txt").write_text("class_0/vid0\nclass_0/hollow\nclass_0/gone\n")
    (s / "val.txt").write_text("class_1\n")
    (s / "test.txt").write_text("class_2\n")
    with pytest.raises(BadVideoError) as err:
        build_dataset_index(root, split_dir=s)
    message = str(err.value)
    assert "hollow: empty frame folder" in message
    assert "class_0/gone: listed in the train split list but not found" in message
    assert "img_00010.jpg is not a valid image" in message


# ---- the CPU frame-folder decoder ----------------------------------------------------------------
def test_frame_folder_decoder(frame_root, tmp_path):
    dec = FrameFolderDecoder()
    folder = frame_root / "class_1" / "vid2"
    frames = dec.decode(folder, [0, 9, 9, 3])
    expected = clip(1, 2)[[0, 9, 9, 3]].astype(int)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - expected).mean() < 2.0  # JPEG quality 95
    with pytest.raises(FrameIndexError, match="frame index 10 is out of range"):
        dec.decode(folder, [10])
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "img_00002.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(VideoDecodeError, match="img_00002.jpg"):
        dec.decode(broken, [1])


# ---- python -m tap_fast.train on each layout ---------------------------------------------------
def _train(root: Path, out: Path, *extra: str) -> int:
    from tap_fast.train import main

    return main(["--preset", "kinetics100", "--data-root", str(root), "--backbone", "small", "--resize", "32",
                 "--crop", "28", "--frames", "4", "--way", "2", "--episodes", "2", "--val-every", "2",
                 "--val-episodes", "1", "--test-episodes", "2", "--test-shots", "1", "--out-dir", str(out),
                 "--no-progress", "--device", "cpu", *extra])


@pytest.mark.parametrize("kind", ["video", "frames"])
def test_train_cli_on_each_layout(kind, video_root, frame_root, tmp_path, capsys):
    from tap_fast.data.dali_pipeline import dali_version

    root = video_root if kind == "video" else frame_root
    extra = ("--decoder", "dali-cpu") if kind == "video" and dali_version() else ()
    assert _train(root, tmp_path / "run", *extra) == 0
    err = capsys.readouterr().err
    expected = "dali-cpu" if extra else ("pyav" if kind == "video" else "pil")
    assert f"decoder {expected} (" in err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["2-way 1-shot"]["episodes"] == 2


def test_train_cli_names_bad_videos(tmp_path, capsys):
    root = make_root(tmp_path / "d", "video", classes=6, videos=2)
    (root / "class_3" / "junk.webm").write_bytes(b"not a video at all")
    assert _train(root, tmp_path / "run") == 2
    assert "junk.webm: unreadable" in capsys.readouterr().err


# ---- decoder choice --------------------------------------------------------------------------------
def test_choose_decoder(video_root, frame_root, monkeypatch):
    from tap_fast.data import select_decoder as sd

    videos = build_dataset_index(video_root, split_dir=video_root / "splits").index
    frames = build_dataset_index(frame_root, split_dir=frame_root / "splits").index
    monkeypatch.setattr(sd, "dali_version", lambda: "9.9")
    assert sd.choose_decoder("auto", videos, cuda=True)[0] == "dali-gpu"
    assert sd.choose_decoder("auto", frames, cuda=True)[0] == "dali-gpu"
    assert sd.choose_decoder("auto", frames, cuda=False)[0] == "pil"
    name, reason = sd.choose_decoder("auto", videos, cuda=False)
    assert name == "pyav" and "fits" in reason  # tiny set: decoded once, then cached
    monkeypatch.setattr(sd, "CACHE_FITS_BYTES", 0)
    name, reason = sd.choose_decoder("auto", videos, cuda=False)
    assert name == "dali-cpu" and "vp9" in reason
    monkeypatch.setattr(sd, "probe_codecs", lambda index: {"h264"})
    assert sd.choose_decoder("auto", videos, cuda=False)[0] == "pyav"
    with pytest.raises(ValueError, match="dali-cpu reads only .* this dataset has \\['h264'\\]"):
        sd.choose_decoder("dali-cpu", videos, cuda=False)
    with pytest.raises(ValueError, match="dali-gpu needs a CUDA GPU"):
        sd.choose_decoder("dali-gpu", videos, cuda=False)
    with pytest.raises(ValueError, match="pil reads frame folders"):
        sd.choose_decoder("pil", videos, cuda=False)
    with pytest.raises(ValueError, match="pyav reads video files"):
        sd.choose_decoder("pyav", frames, cuda=False)
    with pytest.raises(ValueError, match="not one of"):
        sd.choose_decoder("ffmpeg", videos)
    monkeypatch.setattr(sd, "dali_version", lambda: None)
    with pytest.raises(ValueError, match="needs NVIDIA DALI"):
        sd.choose_decoder("dali-cpu", frames, cuda=False)
