"""Mamba-2's SSD on a chunked gated-linear-attention Pallas kernel (GPU or TPU).

SSD is scalar-decay linear attention (Dao & Gu, 2024): with q = C, k = B, v = x, log decay
``dt A`` and the key scaled by ``dt`` (inside the kernel, so ``x dt`` is never written),

    H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T,   y_t = H_t C_t   (H_t: (headdim, n) = S_t^T).

The ``D`` skip and the ``z`` gate stay with the op (elementwise, in XLA). ``pallas_gpu.py`` and
``pallas_tpu.py`` run this on their kernel's ``gated_linear_attention``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_segments import segmented

Array = jax.Array
_F32 = jnp.float32


def ssd_on(attention: Callable, x: Array, dt: Array, A: Array, B: Array, C: Array,
           initial_state: Array | None = None, *, chunk_size: int | None,
           tiling=None, segments: int | None = None) -> tuple[Array, Array]:
    """``y`` of ``seqzoo.ops.ssd`` without D and z on ``attention`` (a backend's
    ``gated_linear_attention``); dt already discretised (non-negative).

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); initial_state: (b, h, p, n).
    chunk_size caps the kernel's chunk; tiling: the backend's launch parameters (None: its own);
    segments: None, or the number of parallel segments (``seqzoo.kernels.chunked_segments``).
    Returns y: (b, l, h, p) in x's dtype and the final state (b, h, p, n) float32.
    """
    dt = dt.astype(_F32)
    if segments is not None:
        attention = segmented(attention, segments)
    s0 = None if initial_state is None else jnp.swapaxes(initial_state, -1, -2)[None]
    y, final = attention(C[None], B[None], x[None], (dt * A.astype(_F32))[None], dt[None], s0,
                         scale=1.0, tiling=tiling, max_chunk=chunk_size)
    return y[0], jnp.swapaxes(final[0], -1, -2)
