"""The Pallas linear-recurrence kernel (interpret mode on CPU) against the XLA op and a loop.

Values and gradients (a, b, initial state) for real and complex inputs, both directions,
lengths that are not multiples of the kernel's chunk, bf16, tiny decays, broadcast decays,
vmap. ``impl="pallas"`` on the op is the path under test.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ops_recurrence import loss, make_inputs, reference

from seqzoo.kernels.launch import kernels_compiled
from seqzoo.ops.scan import linear_recurrence
from seqzoo.ops.scan import pallas_gpu_recurrence as kernel

TOL = dict(rtol=1e-5, atol=1e-5)


@partial(jax.jit, static_argnames=("reverse", "impl"))
def value_and_grads(a, b, h0, cotangents, reverse, impl):
    """(states, final state) and the gradients of sum(outputs * cotangents) w.r.t. a, b, h0."""
    def fn(a, b, h0):
        return linear_recurrence(a, b, initial_state=h0, reverse=reverse,
                                 return_final_state=True, impl=impl)

    return fn(a, b, h0), jax.grad(loss(fn, cotangents), argnums=(0, 1, 2))(a, b, h0)


@pytest.mark.parametrize(
    "length, complex_, reverse",
    [(37, False, False), (37, False, True), (33, True, False), (33, True, True), (1, False, True)],
    ids=["B2-T37-D3-f32-forward", "B2-T37-D3-f32-reverse", "B2-T33-D3-c64-forward",
         "B2-T33-D3-c64-reverse", "B2-T1-D3-f32-reverse"],
)
def test_values_and_gradients(length, complex_, reverse):
    """Against the sequential loop (and so the associative scan); T not a multiple of the chunk
    (32 real, 16 complex) and D=3 not a multiple of the channel block."""
    a, b, h0 = make_inputs(length, complex_=complex_)
    ct = tuple(make_inputs(length, complex_=complex_, seed=1)[1:])
    (h, last), grads = value_and_grads(a, b, h0, ct, reverse, "pallas")
    want_h, want_last = reference(a, b, h0, reverse)
    np.testing.assert_allclose(h, want_h, **TOL)
    np.testing.assert_allclose(last, want_last, **TOL)
    want = jax.grad(loss(lambda *x: reference(*x, reverse), ct), argnums=(0, 1, 2))(a, b, h0)
    for name, g, w in zip(("a", "b", "initial_state"), grads, want, strict=True):
        np.testing.assert_allclose(g, w, **TOL, err_msg=name)


def test_tiny_and_zero_decays_stay_finite():
    """Decays of 1e-30 and exact zeros (segment resets): exact products, no log-space overflow;
    gradients match the associative scan's."""
    a, b, h0 = make_inputs(40)
    a = a.at[:, ::3].set(1e-30).at[:, 5].set(0.0)
    ct = tuple(make_inputs(40, seed=1)[1:])
    (h, last), grads = value_and_grads(a, b, h0, ct, False, "pallas")
    (want_h, want_last), want = value_and_grads(a, b, h0, ct, False, "associative")
    for got, exp in zip((h, last, *grads), (want_h, want_last, *want), strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, exp, **TOL)


def test_bf16_and_broadcast_decay_under_vmap():
    """bf16 a (one per head, broadcast over 4 state entries) and b, vmapped over an extra axis:
    f32 inside, one rounding to bf16 on output."""
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.uniform(0.5, 1.0, (2, 2, 50, 3, 1)), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal((2, 2, 50, 3, 4)), jnp.bfloat16)
    run = jax.jit(jax.vmap(partial(linear_recurrence, impl="pallas")))
    h = run(a, b)
    assert h.dtype == jnp.bfloat16 and h.shape == b.shape
    want = jax.vmap(lambda a, b: reference(jnp.broadcast_to(a, b.shape), b)[0])(
        a.astype(jnp.float32), b.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(h, np.float32), want, rtol=1e-2, atol=1e-2)


def test_chunk_and_width_do_not_change_results():
    """Other launch parameters (a chunk of 4 rows, 2 channels per program) give the same
    states: the tuning knobs only move work around."""
    a, b, h0 = make_inputs(11, shape=(2, 5))
    h, last = jax.jit(partial(kernel.linear_recurrence, chunk=4, width=2))(a, b, h0)
    want_h, want_last = reference(a, b, h0)
    np.testing.assert_allclose(h, want_h, **TOL)
    np.testing.assert_allclose(last, want_last, **TOL)


@pytest.mark.skipif(kernels_compiled(), reason="on a GPU, auto picks the kernel")
def test_auto_keeps_xla_off_gpu():
    a, b, _ = make_inputs(5)
    np.testing.assert_array_equal(linear_recurrence(a, b, impl="auto"),
                                  linear_recurrence(a, b, impl="associative"))
