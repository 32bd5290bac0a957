"""``o_intra = A v`` per chunk as a Pallas kernel, on the layouts the split holds A and v in.

    o[b, n, i, h, :] = sum_j A[b, n, h, i, j] v[b, n, j, h, :]        (A zero above the diagonal)

A: (B, N, H, C, C) float32 (``pallas_gpu_intra.intra_chunk_scores``' layout); v: (B, N, C, H, dv)
(float32 copies of values of ``dtype`` are read as ``dtype``: the conversion pair folds away);
o: (B, N, C, H, dv) float32. XLA's batched matmul on these layouts moves (b, n, h) in front
first, transposing v and its result, which took about as long as the product itself at GLA's
shape (benchmarks/RESULTS.md, "Where the forward's time goes"); here one program per (batch,
chunk, head, value block) reads A's (C, C) block and v's (C, bv) rows in place. A and v rounded
to ``dtype`` (bf16: as ``intra_chunk_outputs``' XLA product and fla's ``chunk_gla_fwd_o_gk``),
float32 accumulation (IEEE for float32). Forward only: ``intra_chunk_outputs``' VJP is XLA's.
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


def value_block(dv: int) -> int | None:
    """The value block: the largest of 128, 64, 32, 16 dividing ``dv`` (Triton's tile sides are
    powers of two >= 16); None where none does (the caller keeps XLA's product)."""
    return next((bv for bv in (128, 64, 32, 16) if dv % bv == 0), None)


def fits(chunk: int, dv: int) -> bool:
    """Whether the kernel takes this chunk (a power of two >= 16) and value width (a
    ``value_block``)."""
    return padded_width(chunk) == chunk and value_block(dv) is not None


def _kernel(a_ref, v_ref, o_ref, *, dtype):
    precision = lax.Precision.HIGHEST if dtype == _F32 else None
    o_ref[...] = lax.dot_general(a_ref[...].astype(dtype), v_ref[...].astype(dtype),
                                 (((1,), (0,)), ((), ())), precision=precision,
                                 preferred_element_type=_F32)


def intra_outputs(scores: Array, v: Array, dtype, *, num_warps: int = 4) -> Array:
    """``A v`` (module docstring); the chunk C a power of two >= 16 and dv a multiple of 16."""
    b, n, h, c, _ = scores.shape
    dv = v.shape[-1]
    if not fits(c, dv):
        raise ValueError(f"the A v kernel takes a chunk that is a power of two >= 16 and a "
                         f"value width that is a multiple of 16, got {c} and {dv}")
    dtype, bv = jnp.dtype(dtype), value_block(dv)
    rows = pl.BlockSpec((None, None, c, None, bv), lambda i, m, j, e: (i, m, 0, j, e))
    call = launch.pallas_call(
        functools.partial(_kernel, dtype=dtype),
        grid=(b, n, h, dv // bv),
        in_specs=[pl.BlockSpec((None, None, None, c, c), lambda i, m, j, e: (i, m, j, 0, 0)),
                  rows],
        out_specs=rows,
        out_shape=jax.ShapeDtypeStruct(v.shape, _F32),
        num_warps=num_warps,
        num_stages=1,
        name="intra_chunk_outputs",
    )
    return call(scores, v.astype(dtype))
