"""Hydra's quasiseparable mixer on a chunked gated-linear-attention Pallas kernel (GPU or TPU).

Hydra runs SSD forwards and backwards (``seqzoo.ops.quasiseparable``). Here both directions are
one launch of the chunked kernel (as ``seqzoo.ops.ssd.pallas``): the backward direction reads
the same x, its own dt, B, C in the original order and walks the chunks from the end
(``reverse=True``), with its log decays moved one step later, ``h_t = dt_{t-1} A``, because the
reversed scan decays by ``exp(A (dt_i + ... + dt_{j-1}))`` between a query i and a key j >= i.
The ``D`` diagonal and the one-step shifts stay with the op (elementwise, in XLA).
``pallas_gpu.py`` and ``pallas_tpu.py`` run this on their kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
_F32 = jnp.float32


def quasiseparable_on(attention: Callable, x: Array, dt_fwd: Array, dt_bwd: Array, A: Array,
                      B_fwd: Array, C_fwd: Array, B_bwd: Array, C_bwd: Array, *,
                      chunk_size: int | None, tiling=None) -> Array:
    """``shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x))))`` of ``seqzoo.ops.quasiseparable`` on
    ``attention`` (a backend's ``gated_linear_attention``).

    Arguments as there (dt already discretised; no D); tiling: the backend's launch parameters
    (None: its own). Returns (b, l, h, p) float32.
    """
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
