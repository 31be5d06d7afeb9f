"""DALI decoding against the CPU reference paths (PyAV for VP9 videos, PIL for JPEG frames).

CPU-only: DALI's CPU video decoder reads VP8/VP9/MJPEG, so the clips are tiny VP9 files made
here. The GPU ("mixed") tests run only where CUDA is visible.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from tap_fast.data.dali_pipeline import DaliEpisodeLoader, DaliVideoDecoder, build_pipeline  # noqa: E402
from tap_fast.data.decode import VideoDecodeError, decode_video  # noqa: E402
from tap_fast.data.episodes import EpisodeDataset  # noqa: E402
from tap_fast.data.formats import build_dataset_index  # noqa: E402
from tap_fast.data.frame_folder_decode import FrameFolderDecoder  # noqa: E402
from tap_fast.data.transforms import ClipTransform  # noqa: E402
from test_data_formats import _train, make_root, write_h264, write_splits  # noqa: E402  (tests/ on sys.path)

# VP9 -> RGB: DALI and FFmpeg's swscale convert YUV 4:2:0 with different chroma upsampling and
# rounding, so pixels differ by a few levels (measured: mean ~1, max ~10 on these clips).
MEAN_TOL, MAX_TOL = 2.5, 40


@pytest.fixture(scope="module")
def video_index(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("dali_v") / "d", "video", classes=6, videos=3, frames=12)
    return build_dataset_index(root).index


@pytest.fixture(scope="module")
def frame_index(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("dali_f") / "d", "frames", classes=6, videos=3, frames=12)
    return build_dataset_index(root).index


def test_dali_cpu_video_matches_pyav_for_the_same_indices(video_index):
    records = video_index.records()[:4]
    indices = [[0, 5, 11], [11, 3, 3, 7], [2], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    decoder = DaliVideoDecoder("cpu")
    for r, idx in zip(records, indices):
        got = decoder.decode(r.path, idx)
        ref = decode_video(r.path)[idx].astype(int)
        assert got.shape == ref.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - ref)
        assert diff.mean() < MEAN_TOL and diff.max() <= MAX_TOL, (r.path, diff.mean(), diff.max())
        # the comparison can fail: other frames of the same clip are far off
        wrong = np.abs(got.astype(int) - decode_video(r.path)[[(i + 4) % 12 for i in idx]].astype(int))
        assert wrong.mean() > 3 * MEAN_TOL


def test_dali_video_decoder_names_bad_files(video_index, tmp_path):
    decoder = DaliVideoDecoder("cpu")
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoDecodeError, match="junk.webm"):
        decoder.decode(junk, [0])
    with pytest.raises(FileNotFoundError, match="gone.webm"):
        decoder.decode(tmp_path / "gone.webm", [0])
    good = video_index.records()[0].path
    assert decoder.decode(good, [1, 2]).shape == (2, 48, 64, 3)  # usable again after an error


def test_episode_loader_matches_cpu_episode_dataset_in_test_mode(video_index):
    """Same episode, same TSN indices, centre crop: DALI CPU vs PyAV + ClipTransform."""
    kwargs = dict(way=3, shot=1, query=1, frames=4, seed=7)
    dali = list(DaliEpisodeLoader(video_index, "train", range(2), train=False, resize=None, crop=40, **kwargs))
    cpu = EpisodeDataset(video_index, "train", train=False, transform=ClipTransform(None, 40, train=False),
                         **kwargs)
    assert len(dali) == 2
    for k, batch in enumerate(dali):
        ref = cpu[k]
        assert batch["class_names"] == ref["class_names"] and batch["episode"] == k
        assert torch.equal(batch["query_labels"], ref["query_labels"])
        for part in ("support", "query"):
            assert batch[part].shape == ref[part].shape == (3, 4, 3, 40, 40)
            diff = (batch[part] - ref[part]).abs()  # normalised units: 1 level = 1 / (255 * 0.225)
            assert diff.mean() < MEAN_TOL / 255 / 0.225 and diff.max() < MAX_TOL / 255 / 0.224


def test_episode_loader_training_is_deterministic_and_shards(video_index):
    kwargs = dict(way=2, shot=1, query=1, frames=3, train=True, resize=32, crop=24, flip=True, seed=3)
    a = list(DaliEpisodeLoader(video_index, "train", range(4), **kwargs))
    b = list(DaliEpisodeLoader(video_index, "train", range(4), **kwargs))
    assert [x["episode"] for x in a] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        assert x["support"].shape == (2, 3, 3, 24, 24) and torch.equal(x["support"], y["support"])
    shards = [[x["episode"] for x in DaliEpisodeLoader(video_index, "train", range(5), num_shards=2, shard_id=s,
                                                       **kwargs)] for s in (0, 1)]
    assert shards == [[0, 2, 4], [1, 3]]
    with pytest.raises(ValueError, match="shard_id"):
        DaliEpisodeLoader(video_index, "train", range(4), num_shards=2, shard_id=2, **kwargs)


def test_dali_cpu_frame_folders_match_pil(frame_index):
    kwargs = dict(way=2, shot=1, query=1, frames=5, seed=1)
    (batch,) = DaliEpisodeLoader(frame_index, "train", range(1), train=False, resize=None, crop=40, **kwargs)
    ref = EpisodeDataset(frame_index, "train", train=False, transform=ClipTransform(None, 40, train=False),
                         decoder=FrameFolderDecoder(), **kwargs)[0]
    assert batch["support"].shape == ref["support"].shape == (2, 5, 3, 40, 40)
    # libjpeg-turbo (PIL) and DALI's CPU JPEG decoder differ only in IDCT/upsampling rounding
    assert (batch["support"] - ref["support"]).abs().mean() < 2 / 255 / 0.225


def test_build_pipeline_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="kind must be"):
        build_pipeline("audio", "cpu", 1, lambda: None, None, None)
    with pytest.raises(ValueError, match="device must be"):
        build_pipeline("video", "tpu", 1, lambda: None, None, None)


def test_gpu_decoder_without_gpu_is_a_named_error(video_index):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        DaliEpisodeLoader(video_index, "train", range(1), device="gpu")


def test_episode_loader_names_the_episode_videos_when_dali_fails(tmp_path):
    """DALI's CPU decoder cannot read H.264 and its error names no file ("memory file")."""
    root = make_root(tmp_path / "d", "video", classes=3, videos=2, frames=12)
    odd = write_h264(root / "class_1" / "odd.mp4")
    index = build_dataset_index(root).index
    loader = DaliEpisodeLoader(index, index.split_of("class_1"), range(8), way=1, shot=1, query=1, frames=4, crop=24)
    episodes = [[str(r.path) for r in list(ep.support) + list(ep.query)]
                for ep in map(loader.sampler.sample, range(8))]
    first = next(k for k, paths in enumerate(episodes) if str(odd) in paths)
    seen = []
    with pytest.raises(VideoDecodeError) as err:
        for batch in loader:
            seen.append(batch["episode"])
    assert seen == list(range(first))
    assert err.value.path == f"(one of: {', '.join(dict.fromkeys(episodes[first]))})"
    assert err.value.reason.startswith(f"DALI (cpu) failed on episode {first}: ")
    assert "Failed to create video decoder" in err.value.reason and "\n" not in str(err.value)


