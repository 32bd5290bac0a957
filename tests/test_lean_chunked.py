"""Lean backward passes of the chunked mixers (issue 22): linear attention and the delta rule
(``lean_grad.chunkwise``: one checkpointed scan step per chunk), RAT, H3 and Based's feature map
with its linear attention (``lean_grad.blockwise`` over batch rows). Every gradient separately
against plain autodiff of an independent form, and the compiled backward's memory against a
bound the old forms exceeded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiled_memory import grad_temporaries

from seqzoo.layers.h3 import _lean_h3_mix, h3_mix
from seqzoo.ops.delta_rule import xla as delta_xla
from seqzoo.ops.linear_attention import reference as la_reference
from seqzoo.ops.linear_attention import xla as la_xla
from seqzoo.ops.linear_attention.featured import featured_linear_attention
from seqzoo.ops.rat import rat_attention, rat_attention_autodiff

DTYPES = {"f32": (np.float32, 1e-4), "f64": (np.float64, 1e-9)}


def _normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _runs(b: int, t: int) -> np.ndarray:
    """Segment indices with a packed-segment start inside a chunk in row 0, none in the others."""
    runs = np.zeros((b, t), np.int32)
    runs[0, t // 2 - 3:] = 1
    return runs


def _grads(fn, inputs: dict, cotangent_shapes: tuple, dtype, seed: int):
    """d/d every input of ``sum(out_i * c_i)`` over ``fn``'s outputs, in ``dtype``."""
    rng = np.random.default_rng(seed)
    cots = [jnp.asarray(_normal(rng, *s), dtype) for s in cotangent_shapes]

    def loss(inputs):
        outs = fn(**inputs)
        return sum(jnp.sum(o * c) for o, c in zip(outs, cots, strict=True))

    return jax.jit(jax.grad(loss))({n: jnp.asarray(a, dtype) for n, a in inputs.items()})


def _assert_each(got: dict, want: dict, tol: float, what: str):
    for name in want:
        w, g = np.asarray(want[name], np.float64), np.asarray(got[name], np.float64)
        assert np.abs(w).max() > 0, f"{what}: d {name} is zero"
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max(),
                                   err_msg=f"{what}: d {name}")


SLOW = pytest.mark.slow


@pytest.mark.parametrize("decay,dtype", [
    ("key", "f32"), ("key", "f64"), ("head", "f32"), pytest.param("head", "f64", marks=SLOW),
    pytest.param("none", "f32", marks=SLOW), pytest.param("none", "f64", marks=SLOW)])
def test_linear_attention_every_gradient(decay, dtype):
    """The chunked form (lean backward) against the step-by-step scan, q, k, v, the decays and
    the initial state separately, across a segment start and a padded last chunk."""
    b, t, h, dk, dv = 2, 37, 2, 3, 4
    rng = np.random.default_rng(0)
    inputs = {"q": _normal(rng, b, t, h, dk), "k": _normal(rng, b, t, h, dk),
              "v": _normal(rng, b, t, h, dv), "s0": _normal(rng, b, h, dk, dv)}
    if decay != "none":
        inputs["g"] = -np.log1p(np.exp(_normal(rng, b, t, h, dk if decay == "key" else 1)))
    runs = jnp.asarray(_runs(b, t))

    def form(chunked):
        def run(q, k, v, s0, g=None):
            g = jnp.zeros(q.shape[:-1] + (1,), q.dtype) if g is None else g
            if chunked:
                return la_xla.chunked(q, k, v, g, s0, runs, 8)
            return la_reference.sequential(q, k, v, g, s0, runs)
        return run

    _assert_chunked_equals_sequential(form, inputs, ((b, t, h, dv), (b, h, dk, dv)), dtype,
                                      1, f"linear attention, decay {decay}, {dtype}")


def _assert_chunked_equals_sequential(form, inputs, shapes, dtype, seed, label):
    """Every gradient of ``form(True)`` (in ``dtype``) equals ``form(False)``'s in float64."""
    np_dtype, tol = DTYPES[dtype]
    with jax.enable_x64(dtype == "f64"):
        got = _grads(form(True), inputs, shapes, np_dtype, seed=seed)
        with jax.enable_x64(True):
            want = _grads(form(False), inputs, shapes, np.float64, seed=seed)
        _assert_each(got, want, tol, label)


@pytest.mark.parametrize("gated,dtype", [
    (True, "f32"), (False, "f64"), pytest.param(True, "f64", marks=SLOW),
    pytest.param(False, "f32", marks=SLOW)])
