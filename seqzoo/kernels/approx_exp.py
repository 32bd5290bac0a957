"""``exp`` and ``exp2`` inside seqzoo's Pallas GPU kernels as one hardware instruction each.

    exp2(x) = 2^x                      PTX ``ex2.approx.ftz.f32`` (one MUFU.EX2)
    exp(x)  = exp2(x log2 e)           a multiply and the same instruction (Triton's ``tl.exp``)

Pallas' Triton lowering calls libdevice for ``jnp.exp`` (``__nv_expf``: a range reduction
around the exponential unit) and ``jnp.exp2`` (``__nv_exp2f``); Triton's own ``tl.exp``, which
fla's kernels use, is a multiply and ``ex2.approx``. ``ex2.approx.ftz.f32``: relative error
below 2^-22 (PTX ISA), subnormal inputs and results flushed to zero (a decay below 2^-126
becomes 0). ``exp``'s argument is rounded once more by the multiply: a relative error of about
``|x| 2^-24`` in the result (1e-5 at x = -100, where the result is 4e-44 anyway).

``approx=False``, a kernel interpreted on a CPU (``launch.kernels_compiled()`` False) or
compiled for ROCm (no PTX) gives ``jnp.exp`` / ``jnp.exp2`` unchanged. float32 only (the
kernels' decays are float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as plgpu

from seqzoo.kernels import launch

Array = jax.Array
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x log2 e)


def _ex2_approx(x: Array) -> Array:
    if x.dtype != jnp.float32:
        raise TypeError(f"approx_exp takes float32, got {x.dtype}")
    [result] = plgpu.elementwise_inline_asm(
        "ex2.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, x.dtype)])
    return result


def _compiled(approx: bool) -> bool:
    return approx and launch.ptx_inlinable()


def exp2(x: Array, approx: bool = True) -> Array:
    """``2^x`` elementwise in a Pallas kernel: ``ex2.approx.ftz.f32`` where ``approx`` and
    compiled for an NVIDIA GPU, else ``jnp.exp2``."""
    return _ex2_approx(x) if _compiled(approx) else jnp.exp2(x)


def exp(x: Array, approx: bool = True) -> Array:
    """``e^x`` elementwise in a Pallas kernel: ``exp2(x log2 e)`` by ``ex2.approx.ftz.f32``
    where ``approx`` and compiled for an NVIDIA GPU, else ``jnp.exp``."""
    return _ex2_approx(x * LOG2E) if _compiled(approx) else jnp.exp(x)
