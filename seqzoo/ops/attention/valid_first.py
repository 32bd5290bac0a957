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

import functools
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


def with_lengths(
    attend: Callable[..., Array],
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    window: int | None,
    mask: Array | None,
    scale: float | None,
) -> Array:
    """A fused kernel with ``jax.nn.dot_product_attention``'s keywords (``is_causal``,
    ``local_window_size``, ``query_seq_lengths``, ``key_value_seq_lengths``, ``scale``) on our
    semantics: the window as ``(w - 1, 0)`` (causal) or ``(w - 1, w - 1)``, padding as lengths
    of the valid tokens moved to the front (``valid_first``).

    q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``; mask:
    ``(batch, length)`` bool or None. Padded query rows of the output are 0, and a row with
    no valid token gives 0 and finite gradients.
    """
    sides = None if window is None else (window - 1, 0 if causal else window - 1)
    run = functools.partial(attend, scale=scale, is_causal=causal, local_window_size=sides)
    if mask is None:
        return run(q, k, v)

    def by_lengths(lengths, q, k, v):
        # A row with no valid token gets length 1: flash kernels divide by the softmax's sum,
        # 0 / 0 for an empty row, and the NaN reaches dk and dv through the backward pass even
        # though the row's output is discarded (cuDNN and tokamax on an H100, benchmarks/
        # attention.py). Its one computed output row is padding, so ``valid_first`` zeroes it.
        lengths = jnp.maximum(lengths, 1)
        return run(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths)

    return valid_first(by_lengths, mask, q, k, v)
