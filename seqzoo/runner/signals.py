"""SIGINT (Ctrl-C) and SIGTERM during training: finish the step under way, save a checkpoint of
it, stop; ``seqzoo train --resume`` then continues from that very step.

``StopSignals`` (a context manager around the training loop) replaces the handlers of both
signals. The first signal is only recorded (``received``), with a line on stderr; the loop
checks it after each step, saves that step and raises ``RunInterrupted``. A second signal
raises ``KeyboardInterrupt`` at once, without saving. The previous handlers are restored on
exit. Python sets handlers only in the main thread: elsewhere nothing is installed.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on signal ``signal_name`` after saving its ``step`` in ``checkpoint``
    (a ``KeyboardInterrupt``, so that code catching Ctrl-C catches it)."""

    def __init__(self, signal_name: str, signal_number: int, step: int, checkpoint: Path):
        super().__init__(f"{signal_name}: stopped after step {step}, saved in {checkpoint}")
        self.signal_name, self.signal_number = signal_name, signal_number
        self.step, self.checkpoint = step, checkpoint


class StopSignals:
    """Records the first SIGINT or SIGTERM (see the module docstring)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        if self.received is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signal.Signals(number)
        # os.write: a signal handler must not reenter the buffered stderr it may interrupt
        os.write(2, (
            f"\nseqzoo: {self.received.name} received: the run stops after the step under way "
            f"and saves a checkpoint of it (send it again to stop at once, without saving)\n"
        ).encode())
