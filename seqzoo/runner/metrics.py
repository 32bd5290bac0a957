"""A run's metrics: one JSON object per line in ``metrics.jsonl`` and the same scalars in a
TensorBoard event file, both in the run directory.

A record is ``{"step", "split", ...values}``: ``split`` is ``train`` (averages over the steps
since the previous record: ``loss``, ``accuracy``, ``grad_norm``; ``lr`` at ``step``;
``tokens_per_second``), ``val`` or ``test`` (``loss``, ``accuracy``).

Records are appended (a kill can tear only the last line, which readers drop with a warning);
the file is otherwise only ever replaced whole (``files.write_atomic``).
"""

from __future__ import annotations

import json
from pathlib import Path

from seqzoo.runner.files import read_jsonl, write_atomic
from seqzoo.runner.tensorboard import EventWriter

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, in order (a torn last line is dropped with a
    ``files.TornLineWarning``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a seqzoo run directory?")
    return read_jsonl(path)


def _kept_on_resume(record: dict, start_step: int) -> bool:
    """Whether a run resumed after ``start_step`` keeps ``record``: all of earlier steps, the
    train and val records of ``start_step`` (written before its checkpoint), not its test
    record (the run writes it again when it ends)."""
    return record["step"] < start_step or (
        record["step"] == start_step and record["split"] != "test"
    )


class MetricsLog:
    """Writes records to ``run_dir``: a new file, or for a run resumed after ``start_step`` the
    records it keeps (``_kept_on_resume``), so that no record is written twice."""

    def __init__(self, run_dir: str | Path, start_step: int = 0):
        self.path = Path(run_dir) / METRICS_FILE
        kept = []
        if start_step and self.path.is_file():
            kept = [r for r in read_metrics(run_dir) if _kept_on_resume(r, start_step)]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")
        self.events = EventWriter(run_dir, start_step)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Append ``values`` of ``split`` at ``step`` to both files."""
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        self.events.scalars(step, {f"{split}/{k}": v for k, v in values.items()})

    def close(self) -> None:
        self.file.close()
        self.events.close()
