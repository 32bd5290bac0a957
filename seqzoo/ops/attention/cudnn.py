"""Attention's cuDNN backend: the fused (flash) path through cuDNN.

cuDNN's flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``, memory
linear in length) computes our semantics exactly for bf16 / fp16 inputs, head dim <= 128
(<= 256 from Hopper on) and a multiple of 8, causal or not, a causal sliding window, GQA and any
padding mask; ``seqzoo.ops.dispatch`` holds the rules by which ``impl="auto"`` takes it.

Padding: positions count valid tokens only (``seqzoo.ops.attention``), so a mask is the same as
moving the valid tokens to the front in order and giving cuDNN each row's length
(``query_seq_lengths = key_value_seq_lengths = mask.sum(1)``). Right-padded rows (every valid
token before every padded one: the usual case) are already in that order and run as they are;
otherwise (left padding, holes) the tokens are gathered into that order, and the output gathered
back (``lax.cond`` on the whole batch, so right padding never pays for the gathers).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


@jax.custom_vjp
def _gather_rows(x: Array, order: Array, inverse: Array) -> Array:
    """``x[b, order[b, t]]`` along axis 1 of ``x: (batch, length, ...)``; ``inverse`` is the
    inverse permutation, which makes the gradient a gather too (not a scatter)."""
    index = order.reshape(order.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _gather_rows_fwd(x, order, inverse):
    return _gather_rows(x, order, inverse), (order, inverse)


def _gather_rows_bwd(res, g):
    order, inverse = res
    return _gather_rows(g, inverse, order), None, None


_gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def fused_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    window: int | None,
    mask: Array | None,
    scale: float | None,
    implementation: str = "cudnn",
) -> Array:
    """``jax.nn.dot_product_attention`` with padding as sequence lengths (module docstring).

    q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``; mask:
    ``(batch, length)`` bool or None. ``implementation`` is jax's (``"xla"`` runs this same
    wrapper off a GPU: the tests' path). Padded query rows of the output are 0.
    """
    sides = None if window is None else (window - 1, 0 if causal else window - 1)
    run = functools.partial(jax.nn.dot_product_attention, scale=scale, is_causal=causal,
                            local_window_size=sides, implementation=implementation)
    if mask is None:
        return run(q, k, v)
    mask = mask.astype(bool)
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)

    def in_order(q, k, v):
        return run(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths)

    def gathered(q, k, v):
        order = jnp.argsort(~mask, axis=1, stable=True)  # valid tokens first, in order
        inverse = jnp.argsort(order, axis=1)
        o = in_order(*(_gather_rows(t, order, inverse) for t in (q, k, v)))
        return _gather_rows(o, inverse, order)

    right_padded = jnp.all(mask == (jnp.arange(mask.shape[1]) < lengths[:, None]))
    o = lax.cond(right_padded, in_order, gathered, q, k, v)
    return jnp.where(mask[:, :, None, None], o, jnp.zeros((), o.dtype))
