"""Toeplitz matrices, ``M[i, j] = c[i - j]``: the matrices of convolutions along the sequence.

One builder, ``toeplitz_matrix``, from the kernel over every offset ``-(L - 1) .. L - 1``; the
causal and anti-causal matrices of the long convolutions (``causal_conv``, the backward half of
``bidirectional_conv``) are it with the other side's offsets zero. ``toeplitz_matvec`` is the
product by FFT without the matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def toeplitz_matrix(kernel: Array) -> Array:
    """``M[i, j] = c[i - j]`` from ``kernel: (..., 2L - 1)`` holding ``c[d]`` at ``L - 1 + d``.

    Returns ``(..., L, L)``.
    """
    length = (kernel.shape[-1] + 1) // 2
    offsets = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    return kernel[..., length - 1 + offsets]


def toeplitz_matvec(kernel: Array, values: Array) -> Array:
    """``y_i = sum_j c[i - j] v_j`` (non-causal Toeplitz product) by FFT, O(L log L).

    The linear convolution ``(kernel * v)[m]`` has support ``[0, 3L - 3]`` and ``y_i`` is its entry
    ``L - 1 + i``; a circular convolution of any length ``n >= 2L - 1`` leaves those entries
    unaliased, so ``n`` is the next power of two.

    Args:
      kernel: ``(batch | 1, heads, 2L - 1)``, ``c[d]`` at index ``L - 1 + d``.
      values: ``v: (batch, length, heads, p)``.
    Returns:
      ``(batch, length, heads, p)`` float32.
    """
    length = values.shape[1]
    n = 1 << (2 * length - 2).bit_length()
    kernel_f = jnp.fft.rfft(kernel.astype(jnp.float32), n=n, axis=-1)  # (b, h, f)
    values_f = jnp.fft.rfft(values.astype(jnp.float32), n=n, axis=1)  # (b, f, h, p)
    y = jnp.fft.irfft(jnp.swapaxes(kernel_f, 1, 2)[..., None] * values_f, n=n, axis=1)
    return y[:, length - 1 : 2 * length - 1]


def causal_toeplitz(k: Array, length: int) -> Array:
    """T[..., i, j] = k[..., i - j] for j <= i, else 0. k: (..., >= length) -> (..., L, L)."""
    zeros = jnp.zeros(k.shape[:-1] + (length - 1,), k.dtype)
    return toeplitz_matrix(jnp.concatenate([zeros, k[..., :length]], axis=-1))


def anticausal_toeplitz(k: Array, length: int) -> Array:
    """T[..., i, j] = k[..., j - i - 1] for j > i, else 0 (the backward kernel of
    ``bidirectional_conv``: k_0 weights the next position). k: (..., >= length - 1)."""
    zeros = jnp.zeros(k.shape[:-1] + (length,), k.dtype)
    return toeplitz_matrix(jnp.concatenate([jnp.flip(k[..., : length - 1], -1), zeros], axis=-1))
