"""Reusable few-shot video kernels; no dependency on the rest of tap_fast.

    from tap_fast.kernels import tap_scores, tap_alignment, soft_dtw

Shapes and semantics are the public API (see README.md, "Kernel API").
"""
from .tap import tap_alignment, tap_scores
from .soft_dtw import soft_dtw

__all__ = ["tap_scores", "tap_alignment", "soft_dtw"]
