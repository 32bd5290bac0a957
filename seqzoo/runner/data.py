"""Batches as a deterministic function of (seed, step), so a resumed run sees the same data.

Training: epoch e visits the examples in the order ``default_rng((seed, e)).permutation(n)``;
step s (1-based) takes positions ``[(s - 1) B, s B)`` of the concatenated epochs.
Evaluation: the split in order, in batches of B; the last one is filled up with copies of the
first row whose targets are -100, so every example counts once and no shape changes.
Each process of a multi-process run reads only ``rows``, its rows of every batch
(``sharding.process_rows``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from seqzoo.data import IGNORE_INDEX
from seqzoo.data.dataset import Split


class BatchSampler:
    """Training batches of ``batch_size`` rows of ``split``, by step (see the module docstring);
    ``batch`` gives their ``rows`` only (a process's, in a multi-process run)."""

    def __init__(self, split: Split, batch_size: int, seed: int, rows: slice = slice(None)):
        self.split, self.batch_size, self.seed, self.rows = split, batch_size, seed, rows
        self.n = len(split["inputs"])
        self._epoch, self._permutation = None, None

    def _order(self, epoch: int) -> np.ndarray:
        """The permutation of epoch ``epoch`` (the latest one is kept)."""
        if epoch != self._epoch:
            rng = np.random.default_rng((self.seed, epoch))
            self._epoch, self._permutation = epoch, rng.permutation(self.n)
        return self._permutation

    def indices(self, step: int) -> np.ndarray:
        """Row indices of the batch of ``step`` (1-based)."""
        positions = np.arange((step - 1) * self.batch_size, step * self.batch_size)
        epochs, offsets = np.divmod(positions, self.n)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            out[at] = self._order(int(epoch))[offsets[at]]
        return out

    def batch(self, step: int) -> Split:
        """The ``rows`` of the batch of ``step`` (1-based)."""
        idx = self.indices(step)[self.rows]
        return {k: v[idx] for k, v in self.split.items()}


def eval_batches(split: Split, batch_size: int, rows: slice = slice(None)) -> Iterator[Split]:
    """``split`` in order, in full batches (or their ``rows``); padding rows carry no labels."""
    n = len(split["inputs"])
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)[rows]
        pad = idx >= n
        batch = {k: v[np.where(pad, 0, idx)] for k, v in split.items()}
        batch["targets"] = np.where(
            pad.reshape((-1,) + (1,) * (batch["targets"].ndim - 1)), IGNORE_INDEX, batch["targets"]
        )
        yield batch
