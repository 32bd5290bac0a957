"""seqzoo.ops.delta_rule: the chunked and sequential forms, the step and the dense M against the
float64 reference (the equations with explicit transitions, run under ``jax.enable_x64``).

Tolerances (max abs error over max(1, max |reference|)): float32 inputs 2e-5 for outputs and
states, 1e-4 for gradients; bf16 inputs 1e-2 (the bf16 rounding of the output, 2^-8, against a
float64 reference on the same rounded inputs) and 3e-2 for gradients (bf16 cotangents).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.delta_rule import delta_rule, delta_rule_matrix, delta_rule_step
from seqzoo.ops.delta_rule.chunked_form import unit_lower_inverse
from seqzoo.ops.delta_rule.reference import delta_rule_reference

ARGS = ("q", "k", "v", "beta", "log_decay", "initial_state")
# compiled once per configuration (an eager call compiles each of its many primitives)
fast = jax.jit(delta_rule, static_argnames=("return_final_state", "chunk_size", "impl"))
step = jax.jit(delta_rule_step)
# two packed rows: starts inside a chunk of 4, at a chunk boundary, and at t = 1
SEGMENTS = np.array(
    [[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2], [0, 5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7]]
)


def make(t, gated=True, b=2, h=3, dk=8, dv=5, seed=0):
    """Random inputs as the layers make them: unit-norm keys, beta in (0, 1), log decays < 0."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    k = jax.random.normal(ks[1], (b, t, h, dk))
    return {
        "q": jax.random.normal(ks[0], (b, t, h, dk)),
        "k": k / jnp.linalg.norm(k, axis=-1, keepdims=True),
        "v": jax.random.normal(ks[2], (b, t, h, dv)),
        "beta": jax.nn.sigmoid(2 * jax.random.normal(ks[3], (b, t, h))),
        "log_decay": -jax.nn.softplus(jax.random.normal(ks[4], (b, t, h))) if gated else None,
        "initial_state": jax.random.normal(ks[5], (b, h, dk, dv)),
    }


def reference64(inputs, **kw):
    """(o, S_T) in float64 as numpy."""
    with jax.enable_x64(True):
        args = {n: None if a is None else jnp.asarray(np.asarray(a, np.float64))
                for n, a in inputs.items()}
        return tuple(np.asarray(r) for r in delta_rule_reference(**args, **kw))


