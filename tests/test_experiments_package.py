"""The experiments' TOML files ship with the package (``seqzoo/experiments``, package data), so
``seqzoo train <name>`` works from an installed wheel, not only from a source checkout."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import seqzoo.runner.experiments as experiments

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
TOMLS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments").rglob("*.toml"))


def test_the_package_folder_is_the_checkouts_experiments():
    assert (ROOT / "seqzoo" / "experiments").resolve() == (ROOT / "experiments").resolve()
    assert experiments.PACKAGE_ROOT / "experiments" == ROOT / "seqzoo" / "experiments"


def test_package_data_covers_every_experiment_and_no_script():
    """What setuptools ships: the ``seqzoo`` package data patterns (relative to seqzoo/) match
    every TOML file, and the experiments' scripts are no package (``packages.find`` excludes)."""
    patterns = PYPROJECT["package-data"]["seqzoo"]
    assert len(TOMLS) > 50
    for path in TOMLS:
        assert any(fnmatch.fnmatch(path, p) for p in patterns), path
    excluded = PYPROJECT["packages"]["find"]["exclude"]
    assert any(fnmatch.fnmatch("seqzoo.experiments.repro", p) for p in excluded)


def test_names_resolve_from_the_package_without_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./experiments here
    monkeypatch.setattr(experiments, "SOURCE_ROOT", tmp_path / "no_checkout")
    assert experiments.experiment_dirs() == [tmp_path / "experiments",
                                             ROOT / "seqzoo" / "experiments"]
    assert len(experiments.experiment_names()) == len(TOMLS) + 1
    assert experiments.load_experiment("mqar_gla").model.mixer == "gla"


@pytest.mark.slow  # builds a wheel (setuptools from the package index, about 10-20 s)
def test_the_wheel_holds_every_experiment(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("seqzoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("seqzoo/") for n in names if n.endswith(".toml"))
    assert shipped == TOMLS
    assert not [n for n in names if n.startswith("seqzoo/experiments/") and n.endswith(".py")]
