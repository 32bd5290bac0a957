"""Run directories: ``runs/<experiment>-<timestamp>`` by default, holding ``config.toml`` (the
resolved config: ``seqzoo train RUN_DIR/config.toml`` reruns it), ``metrics.jsonl``, TensorBoard
events, ``checkpoints/``, ``best/``, ``summary.json``, ``resumes.jsonl`` (one record per resume),
``init.json`` (a run started from another run's variables: ``runner.init_from``) and, while a
process works on it, ``lock`` (``seqzoo.runner.lock``).

An existing run directory is never written over, unless the run resumes it or ``overwrite``
replaces it (only a directory that holds a ``config.toml``, so no other folder is deleted).
``config.toml`` and ``summary.json`` are replaced whole (``files.write_atomic``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from seqzoo.config import ExperimentConfig, load_config, to_toml
from seqzoo.domains import RELATIVE_NAME
from seqzoo.runner.files import write_atomic
from seqzoo.runner.lock import LOCK_FILE

CONFIG_FILE, SUMMARY_FILE = "config.toml", "summary.json"
RUNS_ROOT = Path("runs")


def check_run_name(name: str) -> None:
    """Fail unless ``name`` (the config's ``name``) names a folder inside ``runs/``: the config
    domain ``RELATIVE_NAME`` (subfolders allowed, e.g. ``lra/listops_s4d``; no ``..``)."""
    error = RELATIVE_NAME.error("name", name)
    if error:
        raise ValueError(f"{error}; or give the run folder with --run-dir")


def default_run_dir(name: str) -> Path:
    """``runs/<name>-<timestamp>`` (``check_run_name`` first)."""
    check_run_name(name)
    return RUNS_ROOT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_config(run_dir: str | Path) -> ExperimentConfig:
    """The config a run was started (or last resumed) with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a seqzoo run directory")
    return load_config(path)


def check_run_dir(
    run_dir: str | Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool
) -> Path:
    """Check that ``run_dir`` can take a run of ``cfg`` (resuming: that it is a run) and create
    it if it does not exist, empty, so that it can hold the run's lock. Nothing else is
    written."""
    run_dir = Path(run_dir)
    to_toml(cfg)  # fails (on a value TOML cannot hold) before anything is written
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"nothing to resume: {run_dir / CONFIG_FILE} not found")
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"cannot create run directory {run_dir}: {e.strerror}; choose another with --run-dir"
        ) from None
    return run_dir


def write_config(run_dir: str | Path, cfg: ExperimentConfig) -> None:
    """Write ``cfg`` as ``run_dir/config.toml``, replacing any earlier one whole."""
    write_atomic(Path(run_dir) / CONFIG_FILE, to_toml(cfg))


def start_run_dir(run_dir: Path, cfg: ExperimentConfig, *, overwrite: bool) -> None:
    """Make ``run_dir`` (existing, locked by the caller) a new run of ``cfg``: it must be empty
    but for the lock, or, with ``overwrite``, a run (whose content is removed)."""
    text = to_toml(cfg)  # fails (on a value TOML cannot hold) before anything is removed
    content = [p for p in run_dir.iterdir() if p.name != LOCK_FILE]
    if content:
        if not overwrite:
            raise FileExistsError(
                f"run directory {run_dir} already exists; pass --resume to continue it, "
                f"--overwrite to replace it, or choose another with --run-dir"
            )
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileExistsError(f"{run_dir} holds no {CONFIG_FILE}: not a run; not deleting it")
        # config.toml last: a kill meanwhile leaves a folder still recognisable as a run
        for path in sorted(content, key=lambda p: p.name == CONFIG_FILE):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    write_atomic(run_dir / CONFIG_FILE, text)


def write_summary(run_dir: str | Path, summary: dict) -> None:
    write_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
