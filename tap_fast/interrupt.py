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


def ignore_ctrl_c(*_) -> None:
    """In a worker process (a Pool initializer, a DataLoader worker_init_fn): Ctrl-C in a terminal
    reaches every process of the group, and a worker that died of it would take the batch or video
    it owed with it; the main process alone decides to stop. Also unblocks SIGINT for a worker
    started with it blocked (which drops a Ctrl-C that came while it started)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
