"""How a global sequence is laid out over ``P`` sequence shards.

``shard_map`` splits the length evenly (an uneven length is an error there), so a length that
``P`` does not divide is padded at the end to the next multiple, and the padded positions'
outputs are dropped. Padding at the end never changes the outputs before it for the causal ops,
whatever its values; for the bidirectional ones (Hydra, the flipped half of ``bi:`` mixers,
bidirectional attention) the padded steps must be no-ops: zero inputs and ``mask=False``, which
is how ``seqzoo.runner`` pads batches (with ignored targets). Final states of a padded sequence
include the padded steps.
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

