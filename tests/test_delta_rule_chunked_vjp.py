"""The chunked delta rule's hand-derived backward pass (``seqzoo.ops.delta_rule.chunked_vjp``,
issue 27) against autodiff of the same forward (``xla._chunked_core`` without the custom VJP) and
of the sequential scan: every gradient on its own (q, k, v, beta, the log decay, the initial
state) with a cotangent on the output and on the final state, packed segments and a padded last
chunk; bf16 against float32; the residuals (the arguments only), the scans' unroll, and no decay
arithmetic without a decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params
from test_delta_rule import assert_close, make
from test_delta_rule_chunked import BF16_TOL, _primitives, segments
from tpu_checks import rel_l2

from seqzoo.ops.delta_rule import chunked_form, xla
from seqzoo.ops.delta_rule.chunked_form import scan_unroll

NAMES = ("q", "k", "v", "beta", "g", "s0")


def inputs_of(shape, gated: bool, seed: int = 0) -> dict:
    """Float inputs (``xla.chunked``'s names, ``q`` already scaled) at ``(b, t, h, d)``."""
    b, t, h, d = shape
    a = make(t, gated, b=b, h=h, dk=d, dv=d + 1, seed=seed)
    return {"q": a["q"] * d**-0.5, "k": a["k"], "v": a["v"], "beta": a["beta"],
            "g": a["log_decay"], "s0": a["initial_state"]}


def lean(chunk, runs):
    """``xla.chunked``: the custom VJP (blockwise, hand-derived backward)."""
    def run(a):
        return xla.chunked(a["q"], a["k"], a["v"], a["beta"], a["g"], a["s0"], runs, chunk)
    return run


def plain(chunk, runs):
    """The same forward with autodiff's VJP: ``_chunked_core`` on the padded rows, sliced."""
    def run(a):
        t = a["q"].shape[1]
        rows = xla._padded(a["q"], a["k"], a["v"], a["beta"], a["g"], a["s0"], runs,
                           min(chunk, t))
        o, s = xla._chunked_core(rows, (), min(chunk, t))
        return o[:, :t], s
    return run


def sequential(runs):
    def run(a):
        g = jnp.zeros(a["beta"].shape) if a["g"] is None else a["g"]
        return xla.sequential(a["q"], a["k"], a["v"], a["beta"], g, a["s0"], runs)
    return run


def vjp_of(fn, inputs, co, cs):
    """``((o, S_T), the cotangents of every input)`` for the cotangents ``co`` (output) and
    ``cs`` (final state), one compile."""
    def both(inputs, co, cs):
        out, vjp = jax.vjp(fn, inputs)
        return out, vjp((co, cs))[0]
    return jax.jit(both)(inputs, co, cs)


def cotangents(inputs, seed: int = 1):
    ks = jax.random.split(jax.random.PRNGKey(seed))
    b, t, h, dv = inputs["v"].shape
    return (jax.random.normal(ks[0], (b, t, h, dv)),
            jax.random.normal(ks[1], inputs["s0"].shape))


def runs_of(b: int, t: int, chunk: int, packed: bool):
    ids = segments(t, chunk) if packed else np.zeros((2, t), int)
    return jnp.asarray(ids[:b], jnp.int32)


# (b, t, h, d), chunk: a tiny one (several chunks, the last padded) and a realistic one
SHAPES = [((2, 13, 2, 4), 4), ((2, 300, 3, 32), 64)]


@pytest.mark.parametrize("packed", [True, False], ids=["segments", "one-segment"])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "deltanet"])
@pytest.mark.parametrize("shape,chunk", SHAPES,
                         ids=[f"B{s[0]}-T{s[1]}-H{s[2]}-D{s[3]}-C{c}" for s, c in SHAPES])
def test_every_gradient_equals_autodiff(shape, chunk, gated, packed):
    """float32: dq, dk, dv, dbeta, dg and ds0 each equal autodiff's of the same forward (to
    float rounding: 2e-6 of the largest) and of the sequential scan (1e-4, as the chunked form's
    other tests), with cotangents on the output and the final state and an initial state."""
    inputs = inputs_of(shape, gated)
    runs = runs_of(shape[0], shape[1], chunk, packed)
    co, cs = cotangents(inputs)
    (o, s), got = vjp_of(lean(chunk, runs), inputs, co, cs)
    (o_want, s_want), want = vjp_of(plain(chunk, runs), inputs, co, cs)
    _, by_scan = vjp_of(sequential(runs), inputs, co, cs)
    assert_close(o, o_want, 1e-6, "output")
    assert_close(s, s_want, 1e-6, "final state")
    assert_every_gradient_close(got, want, inputs, 2e-6, "vs autodiff")
    assert_every_gradient_close(got, by_scan, inputs, 1e-4, "vs sequential")


