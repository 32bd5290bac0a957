"""Structured mixing matrices of Hydra's matrix-mixer table (Hwang et al., 2024, Table 1).

Products ``y = M v`` and the explicit ``M`` for the structures of the Hydra matrix mixers (the
Toeplitz one, ``M[i, j] = c[i - j]`` by FFT, is ``seqzoo.ops.conv.toeplitz``'s):

* low rank        ``M[i, j] = sum_d q[i, d] k[j, d]``                      ``Q (K^T V)``, O(L r)
* Cauchy          ``M[i, j] = sum_d 1 / (q[i, d] + k[j, d] + tol)``        rows in blocks, O(L^2 r)
* Vandermonde     ``M[i, j] = sum_d cos(2 pi q[i, d] j) + s cos(2 pi k[j, d] i)``
                  (real parts of powers of the nodes ``exp(2 pi i q)``)    rows in blocks, O(L^2 r)
* cosine DFT      ``M[i, j] = cos(2 pi i j / n)``                          FFT, O(n log n)
* softmax rows    ``M[i, j] = softmax_j(scale q_i . k_j)`` over valid keys  rows in blocks, O(L^2 r)

Layouts: values ``v: (batch, length, heads, p)`` as in the mixer contract; per-position features
and kernels head-major ``(batch, heads, ...)``, where a leading 1 (a data-independent matrix)
broadcasts over the batch. Everything is computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.ops.checks import check_positive_int

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def low_rank_matrix(q: Array, k: Array) -> Array:
    """``M = Q K^T`` per head: q, k ``(batch | 1, heads, L, r)`` -> ``(batch | 1, heads, L, L)``."""
    return jnp.einsum("bhir,bhjr->bhij", q, k, precision=_HI)


def low_rank_matvec(q: Array, k: Array, values: Array) -> Array:
    """``y = Q (K^T V)`` per head in O(L r p): q, k ``(batch | 1, heads, L, r)``, values
    ``(batch, L, heads, p)`` -> ``(batch, L, heads, p)`` float32."""
    kv = jnp.einsum("bhjr,bjhp->bhrp", k, values.astype(jnp.float32), precision=_HI)
    return jnp.einsum("bhir,bhrp->bihp", q, kv, precision=_HI)


def cauchy_rows(q_rows: Array, k: Array, tol: float) -> Array:
    """Rows of ``M[i, j] = sum_d 1 / (q[i, d] + k[j, d] + tol)``.

    q_rows: ``(batch | 1, heads, B, r)`` (the rows wanted); k: ``(batch | 1, heads, L, r)``.
    Returns ``(batch | 1, heads, B, L)``.
    """
    return jnp.sum(1.0 / (q_rows[..., :, None, :] + k[..., None, :, :] + tol), axis=-1)


def vandermonde_rows(q_rows: Array, rows: Array, k: Array, sign: float) -> Array:
    """Rows ``i`` of ``M[i, j] = sum_d cos(2 pi q[i, d] j) + sign * cos(2 pi k[j, d] i)``.

    The first term is the real part of the Vandermonde matrix of the nodes
    ``exp(2 pi sqrt(-1) q[i, d])`` (row ``i`` holds their powers ``j``), the second the transpose
    of the one of the nodes ``exp(2 pi sqrt(-1) k[j, d])``. Evaluated as
    ``cos(2 a) = 1 - 2 sin(a)^2``, so that with ``sign = -1`` and small nodes, where both cosines
    are near 1, the difference keeps its relative accuracy in float32.

    q_rows: ``(batch | 1, heads, B, r)``; rows: ``(B,)`` their indices ``i``;
    k: ``(batch | 1, heads, L, r)``. Returns ``(batch | 1, heads, B, L)``.
    """
    cols = jnp.arange(k.shape[-2], dtype=jnp.float32)
    row_term = jnp.sin(jnp.pi * q_rows[..., :, None, :] * cols[:, None]) ** 2
    col_term = jnp.sin(jnp.pi * k[..., None, :, :] * rows.astype(jnp.float32)[:, None, None]) ** 2
    return (1 + sign) * k.shape[-1] - 2 * jnp.sum(row_term + sign * col_term, axis=-1)


def cosine_dft_matrix(length: int, n: int) -> Array:
    """``M[i, j] = cos(2 pi i j / n)`` for ``i, j < length``: the real part of the size-``n`` DFT.

    The phase is reduced modulo ``n`` in integers first, so large ``i j`` stay exact.
    """
    idx = jnp.arange(length)
    return jnp.cos(2 * jnp.pi * ((idx[:, None] * idx[None, :]) % n) / n)


def cosine_dft_matvec(values: Array, n: int) -> Array:
    """``y_i = sum_j cos(2 pi i j / n) v_j = Re(FFT_n(v))_i`` by FFT: values ``(batch, L, ...)``,
    ``L <= n`` -> float32 of the same shape."""
    length = values.shape[1]
    return jnp.fft.fft(values.astype(jnp.float32), n=n, axis=1).real[:, :length]


def masked_softmax_rows(q_rows: Array, k: Array, key_mask: Array, scale: float) -> Array:
    """Rows of ``M[i, j] = softmax_j(scale q_i . k_j)`` over the valid keys, 0 at the others.

    q_rows: ``(batch, heads, B, r)``; k: ``(batch, heads, L, r)``; key_mask: ``(batch, L)`` bool.
    A row with no valid key is 0. Returns ``(batch, heads, B, L)``.
    """
    keep = key_mask[:, None, None, :]
    scores = scale * jnp.einsum("bhir,bhjr->bhij", q_rows, k, precision=_HI)
    scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
    return jnp.where(keep, jax.nn.softmax(scores, axis=-1), 0.0)


def blocked_matvec(rows: Callable[[Array], Array], values: Array, block_size: int) -> Array:
    """``y = M v`` built ``block_size`` rows of ``M`` at a time, never the whole ``M``.

    Each block's rows are made, applied and dropped (and remade in the backward pass), so memory
    is O(block_size L) per head instead of O(L^2) and a data-independent ``M`` (batch 1) is built
    once for the whole batch. The rows of the last, partial block are clamped to ``L - 1`` and cut.

    Args:
      rows: ``rows(i: (B,) int) -> M[:, :, i, :]: (batch | 1, heads, B, L)``.
      values: ``v: (batch, L, heads, p)``.
      block_size: rows per block.
    Returns:
      ``(batch, L, heads, p)`` float32.
    """
    check_positive_int(block_size, "block_size")
    batch, length, heads, p = values.shape
    values = values.astype(jnp.float32)
    size = min(block_size, length)
    blocks = -(-length // size)
    idx = jnp.minimum(jnp.arange(blocks * size).reshape(blocks, size), length - 1)

    @jax.checkpoint
    def one_block(i):
        return jnp.einsum("bhij,bjhp->bihp", rows(i), values, precision=_HI)

    y = jax.lax.map(one_block, idx)  # (blocks, batch, B, heads, p)
    y = jnp.moveaxis(y, 0, 1).reshape(batch, blocks * size, heads, p)
    return y[:, :length]
