"""The chunk-local cumulative sum of per-key log decays as a Pallas kernel.

    cum[t] = sum_{s <= t, s in t's chunk} g[s]        g, cum: (D, B, T, H, dk) float32

jax lowers a cumulative sum on a GPU as a log-depth associative scan of strided slices and adds,
which took about three times fla's cumulative-sum kernel at GLA's shape (benchmarks/RESULTS.md,
"Where the forward's time goes"); here one program per (direction x batch, chunk, head) reads
its (C, dk) block once, scans it down the chunk in registers (Triton's scan) and writes it once.
The sums are float32, in the scan's order rather than the sequential one (a few ulps apart).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_tiling import padded_width

Array = jax.Array
_F32 = jnp.float32


def fits(chunk: int, width: int) -> bool:
    """Whether the kernel takes this chunk and key width (Triton's tile sides: powers of two
    >= 16)."""
    return all(padded_width(n) == n for n in (chunk, width))


def _kernel(g_ref, cum_ref):
    cum_ref[...] = jnp.cumsum(g_ref[...], axis=0)


def chunk_cumsum(g: Array, chunk: int) -> Array:
    """``cum`` of the module docstring for float32 ``g: (D, B, T, H, dk)``, T a multiple of
    ``chunk`` (``fits(chunk, dk)``)."""
    d, b, t, h, dk = g.shape
    if g.dtype != _F32 or t % chunk or not fits(chunk, dk):
        raise ValueError(f"chunk_cumsum takes float32 (D, B, T, H, dk) with T a multiple of the "
                         f"chunk and chunk, dk powers of two >= 16: {g.shape} {g.dtype}, "
                         f"chunk {chunk}")
    x = g.reshape(d * b, t // chunk, chunk, h, dk)
    block = pl.BlockSpec((None, None, chunk, None, dk), lambda i, n, j: (i, n, 0, j, 0))
    call = launch.pallas_call(
        _kernel,
        grid=(d * b, t // chunk, h),
        in_specs=[block],
        out_specs=block,
        out_shape=jax.ShapeDtypeStruct(x.shape, _F32),
        num_warps=4,
        num_stages=1,
        name="chunk_cumsum",
    )
    return call(x).reshape(g.shape)
