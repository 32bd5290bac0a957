"""Fused attention: the ``impl="auto"`` policy, and padding given to the kernel as lengths.

``fused_attention`` runs here with jax's XLA implementation (cuDNN needs a GPU; the same wrapper
runs there, checked by ``benchmarks/attention.py``): equal to the masked dense reference, output
and every gradient apart, for no padding, right and left padding, holes and an empty row,
causal or not, a window, GQA. ``tokamax_attention`` (tokamax needs Python >= 3.12 and a GPU)
runs here on a stand-in ``tokamax`` module with tokamax's signature over jax's XLA attention.
"""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops import attention as attention_op
from seqzoo.ops import dispatch
from seqzoo.ops.attention import attention_impl, dot_product_attention, tokamax_gpu
from seqzoo.ops.attention.cudnn import fused_attention
from seqzoo.ops.attention.valid_first import with_lengths

B, L, H, D = 2, 13, 4, 8


def padding(name):
    pos = jnp.arange(L)
    right = pos[None] < jnp.array([L, 9])[:, None]
    return {"none": None, "right": right, "left": right[:, ::-1],
            "holes": right & (pos % 4 != 1)[None], "empty row": right.at[1].set(False)}[name]


def inputs(kv_heads, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((B, L, n, D)), jnp.float32)
            for n in (H, kv_heads, kv_heads)]


def gradients(fn, args):
    def loss(*a):
        return jnp.sum(fn(*a) * jnp.cos(jnp.arange(D)))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(*args)[1]


@pytest.mark.parametrize("mask_name", ["none", "right", "left", "holes", "empty row"])
@pytest.mark.parametrize("causal, window, kv_heads", [(True, None, 4), (False, None, 4),
                                                      (True, 3, 4), (False, 3, 2),
                                                      (True, None, 1)])
def test_lengths_and_gathers_equal_the_masked_reference(mask_name, causal, window, kv_heads):
    mask = padding(mask_name)

    def fused(q, k, v):
        return fused_attention(q, k, v, causal=causal, window=window, mask=mask, scale=None,
                               implementation="xla")

    assert_equals_the_masked_reference(fused, inputs(kv_heads), causal, window, mask)


def assert_equals_the_masked_reference(fused, args, causal, window, mask):
    """``fused`` equals the dense XLA path: output, each gradient apart, padded rows 0."""
    def reference(q, k, v):
        return dot_product_attention(q, k, v, causal=causal, window=window, mask=mask,
                                     impl="parallel")

    np.testing.assert_allclose(fused(*args), reference(*args), atol=1e-6)
    for name, got, want in zip("qkv", gradients(fused, args), gradients(reference, args),
                               strict=True):
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"d{name}")
    if mask is not None:
        assert not np.any(np.asarray(fused(*args))[~np.asarray(mask)])


