"""How a global sequence is laid out over ``P`` sequence shards.

``shard_map`` splits the length evenly, so a length that ``P`` does not divide is padded at the
end to the next multiple. Padding is exact for every sequence-parallel op when the padded steps
are identity steps: zero inputs (and zero decay logs, i.e. decay 1) for the scans, a ``mask``
that is False there for attention, which the models pass anyway (``seqzoo.runner`` pads batches
with ``mask=False`` and ignored targets). Outputs at padded positions are then dropped.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def padded_length(length: int, shards: int) -> int:
    """The smallest multiple of ``shards`` that is >= ``length``."""
    return -(-length // shards) * shards


def pad_to_shards(x, shards: int, value=0, axis: int = 1):
    """``x`` (numpy or jax) padded with ``value`` at the end of ``axis`` to a multiple of
    ``shards``; ``x`` itself when it already divides."""
    extra = padded_length(x.shape[axis], shards) - x.shape[axis]
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    pad = np.pad if isinstance(x, np.ndarray) else jnp.pad
    return pad(x, widths, constant_values=value)

