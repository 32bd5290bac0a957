"""linear_recurrence (h_t = a_t h_{t-1} + b_t) against a plain per-step loop."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.scan import linear_recurrence
from seqzoo.ops.segments import segment_starts

TOL = dict(rtol=1e-5, atol=1e-5)
IMPLS = ["associative", "sequential"]
recurrence = jax.jit(linear_recurrence, static_argnames=("reverse", "return_final_state", "impl"))


@partial(jax.jit, static_argnames="reverse")
def reference(a, b, initial_state=None, reverse=False):
    """Step by step from the definition; returns (all states, last state computed)."""
    h = jnp.zeros(b.shape[:1] + b.shape[2:], b.dtype) if initial_state is None else initial_state

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    last, states = jax.lax.scan(step, h, (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)),
                                reverse=reverse)
    return jnp.swapaxes(states, 0, 1), last


def make_inputs(length, complex_=False, seed=0, shape=(2, 3)):
    """(a, b, h0) with |a| in [0.5, 1); numpy's generator, so no per-shape compilation."""
    rng = np.random.default_rng(seed)
    full = (shape[0], length, *shape[1:])
    a = rng.uniform(0.5, 1.0, full)
    b = rng.standard_normal(full)
    h0 = rng.standard_normal(shape)
    if complex_:
        a = a * np.exp(1j * rng.uniform(0, 2 * np.pi, full))
        b = b * (1 + 0.5j)
        h0 = h0 * (0.5 - 1j)
    dtype = np.complex64 if complex_ else np.float32
    return tuple(jnp.asarray(v.astype(dtype)) for v in (a, b, h0))


def loss(fn, cotangents):
    """sum(out * cotangent) over every output, the scalar whose gradient is the VJP."""
    def scalar(*args):
        outs = jax.tree_util.tree_leaves(fn(*args))
        return jnp.real(sum(jnp.sum(o * c) for o, c in zip(outs, cotangents, strict=True)))
    return scalar


@pytest.mark.parametrize("length", [1, 7, 130], ids=lambda n: f"len{n}")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_loop(impl, reverse, length):
    a, b, h0 = make_inputs(length)
    h, last = recurrence(a, b, initial_state=h0, reverse=reverse, impl=impl,
                                return_final_state=True)
    ref_h, ref_last = reference(a, b, h0, reverse)
    np.testing.assert_allclose(h, ref_h, **TOL)
    np.testing.assert_allclose(last, ref_last, **TOL)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("impl", IMPLS)
def test_complex(impl, reverse):
    a, b, h0 = make_inputs(33, complex_=True)
    h, last = recurrence(a, b, initial_state=h0, reverse=reverse, impl=impl,
                                return_final_state=True)
    ref_h, ref_last = reference(a, b, h0, reverse)
    assert h.dtype == jnp.complex64
    np.testing.assert_allclose(h, ref_h, **TOL)
    np.testing.assert_allclose(last, ref_last, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_decay_broadcasts_over_state(impl):
    a, _, _ = make_inputs(9, shape=(2, 3, 1))
    b = jnp.asarray(np.random.default_rng(5).standard_normal((2, 9, 3, 4), np.float32))
    np.testing.assert_allclose(recurrence(a, b, impl=impl), reference(a, b)[0], **TOL)


@pytest.mark.parametrize(
    "impl, reverse, complex_",
    [("associative", False, False), ("associative", True, True),
     ("sequential", False, True), ("sequential", True, False)],
    ids=["associative-forward-real", "associative-reverse-complex",
         "sequential-forward-complex", "sequential-reverse-real"],
)
def test_gradients_match_loop(impl, reverse, complex_):
    a, b, h0 = make_inputs(33, complex_=complex_)
    ct = make_inputs(33, complex_=complex_, seed=1)[1:]  # cotangents for (states, last)
    ct = (ct[0], ct[1])

    def fast(a, b, h0):
        return recurrence(a, b, initial_state=h0, reverse=reverse, impl=impl,
                          return_final_state=True)

    grads = jax.grad(loss(fast, ct), argnums=(0, 1, 2))(a, b, h0)
    ref = jax.grad(loss(lambda *x: reference(*x, reverse), ct), argnums=(0, 1, 2))(a, b, h0)
    for name, g, r in zip(("a", "b", "initial_state"), grads, ref, strict=True):
        np.testing.assert_allclose(g, r, **TOL, err_msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_inputs(impl):
    a, b, _ = make_inputs(130)
    a16, b16 = (np.asarray(v).astype(jnp.bfloat16) for v in (a, b))
    h = recurrence(a16, b16, impl=impl)
    want = reference(a16.astype(np.float32), b16.astype(np.float32))[0]
    assert h.dtype == jnp.bfloat16
    h = np.asarray(h).astype(np.float32)
    assert np.isfinite(h).all()
    # f32 inside: only the final rounding to bf16 (8 bits of mantissa) is lost.
    np.testing.assert_allclose(h, want, rtol=1e-2, atol=1e-2)


def test_segment_starts():
    ids = jnp.array([[3, 3, 4, 4, 4, 3], [0, 1, 2, 2, 2, 2]])
    want = [[0, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]]
    np.testing.assert_array_equal(segment_starts(ids, 2, 6), np.array(want, bool))
    with pytest.raises(ValueError, match="segment_ids"):
        segment_starts(ids, 2, 5)


@pytest.mark.parametrize(
    "a_shape, b_shape, h0_shape, impl, match",
    [
        ((2, 5, 3), (2, 5, 3), None, "parallel", "impl"),
        ((2, 4, 3), (2, 5, 3), None, "auto", "a "),
        ((2, 5, 2), (2, 5, 3), None, "auto", "a "),
        ((2, 5), (2, 5, 3), None, "auto", "a "),
        ((5,), (5,), None, "auto", "b must"),
        ((2, 0, 3), (2, 0, 3), None, "auto", "b must"),
        ((2, 5, 3), (2, 5, 3), (2, 5, 3), "auto", "initial_state"),
    ],
    ids=["bad-impl", "a-length", "a-not-broadcastable", "a-rank", "b-rank", "empty", "h0-shape"],
)
def test_bad_input_raises(a_shape, b_shape, h0_shape, impl, match):
    h0 = None if h0_shape is None else jnp.zeros(h0_shape)
    with pytest.raises(ValueError, match=match):
        linear_recurrence(jnp.ones(a_shape), jnp.ones(b_shape), initial_state=h0, impl=impl)
