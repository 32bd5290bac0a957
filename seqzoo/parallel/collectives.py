"""The exchanges between sequence shards that the sequence-parallel ops are built from.

Shard ``i`` of ``P`` along mesh axis ``axis`` holds positions ``[i l, (i + 1) l)`` of the global
sequence, ``l = length / P``; arrays are ``(batch, l, ...)`` there. All communication here is a
``ppermute`` to a neighbour or the mirror shard, or an ``all_gather`` of per-shard summaries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.parallel.context import num_shards, shard_index

Array = jax.Array


def reject_segments(segment_ids: Array | None) -> None:
    """Packed sequences (``segment_ids``) have no sequence-parallel path yet: say so."""
    if segment_ids is not None:
        raise NotImplementedError(
            "segment_ids are not supported with sequence parallelism: pass whole sequences "
            "(with a padding mask) or run without a sequence axis"
        )


def from_neighbour(x: Array, axis: str, offset: int) -> Array:
    """Shard ``i`` receives ``x`` of shard ``i - offset``; zeros where that shard does not exist
    (``offset=1``: from the previous shard, ``-1``: from the next)."""
    p = num_shards(axis)
    pairs = [(i, i + offset) for i in range(p) if 0 <= i + offset < p]
    return jax.lax.ppermute(x, axis, pairs)


def with_halo(x: Array, axis: str, left: int, right: int) -> Array:
    """``x: (batch, l, ...)`` extended to ``(batch, left + l + right, ...)`` with the previous
    shard's last ``left`` and the next shard's first ``right`` steps (zeros past either end of
    the sequence), as a convolution of width ``left + 1 + right`` reads them."""
    length = x.shape[1]
    if max(left, right) > length:
        raise ValueError(
            f"a halo of {max(left, right)} steps needs shards of at least that length, got "
            f"{length}: use fewer sequence shards or a longer sequence"
        )
    parts = [x]
    if left:
        parts.insert(0, from_neighbour(x[:, length - left :], axis, 1))
    if right:
        parts.append(from_neighbour(x[:, :right], axis, -1))
    return jnp.concatenate(parts, axis=1)


def delayed(x: Array, axis: str, offset: int = 1) -> Array:
    """``x`` one step later along the sequence: ``y[t] = x[t - 1]``, where ``x[-1]`` is the last
    step of shard ``i - offset`` (zero for the first shard). ``offset=-1`` is the delay of a
    locally flipped sequence (its previous step lives on the next shard)."""
    return jnp.concatenate([from_neighbour(x[:, -1:], axis, offset), x[:, :-1]], axis=1)


def flip_sequence(x: Array, axis: str) -> Array:
    """The global flip along axis 1: shard ``i`` gets shard ``P - 1 - i``'s steps reversed."""
    p = num_shards(axis)
    return jax.lax.ppermute(jnp.flip(x, axis=1), axis, [(i, p - 1 - i) for i in range(p)])


def counts_before(counts: Array, axis: str) -> Array:
    """``sum_{j < i} counts_j`` on shard ``i`` (one ``all_gather`` of ``counts``)."""
    gathered = jax.lax.all_gather(counts, axis)
    return (jnp.cumsum(gathered, axis=0) - gathered)[shard_index(axis)]


def tokens_before(mask: Array, axis: str) -> Array:
    """The valid tokens on earlier shards, ``(...)`` int32 for ``mask: (..., l)`` bool."""
    return counts_before(jnp.sum(mask.astype(jnp.int32), axis=-1), axis)


def global_positions(length: int, axis: str) -> Array:
    """The global index of each local step, ``i l + arange(l)``: ``(l,)`` int32."""
    return shard_index(axis) * length + jnp.arange(length)
