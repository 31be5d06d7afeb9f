"""tap_fast: few-shot video classification by Temporal Alignment Prediction."""

__version__ = "0.1.0"
