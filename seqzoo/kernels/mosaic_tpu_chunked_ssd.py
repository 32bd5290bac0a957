"""Mamba-2's SSD and Hydra's quasiseparable mixer on the Mosaic-TPU chunked kernels.

The adapters of ``chunked_ssd`` (its docstring has the mapping: q = C, k = B, v = x, log decay
``dt A``, ``dt`` as the key scale inside the kernel; Hydra as one launch of two directions, the
backward one reverse with its log decays moved one step later), on
``mosaic_tpu_chunked.gated_linear_attention``. D, the z gate and the one-step shifts stay with
the ops (elementwise, XLA). The chunk is 128 (256 on v6e) whatever ``chunk_size`` below 128 an
op passes (``chunk_size`` None: the tiling's). Tolerances: as ``mosaic_tpu_chunked``.
"""

from __future__ import annotations

import jax

from seqzoo.kernels.chunked_ssd import quasiseparable_on, ssd_on
from seqzoo.kernels.mosaic_tpu_chunked import Tiling, gated_linear_attention

Array = jax.Array


def ssd_kernel(x: Array, dt: Array, A: Array, B: Array, C: Array,
               initial_state: Array | None = None, *, chunk_size: int | None = None,
               tiling: Tiling | None = None) -> tuple[Array, Array]:
    """``y`` of ``seqzoo.ops.ssd`` without D and z, on a TPU; dt already discretised.

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); initial_state: (b, h, p, n).
    Returns y: (b, l, h, p) in x's dtype and the final state (b, h, p, n) float32.
    """
    return ssd_on(gated_linear_attention, x, dt, A, B, C, initial_state,
                  chunk_size=chunk_size, tiling=tiling)


def quasiseparable_kernel(x: Array, dt_fwd: Array, dt_bwd: Array, A: Array, B_fwd: Array,
                          C_fwd: Array, B_bwd: Array, C_bwd: Array, *,
                          chunk_size: int | None = None, tiling: Tiling | None = None) -> Array:
    """``shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x))))`` of ``seqzoo.ops.quasiseparable``
    on a TPU, both directions in one launch. Arguments as there (dt already discretised; no
    D). Returns (b, l, h, p) float32.
    """
    return quasiseparable_on(gated_linear_attention, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd,
                             C_bwd, chunk_size=chunk_size, tiling=tiling)
