"""Where a training step's time goes: data wait, forward, backward, optimizer, evaluation, ...

Always on (a perf_counter pair per phase is free). With sync=True (--profile on a GPU) each phase
waits for the device first, so asynchronous kernels are charged to the phase that launched them.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class StepTimer:
    def __init__(self, device: torch.device, sync: bool = False):
        self.sync = sync and device.type == "cuda"
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)  # seconds per phase, whole run
        self.interval: dict[str, float] = defaultdict(float)  # since the last pop_interval()
        self.started = self._interval_started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        if self.sync:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            self.totals[phase] += dt
            self.interval[phase] += dt

    def pop_interval(self) -> tuple[dict[str, float], float]:
        """(seconds per phase, wall seconds) since the previous call."""
        now = time.perf_counter()
        phases, wall = dict(self.interval), now - self._interval_started
        self.interval.clear()
        self._interval_started = now
        return phases, wall

    def report(self, steps: int) -> str:
        wall = time.perf_counter() - self.started
        lines = [f"profile ({steps} steps, {wall:.1f} s wall{', device-synchronised' if self.sync else ''}):",
                 f"  {'phase':<12} {'total s':>9} {'ms/step':>9} {'share':>7}"]
        other = wall - sum(self.totals.values())
        for phase, seconds in sorted(self.totals.items(), key=lambda kv: -kv[1]) + [("other", other)]:
            lines.append(f"  {phase:<12} {seconds:9.2f} {1000 * seconds / max(steps, 1):9.1f} "
                         f"{100 * seconds / max(wall, 1e-9):6.1f}%")
        return "\n".join(lines)
