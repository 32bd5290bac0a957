"""Named experiments: ``default`` (the ``ExperimentConfig`` defaults) and one TOML file per
task x model in an ``experiments/`` folder, each giving only the values that differ from the
defaults. Files in subfolders are named by their path without ``.toml``, e.g.
``lra/listops_s4d`` for ``experiments/lra/listops_s4d.toml``.

Experiments are looked up in ``experiment_dirs()``, in order: ``experiments/`` in the current
directory, then the package's own, ``seqzoo/experiments``: in a source checkout a link to the
checkout's ``experiments/`` folder, in an installed wheel the TOML files shipped as package data
(``[tool.setuptools.package-data]`` in pyproject.toml). A name is a relative path inside those
folders (no ``..``, not absolute); any other config file is given by its explicit path, ending in
``.toml``, wherever it is.

LRA compares models at about the Transformer's parameter count (within 10%): the Transformer
config of an experiment ``DIR/TASK_MODEL`` is ``DIR/TASK_transformer`` (see
``transformer_config``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from seqzoo.config import ExperimentConfig, load_config
from seqzoo.domains import RELATIVE_NAME

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # seqzoo/, whose experiments/ ships the TOMLs
SOURCE_ROOT = PACKAGE_ROOT.parent  # the source checkout, if seqzoo runs from one (benchmarks/)
FOLDER = "experiments"
SUFFIX = ".toml"
DEFAULT = "default"
TRANSFORMER = "_transformer"


def experiment_dirs() -> list[Path]:
    """The folders experiments are looked up in, first match first (they need not exist):
    ``./experiments``, then the package's ``seqzoo/experiments``."""
    dirs: list[Path] = []
    for folder in (Path.cwd() / FOLDER, PACKAGE_ROOT / FOLDER):
        if all(folder.resolve() != d.resolve() for d in dirs):
            dirs.append(folder)
    return dirs


def _experiment_files() -> dict[str, Path]:
    """Each experiment name and its file (a name in an earlier folder hides a later one's)."""
    files: dict[str, Path] = {}
    for folder in experiment_dirs():
        for path in sorted(folder.rglob(f"*{SUFFIX}")) if folder.is_dir() else []:
            files.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return files


def experiment_names() -> list[str]:
    """``default`` and the names of the ``experiments/**/*.toml`` files (top-level files
    first)."""
    return [DEFAULT] + sorted(_experiment_files(), key=lambda n: (n.count("/"), n))


def load_experiment(name: str) -> ExperimentConfig:
    """The config of experiment ``name``, or of the TOML file at path ``name`` (ending in
    ``.toml``: a file the user chose, anywhere).

    Raises ``FileNotFoundError`` for a ``.toml`` path that is not a file, ``ValueError`` for a
    name that would leave the experiments folders or names no experiment (the message lists
    the folders looked in and the known experiments).
    """
    if name == DEFAULT:
        return ExperimentConfig()
    if name.endswith(SUFFIX):
        path = Path(name).expanduser()
        if not path.is_file():
            stem = name.removesuffix(SUFFIX)
            hint = (
                f" (the experiment of that name is {stem!r})" if stem in _experiment_files() else ""
            )
            raise FileNotFoundError(f"config file {name} not found{hint}")
        return load_config(path)
    dirs = experiment_dirs()
    looked = ", ".join(str(d) for d in dirs)
    if not RELATIVE_NAME.allows(name):
        raise ValueError(
            f"{name!r} is not an experiment name: a name is a relative path inside the "
            f"experiments folders ({looked}), with no empty, '.' or '..' part; to train from a "
            f"config file elsewhere, give its path ending in {SUFFIX}"
        )
    found = [d / f"{name}{SUFFIX}" for d in dirs if (d / f"{name}{SUFFIX}").is_file()]
    if not found:
        raise ValueError(
            f"unknown experiment {name!r}: no {name}{SUFFIX} in {looked}; known experiments: "
            f"{', '.join(experiment_names())} (or give the path of a {SUFFIX} config file)"
        )
    path = found[0]
    cfg = load_config(path)
    if cfg.name == path.stem:  # a file without a name of its own: the nested name
        cfg = dataclasses.replace(cfg, name=name)
    return cfg


def transformer_config(cfg: ExperimentConfig) -> ExperimentConfig | None:
    """The Transformer experiment of ``cfg``'s task, if there is one: ``DIR/TASK_transformer``
    for an experiment named ``DIR/TASK_MODEL`` (and the same task name)."""
    folder, _, stem = cfg.name.rpartition("/")
    for name in experiment_names():
        ref_folder, _, ref_stem = name.rpartition("/")
        task = ref_stem.removesuffix(TRANSFORMER)
        if ref_folder == folder and ref_stem.endswith(TRANSFORMER) and stem.startswith(task + "_"):
            ref = load_experiment(name)
            if ref.task.name == cfg.task.name:
                return ref
    return None
