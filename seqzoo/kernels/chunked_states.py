"""The inter-chunk forward as a states pass and an output pass parallel over chunks (the
structure of fla's ``chunk_fwd_h`` and ``chunk_gla_fwd_o_gk``), for per-key decays:

    h_0 = S_0,   h_{n+1} = diag(exp(G_C)) h_n + sum_{j in chunk n} (k_j * exp(G_C - G_j)) v_j^T
    out_i = scale (q_i * exp(G_i)) h_n        for i in chunk n (pairs in different chunks only)

with G the chunk-local cumulative log decay (G_C: the chunk's last). The states pass is
``chunked_pass(..., outputs=False, boundaries=True)`` with the key width cut into blocks of
``block_k`` columns taken as heads (the state rows of a key block evolve apart: the decay is
diagonal), one program per (batch, head, key block, value block), h_n stored in the matmul
operands' dtype (what the output's matmul reads; ``chunked_pass`` rounds its state so too).
The output pass is a Pallas kernel with one program per (batch, chunk, head, value block):
``q exp(G)`` in float32, rounded to the operands' dtype, times each key block of h_n, float32
accumulation. The one-pass kernel computes the same sums in its walk
(``chunked_pass(..., intra=False)``); this form walks with half of its matmuls and none of its
query reads, each program reading its key block only, and leaves the outputs to a pass with N
times the parallelism, at the cost of writing and reading h (B, N, H, dk, dv).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_pass import Tiling, chunked_pass
from seqzoo.kernels.matmul_precision import dot_precision

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
    dv = v.shape[-1]
    blocks = max(1, dk // block_k)
    width = dk // blocks
    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    s0 = None if initial_state is None else initial_state.reshape(d, b, h * blocks, width, dv)
    k_heads, g_heads = (_key_blocks_as_heads(x, blocks) for x in (k, g))
    _, final, entering = chunked_pass(
        k_heads, k_heads, v, g_heads, None, None, s0, scale=scale, reverse=(False,),
        decay="key", tiling=tiling, intra=False, precision=precision, outputs=False,
        boundaries=True, boundary_dtype=dtype)
    out = _outputs(q, g, entering, scale=scale, tiling=tiling, blocks=blocks,
                   operands=(dtype, precision), out_dtype=v.dtype if out_dtype is None
                   else out_dtype)
    return out, final.reshape(d, b, h, dk, dv)


def _outputs_kernel(q_ref, g_ref, *refs, scale: float, operands: tuple):
    """One (chunk, value block) of one head: ``scale sum_kb (q exp(G))[:, kb] h_n[kb]``."""
    *h_refs, o_ref = refs
    dtype, precision = operands
    width = h_refs[0].shape[0]
    precision = dot_precision(precision) if dtype == _F32 else None
    out = jnp.zeros(o_ref.shape, _F32)
    for kb, h_ref in enumerate(h_refs):
        cols = pl.ds(kb * width, width)
        queries = q_ref[:, cols].astype(_F32) * jnp.exp(g_ref[:, cols])
        out = out + lax.dot_general(queries.astype(dtype), h_ref[...].astype(dtype),
                                    (((1,), (0,)), ((), ())), precision=precision,
                                    preferred_element_type=_F32)
    o_ref[...] = (out * scale).astype(o_ref.dtype)


def _outputs(q: Array, g: Array, entering: Array, *, scale: float, tiling: Tiling,
             blocks: int, operands: tuple, out_dtype) -> Array:
    """``out: (D, B, T, H, dv)`` from q, g (D, B, T, H, dk) and the entering states
    ``(D, B, N width, H blocks, dv)`` (``chunked_pass``'s boundary layout, key blocks as heads).
    """
    d, b, t, h, dk = q.shape
    c, dv = tiling.chunk, entering.shape[-1]
    width, bv = dk // blocks, min(tiling.block_v, dv)
    if not launch.kernels_compiled():  # the CPU's dot has no TF32
        operands = (operands[0], "highest")
    rows = pl.BlockSpec((None, None, c, None, dk), lambda i, j, n, m, e: (i, j, n, m, 0))

    def state_spec(kb):
        return pl.BlockSpec((None, None, width, None, bv),
                            lambda i, j, n, m, e: (i, j, n, m * blocks + kb, e))

    call = launch.pallas_call(
        functools.partial(_outputs_kernel, scale=float(scale), operands=operands),
        grid=(d, b, t // c, h, dv // bv),
        in_specs=[rows, rows, *(state_spec(kb) for kb in range(blocks))],
        out_specs=pl.BlockSpec((None, None, c, None, bv), lambda i, j, n, m, e: (i, j, n, m, e)),
        out_shape=jax.ShapeDtypeStruct((d, b, t, h, dv), out_dtype),
        num_warps=tiling.num_warps,
        num_stages=tiling.num_stages,
        name="chunked_states_outputs",
    )
    return call(q, g, *([entering] * blocks))
