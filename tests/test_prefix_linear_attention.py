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
