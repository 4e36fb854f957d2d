"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM.

    with StopSignals() as stop:          # what Trainer.fit does around its loop
        while ...:
            ...one step...
            if stop.signum is not None:  # a signal arrived: save, then raise TrainingInterrupted
                ...

The first signal only sets ``signum``, so the loop finishes its step, saves and stops; a second
one restores the previous handlers and raises ``KeyboardInterrupt`` at once (the last checkpoint
stays). Only the main thread can install handlers; elsewhere signals keep their usual effect.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

__all__ = ["StopSignals", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` stopped on SIGINT (Ctrl-C) or SIGTERM after finishing its step and saving.

    ``signal`` is the signal's number, ``step`` the steps done, ``checkpoint`` the file saved
    (None without an ``out_dir``). A ``KeyboardInterrupt``, so code that handles Ctrl-C still does.
    """

    def __init__(self, message: str, signal: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signal = signal
        self.step = step
        self.checkpoint = checkpoint


class StopSignals:
    """While entered, SIGINT and SIGTERM set ``signum`` (see the module docstring)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received, or None
        self._previous: dict[int, object] = {}  # signal → its handler before __enter__

    def __enter__(self) -> "StopSignals":
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving "
              "(again to stop at once)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
