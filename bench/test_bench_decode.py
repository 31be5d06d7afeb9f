"""Data-loading throughput: clips per second for each decoder, and whether training waits on data.

    pytest bench/test_bench_decode.py --benchmark-only          (extra_info holds clips_per_s)
    pytest bench/test_bench_decode.py --benchmark-disable       (each runs once, untimed: a smoke test)

* synthetic set (VP9, 64 px, 5-way 1-shot episodes, T = 8, crop 56), CPU: PyAV uncached, PyAV
  with the in-memory cache (warm), DALI CPU; DALI GPU as well when a GPU is visible.
* H.264 at 256 px (generated here, resize 256 / crop 224): DALI mixed (NVDEC) vs PyAV; GPU only.
  DALI rows at 2 and 10 threads and at 340 and 352 px wide (see H264_ROWS).
* one training step (synthetic preset model) with the episode loaded by the loader vs a batch
  already in memory: the difference is the time the step waits for data.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tap_fast.data.dali_pipeline import DaliEpisodeLoader, dali_version
from tap_fast.data.decode import CachedDecoder, PyAVDecoder
from tap_fast.data.episodes import EpisodeDataset
from tap_fast.data.index import DatasetIndex
from tap_fast.data.select_decoder import probe_codecs, under_nvdec_minimum
from tap_fast.data.transforms import ClipTransform

EPISODES_PER_ROUND = 10
WAY, SHOT, QUERY, T = 5, 1, 1, 8
CLIPS = WAY * (SHOT + QUERY)
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def synthetic_index() -> DatasetIndex:
    from tap_fast.data.synthetic import ensure_synthetic_dataset

    return DatasetIndex.load(ensure_synthetic_dataset(progress=False))


def _episode_source(decoder: str, index: DatasetIndex, resize: int, crop: int, episodes: int, threads: int = 2):
    """An endless iterator of training episodes from the named decoder."""
    common = dict(way=WAY, shot=SHOT, query=QUERY, frames=T, train=True, seed=0)
    if decoder.startswith("dali"):
        loader = DaliEpisodeLoader(index, "train", range(episodes), resize=resize, crop=crop,
                                   device="gpu" if decoder == "dali-gpu" else "cpu", num_threads=threads, **common)
        return iter(loader)
    dec = CachedDecoder() if decoder == "pyav-cached" else PyAVDecoder()
    ds = EpisodeDataset(index, "train", transform=ClipTransform(resize, crop, train=True), decoder=dec,
                        num_episodes=episodes, **common)
    if decoder == "pyav-cached":  # warm: every training video decoded once already
        for r in index.records("train"):
            dec.video(r.path)
    return (ds[k] for k in range(episodes))


def mean_seconds(benchmark) -> float | None:
    """Mean seconds per round, or None under --benchmark-disable: pytest-benchmark then runs the
    function once and keeps no stats, so there is nothing to derive numbers from."""
    return benchmark.stats.stats.mean if benchmark.stats is not None else None


def _bench_decoder(benchmark, decoder, index, resize, crop, threads=2, rounds=3):
    if decoder.startswith("dali") and not dali_version():
        pytest.skip("NVIDIA DALI is not installed")
    if decoder == "dali-gpu" and not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    if decoder == "dali-gpu" and (too_small := under_nvdec_minimum(probe_codecs(index))):
        pytest.skip(f"NVDEC cannot read this set: {too_small}")
    source = _episode_source(decoder, index, resize, crop, episodes=EPISODES_PER_ROUND * (rounds + 2),
                             threads=threads)
    next(source)  # pipeline build and first-batch latency are not throughput

    def pull():
        for batch in itertools.islice(source, EPISODES_PER_ROUND):
            if batch["support"].is_cuda:
                torch.cuda.synchronize()

    benchmark.pedantic(pull, rounds=rounds, iterations=1)
    if (seconds := mean_seconds(benchmark)) is None:
        return
    clips_per_s = EPISODES_PER_ROUND * CLIPS / seconds
    benchmark.extra_info.update(decoder=decoder, clips_per_s=round(clips_per_s, 1), resize=resize, crop=crop,
                                frames_per_clip=T, device=torch.cuda.get_device_name() if HAS_CUDA else "cpu",
                                **({"dali_threads": threads} if decoder.startswith("dali") else {}))
    print(f"\n{decoder}: {clips_per_s:.0f} clips/s ({resize} px -> crop {crop}, T={T})")


@pytest.mark.parametrize("decoder", ["pyav", "pyav-cached", "dali-cpu", "dali-gpu"])
def test_synthetic_decoders(benchmark, synthetic_index, decoder):
    _bench_decoder(benchmark, decoder, synthetic_index, resize=64, crop=56)


_h264_sets: dict[int, DatasetIndex] = {}


def h264_index(tmp_path_factory, width: int) -> DatasetIndex:
    """24 H.264 clips (8 classes: 5 land in train), 256 x width, 64 frames of moving noise."""
    if width in _h264_sets:
        return _h264_sets[width]
    import av

    from tap_fast.data.formats import build_dataset_index

    root = tmp_path_factory.mktemp(f"h264_{width}") / "d"
    rng = np.random.default_rng(0)
    for c in range(8):
        (root / f"c{c}").mkdir(parents=True)
        for v in range(3):
            base = rng.integers(0, 255, (256 + 64, width + 64, 3), dtype=np.uint8)
            with av.open(str(root / f"c{c}" / f"{v}.mp4"), "w") as out:
                s = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "23"})
                s.height, s.width, s.pix_fmt = 256, width, "yuv420p"
                for t in range(64):
                    frame = np.ascontiguousarray(base[t:t + 256, t:t + width])
                    for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        out.mux(p)
                for p in s.encode():
                    out.mux(p)
    _h264_sets[width] = build_dataset_index(root).index
    return _h264_sets[width]


# (decoder, frame width, DALI threads): 340 px wide as Kinetics-style clips often are; 352 (a
# multiple of 16, the coded width) to see whether DALI's NVDEC decoder cache, keyed on the coded
# size, then reuses decoders; 10 threads = one per clip of the episode (the default is 2).
H264_ROWS = [("pyav", 340, 0), ("dali-gpu", 340, 2), ("dali-gpu", 340, 10), ("dali-gpu", 352, 2)]


@pytest.mark.skipif(not HAS_CUDA, reason="H.264 on the GPU (NVDEC) vs PyAV: needs a CUDA GPU")
@pytest.mark.parametrize("decoder,width,threads", H264_ROWS, ids=[f"{d}-{w}w-{t}t" for d, w, t in H264_ROWS])
def test_h264_256px(benchmark, tmp_path_factory, decoder, width, threads):
    _bench_decoder(benchmark, decoder, h264_index(tmp_path_factory, width), resize=256, crop=224, threads=threads,
                   rounds=2)  # ~8 s a round at 12 clips/s: four rows fit one short device call
    benchmark.extra_info["width"] = width


@pytest.mark.parametrize("loading", ["loader", "in-memory"])
def test_train_step_data_loading(benchmark, synthetic_index, loading):
    """One 5-way 1-shot training step of the synthetic preset's model, data loading on or off."""
    from tap_fast.config import preset
    from tap_fast.data.build import episode_loader
    from tap_fast.models import build_model, episode_loss

    device = torch.device("cuda" if HAS_CUDA else "cpu")
    config = preset("synthetic").replace(frames=T, way=WAY, shot=SHOT, query=QUERY)
    model = build_model(config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = iter(episode_loader(config, synthetic_index, "train", SHOT, train=True, seed=0, episodes=range(1000)))
    fixed = next(batches)

    def step():
        batch = next(batches) if loading == "loader" else fixed
        logits = model(batch["support"].to(device), batch["query"].to(device), WAY)
        episode_loss(logits, batch["query_labels"].to(device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if HAS_CUDA:
            torch.cuda.synchronize()

    step()
    benchmark.pedantic(step, rounds=5, iterations=1)
    if (seconds := mean_seconds(benchmark)) is not None:
        benchmark.extra_info.update(loading=loading, step_ms=round(1e3 * seconds, 2), device=str(device),
                                    decoder=config.decoder)
