"""The notebooks in ``notebooks/`` run top to bottom, draw their figures, and are kept without
outputs in git.

Each notebook runs in a fresh Jupyter kernel named ``python3`` (ipykernel) whose ``PYTHONPATH``
starts with this checkout, so that it imports the seqzoo under test. Figures come from
matplotlib's inline backend (an Agg canvas saved as PNG); every code cell tagged ``figure`` must
show at least one real PNG. New notebooks are picked up by the glob.
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [path.stem for path in NOTEBOOKS]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000  # a blank figure is a few kB
MIN_PNG_SIDE = 200  # pixels
CELL_TIMEOUT_S = 600


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    assert set(QUICK) <= set(IDS), set(QUICK) - set(IDS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: cell {i} has outputs; clear them before committing"
            )


def png_images(cell) -> list[bytes]:
    """The decoded ``image/png`` outputs of a code cell."""
    data = [output.get("data", {}) for output in cell.outputs]
    return [base64.b64decode(d["image/png"]) for d in data if "image/png" in d]


def check_png(png: bytes, where: str) -> None:
    assert png.startswith(PNG_SIGNATURE), f"{where}: not a PNG"
    assert len(png) >= MIN_PNG_BYTES, f"{where}: PNG of {len(png)} bytes, probably blank"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    assert min(width, height) >= MIN_PNG_SIDE, f"{where}: PNG of {width}x{height} pixels"


# run by ``-m slow`` only, to keep the default suite under CI's budget: what they show is also
# tested directly (the matrix forms by tests/test_contract.py, every impl= against its reference
# by tests/test_ops_*.py and tests/test_kernels_*.py, LRA training by the runner's tests); 03 is
# mostly timing (up to length 4096, interpreted Pallas kernels on a CPU: ~40 s)
SLOW_NOTEBOOKS = {"01_matrix_mixers", "03_kernels_and_scaling", "04_lra"}
RUNS = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW_NOTEBOOKS else [])
        for p in NOTEBOOKS]
# Smaller sizes under test, papermill-style, in the executed copy only (the file in git, which
# users run, keeps its own): {notebook: {line as committed: line run here}}. Every line must be
# found, so that an edit of the notebook fails here rather than quietly running it at full size.
# 02 trains for 300 steps (~0.1 s each on a CPU) to show MQAR learnt; 50 still draw the loss and
# the two evaluations (steps 1 and 50) and run every cell after them on the trained parameters.
QUICK = {
    "02_compose_and_train": {"STEPS, BATCH = 300, 32": "STEPS, BATCH = 50, 32"},
}


def quicken(notebook, stem: str) -> None:
    """Replace ``QUICK[stem]``'s lines in the notebook's code cells; fail if one is missing."""
    for line, quick in QUICK.get(stem, {}).items():
        cells = [c for c in notebook.cells if c.cell_type == "code"
                 and line in c.source.splitlines()]
        assert len(cells) == 1, f"{stem}: the line {line!r} is in {len(cells)} code cells, not 1"
        cells[0].source = "\n".join(quick if s == line else s for s in cells[0].source.splitlines())


@pytest.mark.parametrize("path", RUNS)
def test_notebook_runs(path, monkeypatch):
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    notebook = nbformat.read(path, as_version=4)
    quicken(notebook, path.stem)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails
    figures = [i for i, c in enumerate(notebook.cells) if "figure" in c.metadata.get("tags", [])]
    assert figures, f"{path.name}: no code cell is tagged 'figure'"
    for i in figures:
        images = png_images(notebook.cells[i])
        assert images, f"{path.name}: cell {i} is tagged 'figure' but shows no PNG"
        for png in images:
            check_png(png, f"{path.name} cell {i}")
