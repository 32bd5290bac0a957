"""Sequence-parallel diagonal recurrences: ``linear_recurrence`` and Mamba's selective scan.

Each shard scans its own steps from a zero state, the shards' (total decay, final state) pairs
are combined after one ``all_gather`` (``seqzoo.parallel.carry``), and each shard corrects its
states with the carry ``c`` entering it:

    h_t = h_t^local + (prod_{t' <= t} a_t') * c        (reversed: prod over t' >= t)

For the selective scan ``a_t = exp(delta_t A)``, so the product is ``exp(A sum_{t' <= t}
delta_t')`` and the correction of the output is ``C_t . (exp(A sum delta) * c)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.recurrence import compute_dtype, linear_recurrence
from seqzoo.ops.selective_scan import discretize_step, expand_groups, selective_scan
from seqzoo.parallel.carry import carry_in
from seqzoo.parallel.collectives import reject_segments
from seqzoo.parallel.context import sequence_parallel

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def _cumulative_product(a: Array, reverse: bool) -> Array:
    """``prod_{t' <= t} a_t'`` along axis 1 (``t' >= t`` when ``reverse``)."""
    if reverse:
        return jnp.flip(jnp.cumprod(jnp.flip(a, axis=1), axis=1), axis=1)
    return jnp.cumprod(a, axis=1)


def sharded_linear_recurrence(
    a: Array,
    b: Array,
    *,
    axis: str,
    initial_state: Array | None = None,
    reverse: bool = False,
    return_final_state: bool = False,
    impl: str = "auto",
):
    """``seqzoo.ops.linear_recurrence`` on a sequence split over mesh axis ``axis``.

    Arguments as the op's, on local shards ``(batch, l, ...)``; ``initial_state`` enters the
    first shard (the last one when ``reverse``). Returns the states ``(batch, l, ...)`` and, if
    asked, the last state of the whole sequence (``h_0`` of the first shard when reversed), the
    same on every shard.
    """
    out_dtype = jnp.result_type(a, b)
    dtype = compute_dtype(out_dtype)
    a, b = a.astype(dtype), b.astype(dtype)
    with sequence_parallel(None):
        h = linear_recurrence(a, b, reverse=reverse, impl=impl)
    decay = _cumulative_product(a, reverse)
    edge = 0 if reverse else -1
    entering, final = carry_in(
        decay[:, edge], h[:, edge], axis, reverse=reverse, initial_state=initial_state
    )
    h = (h + decay * entering[:, None]).astype(out_dtype)
    return (h, final.astype(out_dtype)) if return_final_state else h


def sharded_selective_scan(
    u: Array,
    delta: Array,
    A: Array,
    B: Array,
    C: Array,
    D: Array | None = None,
    z: Array | None = None,
    delta_bias: Array | None = None,
    delta_softplus: bool = False,
    initial_state: Array | None = None,
    return_final_state: bool = False,
    segment_ids: Array | None = None,
    impl: str = "auto",
    *,
    axis: str,
):
    """``seqzoo.ops.selective_scan`` on a sequence split over mesh axis ``axis``.

    Arguments as the op's, on local shards (``u: (batch, l, d)``); ``initial_state`` enters the
    first shard. Returns ``(batch, l, d)`` in ``u``'s dtype and, if asked, the state after the
    whole sequence ``(batch, d, n)`` float32 (on every shard).
    """
    reject_segments(segment_ids)
    with sequence_parallel(None):  # the gate is applied after the correction, below
        y, local_state = selective_scan(
            u.astype(_F32), delta, A, B, C, D, None, delta_bias, delta_softplus,
            return_final_state=True, impl=impl,
        )
    cum = jnp.cumsum(discretize_step(delta, delta_bias, delta_softplus), axis=1)  # (b, l, d)
    decay = jnp.exp(cum[..., None] * A.astype(_F32))  # prod a_t: (b, l, d, n)
    entering, final = carry_in(decay[:, -1], local_state, axis, initial_state=initial_state)
    C = expand_groups(C.astype(_F32), u.shape[-1], 2)
    y = y + jnp.einsum("bldn,bldn,bdn->bld", C, decay, entering, precision=_HI)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    y = y.astype(u.dtype)
    return (y, final) if return_final_state else y
