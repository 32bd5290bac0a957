"""The heatmap of a mixer's M (``seqzoo materialize``) colours M / max|M| on the symmetric log
scale the notebooks' gallery uses, so entries far below the diagonal's still show."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib import colors  # noqa: E402

from seqzoo.runner.materialize import mixer_matrix  # noqa: E402
from seqzoo.runner.plot import MATRIX_LINTHRESH, matrix_figure  # noqa: E402


def test_materialize_plots_m_over_its_largest_entry_on_a_symlog_scale():
    matrix = mixer_matrix("hydra", 16)[0]
    image = matrix_figure(matrix, "hydra").axes[0].images[0]
    np.testing.assert_allclose(image.get_array(), matrix / np.abs(matrix).max())
    assert isinstance(image.norm, colors.SymLogNorm) and image.norm.linthresh == MATRIX_LINTHRESH
    assert (image.norm.vmin, image.norm.vmax) == (-1, 1)
    # an entry 100x below the largest is a clearly different colour from 0 (linear: 0.5%)
    assert image.norm(1e-2) - image.norm(0.0) > 0.2
    below = np.abs(np.tril(matrix, -4)) / np.abs(matrix).max()  # far from the diagonal
    assert (image.norm(below[below > 0]) - image.norm(0.0) > 0.02).mean() > 0.5
