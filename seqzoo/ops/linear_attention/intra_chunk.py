"""Intra-chunk terms of gated linear attention in XLA, parallel over chunks.

For chunks of C steps and the chunk-local cumulative log decay ``G`` (restarting at every
chunk), the terms of (query, key) pairs within one chunk are ``o_intra = A v`` per chunk with

    A_ij = scale sum_d q_id k_jd exp(G_id - G_jd)    for j <= i in the same chunk, else 0

(``G`` per head, a scalar: the same for every d; no decay: ``exp(...) = 1``). Every chunk is
independent: batched matmuls over (batch, chunk, head), nothing sequential. With a decay per
key dimension (GLA) the C x C block is built as flash-linear-attention's ``chunk_gla`` builds
it, in sub-chunks of ``sub`` rows:

* sub-chunk J before sub-chunk I: through I's first row r as reference,
  ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)``, both factors <= 1 (so nothing
  overflows), one matmul of ``q_i exp(G_i - G_r)`` and ``k_j exp(G_r - G_j)`` per I;
* the diagonal ``sub x sub`` blocks exactly, ``exp(min(G_i - G_j, 0))`` elementwise over
  ``(sub, sub, dk)`` and reduced over dk.

Matmul operands are in the inputs' dtype (bf16 on a GPU; float32 at HIGHEST precision), with
float32 accumulation; decays, ``A`` and the diagonal blocks are float32. The scores are
``jax.checkpoint``-ed: their backward pass recomputes the decayed factors instead of keeping
them, so what is saved for it is ``q``, ``k``, ``G`` alone (no ``(C, C, dk)`` or per-sub-chunk
copy of ``k`` per chunk). ``A v`` has its own VJP (``dv = A^T do``, ``dA = do v^T``), matmuls
in the inputs' dtype as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
_F32 = jnp.float32


def _einsum(spec: str, a: Array, b: Array, dtype) -> Array:
    """``jnp.einsum`` with both operands in ``dtype`` and a float32 result."""
    precision = lax.Precision.HIGHEST if dtype == _F32 else None
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), precision=precision,
                      preferred_element_type=_F32)


def _causal(c: int) -> Array:
    return jnp.tril(jnp.ones((c, c), bool))


def _scores_per_key(q: Array, k: Array, cum: Array, sub: int, dtype) -> Array:
    """Per-key decays, sub-chunk by sub-chunk (module docstring). (B, N, C, H, dk) ->
    (B, N, H, C, C), unscaled, zero above the diagonal."""
    b, n, c, h, dk = q.shape
    qf, kf = q.astype(_F32), k.astype(_F32)
    rows = []
    for r in range(0, c, sub):
        q_i, cum_i, ref = qf[:, :, r:r + sub], cum[:, :, r:r + sub], cum[:, :, r:r + 1]
        k_i = kf[:, :, r:r + sub]
        decay = jnp.exp(jnp.minimum(cum_i[:, :, :, None] - cum_i[:, :, None], 0.0))
        terms = q_i[:, :, :, None] * k_i[:, :, None] * decay  # (B, N, sub, sub, H, dk)
        diagonal = jnp.einsum("bnijhd->bnhij", terms)
        diagonal = jnp.where(_causal(sub), diagonal, 0.0)
        blocks = [diagonal, jnp.zeros((b, n, h, sub, c - r - sub), _F32)]
        if r:
            earlier = kf[:, :, :r] * jnp.exp(ref - cum[:, :, :r])
            blocks.insert(0, _einsum("bnihd,bnjhd->bnhij", q_i * jnp.exp(cum_i - ref),
                                     earlier, dtype))
        rows.append(jnp.concatenate(blocks, axis=-1))
    return jnp.concatenate(rows, axis=-2)


@functools.partial(jax.checkpoint, static_argnums=(3, 4, 5))
def _scores(q: Array, k: Array, cum: Array | None, scale: float, sub: int, dtype) -> Array:
    c = q.shape[2]
    if cum is not None and cum.ndim == 5:
        return scale * _scores_per_key(q, k, cum, sub, dtype)
    scores = _einsum("bnihd,bnjhd->bnhij", q, k, dtype) * scale
    if cum is None:
        return jnp.where(_causal(c), scores, 0.0)
    cum = jnp.moveaxis(cum, 3, 2)  # (B, N, H, C)
    diff = cum[..., :, None] - cum[..., None, :]
    return scores * jnp.exp(jnp.where(_causal(c), diff, -jnp.inf))


def intra_chunk_scores(q: Array, k: Array, cum: Array | None, *, scale: float,
                       sub: int = 16) -> Array:
    """``A: (B, N, H, C, C)`` float32 of the module docstring.

    q, k: (B, N, C, H, dk) (N chunks of C steps); cum: the chunk-local inclusive cumulative sum
    of the log decays, float32: None, (B, N, C, H) per head or (B, N, C, H, dk) per key
    dimension; sub: rows per sub-chunk for per-key decays (dividing C).
    """
    dtype = jnp.result_type(q.dtype, k.dtype)
    return _scores(q, k, cum, float(scale), min(sub, q.shape[2]), jnp.dtype(dtype))


@jax.custom_vjp
def intra_chunk_outputs(scores: Array, v: Array) -> Array:
    """``o_intra = A v`` per chunk: scores (B, N, H, C, C) float32, v (B, N, C, H, dv) ->
    (B, N, C, H, dv) float32; the matmul's operands in v's dtype."""
    return _einsum("bnhij,bnjhe->bnihe", scores, v, v.dtype)


def _outputs_forward(scores, v):
    return intra_chunk_outputs(scores, v), (scores, v)


def _outputs_backward(res, do):
    scores, v = res
    d_scores = _einsum("bnihe,bnjhe->bnhij", do, v, v.dtype)
    dv = _einsum("bnhij,bnihe->bnjhe", scores, do, v.dtype)
    return d_scores, dv.astype(v.dtype)


intra_chunk_outputs.defvjp(_outputs_forward, _outputs_backward)
