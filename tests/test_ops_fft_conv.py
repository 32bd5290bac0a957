"""FFT convolutions against the direct O(L^2) sums, forwards and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.conv import (
    anticausal_toeplitz,
    bidirectional_conv,
    causal_conv,
    causal_toeplitz,
    fft_causal_conv,
)

causal_jit = jax.jit(causal_conv)
bidirectional_jit = jax.jit(bidirectional_conv)


def tap(k, m):
    """k_m along the last axis, zero outside 0 <= m < k_len."""
    return k[..., m] if 0 <= m < k.shape[-1] else np.zeros(k.shape[:-1])


def direct_causal(u, k, d=None):
    """y[b, t, ..., h] = sum_{j <= t} k[..., h, t-j] u[b, j, h] + D u[b, t, h], by loops."""
    batch, length, _ = u.shape
    y = np.zeros((batch, length, *k.shape[:-1]))
    for t in range(length):
        for j in range(t + 1):
            y[:, t] += tap(k, t - j) * u[:, j].reshape(batch, *(1,) * (k.ndim - 2), -1)
    return y if d is None else y + d * u.reshape(batch, length, *(1,) * (k.ndim - 2), -1)


def direct_backward(u, k):
    """sum_{j > t} k[..., h, j-t-1] u[b, j, h], by loops."""
    batch, length, _ = u.shape
    y = np.zeros((batch, length, *k.shape[:-1]))
    for t in range(length):
        for j in range(t + 1, length):
            y[:, t] += tap(k, j - t - 1) * u[:, j].reshape(batch, *(1,) * (k.ndim - 2), -1)
    return y


def toeplitz_causal(u, k):
    """The same sum as a dense lower-triangular Toeplitz matrix in jnp (for gradients)."""
    length = u.shape[1]
    k = jnp.pad(k, [(0, 0)] * (k.ndim - 1) + [(0, max(0, length - k.shape[-1]))])
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    matrix = jnp.where(lag >= 0, k[..., jnp.clip(lag, 0, None)], 0.0)  # (..., h, t, j)
    return jnp.einsum("...htj,bjh->bt...h", matrix, u)


def random(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("length", [1, 7, 130])
@pytest.mark.parametrize(
    ("kernel_shape", "k_len_offset"),
    [((3,), 0), ((2, 3), 0), ((2, 3), -3), ((3,), 5)],
    ids=["h-full", "channels-h-full", "channels-h-short", "h-long"],
)
def test_causal_conv_matches_direct_sum(kernel_shape, k_len_offset, length):
    k_len = max(1, length + k_len_offset)
    u, k, d = random(0, 2, length, 3), random(1, *kernel_shape, k_len), random(2, *kernel_shape)
    y = causal_jit(u, k, d)
    assert y.shape == (2, length, *kernel_shape) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, direct_causal(u, k, d), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 7, 130])
@pytest.mark.parametrize("k_len_offset", [0, -2], ids=["full", "short"])
def test_bidirectional_conv_matches_direct_sum(k_len_offset, length):
    k_len = max(1, length + k_len_offset)
    u = random(3, 2, length, 3)
    k_fwd, k_bwd, d = random(4, 2, 3, k_len), random(5, 2, 3, k_len), random(6, 2, 3)
    y = bidirectional_jit(u, k_fwd, k_bwd, d)
    expected = direct_causal(u, k_fwd, d) + direct_backward(u, k_bwd)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_fft_causal_conv_broadcasts_leading_axes():
    u, k = random(7, 2, 1, 9), random(8, 4, 6)  # (batch, 1, L) against (order, K)
    y = jax.jit(fft_causal_conv)(u, k)
    expected = np.stack(
        [[[sum(k[o, t - j] * u[b, 0, j] for j in range(max(0, t - 5), t + 1)) for t in range(9)]
          for o in range(4)] for b in range(2)]
    )  # fmt: skip
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [7, 16])
def test_causal_conv_gradients_match_toeplitz_sum(length):
    u, k, d = random(9, 2, length, 3), random(10, 2, 3, length - 2), random(11, 2, 3)
    weights = random(12, 2, length, 2, 3)

    def loss(conv, u, k, d):
        return jnp.sum(weights * conv(u, k, d))

    def reference(u, k, d):
        return toeplitz_causal(u, k) + d * u[:, :, None, :]

    args = tuple(jnp.asarray(x, jnp.float32) for x in (u, k, d))
    grad_fn = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    grads, expected = grad_fn(causal_conv, *args), grad_fn(reference, *args)
    for name, g, e in zip("ukD", grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


def test_bidirectional_conv_gradients_match_toeplitz_sum():
    length = 9
    u, k_fwd, k_bwd = random(13, 2, length, 3), random(14, 3, length), random(15, 3, length)
    weights = random(16, 2, length, 3)

    def loss(conv, u, kf, kb):
        return jnp.sum(weights * conv(u, kf, kb))

    def reference(u, kf, kb):  # the backward sum is the causal one on the time-reversed input
        shifted = jnp.pad(kb, ((0, 0), (1, 0)))  # lag m = j - t carries kb[m - 1]
        backward = jnp.flip(toeplitz_causal(jnp.flip(u, 1), shifted), 1)
        return toeplitz_causal(u, kf) + backward

    args = tuple(jnp.asarray(x, jnp.float32) for x in (u, k_fwd, k_bwd))
    grad_fn = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    grads, expected = grad_fn(bidirectional_conv, *args), grad_fn(reference, *args)
    for name, g, e in zip(("u", "k_forward", "k_backward"), grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


def test_causal_conv_bfloat16_input_returns_bfloat16():
    u, k = random(17, 2, 33, 4), random(18, 4, 33)
    u16, k16 = jnp.asarray(u, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    y = causal_jit(u16, k16)
    assert y.dtype == jnp.bfloat16
    expected = direct_causal(np.asarray(u16, np.float64), np.asarray(k16, np.float64))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), expected, atol=2e-2 * np.abs(expected).max()
    )


_U, _K = np.zeros((2, 5, 3)), np.zeros((3, 5))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: causal_conv(_U[0], _K), "u"),
        (lambda: causal_conv(_U, _K[:2]), "k"),
        (lambda: causal_conv(_U, _K, np.zeros(2)), "D"),
        (lambda: bidirectional_conv(_U, _K[None], _K), "k_backward"),
        (lambda: bidirectional_conv(_U, _K[:, :0], _K[:, :0]), "k_forward"),
    ],
    ids=["u-2d", "k-wrong-h", "D-wrong-shape", "k-backward-mismatch", "k-forward-empty"],
)
def test_bad_arguments_raise_value_error_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


@pytest.mark.parametrize("length", [1, 2, 7])
def test_causal_and_anticausal_toeplitz_are_the_conv_matrices(length):
    """The one Toeplitz builder: the matrices of ``causal_conv`` and of ``bidirectional_conv``'s
    backward half, entry by entry and applied to a signal."""
    k = random(3, 2, 3, length + 1).astype(np.float32)  # (channels, h, taps), more than needed
    t_causal = np.asarray(causal_toeplitz(jnp.asarray(k), length))
    t_back = np.asarray(anticausal_toeplitz(jnp.asarray(k), length))
    for i in range(length):
        for j in range(length):
            assert (t_causal[..., i, j] == (k[..., i - j] if j <= i else 0.0)).all()
            assert (t_back[..., i, j] == (k[..., j - i - 1] if j > i else 0.0)).all()
    u = random(4, 2, length, 3)
    np.testing.assert_allclose(np.einsum("chtj,bjh->btch", t_causal, u), direct_causal(u, k),
                               atol=1e-5)
    np.testing.assert_allclose(np.einsum("chtj,bjh->btch", t_back, u), direct_backward(u, k),
                               atol=1e-5)
