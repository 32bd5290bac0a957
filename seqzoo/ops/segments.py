"""Packed sequences: where a segment starts, and which segment each position is in.

``segment_ids: (batch, length)`` int marks packed sequences as runs of equal ids; the recurrent
ops reset their state to zero where the id changes, so each segment runs as its own sequence (the
first one continues from any initial state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def segment_starts(segment_ids: Array, batch: int, length: int) -> Array:
    """Where a packed sequence starts: ``segment_ids[t] != segment_ids[t-1]`` (never at t=0).

    segment_ids: (batch, length) int. Returns bool (batch, length). The recurrence state is
    reset to zero before step t where this is True, so each segment runs as its own sequence
    (the first segment continues from any initial state).
    """
    if segment_ids.shape != (batch, length):
        raise ValueError(
            f"segment_ids must be (batch, length)={(batch, length)}, got {segment_ids.shape}"
        )
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros((batch, 1), bool), changed], axis=1)


def segment_index(segment_ids: Array | None, batch: int, length: int) -> Array:
    """Running count of segment starts, (batch, length) int32; zeros without segment_ids."""
    if segment_ids is None:
        return jnp.zeros((batch, length), jnp.int32)
    return jnp.cumsum(segment_starts(segment_ids, batch, length), axis=1, dtype=jnp.int32)


def segment_runs(segment_ids: Array) -> Array:
    """Index of the run of equal ids each position is in: ``(batch, length)`` int32."""
    change = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )
    return jnp.cumsum(change.astype(jnp.int32), axis=1) - 1


def entering_runs(runs: Array, chunk: int) -> tuple[Array, Array]:
    """For a chunked form: ``(runs, entering)``, both ``(batch, length)``; ``entering[t]`` is
    the segment of the state entering the chunk of ``chunk`` positions that holds ``t``: the
    segment at the previous chunk's last position (0 in the first chunk)."""
    starts = np.arange(runs.shape[1]) // chunk * chunk  # the first position of t's chunk
    return runs, runs[:, np.maximum(starts - 1, 0)] * (starts > 0)
