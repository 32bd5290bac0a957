"""Hydra's quasiseparable mixer against per-step loops in both directions and explicit entries."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiled_memory import grad_temporaries

from seqzoo.ops.quasiseparable import quasiseparable, quasiseparable_matrix, xla

TOL = dict(rtol=1e-5, atol=1e-5)
BATCH, HEADS, HEADDIM, N = 2, 4, 3, 5
PACKED_IDS = [[0] * 10 + [1] * 16 + [2] * 7, [3] * 8 + [5] * 25]  # 33 tokens
run = jax.jit(quasiseparable, static_argnames=("chunk_size", "dt_softplus", "impl"))


def _scan(x, dt, A, B, C, starts, reverse):
    """Per-step SSM, left to right or right to left: H_t = exp(dt_t A) H_prev + dt_t x_t B_t^T,
    s_t = H_t C_t, with H_prev = 0 where ``starts`` (a segment begins in scan order)."""
    batch, length, heads, p = x.shape
    H = jnp.zeros((batch, heads, p, B.shape[-1]))

    def step(H, t):
        H = jnp.where(starts[:, t, None, None, None], 0.0, H)
        H = (jnp.exp(dt[:, t] * A)[:, :, None, None] * H
             + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :])
        return H, jnp.einsum("bhpn,bhn->bhp", H, C[:, t])

    _, s = jax.lax.scan(step, H, jnp.arange(length), reverse=reverse)
    return jnp.swapaxes(s, 0, 1)


@partial(jax.jit, static_argnames="dt_softplus")
def reference(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, dt_bias=None,
              dt_softplus=False, segment_ids=None):
    """y_i = s^fwd_{i-1} + s^bwd_{i+1} + D_i x_i, each term only from i's own segment."""
    batch, length, heads, _ = x.shape
    group = np.arange(heads) // (heads // B_fwd.shape[2])
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    differs = segment_ids[:, 1:] != segment_ids[:, :-1]  # between t and t+1
    no = jnp.zeros((batch, 1), bool)
    first, last = jnp.concatenate([no, differs], 1), jnp.concatenate([differs, no], 1)

    def step_size(dt):
        dt = dt if dt_bias is None else dt + dt_bias
        return jnp.log1p(jnp.exp(dt)) if dt_softplus else dt

    s_fwd = _scan(x, step_size(dt_fwd), A, B_fwd[:, :, group], C_fwd[:, :, group], first, False)
    s_bwd = _scan(x, step_size(dt_bwd), A, B_bwd[:, :, group], C_bwd[:, :, group], last, True)
    zero = jnp.zeros_like(x[:, :1])
    y_fwd = jnp.where(first[..., None, None], 0.0, jnp.concatenate([zero, s_fwd[:, :-1]], 1))
    y_bwd = jnp.where(last[..., None, None], 0.0, jnp.concatenate([s_bwd[:, 1:], zero], 1))
    y = y_fwd + y_bwd
    if D is not None:
        y = y + x * (D[:, None] if D.ndim == 1 else D[..., None])
    return y


def make_inputs(length, groups=1, seed=0, batch=BATCH, data_dependent_D=False):
    """Every argument, random (numpy's generator: no per-shape compilation)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, shift=0.0, scale=1.0):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * scale + shift)

    bc = (batch, length, groups, N)
    return dict(
        x=normal(batch, length, HEADS, HEADDIM),
        dt_fwd=normal(batch, length, HEADS, shift=-1.0),
        dt_bwd=normal(batch, length, HEADS, shift=-1.0),
        A=-jnp.asarray(np.exp(rng.standard_normal(HEADS, np.float32))),
        B_fwd=normal(*bc),
        C_fwd=normal(*bc),
        B_bwd=normal(*bc),
        C_bwd=normal(*bc),
        D=normal(batch, length, HEADS) if data_dependent_D else normal(HEADS),
        dt_bias=normal(HEADS, scale=0.5),
    )


def params(inputs):
    """The matrix's arguments: everything but x."""
    return {k: v for k, v in inputs.items() if k != "x"}


