"""Mamba-2's SSD and Hydra's quasiseparable mixer on the chunked linear-attention kernels.

SSD is scalar-decay linear attention (Dao & Gu, 2024): with q = C, k = B, v = x, log decay
``dt A`` and the key scaled by ``dt`` (inside the kernel, so ``x dt`` is never written),

    H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T,   y_t = H_t C_t   (H_t: (headdim, n) = S_t^T).

Hydra runs SSD forwards and backwards (``seqzoo.ops.quasiseparable``). Here both directions are
one launch: the backward direction reads the same x, its own dt, B, C in the original order
and walks the chunks from the end (``reverse=True``), with its log decays moved one step later,
``h_t = dt_{t-1} A``, because the reversed scan decays by ``exp(A (dt_i + ... + dt_{j-1}))``
between a query i and a key j >= i. The ``D`` skip, the ``z`` gate and the one-step shifts stay
with the ops (elementwise, in XLA). Tolerances: as ``chunked_linear_attention``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_linear_attention import gated_linear_attention
from seqzoo.kernels.chunked_pass import Tiling

Array = jax.Array
_F32 = jnp.float32


def ssd_kernel(
    x: Array,
    dt: Array,
    A: Array,
    B: Array,
    C: Array,
    initial_state: Array | None = None,
    *,
    chunk_size: int = 64,
    tiling: Tiling | None = None,
) -> tuple[Array, Array]:
    """``y`` of ``seqzoo.ops.ssd`` without D and z; dt already discretised (non-negative).

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); initial_state: (b, h, p, n).
    chunk_size caps the chunk of ``tiling`` (default ``chunked_pass.TUNED``).
    Returns y: (b, l, h, p) in x's dtype and the final state (b, h, p, n) float32.
    """
    return ssd_on(gated_linear_attention, x, dt, A, B, C, initial_state,
                  chunk_size=chunk_size, tiling=tiling)


def ssd_on(attention: Callable, x, dt, A, B, C, initial_state=None, *, chunk_size: int | None,
           tiling=None) -> tuple[Array, Array]:
    """``ssd_kernel`` on ``attention`` (a ``gated_linear_attention``: Triton or Mosaic-TPU)."""
    dt = dt.astype(_F32)
    s0 = None if initial_state is None else jnp.swapaxes(initial_state, -1, -2)[None]
    y, final = attention(C[None], B[None], x[None], (dt * A.astype(_F32))[None], dt[None], s0,
                         scale=1.0, tiling=tiling, max_chunk=chunk_size)
    return y[0], jnp.swapaxes(final[0], -1, -2)


def quasiseparable_kernel(
    x: Array,
    dt_fwd: Array,
    dt_bwd: Array,
    A: Array,
    B_fwd: Array,
    C_fwd: Array,
    B_bwd: Array,
    C_bwd: Array,
    *,
    chunk_size: int = 64,
) -> Array:
    """``shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x))))`` of ``seqzoo.ops.quasiseparable``.

    Arguments as there (dt already discretised; no D). Returns (b, l, h, p) float32.
    """
    return quasiseparable_on(gated_linear_attention, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd,
                             C_bwd, chunk_size=chunk_size)


def quasiseparable_on(attention: Callable, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, *,
                      chunk_size: int | None, tiling=None) -> Array:
    """``quasiseparable_kernel`` on ``attention`` (Triton or Mosaic-TPU): both directions in
    one launch, the backward one reverse."""
    dt = jnp.stack([dt_fwd, dt_bwd]).astype(_F32)
    log_decay = dt * A.astype(_F32)
    later = jnp.pad(log_decay[1, :, :-1], ((0, 0), (1, 0), (0, 0)))  # h_t = dt_{t-1} A
    y, _ = attention(
        jnp.stack([C_fwd, C_bwd]), jnp.stack([B_fwd, B_bwd]), x[None],
        jnp.stack([log_decay[0], later]), dt, scale=1.0, reverse=(False, True), tiling=tiling,
        max_chunk=chunk_size,
    )
    y = y.astype(_F32)
    from_left = jnp.pad(y[0, :, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))  # s_fwd[i - 1]
    from_right = jnp.pad(y[1, :, 1:], ((0, 0), (0, 1), (0, 0), (0, 0)))  # s_bwd[i + 1]
    return from_left + from_right
