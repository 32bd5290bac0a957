"""DeltaNet and Gated DeltaNet layers: official init and a float64 numpy rebuild of fla's
``DeltaNet.forward`` / ``GatedDeltaNet.forward`` (chunk mode, no cache). (Paths, padding,
segments, bf16: test_contract.py; the op against its reference: test_delta_rule.py.)"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ssm_reference import causal_conv, f64, silu, softplus

import seqzoo

D_MODEL = 8


def l2norm(x, eps=1e-6):
    return x / np.sqrt((x * x).sum(-1, keepdims=True) + eps)


def delta_rule_loop(q, k, v, beta, g):
    """fla's naive recurrence: S = a S; u = b (v - S^T k); S += k u^T; o = S^T q / sqrt(dk)."""
    b, t, h, dk = q.shape
    s = np.zeros((b, h, dk, v.shape[-1]))
    out = np.zeros(v.shape)
    for i in range(t):
        s = s * np.exp(g[:, i])[..., None, None]
        u = beta[:, i, :, None] * (v[:, i] - np.einsum("bhk,bhkv->bhv", k[:, i], s))
        s = s + k[:, i, :, :, None] * u[:, :, None, :]
        out[:, i] = np.einsum("bhk,bhkv->bhv", q[:, i] * dk**-0.5, s)
    return out


def official_forward(p, x, h, dk, dv, cfg):
    """The official layer's forward in float64 numpy (projections, convs, gates, norm)."""
    x = f64(x)
    lead = x.shape[:2]

    def proj(name):
        return x @ f64(p[name]["kernel"])

    qkv = silu(causal_conv(np.concatenate([proj("q_proj"), proj("k_proj"), proj("v_proj")], -1),
                           f64(p["conv_kernel"]), 0.0))
    q, k, v = np.split(qkv, [h * dk, 2 * h * dk], axis=-1)
    q, k = l2norm(q.reshape(lead + (h, dk))), l2norm(k.reshape(lead + (h, dk)))
    v = v.reshape(lead + (h, dv))
    beta = 1.0 / (1.0 + np.exp(-proj("b_proj"))) * (2.0 if cfg.get("allow_neg_eigval") else 1.0)
    g = np.zeros(beta.shape)
    if "A_log" in p:
        g = -np.exp(f64(p["A_log"])) * softplus(proj("a_proj") + f64(p["dt_bias"]))
    o = delta_rule_loop(q, k, v, beta, g)
    o = o / np.sqrt((o * o).mean(-1, keepdims=True) + 1e-5) * f64(p["o_norm"]["scale"])
    if "g_proj" in p:
        o = o * silu(proj("g_proj").reshape(lead + (h, dv)))
    return o.reshape(lead + (h * dv,)) @ f64(p["o_proj"]["kernel"])


@functools.cache
def _run(name, items):
    """(mixer, params, x, y): init and forward compiled together per configuration."""
    mixer = seqzoo.get_mixer(name, d_model=D_MODEL, chunk_size=4, **dict(items))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, D_MODEL))

    def init_apply(key, x):
        params = mixer.init(key, x[:, :2])
        return params, mixer.apply(params, x)

    params, y = jax.jit(init_apply)(jax.random.PRNGKey(1), x)
    return mixer, params, x, y


def build(name, **kw):
    return _run(name, tuple(sorted(kw.items())))


CASES = [
    ("delta_net", {"num_heads": 2}, 4, 4),
    ("delta_net", {"num_heads": 2, "use_gate": True, "allow_neg_eigval": True}, 4, 4),
    ("gated_deltanet", {"num_heads": 2}, 3, 6),  # 0.75 d_model / 2 heads, values twice as wide
    ("gated_deltanet", {"num_heads": 1, "head_dim": 4, "expand_v": 1.5}, 4, 6),
]


@pytest.mark.parametrize(
    "name,kw,dk,dv", CASES, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(CASES)]
)
def test_matches_official_forward(name, kw, dk, dv):
    _, params, x, y = build(name, **kw)
    p = params["params"]
    want = official_forward(p, x, kw["num_heads"], dk, dv, kw)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-4, atol=1e-5)


def test_init_matches_official():
    _, params, _, _ = build("gated_deltanet", num_heads=2, head_dim=4)
    p = params["params"]
    h, dk, dv = 2, 4, 8
    shapes = {
        ("q_proj", "kernel"): (D_MODEL, h * dk),
        ("k_proj", "kernel"): (D_MODEL, h * dk),
        ("v_proj", "kernel"): (D_MODEL, h * dv),
        ("conv_kernel",): (4, h * (2 * dk + dv)),
        ("b_proj", "kernel"): (D_MODEL, h),
        ("a_proj", "kernel"): (D_MODEL, h),
        ("A_log",): (h,),
        ("dt_bias",): (h,),
        ("g_proj", "kernel"): (D_MODEL, h * dv),
        ("o_norm", "scale"): (dv,),
        ("o_proj", "kernel"): (h * dv, D_MODEL),
    }
    flat = dict(jax.tree_util.tree_flatten_with_path(p)[0])
    assert {tuple(k.key for k in path): v.shape for path, v in flat.items()} == shapes
    for a, fan_in in [(p["q_proj"]["kernel"], D_MODEL), (p["o_proj"]["kernel"], h * dv),
                      (p["conv_kernel"], 4)]:
        bound = fan_in**-0.5
        assert 0.5 * bound < float(np.abs(f64(a)).max()) <= bound
    A = np.exp(f64(p["A_log"]))
    assert A.min() > 0 and A.max() <= 16 and np.unique(A).size == h
    dt = softplus(f64(p["dt_bias"]))
    assert float(dt.min()) >= 1e-3 * (1 - 1e-4) and float(dt.max()) <= 0.1 * (1 + 1e-4)
    np.testing.assert_array_equal(p["o_norm"]["scale"], np.ones(dv))


def test_official_default_widths():
    """fla's defaults: DeltaNet 4 heads of d_model / 4; Gated DeltaNet 6 heads of 256 keys and
    512 values at d_model 2048 (num_heads * head_dim = 0.75 d_model)."""
    x = jnp.zeros((1, 2, 2048))
    for name, dk, dv in [("delta_net", 512, 512), ("gated_deltanet", 256, 512)]:
        mixer = seqzoo.get_mixer(name, d_model=2048)
        shapes = jax.eval_shape(mixer.init, jax.random.PRNGKey(0), x)["params"]
        h = 4 if name == "delta_net" else 6
        assert shapes["q_proj"]["kernel"].shape == (2048, h * dk), name
        assert shapes["v_proj"]["kernel"].shape == (2048, h * dv), name


@pytest.mark.parametrize(
    "kw,match",
    [({"num_heads": 3}, "expand_k"), ({"head_dim": 4, "expand_v": 0.3}, "expand_v"),
     ({"impl": "pallas"}, "impl"), ({"num_heads": 0}, "num_heads")],
)
def test_config_errors(kw, match):
    mixer = seqzoo.get_mixer("delta_net", d_model=D_MODEL, **kw)
    with pytest.raises(ValueError, match=match):
        mixer.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, D_MODEL)))
