"""Which decoder reads a dataset: chosen automatically (and logged), or forced with --decoder.

    dali-gpu  DALI, NVDEC ("mixed") video / nvJPEG image decoding; needs a CUDA GPU
    dali-cpu  DALI's CPU decoders: videos in VP8, VP9 or MJPEG only (e.g. the synthetic set),
              or JPEG frame folders
    pyav      PyAV (FFmpeg) on the CPU, any codec, whole clip decoded and cached in memory
    pil       PIL, for frame folders on the CPU

auto: dali-gpu when a GPU and DALI are there; otherwise, for videos, pyav when the whole set
decoded fits in memory (<= 1 GiB, e.g. the synthetic set: decoded once, then served from the
cache), else dali-cpu when every video's codec is one DALI's CPU decoder reads, else pyav;
for frame folders, pil. The codecs are those the index recorded for every video (a real root);
an index without them (the synthetic set) has the first few videos of each split probed.
"""
from __future__ import annotations

import sys

import torch

from .dali_pipeline import DALI_CPU_VIDEO_CODECS, dali_version
from .index import SPLITS, DatasetIndex

DECODERS = ("auto", "dali-gpu", "dali-cpu", "pyav", "pil")


def dataset_kind(index: DatasetIndex) -> str:
    """"frames" when the index points at frame folders, "video" when at video files."""
    first = next(iter(index), None)
    return "frames" if first is not None and first.path.is_dir() else "video"


def probe_codecs(index: DatasetIndex, per_split: int = 3) -> set[str]:
    """Codec names (FFmpeg's) of the first few videos of each split: the fallback for an index
    that does not carry every video's codec (index.codecs is None)."""
    import av

    codecs = set()
    for split in SPLITS:
        for r in index.records(split)[:per_split]:
            try:
                with av.open(str(r.path)) as c:
                    codecs.add(c.streams.video[0].codec_context.name)
            except (av.error.FFmpegError, OSError, IndexError, AttributeError):  # AttributeError: no codec_context
                codecs.add("unreadable")
    return codecs


CACHE_FITS_BYTES = 1 << 30  # half of CachedDecoder's default budget


def decoded_bytes(index: DatasetIndex) -> int | None:
    """Estimated size of the whole index decoded to uint8 RGB (frame size probed from one video)."""
    import av

    first = next(iter(index), None)
    if first is None:
        return None
    try:
        with av.open(str(first.path)) as c:
            s = c.streams.video[0]
            h, w = s.codec_context.height, s.codec_context.width
    except (av.error.FFmpegError, OSError, IndexError, AttributeError):  # AttributeError: no codec_context
        return None
    return sum(r.num_frames for r in index) * h * w * 3


def choose_decoder(requested: str, index: DatasetIndex, cuda: bool | None = None) -> tuple[str, str]:
    """(decoder, reason). ValueError when a forced decoder cannot read this dataset here."""
    if requested not in DECODERS:
        raise ValueError(f"decoder {requested!r} is not one of {', '.join(DECODERS)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    dali = dali_version()
    kind = dataset_kind(index)
    if kind == "frames":
        codecs = {"jpeg"}
    else:  # every video's codec when the index has them: one odd file makes DALI's CPU decoder fail mid-run
        codecs = set(index.codecs) if index.codecs is not None else probe_codecs(index)
    dali_cpu_ok = kind == "frames" or codecs <= DALI_CPU_VIDEO_CODECS
    if requested == "auto":
        if cuda and dali:
            return "dali-gpu", f"DALI {dali} on the GPU (NVDEC/nvJPEG)"
        decoded = decoded_bytes(index) if kind == "video" else None
        if decoded is not None and decoded <= CACHE_FITS_BYTES:
            # Measured on the synthetic set (2 CPU cores): cached PyAV ~950 clips/s once warm,
            # DALI CPU ~430 clips/s, uncached PyAV ~240; a set that fits in memory is decoded once.
            return "pyav", f"PyAV with an in-memory cache: the decoded set (~{decoded >> 20} MiB) fits, no GPU"
        if kind == "video" and dali and dali_cpu_ok:
            return "dali-cpu", f"DALI {dali} CPU video decoder, no GPU, codecs {sorted(codecs)}"
        if kind == "video":
            why = "DALI not installed" if not dali else f"codecs {sorted(codecs)} need a GPU for DALI"
            return "pyav", f"PyAV on the CPU ({why})"
        return "pil", "PIL JPEG decoding on the CPU (no GPU)"
    if requested in ("dali-gpu", "dali-cpu") and not dali:
        raise ValueError(f"--decoder {requested} needs NVIDIA DALI (pip install nvidia-dali-cuda130)")
    if requested == "dali-gpu" and not cuda:
        raise ValueError("--decoder dali-gpu needs a CUDA GPU; none is visible")
    if requested == "dali-cpu" and not dali_cpu_ok:
        raise ValueError(f"--decoder dali-cpu reads only {sorted(DALI_CPU_VIDEO_CODECS)} videos on the CPU; "
                         f"this dataset has {sorted(codecs)} (use pyav, or dali-gpu on a GPU)")
    if requested == "pyav" and kind == "frames":
        raise ValueError("--decoder pyav reads video files; this dataset is frame folders (use pil or dali-*)")
    if requested == "pil" and kind == "video":
        raise ValueError("--decoder pil reads frame folders; this dataset is video files (use pyav or dali-*)")
    return requested, "forced with --decoder"


def log_decoder(name: str, reason: str, split: str) -> None:
    print(f"tap_fast.data: {split} decoder {name} ({reason})", file=sys.stderr, flush=True)
