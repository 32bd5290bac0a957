"""The Mosaic-TPU selective-scan kernel, in TPU interpret mode, against the XLA op.

Output, final state and the gradient w.r.t. every input (u, delta, A, B, C, D, z, delta_bias,
initial state), each compared on its own against ``seqzoo.ops.selective_scan(impl=
"sequential")``: B/C in groups with packed segments; in reverse (against the op on the
time-reversed sequence) over several time blocks (a partial last one, time blocks sharing one
B/C block) and a ragged channel block; bf16 against float32 over several time blocks; forward
and backward kernels lowered for TPU on this machine; the block choice within the VMEM budget.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ops_selective_scan import BATCH, cotangent, make_inputs
from tpu_checks import assert_each_close, assert_each_rel_l2, tpu_kernel_launches, value_and_grads

from seqzoo.kernels import mosaic_tpu_common as common
from seqzoo.kernels import mosaic_tpu_selective_scan as kernel
from seqzoo.ops import selective_scan
from seqzoo.ops.segments import segment_starts

TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)  # dA, dD, d delta_bias sum over the whole sequence
# relative L2, bf16 u, delta, z, B, C against float32 on the same values: measured 1.1e-3 ..
# 2.8e-3 (final state 3e-8: float32); the XLA op on the same bf16 inputs: 1.1e-3 .. 3.1e-3
BF16_TOL = 1e-2


def _kernel(segment_ids=None, **options):
    def fn(**kw):
        resets = None if segment_ids is None else segment_starts(segment_ids, *kw["u"].shape[:2])
        return kernel.selective_scan(**kw, delta_softplus=True, resets=resets, **options)
    return fn


def _xla(segment_ids=None, reverse=False):
    scan = partial(selective_scan, delta_softplus=True, return_final_state=True,
                   segment_ids=segment_ids, impl="sequential")
    if not reverse:
        return scan

    def flipped(**kw):  # the op has no reverse: the scan of the time-reversed sequence
        out, last = scan(**{k: jnp.flip(v, 1) if k in ("u", "delta", "z", "B", "C") else v
                            for k, v in kw.items()})
        return jnp.flip(out, 1), last
    return flipped


def _check(inputs, segment_ids=None, **options):
    length, (d, n) = inputs["u"].shape[1], inputs["A"].shape
    cot = (cotangent((BATCH, length, d), 7), cotangent((BATCH, d, n), 8))
    run = jax.jit(partial(value_and_grads, cotangents=cot), static_argnums=0)
    outs, grads = run(_kernel(segment_ids, **options), inputs)
    want_outs, want_grads = run(_xla(segment_ids, options.get("reverse", False)), inputs)
    assert_each_close(outs, want_outs, **TOL)
    assert_each_close(grads, want_grads, **GRAD_TOL)


def test_values_and_gradients_groups_and_packed_segments():
    """Every argument; B, C in 2 groups (one block holds both); two packed segments in one row;
    37 steps in one block of 40 rows."""
    ids = jnp.array([[0] * 10 + [1] * 27, [4] * 37])
    _check(make_inputs(37, groups=2), ids)


def test_values_and_gradients_reverse_over_blocks():
    """From the end (against the op on the time-reversed sequence): 130 steps in blocks of 64
    (3 time blocks, the last partial, visited first; all three share one 128-step B/C block),
    160 channels in blocks of 128 (the second ragged), shared B/C, no D, z or delta_bias."""
    rng = np.random.default_rng(3)
    length, d, n = 130, 160, 4

    def normal(*shape, shift=0.0):
        return jnp.asarray(rng.standard_normal(shape, np.float32) + shift)

    inputs = dict(u=normal(BATCH, length, d), delta=normal(BATCH, length, d, shift=-1.0),
                  A=-jnp.exp(normal(d, n)), B=normal(BATCH, length, n),
                  C=normal(BATCH, length, n), initial_state=normal(BATCH, d, n))
    _check(inputs, reverse=True, block_time=64, block_channels=128)


def test_bf16_against_float32():
    """bf16 u, delta, z, B, C (16-row tiles, 3 time blocks): float32 inside, outputs and
    gradients rounded once; against the float32 op on the same values."""
    inputs = make_inputs(37, groups=2)
    bf16 = {k: v.astype(jnp.bfloat16) if k in ("u", "delta", "z", "B", "C") else v
            for k, v in inputs.items()}
    cot = (cotangent((BATCH, 37, 8), 7), cotangent((BATCH, 8, 4), 8))
    run = jax.jit(partial(value_and_grads, cotangents=cot), static_argnums=0)
    outs, grads = run(_kernel(block_time=16), bf16)
    assert outs["out"].dtype == jnp.bfloat16 and grads["u"].dtype == jnp.bfloat16
    want_outs, want_grads = run(_xla(), {k: v.astype(jnp.float32) for k, v in bf16.items()})
    assert_each_rel_l2(outs, want_outs, BF16_TOL)
    assert_each_rel_l2(grads, want_grads, BF16_TOL)


@pytest.mark.parametrize(
    "dtype, shape, reverse",
    [(jnp.float32, (2, 300, 256, 16, 2), True), (jnp.bfloat16, (2, 37, 8, 4, None), False)],
    ids=["f32-T300-D256-N16-g2-reverse", "bf16-T37-D8-N4-shared"],
)
def test_forward_and_gradient_lower_for_tpu(dtype, shape, reverse):
    """jit(grad) over every input, with gate, bias, skip, initial state and resets, lowered for
    TPU on this machine: one forward and one backward Mosaic kernel."""
    batch, length, d, n, groups = shape
    u = jnp.ones((batch, length, d), dtype)
    bc = jnp.ones((batch, length, n) if groups is None else (batch, length, groups, n), dtype)
    resets = jnp.zeros((batch, length), bool)

    def loss(u, delta, A, B, C, D, z, bias, x0):
        y, last = kernel.selective_scan(u, delta, A, B, C, D, z, bias, True, x0, resets,
                                        reverse=reverse, interpret=False)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(last)

    args = (u, u, -jnp.ones((d, n)), bc, bc, jnp.ones(d), u, jnp.ones(d),
            jnp.ones((batch, d, n)))
    assert tpu_kernel_launches(jax.grad(loss, argnums=tuple(range(9))), *args) == 2


@pytest.mark.parametrize(
    "length, d, n, groups",
    [(4096, 2048, 16, 1), (2048, 5120, 16, 1), (100, 256, 16, 2), (4096, 1536, 16, 8),
     (1024, 1024, 64, 1), (4096, 96, 16, 3)],
)
def test_default_blocks_fit_the_budget(length, d, n, groups):
    """Mamba-sized shapes: blocks of whole groups (or inside one), time blocks of 128 lanes'
    multiples (or the whole short sequence), within the budget."""
    itemsizes = (4, 4, 4, 2)
    block_time, block_channels = kernel.default_blocks(length, d, n, groups, 8, itemsizes)
    size = d // groups
    assert block_channels == d or (block_channels % 128 == 0
                                   and (size % block_channels == 0 or block_channels % size == 0))
    assert block_time % 128 == 0 or block_time >= length
    per_block = max(1, block_channels // size)
    assert kernel.working_set(block_time, block_channels, n, per_block,
                              itemsizes) <= common.vmem_budget()


def test_no_block_fits_a_huge_state():
    with pytest.raises(ValueError, match="VMEM budget"):
        kernel.default_blocks(4096, 2048, 4096, 1, 8, (4, 4, 4, 2))
