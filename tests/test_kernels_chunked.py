"""The chunked linear-attention kernels (Pallas interpret mode on CPU) against the XLA ops.

Outputs and the gradients of every input (initial state and decays included) of
``linear_attention``, ``ssd`` and ``quasiseparable`` with ``impl="pallas"`` against their XLA
paths and recurrent references; lengths are not multiples of the chunk (16).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.ops.dispatch import resolve
from seqzoo.ops.linear_attention import linear_attention, pallas_gpu
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.ssd import ssd

F32_TOL, BF16_TOL = 1e-4, 2e-2  # relative L2 errors (the kernels' docstrings)


def relative_errors(got, want) -> dict:
    """||got - want|| / ||want|| per leaf (leaves compared in float32)."""
    def err(a, b):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.isfinite(a).all()
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    return jax.tree.map(err, got, want)


def assert_close(got, want, tol):
    errors = relative_errors(got, want)
    worst = max(jax.tree.leaves(errors))
    assert worst < tol, errors


@partial(jax.jit, static_argnums=0)
def value_and_grads(fn, args, cotangents):
    """fn(*args) and the gradients of sum(outputs * cotangents) w.r.t. every array in args."""
    def loss(args):
        outs = fn(*args)
        dots = [jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outs, cotangents, strict=True)]
        return sum(dots), outs

    (_, outs), grads = jax.value_and_grad(loss, has_aux=True)(args)
    return outs, grads


def normal(rng, *shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)


def attention_inputs(decay, dtype, strength=1.0, t=37, seed=0):
    """q, k, v (2, t, 2 heads, 16), log decays <= 0 (None, per head or per key), S_0."""
    rng = np.random.default_rng(seed)
    q, k, v = (normal(rng, 2, t, 2, 16, dtype=dtype) for _ in range(3))
    shape = {None: None, "head": (2, t, 2), "key": (2, t, 2, 16)}[decay]
    g = None if shape is None else -strength * jax.nn.softplus(normal(rng, *shape))
    return (q, k, v, g, normal(rng, 2, 2, 16, 16)), rng


def attention(impl, q, k, v, g, s0):
    return linear_attention(q, k, v, log_decay=g, initial_state=s0, return_final_state=True,
                            chunk_size=16, impl=impl)


@pytest.mark.parametrize(
    "decay, dtype",
    [(None, jnp.float32), ("head", jnp.float32), ("key", jnp.float32),
     ("head", jnp.bfloat16), ("key", jnp.bfloat16)],
    ids=["nodecay-f32", "head-f32", "key-f32", "head-bf16", "key-bf16"],
)
def test_linear_attention_matches_xla_and_recurrence(decay, dtype):
    args, rng = attention_inputs(decay, dtype)
    cot = (normal(rng, 2, 37, 2, 16), normal(rng, 2, 2, 16, 16))
    got = value_and_grads(partial(attention, "pallas"), args, cot)
    tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
    assert got[0][0].dtype == dtype
    assert_close(got, value_and_grads(partial(attention, "chunked"), args, cot), tol)
    if dtype == jnp.float32:
        assert_close(got, value_and_grads(partial(attention, "sequential"), args, cot), tol)


@pytest.mark.parametrize("decay", ["head", "key"])
def test_strong_decay_is_finite_and_exact(decay):
    """Log decays down to about -20 per step: no inf or NaN anywhere, gradients included."""
    args, rng = attention_inputs(decay, jnp.float32, strength=20.0, t=50, seed=1)
    cot = (normal(rng, 2, 50, 2, 16), normal(rng, 2, 2, 16, 16))
    got = value_and_grads(partial(attention, "pallas"), args, cot)
    assert_close(got, value_and_grads(partial(attention, "sequential"), args, cot), F32_TOL)


def test_vmap_and_packed_fallback():
    """vmap over an extra axis equals the loop; segment_ids fall back to the XLA path."""
    (q, k, v, g, _), _ = attention_inputs("head", jnp.float32, t=20, seed=2)
    run = jax.jit(jax.vmap(lambda q, k, v, g: linear_attention(
        q[None], k[None], v[None], log_decay=g[None], chunk_size=16, impl="pallas")[0]))
    want = linear_attention(q, k, v, log_decay=g, chunk_size=16, impl="chunked")
    assert_close(run(q, k, v, g), want, F32_TOL)
    ids = jnp.array([[0] * 9 + [1] * 11] * 2)
    facts = dict(dims=(16, 16), dtypes=(jnp.bfloat16,))
    assert resolve("linear_attention", "pallas", **facts, segment_ids=ids).impl == "chunked"
    assert resolve("linear_attention", "auto", **facts).impl == "chunked"  # CPU


def test_pallas_where_no_tiling_fits_says_why(monkeypatch):
    monkeypatch.setattr(pallas_gpu, "device_limit", lambda: 1_000)
    (q, k, v, g, _), _ = attention_inputs("key", jnp.bfloat16)
    with pytest.raises(ValueError, match="no tiling of the chunked kernel fits 1000 bytes"):
        linear_attention(q, k, v, log_decay=g, impl="pallas")


def ssd_inputs(length=37, groups=2, seed=3):
    rng = np.random.default_rng(seed)
    batch, heads, p, n = 2, 4, 16, 16
    return dict(
        x=normal(rng, batch, length, heads, p),
        dt=normal(rng, batch, length, heads) - 1.0,
        A=-jnp.exp(normal(rng, heads)),
        B=normal(rng, batch, length, groups, n),
        C=normal(rng, batch, length, groups, n),
        D=normal(rng, heads),
        z=normal(rng, batch, length, heads, p),
        dt_bias=0.5 * normal(rng, heads),
        initial_state=normal(rng, batch, heads, p, n),
    ), rng


def test_ssd_matches_chunked():
    """Mamba-2 with two groups, D, z, dt_bias + softplus, initial and final state."""
    inputs, rng = ssd_inputs()
    names = tuple(inputs)

    def run(impl, *args):
        return ssd(**dict(zip(names, args, strict=True)), chunk_size=16, dt_softplus=True,
                   return_final_state=True, impl=impl)

    args = tuple(inputs.values())
    cot = (normal(rng, *inputs["x"].shape), normal(rng, *inputs["initial_state"].shape))
    got = value_and_grads(partial(run, "pallas"), args, cot)
    assert_close(got, value_and_grads(partial(run, "chunked"), args, cot), F32_TOL)


def test_quasiseparable_matches_xla():
    """Hydra: both directions in one launch, data-dependent D, groups."""
    inputs, rng = ssd_inputs(length=41, seed=4)
    args = (inputs["x"], inputs["dt"], inputs["dt"][:, ::-1] + 0.3, inputs["A"],
            inputs["B"], inputs["C"], inputs["C"][:, ::-1], inputs["B"] * 0.5,
            normal(rng, 2, 41, 4))

    def run(impl, x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D):
        return (quasiseparable(x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D=D, chunk_size=16,
                               dt_bias=inputs["dt_bias"], dt_softplus=True, impl=impl),)

    cot = (normal(rng, *inputs["x"].shape),)
    got = value_and_grads(partial(run, "pallas"), args, cot)
    assert_close(got, value_and_grads(partial(run, "chunked"), args, cot), F32_TOL)


def test_reverse_direction_is_the_flipped_causal_one():
    """A reverse pass is the causal pass on flipped inputs, its decays one step later."""
    (q, k, v, g, s0), _ = attention_inputs("key", jnp.float32, t=40, seed=5)
    g = g.at[:, -1].set(0.0)  # the state entering from the right is not decayed at t = T - 1
    later = jnp.pad(g[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
    run = jax.jit(partial(gated_linear_attention, scale=0.25, tiling=Tiling(16, 16, 16)),
                  static_argnames="reverse")

    def flip(a):
        return jnp.flip(a, axis=1)

    o, s = run(*(a[None] for a in (q, k, v, later)), None, s0[None], reverse=(True,))
    o_flip, s_flip = run(*(flip(a)[None] for a in (q, k, v, g)), None, s0[None])
    assert_close((o[0], s[0]), (flip(o_flip[0]), s_flip[0]), F32_TOL)
