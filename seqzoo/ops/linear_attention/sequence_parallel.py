"""Sequence-parallel (gated) linear attention, LASP-2 style (Sun et al., 2025).

Shard ``i`` holds ``q, k, v, g`` for its ``l`` positions. With ``G_t`` the cumulative log decay
from the shard's start and ``S_i`` the state entering it (``seqzoo.parallel.carry``),

    o_t = o_t^local + scale * (q_t * exp(G_t)) S_i          S_i: (batch, heads, dk, dv)

where ``o^local`` is the op's local core on the shard from a zero state, which also yields the
shard's memory state; the shard's total decay is ``exp(G_l)``. One ``all_gather`` of
(state, decay) per call: ``P * batch * heads * dk * (dv + 1)`` floats, whatever the length.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.ops.linear_attention.xla import decay_per_key
from seqzoo.parallel.carry import carry_in
from seqzoo.parallel.collectives import reject_segments

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def sharded_linear_attention(
    local: Callable,
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array | None,
    initial_state: Array | None,
    *,
    axis: str,
    scale: float,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_attention`` on a sequence split over mesh axis ``axis``.

    ``local(q, k, v, log_decay, initial_state) -> (o, S_T)`` is the op's local core with its
    options bound (``linear_attention_local``). q, k, v, log_decay: this shard's
    ``(batch, l, heads, ...)``; ``initial_state`` enters the first shard. Returns ``o: (batch, l,
    heads, dv)`` in ``v``'s dtype and the state after the whole sequence ``(batch, heads, dk,
    dv)`` float32, the same on every shard.
    """
    reject_segments(segment_ids)
    o, local_state = local(q, k, v.astype(jnp.float32), log_decay, None)
    cum = jnp.cumsum(decay_per_key(log_decay, q), axis=1)  # G_t: (b, l, h, dk or 1)
    entering, final = carry_in(
        jnp.exp(cum[:, -1])[..., None], local_state, axis, initial_state=initial_state
    )
    q_decayed = q.astype(jnp.float32) * jnp.exp(cum) * scale
    o = o + jnp.einsum("blhd,bhdv->blhv", q_decayed, entering, precision=_HI)
    return o.astype(v.dtype), final
