"""Accuracy over meta-test episodes: mean and 95% confidence interval (as few-shot papers report)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AccuracySummary:
    mean: float  # percent
    ci95: float  # percent, half-width
    episodes: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.ci95:.2f} % ({self.episodes} episodes)"


def summarize_accuracies(per_episode: list[float] | np.ndarray) -> AccuracySummary:
    values = 100.0 * np.asarray(per_episode, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no episodes to summarize")
    std = values.std(ddof=1) if values.size > 1 else 0.0
    return AccuracySummary(float(values.mean()), float(1.96 * std / math.sqrt(values.size)), int(values.size))
