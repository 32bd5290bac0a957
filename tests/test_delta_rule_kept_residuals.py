"""The chunked delta rule's backward pass on arrays kept from its forward pass
(``chunked_form.keep_residuals``, issue 27), against the default that keeps only the inputs:
the same outputs and every gradient on its own (float32, to float rounding), bf16 against
float32, the sequence-parallel op; that the backward pass really skips what was kept (the UT
transform's products, the forward scan) and that the residuals grow by what is kept (and by
nothing without the context).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_delta_rule import assert_close
from test_delta_rule_chunked_vjp import (
    NAMES,
    SHAPES,
    _all_eqns,
    _scans,
    assert_every_gradient_close,
    cotangents,
    inputs_of,
    lean,
    runs_of,
    vjp_of,
)
from test_delta_rule_chunked_vjp import (
    test_bf16_every_gradient_against_float32 as bf16_against_float32,
)
from test_delta_rule_chunked_vjp import (
    test_the_final_state_cotangent_alone as final_state_cotangent_alone,
)
from test_delta_rule_sequence_parallel import (
    test_sharded_equals_whole_with_every_gradient as sharded_equals_whole,
)

from seqzoo.ops.delta_rule import xla
from seqzoo.ops.delta_rule.chunked_form import (
    GPU_KEPT,
    keep_residuals,
    kept_residuals,
    unit_lower_inverse,
)

MODES = ("transform", "states")  # beside the CPU's default, "inputs"


def within(mode):
    """``keep_residuals(mode)``, or no context for None (the default)."""
    return contextlib.nullcontext() if mode is None else keep_residuals(mode)


@functools.cache
def default_case(shape, chunk, gated, packed):
    """Inputs, runs, cotangents and the default path's ``((o, S_T), gradients)``."""
    inputs = inputs_of(shape, gated)
    runs = runs_of(shape[0], shape[1], chunk, packed)
    co, cs = cotangents(inputs)
    return inputs, runs, co, cs, vjp_of(lean(chunk, runs), inputs, co, cs)


# every shape, gating and packing; at the realistic shape one segment is in the slow suite (the
# packed rows cover it there, and the tiny shape runs both)
CASES = [
    pytest.param(shape, chunk, gated, packed,
                 marks=(pytest.mark.slow,) if shape[1] > 100 and not packed else (),
                 id=f"B{shape[0]}-T{shape[1]}-H{shape[2]}-D{shape[3]}-C{chunk}-"
                    f"{'gated' if gated else 'deltanet'}-{'segments' if packed else 'one-segment'}")
    for shape, chunk in SHAPES for gated in (True, False) for packed in (True, False)
]


@pytest.mark.parametrize("shape,chunk,gated,packed", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_every_gradient_equals_the_default(mode, shape, chunk, gated, packed):
    """float32, an initial state, cotangents on the output and the final state: the output,
    the final state and dq, dk, dv, dbeta, dg, ds0 each equal the default path's (the same
    arithmetic on kept rather than recomputed values: 1e-6 of the largest)."""
    inputs, runs, co, cs, ((o_want, s_want), want) = default_case(shape, chunk, gated, packed)
    with keep_residuals(mode):
        (o, s), got = vjp_of(lean(chunk, runs), inputs, co, cs)
    assert_close(o, o_want, 1e-6, "output")
    assert_close(s, s_want, 1e-6, "final state")
    assert_every_gradient_close(got, want, inputs, 1e-6, "vs the default")


@pytest.mark.parametrize("mode", MODES)
def test_the_final_state_cotangent_alone_and_bf16(mode):
    """test_delta_rule_chunked_vjp's checks within the context: the final state's cotangent
    alone (against autodiff), and bf16 (gated) against float32 within ``BF16_TOL``."""
    with keep_residuals(mode):
        final_state_cotangent_alone()
        bf16_against_float32(gated=True)


@pytest.mark.parametrize("mode", MODES)
def test_sequence_parallel_with_every_gradient(mode):
    """The sequence-parallel op (shards as a named vmap axis; ``blockwise`` runs the kept VJP
    under the axis of the call) equals the unsharded one, every gradient."""
    with keep_residuals(mode):
        sharded_equals_whole("chunked", True)


def _backward(mode, inputs, chunk=16):
    """The backward pass alone: the jaxpr of ``xla.chunked``'s pullback (the forward traced
    within ``mode``'s context, the pullback after it: what it does was fixed at the forward)."""
    runs = runs_of(inputs["beta"].shape[0], inputs["beta"].shape[1], chunk, packed=True)
    with within(mode):
        _, pullback = jax.vjp(lean(chunk, runs), inputs)
    return jax.make_jaxpr(pullback)(cotangents(inputs)).jaxpr


def _dots(jaxpr) -> int:
    return sum(eqn.primitive.name == "dot_general" for eqn in _all_eqns(jaxpr))


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "deltanet"])
def test_the_backward_pass_skips_what_was_kept(gated):
    """Default: ``blockwise``'s loop over row blocks, the recomputed forward scan and the
    reverse scan. "transform": no loop, no UT transform (its products, counted in
    ``unit_lower_inverse`` alone, are all gone). "states": the reverse scan alone, and the
    forward scan's two products gone too (``U``'s product is still traced, unused: XLA drops
    it)."""
    inputs = inputs_of((2, 70, 2, 8), gated)
    n, c = 5, 16
    inverse = _dots(jax.make_jaxpr(unit_lower_inverse)(jnp.zeros((n, 2, 2, c, c))).jaxpr)
    assert inverse >= 4  # log2(16) rounds of two products each (and the diagonal blocks')
    default, transform, states = (_backward(m, inputs) for m in (None, *MODES))
    assert sorted(_scans(default)) == [(False, 1), (False, 1), (True, 1)]
    assert sorted(_scans(transform)) == [(False, 1), (True, 1)]
    assert _scans(states) == [(True, 1)]
    assert _dots(default) - _dots(transform) == inverse
    assert _dots(transform) - _dots(states) == 2


