"""SSD's Pallas TPU backend: ``seqzoo.ops.ssd.pallas.ssd_on`` on the Mosaic-TPU chunked kernel.

The chunk is 128 (256 on v6e) whatever ``chunk_size`` below 128 the op passes. Tolerances: as
``seqzoo.kernels.mosaic_tpu_chunked``.
"""

from __future__ import annotations

import jax

from seqzoo.kernels.mosaic_tpu_chunked import Tiling, gated_linear_attention
from seqzoo.ops.ssd.pallas import ssd_on

Array = jax.Array


def ssd_kernel(x: Array, dt: Array, A: Array, B: Array, C: Array,
               initial_state: Array | None = None, *, chunk_size: int | None = None,
               tiling: Tiling | None = None,
               segments: int | None = None) -> tuple[Array, Array]:
    """``ssd_on`` (arguments and shapes there) on the TPU kernel."""
    return ssd_on(gated_linear_attention, x, dt, A, B, C, initial_state, chunk_size=chunk_size,
                  tiling=tiling, segments=segments)