def apply(M, x):
    return jnp.einsum("bhij,bjhp->bihp", M, x)


def dense(x, segment_ids=None, **kwargs):
    """The mixer as its dense matrix applied to x."""
    return apply(quasiseparable_matrix(**kwargs, dt_softplus=True, segment_ids=segment_ids), x)


@partial(jax.jit, static_argnums=0)
def value_and_vjp(fn, inputs, segment_ids, cotangent):
    """fn's output, and the gradients of sum(output * cotangent) w.r.t. every input."""
    def loss(kwargs):
        out = fn(**kwargs, segment_ids=segment_ids)
        return jnp.sum(out * cotangent), out
    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return out, grads


# Module-level, so that the tests using one share its compilation (jit caches by identity).
matrix = jax.jit(quasiseparable_matrix, static_argnames="dt_softplus")
dense_mixer = jax.jit(dense)
FAST = partial(quasiseparable, chunk_size=8, dt_softplus=True)
REFERENCE = partial(reference, dt_softplus=True)


@pytest.mark.parametrize(
    "length, chunk_size, groups, data_dependent_D",
    [(1, 16, 1, False), (7, 32, 2, True), (130, 16, 2, False)],
    ids=["len1-chunk16-g1", "len7-chunk32-g2-D(b,l,h)", "len130-chunk16-g2"],
)
def test_fast_and_dense_match_loops(length, chunk_size, groups, data_dependent_D):
    inputs = make_inputs(length, groups, data_dependent_D=data_dependent_D)
    want = reference(**inputs, dt_softplus=True)
    out = run(**inputs, chunk_size=chunk_size, dt_softplus=True)
    assert out.shape == inputs["x"].shape
    np.testing.assert_allclose(out, want, **TOL, err_msg="quasiseparable")
    np.testing.assert_allclose(dense_mixer(**inputs), want, **TOL, err_msg="matrix")


def test_sequential_impl_matches_loops():
    inputs = make_inputs(7, groups=2, data_dependent_D=True)
    np.testing.assert_allclose(run(**inputs, dt_softplus=True, impl="sequential"),
                               reference(**inputs, dt_softplus=True), **TOL)


def test_matrix_entries():
    """The module docstring's entries: C_fwd[i-1] . B_fwd[j] ... below, D on, backward above."""
    inputs = make_inputs(6, groups=2, batch=1)
    dts = {k: jnp.asarray(np.abs(inputs[k])) for k in ("dt_fwd", "dt_bwd")}
    M = np.asarray(matrix(**(params(inputs) | dts | {"dt_bias": None})))
    assert M.shape == (1, HEADS, 6, 6)
    f64 = {k: np.asarray(v, np.float64)[0] if v.ndim > 1 else np.asarray(v, np.float64)
           for k, v in (inputs | dts).items()}
    A, D = f64["A"], f64["D"]
    for h in range(HEADS):
        g = h // (HEADS // 2)
        for i in range(6):
            for j in range(6):
                if j < i:
                    C, B, dt, span = f64["C_fwd"][i - 1], f64["B_fwd"][j], f64["dt_fwd"], (j + 1, i)
                elif j > i:
                    C, B, dt, span = f64["C_bwd"][i + 1], f64["B_bwd"][j], f64["dt_bwd"], (i + 1, j)
                if i == j:
                    want = D[h]
                else:
                    want = C[g] @ B[g] * np.exp(A[h] * dt[span[0]:span[1], h].sum()) * dt[j, h]
                np.testing.assert_allclose(M[0, h, i, j], want, rtol=1e-5, atol=1e-6,
                                           err_msg=f"M[{h}, {i}, {j}]")