def _kept(shape, dv, chunk, mode) -> tuple[list, int]:
    """The residuals of ``xla.chunked`` at ``shape = (b, t, h, dk)``, bf16 ``q, k, v``, gated
    (shapes only, nothing computed): their ``(shape, dtype)`` beyond the padded arguments, and
    the bytes of those."""
    b, t, h, dk = shape
    f32, bf16 = jnp.float32, jnp.bfloat16
    inputs = {"q": (shape, bf16), "k": (shape, bf16), "v": ((b, t, h, dv), bf16),
              "beta": ((b, t, h), f32), "g": ((b, t, h), f32), "s0": ((b, h, dk, dv), f32)}
    inputs = {n: jax.ShapeDtypeStruct(*a) for n, a in inputs.items()}
    runs = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def residuals(a, runs):
        with within(mode):
            return jax.vjp(lean(chunk, runs), a)[1]

    def rows(a, runs):
        return xla._padded(*(a[n] for n in NAMES), runs, min(chunk, t))

    kept = [a for a in jax.tree.leaves(jax.eval_shape(residuals, inputs, runs)) if a.ndim]
    signature = sorted((a.shape, str(a.dtype)) for a in kept)
    for a in jax.tree.leaves(jax.eval_shape(rows, inputs, runs)):
        signature.remove((a.shape, str(a.dtype)))
    return signature, sum(int(np.prod(s)) * jnp.dtype(d).itemsize for s, d in signature)


@pytest.mark.parametrize("mode", [None, "inputs", *MODES], ids=["default", "inputs", *MODES])
def test_the_residuals_are_the_arguments_and_what_is_kept(mode):
    """Beyond the (padded) arguments: nothing by default; ``T`` ``(n, b, h, c, c)`` float32;
    with "states" also the entering states ``(n, b, h, dk, dv)`` float32 and ``D`` ``(n, b,
    h, c, dv)`` in the operand dtype. bf16, ``t = 300`` in 5 chunks of 64 (the last padded)."""
    (b, t, h, d), dv, c, n = (2, 300, 3, 32), 33, 64, 5
    extra, _ = _kept((b, t, h, d), dv, c, mode)
    ut = ((n, b, h, c, c), "float32")
    states = [ut, ((n, b, h, d, dv), "float32"), ((n, b, h, c, dv), "bfloat16")]
    assert extra == sorted({None: [], "inputs": [], "transform": [ut], "states": states}[mode])
    assert kept_residuals() == "inputs"  # the context is left behind: a CPU's default


def test_the_kept_sizes_at_the_issue_shape():
    """``keep_residuals``' docstring: at (4, 2048, 16, 128) bf16, chunk 64, ``T`` keeps 32 MiB
    (``4 b t h c`` bytes) and "states" 128 + 32 MiB more (``4 b t h d^2 / c`` and ``2 b t h
    d``), beside 32 MiB for each of ``q, k, v``."""
    shape, mib = (4, 2048, 16, 128), 2**20
    assert _kept(shape, 128, 64, "transform")[1] == 32 * mib
    assert _kept(shape, 128, 64, "states")[1] == (32 + 128 + 32) * mib


def test_keep_residuals_takes_inputs_transform_or_states():
    with pytest.raises(ValueError, match="keep_residuals"), keep_residuals("everything"):
        pass
    with keep_residuals("transform"), keep_residuals("states"):
        assert kept_residuals() == "states"
    assert kept_residuals() == "inputs"


def test_a_gpu_keeps_the_transform_by_default(monkeypatch):
    """On a GPU (faked: read when traced) the default keeps ``T`` (``GPU_KEPT``, fla's choice)
    and its residuals are "transform"'s; ``keep_residuals("inputs")`` still keeps only the
    arguments there."""
    (b, t, h, d), dv, c, n = (2, 300, 3, 32), 33, 64, 5
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert kept_residuals() == GPU_KEPT == "transform"
    assert _kept((b, t, h, d), dv, c, None)[0] == [((n, b, h, c, c), "float32")]
    assert _kept((b, t, h, d), dv, c, "inputs")[0] == []
