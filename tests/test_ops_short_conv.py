"""Short depthwise convolutions: causal (Mamba), centered (Hydra), decoding step, segments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.conv import (
    causal_depthwise_conv,
    centered_depthwise_conv,
    conv_init_buffer,
    conv_step,
    depthwise_conv,
)


def torch_conv1d(x, w, b, padding):
    """numpy float64 ``Conv1d(groups=C, padding=padding)`` (cross-correlation), cut to L.

    x: (b, L, C); w: (K, C) = torch weight[:, 0, :].T; b: (C,)."""
    x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
    size, length = w.shape[0], x.shape[1]
    xp = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
    out = np.stack([(xp[:, t : t + size] * w).sum(1) for t in range(xp.shape[1] - size + 1)], 1)
    return out[:, :length] + b


def data(length=9, channels=3, size=4, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k[0], (2, length, channels))
    w = jax.random.normal(k[1], (size, channels))
    b = jax.random.normal(k[2], (channels,))
    return x, w, b


@pytest.mark.parametrize("size", [1, 2, 4])
def test_causal_matches_torch_conv1d(size):
    x, w, b = data(size=size)
    y = causal_depthwise_conv(x, w, b)
    np.testing.assert_allclose(y, torch_conv1d(x, w, b, size - 1), atol=1e-5)
    # no bias; a sequence shorter than the kernel
    y = causal_depthwise_conv(x[:, :2], w)
    np.testing.assert_allclose(y, torch_conv1d(x[:, :2], w, np.zeros(3), size - 1), atol=1e-5)


def test_centered_matches_torch_conv1d_same():
    x, w, b = data(size=7)
    y = centered_depthwise_conv(x, w, b)
    np.testing.assert_allclose(y, torch_conv1d(x, w, b, 3), atol=1e-5)


def test_step_equals_parallel():
    x, w, b = data(length=6, size=4)
    buf = conv_init_buffer(2, 3, 4)
    assert buf.shape == (2, 3, 3)

    def body(buf, x_t):
        return conv_step(buf, x_t, w, b)

    buf, ys = jax.lax.scan(body, buf, jnp.moveaxis(x, 1, 0))
    np.testing.assert_allclose(jnp.moveaxis(ys, 0, 1), causal_depthwise_conv(x, w, b), atol=1e-6)
    np.testing.assert_allclose(buf, jnp.swapaxes(x[:, -3:], 1, 2))  # the last K - 1 inputs
    # kernel size 1: an empty buffer
    _, y = conv_step(conv_init_buffer(2, 3, 1), x[:, 0], w[:1], b)
    np.testing.assert_allclose(y, x[:, 0] * w[0] + b, atol=1e-6)


@pytest.mark.parametrize("left", [3, 2, 0])
def test_segments_convolve_each_segment_alone(left):
    x, w, b = data(length=9, size=4)
    seg = jnp.array([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 7]])
    y = depthwise_conv(x, w, b, left=left, segment_ids=seg)
    for r in range(2):
        for s in np.unique(seg[r]):
            idx = np.nonzero(np.asarray(seg[r]) == s)[0]
            alone = depthwise_conv(x[r : r + 1, idx], w, b, left=left)
            np.testing.assert_allclose(y[r, idx], alone[0], atol=1e-6)


def test_dtype_and_errors():
    x, w, b = data()
    y = causal_depthwise_conv(x.astype(jnp.bfloat16), w, b)
    assert y.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="x must"):
        causal_depthwise_conv(x[0], w, b)
    with pytest.raises(ValueError, match="w must"):
        causal_depthwise_conv(x, w[:, :2], b)
    with pytest.raises(ValueError, match="b must"):
        causal_depthwise_conv(x, w, b[:2])
    with pytest.raises(ValueError, match="segment_ids"):
        causal_depthwise_conv(x, w, b, segment_ids=jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="odd"):
        centered_depthwise_conv(x, w, b)
    with pytest.raises(ValueError, match="left"):
        depthwise_conv(x, w, b, left=4)
    with pytest.raises(ValueError, match="buffer"):
        conv_step(jnp.zeros((2, 3, 4)), x[:, 0], w, b)
