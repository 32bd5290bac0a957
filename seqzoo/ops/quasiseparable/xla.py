"""Hydra's quasiseparable mixer in XLA: both directions as one batched SSD, and the matrix.

The backward direction runs causally on the flipped sequence: ``[fwd; flip(bwd)]`` stacked on
the batch axis is one causal SSD problem (``seqzoo.ops.ssd``'s local core), its output delayed
by one step and the backward half flipped back; the matrix is assembled the same way from
``ssd_matrix``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.segments import segment_starts
from seqzoo.ops.ssd import ssd_local, ssd_matrix

Array = jax.Array
_F32 = jnp.float32


def _stack_directions(fwd: Array, bwd: Array) -> Array:
    """[fwd; flip(bwd)] along the batch axis: both directions as one causal problem."""
    return jnp.concatenate([fwd, jnp.flip(bwd, axis=1)], axis=0)


def _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd):
    """dt, B, C of both directions, (2 batch, length, ...) each, in f32."""
    pairs = ((dt_fwd, dt_bwd), (B_fwd, B_bwd), (C_fwd, C_bwd))
    return tuple(_stack_directions(f, bw).astype(_F32) for f, bw in pairs)


def _merge_directions(y: Array, axes: tuple) -> Array:
    """Forward half plus the backward half flipped back along ``axes``."""
    half = y.shape[0] // 2
    return y[:half] + jnp.flip(y[half:], axis=axes)


def _delay(y: Array, axis: int, starts: Array | None) -> Array:
    """y one step later along ``axis`` (y[0] = 0), and 0 where a segment starts.

    starts: bool broadcastable to y, or None.
    """
    pad = [(0, 0)] * y.ndim
    pad[axis] = (1, 0)
    y = jax.lax.slice_in_dim(jnp.pad(y, pad), 0, y.shape[axis], axis=axis)
    return y if starts is None else jnp.where(starts, 0.0, y)


def diagonal(D: Array) -> Array:
    """D as f32 (batch or 1, length or 1, heads)."""
    D = D.astype(_F32)
    return D if D.ndim == 3 else D[None, None]


def _stacked_starts(segment_ids, batch, length):
    """(2 batch, length) segment starts of both directions, or None without segment_ids."""
    if segment_ids is None:
        return None, None
    ids = _stack_directions(segment_ids, segment_ids)
    return ids, segment_starts(ids, 2 * batch, length)


def quasiseparable(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, *, chunk_size: int,
                   dt_bias, dt_softplus: bool, segment_ids, impl: str) -> Array:
    """``shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x))))`` (no D) in f32; impl: ``"chunked"``
    or ``"sequential"``, the batched SSD's."""
    b, l = x.shape[:2]
    ids, starts = _stacked_starts(segment_ids, b, l)
    dt, B, C = _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd)
    y, _ = ssd_local(_stack_directions(x, x).astype(_F32), dt, A, B, C, chunk_size=chunk_size,
                     D=None, z=None, dt_bias=dt_bias, dt_softplus=dt_softplus,
                     initial_state=None, segment_ids=ids, impl=impl)
    starts = None if starts is None else starts[..., None, None]
    return _merge_directions(_delay(y, 1, starts), (1,))


def matrix(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, *, D, dt_bias, dt_softplus: bool,
           segment_ids) -> Array:
    """The mixing matrix (batch, heads, length, length) in f32 (see ``quasiseparable_matrix``)."""
    b, l, _ = dt_fwd.shape
    ids, starts = _stacked_starts(segment_ids, b, l)
    dt, B, C = _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd)
    M = ssd_matrix(dt, A, B, C, dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=ids)
    M = _merge_directions(_delay(M, 2, None if starts is None else starts[:, None, :, None]),
                          (2, 3))
    if D is not None:
        M = M + jnp.swapaxes(diagonal(D), 1, 2)[..., None] * jnp.eye(l, dtype=_F32)
    return M
