"""Sequence-parallel diagonal recurrences: ``linear_recurrence`` and Mamba's selective scan.

Each shard scans its own steps from a zero state (the op's local core), the shards' (total
decay, final state) pairs are combined after one ``all_gather`` (``seqzoo.parallel.carry``), and
each shard corrects its states with the carry ``c`` entering it:

    h_t = h_t^local + (prod_{t' <= t} a_t') * c        (reversed: prod over t' >= t)

For the selective scan ``a_t = exp(delta_t A)``, so the product is ``exp(A sum_{t' <= t}
delta_t')`` and the correction of the output is ``C_t . (exp(A sum delta) * c)``, computed in
blocks of rows whose backward pass recomputes those ``(batch, l, d, n)`` products.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import blockwise
from seqzoo.ops.scan.xla import compute_dtype, discretize_step, expand_groups
from seqzoo.parallel.carry import carry_in
from seqzoo.parallel.collectives import reject_segments

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def _cumulative_product(a: Array, reverse: bool) -> Array:
    """``prod_{t' <= t} a_t'`` along axis 1 (``t' >= t`` when ``reverse``)."""
    if reverse:
        return jnp.flip(jnp.cumprod(jnp.flip(a, axis=1), axis=1), axis=1)
    return jnp.cumprod(a, axis=1)


def sharded_linear_recurrence(
    local: Callable,
    a: Array,
    b: Array,
    *,
    axis: str,
    initial_state: Array | None,
    reverse: bool,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_recurrence`` on a sequence split over mesh axis ``axis``.

    ``local(a, b) -> (h, last)`` is the op's local core with ``reverse`` and ``impl`` bound
    (``linear_recurrence_local``). a, b: this shard's ``(batch, l, ...)``; ``initial_state``
    enters the first shard (the last one when ``reverse``). Returns the states ``(batch, l, ...)``
    and the last state of the whole sequence (``h_0`` of the first shard when reversed), the same
    on every shard.
    """
    out_dtype = jnp.result_type(a, b)
    dtype = compute_dtype(out_dtype)
    a, b = a.astype(dtype), b.astype(dtype)
    h, _ = local(a, b)
    decay = _cumulative_product(a, reverse)
    edge = 0 if reverse else -1
    entering, final = carry_in(
        decay[:, edge], h[:, edge], axis, reverse=reverse, initial_state=initial_state
    )
    h = (h + decay * entering[:, None]).astype(out_dtype)
    return h, final.astype(out_dtype)


def sharded_selective_scan(
    local: Callable,
    u: Array,
    delta: Array,
    A: Array,
    B: Array,
    C: Array,
    *,
    axis: str,
    z: Array | None,
    delta_bias: Array | None,
    delta_softplus: bool,
    initial_state: Array | None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.selective_scan`` on a sequence split over mesh axis ``axis``.

    ``local(u, delta, A, B, C, *, z, initial_state) -> (y, state)`` is the op's local core with
    its other options bound (``selective_scan_local``). Arrays as the op's, on local shards
    (``u: (batch, l, d)``); ``initial_state`` enters the first shard. Returns ``(batch, l, d)``
    in ``u``'s dtype and the state after the whole sequence ``(batch, d, n)`` float32 (on every
    shard).
    """
    reject_segments(segment_ids)
    # the gate is applied after the correction, below
    y, local_state = local(u.astype(_F32), delta, A, B, C, z=None, initial_state=None)
    cum = jnp.cumsum(discretize_step(delta, delta_bias, delta_softplus), axis=1)  # (b, l, d)
    total = jnp.exp(cum[:, -1, :, None] * A.astype(_F32))  # the shard's decay: (b, d, n)
    entering, final = carry_in(total, local_state, axis, initial_state=initial_state)
    y = y + _lean_correction((C, cum, entering), A)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    return y.astype(u.dtype), final


def _correction(rows, A):
    """``C_t . (exp(A cum_t) * entering)``: (b, l, d) from C: (b, l, [g,] n), cum: (b, l, d),
    entering: (b, d, n)."""
    C, cum, entering = rows
    decay = jnp.exp(cum[..., None] * A.astype(_F32))  # prod a_t: (b, l, d, n)
    C = expand_groups(C.astype(_F32), cum.shape[-1], 2)
    return jnp.einsum("bldn,bldn,bdn->bld", C, decay, entering, precision=_HI)


# Blocks of rows, forwards and backwards (``lean_grad.blockwise``): autodiff would keep the
# (b, l, d, n) decays; a block's are at most an eighth of cum's size.
_lean_correction = blockwise(
    _correction, forward=True,
    row_elements=lambda rows: rows[1].shape[1] * rows[1].shape[2] * rows[2].shape[2],
    block_elements=lambda rows: rows[1].size // 8,
)
