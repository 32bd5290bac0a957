"""The intra-chunk scores of per-key decays as a Pallas kernel, one program per (batch, chunk,
head): ``intra_chunk.py``'s forward on a parallel grid, organised as fla's ``chunk_gla_fwd_A``
kernels (``chunk_gla_fwd_intra_gk``: one pass for the sub-chunk pairs below the diagonal, one
for the diagonal blocks, column by column).

    A_ij = sum_d q_id k_jd exp(G_id - G_jd)    j <= i in one chunk of C steps, else 0

A program reads its chunk's ``q, k: (C, dk)`` (the inputs' dtype) and ``G: (C, dk)`` float32
(the chunk-local cumulative log decays, non-increasing down the chunk) and writes
``A: (C, C)`` float32, sub-chunk I by sub-chunk I of ``sub`` rows (first row r, rows
``i = r .. r + sub - 1``), every element of A written once:

* below the diagonal block (``j < r``): through I's first row as reference,
  ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)``, both factors <= 1, so
  ``A[I, :r] = (q_I exp(G_I - G_r)) (k_J exp(G_r - G_J))^T``: the decayed query rows
  ``(sub, dk)`` once per I, then only the rows before I are read (``pl.ds``) and decayed, in
  power-of-two pieces (r = 48: rows 0..32 and 32..48; Triton's tensors have power-of-two
  sides), one ``(sub, dk) x (dk, piece)`` matmul each, operands rounded to the inputs' dtype,
  float32 accumulation (IEEE for float32);
* the diagonal block ``A[I, r:r + sub]`` exactly, a loop over its ``sub`` columns j (a
  ``fori_loop``): ``sum_d q_Id k_jd exp(min(G_Id - G_jd, 0))``, a ``(sub, dk)`` product reduced
  over dk into column j of a ``(sub, sub)`` float32 block (``where(col == j, ...)``), then the
  causal mask ``j <= i``. The ``min`` makes every exponent <= 0 (rows above the diagonal, masked
  anyway, included): nothing overflows however strong the decays. Every tensor is 2-D;
  ``(sub, sub, dk)`` is never formed;
* right of the diagonal block (``j >= r + sub``): zeros, in power-of-two pieces.

Per program that is ``C (C - sub) / 2 * dk`` multiply-adds and
``(C - sub) dk + C (C - sub) / (2 sub) dk`` exponentials below the diagonal (144 dk at C = 64,
sub = 16; the previous version of this kernel decayed all C rows against every reference: 240
dk, and multiplied against all C columns), and ``C sub dk`` of each on the diagonal blocks
(as before, but as 2-D ``(sub, dk)`` products reduced along dk, where the previous version
formed ``(sub, sub, 16)`` products over slices of dk and reduced them across threads). Unlike
fla (a launch over sub-chunk pairs, then one over diagonal blocks) both parts run in the same
program. No state, nothing sequential: the grid is parallel over every axis. Forward only; the
VJP is ``intra_chunk._scores_per_key``'s (XLA). ``sub`` a power of two >= 16 dividing C for
Triton (its matmuls take sides >= 16; any divisor runs in interpret mode).

Timing: the earlier version measured slower than XLA's scores on an H100; this rewrite is
untimed on a GPU so far (``benchmarks/gla_phases.py``'s row "intra scores A (Pallas kernel)").
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


def _pieces(start: int, stop: int) -> list[tuple[int, int]]:
    """``[start, stop)`` as consecutive ``(offset, size)`` pieces of power-of-two sizes, the
    largest first (48 rows -> 32 + 16)."""
    pieces = []
    while start < stop:
        size = 1 << ((stop - start).bit_length() - 1)
        pieces.append((start, size))
        start += size
    return pieces


def _kernel(q_ref, k_ref, g_ref, a_ref, *, sub: int, dtype):
    c = q_ref.shape[0]
    precision = lax.Precision.HIGHEST if dtype == _F32 else None
    col = lax.broadcasted_iota(jnp.int32, (sub, sub), 1)
    causal = col <= lax.broadcasted_iota(jnp.int32, (sub, sub), 0)
    for r in range(0, c, sub):
        rows = pl.ds(r, sub)
        q_i = q_ref[rows, :].astype(_F32)  # (sub, dk)
        g_i = g_ref[rows, :]
        if r:  # the sub-chunks before I, through I's first row
            g_r = g_ref[pl.ds(r, 1), :]  # (1, dk)
            from_ref = (q_i * jnp.exp(g_i - g_r)).astype(dtype)
            for j0, size in _pieces(0, r):
                earlier = pl.ds(j0, size)
                to_ref = k_ref[earlier, :].astype(_F32) * jnp.exp(g_r - g_ref[earlier, :])
                a_ref[rows, earlier] = lax.dot_general(
                    from_ref, to_ref.astype(dtype), (((1,), (1,)), ((), ())),
                    precision=precision, preferred_element_type=_F32)

        def column(j, block, r=r, q_i=q_i, g_i=g_i):
            key = pl.ds(r + j, 1)
            decay = jnp.exp(jnp.minimum(g_i - g_ref[key, :], 0.0))  # (sub, dk), <= 1
            terms = q_i * k_ref[key, :].astype(_F32) * decay
            return jnp.where(col == j, jnp.sum(terms, axis=1)[:, None], block)

        block = lax.fori_loop(0, sub, column, jnp.zeros((sub, sub), _F32))
        a_ref[rows, pl.ds(r, sub)] = jnp.where(causal, block, 0.0)
        for j0, size in _pieces(r + sub, c):
            a_ref[rows, pl.ds(j0, size)] = jnp.zeros((sub, size), _F32)


def intra_chunk_scores(q: Array, k: Array, cum: Array, *, sub: int, dtype) -> Array:
    """q, k: (B, N, C, H, dk) (C a power of two >= 16, ``sub`` dividing it); cum: (B, N, C, H,
    dk) float32, the chunk-local cumulative log decays. Returns unscaled ``A: (B, N, H, C, C)``
    float32, zero above the diagonal. dk is zero-padded to a power of two >= 16 (zero q, k:
    the padded columns add nothing)."""
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