def assert_close(a, b, tol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


# (impl, chunk, length, gated): chunks that divide the length or not, one chunk, T = 1, T = 130
FORWARD_CASES = [
    ("sequential", 64, 13, True), ("chunked", 4, 13, True), ("chunked", 4, 13, False),
    ("chunked", 5, 13, True), ("chunked", 4, 1, True), ("chunked", 16, 130, True),
    pytest.param("sequential", 64, 13, False, marks=pytest.mark.slow),
    pytest.param("chunked", 64, 13, True, marks=pytest.mark.slow),
]


def case_id(case) -> str:
    impl, chunk, t, gated = case.values if hasattr(case, "values") else case
    return f"{impl}-C{chunk}-T{t}-{'gated' if gated else 'deltanet'}"


@pytest.mark.parametrize("impl,chunk,t,gated", FORWARD_CASES, ids=map(case_id, FORWARD_CASES))
def test_forward_matches_float64_reference(impl, chunk, t, gated):
    inputs = make(t, gated)
    o, s = fast(**inputs, return_final_state=True, chunk_size=chunk, impl=impl)
    o_ref, s_ref = reference64(inputs)
    assert o.dtype == jnp.float32 and s.dtype == jnp.float32
    assert_close(o, o_ref, 2e-5, "output")
    assert_close(s, s_ref, 2e-5, "final state")


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_strong_decay_is_exact_not_overflowing(impl):
    """Log decays down to about -60 per step: decay factors underflow to zero, never overflow."""
    inputs = make(13)
    inputs["log_decay"] = inputs["log_decay"] * 30.0
    o, s = fast(**inputs, return_final_state=True, chunk_size=4, impl=impl)
    o_ref, s_ref = reference64(inputs)
    assert_close(o, o_ref, 2e-5, "output")
    assert_close(s, s_ref, 2e-5, "final state")


def loss_of(form):
    """sum(o * co) + sum(S_T * cs) as a function of the named inputs."""

    def loss(inputs, co, cs):
        o, s = form(**inputs)
        return jnp.sum(o * co) + jnp.sum(s * cs)

    return loss


@pytest.mark.parametrize(
    "impl,gated",
    [("chunked", True), ("chunked", False), ("sequential", True),
     pytest.param("sequential", False, marks=pytest.mark.slow)],
    ids=["chunked-gated", "chunked-deltanet", "sequential-gated", "sequential-deltanet"],
)
def test_every_gradient_matches_float64_reference(impl, gated):
    inputs = make(13, gated)
    co = jax.random.normal(jax.random.PRNGKey(1), inputs["v"].shape)
    cs = jax.random.normal(jax.random.PRNGKey(2), inputs["initial_state"].shape)

    def form(**kw):
        return delta_rule(**kw, return_final_state=True, chunk_size=4, impl=impl)

    grads = jax.jit(jax.grad(loss_of(form)))(inputs, co, cs)
    with jax.enable_x64(True):
        as64 = {n: None if a is None else jnp.asarray(np.asarray(a, np.float64))
                for n, a in inputs.items()}
        ref = jax.grad(loss_of(delta_rule_reference))(
            as64, jnp.asarray(np.asarray(co, np.float64)), jnp.asarray(np.asarray(cs, np.float64))
        )
        ref = {n: None if a is None else np.asarray(a) for n, a in ref.items()}
    for name in ARGS:
        if inputs[name] is None:
            continue
        assert float(np.abs(ref[name]).max()) > 0, f"d {name} is zero"
        assert_close(grads[name], ref[name], 1e-4, f"{impl}: d {name}")


@pytest.mark.parametrize("impl", ["chunked", "sequential"])
def test_segment_ids_reset_the_state(impl):
    """Each packed segment equals that segment run alone (the first from S_0, the others from
    zero); the final state is the last segment's; both match the reference."""
    inputs = make(13)
    seg = jnp.asarray(SEGMENTS)
    o, s = fast(**inputs, return_final_state=True, segment_ids=seg, chunk_size=4, impl=impl)
    o_ref, s_ref = reference64(inputs, segment_ids=seg)
    assert_close(o, o_ref, 2e-5, "output")
    assert_close(s, s_ref, 2e-5, "final state")
    # every segment alone, left-aligned in a row of its own, followed by identity steps (b = 0)
    rows, where = [], []
    for b in range(2):
        for i, sid in enumerate(np.unique(SEGMENTS[b])):
            idx = np.nonzero(SEGMENTS[b] == sid)[0]
            row = {n: np.zeros_like(a[b]) for n, a in inputs.items() if n != "initial_state"}
            for n in row:
                row[n][: len(idx)] = inputs[n][b, idx]
            row["initial_state"] = inputs["initial_state"][b] * (i == 0)
            rows.append(row)
            where.append((b, idx))
    alone = {n: jnp.stack([r[n] for r in rows]) for n in rows[0]}
    o_alone, s_alone = fast(**alone, return_final_state=True, impl="sequential")
    for r, (b, idx) in enumerate(where):
        assert_close(o[b, idx], o_alone[r, : len(idx)], 2e-5, f"row {b}, positions {idx}")
        if idx[-1] == 12:
            assert_close(s[b], s_alone[r], 2e-5, f"row {b} final state")


def test_bf16_inputs_against_float64_reference():
    """bf16 q, k, v, beta, log decay: bf16 output of the float32 computation, close to the float64
    reference on the same rounded inputs; bf16 gradients close to the float32 ones."""
    inputs = make(13)
    low = {n: a.astype(jnp.bfloat16) for n, a in inputs.items() if n != "initial_state"}
    o = fast(**low, chunk_size=4)
    assert o.dtype == jnp.bfloat16
    assert_close(o.astype(jnp.float32), reference64(low)[0], 1e-2, "bf16 output")
    co = jax.random.normal(jax.random.PRNGKey(1), inputs["v"].shape)

    def loss(args, co):
        return jnp.sum(delta_rule(**args, chunk_size=4).astype(jnp.float32) * co)

    g_low = jax.jit(jax.grad(loss))(low, co.astype(jnp.bfloat16))
    rounded = {n: a.astype(jnp.float32) for n, a in low.items()}
    g_ref = jax.jit(jax.grad(loss))(rounded, co)
    for name, g in g_low.items():
        assert g.dtype == jnp.bfloat16, name
        assert_close(g.astype(jnp.float32), g_ref[name], 3e-2, f"bf16 d {name}")


def test_step_matches_the_sequence():
    inputs = make(7)
    o, s = fast(**inputs, return_final_state=True, chunk_size=4)
    state = inputs["initial_state"]
    for t in range(7):
        state, o_t = step(
            state, *(inputs[n][:, t] for n in ("q", "k", "v", "beta", "log_decay"))
        )
        assert_close(o_t, o[:, t], 2e-5, f"step {t}")
    assert_close(state, s, 2e-5, "final state")


@pytest.mark.parametrize("segments", [False, True], ids=["one-segment", "packed"])
def test_matrix_applied_to_v_is_the_output(segments):
    inputs = make(13)
    seg = jnp.asarray(SEGMENTS) if segments else None
    m = jax.jit(delta_rule_matrix)(inputs["q"], inputs["k"], inputs["beta"], inputs["log_decay"],
                          segment_ids=seg)
    assert m.shape == (2, 3, 13, 13)
    assert float(jnp.abs(jnp.triu(m, 1)).max()) == 0.0
    o_ref = reference64({**inputs, "initial_state": None}, segment_ids=seg)[0]
    assert_close(jnp.einsum("bhij,bjhv->bihv", m, inputs["v"]), o_ref, 2e-5, "M v")


@pytest.mark.parametrize("c", [1, 5, 8, 13])
def test_unit_lower_inverse(c):
    """Against float64 numpy, relative to the inverse's largest entry."""
    a = jnp.tril(jax.random.normal(jax.random.PRNGKey(c), (3, c, c)), -1)
    expected = np.linalg.inv(np.eye(c) + np.asarray(a, np.float64))
    err = np.abs(np.asarray(jax.jit(unit_lower_inverse)(a), np.float64) - expected).max()
    assert err <= 1e-5 * np.abs(expected).max(), err


def test_bad_input():
    inputs = make(5)
    with pytest.raises(ValueError, match="rank"):
        delta_rule(**{**inputs, "q": inputs["q"][0]})
    with pytest.raises(ValueError, match="beta must be"):
        delta_rule(**{**inputs, "beta": inputs["beta"][..., None]})
    with pytest.raises(ValueError, match="log_decay must be"):
        delta_rule(**{**inputs, "log_decay": inputs["log_decay"][:, :-1]})
    with pytest.raises(ValueError, match="initial_state"):
        delta_rule(**{**inputs, "initial_state": inputs["initial_state"][0]})
    with pytest.raises(ValueError, match="impl"):
        delta_rule(**inputs, impl="pallas")
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(**inputs, chunk_size=0)
    with pytest.raises(ValueError, match="segment_ids"):
        delta_rule(**inputs, segment_ids=jnp.zeros((2, 4), jnp.int32))
