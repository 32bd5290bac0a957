"""A run's metrics: one JSON object per line in ``metrics.jsonl`` and the same scalars in a
TensorBoard event file, both in the run directory.

A record is ``{"step", "split", ...values}``: ``split`` is ``train`` (averages over the steps
since the previous record: ``loss``, ``accuracy``, ``grad_norm``; ``lr`` at ``step``;
``tokens_per_second``), ``val`` or ``test`` (``loss``, ``accuracy``).

Records are appended (a kill can tear only the last line, which readers drop with a warning);
the file is otherwise only ever replaced whole (``files.write_atomic``). A resumed run first
drops the records it will write again from both (``_kept_on_resume``): neither holds a step
twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqzoo.runner.files import read_jsonl, write_atomic
from seqzoo.runner.tensorboard import EventWriter, trim_events

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, in order (a torn last line is dropped with a
    ``files.TornLineWarning``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a seqzoo run directory?")
    return read_jsonl(path)


def _kept_on_resume(step: int, split: str, start_step: int) -> bool:
    """Whether a run resumed after ``start_step`` keeps the record of ``split`` at ``step``:
    all of earlier steps, the train and val records of ``start_step`` (written before its
    checkpoint), not its test records (the run writes them again when it ends)."""
    return step < start_step or (step == start_step and split not in ("test", "test_best"))


class MetricsLog:
    """Writes records to ``run_dir``: a new file, or for a run resumed after ``start_step`` the
    records it keeps (``_kept_on_resume``), so that no record is written twice; the same for
    the TensorBoard events (old files trimmed, a new one started)."""

    def __init__(self, run_dir: str | Path, start_step: int = 0):
        self.path = Path(run_dir) / METRICS_FILE
        kept = []
        if start_step and self.path.is_file():
            records = read_metrics(run_dir)
            kept = [r for r in records if _kept_on_resume(r["step"], r["split"], start_step)]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if start_step:
            trim_events(run_dir, lambda step, split: _kept_on_resume(step, split, start_step))
        self.file = self.path.open("a")
        self.events = EventWriter(run_dir)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Append ``values`` of ``split`` at ``step`` to both files."""
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        self.events.scalars(step, {f"{split}/{k}": v for k, v in values.items()})

    def close(self) -> None:
        self.file.close()
        self.events.close()


class NoMetrics:
    """The metrics of a process other than 0 of a multi-process run: written by process 0."""

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Nothing: process 0 writes the record."""

    def close(self) -> None:
        """Nothing to close."""