def test_delta_rule_every_gradient(gated, dtype):
    """The chunked WY form (lean backward) against the sequential scan: q, k, v, beta, the
    decay and the initial state separately, across a segment start and a padded last chunk."""
    b, t, h, dk, dv = 2, 29, 2, 4, 3
    rng = np.random.default_rng(2)
    k = _normal(rng, b, t, h, dk)
    inputs = {"q": _normal(rng, b, t, h, dk), "k": k / np.linalg.norm(k, axis=-1, keepdims=True),
              "v": _normal(rng, b, t, h, dv), "beta": 1 / (1 + np.exp(-_normal(rng, b, t, h))),
              "s0": _normal(rng, b, h, dk, dv)}
    if gated:
        inputs["g"] = -np.log1p(np.exp(_normal(rng, b, t, h)))
    runs = jnp.asarray(_runs(b, t))

    def form(chunked):
        def run(q, k, v, beta, s0, g=None):
            g = jnp.zeros(beta.shape, beta.dtype) if g is None else g
            if chunked:
                return delta_xla.chunked(q, k, v, beta, g, s0, runs, 8)
            return delta_xla.sequential(q, k, v, beta, g, s0, runs)
        return run

    _assert_chunked_equals_sequential(form, inputs, ((b, t, h, dv), (b, h, dk, dv)), dtype,
                                      3, f"delta rule, gated={gated}, {dtype}")


def test_rat_every_gradient():
    """rat_attention (blockwise over 4 row blocks) against plain autodiff of the same math, with
    a hole, right padding and q, k in one group tiled over two heads inside. (RAT computes in
    float32 whatever its inputs: no float64 case.)"""
    b, t, h, d, chunk = 4, 23, 2, 4, 4
    rng = np.random.default_rng(4)
    inputs = {n: _normal(rng, b, t, 1 if n in "qk" else h, d) for n in ("q", "k", "v", "gate")}
    mask = np.ones((b, t), bool)
    mask[1, 5] = False
    mask[2, 19:] = False
    mask = jnp.asarray(mask)

    def form(fn):
        return lambda **a: (fn(a["q"], a["k"], a["v"], a["gate"], mask, chunk),)

    got = _grads(form(rat_attention), inputs, ((b, t, h, d),), np.float32, seed=5)
    want = _grads(form(rat_attention_autodiff), inputs, ((b, t, h, d),), np.float32, seed=5)
    _assert_each(got, want, 1e-5, "RAT")


def test_h3_every_gradient():
    """H3's core (blockwise over 4 row blocks) against plain autodiff of ``h3_mix``: q, k~, v,
    the SSM kernel and D separately (their gradients summed over the blocks). (The FFT
    convolution computes in float32: no float64 case.)"""
    b, t, h, p = 4, 19, 2, 3
    rng = np.random.default_rng(6)
    inputs = {n: _normal(rng, b, t, h, p) for n in ("q", "k", "v")}
    inputs |= {"kernel": _normal(rng, h, t, scale=0.3), "D": _normal(rng, h)}

    def lean(q, k, v, kernel, D):
        return (_lean_h3_mix((q, k, v), (kernel, D)),)

    got = _grads(lean, inputs, ((b, t, h, p),), np.float32, seed=7)
    want = _grads(lambda **a: (h3_mix(**a),), inputs, ((b, t, h, p),), np.float32, seed=7)
    _assert_each(got, want, 1e-5, "H3")


def _taylor(x):
    """Based's map written out: ``[1, x / d^(1/4), x_a x_b / (sqrt(2) sqrt(d))]``."""
    d = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (d * d,)) / np.sqrt(2 * d)
    return jnp.concatenate([jnp.ones_like(x[..., :1]), x / d**0.25, outer], axis=-1)


def test_featured_linear_attention_every_gradient():
    """Based's Taylor map inside the op's lean region (blockwise over 4 row blocks of 2, one
    chunk of 8 and a shorter one) against the step-by-step scan on the map written out: q, k, v
    and the per-head decay separately, with padding (phi(k) = 0 there) and a segment start."""
    b, t, h, dk, dv = 8, 13, 2, 3, 4
    rng = np.random.default_rng(8)
    inputs = {"q": _normal(rng, b, t, h, dk), "k": _normal(rng, b, t, h, dk),
              "v": _normal(rng, b, t, h, dv), "g": -np.log1p(np.exp(_normal(rng, b, t, h)))}
    mask = np.ones((b, t), bool)
    mask[1, 9:], mask[5, :3] = False, False
    mask, runs = jnp.asarray(mask), jnp.asarray(_runs(b, t))

    def lean(q, k, v, g):
        return (featured_linear_attention(q, k, v, mask, feature_map="taylor", log_decay=g,
                                          scale=0.7, chunk_size=8, segment_ids=runs),)

    def reference(q, k, v, g):
        phi_k = _taylor(k) * mask[..., None, None]
        s0 = jnp.zeros((b, h, 1 + dk + dk * dk, dv))
        return (la_reference.sequential(0.7 * _taylor(q), phi_k, v, g[..., None], s0, runs)[0],)

    got = _grads(lean, inputs, ((b, t, h, dv),), np.float32, seed=9)
    want = _grads(reference, inputs, ((b, t, h, dv),), np.float32, seed=9)
    _assert_each(got, want, 1e-5, "featured linear attention")


