"""Sequence-parallel Mamba-2 SSD (Dao & Gu, 2024) and the pieces Hydra's shards reuse.

Per head, ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T`` and ``y_t = C_t . H_t``. With ``L_t = A
sum_{t' <= t} dt_t'`` the log decay from the shard's start and ``H_in`` the state entering the
shard (``seqzoo.parallel.carry``),

    y_t = y_t^local + exp(L_t) C_t . H_in                   H_in: (batch, heads, headdim, n)

``y^local`` and the shard's memory state are the op's local core from a zero state; the shard's
total decay is ``exp(L_l)``. One ``all_gather`` of ``P * batch * heads * (headdim * n + 1)``
floats per call, whatever the length.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.ops.scan import discretize_step, expand_groups
from seqzoo.parallel.carry import carry_in
from seqzoo.parallel.collectives import reject_segments

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def log_decay(dt: Array, A: Array, dt_bias: Array | None, dt_softplus: bool) -> tuple[Array, Array]:
    """``(dt, L)``: the discretised step and ``L_t = A sum_{t' <= t} dt_t'``, ``(batch, l, heads)``
    float32 each."""
    step = discretize_step(dt, dt_bias, dt_softplus)
    return step, jnp.cumsum(step * A.astype(_F32), axis=1)


def memory_state(x: Array, step: Array, cum: Array, B: Array) -> Array:
    """The shard's state from a zero start, ``sum_t exp(L_l - L_t) dt_t x_t B_t^T``.

    x: (batch, l, heads, headdim); step, cum: (batch, l, heads); B: (batch, l, g, n).
    Returns (batch, heads, headdim, n) float32.
    """
    weight = jnp.exp(cum[:, -1:] - cum) * step  # exp of a non-positive number
    B = expand_groups(B.astype(_F32), x.shape[2], 2)
    return jnp.einsum("blh,blhp,blhn->bhpn", weight, x.astype(_F32), B, precision=_HI)


def state_readout(C: Array, cum: Array, state: Array) -> Array:
    """``exp(L_t) C_t . state``: the outputs a state entering the shard adds.

    C: (batch, l, g, n); cum: (batch, l, heads); state: (batch, heads, headdim, n).
    Returns (batch, l, heads, headdim) float32.
    """
    C = expand_groups(C.astype(_F32), cum.shape[-1], 2)
    read = jnp.einsum("blhn,bhpn->blhp", C, state, precision=_HI)
    return jnp.exp(cum)[..., None] * read


def sharded_ssd(
    local: Callable,
    x: Array,
    dt: Array,
    A: Array,
    B: Array,
    C: Array,
    *,
    axis: str,
    z: Array | None,
    dt_bias: Array | None,
    dt_softplus: bool,
    initial_state: Array | None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.ssd`` on a sequence split over mesh axis ``axis``.

    ``local(x, dt, A, B, C, *, z, initial_state) -> (y, state)`` is the op's local core with its
    other options bound (``ssd_local``). Arrays as the op's, on local shards (``x: (batch, l,
    heads, headdim)``); ``initial_state`` enters the first shard. Returns ``(batch, l, heads,
    headdim)`` in ``x``'s dtype and the state after the whole sequence ``(batch, heads, headdim,
    n)`` float32 (on every shard).
    """
    reject_segments(segment_ids)
    # the gate is applied after the correction, below
    y, local_state = local(x.astype(_F32), dt, A, B, C, z=None, initial_state=None)
    _, cum = log_decay(dt, A, dt_bias, dt_softplus)
    entering, final = carry_in(
        jnp.exp(cum[:, -1])[..., None, None], local_state, axis, initial_state=initial_state
    )
    y = y + state_readout(C, cum, entering)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    return y.astype(x.dtype), final
