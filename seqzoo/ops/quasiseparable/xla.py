"""Hydra's quasiseparable mixer in XLA: both directions as one batched SSD, and the matrix.

The backward direction runs causally on the flipped sequence: ``[fwd; flip(bwd)]`` stacked on
the batch axis is one causal SSD problem (``seqzoo.ops.ssd``'s local core), its output delayed
by one step and the backward half flipped back; the matrix is assembled the same way from
``ssd_matrix``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.segments import segment_starts
from seqzoo.ops.ssd import ssd_local, ssd_matrix
from seqzoo.ops.ssd.xla import LEAN_STEPS, chunked_parts, lean_rows

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
    (lean: ``ssd.xla.lean_rows`` over the unstacked arguments, so that only they are kept for
    the backward pass) or ``"sequential"``, the batched SSD's."""
    rows = (x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, segment_ids)
    if impl == "chunked":
        return lean(chunk_size, dt_softplus)(rows, (A, dt_bias))

    def sequential(x, dt, A, B, C, segment_ids, dt_bias):
        return ssd_local(x, dt, A, B, C, chunk_size=chunk_size, D=None, z=None, dt_bias=dt_bias,
                         dt_softplus=dt_softplus, initial_state=None, segment_ids=segment_ids,
                         impl=impl)[0]

    return _both_directions(sequential, rows, A, dt_bias)


@functools.cache
def lean(chunk_size: int, dt_softplus: bool, steps: int = LEAN_STEPS):
    """``lean(chunk_size, dt_softplus)((x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd,
    segment_ids), (A, dt_bias))``: the chunked mixer (no D) whose backward pass keeps only these
    arguments (``ssd.xla.lean_rows`` over ``chunked_parts``, ``steps`` as its)."""

    def causal(x, dt, A, B, C, segment_ids, dt_bias):
        return chunked_parts(x, dt, A, B, C, segment_ids, None, chunk_size=chunk_size,
                             dt_bias=dt_bias, dt_softplus=dt_softplus, steps=steps)[0]

    def fn(rows, shared):
        return _both_directions(causal, rows, *shared)

    return lean_rows(fn, chunk_size, directions=2, steps=steps)


def _both_directions(causal, rows, A, dt_bias) -> Array:
    """The mixer from ``causal(x, dt, A, B, C, segment_ids, dt_bias) -> y``, a causal SSD run
    once on both directions stacked along the batch axis."""
    x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, segment_ids = rows
    b, l = x.shape[:2]
    ids, starts = _stacked_starts(segment_ids, b, l)
    dt, B, C = _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd)
    y = causal(_stack_directions(x, x).astype(_F32), dt, A, B, C, ids, dt_bias)
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
