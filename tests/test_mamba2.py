"""Mamba-2 layer: official init, a float64 numpy rebuild of the official forward, options
(ngroups, norm variants), config errors, bf16. (Paths, padding, segments: test_contract.py.)"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ssm_reference import (
    assert_bf16_compute_is_finite,
    causal_conv,
    f64,
    silu,
    softplus,
    ssd_reference,
)

import seqzoo
from seqzoo.layers.mamba2 import Mamba2

D_MODEL = 8


def rms_norm_gated(x, z, w, group_size, norm_before_gate, eps=1e-5):
    """mamba_ssm.ops.triton.layernorm_gated.rms_norm_ref (no bias)."""
    if not norm_before_gate:
        x = x * silu(z)
    g = x.reshape(x.shape[:-1] + (-1, group_size))
    out = (g / np.sqrt((g * g).mean(-1, keepdims=True) + eps)).reshape(x.shape) * w
    return out * silu(z) if norm_before_gate else out


def official_forward(p, x, cfg):
    """mamba2.Mamba2.forward (the non-fused path, ngroups and norm options) in float64."""
    n, hd, g = cfg["d_state"], cfg["headdim"], cfg.get("ngroups", 1)
    e = cfg.get("expand", 2) * D_MODEL
    h = e // hd
    x = f64(x)
    zxbcdt = x @ f64(p["in_proj"]["kernel"]) + f64(p["in_proj"].get("bias", 0.0))
    z, xbc, dt = np.split(zxbcdt, [e, 2 * e + 2 * g * n], axis=-1)
    xbc = silu(causal_conv(xbc, f64(p["conv_kernel"]), f64(p["conv_bias"])))
    u, B, C = np.split(xbc, [e, e + g * n], axis=-1)
    lead = x.shape[:2]
    u = u.reshape(lead + (h, hd))
    dt = softplus(dt + f64(p["dt_bias"]))
    A = -np.exp(f64(p["A_log"]))
    y = ssd_reference(u, dt, A, B.reshape(lead + (g, n)), C.reshape(lead + (g, n)))
    y = (y + f64(p["D"])[:, None] * u).reshape(lead + (e,))
    if cfg.get("rmsnorm", True):
        y = rms_norm_gated(
            y, z, f64(p["norm"]["scale"]), e // g, cfg.get("norm_before_gate", False)
        )
    else:
        y = y * silu(z)
    return y @ f64(p["out_proj"]["kernel"]) + f64(p["out_proj"].get("bias", 0.0))


@functools.cache
def _run(items):
    """(mixer, params, x, y, cfg): init and forward compiled together per configuration."""
    cfg = {"d_state": 4, "headdim": 4, "chunk_size": 4, **dict(items)}
    mixer = Mamba2(d_model=D_MODEL, **cfg)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, D_MODEL))

    def init_apply(key, x):
        params = mixer.init(key, x[:, :2])
        return params, mixer.apply(params, x)

    params, y = jax.jit(init_apply)(jax.random.PRNGKey(1), x)
    return mixer, params, x, y, cfg


def build(**kw):
    return _run(tuple(sorted(kw.items())))


def test_init_matches_official():
    _, params, _, _, _ = build(ngroups=2, bias=True)
    p = params["params"]
    e, n, g, h = 16, 4, 2, 4
    shapes = {
        ("in_proj", "kernel"): (D_MODEL, 2 * e + 2 * g * n + h),
        ("in_proj", "bias"): (2 * e + 2 * g * n + h,),
        ("conv_kernel",): (4, e + 2 * g * n),
        ("conv_bias",): (e + 2 * g * n,),
        ("dt_bias",): (h,),
        ("A_log",): (h,),
        ("D",): (h,),
        ("norm", "scale"): (e,),
        ("out_proj", "kernel"): (e, D_MODEL),
        ("out_proj", "bias"): (D_MODEL,),
    }
    flat = dict(jax.tree_util.tree_flatten_with_path(p)[0])
    assert {tuple(k.key for k in path): v.shape for path, v in flat.items()} == shapes
    for a, fan_in in [
        (p["in_proj"]["kernel"], D_MODEL),
        (p["out_proj"]["kernel"], e),
        (p["conv_kernel"], 4),
        (p["conv_bias"], 4),
    ]:
        bound = fan_in**-0.5
        assert 0.5 * bound < float(np.abs(f64(a)).max()) <= bound
    A = np.exp(np.asarray(p["A_log"]))
    assert A.min() >= 1 and A.max() <= 16 and np.unique(A).size == h
    dt = softplus(f64(p["dt_bias"]))
    assert float(dt.min()) >= 1e-3 * (1 - 1e-4) and float(dt.max()) <= 0.1 * (1 + 1e-4)
    np.testing.assert_array_equal(p["D"], np.ones(h))
    np.testing.assert_array_equal(p["norm"]["scale"], np.ones(e))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"ngroups": 2, "bias": True},
        {"ngroups": 4, "expand": 1, "headdim": 2, "norm_before_gate": True},
        {
            "rmsnorm": False,
            "d_conv": 2,
            "chunk_size": 8,
            "conv_init": 0.05,
            "A_init_range": (2.0, 2.0),
        },
    ],
)
def test_forward_matches_official_numpy(kw):
    mixer, params, x, y, cfg = build(**kw)
    p = params["params"]
    ref = official_forward(p, x, cfg)
    np.testing.assert_allclose(f64(y), ref, atol=2e-5 * max(1.0, np.abs(ref).max()))
    assert ("norm" in p) == kw.get("rmsnorm", True)
    if "conv_init" in kw:
        assert float(np.abs(f64(p["conv_kernel"])).max()) <= kw["conv_init"]
        np.testing.assert_allclose(p["A_log"], np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"ngroups": 3}, "ngroups"),
        ({"headdim": 3}, "headdim"),
        ({"chunk_size": 6}, "chunk_size"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"d_state": 0}, "d_state"),
        ({"A_init_range": (0.0, 1.0)}, "A_init_range"),
        ({"impl": "triton"}, "impl"),
    ],
)
def test_bad_config_raises(kw, name):
    with pytest.raises(ValueError, match=name):
        build(**kw)


def test_registry_and_bf16_forward_backward():
    """bf16 compute (dtype=bfloat16: projections, conv and the SSD's x, B, C in bf16; dt, the
    accumulation and the norms in f32)."""
    mixer = seqzoo.get_mixer(
        "mamba2", d_model=D_MODEL, d_state=4, headdim=4, chunk_size=4, dtype=jnp.bfloat16
    )
    info = seqzoo.mixer_info("mamba2")
    assert info.causal and info.segments and info.structure == "semiseparable"
    assert_bf16_compute_is_finite(mixer, D_MODEL)
