"""PNG figures: learning curves of runs, and the heatmap of a mixer's matrix M.
matplotlib (the ``plot`` extra) is imported only when a figure is drawn, with the Agg backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqzoo.runner.metrics import read_metrics

CURVES = (("train", "loss", "train loss"), ("val", "accuracy", "validation accuracy"))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            'plotting needs matplotlib: pip install "seqzoo[plot]" (or pip install matplotlib)'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """One figure, a panel per curve (train loss, validation accuracy), a line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.5))
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        for ax, (split, key, _) in zip(axes, CURVES, strict=True):
            points = [(r["step"], r[key]) for r in records if r["split"] == split]
            if points:
                ax.plot(*zip(*points, strict=True), label=Path(run_dir).name)
    for ax, (_, key, title) in zip(axes, CURVES, strict=True):
        ax.set(title=title, xlabel="step", ylabel=key)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize="small")
    return _save(fig, out)


MATRIX_CMAP = "RdBu_r"
MATRIX_LINTHRESH = 1e-3  # of max|M|: the symlog scale is linear within it


def matrix_norm():
    """The colour scale of every figure of M (``seqzoo materialize``, the notebooks): values
    ``M / max|M|`` in [-1, 1] on a symmetric log scale, linear within ``MATRIX_LINTHRESH`` of
    0, so entries decades below the largest still show (an SSM's decay away from the diagonal,
    the off-diagonal blocks of a quasiseparable M) instead of only the diagonal."""
    from matplotlib import colors

    return colors.SymLogNorm(linthresh=MATRIX_LINTHRESH, vmin=-1, vmax=1)


def show_matrix(ax, matrix: np.ndarray):
    """Draws ``matrix / max|matrix|`` on ``ax`` in the shared colour scale; the image."""
    limit = float(np.max(np.abs(matrix))) or 1.0
    return ax.imshow(matrix / limit, cmap=MATRIX_CMAP, norm=matrix_norm(), interpolation="nearest")


def matrix_figure(matrix: np.ndarray, title: str):
    """Heatmap of ``matrix: (length, length)`` (row i = output position, column j = input) on
    the symlog scale of :func:`matrix_norm`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    fig.colorbar(show_matrix(ax, matrix), ax=ax, label="M / max|M| (symlog)")
    ax.set(title=title, xlabel="input position j", ylabel="output position i")
    return fig


def plot_matrix(matrix: np.ndarray, out: str | Path, title: str) -> Path:
    """Saves :func:`matrix_figure` of ``matrix`` as the PNG ``out``."""
    return _save(matrix_figure(matrix, title), out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    fig.clf()
    return out
