"""The sequence-parallel (gated) delta rule, LASP-2 style with matrix transitions.

Shard ``i`` holds ``q, k, v, beta, g`` for its ``l`` positions. The delta rule is linear in the
state it enters with: over the shard, with ``A_t = a_t (I - b_t k_t k_t^T)`` and the prefix
transition ``Phi_t = A_t ... A_1`` (``dk x dk``), the state and the outputs from ``S_in`` are

    S_t = Phi_t S_in + F_t,      o_t = S_t^T q_t = o_t^local + S_in^T R_t,   R_t = Phi_t^T q_t

where ``F_t`` and ``o_t^local`` are the run from a zero state (``q`` scaled). ONE run of the
op's local core yields all of them: its recurrence acts on the state's rows only, so with the
value widened to ``[0 | v]`` (``dk + dv`` columns) and the initial state ``[I | 0]`` its
states are ``[Phi_t | F_t]``, its outputs ``[R_t | o_t^local]`` and its final state
``[P | F]``, ``P = Phi_l`` (the shard's transition) and ``F = F_l``. One ``all_gather`` of
``(P_i, F_i)`` and an associative scan give the state entering each shard (``c_0 = S_init``,
``c_{i+1} = P_i c_i + F_i``; ``seqzoo.parallel.carry`` with ``matrix=True``) and the final
one, and each shard adds ``S_in^T R_t``.

Shapes: ``P: (batch, heads, dk, dk)``, ``F, S: (batch, heads, dk, dv)``, ``R_t: (batch, l,
heads, dk)``. Communication: ``P_shards * batch * heads * dk * (dk + dv)`` floats per call,
whatever the length. Compute: the local core runs with ``dk + dv`` value columns instead of
``dv`` (about twice the value-side work at ``dk = dv``), all in float32. ``carry="all_scan"``
(ZeCO's pipeline) cuts ``c`` along its value columns, which ``P_i @ c`` maps independently, and
keeps each ``P_i`` on its shard: ``P_shards + K - 2`` permutes of ``batch * heads * dk *
ceil(dv / K)`` floats, ``K = min(8, dv)``. ``segment_ids`` are not supported.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.parallel.carry import carry_in
from seqzoo.parallel.collectives import reject_segments

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def augmented_run(local: Callable, q, k, v, beta, log_decay):
    """The local core run from ``[I | 0]`` on ``[0 | v]`` (module docstring): ``(o^local: (b,
    l, h, dv), R: (b, l, h, dk), P: (b, h, dk, dk), F: (b, h, dk, dv))``, float32."""
    b, l, h, dk = q.shape
    dv = v.shape[-1]
    widened = jnp.concatenate(
        [jnp.zeros((b, l, h, dk), jnp.float32), v.astype(jnp.float32)], axis=-1
    )
    start = jnp.broadcast_to(jnp.eye(dk, dk + dv, dtype=jnp.float32), (b, h, dk, dk + dv))
    out, last = local(q, k, widened, beta, log_decay, start)
    return out[..., dk:], out[..., :dk], last[..., :dk], last[..., dk:]


def sharded_delta_rule(
    local: Callable,
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    log_decay: Array | None,
    initial_state: Array | None,
    *,
    axis: str,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.delta_rule`` on a sequence split over mesh axis ``axis``.

    ``local(q, k, v, beta, log_decay, initial_state) -> (o, S_T)`` is the op's local core with
    its options (scale, chunk size, impl) bound (``delta_rule_local``). q, k: this shard's
    ``(batch, l, heads, dk)``, v ``(batch, l, heads, dv)``, beta, log_decay ``(batch, l,
    heads)``; ``initial_state: (batch, heads, dk, dv)`` enters the first shard. Returns ``o:
    (batch, l, heads, dv)`` in ``v``'s dtype and the state after the whole sequence ``(batch,
    heads, dk, dv)`` float32, the same on every shard.
    """
    reject_segments(segment_ids)
    o, reach, transition, state = augmented_run(local, q, k, v, beta, log_decay)
    entering, final = carry_in(transition, state, axis, initial_state=initial_state, matrix=True)
    o = o + jnp.einsum("blhk,bhkv->blhv", reach, entering, precision=_HI)
    return o.astype(v.dtype), final
