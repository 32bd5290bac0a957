"""Sequence-parallel (gated) linear attention, LASP-2 style (Sun et al., 2025).

Shard ``i`` holds ``q, k, v, g`` for its ``l`` positions. With ``G_t`` the cumulative log decay
from the shard's start and ``S_i`` the state entering it (``seqzoo.parallel.carry``),

    o_t = o_t^local + scale * (q_t * exp(G_t)) S_i          S_i: (batch, heads, dk, dv)

where ``o^local`` is ``seqzoo.ops.linear_attention`` on the shard from a zero state, which also
yields the shard's memory state; the shard's total decay is ``exp(G_l)``. One ``all_gather`` of
(state, decay) per call: ``P * batch * heads * dk * (dv + 1)`` floats, whatever the length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.linear_attention import _decay_per_key, linear_attention
from seqzoo.parallel.carry import carry_in
from seqzoo.parallel.collectives import reject_segments
from seqzoo.parallel.context import sequence_parallel

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def sharded_linear_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    axis: str,
    log_decay: Array | None = None,
    scale: float | None = None,
    initial_state: Array | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    segment_ids: Array | None = None,
    impl: str = "auto",
):
    """``seqzoo.ops.linear_attention`` on a sequence split over mesh axis ``axis``.

    Arguments as the op's (local shards ``(batch, l, heads, dim)``); ``initial_state`` enters the
    first shard. Returns ``o: (batch, l, heads, dv)`` in ``v``'s dtype and, if asked, the state
    after the whole sequence ``(batch, heads, dk, dv)`` float32, the same on every shard.
    """
    reject_segments(segment_ids)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with sequence_parallel(None):
        o, local_state = linear_attention(
            q, k, v.astype(jnp.float32), log_decay=log_decay, scale=scale,
            return_final_state=True, chunk_size=chunk_size, impl=impl,
        )
    cum = jnp.cumsum(_decay_per_key(log_decay, q), axis=1)  # G_t: (b, l, h, dk or 1)
    entering, final = carry_in(
        jnp.exp(cum[:, -1])[..., None], local_state, axis, initial_state=initial_state
    )
    q_decayed = q.astype(jnp.float32) * jnp.exp(cum) * scale
    o = o + jnp.einsum("blhd,bhdv->blhv", q_decayed, entering, precision=_HI)
    o = o.astype(v.dtype)
    return (o, final) if return_final_state else o
