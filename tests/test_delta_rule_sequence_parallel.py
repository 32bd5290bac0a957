"""The sequence-parallel delta rule on one device: the augmented local run against explicit
float64 transitions, and the sharded op (shards as a named ``vmap`` axis, whose collectives are
those of ``shard_map``) against the unsharded op, outputs, final state and every gradient. The
8-device ``shard_map`` runs, and the DeltaNet layers in a model, are in test_parallel_ops.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.delta_rule import delta_rule, delta_rule_local
from seqzoo.ops.delta_rule.sequence_parallel import augmented_run
from tests.test_delta_rule import ARGS, assert_close, make, reference64

SHARDS = 3


def transitions64(inputs, scale):
    """``R_t = Phi_t^T (scale q_t)`` ``(b, t, h, dk)`` and ``P = Phi_T`` ``(b, h, dk, dk)``
    from the explicit products ``Phi_t = A_t ... A_1``, ``A_t = a_t (I - b_t k_t k_t^T)``, in
    float64 numpy."""
    q, k, beta = (np.asarray(inputs[n], np.float64) for n in ("q", "k", "beta"))
    g = inputs["log_decay"]
    a = np.ones_like(beta) if g is None else np.exp(np.asarray(g, np.float64))
    b, t, h, dk = q.shape
    phi = np.broadcast_to(np.eye(dk), (b, h, dk, dk)).copy()
    reach = np.zeros((b, t, h, dk))
    for i in range(t):
        outer = np.einsum("bhi,bhj->bhij", k[:, i], k[:, i])
        step = a[:, i, :, None, None] * (np.eye(dk) - beta[:, i, :, None, None] * outer)
        phi = step @ phi
        reach[:, i] = np.einsum("bhij,bhi->bhj", phi, scale * q[:, i])
    return reach, phi


# (impl, gated): the other two pairs are slow (each case compiles its own programs)
CASES = [
    pytest.param("chunked", True, id="chunked-gated"),
    pytest.param("sequential", False, id="sequential-plain"),
    pytest.param("chunked", False, id="chunked-plain", marks=pytest.mark.slow),
    pytest.param("sequential", True, id="sequential-gated", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("impl", "gated"), CASES)
def test_one_augmented_run_gives_the_outputs_and_transitions(impl, gated):
    """From ``[I | 0]`` on ``[0 | v]``: outputs ``[R | o^local]``, final state ``[P | F]``."""
    inputs = make(10, gated=gated, dk=4, dv=3)
    scale = 0.7
    local = functools.partial(delta_rule_local, scale=scale, chunk_size=4, impl=impl)
    o, reach, transition, state = jax.jit(augmented_run, static_argnums=0)(
        local, *(inputs[n] for n in ARGS[:5])
    )
    want_o, want_state = reference64({**inputs, "initial_state": None}, scale=scale)
    want_reach, want_transition = transitions64(inputs, scale)
    for got, want, what in ((o, want_o, "o_local"), (reach, want_reach, "R"),
                            (transition, want_transition, "P"), (state, want_state, "F")):
        assert_close(got, want, 2e-5, what)


def _split(a):  # (b, SHARDS * l, ...) -> (SHARDS, b, l, ...)
    b, t = a.shape[:2]
    return jnp.moveaxis(a.reshape((b, SHARDS, t // SHARDS) + a.shape[2:]), 1, 0)


def _merge(a):
    return jnp.moveaxis(a, 0, 1).reshape((a.shape[1], -1) + a.shape[3:])


def _sharded(impl):
    """``delta_rule`` over ``SHARDS`` shards of the sequence (a named vmap axis), the same
    signature and results as ``_whole``: ``(o, S_T)`` (``S_T`` checked equal on every shard)."""

    def shard(q, k, v, beta, g, s0):
        return delta_rule(q, k, v, beta, g, initial_state=s0, return_final_state=True,
                          chunk_size=2, impl=impl, seq_axis="seq")

    def run(q, k, v, beta, g, s0):
        o, final = jax.vmap(shard, (0, 0, 0, 0, 0, None), axis_name="seq")(
            *(_split(a) for a in (q, k, v, beta, g)), s0
        )
        return _merge(o), final

    return run


@pytest.mark.parametrize(("impl", "gated"), CASES)
def test_sharded_equals_whole_with_every_gradient(impl, gated):
    inputs = make(4 * SHARDS, gated=gated, dk=4, dv=3)
    if not gated:  # a zero log decay: the same op as None, and its gradient exists
        inputs["log_decay"] = jnp.zeros_like(inputs["beta"])
    args = tuple(inputs[n] for n in ARGS)
    rng = np.random.default_rng(0)
    ct_o = jnp.asarray(rng.standard_normal(inputs["v"].shape, np.float32))
    ct_s = jnp.asarray(rng.standard_normal(inputs["initial_state"].shape, np.float32))

    def whole(q, k, v, beta, g, s0):
        return delta_rule(q, k, v, beta, g, initial_state=s0, return_final_state=True,
                          chunk_size=2, impl=impl)

    sharded = _sharded(impl)

    def loss(fn, *a):
        o, final = fn(*a)
        final = final.mean(0) if final.ndim == 5 else final  # each shard's copy
        return jnp.sum(o * ct_o) + jnp.sum(final * ct_s)

    want_o, want_final = jax.jit(whole)(*args)
    got_o, got_final = jax.jit(sharded)(*args)
    assert_close(got_o, want_o, 2e-5, "o")
    for i, copy in enumerate(got_final):
        assert_close(copy, want_final, 2e-5, f"final state on shard {i}")
    grad = jax.grad(loss, argnums=tuple(range(1, 7)))
    want_grads = jax.jit(grad, static_argnums=0)(whole, *args)
    got_grads = jax.jit(grad, static_argnums=0)(sharded, *args)
    for name, got, want in zip(ARGS, got_grads, want_grads, strict=True):
        assert_close(got, want, 1e-4, f"gradient of {name}")


def test_segments_are_refused():
    a = make(2 * SHARDS, dk=4, dv=3)
    ids = jnp.zeros(a["beta"].shape[:2], jnp.int32)
    with pytest.raises(NotImplementedError, match="segment_ids"):
        delta_rule(*(a[n] for n in ARGS[:5]), segment_ids=ids, seq_axis="seq")


def test_bf16_inputs_against_the_float64_reference():
    """bf16 q, k, v, beta, log_decay: the sharded op's output (bf16) and final state (float32)
    against the float64 reference on the same rounded inputs (test_delta_rule.py's tolerance)."""
    inputs = {n: None if a is None else a.astype(jnp.bfloat16)
              for n, a in make(4 * SHARDS, dk=4, dv=3).items()}
    inputs["initial_state"] = inputs["initial_state"].astype(jnp.float32)
    o, final = jax.jit(_sharded("chunked"))(*(inputs[n] for n in ARGS))
    assert o.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    want_o, want_final = reference64(inputs)
    assert_close(o, want_o, 1e-2, "o")
    assert_close(final[0], want_final, 1e-2, "final state")
