"""The Pallas selective-scan kernel (interpret mode on CPU) against Mamba-1's per-step loop.

Outputs, final state and the gradients w.r.t. every input (u, delta, A, B, C, D, z, delta_bias,
initial state) with packed segments, B/C groups, lengths that are not multiples of the chunk,
a state size that is not a power of two, optional arguments absent, bf16, vanishing decays,
vmap. ``impl="pallas"`` on the op is the path under test.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ops_selective_scan import (
    BATCH,
    D_INNER,
    N,
    assert_tree_close,
    cotangent,
    make_inputs,
    reference,
    value_and_vjp,
)

from seqzoo.ops.scan import pallas_gpu_selective as kernel
from seqzoo.ops.scan import selective_scan

PALLAS = partial(selective_scan, delta_softplus=True, return_final_state=True, impl="pallas")
REFERENCE = partial(reference, delta_softplus=True)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)  # sums over the sequence (dA, dD, d delta_bias)


def at_launch(**launch):
    """The kernel (softplus, no packed segments) at the given launch parameters, called as the
    op is by ``check_against_reference``."""

    def fn(segment_ids=None, **kw):
        assert segment_ids is None
        return kernel.selective_scan(**kw, delta_softplus=True, **launch)

    return fn


def check_against_reference(fn, inputs, segment_ids, ref=REFERENCE):
    length = inputs["u"].shape[1]
    d, n = inputs["A"].shape
    cot = (cotangent((BATCH, length, d), 7), cotangent((BATCH, d, n), 8))
    outs, grads = value_and_vjp(fn, inputs, segment_ids, cot)
    want_outs, want = value_and_vjp(ref, inputs, segment_ids, cot)
    assert_tree_close(outs, want_outs, ("out", "final_state"))
    assert_tree_close(grads.values(), want.values(), grads.keys(), **GRAD_TOL)


@pytest.mark.parametrize("groups", [None, 2], ids=["B2-L37-D8-N4-shared-BC", "B2-L37-D8-N4-g2"])
def test_values_and_gradients_packed(groups):
    """Every argument, two packed segments in one row; 37 steps: chunks of 8 (16 when not
    differentiated) and a ragged last one."""
    inputs = make_inputs(37, groups)
    ids = jnp.array([[0] * 10 + [1] * 27, [4] * 37])
    check_against_reference(PALLAS, inputs, ids)


def test_gradients_with_b_c_summed_within_warps():
    """dB and dC summed over each warp's channels every step and across warps once a chunk
    (``Config.bc_parts`` below the channel block: n = 16, 2 warps, checkpoints of 32 steps;
    the other tests keep every channel apart a chunk long), 40 steps: a ragged second chunk."""
    rng = np.random.default_rng(3)
    length, n = 40, 16

    def normal(*shape, shift=0.0):
        return jnp.asarray(rng.standard_normal(shape, np.float32) + shift)

    inputs = dict(u=normal(BATCH, length, D_INNER), delta=normal(BATCH, length, D_INNER, shift=-1),
                  A=-jnp.exp(normal(D_INNER, n)), B=normal(BATCH, length, n),
                  C=normal(BATCH, length, n), D=normal(D_INNER), z=normal(BATCH, length, D_INNER),
                  delta_bias=normal(D_INNER), initial_state=normal(BATCH, D_INNER, n))
    launch = dict(chunk=32, checkpoint=32, width=D_INNER, num_warps=2, grad_width=D_INNER,
                  grad_num_warps=2, save_width=D_INNER, save_num_warps=2)
    cfg = kernel.Config(length, D_INNER, n, D_INNER, True, True, False, approx_exp=True,
                        **launch)
    assert cfg.backward().bc_parts == 2

    check_against_reference(at_launch(**launch), inputs, None)


@pytest.mark.parametrize("saving", ["as-backward", "as-forward"])
@pytest.mark.parametrize("groups", [None, 2], ids=["shared-BC", "g2"])
def test_gradients_at_a_launch_of_their_own(groups, saving):
    """Differentiated, the backward runs at its own launch (``grad_width``,
    ``grad_num_warps``), here narrower than the forward's: four blocks of 2 channels write
    partial dB, dC that the wrapper sums (within each group); the forward that saves the
    checkpoints runs at the backward's launch or at the forward's (``save_width``,
    ``save_num_warps``: one block of every channel), the checkpoints the same either way."""
    save = (2, 1) if saving == "as-backward" else (D_INNER, 4)
    launch = dict(chunk=16, width=D_INNER, num_warps=4, checkpoint=4, grad_width=2,
                  grad_num_warps=1, save_width=save[0], save_num_warps=save[1])

    check_against_reference(at_launch(**launch), make_inputs(21, groups), None)


def test_minimal_arguments_odd_sizes_and_vanishing_decays():
    """No D, z, delta_bias, initial state; d=6 (not a multiple of the channel block) and n=3
    (padded to 4 inside); one channel's decay underflows to exactly 0 (A = -1e4)."""
    full = make_inputs(20)
    inputs = dict(u=full["u"][..., :6], delta=full["delta"][..., :6],
                  A=full["A"][:6, :3].at[0].set(-1e4), B=full["B"][..., :3],
                  C=full["C"][..., :3])
    check_against_reference(partial(PALLAS, delta_softplus=False), inputs, None,
                            ref=partial(reference, delta_softplus=False))


def test_bf16_inputs_under_vmap():
    """bf16 u, delta, z, B, C (f32 inside, bf16 output), vmapped over an extra axis, with a
    small chunk and channel block (launch parameters move work, never change results)."""
    inputs = make_inputs(24, groups=2)
    low = {k: v.astype(jnp.bfloat16) if k in ("u", "delta", "z", "B", "C") else v
           for k, v in inputs.items()}
    stacked = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), low)
    run = partial(kernel.selective_scan, delta_softplus=True, chunk=4, width=2)
    out, last = jax.jit(jax.vmap(lambda kw: run(**kw)))(stacked)
    assert out.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    for i in range(2):
        one = jax.tree.map(lambda x, i=i: x[i].astype(jnp.float32), stacked)
        want, want_last = REFERENCE(**one)
        np.testing.assert_allclose(np.asarray(out[i], np.float32), want, rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(last[i], want_last, rtol=1e-4, atol=1e-4)


def test_shapes():
    inputs = make_inputs(5)
    out, last = PALLAS(**inputs)
    assert out.shape == (BATCH, 5, D_INNER) and last.shape == (BATCH, D_INNER, N)
