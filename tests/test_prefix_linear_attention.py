"""JRT-RNN's prefix linear attention: a float64 rebuild of the official ``parallel_forward``
and where it is causal. (Paths, padding, bf16: test_contract.py.)"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ssm_reference import f64

import seqzoo

D_MODEL, H, F, P = 8, 2, 3, 4


def taylor(x):
    d = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (d * d,))
    return np.concatenate([np.ones(x.shape[:-1] + (1,)), x / d**0.25, outer / np.sqrt(2 * d)], -1)


def official_forward(p, x, mask, prefix, eps=1e-6):
    """The official layer's default ``parallel_forward`` in float64: causal Based plus the
    prefix's non-causal state, one shared normaliser."""
    x = f64(x)
    b, length, _ = x.shape

    def proj(name, width):
        return (x @ f64(p[name]["kernel"])).reshape(b, length, H, width)

    dv = D_MODEL // H
    q, k, k_enc = (taylor(proj(n, F)) for n in ("q_proj", "k_proj", "k_enc_proj"))
    v, v_enc = proj("v_proj", dv), proj("v_enc_proj", dv)
    in_prefix = mask & (np.arange(length) < prefix)
    k, k_enc = k * mask[..., None, None], k_enc * in_prefix[..., None, None]
    v, v_enc = v * mask[..., None, None], v_enc * in_prefix[..., None, None]
    a_dec = np.tril(np.einsum("bihf,bjhf->bhij", q, k))
    a_enc = np.einsum("bihf,bjhf->bhij", q, k_enc)
    numerator = np.einsum("bhij,bjhd->bihd", a_dec, v) + np.einsum("bhij,bjhd->bihd", a_enc, v_enc)
    z = (a_dec.sum(-1) + a_enc.sum(-1)).transpose(0, 2, 1)[..., None] * F**-0.5 + eps
    y = (numerator * F**-0.5 / z).reshape(b, length, H * dv) @ f64(p["o_proj"]["kernel"])
    return y * mask[..., None]


@functools.cache
def build(prefix=P):
    mixer = seqzoo.get_mixer("prefix_linear_attention", d_model=D_MODEL, num_heads=H, key_dim=F,
                             chunk_size=4, prefix_length=prefix)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, D_MODEL))
    params = jax.jit(mixer.init)(jax.random.PRNGKey(1), x)
    return mixer, params, x, jax.jit(mixer.apply)


@pytest.mark.parametrize("prefix", [P, 64])
def test_matches_official_forward(prefix):
    mixer, params, x, apply = build(prefix)
    mask = np.ones(x.shape[:2], bool)
    mask[1, 8:] = False
    mask[0, 2] = False
    want = official_forward(params["params"], x, mask, prefix)
    np.testing.assert_allclose(np.asarray(apply(params, x, jnp.asarray(mask)), np.float64), want,
                               rtol=1e-4, atol=1e-6)
    dense = mixer.apply(params, x, jnp.asarray(mask), method="dense")
    np.testing.assert_allclose(np.asarray(dense, np.float64), want, rtol=1e-4, atol=1e-6)


def test_prefix_is_read_whole_and_the_rest_causally():
    """A change inside the prefix reaches every position (earlier ones too); a change at
    ``t >= P`` reaches only positions ``>= t``."""
    _, params, x, apply = build()
    y = apply(params, x)
    for t in (1, P + 2):
        moved = np.abs(np.asarray(apply(params, x.at[:, t].add(1.0)) - y)).max(-1) > 1e-6
        if t < P:
            assert moved.all()
        else:
            assert not moved[:, :t].any() and moved[:, t:].all()


def test_errors():
    with pytest.raises(ValueError, match="prefix_length"):
        seqzoo.get_mixer("prefix_linear_attention", d_model=D_MODEL, prefix_length=0).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 3, D_MODEL)))
    with pytest.raises(ValueError, match="no decay"):
        seqzoo.get_mixer("prefix_linear_attention", d_model=D_MODEL, decay="retnet").init(
            jax.random.PRNGKey(0), jnp.zeros((1, 3, D_MODEL)))