def test_jacobian_is_the_matrix():
    """Not causal: perturbing x_j moves y_i by exactly M[i, j] (per head, per channel)."""
    inputs = make_inputs(7, groups=2, batch=1, data_dependent_D=True)
    M = np.asarray(matrix(**params(inputs), dt_softplus=True)[0])  # (h, i, j)
    jac = jax.jit(jax.jacrev(lambda x: FAST(**(inputs | {"x": x}))))(inputs["x"])
    want = np.einsum("hij,hk,pq->ihpjkq", M, np.eye(HEADS), np.eye(HEADDIM))
    np.testing.assert_allclose(jac[0, :, :, :, 0], want, **TOL)  # (i, h, p, j, h', p')
    upper, lower = np.triu_indices(7, 1), np.tril_indices(7, -1)
    assert (M[:, upper[0], upper[1]] != 0).all() and (M[:, lower[0], lower[1]] != 0).all()


@pytest.mark.parametrize("path", ["fast", "dense"])
def test_gradients_match_loops(path):
    """Output, and VJPs w.r.t. x, dt_fwd, dt_bwd, A, B/C of both directions, D(b,l,h) and
    dt_bias; packed sequences."""
    inputs = make_inputs(33, groups=2, data_dependent_D=True)
    ids = jnp.array(PACKED_IDS)
    cot = jnp.asarray(np.random.default_rng(9).standard_normal(inputs["x"].shape, np.float32))
    out, grads = value_and_vjp(FAST if path == "fast" else dense, inputs, ids, cot)
    want_out, want = value_and_vjp(REFERENCE, inputs, ids, cot)
    np.testing.assert_allclose(out, want_out, **TOL, err_msg="out")
    for name in want:
        np.testing.assert_allclose(grads[name], want[name], **TOL, err_msg=name)


def lean_form(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, dt_bias, segment_ids):
    """The lean chunked form (``impl="chunked"``): chunks of 4, parts of 8 steps, then D."""
    rows = (x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, segment_ids)
    y = xla.lean(4, True, steps=8)(rows, (A, dt_bias))
    return y + x * D[..., None]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_lean_form_gradients_match_loops(dtype):
    """The lean form over four parts of 8 steps and a last one of 5 per direction, in blocks of
    rows: the output and the VJP w.r.t. each of x, dt_fwd, dt_bwd, A, B/C of both directions,
    D (b, l, h) and dt_bias, against the loops (float64 inputs are computed in float32, as the
    op does); packed, segments starting on a part boundary and at either end."""
    with jax.enable_x64(dtype == jnp.float64):
        inputs = make_inputs(37, groups=2, batch=4, data_dependent_D=True)
        inputs = {k: v.astype(dtype) for k, v in inputs.items()}
        ids = jnp.array([[0] * 16 + [1] * 21, [0] * 37, [3] + [4] * 36, [1] * 36 + [2]])
        cot = jnp.asarray(np.random.default_rng(9).standard_normal(inputs["x"].shape), dtype)
        out, grads = value_and_vjp(lean_form, inputs, ids, cot)
        want_out, want = value_and_vjp(REFERENCE, inputs, ids, cot)
        np.testing.assert_allclose(out, want_out, **TOL, err_msg="out")
        for name in want:
            np.testing.assert_allclose(grads[name], want[name], **TOL, err_msg=name)


def test_lean_backward_keeps_no_scores():
    """The gradient at (4, 1024, 8 heads, p 16, n 32, chunk 64) compiles to under 12 times x's
    bytes of temporaries (7.3), against 60 before the chunked form was lean (both directions'
    scores, decays, weights and states)."""
    b, length, h, p, n = 4, 1024, 8, 16, 32

    def loss(x, dt, A, B, C):
        y = quasiseparable(x, dt, dt, A, B, C, B, C, chunk_size=64, dt_softplus=True,
                           impl="chunked")
        return jnp.sum(jnp.sin(y))

    f32 = partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    lean = grad_temporaries(loss, f32((b, length, h, p)), f32((b, length, h)), f32((h,)),
                            f32((b, length, 1, n)), f32((b, length, 1, n)))
    assert lean < 12 * b * length * h * p * 4, lean / (b * length * h * p * 4)


