"""Hydra's Pallas GPU backend: ``seqzoo.ops.quasiseparable.pallas.quasiseparable_on`` on the Triton
chunked kernel, both directions in one launch. Tolerances: as the chunked kernels'.
"""

from __future__ import annotations

import functools

import jax

from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention
from seqzoo.ops.quasiseparable.pallas import quasiseparable_on

Array = jax.Array


def quasiseparable_kernel(x: Array, dt_fwd: Array, dt_bwd: Array, A: Array, B_fwd: Array,
                          C_fwd: Array, B_bwd: Array, C_bwd: Array, *,
                          chunk_size: int = 64, precision: str | None = None) -> Array:
    """``quasiseparable_on`` (arguments there) on the Triton kernel; ``precision``: of float32
    matmuls, as ``gated_linear_attention``. Returns (b, l, h, p) float32."""
    attention = functools.partial(gated_linear_attention, precision=precision)
    return quasiseparable_on(attention, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd,
                             chunk_size=chunk_size)
