"""Mamba, Mamba-2 and Hydra build their parts from ``seqzoo.layers.ssm``: their parameter trees
(names and shapes, the official layers' checkpoint layout) are pinned here; layers pass ``impl``
through ``dispatch.canonical``; the one gated RMSNorm against numpy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.layers.common import RMSNorm
from seqzoo.registry import get_mixer

D = 16  # d_model


def shapes(name, **cfg):
    mixer = get_mixer(name, d_model=D, **cfg)
    x = jnp.zeros((1, 5, D))
    tree = jax.eval_shape(mixer.init, jax.random.PRNGKey(0), x)["params"]
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): leaf.shape for path, leaf in flat}


def test_mamba_parameters_are_the_official_layout():
    e, n, r = 2 * D, 4, math.ceil(D / 16)
    assert shapes("mamba", d_state=n, bias=True) == {
        "in_proj/kernel": (D, 2 * e), "in_proj/bias": (2 * e,),
        "conv_kernel": (4, e), "conv_bias": (e,),
        "x_proj/kernel": (e, r + 2 * n),
        "dt_proj/kernel": (r, e), "dt_proj/bias": (e,),
        "A_log": (e, n), "D": (e,),
        "out_proj/kernel": (e, D), "out_proj/bias": (D,),
    }


@pytest.mark.parametrize("rmsnorm", [True, False])
def test_mamba2_parameters_are_the_official_layout(rmsnorm):
    e, n, g, p = 2 * D, 4, 2, 4
    h = e // p
    expected = {
        "in_proj/kernel": (D, 2 * e + 2 * g * n + h),
        "conv_kernel": (4, e + 2 * g * n), "conv_bias": (e + 2 * g * n,),
        "dt_bias": (h,), "A_log": (h,), "D": (h,),
        "out_proj/kernel": (e, D),
    } | ({"norm/scale": (e,)} if rmsnorm else {})
    assert shapes("mamba2", d_state=n, headdim=p, ngroups=g, rmsnorm=rmsnorm) == expected


def test_hydra_parameters_are_the_official_layout():
    e, n, p = 2 * D, 4, 8
    h = e // p
    assert shapes("hydra", d_state=n, headdim=p, conv_bias=False) == {
        "in_proj/kernel": (D, 2 * e + 4 * n + 2 * h),
        "conv_kernel": (7, e + 4 * n),
        "dt_bias": (h,), "A_log": (h,), "D": (h,),
        "fc_D/kernel": (e, h),
        "norm/scale": (e,),
        "out_proj/kernel": (e, D),
    }


@pytest.mark.parametrize("name, op", [("mamba", "selective_scan"), ("mamba2", "ssd"),
                                      ("hydra", "quasiseparable")])
def test_impl_goes_through_dispatch(name, op):
    x = jnp.zeros((1, 4, D))
    with pytest.raises(ValueError, match=r"impl must be one of \('auto'"):
        jax.eval_shape(get_mixer(name, d_model=D, impl="no_such_impl").init,
                       jax.random.PRNGKey(0), x)
    # "chunked" names an impl of the scan ops but not of Mamba's selective scan
    mamba = get_mixer("mamba", d_model=D, impl="chunked")
    with pytest.raises(ValueError, match="impl must be one of"):
        jax.eval_shape(mamba.init, jax.random.PRNGKey(0), x)


def test_a_renamed_impl_reaches_the_op_by_its_new_name():
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 6, D))
    old = get_mixer("linear_attention", d_model=D, num_heads=2, impl="recurrent")
    new = get_mixer("linear_attention", d_model=D, num_heads=2, impl="sequential")
    params = new.init(jax.random.PRNGKey(0), x)
    with pytest.warns(DeprecationWarning, match="renamed 'sequential'"):
        y_old = old.apply(params, x)
    np.testing.assert_array_equal(y_old, new.apply(params, x))


@pytest.mark.parametrize("group_size, before", [(None, False), (4, False), (8, True)])
def test_gated_rms_norm(group_size, before):
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal((2, 3, 16)), rng.standard_normal((2, 3, 16))
    norm = RMSNorm(eps=1e-5, group_size=group_size, norm_before_gate=before)
    params = {"params": {"scale": rng.standard_normal(16)}}
    silu = z / (1 + np.exp(-z))
    h = x if before else x * silu
    g = h.reshape(2, 3, -1, group_size or 16)
    ref = (g / np.sqrt((g * g).mean(-1, keepdims=True) + 1e-5)).reshape(h.shape) * params[
        "params"]["scale"]
    ref = ref * silu if before else ref
    y = norm.apply(params, jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    bf16 = norm.apply(params, jnp.asarray(x, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), ref, rtol=0.05, atol=0.05)