def assert_every_gradient_close(got: dict, want: dict, inputs: dict, tol: float, label: str):
    """Each gradient apart: None where its input is None, else in its input's dtype, nonzero in
    ``want`` and within ``tol`` of ``want``'s largest value."""
    for name in NAMES:
        if inputs[name] is None:
            assert got[name] is None
            continue
        assert got[name].dtype == inputs[name].dtype, name
        assert float(jnp.abs(want[name]).max()) > 0, f"d {name} is zero"
        assert_close(got[name], want[name], tol, f"d {name} {label}")


def test_the_final_state_cotangent_alone():
    """Only the final state's cotangent (the output's zero): every gradient still autodiff's
    (the reverse scan's initial carry), and the segments' resets cut it off where they are."""
    shape, chunk = (2, 70, 2, 8), 16
    inputs = inputs_of(shape, gated=True, seed=4)
    runs = runs_of(shape[0], shape[1], chunk, packed=True)
    co, cs = cotangents(inputs, seed=5)
    co = jnp.zeros_like(co)
    _, got = vjp_of(lean(chunk, runs), inputs, co, cs)
    _, want = vjp_of(plain(chunk, runs), inputs, co, cs)
    for name in NAMES:
        assert_close(got[name], want[name], 2e-6, f"d {name}")
    # both rows restart before t = 16: nothing before the last start reaches S_T
    first = int(np.argmax(np.asarray(runs)[1] == np.asarray(runs)[1, -1]))
    assert float(jnp.abs(got["v"][1, :first]).max()) == 0.0
    assert float(jnp.abs(got["s0"][1]).max()) == 0.0


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "deltanet"])
def test_bf16_every_gradient_against_float32(gated):
    """bf16 inputs and cotangents, (2, 300, 3, 32), chunk 64, packed, with an initial state:
    each gradient within ``BF16_TOL`` (relative L2) of float32 autodiff of the same forward on
    the same rounded values."""
    shape, chunk = (2, 300, 3, 32), 64
    inputs = inputs_of(shape, gated, seed=3)
    runs = runs_of(shape[0], shape[1], chunk, packed=True)
    low = {n: a if a is None or n in ("beta", "g", "s0") else a.astype(jnp.bfloat16)
           for n, a in inputs.items()}
    co, cs = cotangents(inputs, seed=7)
    co = co.astype(jnp.bfloat16).astype(jnp.float32)
    (o, s), got = vjp_of(lean(chunk, runs), low, co, cs)
    as32 = {n: None if a is None else a.astype(jnp.float32) for n, a in low.items()}
    (o_ref, s_ref), want = vjp_of(plain(chunk, runs), as32, co, cs)
    errors = {"o": rel_l2(o, o_ref), "S_T": rel_l2(s, s_ref)}
    for name in NAMES:
        if low[name] is not None:
            assert got[name].dtype == low[name].dtype, name
            errors[f"d{name}"] = rel_l2(got[name].astype(jnp.float32), want[name])
    assert len(errors) == 7 + gated and max(errors.values()) < BF16_TOL, errors


def test_the_residuals_are_the_arguments():
    """Between the passes the custom VJP keeps the (padded) arguments and nothing else (but
    scalars); autodiff of the same forward keeps every chunk's matrices and states (so the
    check can fail)."""
    shape, chunk = (2, 300, 3, 32), 64
    inputs = inputs_of(shape, gated=True)
    runs = runs_of(shape[0], shape[1], chunk, packed=True)

    def kept(fn) -> list:
        _, vjp = jax.vjp(fn, inputs)
        return [a for a in jax.tree.leaves(vjp) if np.ndim(a)]

    def size(arrays) -> int:
        return sum(a.size * a.dtype.itemsize for a in arrays)

    rows = jax.tree.leaves(xla._padded(*(inputs[n] for n in NAMES), runs, chunk))
    assert sorted((a.shape, str(a.dtype)) for a in kept(lean(chunk, runs))) == sorted(
        (a.shape, str(a.dtype)) for a in rows)
    assert size(kept(plain(chunk, runs))) > 5 * size(rows)


