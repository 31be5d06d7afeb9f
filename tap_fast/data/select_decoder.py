"""Which decoder reads a dataset: chosen automatically (and logged), or forced with --decoder.

    dali-gpu  DALI, NVDEC ("mixed") video / nvJPEG image decoding; needs a CUDA GPU
    dali-cpu  DALI's CPU decoders: videos in VP8, VP9 or MJPEG only (e.g. the synthetic set),
              or JPEG frame folders
    pyav      PyAV (FFmpeg) on the CPU, any codec, whole clip decoded and cached in memory
    pil       PIL, for frame folders on the CPU

auto: dali-gpu when a GPU and DALI are there and every video is at least NVDEC's minimum size
for its codec (VP9, AV1: 128x128, HEVC: 144x144, H.264: 48x16; the 64 px synthetic set is not);
otherwise, for videos, pyav when the whole set decoded fits in memory (<= 1 GiB, e.g. the
synthetic set: decoded once, then served from the cache), else dali-cpu when every video's codec
is one DALI's CPU decoder reads, else pyav; for frame folders, pil. The codecs and sizes are those
the index recorded for every video (a real root); an index without them (the synthetic set) has
the first few videos of each split probed.
When dali-gpu reads videos of which the index counted some not 16-pixel aligned, the reason
says so: NVDEC decoding of those measured ~3x slower.
"""
from __future__ import annotations

import sys

import torch

from .dali_pipeline import DALI_CPU_VIDEO_CODECS, dali_version
from .index import SPLITS, DatasetIndex, smaller_frame

DECODERS = ("auto", "dali-gpu", "dali-cpu", "pyav", "pil")


def dataset_kind(index: DatasetIndex) -> str:
    """"frames" when the index points at frame folders, "video" when at video files."""
    first = next(iter(index), None)
    return "frames" if first is not None and first.path.is_dir() else "video"


def probe_codecs(index: DatasetIndex, per_split: int = 3) -> dict[str, tuple[int, int] | None]:
    """{codec name (FFmpeg's): smallest (width, height)} of the first few videos of each split: the
    fallback for an index that does not carry every video's codec (index.codecs is None)."""
    import av

    smallest: dict[str, tuple[int, int] | None] = {}
    for split in SPLITS:
        for r in index.records(split)[:per_split]:
            try:
                with av.open(str(r.path)) as c:
                    ctx = c.streams.video[0].codec_context
                    name, size = ctx.name, (ctx.width, ctx.height)
            except (av.error.FFmpegError, OSError, IndexError, AttributeError):  # AttributeError: no codec_context
                smallest.setdefault("unreadable", None)
                continue
            smallest[name] = smaller_frame(smallest.get(name), size)
    return smallest


# NVDEC's smallest decodable frame per codec (NVIDIA Video Codec SDK, NVDEC programming guide;
# DALI's "mixed" video decoder asserts "Video is too small" below it); 144 for codecs not listed.
NVDEC_MIN_SIZE = {"h264": (48, 16), "mpeg1video": (48, 16), "mpeg2video": (48, 16), "mpeg4": (48, 16),
                  "vp8": (48, 16), "hevc": (144, 144), "vp9": (128, 128), "av1": (128, 128)}


def under_nvdec_minimum(smallest: dict[str, tuple[int, int] | None]) -> str | None:
    """Why NVDEC cannot read every video ("vp9 videos of 64x48, under NVDEC's 128x128 minimum"),
    or None when it can (as far as the sizes are known)."""
    for codec, size in sorted(smallest.items()):
        min_w, min_h = NVDEC_MIN_SIZE.get(codec, (144, 144))
        if size is not None and (size[0] < min_w or size[1] < min_h):
            return f"{codec} videos of {size[0]}x{size[1]}, under NVDEC's {min_w}x{min_h} minimum"
    return None


def unaligned_note(index: DatasetIndex) -> str:
    """"; N of M videos have ..." when the index counted videos not 16-pixel aligned, else "":
    DALI makes a new NVDEC decoder for every such clip (~50-70 ms each; the coded size, H.264's
    rounded up to 16, differs from the frame size). One line: it ends the logged reason."""
    if not index.unaligned_videos:
        return ""
    return (f"; {index.unaligned_videos} of {len(index)} videos have a width or height that is not a "
            "multiple of 16: DALI's NVDEC decoding measured ~3x slower on such H.264 clips "
            "(H200: 12 vs 40 clips/s); re-encode to multiples of 16 (ffmpeg -vf scale=...) "
            "or use --decoder pyav with --workers")


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
    too_small = None
    if kind == "frames":
        codecs = {"jpeg"}
    elif index.codecs is not None:  # every video's codec: one odd file makes a DALI decoder fail mid-run
        codecs = set(index.codecs)
        too_small = under_nvdec_minimum(index.smallest_frames or {})
    else:
        probed = probe_codecs(index)
        codecs, too_small = set(probed), under_nvdec_minimum(probed)
    dali_cpu_ok = kind == "frames" or codecs <= DALI_CPU_VIDEO_CODECS
    if requested == "auto":
        if cuda and dali and not too_small:
            return "dali-gpu", f"DALI {dali} on the GPU (NVDEC/nvJPEG){unaligned_note(index)}"
        if cuda and dali:  # the CPU choices below, saying why the GPU decoder is not used
            decoder, reason = choose_decoder(requested, index, cuda=False)
            return decoder, f"{reason}; not DALI on the GPU: {too_small}"
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
    if requested == "dali-gpu" and too_small:
        raise ValueError(f"--decoder dali-gpu cannot read this dataset: {too_small} "
                         f"(use {'dali-cpu or ' if dali_cpu_ok else ''}pyav)")
    if requested == "dali-cpu" and not dali_cpu_ok:
        raise ValueError(f"--decoder dali-cpu reads only {sorted(DALI_CPU_VIDEO_CODECS)} videos on the CPU; "
                         f"this dataset has {sorted(codecs)} (use pyav, or dali-gpu on a GPU)")
    if requested == "pyav" and kind == "frames":
        raise ValueError("--decoder pyav reads video files; this dataset is frame folders (use pil or dali-*)")
    if requested == "pil" and kind == "video":
        raise ValueError("--decoder pil reads frame folders; this dataset is video files (use pyav or dali-*)")
    return requested, "forced with --decoder" + (unaligned_note(index) if requested == "dali-gpu" else "")


def log_decoder(name: str, reason: str, split: str) -> None:
    print(f"tap_fast.data: {split} decoder {name} ({reason})", file=sys.stderr, flush=True)
