"""ssd (chunked and sequential), ssd_matrix and ssd_step against a per-step loop of Mamba-2."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiled_memory import grad_temporaries

from seqzoo.ops.ssd import ssd, ssd_matrix, ssd_step, xla

TOL = dict(rtol=1e-5, atol=1e-5)
BATCH, HEADS, HEADDIM, N = 2, 4, 3, 5
run = jax.jit(ssd, static_argnames=("chunk_size", "dt_softplus", "return_final_state", "impl"))


@partial(jax.jit, static_argnames="dt_softplus")
def reference(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
              initial_state=None, segment_ids=None):
    """H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T; y_t = H_t C_t + D x_t; y * silu(z)."""
    batch, length, heads, p = x.shape
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = jnp.log1p(jnp.exp(dt))
    group = np.arange(heads) // (heads // B.shape[2])  # head h reads group h // (heads / g)
    B, C = B[:, :, group], C[:, :, group]  # (b, l, h, n)
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    new_segment = jnp.concatenate(
        [jnp.zeros((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    H = jnp.zeros((batch, heads, p, B.shape[-1])) if initial_state is None else initial_state

    def step(H, t):
        H = jnp.where(new_segment[:, t, None, None, None], 0.0, H)
        H = (jnp.exp(dt[:, t] * A)[:, :, None, None] * H
             + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :])
        return H, jnp.einsum("bhpn,bhn->bhp", H, C[:, t])

    H, y = jax.lax.scan(step, H, jnp.arange(length))
    y = jnp.swapaxes(y, 0, 1)
    if D is not None:
        y = y + x * (D[:, None] if D.ndim == 1 else D)
    if z is not None:
        y = y * z * jax.nn.sigmoid(z)
    return y, H


def make_inputs(length, groups=1, seed=0, batch=BATCH, D_per_channel=False):
    """Every argument, random (numpy's generator: no per-shape compilation)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, shift=0.0, scale=1.0):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * scale + shift)

    x_shape = (batch, length, HEADS, HEADDIM)
    return dict(
        x=normal(*x_shape),
        dt=normal(batch, length, HEADS, shift=-1.0),
        A=-jnp.asarray(np.exp(rng.standard_normal(HEADS, np.float32))),
        B=normal(batch, length, groups, N),
        C=normal(batch, length, groups, N),
        D=normal(HEADS, HEADDIM) if D_per_channel else normal(HEADS),
        z=normal(*x_shape),
        dt_bias=normal(HEADS, scale=0.5),
        initial_state=normal(batch, HEADS, HEADDIM, N),
    )


def cotangent(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


@partial(jax.jit, static_argnums=0)
def value_and_vjp(fn, inputs, segment_ids, cotangents):
    """fn's outputs, and the gradients of sum(outputs * cotangents) w.r.t. every input."""
    def loss(kwargs):
        outs = fn(**kwargs, segment_ids=segment_ids)
        leaves = jax.tree_util.tree_leaves(outs)
        return sum(jnp.sum(o * c) for o, c in zip(leaves, cotangents, strict=True)), outs
    (_, outs), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return outs, grads


# Module-level, so that the tests using one share its compilation (jit caches by identity).
CHUNKED = partial(ssd, chunk_size=8, dt_softplus=True, return_final_state=True)
SEQUENTIAL = partial(ssd, dt_softplus=True, return_final_state=True, impl="sequential")
REFERENCE = partial(reference, dt_softplus=True)
matrix = jax.jit(ssd_matrix, static_argnames="dt_softplus")


def assert_all_close(got, want, names, **tol):
    for name, g, w in zip(names, got, want, strict=True):
        np.testing.assert_allclose(g, w, **(tol or TOL), err_msg=name)


PACKED_IDS = [[0] * 10 + [1] * 16 + [2] * 7, [3] * 8 + [5] * 25]  # starts mid-chunk and on one


@pytest.mark.parametrize(
    "length, chunk_size, groups, D_per_channel",
    [(1, 16, 1, False), (7, 32, 2, False), (130, 16, 2, True), (130, 32, 1, False)],
    ids=["len1-chunk16-g1", "len7-chunk32-g2", "len130-chunk16-g2-D(h,p)", "len130-chunk32-g1"],
)
def test_chunked_matches_reference(length, chunk_size, groups, D_per_channel):
    inputs = make_inputs(length, groups, D_per_channel=D_per_channel)
    out, last = run(**inputs, chunk_size=chunk_size, dt_softplus=True, return_final_state=True)
    want, want_last = reference(**inputs, dt_softplus=True)
    assert out.shape == inputs["x"].shape and last.shape == inputs["initial_state"].shape
    assert_all_close((out, last), (want, want_last), ("out", "final_state"))


def test_sequential_matches_reference():
    inputs = make_inputs(130, groups=2)
    out, last = run(**inputs, dt_softplus=True, return_final_state=True, impl="sequential")
    assert_all_close((out, last), reference(**inputs, dt_softplus=True), ("out", "final_state"))


def test_optional_arguments_absent():
    inputs = make_inputs(33)
    for name in ("D", "z", "dt_bias", "initial_state"):
        inputs.pop(name)
    inputs["dt"] = jnp.asarray(np.logaddexp(0, inputs["dt"]))  # the step must be non-negative
    np.testing.assert_allclose(run(**inputs, chunk_size=8), reference(**inputs)[0], **TOL)


def gradient_case(seed=0):
    """Length 33 = 4 chunks of 8 + 1, two groups, packed, with cotangents for (out, state)."""
    inputs = make_inputs(33, groups=2, seed=seed)
    cot = (cotangent(inputs["x"].shape, 7), cotangent(inputs["initial_state"].shape, 8))
    return inputs, jnp.array(PACKED_IDS), cot


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_gradients_match_reference(impl):
    """Outputs, and VJPs w.r.t. x, dt, A, B, C, D, z, dt_bias, initial_state; packed."""
    inputs, ids, cot = gradient_case()
    outs, grads = value_and_vjp(CHUNKED if impl == "chunked" else SEQUENTIAL, inputs, ids, cot)
    want_outs, want = value_and_vjp(REFERENCE, inputs, ids, cot)
    assert_all_close(outs, want_outs, ("out", "final_state"))
    assert_all_close(grads.values(), want.values(), grads.keys())


def lean_form(x, dt, A, B, C, dt_bias, initial_state, segment_ids):
    """The lean chunked form (``impl="chunked"``): chunks of 4, parts of 8 steps."""
    return xla.lean_ssd(4, True, steps=8)((x, dt, B, C, segment_ids, initial_state),
                                          (A, dt_bias))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_lean_form_gradients_match_reference(dtype):
    """The lean form over four parts of 8 steps and a last one of 5, in blocks of rows:
    outputs, and the VJP w.r.t. each of x, dt, A, B, C, dt_bias, initial_state, against the
    loop (float64 inputs are computed in float32, as the op does); packed, segments starting on
    a part boundary, inside a chunk and in the last step."""
    with jax.enable_x64(dtype == jnp.float64):
        inputs = make_inputs(37, groups=2, batch=4)
        inputs = {k: inputs[k].astype(dtype) for k in
                  ("x", "dt", "A", "B", "C", "dt_bias", "initial_state")}
        ids = jnp.array([[0] * 16 + [1] * 21, [0] * 37, [3] * 6 + [4] * 31, [1] * 36 + [2]])
        cot = (cotangent(inputs["x"].shape, 7), cotangent(inputs["initial_state"].shape, 8))
        outs, grads = value_and_vjp(lean_form, inputs, ids, cot)
        want_outs, want = value_and_vjp(REFERENCE, inputs, ids, cot)
        assert outs[0].dtype == jnp.float32  # as the chunked core returns it
        assert_all_close(outs, want_outs, ("out", "final_state"))
        assert_all_close(grads.values(), want.values(), grads.keys())


def test_lean_backward_keeps_no_scores():
    """The gradient at (4, 1024, 8 heads, p 16, n 32, chunk 64) compiles to under 8 times x's
    bytes of temporaries (4.0), against 27 before the chunked form was lean (every chunk's
    scores, decays, weights and states)."""
    b, length, h, p, n = 4, 1024, 8, 16, 32

    def loss(x, dt, A, B, C):
        return jnp.sum(jnp.sin(ssd(x, dt, A, B, C, chunk_size=64, dt_softplus=True,
                                   impl="chunked")))

    f32 = partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    lean = grad_temporaries(loss, f32((b, length, h, p)), f32((b, length, h)), f32((h,)),
                            f32((b, length, 1, n)), f32((b, length, 1, n)))
    assert lean < 8 * b * length * h * p * 4, lean / (b * length * h * p * 4)


def test_no_overflow_with_fast_decay():
    """Strong decay (|dt A| up to ~100 per step) gives exact zeros, not inf * 0 = nan."""
    inputs, ids, cot = gradient_case(seed=1)
    inputs["A"] = jnp.array([-30.0, -1.0, -60.0, -0.01])
    inputs["dt"] = jnp.asarray(np.asarray(inputs["dt"]) + 2.0)
    ids = jnp.zeros_like(ids)
    outs, grads = value_and_vjp(CHUNKED, inputs, ids, cot)
    want_outs, want = value_and_vjp(REFERENCE, inputs, ids, cot)
    for name, value in [("out", outs[0]), ("final_state", outs[1]), *grads.items()]:
        assert jnp.isfinite(value).all(), name
    assert_all_close(outs, want_outs, ("out", "final_state"))
    assert_all_close(grads.values(), want.values(), grads.keys(), rtol=1e-4, atol=1e-4)


def test_segments_run_independently():
    """Packed sequences equal separate runs (the first from initial_state); chunk 8 so the
    segments start inside a chunk and on chunk boundaries, and an id comes back later."""
    inputs = make_inputs(20, groups=2, batch=1)
    bounds = [0, 4, 8, 16, 20]
    ids = jnp.array([[1] * 4 + [0] * 4 + [2] * 8 + [1] * 4])
    out, last = run(**inputs, chunk_size=8, dt_softplus=True, return_final_state=True,
                    segment_ids=ids)
    timed = ("x", "dt", "B", "C", "z")
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = {k: v[:, lo:hi] if k in timed else v for k, v in inputs.items()}
        if i > 0:
            part["initial_state"] = jnp.zeros_like(part["initial_state"])
        got, got_last = run(**part, chunk_size=8, dt_softplus=True, return_final_state=True)
        np.testing.assert_allclose(out[:, lo:hi], got, **TOL, err_msg=f"segment {i}")
    np.testing.assert_allclose(last, got_last, **TOL, err_msg="final state = last segment's")


def dense(x, dt, A, B, C, D, dt_bias, segment_ids):
    """The dense Mamba-2 path: einsum(M, x) + D x."""
    M = ssd_matrix(dt, A, B, C, dt_bias=dt_bias, dt_softplus=True, segment_ids=segment_ids)
    return jnp.einsum("bhij,bjhp->bihp", M, x) + D[:, None] * x


def test_matrix_matches_reference():
    """The dense path is the recurrence, forwards and backwards (packed, two groups)."""
    inputs = make_inputs(33, groups=2, D_per_channel=False)
    for name in ("z", "initial_state"):
        inputs.pop(name)
    ids = jnp.array(PACKED_IDS)
    cot = (cotangent(inputs["x"].shape, 3),)
    out, grads = value_and_vjp(dense, inputs, ids, cot)
    want_out, want = value_and_vjp(lambda **kw: REFERENCE(**kw)[0], inputs, ids, cot)
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_all_close(grads.values(), want.values(), grads.keys())


def test_matrix_entries():
    """M[i, j] = C_i . B_j exp(A sum_{k=j+1..i} dt_k) dt_j, zero above the diagonal."""
    inputs = make_inputs(6, groups=2, batch=1)
    dt, A, B, C = (np.asarray(inputs[k], np.float64) for k in ("dt", "A", "B", "C"))
    dt = np.abs(dt)
    M = np.asarray(matrix(jnp.asarray(dt, jnp.float32), inputs["A"], inputs["B"], inputs["C"]))
    for h in range(HEADS):
        g = h // (HEADS // 2)
        for i in range(6):
            for j in range(6):
                want = 0.0 if j > i else (C[0, i, g] @ B[0, j, g]
                                          * np.exp(A[h] * dt[0, j + 1:i + 1, h].sum())
                                          * dt[0, j, h])
                np.testing.assert_allclose(M[0, h, i, j], want, rtol=1e-5, atol=1e-6,
                                           err_msg=f"M[{h}, {i}, {j}]")


def test_step_matches_scan():
    inputs = make_inputs(7, groups=2)  # shapes of test_chunked_matches_reference[len7...]
    out, last = run(**inputs, chunk_size=32, dt_softplus=True, return_final_state=True)
    state = inputs["initial_state"]
    step = jax.jit(ssd_step, static_argnames="dt_softplus")
    for t in range(7):
        state, y = step(state, inputs["x"][:, t], inputs["dt"][:, t], inputs["A"],
                        inputs["B"][:, t], inputs["C"][:, t], inputs["D"], inputs["z"][:, t],
                        inputs["dt_bias"], dt_softplus=True)
        np.testing.assert_allclose(y, out[:, t], **TOL, err_msg=f"step {t}")
    np.testing.assert_allclose(state, last, **TOL)


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_bf16_inputs(impl):
    inputs = make_inputs(130, groups=2, D_per_channel=True)
    low = {k: np.asarray(v).astype(jnp.bfloat16) for k, v in inputs.items()}
    out = run(**low, chunk_size=32, dt_softplus=True, impl=impl)
    want = reference(**{k: v.astype(np.float32) for k, v in low.items()}, dt_softplus=True)[0]
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out).astype(np.float32)
    assert np.isfinite(out).all()
    # Computed in f32 from the same bf16 inputs: only the output rounding (2^-8) differs.
    np.testing.assert_allclose(out, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=jnp.zeros((2, 7, 12))), "x must"),
        (dict(dt=jnp.zeros((2, 7, 3))), "dt must"),
        (dict(A=jnp.zeros((4, 5))), "A must"),
        (dict(B=jnp.zeros((2, 7, 3, 5)), C=jnp.zeros((2, 7, 3, 5))), "g=3"),
        (dict(B=jnp.zeros((2, 7, 5))), "B must"),
        (dict(C=jnp.zeros((2, 7, 2, 4))), "C must"),
        (dict(D=jnp.zeros((3,))), "D must"),
        (dict(z=jnp.zeros((2, 7, 4, 2))), "z must"),
        (dict(dt_bias=jnp.zeros((2,))), "dt_bias must"),
        (dict(initial_state=jnp.zeros((2, 4, 3, 4))), "initial_state must"),
        (dict(segment_ids=jnp.zeros((2, 8), jnp.int32)), "segment_ids must"),
        (dict(chunk_size=48), "chunk_size"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=16.0), "chunk_size"),
        (dict(impl="associative"), "impl"),
    ],
    ids=["x-rank", "dt-shape", "A-shape", "groups-not-dividing-heads", "B-rank", "C-shape",
         "D-shape", "z-shape", "dt_bias-shape", "initial_state-shape", "segment_ids-shape",
         "chunk-not-power-of-two", "chunk-zero", "chunk-float", "bad-impl"],
)
def test_bad_input_raises(change, match):
    inputs = make_inputs(7, groups=2) | change
    with pytest.raises(ValueError, match=match):
        ssd(**inputs)


def test_bad_matrix_and_step_input_raises():
    inputs = make_inputs(7, groups=2)
    with pytest.raises(ValueError, match="dt must"):
        ssd_matrix(inputs["dt"][0], inputs["A"], inputs["B"], inputs["C"])
    with pytest.raises(ValueError, match="B has g=3"):
        ssd_matrix(inputs["dt"], inputs["A"], jnp.zeros((2, 7, 3, N)), jnp.zeros((2, 7, 3, N)))
    with pytest.raises(ValueError, match="state must"):
        ssd_step(inputs["initial_state"][:, :2], inputs["x"][:, 0], inputs["dt"][:, 0],
                 inputs["A"], inputs["B"][:, 0], inputs["C"][:, 0])
    with pytest.raises(ValueError, match="x_t must"):
        ssd_step(inputs["initial_state"], inputs["x"][:, 0, 0], inputs["dt"][:, 0],
                 inputs["A"], inputs["B"][:, 0], inputs["C"][:, 0])
