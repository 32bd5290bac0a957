"""Attention's XLA forms: the dense masked softmax (``attention_probs``, the matrix) and
``jax.nn.dot_product_attention`` with the pattern as flags or an explicit mask (``dense``), and
``lean_dense``, the same whose ``(batch, heads, L, L)`` scores exist for a block of rows at a time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.attention.masks import repeat_kv, self_mask
from seqzoo.ops.lean_grad import blockwise

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def attention_probs(q: Array, k: Array, allowed: Array, scale: float | None = None) -> Array:
    """Masked softmax probabilities ``P: (batch, heads, lq, lk)`` in float32.

    Args:
      q: ``(batch, lq, heads, d)``; k: ``(batch, lk, kv_heads, d)``.
      allowed: bool, broadcastable to ``(batch, lq, lk)``.
    Scores are masked before the max subtraction, so disallowed keys never affect the result;
    a row without any allowed key is all zeros.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = repeat_kv(k.astype(jnp.float32), q.shape[2])
    s = jnp.einsum("bihd,bjhd->bhij", q.astype(jnp.float32), k, precision=_HI) * scale
    allowed = allowed[..., None, :, :]
    s = jnp.where(allowed, s, -jnp.inf)
    s_max = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.where(allowed, jnp.exp(s - jnp.where(jnp.isfinite(s_max), s_max, 0.0)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def dense(q: Array, k: Array, v: Array, *, causal: bool, window: int | None, num_sinks: int,
          mask: Array | None, segment_ids: Array | None, scale: float | None,
          implementation: str = "xla") -> Array:
    """``jax.nn.dot_product_attention`` (``implementation``: jax's name, ``"xla"`` or
    ``"cudnn"``) with the pattern as ``is_causal`` / ``local_window_size`` where that says it
    all, else as an explicit mask (padding, sinks, segments). Padded query rows are 0."""
    if mask is None and segment_ids is None and not num_sinks:
        sides = None if window is None else (window - 1, 0 if causal else window - 1)
        pattern = {"is_causal": causal, "local_window_size": sides}
    else:
        options = {"causal": causal, "window": window, "num_sinks": num_sinks}
        pattern = {"mask": self_mask(mask, q.shape[1], segment_ids, **options)[:, None]}
    precision = "highest" if q.dtype == jnp.float32 else None
    with jax.default_matmul_precision(precision):
        o = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation,
                                         **pattern)
    if mask is not None:  # jax gives padded rows (no allowed key) a uniform average: zero them
        o = jnp.where(mask[:, :, None, None], o, jnp.zeros((), o.dtype))
    return o


def lean_dense(q: Array, k: Array, v: Array, *, causal: bool, window: int | None, num_sinks: int,
               mask: Array | None, segment_ids: Array | None, scale: float | None) -> Array:
    """``dense`` (XLA) as a ``lean_grad.blockwise`` function of the batch rows, forwards and
    backwards: XLA's softmax keeps the ``(batch, heads, L, L)`` scores and probabilities of every
    layer for the backward pass (33.4 GiB for lra/image_transformer's step on CPU, 1.4 GiB of
    other activations); here they exist for one block of rows at a time (at most
    ``lean_grad.BLOCK_ELEMENTS`` scores where the rows allow) and are recomputed backwards."""
    fn = _lean_dense((causal, window, num_sinks, scale))
    return fn((q, k, v, mask, segment_ids), ())


@functools.cache
def _lean_dense(options: tuple):
    causal, window, num_sinks, scale = options

    def fn(rows, _):
        q, k, v, mask, segment_ids = rows
        return dense(q, k, v, causal=causal, window=window, num_sinks=num_sinks, mask=mask,
                     segment_ids=segment_ids, scale=scale)

    def scores_per_row(rows):  # heads x Lq x Lk
        q, k = rows[0], rows[1]
        return q.shape[2] * q.shape[1] * k.shape[1]

    return blockwise(fn, forward=True, row_elements=scores_per_row)
