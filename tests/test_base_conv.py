"""Based's BaseConv: a float64 rebuild of the official forward and its init. (Paths, padding,
segments, bf16: test_contract.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ssm_reference import causal_conv, f64, silu

import seqzoo

D_MODEL = 8


def test_matches_official_forward_and_init():
    mixer = seqzoo.get_mixer("base_conv", d_model=D_MODEL)  # expand_proj 4: E = 16
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, D_MODEL))
    params = jax.jit(mixer.init)(jax.random.PRNGKey(1), x)
    p = params["params"]
    y = jax.jit(mixer.apply)(params, x)
    u = f64(x) @ f64(p["in_proj"]["kernel"]) + f64(p["in_proj"]["bias"])
    u1, u2 = u[..., :16], u[..., 16:]
    want = (silu(causal_conv(u1, f64(p["conv_kernel"]), 0.0)) * u2) @ f64(
        p["out_proj"]["kernel"]) + f64(p["out_proj"]["bias"])
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-5, atol=1e-6)
    assert p["in_proj"]["kernel"].shape == (D_MODEL, 32) and p["conv_kernel"].shape == (3, 16)
    for a, fan_in in [(p["in_proj"]["kernel"], D_MODEL), (p["out_proj"]["bias"], 16),
                      (p["conv_kernel"], 3)]:
        assert 0.5 * fan_in**-0.5 < float(jnp.abs(a).max()) <= fan_in**-0.5


def test_matrix_is_the_conv_band():
    mixer = seqzoo.get_mixer("base_conv", d_model=D_MODEL, expand_proj=2)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 6, D_MODEL))
    params = mixer.init(jax.random.PRNGKey(3), x)
    m = np.asarray(mixer.apply(params, x, method="matrix"))[0]  # (E, L, L)
    w = np.asarray(params["params"]["conv_kernel"])  # (3, E), w[2] on the current token
    for lag in range(6):
        diag = np.stack([np.diagonal(m[c], -lag) for c in range(m.shape[0])])
        want = w[2 - lag][:, None] if lag < 3 else 0.0
        np.testing.assert_allclose(diag, np.broadcast_to(want, diag.shape), rtol=1e-6)
    assert np.all(np.triu(m, 1) == 0)
