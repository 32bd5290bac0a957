"""seqzoo.ops.linear_attention: every form against a per-step numpy loop of the recurrence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.feature_maps import feature_map, feature_size
from seqzoo.ops.linear_attention import linear_attention, linear_attention_step

IMPLS = ["chunked", "parallel", "sequential"]
DECAYS = [None, "head", "key"]


def reference(q, k, v, g, scale, s0, segment_ids=None):
    """S_t = exp(g_t) * S_{t-1} + k_t v_t^T; o_t = scale * q_t S_t, one position at a time;
    S is reset to zero where segment_ids changes."""
    q, k, v, s = (np.asarray(a, np.float64) for a in (q, k, v, s0))
    b, t, h, dk = q.shape
    out = np.zeros((b, t, h, v.shape[-1]))
    for i in range(t):
        if segment_ids is not None and i > 0:
            restart = np.asarray(segment_ids[:, i] != segment_ids[:, i - 1])
            s = np.where(restart[:, None, None, None], 0.0, s)
        if g is not None:
            gi = np.asarray(g[:, i], np.float64)
            decay = np.exp(gi)[..., None] if gi.ndim == 3 else np.exp(gi)[..., None, None]
            s = decay * s
        s = s + k[:, i, :, :, None] * v[:, i, :, None, :]
        out[:, i] = scale * np.einsum("bhk,bhkv->bhv", q[:, i], s)
    return out, s


def make(b, t, h, dk, dv, decay, seed=0, strong=False):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(ks[0], (b, t, h, dk))
    k = jax.random.normal(ks[1], (b, t, h, dk))
    v = jax.random.normal(ks[2], (b, t, h, dv))
    s0 = jax.random.normal(ks[3], (b, h, dk, dv))
    g = None
    if decay is not None:
        shape = (b, t, h) if decay == "head" else (b, t, h, dk)
        g = -jax.nn.softplus(jax.random.normal(ks[4], shape)) * (30.0 if strong else 1.0)
    return q, k, v, g, s0


@pytest.mark.parametrize("decay", DECAYS, ids=lambda d: f"decay-{d}")
@pytest.mark.parametrize("t", [1, 7, 130], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_reference(impl, t, decay):
    q, k, v, g, s0 = make(2, t, 3, 4, 5, decay)
    o, s = linear_attention(
        q, k, v, log_decay=g, initial_state=s0, return_final_state=True, chunk_size=16, impl=impl
    )
    o_ref, s_ref = reference(q, k, v, g, 4**-0.5, s0)
    np.testing.assert_allclose(np.asarray(o), o_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decay", DECAYS, ids=lambda d: f"decay-{d}")
@pytest.mark.parametrize("impl", ["chunked", "parallel"])
def test_gradients_match_recurrent(impl, decay):
    """Gradients of every input (initial state and decays included) against the scan form."""
    q, k, v, g, s0 = make(1, 21, 2, 4, 3, decay, seed=1)
    cot = jax.random.normal(jax.random.PRNGKey(9), (1, 21, 2, 3))
    cot_s = jax.random.normal(jax.random.PRNGKey(10), (1, 2, 4, 3))

    def loss(form, q, k, v, g, s0):
        o, s = linear_attention(
            q,
            k,
            v,
            log_decay=g,
            initial_state=s0,
            return_final_state=True,
            chunk_size=8,
            impl=form,
        )
        return jnp.sum(o * cot) + jnp.sum(s * cot_s)

    argnums = (1, 2, 3, 5) if g is None else (1, 2, 3, 4, 5)  # every array input
    got = jax.grad(loss, argnums=argnums)(impl, q, k, v, g, s0)
    want = jax.grad(loss, argnums=argnums)("sequential", q, k, v, g, s0)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_strong_decay_is_exact_not_overflowing(impl):
    """Decays down to exp(-60) per step: no inf/NaN, still equal to the reference."""
    q, k, v, g, s0 = make(1, 50, 2, 4, 3, "key", seed=2, strong=True)
    o = linear_attention(q, k, v, log_decay=g, initial_state=s0, chunk_size=16, impl=impl)
    assert np.all(np.isfinite(np.asarray(o)))
    np.testing.assert_allclose(
        np.asarray(o), reference(q, k, v, g, 0.5, s0)[0], rtol=1e-4, atol=1e-4
    )


def test_step_matches_sequence():
    q, k, v, g, s0 = make(2, 6, 2, 4, 3, "head", seed=3)
    s, outs = s0, []
    for i in range(6):
        s, o = linear_attention_step(s, q[:, i], k[:, i], v[:, i], g[:, i])
        outs.append(o)
    o_seq, s_seq = linear_attention(
        q, k, v, log_decay=g, initial_state=s0, return_final_state=True, chunk_size=4
    )
    np.testing.assert_allclose(np.stack(outs, 1), np.asarray(o_seq), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_seq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_inputs(impl):
    q, k, v, g, _ = make(2, 40, 2, 8, 8, "key", seed=4)
    o32 = linear_attention(q, k, v, log_decay=g, chunk_size=16, impl=impl)
    o16 = linear_attention(
        *(a.astype(jnp.bfloat16) for a in (q, k, v)), log_decay=g, chunk_size=16, impl=impl
    )
    assert o16.dtype == jnp.bfloat16
    scale = float(jnp.abs(o32).max())
    assert float(jnp.abs(o16.astype(jnp.float32) - o32).max()) < 3e-2 * scale


def test_bad_input():
    q, k, v, g, s0 = make(1, 5, 2, 4, 3, "head")
    with pytest.raises(ValueError, match="rank"):
        linear_attention(q[0], k, v)
    with pytest.raises(ValueError, match="same shape"):
        linear_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="log_decay"):
        linear_attention(q, k, v, log_decay=g[..., :1])
    with pytest.raises(ValueError, match="initial_state"):
        linear_attention(q, k, v, initial_state=s0[..., :2])
    with pytest.raises(ValueError, match="impl"):
        linear_attention(q, k, v, impl="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, chunk_size=0)


@pytest.mark.parametrize("name", ["identity", "elu", "relu", "taylor"])
def test_feature_maps(name):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    y = feature_map(name, x)
    assert y.shape == (3, feature_size(name, 4))
    if name in ("elu", "relu"):
        assert bool(jnp.all(y >= 0))
    if name == "taylor":  # phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2 / (2d)
        dot = jnp.sum(x[0] * x[1])
        want = 1 + dot / 2 + dot**2 / 8
        np.testing.assert_allclose(float(jnp.dot(y[0], y[1])), float(want), rtol=1e-5)
    # bf16 in, bf16 out (what a bf16 layer hands its op), computed in f32 then rounded once
    x16 = x.astype(jnp.bfloat16)
    y16, pull = jax.vjp(lambda a: feature_map(name, a), x16)
    assert y16.dtype == pull(y16)[0].dtype == jnp.bfloat16
    want16 = feature_map(name, x16.astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y16, np.float32), np.asarray(want16, np.float32))
    with pytest.raises(ValueError, match="feature_map"):
        feature_map("softmax", x)


@pytest.mark.parametrize("decay", DECAYS, ids=lambda d: f"decay-{d}")
@pytest.mark.parametrize("impl", IMPLS)
def test_segment_ids_reset_the_state(impl, decay):
    """Packed sequences: segments start mid-chunk, on a chunk boundary, and an id comes back."""
    q, k, v, g, s0 = make(2, 37, 2, 4, 3, decay, seed=5)
    seg = np.zeros((2, 37), np.int32)
    seg[0, 5:16], seg[0, 16:30], seg[0, 30:] = 1, 2, 0
    seg[1, 8:] = 7
    seg = jnp.asarray(seg)
    o, s = linear_attention(
        q,
        k,
        v,
        log_decay=g,
        initial_state=s0,
        return_final_state=True,
        chunk_size=8,
        segment_ids=seg,
        impl=impl,
    )
    o_ref, s_ref = reference(q, k, v, g, 4**-0.5, s0, segment_ids=seg)
    np.testing.assert_allclose(np.asarray(o), o_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-4, atol=1e-4)
