"""SSD's Pallas GPU backend: ``seqzoo.ops.ssd.pallas.ssd_on`` on the Triton chunked kernel.

Tolerances: as ``seqzoo.ops.linear_attention.pallas_gpu``, whose ``gated_linear_attention``
this runs.
"""

from __future__ import annotations

import functools

import jax

from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention
from seqzoo.ops.ssd.pallas import ssd_on

Array = jax.Array


def ssd_kernel(x: Array, dt: Array, A: Array, B: Array, C: Array,
               initial_state: Array | None = None, *, chunk_size: int = 64,
               tiling: Tiling | None = None,
               precision: str | None = None,
               segments: int | None = None) -> tuple[Array, Array]:
    """``ssd_on`` (arguments and shapes there) on the GPU kernel; ``tiling`` default: the
    GPU's resolved tiling; ``precision``: of float32 matmuls, as ``gated_linear_attention``."""
    attention = functools.partial(gated_linear_attention, precision=precision)
    return ssd_on(attention, x, dt, A, B, C, initial_state, chunk_size=chunk_size, tiling=tiling,
                  segments=segments)