def _scans(jaxpr) -> list:
    """``(reverse, unroll)`` of every scan in ``jaxpr``, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append((eqn.params["reverse"], eqn.params["unroll"]))
        for sub in jaxprs_in_params(eqn.params):
            found += _scans(sub)
    return found


def _grad_jaxpr(inputs, chunk=16):
    runs = jnp.zeros(inputs["beta"].shape[:2], jnp.int32)

    def loss(a):
        o, s = lean(chunk, runs)(a)
        return jnp.sum(o**2) + jnp.sum(s**2)

    return jax.make_jaxpr(jax.grad(loss))(inputs).jaxpr


def test_the_unroll_applies_to_every_scan_over_chunks():
    """``scan_unroll``: the forward scan, its recomputation and the reverse scan take it (the
    fourth scan is ``blockwise``'s loop over row blocks)."""
    inputs = inputs_of((2, 70, 2, 8), gated=True)
    blocks = (False, 1)
    assert sorted(_scans(_grad_jaxpr(inputs))) == [(False, 1), blocks, (False, 1), (True, 1)]
    with scan_unroll(3):
        assert sorted(_scans(_grad_jaxpr(inputs))) == [blocks, (False, 3), (False, 3), (True, 3)]


def test_a_gpu_unrolls_the_scans_over_chunks_whole_up_to_its_limit(monkeypatch):
    """By default a GPU unrolls each of the three scans over chunks whole up to
    ``GPU_UNROLL_CHUNKS`` chunks and rolls longer ones; a CPU rolls; ``scan_unroll`` wins."""
    inputs = inputs_of((2, 70, 2, 8), gated=True)

    def unrolls(chunk):
        return sorted(u for _, u in _scans(_grad_jaxpr(inputs, chunk)))

    assert unrolls(16) == [1, 1, 1, 1]  # this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chunked_form.GPU_UNROLL_CHUNKS == 32
    five = unrolls(16)  # 5 chunks: the three scans whole (the fourth is blockwise's loop)
    assert five.count(5) == 3 and len(five) - 3 == five.count(1)
    assert set(unrolls(2)) == {1}  # 35 chunks: rolled
    with scan_unroll(2):
        assert unrolls(16).count(2) == 3


def test_no_decay_means_no_decay_arithmetic_in_the_backward_pass():
    """DeltaNet: neither pass has an ``exp`` or a ``cumsum`` (a gated one has both)."""
    plain_inputs = inputs_of((2, 70, 2, 8), gated=False)
    assert not {"exp", "cumsum"} & _primitives(_grad_jaxpr(plain_inputs))
    assert {"exp", "cumsum"} <= _primitives(_grad_jaxpr(inputs_of((2, 70, 2, 8), gated=True)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_backward_matmuls_take_the_operand_dtype(dtype):
    """The gradient's matmuls accumulate in float32; with bf16 inputs the backward pass adds two
    float32 ones (``dA = -T^T dT T^T``) to the recomputed forward's (``T``'s inverse) and takes
    bf16 operands in every other: the recomputed forward's but the output's two, and 15 of its
    own; with float32 inputs all are float32 at HIGHEST."""
    inputs = {n: a.astype(dtype) if n in "qkv" else a
              for n, a in inputs_of((2, 40, 2, 8), gated=True).items()}

    def dots(jaxpr):
        return [eqn for eqn in _all_eqns(jaxpr) if eqn.primitive.name == "dot_general"]

    def operands(eqns):
        return [{v.aval.dtype for v in eqn.invars} for eqn in eqns]

    runs = jnp.zeros(inputs["beta"].shape[:2], jnp.int32)
    forward = dots(jax.make_jaxpr(lean(16, runs))(inputs).jaxpr)
    both = dots(_grad_jaxpr(inputs))
    assert all(eqn.params["preferred_element_type"] == jnp.float32 for eqn in both)
    f32, bf16 = ({jnp.dtype(jnp.float32)}, {jnp.dtype(jnp.bfloat16)})
    if dtype == jnp.float32:
        high = jax.lax.Precision.HIGHEST
        assert all(o == f32 for o in operands(both))
        assert all(eqn.params["precision"] in (high, (high, high)) for eqn in both)
    else:
        assert operands(both).count(f32) == 2 * operands(forward).count(f32) + 2
        assert operands(both).count(bf16) == 2 * operands(forward).count(bf16) - 2 + 15
        assert all(o in (f32, bf16) for o in operands(both))


def _all_eqns(jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
        found.append(eqn)
        for sub in jaxprs_in_params(eqn.params):
            found += _all_eqns(sub)
    return found
