"""Progress of a long phase on stderr (data generation, training, evaluation); no tqdm.

    with Progress(total, "ListOps") as bar:
        for item in work:
            bar.update()                   # or bar.update(n, note="loss 0.12")

On a terminal the line ``desc: done/total [####----] pct elapsed, eta  note`` is redrawn in
place (at most every ``REDRAW_S``). Elsewhere (a log file, a pipe, a notebook) nothing is
printed for the first ``QUIET_S`` seconds, so short phases stay silent; after that, a plain
line at each further 10% done or every ``LINE_EVERY_S``, and one when the phase ends: no
carriage returns in logs.

The ETA is measured from the first update on, so the work before the first item (a process
pool starting, a compilation) does not stretch it, and it is shown only once the measurement
spans ``MIN_ETA_S`` seconds and more than one update: no ETA rather than a wild one.

Nothing is drawn by a bar made with ``enabled=False``, nor by any bar made inside
``progress_output(False)`` (what ``seqzoo train --no-progress`` sets).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

REDRAW_S = 0.2  # terminal: the shortest time between two redraws
QUIET_S = 5.0  # elsewhere: no line before a phase has run this long
LINE_EVERY_S = 30.0  # elsewhere: the longest time between two lines
MIN_ETA_S = 2.0  # no ETA before the rate is measured over this long
BAR_WIDTH = 20

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("seqzoo_progress", default=True)
_now = time.monotonic


@contextlib.contextmanager
def progress_output(shown: bool | None) -> Iterator[None]:
    """Within the block, bars are drawn (True) or never drawn (False); None: as outside it."""
    if shown is None:
        yield
        return
    token = _SHOWN.set(shown)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 100


class Progress:
    """Counts the completed work of one phase and shows it (see the module docstring).

    ``start``: work already done (a resumed run's steps; the rate counts only new work).
    ``transient``: on a terminal, the line is erased when the phase ends (a phase inside
    another, like an evaluation during training) instead of being left in place.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        stream: TextIO | None = None,
        *,
        start: int = 0,
        transient: bool = False,
    ):
        self.total, self.desc, self.done, self.note = total, desc, start, ""
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and _SHOWN.get()
        self.terminal = self.enabled and _is_terminal(self.stream)
        self.transient = transient
        self._start = self._last = _now()
        self._first: tuple[float, int] | None = None  # (time, done) at the first update
        self._tenth = -1  # off a terminal: the last 10% step a line was printed at
        self._shown = False  # terminal: a line is on screen; elsewhere: a line was printed
        self._printed = -1  # elsewhere: ``done`` as of the last line

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, count: int = 1, note: str | None = None) -> None:
        """``count`` more items done; ``note``: new text after the counts (e.g. the loss)."""
        now = _now()
        if count and self._first is None:
            self._first = (now, self.done + count)
        self.done += count
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        if self.terminal:
            if not self._shown or now - self._last >= REDRAW_S:
                self._draw(now)
        elif now - self._start >= QUIET_S:
            tenth = 10 * self.done // max(self.total, 1)
            if tenth > self._tenth or now - self._last >= LINE_EVERY_S:
                self._tenth = tenth
                self._line(now)

    def clear(self) -> None:
        """Erase the terminal line (before other output; the next update draws it again)."""
        if self.terminal and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        """End the phase: the final counts stay on the terminal (erased if ``transient``);
        elsewhere a last line, if the phase lasted long enough to print any (and the last
        one printed is not already the final count)."""
        if not self.enabled:
            return
        now = _now()
        if self.terminal:
            if self.transient:
                self.clear()
            else:
                self._draw(now)
                self.stream.write("\n")
                self.stream.flush()
        elif self._shown and self._printed != self.done:
            self._line(now)
        self.enabled = False

    def text(self, now: float, bar: bool = False) -> str:
        """``desc: done/total [bar] pct elapsed, eta  note`` as of ``now``."""
        done, total = self.done, self.total
        fraction = min(done / total, 1.0) if total else 1.0
        parts = [f"{self.desc}: {done:,}/{total:,}"]
        if bar:
            filled = int(BAR_WIDTH * fraction)
            parts.append(f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]")
        parts.append(f"{100 * fraction:.0f}% {duration(now - self._start)}")
        eta = self.eta(now)
        if eta is not None:
            parts[-1] += f", eta {duration(eta)}"
        if self.note:
            parts.append(f" {self.note}")
        return " ".join(parts)

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate since the first update; None until it is measured, and once
        the work is done."""
        if self._first is None or self.done >= self.total:
            return None
        since, counted = now - self._first[0], self.done - self._first[1]
        if since < MIN_ETA_S or counted <= 0:
            return None
        return max(self.total - self.done, 0) * since / counted

    def _draw(self, now: float) -> None:
        self._last, self._shown = now, True
        self.stream.write("\r\033[K" + self.text(now, bar=True)[: _columns(self.stream) - 1])
        self.stream.flush()

    def _line(self, now: float) -> None:
        self._last, self._shown, self._printed = now, True, self.done
        self.stream.write(self.text(now) + "\n")
        self.stream.flush()
