"""Sequence reductions of a model head (masked mean, last valid token) over sequence shards."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.parallel.collectives import global_positions
from seqzoo.parallel.context import sequence_axis, shard_index

Array = jax.Array


def sequence_sum(x: Array) -> Array:
    """``sum_t x[:, t]`` over the whole sequence: ``x: (batch, l, ...) -> (batch, ...)``; a
    ``psum`` over the sequence axis when one is active (``seqzoo.parallel.context``)."""
    total = jnp.sum(x, axis=1)
    axis = sequence_axis()
    return total if axis is None else jax.lax.psum(total, axis)


def sharded_last_valid(h: Array, mask: Array, axis: str) -> Array:
    """``h: (batch, l, d)`` at each row's last valid position of the whole sequence (position 0
    when none is valid): ``(batch, d)``, the same on every shard."""
    length = mask.shape[1]
    positions = global_positions(length, axis)
    last = jax.lax.pmax(jnp.max(jnp.where(mask, positions, -1), axis=1), axis)
    local = jnp.maximum(last, 0) - shard_index(axis) * length  # (batch,)
    here = (local >= 0) & (local < length)
    picked = jnp.take_along_axis(h, jnp.clip(local, 0, length - 1)[:, None, None], axis=1)[:, 0]
    return jax.lax.psum(jnp.where(here[:, None], picked, jnp.zeros((), h.dtype)), axis)
