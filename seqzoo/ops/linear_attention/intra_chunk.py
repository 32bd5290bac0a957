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
float32 accumulation; decays, ``A`` and the diagonal blocks are float32. ``dtype`` may name that
dtype for float32 q, k, v holding its values (``pallas_gpu_split``: the gradients of q, k, v
and the decays then stay float32, rounded once by the caller with the inter-chunk ones; the
per-key scores and ``A v`` keep their residuals in ``dtype``). The per-key scores have
their own VJP (fla's ``chunk_gla`` backward): ``dq`` and ``dk`` by the same sub-chunks (matmuls
through the reference rows, the diagonal blocks as elementwise products reduced at once) and
``dG = q dq - k dk`` (``A`` depends on G only through ``G_i - G_j``; as the difference cancels,
those matmuls split their float32 operands into ``hi + lo``); what is saved for it is
``q``, ``k``, ``G`` alone (no decayed copies of them), and no ``(C, C, dk)`` tensor is formed.
``A v`` has its own VJP (``dv = A^T do``, ``dA = do v^T``), matmuls in the inputs' dtype too
(A split in ``hi + lo`` for ``dv``: bf16 dv 3.2e-3 instead of 3.6e-3, as ``impl="pallas"``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from seqzoo.kernels.split_product import split_product
from seqzoo.ops.linear_attention import (
    pallas_gpu_intra,
    pallas_gpu_intra_bwd,
    pallas_gpu_intra_outputs,
)

Array = jax.Array
_F32 = jnp.float32


def _einsum(spec: str, a: Array, b: Array, dtype, split: bool = False) -> Array:
    """``jnp.einsum`` with both operands in ``dtype`` and a float32 result. ``split``: float32
    operands rounded as ``hi + lo`` in ``dtype`` and multiplied part by part (``hi hi + lo hi +
    hi lo``), so their rounding costs ~eps^2 instead of eps (as ``chunked_pass._dot``)."""
    precision = lax.Precision.HIGHEST if dtype == _F32 else None

    def product(a_part, b_part):
        return jnp.einsum(spec, a_part, b_part, precision=precision, preferred_element_type=_F32)

    return split_product(product, a, b, dtype, split=split)


def _causal(c: int) -> Array:
    return jnp.tril(jnp.ones((c, c), bool))


def _diagonal_decay(cum_i: Array) -> Array:
    """``exp(min(G_i - G_j, 0))``: (B, N, sub, H, dk) -> (B, N, sub_i, sub_j, H, dk), exact on
    the causal triangle (where ``G_i - G_j <= 0``), never overflowing elsewhere."""
    return jnp.exp(jnp.minimum(cum_i[:, :, :, None] - cum_i[:, :, None], 0.0))


def _reference_factors(cum: Array, r: int, sub: int) -> tuple[Array, Array]:
    """For the sub-chunk from row r (first row r its reference): ``exp(G_i - G_r)`` on its rows
    and ``exp(G_r - G_j)`` on the rows before it, both <= 1."""
    ref = cum[:, :, r:r + 1]
    return jnp.exp(cum[:, :, r:r + sub] - ref), jnp.exp(ref - cum[:, :, :r])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _scores_per_key(q: Array, k: Array, cum: Array, sub: int, dtype,
                    kernel: pallas_gpu_intra.ScoresTiling | None, recompute: bool) -> Array:
    """Per-key decays, sub-chunk by sub-chunk (module docstring). (B, N, C, H, dk) float32 q, k
    holding values of ``dtype`` (the matmul operands') -> (B, N, H, C, C), unscaled, zero above
    the diagonal; float32 gradients. ``kernel``: by the Pallas kernel of ``pallas_gpu_intra.py``
    (same sub-chunks) at that launch tiling instead of XLA. ``recompute``: the backward's own
    diagonal decays, once for dq and once for dk (``_scores_per_key_backward``)."""
    if kernel is not None:
        return pallas_gpu_intra.intra_chunk_scores(q.astype(dtype), k.astype(dtype), cum,
                                                   sub=sub, dtype=dtype, tiling=kernel)
    b, n, c, h, dk = q.shape
    qf, kf = q, k
    rows = []
    for r in range(0, c, sub):
        q_i, k_i = qf[:, :, r:r + sub], kf[:, :, r:r + sub]
        terms = q_i[:, :, :, None] * k_i[:, :, None] * _diagonal_decay(cum[:, :, r:r + sub])
        diagonal = jnp.where(_causal(sub), jnp.einsum("bnijhd->bnhij", terms), 0.0)
        blocks = [diagonal, jnp.zeros((b, n, h, sub, c - r - sub), _F32)]
        if r:
            from_ref, to_ref = _reference_factors(cum, r, sub)
            blocks.insert(0, _einsum("bnihd,bnjhd->bnhij", q_i * from_ref, kf[:, :, :r] * to_ref,
                                     dtype))
        rows.append(jnp.concatenate(blocks, axis=-1))
    return jnp.concatenate(rows, axis=-2)


def _scores_per_key_forward(q, k, cum, sub, dtype, kernel, recompute):
    residuals = (q.astype(dtype), k.astype(dtype), cum)  # exact: the values are dtype's
    return _scores_per_key(q, k, cum, sub, dtype, kernel, recompute), residuals


def _scores_per_key_backward(sub, dtype, kernel, recompute, res, d_scores):
    """``dq_i = sum_j dA_ij k_j exp(G_i - G_j)``, ``dk_j = sum_i dA_ij q_i exp(G_i - G_j)`` by
    the forward's sub-chunks (diagonal blocks as elementwise products reduced over the other
    row), and ``dG = q dq - k dk``: A depends on G only through ``G_i - G_j``. The difference
    cancels, so the matmuls split their float32 operands (``_einsum``).

    The diagonal decays ``exp(min(G_i - G_j, 0))``, (B, N, sub, sub, H, dk) per sub-chunk, are
    one expression for the forward's A, dq and dk: XLA computes it once and, as it feeds three
    reductions, writes it out (on the CPU backend: 4 such tensors in the forward+backward, none
    in the forward alone; 268 MB each at (4, 2048, 16, 128), C = 64). ``recompute``: G passes
    an ``optimization_barrier`` twice, so dq's and dk's decays are distinct expressions, each
    exp fused into its one reduction (3x the diagonal exps, no (.., sub, sub, .., dk) tensor
    in memory). A kernel launch with ``vjp_kernel``: dq and dk by ``pallas_gpu_intra_bwd``
    (the same terms, its own loops)."""
    q, k, cum = res
    if kernel is not None and kernel.vjp_kernel:
        dq, dk = pallas_gpu_intra_bwd.scores_vjp(q, k, cum, d_scores, sub=sub, dtype=dtype,
                                                 tiling=kernel)
        return dq, dk, q.astype(_F32) * dq - k.astype(_F32) * dk
    cum_q, cum_k = lax.optimization_barrier((cum, cum)) if recompute else (cum, cum)
    qf, kf = q.astype(_F32), k.astype(_F32)
    c = q.shape[2]
    dq_rows, dk = [], jnp.zeros(k.shape, _F32)
    for r in range(0, c, sub):
        q_i, k_i = qf[:, :, r:r + sub], kf[:, :, r:r + sub]
        d_rows = jnp.moveaxis(d_scores[..., r:r + sub, :], 2, -1)  # (B, N, sub, C, H)
        d_diag = jnp.where(_causal(sub)[..., None], d_rows[:, :, :, r:r + sub], 0.0)[..., None]
        dq_i = jnp.sum(d_diag * k_i[:, :, None] * _diagonal_decay(cum_q[:, :, r:r + sub]),
                       axis=3)
        dk = dk.at[:, :, r:r + sub].add(jnp.sum(
            d_diag * q_i[:, :, :, None] * _diagonal_decay(cum_k[:, :, r:r + sub]), axis=2))
        if r:
            from_ref, to_ref = _reference_factors(cum, r, sub)
            d_earlier = d_scores[..., r:r + sub, :r]  # (B, N, H, sub, r)
            dq_i = dq_i + from_ref * _einsum("bnhij,bnjhd->bnihd", d_earlier,
                                             kf[:, :, :r] * to_ref, dtype, split=True)
            dk = dk.at[:, :, :r].add(to_ref * _einsum("bnhij,bnihd->bnjhd", d_earlier,
                                                      q_i * from_ref, dtype, split=True))
        dq_rows.append(dq_i)
    dq = jnp.concatenate(dq_rows, axis=2)
    return dq, dk, qf * dq - kf * dk


_scores_per_key.defvjp(_scores_per_key_forward, _scores_per_key_backward)


def _scores(q: Array, k: Array, cum: Array | None, scale: float, sub: int, dtype,
            kernel: pallas_gpu_intra.ScoresTiling | None, recompute: bool) -> Array:
    c = q.shape[2]
    if cum is not None and cum.ndim == 5:
        return scale * _scores_per_key(q.astype(_F32), k.astype(_F32), cum, sub, dtype, kernel,
                                       recompute)
    scores = _einsum("bnihd,bnjhd->bnhij", q, k, dtype) * scale
    if cum is None:
        return jnp.where(_causal(c), scores, 0.0)
    cum = jnp.moveaxis(cum, 3, 2)  # (B, N, H, C)
    diff = cum[..., :, None] - cum[..., None, :]
    return scores * jnp.exp(jnp.where(_causal(c), diff, -jnp.inf))


def intra_chunk_scores(q: Array, k: Array, cum: Array | None, *, scale: float, sub: int = 16,
                       kernel: bool | pallas_gpu_intra.ScoresTiling = False,
                       dtype=None, recompute_decays: bool = False) -> Array:
    """``A: (B, N, H, C, C)`` float32 of the module docstring.

    q, k: (B, N, C, H, dk) (N chunks of C steps); cum: the chunk-local inclusive cumulative sum
    of the log decays, float32: None, (B, N, C, H) per head or (B, N, C, H, dk) per key
    dimension; sub: rows per sub-chunk for per-key decays (dividing C); kernel: per-key scores
    by the Pallas kernel (``pallas_gpu_intra.py``; C a power of two >= 16), the VJP still XLA's:
    True at its default launch (one program per chunk) or a ``pallas_gpu_intra.ScoresTiling``;
    dtype: the matmul operands' (default q's and k's; float32 q, k then hold its values);
    recompute_decays: per-key decays' VJP recomputes the diagonal blocks' decays for dq and for
    dk instead of sharing the forward's (``_scores_per_key_backward``; same values).
    """
    dtype = jnp.result_type(q.dtype, k.dtype) if dtype is None else dtype
    tiling = _scores_tiling(kernel)
    return _scores(q, k, cum, float(scale), min(sub, q.shape[2]), jnp.dtype(dtype), tiling,
                   recompute_decays)


def _scores_tiling(kernel: bool | pallas_gpu_intra.ScoresTiling
                   ) -> pallas_gpu_intra.ScoresTiling | None:
    """``intra_chunk_scores``'s ``kernel`` as the kernel's launch: None for XLA (False), the
    default launch for True."""
    if isinstance(kernel, pallas_gpu_intra.ScoresTiling):
        return kernel
    return pallas_gpu_intra.ScoresTiling() if kernel else None


def intra_chunk_outputs(scores: Array, v: Array, dtype=None, kernel: bool = False) -> Array:
    """``o_intra = A v`` per chunk: scores (B, N, H, C, C) float32, v (B, N, C, H, dv) ->
    (B, N, C, H, dv) float32; the matmul's operands in ``dtype`` (default v's; a float32 v then
    holds its values, and its gradient stays float32). Its VJP takes ``do`` in ``dtype`` too:
    ``dA = do v^T``, ``dv = A^T do`` with A split in ``hi + lo`` (``_einsum``). ``kernel``: the
    forward product by ``pallas_gpu_intra_outputs`` (no transposes; C a power of two >= 16 and
    dv a multiple of 16, else XLA's), the VJP still XLA's."""
    dtype = jnp.dtype(v.dtype if dtype is None else dtype)
    fits = pallas_gpu_intra_outputs.fits(scores.shape[-1], v.shape[-1])
    return _outputs(scores, v.astype(_F32), dtype, kernel and fits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _outputs(scores: Array, v: Array, dtype, kernel: bool) -> Array:
    """``intra_chunk_outputs`` on a float32 ``v`` holding values of ``dtype``."""
    if kernel:
        return pallas_gpu_intra_outputs.intra_outputs(scores, v, dtype)
    return _einsum("bnhij,bnjhe->bnihe", scores, v, dtype)


def _outputs_forward(scores, v, dtype, kernel):
    return _outputs(scores, v, dtype, kernel), (scores, v.astype(dtype))  # exact: dtype's


def _outputs_backward(dtype, kernel, res, do):
    scores, v = res
    do = do.astype(dtype)
    d_scores = _einsum("bnihe,bnjhe->bnhij", do, v, dtype)
    dv = _einsum("bnhij,bnihe->bnjhe", scores, do, dtype, split=True)
    return d_scores, dv


_outputs.defvjp(_outputs_forward, _outputs_backward)
