"""Reusable few-shot video kernels; no dependency on the rest of tap_fast.

    from tap_fast.kernels import tap_scores, tap_alignment, soft_dtw
"""
