"""Data layer: files -> index -> episode sampler -> decoder -> transform -> batch.

Names are imported lazily (PEP 562) so that `python -m tap_fast.data.synthetic` and the
generator's worker processes do not pay for importing torch.
"""
from importlib import import_module

_EXPORTS = {
    "decode": ("CachedDecoder", "FrameIndexError", "PyAVDecoder", "VideoDecodeError", "VideoDecoder",
               "decode_frames", "decode_video"),
    "episodes": ("EpisodeDataset",),
    "index": ("SPLITS", "DatasetIndex", "IndexFormatError", "VideoRecord"),
    "sampling": ("Episode", "EpisodeSampler", "episode_rng", "tsn_frame_indices"),
    "synthetic": ("SYNTHETIC_CLASSES", "SYNTHETIC_FAMILIES", "ensure_synthetic_dataset", "time_reversed_twin"),
    "transforms": ("ClipTransform",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
