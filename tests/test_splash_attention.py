"""Splash attention (the TPU kernel) against the XLA path, in Pallas' interpreter on CPU, and
lowered for TPU (Mosaic) on CPU.

Every case compares the output and dq, dk, dv separately (relative L2 error): float32 against
float32 (the kernel's matmuls are exact in the interpreter: 1e-5), bfloat16 against the float32
reference on the same values (2e-2: bf16 inputs and probabilities; the XLA bf16 path reaches
~3e-3 to 1e-2 here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.attention import dot_product_attention
from seqzoo.ops.attention.splash_tpu import splash_attention

B, L, D = 2, 150, 32  # L pads to 256: two kernel blocks, a partly padded one
FAST = {("causal", "f32"), ("full, left padding, GQA", "bf16"),
        ("causal window, holes", "f32"), ("two-sided window, segments and holes, MQA", "bf16")}


def _inputs(heads, kv_heads, dtype, d=D, length=L):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    return tuple(jax.random.normal(k, (B, length, n, d), jnp.float32).astype(dtype)
                 for k, n in zip(keys, (heads, kv_heads, kv_heads), strict=True))


def _masks():
    pos = jnp.arange(L)
    holes = jnp.stack([pos % 7 != 3, pos < 101])  # holes in row 0, right padding in row 1
    left = jnp.stack([pos >= 40, pos >= 0])
    segments = jnp.stack([(pos >= 60).astype(jnp.int32) + (pos >= 120), (pos >= 75) * 3])
    return holes, left, segments


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _weighted(attend):
    def loss(q, k, v):
        o = attend(q, k, v).astype(jnp.float32)
        return jnp.sum(o * jnp.cos(jnp.arange(o.shape[-1])))
    return loss


CASES = {  # name: (causal, window, mask, segment_ids, heads, kv_heads)
    "causal": (True, None, None, None, 2, 2),
    "full, left padding, GQA": (False, None, "left", None, 4, 2),
    "causal window, holes": (True, 40, "holes", None, 2, 2),
    "two-sided window, segments and holes, MQA": (False, 25, "holes", "segments", 2, 1),
}


@pytest.mark.parametrize(
    ("name", "dtype"),
    [pytest.param(name, dtype, id=f"{name}-{label}",
                  marks=() if (name, label) in FAST else pytest.mark.slow)
     for name in CASES for dtype, label in ((jnp.float32, "f32"), (jnp.bfloat16, "bf16"))],
)
def test_splash_matches_xla(name, dtype):
    causal, window, mask_name, seg_name, heads, kv_heads = CASES[name]
    holes, left, segments = _masks()
    mask = {"holes": holes, "left": left, None: None}[mask_name]
    segment_ids = segments if seg_name else None
    q, k, v = _inputs(heads, kv_heads, dtype)

    def splash(q, k, v):
        return splash_attention(q, k, v, causal=causal, window=window, mask=mask,
                                segment_ids=segment_ids,
                                scale=None, interpret=True)

    def xla(q, k, v):
        return dot_product_attention(q, k, v, causal=causal, window=window, mask=mask,
                                     segment_ids=segment_ids, impl="parallel")

    up = [x.astype(jnp.float32) for x in (q, k, v)]
    o, grads = splash(q, k, v), jax.grad(_weighted(splash), (0, 1, 2))(q, k, v)
    o_ref, grads_ref = xla(*up), jax.grad(_weighted(xla), (0, 1, 2))(*up)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    assert o.dtype == dtype
    assert _rel(o.astype(jnp.float32), o_ref) < tol
    for label, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref, strict=True):
        assert _rel(g.astype(jnp.float32), g_ref) < tol, label
    if mask is not None:  # padded query rows are exactly zero, as the op promises
        assert not np.any(np.asarray(o)[~np.asarray(mask)])


def test_splash_lowers_for_tpu():
    """Forward and gradient lower to Mosaic custom calls for a TPU, from a CPU machine."""
    q, k, v = _inputs(4, 2, jnp.bfloat16, d=128, length=512)

    def attend(q, k, v):
        return splash_attention(q, k, v, causal=True, window=None, mask=None, segment_ids=None,
                                scale=None)

    for f in (attend, jax.grad(_weighted(attend), (0, 1, 2))):
        text = jax.jit(f).trace(q, k, v).lower(lowering_platforms=("tpu",)).as_text()
        assert "tpu_custom_call" in text
