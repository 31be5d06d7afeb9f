"""SIGTERM / SIGINT become a request to stop at the next step boundary (after a checkpoint).

Clusters send SIGTERM before they reclaim a node; Ctrl-C sends SIGINT. Either sets `requested`;
the training loop saves last.pt and returns. A second SIGINT stops at once (KeyboardInterrupt).
"""
from __future__ import annotations

import signal
import sys
import threading

INTERRUPTED = 128 + signal.SIGINT  # the shell's exit status for "ended by Ctrl-C"


def report_interrupted(note: str = "") -> int:
    """One line for a Ctrl-C outside the training loop (or a second one inside it), instead of a
    traceback from wherever it landed; returns the exit status."""
    print(f"tap_fast: interrupted (Ctrl-C){note}", file=sys.stderr, flush=True)
    return INTERRUPTED


class StopOnSignal:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