def test_featured_linear_attention_keeps_no_features():
    """At one chunk (8 x 64, 2 heads of 8: 73 features), the compiled gradient's temporaries
    stay under 8x q, k and v: the features and their cotangents exist a block of rows at a
    time. The map applied before the op (which kept phi(q), phi(k)) measured 39.5x."""
    b, t, h, dk = 8, 64, 2, 8
    q = jax.ShapeDtypeStruct((b, t, h, dk), jnp.float32)
    v = jax.ShapeDtypeStruct((b, t, h, dk + 1), jnp.float32)
    mask = jnp.ones((b, t), bool)

    def loss(q, k, v):
        o = featured_linear_attention(q, k, v, mask, feature_map="taylor", scale=dk**-0.5,
                                      impl="chunked")  # the features (not the closed form)
        return jnp.sum(o**2)

    inputs = 4 * b * t * h * (3 * dk + 1)  # bytes of q, k and v
    temporaries = grad_temporaries(loss, q, q, v)
    assert temporaries < 8 * inputs, temporaries / inputs


def test_h3_blocks_are_sized_by_bytes():
    """At associative recall's short length (16 x 32, 4 heads of p = 8) a block's outer
    products and spectrum are at most q, k~ and v's size: the compiled gradient's temporaries
    stay under 4x those. Four blocks of a fixed number of rows measured 7.2x."""
    b, t, h, p = 16, 32, 4, 8
    q = jax.ShapeDtypeStruct((b, t, h, p), jnp.float32)
    kernel, d = jax.ShapeDtypeStruct((h, t), jnp.float32), jax.ShapeDtypeStruct((h,), jnp.float32)

    def loss(q, k, v, kernel, d):
        return jnp.sum(_lean_h3_mix((q, k, v), (kernel, d)) ** 2)

    inputs = 3 * 4 * b * t * h * p  # bytes of q, k~ and v
    temporaries = grad_temporaries(loss, q, q, q, kernel, d)
    assert temporaries < 4 * inputs, temporaries / inputs


def _linear_attention(q, k, v, g):
    b, t, h, d = q.shape
    return la_xla.chunked(q, k, v, g, jnp.zeros((b, h, d, d)), jnp.zeros((b, t), jnp.int32),
                          64)[0]


def _delta_rule(q, k, v, g):
    b, t, h, d = q.shape
    beta = jax.nn.sigmoid(g[..., 0])
    return delta_xla.chunked(q, k, v, beta, g[..., 0], jnp.zeros((b, h, d, d)),
                             jnp.zeros((b, t), jnp.int32), 64)[0]


def _rat(q, k, v, g):
    return rat_attention(q, k, v, g, jnp.ones(q.shape[:2], bool), 16)


def _h3(q, k, v, g):  # 4 heads of p = 4
    q, k, v = (a.reshape(a.shape[:2] + (4, 4)) for a in (q, k, v))
    kernel = jnp.concatenate([g[0, :, :, 0].T] * 2)  # (4, length)
    return _lean_h3_mix((q, k, v), (kernel, jnp.ones(4)))


@pytest.mark.parametrize(
    "fn,per_key",
    [(_linear_attention, False), (_linear_attention, True),
     pytest.param(_delta_rule, False, marks=SLOW), pytest.param(_rat, True, marks=SLOW),
     (_h3, False)],
    ids=["linear_attention", "gla", "delta_rule", "rat", "h3"],
)
def test_backward_keeps_about_its_inputs(fn, per_key):
    """The compiled gradient's temporaries at (4, 1024, 2, 8) stay under 5x the inputs (chunk
    64, RAT's 16). The forms that kept every chunk's scores measured 7.3x (linear attention),
    69x (GLA), 33x (delta rule), 11.4x (RAT: its scan levels and scores) and 10.7x (H3: the
    (p, p) outer products and their spectrum; here 4 heads of p = 4). The delta rule's
    chunk-parallel form (``delta_rule.xla.chunked``) holds every chunk's (C, C) matrices at once
    in its (recomputed) forward pass by design, the price of running its chunks in parallel:
    it may add six such (Gamma, A, T, the scores and two of their cotangents; 4.9 measured,
    12.6x the inputs here), and no more."""
    b, t, h, d = 4, 1024, 2, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(key, (b, t, h, d)) for key in keys[:3])
    g = -jax.nn.softplus(jax.random.normal(keys[3], (b, t, h, d if per_key else 1)))
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2, 3)))
    temporaries = grad.lower(q, k, v, g).compile().memory_analysis().temp_size_in_bytes
    inputs = sum(a.size * a.dtype.itemsize for a in (q, k, v, g))
    chunk_matrices = 6 * (t // 64) * b * h * 64 * 64 * 4 if fn is _delta_rule else 0
    assert temporaries < 5 * inputs + chunk_matrices, temporaries / inputs
