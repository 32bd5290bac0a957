"""The Mosaic-TPU chunked kernels (Pallas TPU interpret mode on CPU) against the XLA ops.

Outputs, final states and the gradient of every input (decays, key scales and initial states
included), each compared separately, of ``seqzoo.kernels.mosaic_tpu_chunked`` and its SSD /
Hydra adapters against ``seqzoo.ops.linear_attention`` (impl "chunk"), ``ssd`` and
``quasiseparable`` (impl "chunked"); lengths that are not multiples of the chunk (128), more
than one chunk. float32 inputs to ``F32_TOL``; bf16 inputs against the float32 op on the same
(bf16-rounded) values to ``BF16_TOL`` (measured: ~3e-3). Plus: forward and gradient lowered for
TPU on CPU contain the Mosaic kernel, and the VMEM model picks tilings within budget.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.kernels import mosaic_tpu_common as common
from seqzoo.kernels.mosaic_tpu_chunked import (
    Tiling,
    gated_linear_attention,
    linear_attention_kernel,
    pick_tiling,
    vmem_bytes,
)
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.quasiseparable.pallas_tpu import quasiseparable_kernel
from seqzoo.ops.ssd import ssd
from seqzoo.ops.ssd.pallas_tpu import ssd_kernel

F32_TOL, BF16_TOL = 1e-4, 6e-3  # relative L2 errors; measured <= 3.4e-5 and <= 2.9e-3


def relative_errors(got, want) -> dict:
    """||got - want|| / ||want|| per leaf, in float32 (every leaf finite)."""
    def err(a, b):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.isfinite(a).all()
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    return jax.tree.map(err, got, want)


def assert_close(got, want, tol):
    """Every leaf (outputs, states, each gradient) within ``tol``, reported by name."""
    errors = relative_errors(got, want)
    assert max(jax.tree.leaves(errors)) < tol, errors


@partial(jax.jit, static_argnums=0)
def value_and_grads(fn, args, cotangents):
    """fn(*args) and the gradients of sum(outputs * cotangents) w.r.t. every array in args."""
    def loss(args):
        outs = fn(*args)
        dots = [jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outs, cotangents, strict=True)]
        return sum(dots), outs

    (_, outs), grads = jax.value_and_grad(loss, has_aux=True)(args)
    return outs, grads


def normal(rng, *shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)


def as_f32(args):
    """The same values in float32 (bf16 inputs are exact there)."""
    return jax.tree.map(lambda a: a.astype(jnp.float32), args)


def compare(kernel_fn, reference_fn, args, rng, dtype, tol):
    """Kernel vs reference: outputs and every gradient, at random output cotangents."""
    shapes = jax.eval_shape(reference_fn, *as_f32(args))
    cotangents = tuple(normal(rng, *o.shape) for o in shapes)
    got = value_and_grads(kernel_fn, args, cotangents)
    want = value_and_grads(reference_fn, as_f32(args), cotangents)
    assert_close(got, want, tol)


def attention_args(decay, dtype, t, rng):
    """q, k (2, t, 2, 16), v (2, t, 2, 24), log decays (None, per head, per key), S_0."""
    q, k = (normal(rng, 2, t, 2, 16, dtype=dtype) for _ in range(2))
    v = normal(rng, 2, t, 2, 24, dtype=dtype)
    shape = {None: None, "head": (2, t, 2), "key": (2, t, 2, 16)}[decay]
    g = None if shape is None else -jax.nn.softplus(normal(rng, *shape))
    return (q, k, v, g, normal(rng, 2, 2, 16, 24))


def kernel_attention(q, k, v, g, s0):
    return linear_attention_kernel(q, k, v, g, scale=0.3, initial_state=s0)


def xla_attention(q, k, v, g, s0):
    return linear_attention(q, k, v, log_decay=g, scale=0.3, initial_state=s0,
                            return_final_state=True, chunk_size=32, impl="chunked")


@pytest.mark.parametrize("decay, t", [("head", 200), ("key", 150)])
def test_linear_attention_f32(decay, t):
    """Scalar (whole-chunk path) and per-key decays (sub-chunks, per-column gradient passes):
    two chunks, odd length, initial and final states."""
    rng = np.random.default_rng(1)
    args = attention_args(decay, jnp.float32, t, rng)
    compare(kernel_attention, xla_attention, args, rng, jnp.float32, F32_TOL)


def test_linear_attention_segments_bf16():
    """Two parallel segments of 150 steps (``chunked_segments``: the launch takes float32
    copies of q, k, v and its passes their bf16 values), per-key decays, against the float32
    op."""
    rng = np.random.default_rng(9)
    args = attention_args("key", jnp.bfloat16, 300, rng)

    def kernel(q, k, v, g, s0):
        return linear_attention_kernel(q, k, v, g, scale=0.3, initial_state=s0, segments=2)

    compare(kernel, xla_attention, args, rng, jnp.bfloat16, BF16_TOL)


def hydra_args(dtype, t, rng, heads=2, groups=1):
    """x (1, t, 2, 24), dt > 0 per direction, A < 0, B, C per direction (groups of heads)."""
    x = normal(rng, 1, t, heads, 24, dtype=dtype)
    dts = [jax.nn.softplus(normal(rng, 1, t, heads)) for _ in range(2)]
    A = -jnp.exp(normal(rng, heads))
    bc = [normal(rng, 1, t, groups, 16, dtype=dtype) for _ in range(4)]
    return (x, *dts, A, *bc)


def kernel_hydra(*args):
    return (quasiseparable_kernel(*args),)


def xla_hydra(*args):
    return (quasiseparable(*args, impl="chunked").astype(jnp.float32),)


def test_quasiseparable_bf16():
    """Hydra: both directions in one launch (the backward one reverse, index maps and branch
    per direction), dt as key scale, two heads on one group of B / C, bf16 operands with the
    split float32 intermediates of the gradient passes, against float32 XLA."""
    rng = np.random.default_rng(2)
    args = hydra_args(jnp.bfloat16, 140, rng)
    compare(kernel_hydra, xla_hydra, args, rng, jnp.bfloat16, BF16_TOL)


@pytest.mark.slow
def test_quasiseparable_f32():
    rng = np.random.default_rng(3)
    args = hydra_args(jnp.float32, 200, rng, heads=4, groups=2)
    compare(kernel_hydra, xla_hydra, args, rng, jnp.float32, F32_TOL)


def ssd_args(dtype, t, rng):
    """x (1, t, 4, 24), dt, A, B, C (2 groups), initial state (1, 4, 24, 16)."""
    x = normal(rng, 1, t, 4, 24, dtype=dtype)
    dt, A = jax.nn.softplus(normal(rng, 1, t, 4)), -jnp.exp(normal(rng, 4))
    B, C = (normal(rng, 1, t, 2, 16, dtype=dtype) for _ in range(2))
    return (x, dt, A, B, C, normal(rng, 1, 4, 24, 16))


def xla_ssd(*args):
    y, final = ssd(*args[:5], initial_state=args[5], return_final_state=True, impl="chunked")
    return y.astype(jnp.float32), final


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)])
def test_ssd(dtype, tol):
    rng = np.random.default_rng(4)
    compare(ssd_kernel, xla_ssd, ssd_args(dtype, 300, rng), rng, dtype, tol)


@pytest.mark.slow
@pytest.mark.parametrize("decay", [None, "head", "key"])
def test_linear_attention_bf16(decay):
    rng = np.random.default_rng(5)
    args = attention_args(decay, jnp.bfloat16, 150, rng)
    compare(kernel_attention, xla_attention, args, rng, jnp.bfloat16, BF16_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("decay", ["head", "key"])
def test_v6e_tiling(decay):
    """Chunk 256 and 256-wide value blocks (v6e's tiling), with two value blocks per head."""
    rng = np.random.default_rng(8)
    q, k, _, g, _ = attention_args(decay, jnp.float32, 300, rng)
    v, s0 = normal(rng, 2, 300, 2, 400), normal(rng, 2, 2, 16, 400)
    tiling = Tiling(chunk=256, block_v=256)

    def kernel(q, k, v, g, s0):
        return linear_attention_kernel(q, k, v, g, scale=0.3, initial_state=s0, tiling=tiling)

    compare(kernel, xla_attention, (q, k, v, g, s0), rng, jnp.float32, F32_TOL)


def flipped(x, axis=1):
    return None if x is None else jnp.flip(x, axis)


@pytest.mark.slow
@pytest.mark.parametrize("decay", [None, "head"])
def test_reverse_direction(decay):
    """reverse=(True,): the XLA op on the flipped sequence, decays moved one step later
    (o_i collects keys j >= i decayed by g_{i+1} .. g_j); the final state is the state
    before t = 0."""
    rng = np.random.default_rng(6)
    args = attention_args(decay, jnp.float32, 150, rng)

    def kernel(q, k, v, g, s0):
        lead = [None if a is None else a[None] for a in (q, k, v, g, s0)]
        o, final = gated_linear_attention(*lead[:4], None, lead[4], scale=0.3, reverse=(True,))
        return o[0], final[0]

    def reference(q, k, v, g, s0):
        later = None if g is None else jnp.pad(g[:, 1:], ((0, 0), (0, 1), (0, 0)))
        o, final = xla_attention(*(flipped(a) for a in (q, k, v, later)), s0)
        if g is not None:  # the kernel's state before t = 0 has also decayed by g_0
            final = final * jnp.exp(g[:, 0])[..., None, None]
        return flipped(o), final

    compare(kernel, reference, args, rng, jnp.float32, F32_TOL)


def test_lowers_for_tpu_with_mosaic_kernels():
    """Forward and gradient of every decay (and Hydra's two directions), compiled
    (``Tiling(interpret=False)``: what a TPU backend of the ops passes), lower for TPU on this
    CPU machine to exactly four Mosaic custom calls, no interpreter callbacks: block shapes,
    index maps and every in-kernel op pass Pallas' Mosaic lowering."""
    rng = np.random.default_rng(7)
    compiled = Tiling(interpret=False)

    def lowered(fn, args, argnums):
        grad = jax.grad(fn, argnums=argnums)
        return jax.jit(grad).trace(*args).lower(lowering_platforms=("tpu",)).as_text()

    for decay in (None, "head", "key"):
        args = attention_args(decay, jnp.bfloat16, 200, rng)

        def loss(q, k, v, g, s0):
            o, final = linear_attention_kernel(q, k, v, g, scale=0.3, initial_state=s0,
                                               tiling=compiled)
            return jnp.sum(o.astype(jnp.float32)) + jnp.sum(final)

        text = lowered(loss, args, (0, 1, 2, 4) if decay is None else (0, 1, 2, 3, 4))
        assert text.count("tpu_custom_call") == 4, decay  # forward + three backward passes
        assert "callback" not in text, decay
    text = lowered(lambda *a: jnp.sum(quasiseparable_kernel(*a, tiling=compiled)),
                   hydra_args(jnp.bfloat16, 200, rng), tuple(range(8)))
    assert text.count("tpu_custom_call") == 4 and "callback" not in text


def test_tilings_fit_each_generation():
    """The picked tiling's working set is within the generation's scoped VMEM default (or a
    raised limit below its VMEM), chunk = the MXU's side, block_v divides the padded dv."""
    for gen in common.GENERATIONS.values():
        for decay in (None, "scalar", "key"):
            for dk, dv in ((16, 24), (128, 64), (128, 128), (256, 512)):
                tiling = pick_tiling(decay, dk, dv, 2, gen)
                need = vmem_bytes(tiling, decay, -(-dk // 128) * 128, 2)
                limit = tiling.vmem_limit_bytes or gen.scoped_vmem
                assert need <= limit <= gen.vmem, (gen.name, decay, dk, dv, tiling)
                assert tiling.chunk == gen.mxu and (-(-dv // 128) * 128) % tiling.block_v == 0
    assert pick_tiling("key", 4096, 128, 2, common.GENERATIONS["v5e"]).vmem_limit_bytes
    with pytest.raises(ValueError):
        Tiling(chunk=64)
