"""Real-dataset layouts, split lists, the cached validated index, and train on each layout."""
from __future__ import annotations

import json
import os
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tap_fast.data import formats
from tap_fast.data.decode import FrameIndexError, VideoDecodeError, decode_video
from tap_fast.data.formats import (
    BadVideoError, SplitListError, build_dataset_index, default_class_split, detect_format, parse_split_line,
    Item, assign_splits, read_split_lists,
)
from tap_fast.data.frame_folder_decode import FrameFolderDecoder
from tap_fast.data.index import DatasetIndex

FRAMES = 10


def clip(c: int, v: int, frames: int = FRAMES, h: int = 48, w: int = 64) -> np.ndarray:
    """A small clip whose frames differ (a bar moving right), tinted by class."""
    out = np.full((frames, h, w, 3), 30 + 30 * c, np.uint8)
    for t in range(frames):
        x = (5 * t + 3 * v) % (w - 10)
        out[t, 10:30, x:x + 10] = 255
    return out


def make_root(root: Path, kind: str, classes: int = 6, videos: int = 3, frames: int = FRAMES,
              h: int = 48, w: int = 64) -> Path:
    from PIL import Image

    from tap_fast.data.synthetic import write_webm

    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for v in range(videos):
            x = clip(c, v, frames, h, w)
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
    ("air drumming/-VtLx-mcPds_000012 250 3", ("air drumming", "-VtLx-mcPds_000012")),
    ("air drumming/-VtLx-mcPds_000012 3", ("air drumming", "-VtLx-mcPds_000012")),
    ("air drumming\\clip_1.mp4", ("air drumming", "clip_1.mp4")),
    ("class_0/", ("class_0", None)),  # a class name with a trailing slash
    ("air drumming  # 12 clips", ("air drumming", None)),  # an inline comment (was: part of the name)
    ("class_4/vid0 4\t# relabelled", ("class_4", "vid0")),
    ("C#/clip", ("C#", "clip")),  # a '#' inside a name
])
def test_parse_split_line(line, expected):
    assert parse_split_line(line) == expected


def test_an_inline_comment_gives_way_to_a_name_on_disk(tmp_path):
    (tmp_path / "trainlist01.txt").write_text("Set #1\nclass_a  # the long clips\n")
    (tmp_path / "vallist01.txt").write_text("class_b\n")
    (tmp_path / "testlist01.txt").write_text("class_c\n")
    on_disk = {"Set #1", "class_a", "class_b", "class_c"}
    lists = read_split_lists(tmp_path, exists=lambda cls, video: cls in on_disk and video is None)
    assert lists["train"] == [("Set #1", None), ("class_a", None)]


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


def test_a_cached_problem_is_probed_again(tmp_path):
    """A file made readable again (chmod) keeps its size and mtime: its cached problem must not stick."""
    root = make_root(tmp_path / "d", "video", classes=3, videos=1)
    build_dataset_index(root)
    cache_file = root / formats.CACHE_NAME
    cache = json.loads(cache_file.read_text())
    cache["entries"]["class_0/vid0.webm"].update(frames=0, codec=None, problem="unreadable (PermissionError)")
    cache_file.write_text(json.dumps(cache))  # as a probe of the file while it was chmod 000 left it
    assert build_dataset_index(root).index.videos("class_0")[0].num_frames == FRAMES
    assert json.loads(cache_file.read_text())["entries"]["class_0/vid0.webm"]["problem"] is None


@pytest.mark.parametrize("damage", ["entries list", "entries null", "entry a string", "entry without problem"])
def test_a_wrong_shaped_cache_is_a_rescan(tmp_path, damage):
    root = make_root(tmp_path / "d", "frames", classes=3, videos=1, frames=2)
    first = build_dataset_index(root).index
    cache_file = root / formats.CACHE_NAME
    cache = json.loads(cache_file.read_text())
    if damage == "entries list":
        cache["entries"] = list(cache["entries"].values())
    elif damage == "entries null":
        cache["entries"] = None
    elif damage == "entry a string":
        cache["entries"]["class_0/vid0"] = "x"
    else:
        del cache["entries"]["class_0/vid0"]["problem"]
    cache_file.write_text(json.dumps(cache))
    assert build_dataset_index(root).index == first
    assert formats._load_cache(cache_file, "frame-folders").keys() == {"class_0/vid0", "class_1/vid0", "class_2/vid0"}


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


