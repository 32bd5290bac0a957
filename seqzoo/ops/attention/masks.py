"""Which (query, key) pairs attention allows: positions over valid tokens, windows, sinks,
padding and packed segments (the rules in ``seqzoo.ops.attention``'s docstring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.segments import segment_runs
from seqzoo.parallel.collectives import tokens_before
from seqzoo.parallel.context import sequence_axis

Array = jax.Array


def valid_positions(mask: Array, seq_axis: str | None = None) -> Array:
    """Positions counted over valid tokens, ``cumsum(mask) - 1``: ``(..., length)`` int32.

    ``seq_axis`` (default: the active ``seqzoo.parallel`` context's): the sequence is split over
    this mesh axis, and the valid tokens of earlier shards count too.
    """
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: positions continue from the earlier shards
        positions = positions + tokens_before(mask, axis)[..., None]
    return positions


def segment_positions(mask: Array, segment_ids: Array | None) -> Array:
    """Positions over valid tokens, restarting at every segment: ``(batch, length)`` int32."""
    if segment_ids is None:
        return valid_positions(mask)
    before = jnp.cumsum(mask.astype(jnp.int32), axis=1) - mask.astype(jnp.int32)
    runs = segment_runs(segment_ids)
    start = jnp.concatenate([jnp.ones_like(runs[:, :1], bool), runs[:, 1:] != runs[:, :-1]], 1)
    base = jax.lax.cummax(jnp.where(start, before, 0), axis=1)  # valid tokens before the run
    return before - base


def repeat_kv(x: Array, heads: int) -> Array:
    """GQA: ``(batch, length, kv_heads, d) -> (batch, length, heads, d)``, head n reads n // g."""
    return jnp.repeat(x, heads // x.shape[-2], axis=-2)


def attention_mask(
    q_positions: Array,
    k_positions: Array,
    *,
    causal: bool,
    window: int | None = None,
    num_sinks: int = 0,
    q_valid: Array | None = None,
    k_valid: Array | None = None,
) -> Array:
    """The allowed (query, key) pairs ``A``: bool ``(..., lq, lk)``.

    Args:
      q_positions: ``(..., lq)``; k_positions: ``(..., lk)`` (leading axes broadcast).
      causal, window, num_sinks: see the module docstring.
      q_valid, k_valid: optional bool masks shaped like the positions; invalid rows/columns are
        all False.
    """
    diff = q_positions[..., :, None] - k_positions[..., None, :]
    allowed = diff >= 0 if causal else jnp.ones(diff.shape, bool)
    if window is not None:
        near = diff < window if causal else jnp.abs(diff) < window
        if num_sinks:
            near = near | (k_positions < num_sinks)[..., None, :]
        allowed = allowed & near
    if q_valid is not None:
        allowed = allowed & q_valid[..., :, None]
    if k_valid is not None:
        allowed = allowed & k_valid[..., None, :]
    return allowed


def self_mask(
    mask: Array | None, length: int, segment_ids: Array | None = None, **options
) -> Array:
    """``A`` for self-attention over ``length`` tokens with padding ``mask: (batch, length)``
    and packed ``segment_ids: (batch, length)``."""
    if mask is None and segment_ids is None:
        positions = jnp.arange(length)
        return attention_mask(positions, positions, **options)[None]
    if mask is None:
        mask = jnp.ones(segment_ids.shape, bool)
    positions = segment_positions(mask, segment_ids)
    allowed = attention_mask(positions, positions, q_valid=mask, k_valid=mask, **options)
    if segment_ids is not None:
        runs = segment_runs(segment_ids)
        allowed = allowed & (runs[:, :, None] == runs[:, None, :])
    return allowed