def official_equations(p, x, prefix, eps=1e-12):
    """The official layer's ``parallel_forward`` (implementation "default", no mask) term by
    term, in the official constants (HazyResearch/prefix-linear-attention@7490f22,
    based/models/mixers/prefix_linear_attention.py): ``TaylorExp`` with ``scale_dim`` = the
    feature dim, no further scale on the scores, eps 1e-12; the encoder reads x[:, :P] through
    its own ``proj_k_enc`` / ``proj_v_enc``; one normaliser ``phi(q) . (sum k_enc + cumsum k)``
    for both sums; ``out_proj`` of their sum. In jnp, to be run in float64."""
    b, length, _ = x.shape
    enc = min(prefix, length)
    dv = D_MODEL // H

    def heads(a, width):  # (b, l, H*width) -> (b, H, l, width), the official layout
        return a.reshape(b, a.shape[1], H, width).transpose(0, 2, 1, 3)

    def fmap(a):
        f = a.shape[-1]
        a2 = (a[..., :, None] * a[..., None, :]).reshape(a.shape[:-1] + (f * f,)) / np.sqrt(2)
        return jnp.concatenate([jnp.ones_like(a[..., :1]), a / f**0.25, a2 / f**0.5], -1)

    q = fmap(heads(x @ p["q_proj"]["kernel"], F))
    k = fmap(heads(x @ p["k_proj"]["kernel"], F))
    v = heads(x @ p["v_proj"]["kernel"], dv)
    k_enc = fmap(heads(x[:, :enc] @ p["k_enc_proj"]["kernel"], F))
    v_enc = heads(x[:, :enc] @ p["v_enc_proj"]["kernel"], dv)
    y1 = jnp.einsum("bhnm,bhme->bhne", jnp.tril(jnp.einsum("bhnd,bhmd->bhnm", q, k)), v)
    y2 = jnp.einsum("bhnm,bhme->bhne", jnp.einsum("bhnd,bhmd->bhnm", q, k_enc), v_enc)
    k_state = k_enc.sum(2, keepdims=True) + jnp.cumsum(k, 2)
    z = 1 / ((q * k_state).sum(-1) + eps)
    out = (y1 * z[..., None] + y2 * z[..., None]).transpose(0, 2, 1, 3).reshape(b, length, -1)
    return out @ p["o_proj"]["kernel"]


@pytest.mark.parametrize("prefix", [1, P, 64])
def test_output_and_gradients_match_the_official_equations(prefix):
    """Output, and the gradient of x and of every parameter, against the official equations in
    float64 (its own constants: our ``dk^-0.5`` on the scores and eps 1e-6 cancel in the ratio
    up to ~1e-7). No padding here: the official mask zeroes k *before* the feature map, so a
    pad still writes ``phi(0) = e_0`` (a 1 in the normaliser, its v in the numerator); ours
    writes nothing (a documented difference, test_contract's padding tests)."""
    mixer, params, x, apply = build(prefix)
    g = jax.random.normal(jax.random.PRNGKey(2), x.shape)

    def ours(params, x):
        return jnp.sum(apply(params, x) * g)

    def dense_path(params, x):
        return jnp.sum(mixer.apply(params, x, method="dense") * g)

    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params["params"])
        x64, g64 = jnp.asarray(x, jnp.float64), jnp.asarray(g, jnp.float64)
        want_y = jax.jit(official_equations, static_argnums=2)(p64, x64, prefix)
        want = jax.jit(jax.grad(lambda p, x: jnp.sum(official_equations(p, x, prefix) * g64),
                                argnums=(0, 1)))(p64, x64)
        want_y, want = np.asarray(want_y), jax.tree.map(np.asarray, want)
    np.testing.assert_allclose(np.asarray(apply(params, x), np.float64), want_y,
                               rtol=1e-4, atol=1e-6)
    for loss in (ours, dense_path):
        got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)  # one program, not op by op
        got = (got[0]["params"], got[1])
        for (path, w), gw in zip(jax.tree_util.tree_leaves_with_path(want),
                                 jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(np.asarray(gw, np.float64), w, rtol=1e-4,
                                       atol=1e-5 * np.abs(w).max(), err_msg=str(path))