def write_h264(path: Path, frames: int = 16, size: int = 32) -> Path:
    """A tiny H.264 .mp4 (libx264, 8 fps, yuv420p); PyAV writes its moov header at the end."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 10 * t, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _codec_context_missing(path: Path) -> bool:
    """Whether PyAV opens path with a video stream whose codec_context is None."""
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.video) and c.streams.video[0].codec_context is None
    except Exception:
        return False


def test_probe_video_never_crashes_on_a_truncated_mp4(tmp_path):
    """Cut an mp4 every 16 bytes: each cut is a problem by name (or still whole), never a crash.
    Some cuts leave PyAV a video stream whose codec_context is None (the audit's AttributeError)."""
    data = write_h264(tmp_path / "whole.mp4").read_bytes()
    cut, none_codec = tmp_path / "cut.mp4", 0
    for n in range(1, len(data), 16):
        cut.write_bytes(data[:n])
        none_codec += _codec_context_missing(cut)
        frames, codec, problem = formats.probe_video(cut)  # must not raise
        assert problem is not None or frames == 16, (n, frames, problem)
        try:  # the decoder, too, raises only its named error
            decode_video(cut)
        except VideoDecodeError as e:
            assert e.path == str(cut)
    assert none_codec, "no cut gave a stream without codec_context; PyAV changed, pick other cuts"


def test_truncated_mp4_without_codec_context_is_reported_and_skipped(tmp_path):
    root = tmp_path / "d"
    for c in range(3):
        (root / f"class_{c}").mkdir(parents=True)
        for v in range(2):
            write_h264(root / f"class_{c}" / f"vid{v}.mp4")
    data = (root / "class_0" / "vid0.mp4").read_bytes()
    bad = root / "class_0" / "cut.mp4"
    for n in range(len(data) // 2, len(data), 4):
        bad.write_bytes(data[:n])
        if _codec_context_missing(bad):
            break
    else:
        pytest.fail("no cut gave a stream without codec_context; PyAV changed, pick other cuts")
    with pytest.raises(BadVideoError, match=r"cut.mp4: unreadable \(no codec parameters"):
        build_dataset_index(root)
    index = build_dataset_index(root, policy="skip").index
    assert len(index) == 6 and bad not in {r.path for r in index}


class _FakeContainer:
    """What av.open returns, with the stream attributes a corrupt file may leave None."""

    def __init__(self, stream):
        self.streams, self.duration = type("Streams", (), {"video": [stream]})(), None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def demux(self, stream):
        raise RuntimeError("odd demuxer state")


@pytest.mark.parametrize("stream, reason", [
    (type("Stream", (), {"codec_context": None})(), "unreadable (no codec parameters"),
    (type("Stream", (), {"codec_context": type("Ctx", (), {"name": "h264"})()})(),
     "unreadable (RuntimeError: odd demuxer state)"),
])
def test_probe_video_turns_odd_pyav_state_into_a_problem(tmp_path, monkeypatch, stream, reason):
    import av

    video = tmp_path / "odd.mp4"
    video.write_bytes(b"\0" * 64)
    monkeypatch.setattr(av, "open", lambda *a, **k: _FakeContainer(stream))
    frames, codec, problem = formats.probe_video(video)
    assert frames == 0 and problem.startswith(reason)


def _trim_start(src: Path, dst: Path, frames: int) -> Path:
    """src remuxed with its first frames' timestamps negative, as `ffmpeg -ss ... -c copy` cuts: the
    mp4 gets an edit list, and FFmpeg demuxes those frames (marked discard) but never outputs them."""
    import av

    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = source.streams.video[0]
        target = out.add_stream_from_template(stream)
        shift = int(frames / (stream.average_rate * stream.time_base))
        for packet in source.demux(stream):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, target
                out.mux(packet)
    return dst


def test_probe_counts_only_the_frames_the_decoder_outputs(tmp_path):
    cut = _trim_start(write_h264(tmp_path / "whole.mp4", frames=16), tmp_path / "cut.mp4", frames=4)
    frames, _, problem = formats.probe_video(cut)
    assert (frames, problem) == (len(decode_video(cut)), None) == (12, None)


def write_webm_with_pts(path: Path, pts_ms: list[int], audio_seconds: float = 0.0) -> Path:
    """A 32x32 VP9 .webm whose frames start at pts_ms (uneven gaps: variable frame rate), with
    audio_seconds of silent Opus audio beside it."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9", rate=30)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        audio = container.add_stream("libopus", rate=48000) if audio_seconds else None
        for t, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * t, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        samples, n = 0, 960
        while audio and samples < audio_seconds * 48000:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, n), np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, samples
            samples += n
            container.mux(audio.encode(frame))
        if audio:
            container.mux(audio.encode())
    return path


def test_truncation_is_judged_on_the_video_streams_own_duration(tmp_path):
    """A webm declares no frame count: its audio outlasting the video, or a variable frame rate, made
    the old estimate (container duration x frame rate) call whole files truncated."""
    with_audio = write_webm_with_pts(tmp_path / "audio.webm", [125 * t for t in range(16)], audio_seconds=3.0)
    vfr = write_webm_with_pts(tmp_path / "vfr.webm", [33 * t for t in range(20)] + [660 + 200 * t for t in range(10)])
    assert formats.probe_video(with_audio) == (16, "vp9", None)
    assert formats.probe_video(vfr) == (30, "vp9", None)
    data = with_audio.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])  # still found: the video track's DURATION tag is in the header
    problem = formats.probe_video(cut)[2]
    assert re.fullmatch(r"truncated \(header declares 1\.9\d s of video, 0\.\d+ s present\)", problem)


def test_every_frame_of_a_frame_folder_is_checked(tmp_path):
    root = make_root(tmp_path / "d", "frames", classes=3, videos=2)
    middle = root / "class_1" / "vid1" / "img_00005.jpg"
    middle.write_bytes(middle.read_bytes()[:-200])  # cut short: no end-of-image marker
    with pytest.raises(BadVideoError) as err:
        build_dataset_index(root)
    assert len(err.value.problems) == 1
    folder, reason = err.value.problems[0]
    assert folder == str(root / "class_1" / "vid1")
    assert reason == (f"frame {middle} is not a valid image: truncated (no JPEG end-of-image marker FF D9 "
                      "in its last 32 bytes)")
    index = build_dataset_index(root, policy="skip").index
    assert len(index) == 5 and root / "class_1" / "vid1" not in {r.path for r in index}


def test_check_image_file(tmp_path):
    from PIL import Image

    image = Image.fromarray(clip(0, 0, frames=1)[0])
    for ext in ("jpg", "png"):
        good = tmp_path / f"good.{ext}"
        image.save(good)
        assert formats.check_image_file(good) is None
        padded = tmp_path / f"padded.{ext}"
        padded.write_bytes(good.read_bytes() + b"\0" * 16)  # a little padding after the end: fine
        assert formats.check_image_file(padded) is None
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(good.read_bytes()[:-20])
        assert formats.check_image_file(cut).startswith("truncated (no ")
        empty = tmp_path / f"empty.{ext}"
        empty.write_bytes(b"")
        assert formats.check_image_file(empty) == "empty file (0 bytes)"
    (tmp_path / "fake.png").write_bytes((tmp_path / "good.jpg").read_bytes())
    assert formats.check_image_file(tmp_path / "fake.png").startswith("not a PNG file")


def test_class_in_two_split_lists_is_an_error(tmp_path):
    (tmp_path / "trainlist01.txt").write_text("class_0/vid0\nclass_1/vid0\n")
    (tmp_path / "vallist01.txt").write_text("class_2\nclass_1\n")
    (tmp_path / "testlist01.txt").write_text("class_3\n")
    with pytest.raises(SplitListError) as err:
        read_split_lists(tmp_path)
    message = str(err.value)
    assert "class 'class_1'" in message
    assert f"{tmp_path / 'trainlist01.txt'}:2" in message and f"{tmp_path / 'vallist01.txt'}:2" in message
    (tmp_path / "vallist01.txt").write_text("class_2\n")  # the same class twice in one list is fine
    (tmp_path / "trainlist01.txt").write_text("class_0/vid0\nclass_0/vid1\nclass_0\n")
    assert read_split_lists(tmp_path)["train"] == [("class_0", "vid0"), ("class_0", "vid1"), ("class_0", None)]


def test_wrong_dataset_format_names_the_layout(tmp_path):
    videos = make_root(tmp_path / "videos", "video", classes=3, videos=1)
    frames = make_root(tmp_path / "frames", "frames", classes=3, videos=1, frames=2)
    with pytest.raises(ValueError) as err:
        build_dataset_index(videos, fmt="frame-folders")
    assert str(err.value) == (f"no <class>/<video>/ frame folders under {videos} "
                              "(it holds video files: use --dataset-format video-folders or auto)")
    with pytest.raises(ValueError) as err:
        build_dataset_index(frames, fmt="video-folders")
    assert str(err.value) == (f"no <class>/<video>.<ext> video files under {frames} "
                              "(it holds frame folders: use --dataset-format frame-folders or auto)")


def test_index_cache_is_readable_by_the_others_sharing_the_dataset(tmp_path):
    root = make_root(tmp_path / "d", "frames", classes=3, videos=1, frames=2)
    old = os.umask(0o022)
    try:
        report = build_dataset_index(root)
    finally:
        os.umask(old)
    assert report.cache_file.stat().st_mode & 0o777 == 0o644  # written by atomic_write, not mkstemp's 0600


def test_synthetic_set_rejects_more_frames_than_its_clips_have(tmp_path):
    from types import SimpleNamespace

    from tap_fast.data.build import load_index

    config = SimpleNamespace(dataset_format="synthetic", data_root=str(tmp_path), synthetic_videos_per_class=2,
                             synthetic_frames=8, synthetic_size=16, synthetic_families=["triangle_horizontal"],
                             frames=8)
    assert all(r.num_frames == 8 for r in load_index(config, progress=False))
    config.frames = 9
    with pytest.raises(BadVideoError, match=r"too short \(8 frames, need >= 9\)") as err:
        load_index(config, progress=False)
    assert "--set synthetic_frames=9" in str(err.value)


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


def test_unpadded_frame_numbers_keep_temporal_order(frame_root, tmp_path):
    """frame1.jpg ... frame10.jpg: sorted as text, frame10 would come second and scramble the clip."""
    padded = frame_root / "class_1" / "vid2"
    unpadded = tmp_path / "unpadded"
    unpadded.mkdir()
    for t, name in enumerate(sorted(os.listdir(padded))):
        shutil.copy(padded / name, unpadded / f"frame{t + 1}.jpg")
    assert formats.frame_files(unpadded)[:3] == ["frame1.jpg", "frame2.jpg", "frame3.jpg"]
    assert formats.frame_files(unpadded)[-1] == f"frame{len(os.listdir(padded))}.jpg"
    order = list(range(len(os.listdir(padded))))
    dec = FrameFolderDecoder()
    np.testing.assert_array_equal(dec.decode(unpadded, order), dec.decode(padded, order))


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


def test_a_video_shorter_than_its_index_entry_stops_training_with_a_named_error(tmp_path, capsys):
    """The index counts packets; a video that decodes to fewer frames (corrupt packets) raises
    FrameIndexError mid-run: the one-line error naming the video, not a traceback."""
    root = make_root(tmp_path / "d", "video")
    build_dataset_index(root, split_dir=write_splits(root, "video"))
    cache_file = root / formats.CACHE_NAME
    cache = json.loads(cache_file.read_text())
    for entry in cache["entries"].values():
        entry["frames"] = 4 * FRAMES  # every clip samples past the frames it has
    cache_file.write_text(json.dumps(cache))
    assert _train(root, tmp_path / "run") == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.match(rf"error: cannot decode video {root}/class_\d/vid\d\.webm: frame index \d+ is out of range for "
                    rf"this video, which has {FRAMES} frames; replace or remove the video", err)


# ---- decoder choice --------------------------------------------------------------------------------
def test_choose_decoder(video_root, frame_root, monkeypatch):
    from tap_fast.data import select_decoder as sd

    videos = build_dataset_index(video_root, split_dir=video_root / "splits").index
    frames = build_dataset_index(frame_root, split_dir=frame_root / "splits").index
    monkeypatch.setattr(sd, "dali_version", lambda: "9.9")
    large = DatasetIndex(videos.records(), codecs={"vp9"}, smallest_frames={"vp9": (128, 128)})
    assert sd.choose_decoder("auto", large, cuda=True)[0] == "dali-gpu"
    assert sd.choose_decoder("auto", frames, cuda=True)[0] == "dali-gpu"
    assert sd.choose_decoder("auto", frames, cuda=False)[0] == "pil"
    name, reason = sd.choose_decoder("auto", videos, cuda=False)
    assert name == "pyav" and "fits" in reason  # tiny set: decoded once, then cached
    monkeypatch.setattr(sd, "CACHE_FITS_BYTES", 0)
    name, reason = sd.choose_decoder("auto", videos, cuda=False)
    assert name == "dali-cpu" and "vp9" in reason
    h264 = DatasetIndex(videos.records(), codecs={"h264"})
    assert sd.choose_decoder("auto", h264, cuda=False)[0] == "pyav"
    with pytest.raises(ValueError, match="dali-cpu reads only .* this dataset has \\['h264'\\]"):
        sd.choose_decoder("dali-cpu", h264, cuda=False)
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


def test_videos_under_nvdec_minimum_size_are_not_given_to_the_gpu_decoder(video_root, monkeypatch):
    """NVDEC refuses VP9 under 128x128 (measured on an H200: DALI asserts "Video is too small"
    mid-run): auto picks a CPU decoder and says why; a forced dali-gpu is refused up front."""
    from tap_fast.data import select_decoder as sd

    videos = build_dataset_index(video_root, split_dir=video_root / "splits").index  # VP9, 64x48
    assert videos.smallest_frames == {"vp9": (64, 48)}
    monkeypatch.setattr(sd, "dali_version", lambda: "9.9")
    name, reason = sd.choose_decoder("auto", videos, cuda=True)
    assert name == "pyav" and "vp9 videos of 64x48, under NVDEC's 128x128 minimum" in reason
    with pytest.raises(ValueError, match=r"dali-gpu cannot read this dataset: vp9 videos of 64x48.*dali-cpu or pyav"):
        sd.choose_decoder("dali-gpu", videos, cuda=True)
    bare = DatasetIndex(videos.records())  # no sizes recorded (the synthetic set): a few are probed
    assert sd.choose_decoder("auto", bare, cuda=True)[0] != "dali-gpu"
    h264 = DatasetIndex(videos.records(), codecs={"h264"}, smallest_frames={"h264": (64, 48)})
    assert sd.choose_decoder("auto", h264, cuda=True)[0] == "dali-gpu"  # H.264's minimum is 48x16
    hevc = DatasetIndex(videos.records(), codecs={"hevc"}, smallest_frames={"hevc": (140, 200)})
    assert "under NVDEC's 144x144 minimum" in sd.choose_decoder("auto", hevc, cuda=True)[1]


def test_videos_not_16_pixel_aligned_are_noted_when_dali_gpu_reads_them(tmp_path, monkeypatch):
    """DALI makes a new NVDEC decoder per clip whose width or height is not a multiple of 16
    (measured on an H200: 340x256 H.264 at 12 clips/s, 352x256 at 40): the reason says so."""
    from tap_fast.data import select_decoder as sd
    from tap_fast.data.synthetic import write_webm

    monkeypatch.setattr(sd, "dali_version", lambda: "9.9")
    root = make_root(tmp_path / "d", "video", classes=3, videos=2, h=128, w=160)  # over VP9's 128x128 minimum
    aligned = build_dataset_index(root).index
    assert aligned.unaligned_videos == 0
    name, reason = sd.choose_decoder("auto", aligned, cuda=True)
    assert name == "dali-gpu" and "multiple of 16" not in reason

    write_webm(root / "class_0" / "odd.webm", clip(0, 5, h=130, w=160))
    index = build_dataset_index(root).index
    assert index.unaligned_videos == 1 and len(index) == 7
    note = "1 of 7 videos have a width or height that is not a multiple of 16"
    for requested in ("auto", "dali-gpu"):
        name, reason = sd.choose_decoder(requested, index, cuda=True)
        assert name == "dali-gpu" and note in reason and "--decoder pyav" in reason
        assert "\n" not in reason  # the reason ends a log line
    assert note not in sd.choose_decoder("auto", index, cuda=False)[1]  # not read by NVDEC
    assert note not in sd.choose_decoder("pyav", index, cuda=True)[1]
    assert DatasetIndex(index.records()).unaligned_videos is None  # unknown: nothing is said


def test_frame_folder_index_does_not_count_unaligned_videos(frame_root):
    assert build_dataset_index(frame_root, split_dir=frame_root / "splits").index.unaligned_videos is None


def test_decoder_choice_sees_every_videos_codec(tmp_path, monkeypatch):
    """An H.264 file after the first three videos of its split: DALI's CPU decoder cannot read it,
    so auto must not pick dali-cpu and a forced dali-cpu is refused before training."""
    from types import SimpleNamespace

    from tap_fast.data import select_decoder as sd
    from tap_fast.data.build import load_index

    root = make_root(tmp_path / "d", "video", classes=6, videos=3)
    write_h264(root / "class_0" / "zz_late.mp4")  # sorts last in its class
    config = SimpleNamespace(dataset_format="auto", data_root=str(root), split_dir=None, frames=4,
                             out_dir=str(tmp_path / "out"), preset="kinetics100")
    index = load_index(config, progress=False)
    assert index.codecs == {"vp9", "h264"}
    assert "h264" not in sd.probe_codecs(index)  # what the choice saw before: the first 3 per split
    monkeypatch.setattr(sd, "dali_version", lambda: "9.9")
    monkeypatch.setattr(sd, "CACHE_FITS_BYTES", 0)  # a set too big for the in-memory cache
    assert sd.choose_decoder("auto", index, cuda=False)[0] == "pyav"
    with pytest.raises(ValueError, match=r"dali-cpu reads only .* this dataset has \['h264', 'vp9'\]"):
        sd.choose_decoder("dali-cpu", index, cuda=False)
    # an index without codecs (the synthetic set, a loaded index.jsonl) still has a few probed
    bare = DatasetIndex(index.records())
    assert bare.codecs is None and sd.choose_decoder("auto", bare, cuda=False)[0] == "dali-cpu"


# ---- names on disk ------------------------------------------------------------------------------
def test_hidden_and_os_junk_entries_are_skipped(tmp_path):
    videos = make_root(tmp_path / "v", "video", classes=3, videos=2)
    (videos / "class_0" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)
    (videos / "class_1" / "._vid0.webm").write_bytes(b"\x00\x05\x16\x07Mac OS X" + b"\0" * 4000)  # AppleDouble
    (videos / "class_2" / ".ipynb_checkpoints").mkdir()
    (videos / "class_0" / "a_folder").mkdir()  # sorts first; holds no frames, only macOS junk
    (videos / "class_0" / "a_folder" / "._img_00001.jpg").write_bytes(b"\0" * 100)
    assert detect_format(videos) == "video-folders"
    index = build_dataset_index(videos).index  # the junk would be an unreadable video
    assert sorted(r.path.name for r in index) == ["vid0.webm"] * 3 + ["vid1.webm"] * 3

    frames = make_root(tmp_path / "f", "frames", classes=3, videos=2)
    (frames / "class_0" / "._vid0.mp4").write_bytes(b"\0" * 100)  # sorts first: not a video-folders root
    (frames / "class_1" / ".ipynb_checkpoints").mkdir()
    (frames / "class_2" / "vid0" / "._img_00001.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 100)
    assert detect_format(frames) == "frame-folders"
    index = build_dataset_index(frames).index  # the hidden folder would be an empty frame folder
    assert sorted(r.path.name for r in index) == ["vid0"] * 3 + ["vid1"] * 3
    assert formats.frame_files(frames / "class_2" / "vid0")[0] == "img_00001.jpg"
    assert index.videos("class_2")[0].num_frames == FRAMES


@pytest.mark.parametrize("layout, name", [("video", "moved.webm"), ("frames", "moved")])
def test_broken_symlink_is_reported_by_name(tmp_path, layout, name):
    """A link to a video file or to a frame folder whose target has gone."""
    root = make_root(tmp_path / "d", layout, classes=3, videos=2, frames=2)
    link = root / "class_1" / name
    link.symlink_to(tmp_path / "elsewhere" / name)
    with pytest.raises(BadVideoError) as err:
        build_dataset_index(root)
    assert err.value.problems == [(str(link), f"broken symbolic link (its target {tmp_path}/elsewhere/{name} "
                                              "does not exist)")]
    assert len(build_dataset_index(root, policy="skip").index) == 6
    if layout == "video":
        assert formats.probe_video(root / "class_1" / "gone.webm")[2] == "missing (no such file)"


def _unlistable(monkeypatch, *folders: Path) -> None:
    """os.listdir fails on folders as it does on a chmod 000 folder (a test run as root reads those)."""
    listdir, denied = os.listdir, {str(f) for f in folders}

    def fake(path="."):
        if str(path) in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", fake)


def test_unreadable_class_and_frame_folders_are_reported_by_name(tmp_path, monkeypatch):
    root = make_root(tmp_path / "d", "frames", classes=4, videos=2, frames=2)
    _unlistable(monkeypatch, root / "class_0", root / "class_1" / "vid1")
    with pytest.raises(BadVideoError) as err:
        build_dataset_index(root)
    assert sorted(err.value.problems) == [(str(root / "class_0"), "unreadable class folder (Permission denied)"),
                                          (str(root / "class_1" / "vid1"), "unreadable folder (Permission denied)")]
    index = build_dataset_index(root, policy="skip").index
    assert len(index) == 5 and "class_0" not in index.classes()


def test_a_mixed_layout_is_read_as_most_entries_are_and_the_rest_is_counted(tmp_path, capsys):
    """A frame folder sorting first no longer makes a video dataset a frame-folder one; what one
    layout leaves out is warned about, with what reads it."""
    from PIL import Image

    root = make_root(tmp_path / "v", "video", classes=3, videos=2)
    for folder in (root / "class_0" / "a_frames", root / "class_2" / "b_frames"):
        folder.mkdir()
        Image.fromarray(clip(0, 0)[0]).save(folder / "img_00001.jpg")
    (root / "class_1" / "sub").mkdir()
    shutil.copy(root / "class_1" / "vid0.webm", root / "class_1" / "sub" / "nested.webm")
    assert detect_format(root) == "video-folders"
    report = build_dataset_index(root)
    assert len(report.index) == 6
    assert report.warnings == [
        f"tap_fast.data: warning: 2 frame folder(s) left out (e.g. {root}/class_0/a_frames): the index reads one "
        f"layout, video-folders here; --dataset-format frame-folders reads them instead of the video files",
        f"tap_fast.data: warning: 1 subfolder(s) holding video files left out (e.g. {root}/class_1/sub): the index "
        f"reads one layout, video-folders here; videos are read one level deep, <class>/<video>.<ext>: move them up"]
    assert capsys.readouterr().err.splitlines()[:2] == report.warnings

    frames = make_root(tmp_path / "f", "frames", classes=3, videos=2, frames=2)
    shutil.copy(root / "class_1" / "vid0.webm", frames / "class_2" / "stray.webm")
    assert build_dataset_index(frames).warnings == [
        f"tap_fast.data: warning: 1 video file(s) left out (e.g. {frames}/class_2/stray.webm): the index reads one "
        f"layout, frame-folders here; --dataset-format video-folders reads them instead of the frame folders"]


def test_split_list_with_a_byte_order_mark(tmp_path):
    (tmp_path / "train.txt").write_bytes("\ufeffc1/vid0\nc1/vid1\n".encode("utf-8"))
    (tmp_path / "val.txt").write_bytes("\ufeffc2\n".encode("utf-8"))
    (tmp_path / "test.txt").write_text("c3\n")
    lists = read_split_lists(tmp_path)
    assert lists["train"] == [("c1", "vid0"), ("c1", "vid1")] and lists["val"] == [("c2", None)]


@pytest.mark.parametrize("on_disk, listed", [
    ("a/vid0", "a/vid0.mp4"),  # frames extracted from the listed video
    ("a/v0.MP4", "a/v0.mp4"),
    ("a/v0.mp4", "a/v0.avi"),  # transcoded
    ("a/v0.mp4", "a/v0"),
    ("a/v0.mp4", "a/v0.mp4"),
])
def test_split_entries_match_by_name_without_extension(tmp_path, on_disk, listed):
    (tmp_path / "train.txt").write_text(listed + "\n")
    (tmp_path / "val.txt").write_text("v\n")
    (tmp_path / "test.txt").write_text("t\n")
    items, problems = assign_splits([Item(on_disk, "a"), Item("v/x", "v"), Item("t/y", "t")], tmp_path)
    assert problems == [] and Item(on_disk, "a", "train") in items


def test_split_entry_matching_two_videos_is_reported(tmp_path):
    (tmp_path / "train.txt").write_text("a/v0\na/v1.mp4\na/v1.webm\n")
    (tmp_path / "val.txt").write_text("v\n")
    (tmp_path / "test.txt").write_text("t\n")
    on_disk = [Item("a/v0.avi", "a"), Item("a/v0.mp4", "a"), Item("a/v1.mp4", "a"), Item("a/v1.webm", "a"),
               Item("v/x", "v"), Item("t/y", "t")]
    items, problems = assign_splits(on_disk, tmp_path)
    assert problems == [("a/v0", "listed in the train split list, matches several videos (a/v0.avi, a/v0.mp4): "
                                 "list the full name or remove one")]
    # full names are exact matches, whatever else shares the stem
    assert [it.rel for it in items if it.split == "train"] == ["a/v1.mp4", "a/v1.webm"]


def test_split_entries_match_whichever_way_accents_are_encoded(tmp_path):
    """macOS writes names decomposed (NFD), Linux tools composed (NFC): the same name either way."""
    import unicodedata

    nfc, nfd = (lambda text, form=form: unicodedata.normalize(form, text) for form in ("NFC", "NFD"))
    assert nfc("café") != nfd("café")
    (tmp_path / "train.txt").write_text(f"{nfd('crème')}/{nfd('café')}.mp4\n{nfc('crème')}/{nfc('thé')}\n")
    (tmp_path / "val.txt").write_text(nfd("élan") + "\n")
    (tmp_path / "test.txt").write_text("t\n")
    on_disk = [Item(f"{nfc('crème')}/{nfc('café')}.mp4", nfc("crème")),
               Item(f"{nfc('crème')}/{nfd('thé')}.webm", nfc("crème")),  # a file copied from a Mac
               Item(f"{nfc('élan')}/x.webm", nfc("élan")), Item("t/y", "t")]
    items, problems = assign_splits(on_disk, tmp_path)
    assert problems == [] and [it.split for it in items] == ["train", "train", "val", "test"]
    assert {it.rel for it in items} == {it.rel for it in on_disk}  # the names on disk, as they are there
    # a class listed in two lists is found whichever way each spells it
    (tmp_path / "test.txt").write_text(nfc("élan") + "\n")
    with pytest.raises(SplitListError, match="is listed in two split lists"):
        read_split_lists(tmp_path)


def test_a_listed_class_without_a_folder_names_the_nearest_one(tmp_path):
    """Kinetics class names are shared as "air drumming" and as "air_drumming": a list written one way
    and folders the other named every video "not found" and left the user to guess why."""
    (tmp_path / "train.txt").write_text("air_drumming/v0\nAbseiling/v1\nzzz/v2\n")
    (tmp_path / "val.txt").write_text("Juggling balls\n")
    (tmp_path / "test.txt").write_text("t/missing\n")
    on_disk = [Item("air drumming/v0.mp4", "air drumming"), Item("abseiling/v1.mp4", "abseiling"),
               Item("juggling_ball/x.mp4", "juggling_ball"), Item("t/y.mp4", "t")]
    _, problems = assign_splits(on_disk, tmp_path)
    found = "split list but not found under the root"
    assert problems == [
        ("air_drumming/v0", f"listed in the train {found}: the root has no class folder 'air_drumming' "
                            f"(nearest: 'air drumming')"),
        ("Abseiling/v1", f"listed in the train {found}: the root has no class folder 'Abseiling' (nearest: 'abseiling')"),
        ("zzz/v2", f"listed in the train {found}: the root has no class folder 'zzz'"),
        ("Juggling balls/", f"listed in the val {found}: the root has no class folder 'Juggling balls' "
                            f"(nearest: 'juggling_ball')"),
        ("t/missing", f"listed in the test {found}"),  # the class is there: only the video is missing
    ]


def test_a_non_utf8_split_list_is_named(tmp_path):
    (tmp_path / "train.txt").write_bytes("café\n".encode("latin-1"))
    (tmp_path / "val.txt").write_text("v\n")
    (tmp_path / "test.txt").write_text("t\n")
    with pytest.raises(SplitListError, match=rf"{tmp_path / 'train.txt'}: not UTF-8 text .*save the list as UTF-8"):
        read_split_lists(tmp_path)


def test_lines_that_look_like_annotations_are_read_whole_when_that_names_something(tmp_path):
    """`a/video name 2` (a file "video name 2.webm") and a class `Set 1` end in a number, as
    annotation lines do; read as annotations they name nothing on disk."""
    (tmp_path / "train.txt").write_text("a/video name 2\na/v0 10 0\n")
    (tmp_path / "val.txt").write_text("Set 1\n")
    (tmp_path / "test.txt").write_text("t\n")
    on_disk = [Item("a/video name 2.webm", "a"), Item("a/v0.webm", "a"), Item("Set 1/x.webm", "Set 1"),
               Item("t/y.webm", "t")]
    items, problems = assign_splits(on_disk, tmp_path)
    assert problems == []
    assert sorted((it.rel, it.split) for it in items) == [
        ("Set 1/x.webm", "val"), ("a/v0.webm", "train"), ("a/video name 2.webm", "train"), ("t/y.webm", "test")]


def test_an_unlistable_dataset_root_is_named_in_a_value_error(tmp_path, monkeypatch):
    """The entry points print ValueErrors as one line; a raw PermissionError was a traceback."""
    root = make_root(tmp_path / "d", "video", classes=2, videos=1)
    _unlistable(monkeypatch, root)
    with pytest.raises(ValueError, match=rf"dataset root {root} cannot be listed \(Permission denied\)"):
        build_dataset_index(root)
