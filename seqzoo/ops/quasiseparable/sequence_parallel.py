"""Sequence-parallel Hydra quasiseparable mixer (Hwang et al., 2024): both directions carried.

    QS(x) = shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x)))) + D x

is linear in the states entering each shard, so shard ``i`` adds to the op's local core (both
scans from zero, shifts inside the shard) the delayed read-out of its entering states, per
direction ``d`` in that direction's own time order:

    y_t += exp(L_{t-1}) C_{t-1} . H_in,d           (L_{-1} = 0; C_{-1}: the neighbour's last C)

where ``H_in,fwd`` is carried from the shards on the left and ``H_in,bwd`` from those on the
right (the backward direction runs on the locally flipped shard, its neighbour is shard
``i + 1``). The memory states of both directions travel in one ``all_gather``; the neighbours'
``C`` rows in two ``ppermute`` of ``(batch, g, n)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.ops.ssd.sequence_parallel import log_decay, memory_state, state_readout
from seqzoo.parallel.carry import combine_gathered, gather_summaries
from seqzoo.parallel.collectives import delayed, reject_segments

Array = jax.Array
_F32 = jnp.float32


def _flip(a: Array) -> Array:
    return jnp.flip(a, axis=1)


def _summary(x, dt, B, A, dt_bias, dt_softplus) -> tuple[Array, Array, Array]:
    """One direction's ``(total decay (b, heads, 1, 1), memory state, L: (b, l, heads))``."""
    step, cum = log_decay(dt, A, dt_bias, dt_softplus)
    return jnp.exp(cum[:, -1])[..., None, None], memory_state(x, step, cum, B), cum


def sharded_quasiseparable(local: Callable, x: Array, dt_fwd: Array, dt_bwd: Array, A: Array,
                           B_fwd: Array, C_fwd: Array, B_bwd: Array, C_bwd: Array, *,
                           axis: str, dt_bias: Array | None, dt_softplus: bool,
                           segment_ids: Array | None = None) -> Array:
    """``seqzoo.ops.quasiseparable`` on a sequence split over mesh axis ``axis``.

    ``local(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd)`` is the op's local core with its
    other options (D included) bound (``quasiseparable_local``). Arrays as the op's, on local
    shards (``x: (batch, l, heads, headdim)``, data-dependent ``D: (batch, l, heads)``). Returns
    ``(batch, l, heads, headdim)`` in ``x``'s dtype.
    """
    reject_segments(segment_ids)
    y = local(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd)
    forward = (x, dt_fwd, B_fwd)
    backward = (_flip(x), _flip(dt_bwd), _flip(B_bwd))  # in its own time order
    fwd, bwd = (_summary(*d, A, dt_bias, dt_softplus) for d in (forward, backward))
    decays, states = gather_summaries(
        jnp.concatenate([fwd[0], bwd[0]]), jnp.concatenate([fwd[1], bwd[1]]), axis
    )
    out = y.astype(_F32)
    halves = ((fwd[2], C_fwd, 1, False), (bwd[2], _flip(C_bwd), -1, True))
    for half, (cum, C, offset, reverse) in enumerate(halves):
        rows = slice(half * x.shape[0], (half + 1) * x.shape[0])
        entering, _ = combine_gathered(decays[:, rows], states[:, rows], axis, reverse=reverse)
        before = jnp.pad(cum[:, :-1], ((0, 0), (1, 0), (0, 0)))  # L_{t-1}, with L_{-1} = 0
        correction = state_readout(delayed(C, axis, offset), before, entering)
        out = out + (_flip(correction) if reverse else correction)
    return out.astype(x.dtype)
