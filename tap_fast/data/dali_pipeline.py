"""Episodes decoded by NVIDIA DALI: NVDEC ("mixed") on a GPU, DALI's CPU decoder otherwise.

One DALI batch is one episode: its way*(shot+query) clips (video files) or clips*T images
(frame folders). Python decides everything random, from (seed, episode id) exactly as
EpisodeDataset does (sampling.py streams), and hands it to DALI through external_source:

* the TSN frame indices of each clip go to the video decoder's ``frames`` argument, so only the
  sampled frames are decoded (and the same indices as the CPU path are used);
* the crop anchor (fractions in [0, 1]) and the flip of each clip go to crop_mirror_normalize.

The pipeline resizes the short side to `resize`, crops `crop` x `crop` (random in training,
centre in test), optionally mirrors, normalises with the ImageNet mean/std and returns float
[B, T, 3, crop, crop] torch tensors through DALI's PyTorch plugin (on the GPU for "gpu").
DALI runs the source callback ahead of the consumer (prefetch_queue_depth), so decoding the
next episodes overlaps the training step. num_shards/shard_id give each DDP rank every
num_shards-th episode. DALI's decode errors name no file: a pipeline failure is raised as a
VideoDecodeError naming the failing episode's videos (train stops on it, keeping last.pt).

NVDEC refuses frames under a per-codec minimum (VP9, AV1: 128x128; select_decoder.NVDEC_MIN_SIZE),
so the automatic choice gives smaller videos (the 64 px synthetic set) to a CPU decoder. The "mixed"
video path was run on an H200 (tests/test_dali.py, bench/test_bench_decode.py); the "mixed" image
(JPEG frame folder) path has not been run on a GPU yet.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .decode import FrameIndexError, VideoDecodeError
from .index import DatasetIndex
from .sampling import STREAM_FRAMES, STREAM_TRANSFORM, EpisodeSampler, episode_rng, tsn_frame_indices
from .transforms import IMAGENET_MEAN, IMAGENET_STD

DALI_CPU_VIDEO_CODECS = frozenset({"vp8", "vp9", "mjpeg"})  # fn.decoders.video, backend "cpu"


def dali_version() -> str | None:
    """The installed DALI version, or None when DALI cannot be imported."""
    try:
        import nvidia.dali as dali
    except Exception:  # ImportError, or a broken install (missing CUDA libraries)
        return None
    return dali.__version__


def _read_bytes(path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def build_pipeline(kind: str, device: str, batch_size: int, source, resize: int | None, crop: int | None,
                   num_threads: int = 2, device_id: int = 0, prefetch: int = 2, seed: int = 0):
    """A DALI pipeline reading (encoded, frame indices, crop x, crop y, mirror) batches from
    `source` (kind "video") or (encoded image, crop x, crop y, mirror) (kind "frames")."""
    from nvidia.dali import fn, pipeline_def, types

    if kind not in ("video", "frames"):
        raise ValueError(f"kind must be 'video' or 'frames', got {kind!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    decode_backend = "mixed" if device == "gpu" else "cpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=prefetch, seed=seed, exec_dynamic=True)
    def pipeline():
        if kind == "video":
            encoded, indices, crop_x, crop_y, mirror = fn.external_source(
                source=source, num_outputs=5, batch=True,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32])
            frames = fn.decoders.video(encoded, frames=indices, device=decode_backend)  # [F, H, W, C]
            layout = "FCHW"
        else:
            encoded, crop_x, crop_y, mirror = fn.external_source(
                source=source, num_outputs=4, batch=True,
                dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32])
            frames = fn.decoders.image(encoded, device=decode_backend, output_type=types.RGB)  # [H, W, C]
            layout = "CHW"
        if resize is not None:
            frames = fn.resize(frames, resize_shorter=resize, antialias=True)
        kwargs = dict(crop=(crop, crop), crop_pos_x=crop_x, crop_pos_y=crop_y) if crop is not None else {}
        return fn.crop_mirror_normalize(
            frames, mirror=mirror, dtype=types.FLOAT, output_layout=layout,
            mean=[255.0 * m for m in IMAGENET_MEAN], std=[255.0 * s for s in IMAGENET_STD], **kwargs)

    return pipeline()


class DaliEpisodeLoader:
    """Iterable over episodes decoded by DALI; yields the same dicts as EpisodeDataset.

    Every iteration builds a fresh pipeline (cheap next to an epoch) so a validation loader can
    be iterated many times.
    """

    def __init__(self, index: DatasetIndex, split: str, episodes: Sequence[int], way: int = 5, shot: int = 1,
                 query: int = 1, frames: int = 8, train: bool = False, resize: int | None = None,
                 crop: int | None = None, flip: bool = False, seed: int = 0, device: str = "cpu",
                 kind: str | None = None, num_threads: int = 2, device_id: int = 0, prefetch: int = 2,
                 shard_id: int = 0, num_shards: int = 1):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards), got {shard_id} of {num_shards}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("DALI decoder 'gpu' (NVDEC) needs a CUDA GPU; none is visible (use --decoder dali-cpu "
                             "for VP8/VP9/MJPEG, or pyav)")
        self.sampler = EpisodeSampler(index, split, way=way, shot=shot, query=query, seed=seed)
        self.episodes = list(episodes)[shard_id::num_shards]
        self.frames, self.train, self.flip, self.seed = int(frames), bool(train), bool(flip) and train, int(seed)
        self.resize, self.crop, self.device, self.device_id = resize, crop, device, device_id
        self.num_threads, self.prefetch = num_threads, prefetch
        records = index.records(split)
        self.kind = kind or ("frames" if records and records[0].path.is_dir() else "video")
        self.clips = way * (shot + query)
        self.batch_size = self.clips * (self.frames if self.kind == "frames" else 1)

    def __len__(self) -> int:
        return len(self.episodes)

    # -- what Python decides for one episode --------------------------------------------------
    def _episode_inputs(self, k: int):
        ep = self.sampler.sample(k)
        frame_rng = episode_rng(self.seed, k, STREAM_FRAMES)
        aug_rng = episode_rng(self.seed, k, STREAM_TRANSFORM)
        clips = []
        for r in list(ep.support) + list(ep.query):
            idx = tsn_frame_indices(r.num_frames, self.frames, self.train, frame_rng).astype(np.int32)
            if self.train and self.crop is not None:
                cx, cy = aug_rng.random(), aug_rng.random()
            else:
                cx = cy = 0.5
            mirror = int(self.flip and aug_rng.random() < 0.5)
            clips.append((r.path, idx, np.float32(cx), np.float32(cy), np.int32(mirror)))
        return ep, clips

    def _source(self, iteration: int):
        if iteration >= len(self.episodes):
            raise StopIteration
        _, clips = self._episode_inputs(self.episodes[iteration])
        if self.kind == "video":
            return ([_read_bytes(p) for p, *_ in clips], [c[1] for c in clips],
                    *[[np.array(c[i]) for c in clips] for i in (2, 3, 4)])
        from .formats import frame_files

        encoded, cx, cy, mirror = [], [], [], []
        for path, idx, x, y, m in clips:
            names = frame_files(path)
            if idx.max() >= len(names):
                raise FrameIndexError(path, int(idx.max()), len(names))
            for i in idx:
                encoded.append(_read_bytes(os.path.join(path, names[i])))
                cx.append(np.array(x)), cy.append(np.array(y)), mirror.append(np.array(m))
        return encoded, cx, cy, mirror

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if not self.episodes:
            return
        pipe = build_pipeline(self.kind, self.device, self.batch_size, self._source, self.resize, self.crop,
                              num_threads=self.num_threads, device_id=self.device_id, prefetch=self.prefetch,
                              seed=self.seed)
        it = DALIGenericIterator([pipe], ["clips"], auto_reset=False, last_batch_policy=LastBatchPolicy.PARTIAL,
                                 prepare_first_batch=False)
        try:
            for n in range(len(self.episodes)):
                try:
                    out = next(it)
                except StopIteration:
                    return
                except VideoDecodeError:
                    raise
                except RuntimeError as e:  # DALI's error names no file ("memory file"): name the episode's
                    raise self._pipeline_error(self.episodes[n], e) from e
                clips = out[0]["clips"]
                if self.kind == "frames":
                    clips = clips.reshape(self.clips, self.frames, *clips.shape[1:])
                ep = self.sampler.sample(self.episodes[n])
                n_support = len(ep.support)
                yield {
                    "support": clips[:n_support],
                    "query": clips[n_support:],
                    "support_labels": torch.from_numpy(ep.support_labels),
                    "query_labels": torch.from_numpy(ep.query_labels),
                    "class_names": ep.class_names,
                    "episode": int(ep.episode_id),
                }
        finally:
            del it, pipe

    def _pipeline_error(self, k: int, error: Exception) -> VideoDecodeError:
        """A VideoDecodeError naming episode k's videos (one of them failed) and DALI's reason,
        so that training stops with its one-line error and keeps last.pt."""
        ep = self.sampler.sample(k)
        paths = dict.fromkeys(str(r.path) for r in list(ep.support) + list(ep.query))
        return VideoDecodeError(f"(one of: {', '.join(paths)})",
                                f"DALI ({self.device}) failed on episode {k}: {dali_reason(error)}")


def dali_reason(error: Exception) -> str:
    """The line of a DALI pipeline error that says what went wrong: it follows "encountered:";
    the first line ("Critical error in pipeline:") says less."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[lines.index("encountered:") + 1] if "encountered:" in lines[:-1] else lines[0]


