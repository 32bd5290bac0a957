"""Padding as lengths: run a fused attention kernel on the valid tokens moved to the front.

Positions count valid tokens only (``seqzoo.ops.attention``), so attention under a padding mask
``(batch, length)`` equals attention over each row's valid tokens moved to the front in order,
followed by padding that takes part in nothing. Fused kernels take that form cheaply (cuDNN as
sequence lengths, splash attention as a padding segment). Right-padded rows (every valid token
before every padded one: the usual case) are already in that order and run as they are;
otherwise (left padding, holes) the tokens are gathered into that order and the output gathered
back, under ``lax.cond`` on the whole batch, so right padding never pays for the gathers.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


@jax.custom_vjp
def gather_rows(x: Array, order: Array, inverse: Array) -> Array:
    """``x[b, order[b, t]]`` along axis 1 of ``x: (batch, length, ...)``; ``inverse`` is the
    inverse permutation, which makes the gradient a gather too (not a scatter)."""
    index = order.reshape(order.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _gather_rows_fwd(x, order, inverse):
    return gather_rows(x, order, inverse), (order, inverse)


def _gather_rows_bwd(res, g):
    order, inverse = res
    return gather_rows(g, inverse, order), None, None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def valid_first(run: Callable[..., Array], mask: Array, *rows: Array) -> Array:
    """``run(lengths, *rows)`` on the valid tokens moved to the front, output put back.

    mask: ``(batch, length)`` bool; rows: arrays ``(batch, length, ...)`` (q, k, v, ids...);
    ``run`` gets ``lengths: (batch,)`` int32 and the rows in valid-first order and returns
    ``(batch, length, ...)`` whose first ``lengths[b]`` rows are the valid tokens' outputs.
    Padded rows of the result are 0.
    """
    mask = mask.astype(bool)
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)

    def in_order(*rows):
        return run(lengths, *rows)

    def gathered(*rows):
        order = jnp.argsort(~mask, axis=1, stable=True)  # valid tokens first, in order
        inverse = jnp.argsort(order, axis=1)
        out = in_order(*(gather_rows(r, order, inverse) for r in rows))
        return gather_rows(out, inverse, order)

    right_padded = jnp.all(mask == (jnp.arange(mask.shape[1]) < lengths[:, None]))
    out = lax.cond(right_padded, in_order, gathered, *rows)
    valid = mask.reshape(mask.shape + (1,) * (out.ndim - 2))
    return jnp.where(valid, out, jnp.zeros((), out.dtype))
