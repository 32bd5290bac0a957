"""``seqzoo.kernels.approx_exp``: jnp's functions where interpreted, one ``ex2.approx.ftz.f32``
per element where lowered for a GPU (no libdevice call left), in the kernels that take it: the
GLA scores and their VJP, the selective scan, the chunked passes."""

from __future__ import annotations

import dataclasses
import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpu_lowering import triton_modules

from seqzoo.kernels import approx_exp, launch
from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.ops.linear_attention import pallas_gpu_intra, pallas_gpu_intra_bwd
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention
from seqzoo.ops.scan import pallas_gpu_selective

compiled = mock.patch.object(launch, "kernels_compiled", lambda: True)


def _elementwise(fn, approx):
    def kernel(x_ref, o_ref):
        o_ref[...] = fn(x_ref[...], approx)
    return lambda x: launch.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)


@pytest.mark.parametrize("fn, ref", [(approx_exp.exp, np.exp), (approx_exp.exp2, np.exp2)])
def test_interpreted_is_jnp(fn, ref):
    """On a CPU the kernel is interpreted: the exact functions, whatever ``approx`` says."""
    x = jnp.linspace(-80.0, 5.0, 64, dtype=jnp.float32).reshape(4, 16)
    for approx in (True, False):
        out = _elementwise(fn, approx)(x)
        np.testing.assert_allclose(np.asarray(out), ref(np.asarray(x, np.float64)), rtol=2e-6)


@pytest.mark.parametrize("fn, libdevice", [(approx_exp.exp, "__nv_expf"),
                                           (approx_exp.exp2, "__nv_exp2f")])
def test_lowers_to_one_instruction(fn, libdevice):
    x = jnp.zeros((16, 16), jnp.float32)
    with compiled:
        (fast,) = triton_modules(_elementwise(fn, True), x)
        (exact,) = triton_modules(_elementwise(fn, False), x)
    assert fast.count("ex2.approx.ftz.f32") == 1 and "__nv_exp" not in fast
    assert libdevice in exact and "ex2.approx" not in exact


def test_no_inline_ptx_for_rocm():
    """Compiled for a GPU that is not NVIDIA's (``launch.ptx_inlinable`` False): libdevice."""
    x = jnp.zeros((16, 16), jnp.float32)
    with compiled, mock.patch.object(launch, "ptx_inlinable", lambda: False):
        (module,) = triton_modules(_elementwise(approx_exp.exp, True), x)
    assert "__nv_expf" in module and "ex2.approx" not in module


def test_refuses_16_bit():
    with compiled, pytest.raises(TypeError, match="approx_exp takes float32"):
        triton_modules(_elementwise(approx_exp.exp2, True), jnp.zeros((16, 16), jnp.bfloat16))


def _exponentials(module: str) -> tuple[int, int]:
    return module.count("ex2.approx.ftz.f32"), module.count("__nv_exp")


def test_gla_scores_kernels_take_it():
    """The scores kernel (both launches, both diagonals) and its VJP kernel: every exponential
    one instruction with ``approx_exp``, none without."""
    q = jnp.ones((1, 1, 64, 1, 64), jnp.bfloat16)
    g = jnp.zeros((1, 1, 64, 1, 64), jnp.float32)
    d_scores = jnp.zeros((1, 1, 1, 64, 64), jnp.float32)
    for base in (pallas_gpu_intra.MEASURED, pallas_gpu_intra.ScoresTiling()):
        for approx in (False, True):
            tiling = dataclasses.replace(base, approx_exp=approx)
            with compiled:
                (scores,) = triton_modules(functools.partial(
                    pallas_gpu_intra.intra_chunk_scores, sub=16, dtype=jnp.bfloat16,
                    tiling=tiling), q, q, g)
                (vjp,) = triton_modules(functools.partial(
                    pallas_gpu_intra_bwd.scores_vjp, sub=16, dtype=jnp.bfloat16, tiling=tiling),
                    q, q, g, d_scores)
            for module in (scores, vjp):
                fast, libdevice = _exponentials(module)
                assert (fast > 0, libdevice > 0) == (approx, not approx)


def selective_scan_modules(approx: bool) -> list[str]:
    """The Triton modules of the selective scan's gradient lowered for a GPU (bf16, softplus):
    the forward saving checkpoints, then the backward."""
    b, length, d, n = 1, 16, 32, 16
    u = jnp.ones((b, length, d), jnp.bfloat16)
    A = -jnp.ones((d, n), jnp.float32)
    B = jnp.ones((b, length, n), jnp.bfloat16)

    def loss(u):
        out, _ = pallas_gpu_selective.selective_scan(u, u, A, B, B, delta_softplus=True,
                                                     approx_exp=approx)
        return out.astype(jnp.float32).sum()

    with compiled:
        modules = triton_modules(jax.grad(loss), u)
    assert len(modules) == 2
    return modules


def test_selective_scan_takes_it():
    """The selective scan's forward and backward kernels: the decays by one instruction."""
    for approx in (False, True):
        for module in selective_scan_modules(approx):
            fast, _ = _exponentials(module)
            assert (fast > 0) == approx
            assert ("__nv_exp2f" in module) == (not approx)


@pytest.mark.parametrize("decay", ["scalar", "key"])
def test_chunked_passes_take_it(decay):
    """The chunked kernel's passes, forward and backward: every exponential one instruction
    with ``Tiling.approx_exp``, libdevice's ``expf`` without."""
    b, t, h, d = 1, 64, 2, 32
    q = jnp.ones((1, b, t, h, d), jnp.bfloat16)
    g = -jnp.ones((1, b, t, h) + ((d,) if decay == "key" else ()), jnp.float32)

    def loss(q, g, tiling):
        o, _ = gated_linear_attention(q, q, q, g, None, None, scale=0.5, tiling=tiling)
        return o.astype(jnp.float32).sum()

    for approx in (False, True):
        tiling = Tiling(chunk=32, approx_exp=approx)
        with compiled:
            modules = triton_modules(jax.grad(functools.partial(loss, tiling=tiling), (0, 1)),
                                     q, g)
        passes = [m for m in modules if "chunked_pass" in m]
        assert len(passes) == 4  # the forward, then dq, dv and dk
        for module in passes:
            fast, _ = _exponentials(module)
            assert (fast > 0) == approx
            assert ("__nv_expf" in module) == (not approx)
