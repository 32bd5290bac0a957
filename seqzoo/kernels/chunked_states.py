"""The inter-chunk forward as a states pass and an output pass parallel over chunks (the
structure of fla's ``chunk_fwd_h`` and ``chunk_gla_fwd_o_gk``), for per-key decays:

    h_0 = S_0,   h_{n+1} = diag(exp(G_C)) h_n + sum_{j in chunk n} (k_j * exp(G_C - G_j)) v_j^T
    out_i = scale (q_i * exp(G_i)) h_n        for i in chunk n (pairs in different chunks only)

with G the chunk-local cumulative log decay (G_C: the chunk's last). The states pass is
``chunked_pass(..., outputs=False, boundaries=True)`` with the key width cut into blocks of
``block_k`` columns taken as heads (the state rows of a key block evolve apart: the decay is
diagonal), one program per (batch, head, key block, value block), h_n stored in the matmul
operands' dtype (what the output's matmul reads; ``chunked_pass`` rounds its state so too);
the outputs are one batched XLA matmul over all chunks, operands in the inputs' dtype, float32
accumulation (float32 inputs at IEEE precision). The one-pass kernel computes the same sums in
its walk (``chunked_pass(..., intra=False)``); this form walks with a quarter of its matmul
work and none of its query reads, and leaves the outputs to a pass with N times the
parallelism, at the cost of writing and reading h (B, N, H, dk, dv).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from seqzoo.kernels.chunked_pass import Tiling, chunked_pass

Array = jax.Array
_F32 = jnp.float32


def _key_blocks_as_heads(x: Array, blocks: int) -> Array:
    """``(D, B, T, H, dk)`` -> ``(D, B, T, H * blocks, dk / blocks)``: head ``h * blocks + b``
    holds key block b of head h."""
    *lead, heads, width = x.shape
    return x.reshape(*lead, heads * blocks, width // blocks)


def states_then_outputs(q, k, v, g, key_scale=None, row_scale=None, initial_state=None, *,
                        scale: float, reverse: tuple[bool, ...], decay: str | None,
                        tiling: Tiling, out_dtype=None, intra: bool = True,
                        precision: str = "highest", block_k: int = 64) -> tuple[Array, Array]:
    """``chunked_pass(q, k, v, g, None, None, initial_state, intra=False, ...)``'s ``(out,
    final)`` computed as the module docstring says (one causal direction, per-key decays,
    every input with v's heads, no key or row scales; layout as ``chunked_pass``'s: q, k, g
    (D, B, T, H, dk), v (D, B, T, H, dv), initial_state (D, B, H, dk, dv), T a multiple of
    ``tiling.chunk``). ``precision``: the states pass's float32 matmuls."""
    if intra or decay != "key" or tuple(reverse) != (False,) or key_scale is not None or (
            row_scale is not None) or len({x.shape[3] for x in (q, k, v, g)}) != 1:
        raise ValueError("states_then_outputs takes the inter-chunk terms of one causal "
                         "direction with per-key decays, no scales and v's heads")
    d, b, t, h, dk = q.shape
    dv, c = v.shape[-1], tiling.chunk
    blocks = max(1, dk // block_k)
    n, width = t // c, dk // blocks
    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    s0 = None if initial_state is None else initial_state.reshape(d, b, h * blocks, width, dv)
    k_heads, g_heads = (_key_blocks_as_heads(x, blocks) for x in (k, g))
    _, final, entering = chunked_pass(
        k_heads, k_heads, v, g_heads, None, None, s0, scale=scale, reverse=(False,),
        decay="key", tiling=tiling, intra=False, precision=precision, outputs=False,
        boundaries=True, boundary_dtype=dtype)
    # entering: (D, B, N width, H blocks, dv) -> rows (n, r), heads (h, key block)
    entering = entering.reshape(d, b, n, width, h, blocks, dv)
    queries = (q.astype(_F32) * jnp.exp(g)).astype(dtype).reshape(d, b, n, c, h, blocks, width)
    out = jnp.einsum("dbncgkr,dbnrgke->dbncge", queries, entering, preferred_element_type=_F32,
                     precision=lax.Precision.HIGHEST if dtype == _F32 else None)
    out = (out * scale).reshape(d, b, t, h, dv)
    return out.astype(v.dtype if out_dtype is None else out_dtype), final.reshape(
        d, b, h, dk, dv)