class DaliVideoDecoder:
    """VideoDecoder (decode(path, indices) -> uint8 [T, H, W, 3] numpy) backed by DALI, one clip
    per call: decodes only the requested frames (NVDEC on "gpu", libavcodec VP8/VP9/MJPEG on "cpu").

    For callers that want one clip at a time (evaluation's per-video feature cache); training uses
    DaliEpisodeLoader, which batches and prefetches. Not picklable: use it in the main process.
    """

    def __init__(self, device: str = "cpu", device_id: int = 0, num_threads: int = 2):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise ValueError("DaliVideoDecoder(device='gpu') needs a CUDA GPU; none is visible")
        self.device, self.device_id, self.num_threads = device, device_id, num_threads
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=1, num_threads=self.num_threads, prefetch_queue_depth=1,
                      device_id=self.device_id if self.device == "gpu" else None)
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            indices = fn.external_source(name="indices", dtype=types.INT32, ndim=1)
            return fn.decoders.video(encoded, frames=indices, device="mixed" if self.device == "gpu" else "cpu")

        self._pipe = pipeline()
        self._pipe.build()

    def decode(self, path, indices) -> np.ndarray:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video file not found: {path}")
        idx = np.asarray(indices)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"frame indices must be a 1-D sequence of ints, got {idx.dtype} with shape {idx.shape}")
        if idx.size and idx.min() < 0:
            raise FrameIndexError(path, int(idx.min()), -1)
        if self._pipe is None:
            self._build()
        self._pipe.feed_input("encoded", [_read_bytes(path)])
        self._pipe.feed_input("indices", [idx.astype(np.int32)])
        try:
            (out,) = self._pipe.run()
        except RuntimeError as e:
            self._pipe = None  # a failed run leaves the pipeline unusable: rebuild on the next call
            raise VideoDecodeError(path, f"DALI: {dali_reason(e)}") from e
        if self.device == "gpu":
            out = out.as_cpu()
        return np.asarray(out[0])