def flash_like(q, k, v, *, scale, is_causal, local_window_size, query_seq_lengths,
               key_value_seq_lengths):
    """A kernel as cuDNN and tokamax behaved on an H100 (``benchmarks/attention.py``): padded
    query rows are skipped (output 0), and a row whose length is 0 gives NaN, which reaches dk
    and dv through the backward pass even when that row's output is discarded."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    pos = jnp.arange(q.shape[1])
    allowed = pos < key_value_seq_lengths[:, None, None, None]
    if is_causal:
        allowed &= pos[:, None] >= pos[None, :]
    if local_window_size is not None:
        left, right = local_window_size
        gap = pos[:, None] - pos[None, :]
        allowed &= (gap <= left) & (-gap <= right)
    p = jnp.where(allowed, jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True))), 0.0)
    query = (pos < query_seq_lengths[:, None])[:, None, :, None]
    p = jnp.where(query, p / jnp.where(query, p.sum(-1, keepdims=True), 1.0), 0.0)
    empty = jnp.where(key_value_seq_lengths == 0, jnp.nan, 1.0)[:, None, None, None]
    return jnp.einsum("bhqk,bkhd->bqhd", p, v) * empty


@pytest.mark.parametrize("causal, window", [(True, None), (False, None), (True, 3)])
def test_an_empty_row_gives_finite_gradients_from_a_flash_kernel(causal, window):
    mask = padding("empty row")

    def fused(q, k, v):
        return with_lengths(flash_like, q, k, v, causal=causal, window=window, mask=mask,
                            scale=D**-0.5)

    assert_equals_the_masked_reference(fused, inputs(H), causal, window, mask)


GPU = {"backend": "gpu", "compute_capability": "9.0"}


@pytest.mark.parametrize("options, expected, why", [
    (dict(dtype=jnp.bfloat16, head_dim=128, causal=True), "cudnn", "flash"),
    (dict(dtype=jnp.float16, head_dim=64, causal=False), "cudnn", "flash"),
    (dict(dtype=jnp.bfloat16, head_dim=64, causal=True, window=128), "cudnn", "flash"),
    (dict(dtype=jnp.bfloat16, head_dim=256, causal=True), "cudnn", "flash"),
    (dict(dtype=jnp.float32, head_dim=64, causal=True), "parallel", "no float32 kernel"),
    (dict(dtype=jnp.bfloat16, head_dim=60, causal=True), "parallel", "multiple of 8"),
    (dict(dtype=jnp.bfloat16, head_dim=64, causal=True, window=8, num_sinks=2), "parallel",
     "sinks"),
    (dict(dtype=jnp.bfloat16, head_dim=64, causal=True, segment_ids=True), "parallel", "packed"),
    (dict(dtype=jnp.bfloat16, head_dim=64, causal=False, window=8), "parallel", "causal only"),
])
def test_auto_policy_on_a_gpu(options, expected, why):
    chosen, reason = attention_impl("auto", **options, **GPU)
    assert chosen == expected and why in reason


def test_auto_policy_elsewhere_and_explicit_choices():
    assert attention_impl("auto", jnp.bfloat16, 64, causal=True, backend="cpu")[0] == "parallel"
    assert attention_impl("auto", jnp.bfloat16, 256, causal=True, backend="gpu",
                          compute_capability="8.0")[0] == "parallel"  # Ampere: d <= 128
    assert attention_impl("parallel", jnp.bfloat16, 64, causal=True, **GPU) == (
        "parallel", "asked for")
    with pytest.warns(DeprecationWarning):  # the old name of "parallel"
        assert attention_impl("xla", jnp.bfloat16, 64, causal=True, **GPU) == (
            "parallel", "asked for")
    assert attention_impl("auto", jnp.bfloat16, 64, causal=True)[0] == "parallel"  # this CPU
    chosen, why = attention_impl("auto", jnp.bfloat16, 64, causal=True, backend="gpu",
                                 compute_capability="gfx90a")  # ROCm: no cuDNN
    assert chosen == "parallel" and "NVIDIA" in why


def test_auto_routes_to_the_fused_wrapper(monkeypatch):
    """What ``auto`` picks is what runs: the fused wrapper where the policy says cuDNN."""
    calls = []

    def on_xla(*args, **kwargs):
        calls.append(kwargs)
        return fused_attention(*args, **kwargs, implementation="xla")

    monkeypatch.setattr(dispatch, "resolve", lambda *a, **k: dispatch.Choice("cudnn", "test"))
    monkeypatch.setattr(attention_op, "fused_attention", on_xla)
    q, k, v = inputs(4)
    mask = padding("left")
    got = dot_product_attention(q, k, v, causal=True, mask=mask)
    assert calls and calls[0]["mask"] is mask
    want = dot_product_attention(q, k, v, causal=True, mask=mask, impl="parallel")
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.fixture
def stand_in_tokamax(monkeypatch):
    """A ``tokamax`` module whose ``dot_product_attention`` is jax's XLA attention; records the
    ``precision`` and ``implementation`` it was called with."""
    calls = []

    def dot_product_attention(q, k, v, *, precision, implementation, **kwargs):
        calls.append((precision, implementation))
        return jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)

    monkeypatch.setitem(sys.modules, "tokamax",
                        types.SimpleNamespace(dot_product_attention=dot_product_attention))
    monkeypatch.setattr(tokamax_gpu, "tokamax_installed", lambda: True)
    return calls


@pytest.mark.parametrize("mask_name", ["none", "left", "empty row"])
@pytest.mark.parametrize("causal, window, kv_heads", [(True, 3, 4), (False, 3, 2)])
def test_tokamax_wrapper_equals_the_masked_reference(stand_in_tokamax, mask_name, causal,
                                                     window, kv_heads):
    mask = padding(mask_name)

    def fused(q, k, v):
        return dot_product_attention(q, k, v, causal=causal, window=window, mask=mask,
                                     impl="tokamax")

    assert_equals_the_masked_reference(fused, inputs(kv_heads), causal, window, mask)
    assert stand_in_tokamax[0] == (jax.lax.Precision.HIGHEST, tokamax_gpu.KERNELS)


def test_tokamax_precision_follows_the_dtype_and_unsupported_options_take_xla(stand_in_tokamax):
    q, k, v = (a.astype(jnp.bfloat16) for a in inputs(4))
    dot_product_attention(q, k, v, causal=True, impl="tokamax")
    assert stand_in_tokamax[-1][0] is None  # 16-bit: tokamax's default (float32 accumulation)
    count = len(stand_in_tokamax)
    dot_product_attention(q, k, v, causal=True, window=4, num_sinks=1, impl="tokamax")
    dot_product_attention(q, k, v, causal=True, segment_ids=jnp.zeros((B, L), jnp.int32),
                          impl="tokamax")
    assert len(stand_in_tokamax) == count  # sinks, segment_ids: the XLA path
    assert attention_impl("tokamax", jnp.float32, 64, causal=True, num_sinks=0, **GPU) == (
        "tokamax", "asked for")
    assert attention_impl("tokamax", jnp.float32, 64, causal=True, window=4, num_sinks=1,
                          **GPU)[0] == "parallel"


def test_tokamax_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(tokamax_gpu, "tokamax_installed", lambda: False)
    with pytest.raises(ImportError, match=r"seqzoo\[tokamax\]"):
        dot_product_attention(*inputs(4), causal=True, impl="tokamax")
