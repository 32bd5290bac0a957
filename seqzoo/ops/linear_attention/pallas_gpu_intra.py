"""The intra-chunk scores of per-key decays as a Pallas kernel, one program per (batch, chunk,
head): ``intra_chunk.py``'s forward on a parallel grid (as fla's ``chunk_gla_fwd_A``).

    A_ij = sum_d q_id k_jd exp(G_id - G_jd)    j <= i in one chunk of C steps, else 0

A program reads its chunk's ``q, k, G: (C, dk)`` and writes ``A: (C, C)`` float32, sub-chunk
by sub-chunk of ``sub`` rows: the columns before the sub-chunk as one matmul through its first
row r (``q_i exp(G_i - G_r)`` against ``k_j exp(min(G_r - G_j, 0))``, both <= 1; operands in
the inputs' dtype, float32 accumulation), the ``sub x sub`` diagonal block exactly as
``(sub, sub, slice)`` elementwise products reduced over slices of dk. No state, nothing
sequential: the grid is parallel over every axis. Forward only; the VJP is
``intra_chunk._scores_per_key``'s (XLA).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_tiling import padded_width

Array = jax.Array
_F32 = jnp.float32
SLICE = 16  # key columns per elementwise product of the diagonal blocks


def _kernel(q_ref, k_ref, g_ref, a_ref, *, sub: int, dtype):
    c, dk = q_ref.shape
    precision = lax.Precision.HIGHEST if dtype == _F32 else None
    col = lax.broadcasted_iota(jnp.int32, (sub, c), 1)
    causal = (lax.broadcasted_iota(jnp.int32, (sub, sub), 1)
              <= lax.broadcasted_iota(jnp.int32, (sub, sub), 0))
    for r in range(0, c, sub):
        rows = pl.ds(r, sub)
        scores = jnp.zeros((sub, c), _F32)
        if r:
            ref = g_ref[pl.ds(r, 1), :]
            from_ref = (q_ref[rows, :].astype(_F32) * jnp.exp(g_ref[rows, :] - ref))
            to_ref = k_ref[...].astype(_F32) * jnp.exp(jnp.minimum(ref - g_ref[...], 0.0))
            scores = lax.dot_general(from_ref.astype(dtype), to_ref.astype(dtype),
                                     (((1,), (1,)), ((), ())), precision=precision,
                                     preferred_element_type=_F32)
            scores = jnp.where(col < r, scores, 0.0)
        a_ref[rows, :] = scores
        diagonal = jnp.zeros((sub, sub), _F32)
        for d0 in range(0, dk, min(SLICE, dk)):
            cols = pl.ds(d0, min(SLICE, dk))
            q, k, g = (x[rows, cols].astype(_F32) for x in (q_ref, k_ref, g_ref))
            decay = jnp.exp(jnp.minimum(g[:, None, :] - g[None, :, :], 0.0))
            diagonal = diagonal + jnp.sum(q[:, None, :] * k[None, :, :] * decay, axis=2)
        a_ref[rows, pl.ds(r, sub)] = jnp.where(causal, diagonal, 0.0)


def intra_chunk_scores(q: Array, k: Array, cum: Array, *, sub: int, dtype) -> Array:
    """q, k: (B, N, C, H, dk) (C a power of two >= 16, ``sub`` dividing it); cum: (B, N, C, H,
    dk) float32, the chunk-local cumulative log decays. Returns unscaled ``A: (B, N, H, C, C)``
    float32, zero above the diagonal. dk is zero-padded to a power of two >= 16."""
    b, n, c, h, dk = q.shape
    width = padded_width(dk)
    pad = [(0, 0)] * 4 + [(0, width - dk)]
    q, k, cum = (jnp.pad(x, pad) for x in (q, k, cum))
    block = pl.BlockSpec((None, None, c, None, width), lambda i, m, j: (i, m, 0, j, 0))
    call = launch.pallas_call(
        functools.partial(_kernel, sub=sub, dtype=jnp.dtype(dtype)),
        grid=(b, n, h),
        in_specs=[block, block, block],
        out_specs=pl.BlockSpec((None, None, None, c, c), lambda i, m, j: (i, m, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, n, h, c, c), _F32),
        num_warps=4,
        num_stages=1,
        name="intra_chunk_scores",
    )
    return call(q, k, cum)
