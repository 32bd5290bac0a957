"""The Mosaic-TPU linear-recurrence kernel, in TPU interpret mode, against the XLA op.

Outputs, final state and the gradients w.r.t. a, b and the initial state, each compared on its
own against ``seqzoo.ops.linear_recurrence(impl="sequential")``: real and complex, both
directions, odd lengths over several time blocks (a partial last one), a ragged channel block,
bf16 against float32; the forward and backward kernels lowered for TPU on this machine; the
block choice within the VMEM budget.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ops_recurrence import make_inputs
from tpu_checks import assert_each_close, assert_each_rel_l2, tpu_kernel_launches, value_and_grads

from seqzoo.kernels import mosaic_tpu_common as common
from seqzoo.kernels import mosaic_tpu_recurrence as kernel
from seqzoo.ops import linear_recurrence

TOL = dict(rtol=1e-5, atol=1e-5)
# relative L2, bf16 inputs against float32 on the same values: measured 1.4e-3 .. 2.7e-3
# (the XLA op on bf16 inputs: 1.4e-3 .. 2.3e-3)
BF16_TOL = 1e-2


def _kernel(reverse, **blocks):
    def fn(a, b, initial_state):
        return kernel.linear_recurrence(a, b, initial_state, reverse=reverse, **blocks)
    return fn


def _xla(reverse):
    return partial(linear_recurrence, reverse=reverse, return_final_state=True,
                   impl="sequential")


def _inputs(length, complex_=False, shape=(2, 3)):
    a, b, h0 = make_inputs(length, complex_=complex_, shape=shape)
    cot = tuple(make_inputs(length, complex_=complex_, shape=shape, seed=1)[1:])
    return dict(a=a, b=b, initial_state=h0), cot


@pytest.mark.parametrize(
    "length, complex_, reverse, channels, blocks",
    [
        (37, False, False, 3, dict(block_time=16)),
        (37, False, True, 3, dict(block_time=16)),
        (33, True, True, 130, dict(block_time=8, block_channels=128)),
        (33, True, False, 3, {}),
    ],
    ids=["B2-T37-D3-f32-forward-3blocks", "B2-T37-D3-f32-reverse-3blocks",
         "B2-T33-D130-c64-reverse-5x2blocks", "B2-T33-D3-c64-forward-1block"],
)
def test_values_and_gradients(length, complex_, reverse, channels, blocks):
    inputs, cot = _inputs(length, complex_, shape=(2, channels))
    run = jax.jit(partial(value_and_grads, cotangents=cot), static_argnums=0)
    outs, grads = run(_kernel(reverse, **blocks), inputs)
    want_outs, want_grads = run(_xla(reverse), inputs)
    assert_each_close(outs, want_outs, **TOL)
    assert_each_close(grads, want_grads, **TOL)


def test_bf16_against_float32():
    """bf16 a, b, initial state (16-row tiles, 3 time blocks): float32 inside, rounded once on
    output; against the float32 op on the same values (da uses the bf16-rounded stored
    states)."""
    inputs, cot = _inputs(37)
    bf16 = {k: v.astype(jnp.bfloat16) for k, v in inputs.items()}
    run = jax.jit(partial(value_and_grads, cotangents=cot), static_argnums=0)
    outs, grads = run(_kernel(False, block_time=16), bf16)
    assert outs["out"].dtype == jnp.bfloat16 and grads["a"].dtype == jnp.bfloat16
    want_outs, want_grads = run(_xla(False), {k: v.astype(jnp.float32) for k, v in bf16.items()})
    assert_each_rel_l2(outs, want_outs, BF16_TOL)
    assert_each_rel_l2(grads, want_grads, BF16_TOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64])
def test_forward_and_gradient_lower_for_tpu(dtype):
    """jit(grad) lowered for TPU on this machine: one forward and one backward Mosaic kernel."""
    a = jnp.ones((2, 300, 640), dtype)
    h0 = jnp.ones((2, 640), dtype)

    def loss(a, b, h0):
        h, last = kernel.linear_recurrence(a, b, h0, reverse=True, interpret=False)
        return jnp.real(jnp.sum(h) + jnp.sum(last)).astype(jnp.float32)

    assert tpu_kernel_launches(jax.grad(loss, argnums=(0, 1, 2)), a, a, h0) == 2


@pytest.mark.parametrize("dtype, planes", [(np.float32, 1), (jnp.bfloat16, 1), (np.float32, 2)])
def test_default_blocks_fit_the_budget(dtype, planes):
    itemsize = np.dtype(dtype).itemsize
    rows = common.tile_rows(dtype)
    for length, channels in [(4096, 2048), (5, 3), (1000, 130)]:
        block_time, block_channels = kernel.default_blocks(length, channels, planes,
                                                           (itemsize,) * 5, rows)
        assert block_time % rows == 0 and block_time <= max(common.round_up(length, rows), 16)
        assert block_channels == channels or block_channels % 128 == 0
        assert kernel.working_set(block_time, block_channels, planes,
                                  (itemsize,) * 5) <= common.vmem_budget()
