"""Hydra's Pallas TPU backend: ``seqzoo.ops.quasiseparable.pallas.quasiseparable_on`` on the
Mosaic-TPU chunked kernel, both directions in one launch. The chunk is 128 (256 on v6e).
Tolerances: as ``seqzoo.kernels.mosaic_tpu_chunked``.
"""

from __future__ import annotations

import jax

from seqzoo.kernels.mosaic_tpu_chunked import Tiling, gated_linear_attention
from seqzoo.ops.quasiseparable.pallas import quasiseparable_on

Array = jax.Array


def quasiseparable_kernel(x: Array, dt_fwd: Array, dt_bwd: Array, A: Array, B_fwd: Array,
                          C_fwd: Array, B_bwd: Array, C_bwd: Array, *,
                          chunk_size: int | None = None, tiling: Tiling | None = None) -> Array:
    """``quasiseparable_on`` (arguments there) on the Mosaic-TPU kernel. Returns (b, l, h, p)
    float32."""
    return quasiseparable_on(gated_linear_attention, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd,
                             C_bwd, chunk_size=chunk_size, tiling=tiling)
