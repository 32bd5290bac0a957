"""Hydra layer: official init, a float64 numpy rebuild of the official forward, options,
config errors, bf16. (Paths, padding, segments: tests/test_contract.py.)"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ssm_reference import (
    assert_bf16_compute_is_finite,
    f64,
    same_conv,
    silu,
    softplus,
    ssd_reference,
)

import seqzoo
from seqzoo.layers.hydra import Hydra

D_MODEL = 8


def official_forward(p, x, cfg):
    """hydra.modules.hydra.Hydra.forward (use_mem_eff_path=False) in float64 numpy: both
    directions stacked on the batch axis, roll by one, flip back, fc_D diagonal, then
    RMSNormGated(norm_before_gate=True)."""
    n, hd, g = cfg["d_state"], cfg["headdim"], cfg.get("ngroups", 1)
    e = cfg.get("expand", 2) * D_MODEL
    h = e // hd
    gn = g * n
    x = f64(x)
    batch, length = x.shape[:2]
    zxbcdt = x @ f64(p["in_proj"]["kernel"]) + f64(p["in_proj"].get("bias", 0.0))
    z, xbc, dt = np.split(zxbcdt, [e, 2 * e + 4 * gn], axis=-1)
    dt = np.concatenate([dt[..., :h], np.flip(dt[..., h:], 1)], axis=0)
    dt = softplus(dt + f64(p["dt_bias"]))
    xbc = silu(same_conv(xbc, f64(p["conv_kernel"]), f64(p["conv_bias"])))
    u, bc = np.split(xbc, [e], axis=-1)
    u2 = np.concatenate([u, np.flip(u, 1)], axis=0)
    bc = np.concatenate([bc[..., : 2 * gn], np.flip(bc[..., 2 * gn :], 1)], axis=0)
    B, C = np.split(bc, 2, axis=-1)
    A = -np.exp(f64(p["A_log"]))
    groups = (2 * batch, length, g, n)
    y = ssd_reference(
        u2.reshape(2 * batch, length, h, hd), dt, A, B.reshape(groups), C.reshape(groups)
    ).reshape(2 * batch, length, e)
    y = np.roll(y, 1, axis=1)
    y[:, 0] = 0.0
    diag = u @ f64(p["fc_D"]["kernel"]) + f64(p["D"])  # (b, L, h)
    y = y[:batch] + np.flip(y[batch:], 1) + u * np.repeat(diag, hd, axis=-1)
    y = y / np.sqrt((y * y).mean(-1, keepdims=True) + 1e-5) * f64(p["norm"]["scale"]) * silu(z)
    return y @ f64(p["out_proj"]["kernel"]) + f64(p["out_proj"].get("bias", 0.0))


def livelier(params):
    """A non-zero A and larger dt, so that both scans matter (A_log = 0 and dt small at init)."""
    p = params["params"]
    a_log = np.linspace(-0.5, 0.5, p["A_log"].shape[0])
    return {"params": {**p, "A_log": a_log, "dt_bias": p["dt_bias"] + 2.0}}


@functools.cache
def _run(items):
    """(mixer, params, x, y, cfg): init and forward compiled together per configuration."""
    cfg = {"d_state": 4, "headdim": 4, "chunk_size": 4, **dict(items)}
    mixer = Hydra(d_model=D_MODEL, **cfg)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, D_MODEL))

    def init_apply(key, x):
        params = mixer.init(key, x[:, :2])
        return params, mixer.apply(livelier(params), x)

    params, y = jax.jit(init_apply)(jax.random.PRNGKey(1), x)
    return mixer, params, x, y, cfg


def build(**kw):
    return _run(tuple(sorted(kw.items())))


def test_init_matches_official():
    _, params, _, _, _ = build(ngroups=2)
    p = params["params"]
    e, n, g, h = 16, 4, 2, 4
    shapes = {
        ("in_proj", "kernel"): (D_MODEL, 2 * e + 4 * g * n + 2 * h),
        ("conv_kernel",): (7, e + 4 * g * n),
        ("conv_bias",): (e + 4 * g * n,),
        ("dt_bias",): (h,),
        ("A_log",): (h,),
        ("D",): (h,),
        ("fc_D", "kernel"): (e, h),
        ("norm", "scale"): (e,),
        ("out_proj", "kernel"): (e, D_MODEL),
    }
    flat = dict(jax.tree_util.tree_flatten_with_path(p)[0])
    assert {tuple(k.key for k in path): v.shape for path, v in flat.items()} == shapes
    for a, fan_in in [
        (p["in_proj"]["kernel"], D_MODEL),
        (p["out_proj"]["kernel"], e),
        (p["fc_D"]["kernel"], e),
        (p["conv_kernel"], 7),
        (p["conv_bias"], 7),
    ]:
        bound = fan_in**-0.5
        assert 0.5 * bound < float(np.abs(f64(a)).max()) <= bound
    np.testing.assert_array_equal(p["A_log"], np.zeros(h))  # A = -1
    dt = softplus(f64(p["dt_bias"]))
    assert float(dt.min()) >= 1e-3 * (1 - 1e-4) and float(dt.max()) <= 0.1 * (1 + 1e-4)
    np.testing.assert_array_equal(p["D"], np.ones(h))
    np.testing.assert_array_equal(p["norm"]["scale"], np.ones(e))


@pytest.mark.parametrize(
    "kw",
    [
        {"ngroups": 2},
        {"expand": 1, "headdim": 2, "d_conv": 3, "chunk_size": 8, "bias": True},
    ],
)
def test_forward_matches_official_numpy(kw):
    _, params, x, y, cfg = build(**kw)
    ref = official_forward(livelier(params)["params"], x, cfg)
    np.testing.assert_allclose(f64(y), ref, atol=2e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"ngroups": 3}, "ngroups"),
        ({"headdim": 3}, "headdim"),
        ({"chunk_size": 12}, "chunk_size"),
        ({"d_conv": 4}, "d_conv"),
        ({"d_state": -1}, "d_state"),
        ({"impl": "fused"}, "impl"),
    ],
)
def test_bad_config_raises(kw, name):
    with pytest.raises(ValueError, match=name):
        build(**kw)


def test_registry_and_bf16_forward_backward():
    """bf16 compute (dtype=bfloat16: projections, conv and the scans' x, B, C in bf16; dt, the
    accumulation and the norms in f32)."""
    mixer = seqzoo.get_mixer(
        "hydra", d_model=D_MODEL, d_state=4, headdim=4, chunk_size=4, dtype=jnp.bfloat16
    )
    info = seqzoo.mixer_info("hydra")
    assert not info.causal and info.segments and info.structure == "quasiseparable"
    assert_bf16_compute_is_finite(mixer, D_MODEL)
