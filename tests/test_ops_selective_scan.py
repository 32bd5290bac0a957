"""selective_scan / selective_scan_step against a per-step loop of Mamba-1's equations."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiled_memory import grad_temporaries

from seqzoo.ops.scan import selective_scan, selective_scan_step, xla
from seqzoo.ops.segments import segment_starts

TOL = dict(rtol=1e-5, atol=1e-5)
BATCH, D_INNER, N = 2, 8, 4
scan = jax.jit(selective_scan, static_argnames=("delta_softplus", "return_final_state", "impl"))


@partial(jax.jit, static_argnames="delta_softplus")
def reference(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    segment_ids=None,
):
    """selective_scan_ref's loop: x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t, y = C_t . x_t."""
    batch, length, d = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = jnp.log1p(jnp.exp(delta))
    if B.ndim == 4:  # channel c reads group c // (d / g)
        B = B[:, :, np.arange(d) // (d // B.shape[2])]
        C = C[:, :, np.arange(d) // (d // C.shape[2])]
    else:
        B, C = B[:, :, None], C[:, :, None]
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    new_segment = jnp.concatenate(
        [jnp.zeros((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    x = jnp.zeros((batch, d, A.shape[1])) if initial_state is None else initial_state

    def step(x, t):
        x = jnp.where(new_segment[:, t, None, None], 0.0, x)
        x = jnp.exp(delta[:, t, :, None] * A) * x + (delta[:, t] * u[:, t])[:, :, None] * B[:, t]
        return x, jnp.sum(x * C[:, t], axis=-1)

    x, y = jax.lax.scan(step, x, jnp.arange(length))
    y = jnp.swapaxes(y, 0, 1)
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * z * jax.nn.sigmoid(z)
    return y, x


def make_inputs(length, groups=None, seed=0, batch=BATCH):
    """Every argument, random (numpy's generator: no per-shape compilation); groups None
    means B, C shared by all channels (b, l, n)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, shift=0.0, scale=1.0):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * scale + shift)

    bc = (batch, length, N) if groups is None else (batch, length, groups, N)
    return dict(
        u=normal(batch, length, D_INNER),
        delta=normal(batch, length, D_INNER, shift=-1.0),
        A=-jnp.asarray(np.exp(rng.standard_normal((D_INNER, N), np.float32))),
        B=normal(*bc),
        C=normal(*bc),
        D=normal(D_INNER),
        z=normal(batch, length, D_INNER),
        delta_bias=normal(D_INNER, scale=0.5),
        initial_state=normal(batch, D_INNER, N),
    )


def cotangent(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def assert_tree_close(got, want, names, **tol):
    for name, g, w in zip(names, got, want, strict=True):
        np.testing.assert_allclose(g, w, **(tol or TOL), err_msg=name)


@partial(jax.jit, static_argnums=0)
def value_and_vjp(fn, inputs, segment_ids, cotangents):
    """fn's outputs, and the gradients of sum(outputs * cotangents) w.r.t. every input."""

    def loss(kwargs):
        outs = fn(**kwargs, segment_ids=segment_ids)
        return sum(jnp.sum(o * c) for o, c in zip(outs, cotangents, strict=True)), outs

    (_, outs), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return outs, grads


# Module-level, so that the tests using one share its compilation (jit caches by identity).
FAST = {
    impl: partial(selective_scan, delta_softplus=True, return_final_state=True, impl=impl)
    for impl in ("associative", "sequential")
}
REFERENCE = partial(reference, delta_softplus=True)


@pytest.mark.parametrize(
    "impl, length, groups",
    [
        ("associative", 1, None),
        ("associative", 7, 2),
        ("associative", 130, None),
        ("associative", 130, 2),
        ("sequential", 7, 2),
        ("sequential", 130, 1),
    ],
    ids=[
        "associative-len1-shared-BC",
        "associative-len7-g2",
        "associative-len130-shared-BC",
        "associative-len130-g2",
        "sequential-len7-g2",
        "sequential-len130-g1",
    ],
)
def test_matches_reference(impl, length, groups):
    inputs = make_inputs(length, groups)
    out, last = scan(**inputs, delta_softplus=True, return_final_state=True, impl=impl)
    want, want_last = reference(**inputs, delta_softplus=True)
    assert out.shape == (BATCH, length, D_INNER) and last.shape == (BATCH, D_INNER, N)
    assert_tree_close((out, last), (want, want_last), ("out", "final_state"))


def test_optional_arguments_absent():
    inputs = make_inputs(7)
    for name in ("D", "z", "delta_bias", "initial_state"):
        inputs.pop(name)
    np.testing.assert_allclose(scan(**inputs), reference(**inputs)[0], **TOL)


@pytest.mark.parametrize(
    "impl, groups",
    [("associative", None), ("sequential", 2)],
    ids=["associative-shared-BC", "sequential-g2"],
)
def test_gradients_match_reference(impl, groups):
    """Outputs, and VJPs w.r.t. u, delta, A, B, C, D, z, delta_bias, initial_state; packed."""
    inputs = make_inputs(33, groups)
    ids = jnp.array([[0] * 10 + [1] * 23, [4] * 33])
    cot = (cotangent((BATCH, 33, D_INNER), 7), cotangent((BATCH, D_INNER, N), 8))
    outs, grads = value_and_vjp(FAST[impl], inputs, ids, cot)
    want_outs, want = value_and_vjp(REFERENCE, inputs, ids, cot)
    assert_tree_close(outs, want_outs, ("out", "final_state"))
    assert_tree_close(grads.values(), want.values(), grads.keys())


def lean_form(u, delta, A, B, C, D, z, delta_bias, initial_state, segment_ids):
    """The lean associative form (``impl="associative"``) with chunks of 8 steps."""
    starts = segment_starts(segment_ids, *u.shape[:2])
    return xla.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, initial_state, starts,
                              chunk=8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_lean_form_gradients_match_reference(dtype):
    """The lean form over four chunks of 8 and a last one of 5, in blocks of rows: outputs, and
    the VJP w.r.t. each of u, delta, A, B, C, D, z, delta_bias, initial_state, against the loop
    (float64 inputs are computed in float32, as the op does); packed, a segment starting on a
    chunk boundary and one in the last step."""
    with jax.enable_x64(dtype == jnp.float64):
        inputs = {k: v.astype(dtype) for k, v in make_inputs(37, groups=2, batch=4).items()}
        ids = jnp.array([[0] * 16 + [1] * 21, [0] * 37, [3] * 5 + [4] * 32, [1] * 36 + [2]])
        cot = (cotangent((4, 37, D_INNER), 7).astype(dtype), cotangent((4, D_INNER, N), 8))
        outs, grads = value_and_vjp(lean_form, inputs, ids, cot)
        want_outs, want = value_and_vjp(REFERENCE, inputs, ids, cot)
        assert outs[0].dtype == dtype
        assert_tree_close(outs, want_outs, ("out", "final_state"))
        assert_tree_close(grads.values(), want.values(), grads.keys())


def test_lean_backward_keeps_no_states():
    """The gradient at (4, 512, d 64, n 16) compiles to fewer temporary bytes than one
    (batch, length, d, n) tensor of states: 0.63 of it, against 13 before the form was lean (the
    associative scan's decays, inputs, states and tree levels; the sequential form keeps 12)."""
    b, length, d, n = 4, 512, 64, 16

    def loss(u, delta, A, B, C):
        y = selective_scan(u, delta, A, B, C, delta_softplus=True, impl="associative")
        return jnp.sum(jnp.sin(y))

    f32 = partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    lean = grad_temporaries(loss, f32((b, length, d)), f32((b, length, d)), f32((d, n)),
                            f32((b, length, n)), f32((b, length, n)))
    assert lean < b * length * d * n * 4, lean / (b * length * d * n * 4)


def test_segments_run_independently():
    """Packed sequences: each segment equals its own scan (the first from initial_state)."""
    inputs = make_inputs(16, groups=2, batch=1)
    bounds = [0, 4, 8, 12, 16]
    ids = jnp.array([[2] * 4 + [0] * 4 + [1] * 4 + [2] * 4])  # an id may come back later
    out = scan(**inputs, delta_softplus=True, segment_ids=ids)
    timed = ("u", "delta", "B", "C", "z")
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = {k: v[:, lo:hi] if k in timed else v for k, v in inputs.items()}
        if i > 0:
            part["initial_state"] = jnp.zeros_like(part["initial_state"])
        np.testing.assert_allclose(
            out[:, lo:hi], scan(**part, delta_softplus=True), **TOL, err_msg=f"segment {i}"
        )
    np.testing.assert_allclose(
        out, reference(**inputs, delta_softplus=True, segment_ids=ids)[0], **TOL
    )


def test_step_matches_scan():
    inputs = make_inputs(7, groups=2)  # the shapes of test_matches_reference[sequential-len7-g2]
    out, last = scan(**inputs, delta_softplus=True, return_final_state=True, impl="sequential")
    state = inputs["initial_state"]
    step = jax.jit(selective_scan_step, static_argnames="delta_softplus")
    for t in range(7):
        state, y = step(
            state,
            inputs["u"][:, t],
            inputs["delta"][:, t],
            inputs["A"],
            inputs["B"][:, t],
            inputs["C"][:, t],
            inputs["D"],
            inputs["z"][:, t],
            inputs["delta_bias"],
            delta_softplus=True,
        )
        np.testing.assert_allclose(y, out[:, t], **TOL, err_msg=f"step {t}")
    np.testing.assert_allclose(state, last, **TOL)


def test_step_keeps_state_dtype():
    inputs = make_inputs(1)
    state, y = selective_scan_step(
        inputs["initial_state"].astype(jnp.bfloat16),
        inputs["u"][:, 0].astype(jnp.bfloat16),
        inputs["delta"][:, 0],
        inputs["A"],
        inputs["B"][:, 0],
        inputs["C"][:, 0],
    )
    assert state.dtype == jnp.bfloat16 and y.dtype == jnp.bfloat16


@pytest.mark.parametrize("impl", ["associative", "sequential"])
def test_bf16_inputs(impl):
    inputs = make_inputs(130, groups=2)
    low = {k: np.asarray(v).astype(jnp.bfloat16) for k, v in inputs.items()}
    out = scan(**low, delta_softplus=True, impl=impl)
    want = reference(**{k: v.astype(np.float32) for k, v in low.items()}, delta_softplus=True)[0]
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out).astype(np.float32)
    assert np.isfinite(out).all()
    # Computed in f32 from the same bf16 inputs: only the output rounding (2^-8) differs.
    np.testing.assert_allclose(out, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(u=jnp.zeros((2, 7))), "u must"),
        (dict(delta=jnp.zeros((2, 7, 4))), "delta must"),
        (dict(A=jnp.zeros((4, 4))), "A must"),
        (dict(B=jnp.zeros((2, 7, 3, 4))), "g=3"),
        (dict(C=jnp.zeros((2, 7, 2, 5))), "C must"),
        (dict(B=jnp.zeros((2, 6, 4))), "B must"),
        (dict(D=jnp.zeros((4,))), "D must"),
        (dict(z=jnp.zeros((2, 7, 4))), "z must"),
        (dict(delta_bias=jnp.zeros((8, 1))), "delta_bias must"),
        (dict(initial_state=jnp.zeros((2, 8, 5))), "initial_state must"),
        (dict(segment_ids=jnp.zeros((2, 6), jnp.int32)), "segment_ids must"),
        (dict(impl="cuda"), "impl"),
    ],
    ids=[
        "u-rank",
        "delta-shape",
        "A-shape",
        "groups-not-dividing-d",
        "C-state-size",
        "B-length",
        "D-shape",
        "z-shape",
        "delta_bias-shape",
        "initial_state-shape",
        "segment_ids-shape",
        "bad-impl",
    ],
)
def test_bad_input_raises(change, match):
    inputs = make_inputs(7, groups=2) | change
    with pytest.raises(ValueError, match=match):
        selective_scan(**inputs)


def test_bad_step_input_raises():
    inputs = make_inputs(1)
    with pytest.raises(ValueError, match="B_t has g=3"):
        selective_scan_step(
            inputs["initial_state"],
            inputs["u"][:, 0],
            inputs["delta"][:, 0],
            inputs["A"],
            jnp.zeros((2, 3, N)),
            inputs["C"][:, 0],
        )
    with pytest.raises(ValueError, match="state must"):
        selective_scan_step(
            inputs["initial_state"][:, :4],
            inputs["u"][:, 0],
            inputs["delta"][:, 0],
            inputs["A"],
            inputs["B"][:, 0],
            inputs["C"][:, 0],
        )


def test_unstable_A_is_refused_eagerly():
    """A with a positive entry (an exploding system) is a ValueError naming A, outside jit."""
    from seqzoo.ops import s4d_kernel, ssd

    u = jnp.ones((1, 5, 2))
    with pytest.raises(ValueError, match="A must have non-positive real part"):
        selective_scan(
            u, u, jnp.array([[0.5, -1.0], [-1.0, -1.0]]), jnp.ones((1, 5, 2)), jnp.ones((1, 5, 2))
        )
    with pytest.raises(ValueError, match="A must have non-positive real part"):
        ssd(
            jnp.ones((1, 5, 2, 2)),
            jnp.ones((1, 5, 2)),
            jnp.array([0.1, -1.0]),
            jnp.ones((1, 5, 1, 3)),
            jnp.ones((1, 5, 1, 3)),
        )
    a = jnp.array([[0.2 + 1j]])
    with pytest.raises(ValueError, match="A must have non-positive real part"):
        s4d_kernel(jnp.ones((1,)), a, jnp.ones_like(a), jnp.ones((1, 1, 1), jnp.complex64), 4)
