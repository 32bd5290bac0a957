"""What a resumed run may change, and the record of each resume.

A resumed run keeps the model, data, optimizer and seed of its ``config.toml``, so that it
continues the run it resumes. Only how long it runs, how often it evaluates, logs and saves,
where it runs and how its batches are split into microbatches (``optim.accumulate``) may change
(``RESUMABLE``); any other change is refused, naming each key.

Each resume appends a line to ``RUN_DIR/resumes.jsonl``: ``{"time", "step"`` (the step it
resumed after), ``"checkpoint"`` (the folder restored), ``"skipped"`` (newer checkpoints passed
over: ``{"path", "reason", "moved_to"}``), ``"changes"`` (``{key: [old, new]}``)``}``; then
``config.toml`` is replaced by the new config (only after the restore succeeded).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from seqzoo.config import ExperimentConfig
from seqzoo.runner.checkpoint import Restored
from seqzoo.runner.files import append_line
from seqzoo.runner.rundir import CONFIG_FILE, run_config, write_config

RESUMES_FILE = "resumes.jsonl"
RESUMABLE = (
    "optim.steps",
    "max_minutes",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "description",
    "optim.accumulate",  # microbatches of the same batches: the same gradient, less memory
    "mesh.data",  # where it runs: devices, not what is computed
    "mesh.seq",
    "mesh.params",
    "mesh.attention",
    "mesh.carry",
)


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of every field of a (nested) config dataclass."""
    out = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_config(value, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = value
    return out


def config_changes(before: ExperimentConfig, after: ExperimentConfig) -> dict[str, tuple]:
    """``{key: (old, new)}`` of the fields that differ, in field order."""
    old, new = flat_config(before), flat_config(after)
    return {key: (old[key], new[key]) for key in old if old[key] != new[key]}


def resume_changes(run_dir: str | Path, cfg: ExperimentConfig) -> dict[str, tuple]:
    """The changes from ``run_dir``'s config to ``cfg``, all of them in ``RESUMABLE``; else
    ``ValueError`` naming each other changed key as ``key old -> new``."""
    changes = config_changes(run_config(run_dir), cfg)
    refused = {key: change for key, change in changes.items() if key not in RESUMABLE}
    if refused:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ValueError(
            f"--resume continues the run in {run_dir} with its own model, data, optimizer and "
            f"seed; these overrides would change them: {listed}. A resume may change only "
            f"{', '.join(RESUMABLE)}. To train with the changes, start a new run: "
            f"seqzoo train {Path(run_dir) / CONFIG_FILE} OVERRIDES --run-dir NEW_DIR"
        )
    return changes


def record_resume(
    run_dir: str | Path,
    cfg: ExperimentConfig,
    restored: Restored,
    moved: dict[Path, Path],
    changes: dict[str, tuple],
) -> None:
    """Append this resume to ``resumes.jsonl`` (see the module docstring), then, if ``changes``,
    replace ``config.toml`` by ``cfg``. ``moved``: where each skipped checkpoint was put."""
    run_dir = Path(run_dir)

    def relative(path: Path | None) -> str | None:
        return None if path is None else str(Path(path).absolute().relative_to(run_dir.absolute()))

    record = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "step": restored.step,
        "checkpoint": relative(restored.path),
        "skipped": [
            {"path": relative(path), "reason": reason, "moved_to": relative(moved.get(path))}
            for path, reason in restored.skipped
        ],
        "changes": {key: list(change) for key, change in changes.items()},
    }
    append_line(run_dir / RESUMES_FILE, json.dumps(record))
    if changes:
        write_config(run_dir, cfg)