def test_segments_run_independently():
    """Each segment equals its own run: segments start inside a chunk of 8 and on chunk
    boundaries, and an id comes back later."""
    inputs = make_inputs(20, groups=2, batch=1)
    bounds = [0, 4, 8, 16, 20]
    ids = jnp.array([[1] * 4 + [0] * 4 + [2] * 8 + [1] * 4])
    out = run(**inputs, chunk_size=8, dt_softplus=True, segment_ids=ids)
    np.testing.assert_allclose(dense_mixer(**inputs, segment_ids=ids), out, **TOL,
                               err_msg="matrix")
    np.testing.assert_allclose(out, reference(**inputs, dt_softplus=True, segment_ids=ids),
                               **TOL, err_msg="loop")
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = {k: v[:, lo:hi] if v.ndim > 1 else v for k, v in inputs.items()}
        np.testing.assert_allclose(out[:, lo:hi], run(**part, chunk_size=8, dt_softplus=True),
                                   **TOL, err_msg=f"segment {i}")


def test_bf16_inputs():
    inputs = make_inputs(130, groups=2)  # the shapes of test_fast_and_dense...[len130...]
    low = {k: np.asarray(v).astype(jnp.bfloat16) for k, v in inputs.items()}
    out = run(**low, chunk_size=32, dt_softplus=True)
    want = reference(**{k: v.astype(np.float32) for k, v in low.items()}, dt_softplus=True)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out).astype(np.float32)
    assert np.isfinite(out).all()
    # Computed in f32 from the same bf16 inputs: only the output rounding (2^-8) differs.
    np.testing.assert_allclose(out, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=jnp.zeros((2, 7, 12))), "x must"),
        (dict(dt_fwd=jnp.zeros((2, 7, 3))), "dt_fwd must"),
        (dict(dt_bwd=jnp.zeros((2, 6, 4))), "dt_bwd must"),
        (dict(A=jnp.zeros((4, 1))), "A must"),
        (dict(B_fwd=jnp.zeros((2, 7, 3, 5)), C_fwd=jnp.zeros((2, 7, 3, 5)),
              B_bwd=jnp.zeros((2, 7, 3, 5)), C_bwd=jnp.zeros((2, 7, 3, 5))), "g=3"),
        (dict(C_fwd=jnp.zeros((2, 7, 2, 4))), "C_fwd must"),
        (dict(B_bwd=jnp.zeros((2, 7, 1, 5))), "B_bwd must"),
        (dict(C_bwd=jnp.zeros((2, 7, 2, 4))), "C_bwd must"),
        (dict(D=jnp.zeros((4, 3))), "D must"),
        (dict(dt_bias=jnp.zeros((3,))), "dt_bias must"),
        (dict(segment_ids=jnp.zeros((2, 8), jnp.int32)), "segment_ids must"),
        (dict(chunk_size=12), "chunk_size"),
    ],
    ids=["x-rank", "dt_fwd-shape", "dt_bwd-shape", "A-shape", "groups-not-dividing-heads",
         "C_fwd-shape", "B_bwd-shape", "C_bwd-shape", "D-shape", "dt_bias-shape",
         "segment_ids-shape", "chunk-not-power-of-two"],
)
def test_bad_input_raises(change, match):
    inputs = make_inputs(7, groups=2) | change
    with pytest.raises(ValueError, match=match):
        quasiseparable(**inputs)


def test_bad_matrix_input_raises():
    inputs = params(make_inputs(7, groups=2))
    with pytest.raises(ValueError, match="dt_fwd must"):
        quasiseparable_matrix(**(inputs | dict(dt_fwd=inputs["dt_fwd"][0])))
    with pytest.raises(ValueError, match="B_bwd must"):
        quasiseparable_matrix(**(inputs | dict(B_bwd=inputs["B_bwd"][:, :3])))
