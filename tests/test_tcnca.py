"""TCNCA (seqzoo.layers.tcnca) against a per-position float64 numpy reference of its equations,
and Mega's relative-position bias layout against a rebuild of the official
``SimpleRelativePositionalBias.forward``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqzoo

D_MODEL, LENGTH = 4, 13
CONFIG = {
    "zdim": 3,
    "hdim": 5,
    "chunk_size": 4,
    "tcn_depth": 2,
    "tcn_kernel_size": 3,
    "tcn_dilation": 2,
    "init_std": 0.4,
}


def setup_layer(seed=0, length=LENGTH, **options):
    mixer = seqzoo.get_mixer("tcnca", d_model=D_MODEL, **{**CONFIG, **options})
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, length, D_MODEL))
    params = jax.jit(mixer.init)(jax.random.PRNGKey(seed + 1), x)  # eagerly: the forward op by op
    return mixer, params, x


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def silu(a):
    return a * sigmoid(a)


def gelu(a):
    return 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))


def reference(params, x, mask, cfg):
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    x, mask = np.asarray(x, np.float64), np.asarray(mask)
    x = np.where(mask[..., None], x, 0.0)
    batch, length, d = x.shape
    z_dim, h_dim, c = cfg["zdim"], cfg["hdim"], cfg["chunk_size"]
    size, base = cfg["tcn_kernel_size"], cfg["tcn_dilation"]

    def lin(name, a):
        return a @ p[name]["kernel"] + p[name]["bias"]

    out = np.zeros(x.shape)
    for b in range(batch):
        # TCN: h <- h + gelu(conv_i(h)), zero at pads, one position at a time
        h = x[b]
        for i in range(cfg["tcn_depth"]):
            w, bias, f = p[f"conv_{i}_kernel"], p[f"conv_{i}_bias"], base**i
            new = np.zeros(h.shape)
            for t in range(length):
                conv = bias.copy()
                for k in range(size):
                    s = t - (size - 1 - k) * f
                    if s >= 0:
                        conv = conv + (w[k] * h[s] if w.ndim == 2 else h[s] @ w[k])
                new[t] = (h[t] + gelu(conv)) * mask[b, t]
            h = new
        gates = lin("mx_proj", h)
        u = sigmoid(gates[:, :d])
        zr = silu(gates[:, d : d + z_dim + h_dim])
        hx = gates[:, d + z_dim + h_dim :]
        z, r = zr[:, :z_dim], zr[:, z_dim:]
        q = z * p["gamma"][0] + p["beta"][0]
        k = z * p["gamma"][1] + p["beta"][1]
        v = silu(lin("v_proj", x[b]))
        start = int(np.argmax(mask[b]))  # chunks start at the first valid token
        for i in range(length):
            if not mask[b, i]:
                continue
            chunk = (i - start) // c
            keys = [j for j in range(i + 1) if mask[b, j] and (j - start) // c == chunk]
            s = np.array(
                [q[i] @ k[j] / np.sqrt(z_dim) + p["rel_pos_bias"][c - 1 + j - i] for j in keys]
            )
            a = np.exp(s - s.max())
            a /= a.sum()
            att = sum(aj * v[j] for aj, j in zip(a, keys, strict=True))
            big_h = silu(hx[i] + lin("h_proj", att * r[i]))
            out[b, i] = u[i] * (big_h - x[b, i])
    return out


def holes_mask(length):
    """Row 0: holes at 1 and 6; row 1: 3 left pads (chunks from position 3) and 3 right pads."""
    mask = np.ones((2, length), bool)
    mask[0, [1, 6]] = False
    mask[1, :3] = False
    mask[1, -3:] = False
    return jnp.asarray(mask)


@pytest.mark.parametrize("depthwise", [True, False])
def test_matches_reference(depthwise):
    mixer, params, x = setup_layer(tcn_depthwise=depthwise)
    mask = holes_mask(LENGTH)
    want = reference(params, x, mask, CONFIG)
    methods = ("__call__", "dense") if depthwise else ("__call__",)
    for method in methods:
        got = jax.jit(mixer.apply, static_argnames="method")(params, x, mask, method=method)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5, err_msg=method)
    if not depthwise:  # the step path with full convolutions, once
        step = jax.jit(lambda s, x_t, m_t: mixer.apply(params, s, x_t, m_t, method="step"))
        state = mixer.apply(params, 2, method="init_state")
        ys = []
        for t in range(LENGTH):
            state, y = step(state, x[:, t], mask[:, t])
            ys.append(y)
        np.testing.assert_allclose(np.stack(ys, 1), want, atol=2e-5, rtol=1e-5)


def test_relative_bias_layout_is_megas():
    """``SimpleRelativePositionalBias(max_positions=C).forward(n)`` builds its (n, n) bias by a
    pad / tile / reshape trick; it equals ``r[C - 1 + j - i]``, the layout the op uses."""
    c = 5
    r = np.arange(2 * c - 1, dtype=np.float64) * 10 + 1
    for n in (c, 3):
        b = r[c - n : c + n - 1]
        t = np.tile(np.pad(b, (0, n)), n)[:-n].reshape(n, 3 * n - 2)
        rr = (2 * n - 1) // 2
        official = t[:, rr : t.shape[1] - rr]
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        np.testing.assert_array_equal(official, r[c - 1 + j - i])


def test_matrix_is_block_diagonal_causal():
    """Chunks of 4 from each row's first valid token (0 in row 0, 3 in row 1)."""
    mixer, params, x = setup_layer()
    m = np.asarray(mixer.apply(params, x, holes_mask(LENGTH), method="matrix"))[:, 0]
    for row, start in enumerate([0, 3]):
        pos = np.arange(LENGTH) - start
        outside = (pos[:, None] // 4 != pos[None, :] // 4) | (pos[None, :] > pos[:, None])
        assert np.all(m[row][outside] == 0)
    valid_rows = np.asarray(holes_mask(LENGTH))
    np.testing.assert_allclose(m.sum(-1)[valid_rows], 1.0, rtol=1e-6)


def test_left_padding_equals_shorter_sequence_in_every_path():
    """Leading pads (any values) are invisible: chunks start at the first valid token, in the
    parallel paths and in ``step`` (which keeps its state until that token)."""
    mixer, params, x = setup_layer(length=9)
    pads = 10 * jax.random.normal(jax.random.PRNGKey(9), (2, 3, D_MODEL))
    padded = jnp.concatenate([pads, x], axis=1)
    mask = jnp.ones((2, 12), bool).at[:, :3].set(False)
    want = np.asarray(mixer.apply(params, x))
    for method in ("__call__", "dense"):
        got = jax.jit(mixer.apply, static_argnames="method")(params, padded, mask, method=method)
        np.testing.assert_allclose(np.asarray(got)[:, 3:], want, atol=1e-6, err_msg=method)
    # one compile for the 12 steps (eager, each step dispatched its ops one by one: ~10 s)
    step = jax.jit(lambda s, x_t, m_t: mixer.apply(params, s, x_t, m_t, method="step"))
    state = mixer.apply(params, 2, method="init_state")
    ys = []
    for t in range(12):
        state, y = step(state, padded[:, t], mask[:, t])
        ys.append(y)
    np.testing.assert_allclose(np.stack(ys, 1)[:, 3:], want, atol=1e-6, err_msg="step")


def test_bad_config():
    for bad, match in [
        ({"chunk_size": 0}, "chunk_size"),
        ({"tcn_dilation": 0}, "tcn_dilation"),
        ({"hdim": -1}, "hdim"),
    ]:
        with pytest.raises(ValueError, match=match):
            setup_layer(**bad)
