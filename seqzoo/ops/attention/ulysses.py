"""DeepSpeed-Ulysses (Jacobs et al., 2023): attention over devices by trading sequence shards for
head shards, the alternative to ring attention (``sequence_parallel.py``).

Shard ``i`` of ``P`` holds positions ``[i l, (i + 1) l)`` of every head, ``l = L / P``. One
all-to-all per tensor regroups them into every position of ``H / P`` heads, attention runs there
on whole sequences with any single-device implementation, and one all-to-all takes the output
back:

    q: (b, l, H, d), k, v: (b, l, H_kv, d)  --all_to_all-->  (b, L, H / P, d), (b, L, H_kv / P, d)
    o_heads = attention(q, k, v)                               on whole sequences
    o_heads: (b, L, H / P, d)                --all_to_all-->  o: (b, l, H, d)

The padding mask (and packed ``segment_ids``) are all-gathered to ``(b, L)``. Attention itself is
the single-device op, so causality, windows, sinks, padding and packed sequences hold as there.
Grouped-query attention keeps its kv heads when ``P`` divides them (device ``j`` gets query heads
``[j H / P, (j + 1) H / P)`` and exactly the kv heads they read); otherwise k and v are repeated
to ``H`` heads first. ``P`` must divide ``H``.

Communication per device, in the bytes of the collectives' operands (``communication_bytes``;
``(P - 1) / P`` of each all-to-all operand crosses the links): the forward pass moves
``b l (2 H + 2 H_kv') d`` elements of the inputs' dtype (``H_kv'``: the kv heads sent) and
``b l`` of the mask; the backward pass moves the same all-to-alls again (their transposes).
With ``l`` fixed it is constant as ``L`` and ``P`` grow together, where ring attention receives
``(P - 1)`` blocks of k and v per device.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from seqzoo.ops.attention.masks import repeat_kv
from seqzoo.parallel.context import num_shards, sequence_parallel

Array = jax.Array


def _sent_kv_heads(heads: int, kv_heads: int, shards: int) -> int:
    """The kv heads each shard sends: its own, or (where ``shards`` does not divide them) the
    query heads' copies."""
    return kv_heads if kv_heads % shards == 0 else heads


def communication_bytes(
    batch: int, local_length: int, heads: int, kv_heads: int, head_dim: int, dtype, shards: int,
    *, mask: bool = True, segment_ids: bool = False, backward: bool = False,
) -> int:
    """The bytes of the collectives' operands one device runs for ``ulysses_attention`` on
    ``(batch, local_length)`` tokens per shard (see the module docstring): the all-to-alls of
    q, k, v and the output (twice with ``backward``), and the all-gathers of a bool mask and
    int32 ``segment_ids``."""
    kv = _sent_kv_heads(heads, kv_heads, shards)
    exchanged = batch * local_length * (2 * heads + 2 * kv) * head_dim * np.dtype(dtype).itemsize
    gathered = batch * local_length * (int(mask) + 4 * int(segment_ids))
    return exchanged * (2 if backward else 1) + gathered


def ulysses_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    axis: str,
    attend: Callable[..., Array],
    mask: Array | None = None,
    segment_ids: Array | None = None,
) -> Array:
    """Attention on a sequence split over mesh axis ``axis``, computed on head shards.

    Args:
      q: ``(batch, l, heads, d)``; k, v: ``(batch, l, kv_heads, d)``, this shard's positions.
      attend: ``attend(q, k, v, mask, segment_ids)``, attention on whole sequences of some heads
        (the op's single-device core, with its pattern and ``impl``); it runs with the sequence
        axis switched off, since its sequences are whole (positions count from their start).
      mask, segment_ids: ``(batch, l)``, this shard's, or None.
    Returns ``(batch, l, heads, d)``, this shard's positions of ``attend``'s output.
    """
    shards, heads, kv_heads = num_shards(axis), q.shape[2], k.shape[2]
    if heads % shards:
        raise ValueError(
            f"Ulysses attention splits the {heads} heads over the {shards} sequence shards, "
            f"which must divide them: use num_heads a multiple of {shards}, or ring attention "
            f"(mesh.attention=ring)"
        )
    if _sent_kv_heads(heads, kv_heads, shards) != kv_heads:
        k, v = repeat_kv(k, heads), repeat_kv(v, heads)

    def to_heads(a):  # (b, l, n, d) -> (b, L, n / P, d)
        return jax.lax.all_to_all(a, axis, split_axis=2, concat_axis=1, tiled=True)

    def gathered(a):  # (b, l) -> (b, L)
        return None if a is None else jax.lax.all_gather(a, axis, axis=1, tiled=True)

    inputs = (to_heads(q), to_heads(k), to_heads(v), gathered(mask), gathered(segment_ids))
    with sequence_parallel(None):
        o = attend(*inputs)
    return jax.lax.all_to_all(o, axis, split_axis=1, concat_axis=2, tiled=True)