def test_train_keeps_last_pt_when_dali_fails_mid_run(tmp_path, monkeypatch, capsys):
    """A DALI failure at the third training episode: one-line error naming its videos, last.pt kept."""
    root = make_root(tmp_path / "d", "video", classes=6, videos=3)
    write_splits(root, "video")
    h264 = np.frombuffer(write_h264(tmp_path / "odd.mp4").read_bytes(), np.uint8)
    source = DaliEpisodeLoader._source

    def failing_source(self, iteration):
        out = source(self, iteration)
        if iteration == 2:
            out[0][0] = h264  # bytes DALI's CPU decoder cannot read
        return out

    monkeypatch.setattr(DaliEpisodeLoader, "_source", failing_source)
    assert _train(root, tmp_path / "run", "--decoder", "dali-cpu", "--episodes", "4", "--val-every", "4") == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "cannot decode video (one of: " in line and "DALI (cpu) failed on episode 2" in line
    assert "last.pt saved at episode 2" in line and (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")
def test_dali_gpu_matches_cpu(tmp_path):
    # NVDEC's smallest VP9 frame is 128x128 (the 64x48 clips above are refused)
    root = make_root(tmp_path / "d", "video", classes=6, videos=2, frames=12, h=128, w=160)
    index = build_dataset_index(root).index
    kwargs = dict(way=2, shot=1, query=1, frames=4, train=False, resize=None, crop=120, seed=5)
    (gpu,) = DaliEpisodeLoader(index, "train", range(1), device="gpu", **kwargs)
    (cpu,) = DaliEpisodeLoader(index, "train", range(1), device="cpu", **kwargs)
    assert gpu["support"].is_cuda
    assert (gpu["support"].cpu() - cpu["support"]).abs().mean() < MEAN_TOL / 255 / 0.225


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")
def test_dali_gpu_h264_matches_pyav_for_the_same_indices(tmp_path):
    """H.264, which only the GPU decoder reads: the frames asked for, in the order asked."""
    video = write_h264(tmp_path / "ramp.mp4", frames=16, size=64)  # frame t is flat grey 10 * t
    idx = [0, 5, 15, 3, 3]
    got = DaliVideoDecoder("gpu").decode(video, idx).astype(int)
    ref = decode_video(video)[idx].astype(int)
    assert got.shape == ref.shape == (5, 64, 64, 3)
    assert np.abs(got - ref).mean() < MEAN_TOL, np.abs(got - ref).mean()
    assert np.abs(got - decode_video(video)[[i ^ 1 for i in idx]].astype(int)).mean() > 3 * MEAN_TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")
def test_dali_gpu_names_a_video_under_nvdec_minimum(video_index):
    small = video_index.records()[0].path  # VP9, 64x48
    with pytest.raises(VideoDecodeError, match=r"vid\d\.webm.*too small"):
        DaliVideoDecoder("gpu").decode(small, [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_dali_gpu_frame_folders_match_pil_and_dali_cpu(frame_index):
    """DALI's "mixed" image decoder (nvJPEG) on JPEG frame folders: same frames as PIL in test
    mode, and the same crops and flips as DALI's CPU decoder in training."""
    kwargs = dict(way=2, shot=1, query=1, frames=5, seed=1)
    (gpu,) = DaliEpisodeLoader(frame_index, "train", range(1), train=False, resize=None, crop=40, device="gpu",
                               **kwargs)
    ref = EpisodeDataset(frame_index, "train", train=False, transform=ClipTransform(None, 40, train=False),
                         decoder=FrameFolderDecoder(), **kwargs)[0]
    assert gpu["support"].is_cuda and gpu["support"].dtype == torch.float32
    for part in ("support", "query"):
        got = gpu[part].cpu()
        assert got.shape == ref[part].shape == (2, 5, 3, 40, 40)
        # nvJPEG and libjpeg-turbo (PIL) differ by a few levels (IDCT, upsampling rounding)
        diff = (got - ref[part]).abs()  # normalised units: 1 level = 1 / (255 * 0.225)
        assert diff.mean() < MEAN_TOL / 255 / 0.225 and diff.max() < MAX_TOL / 255 / 0.224, (part, diff.mean())
    # the comparison can fail: the two support clips are of classes tinted 30 levels apart
    assert (gpu["support"].cpu().flip(0) - ref["support"]).abs().mean() > 3 * MEAN_TOL / 255 / 0.225

    training = dict(kwargs, train=True, resize=32, crop=24, flip=True)
    (gpu,) = DaliEpisodeLoader(frame_index, "train", range(1), device="gpu", **training)
    (cpu,) = DaliEpisodeLoader(frame_index, "train", range(1), device="cpu", **training)
    assert gpu["support"].shape == cpu["support"].shape == (2, 5, 3, 24, 24)
    assert (gpu["support"].cpu() - cpu["support"]).abs().mean() < MEAN_TOL / 255 / 0.225
