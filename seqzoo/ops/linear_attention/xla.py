"""Linear attention's XLA forms: the quadratic (parallel) form and the chunked one.

Both take float32 ``q`` (already scaled), ``k``, ``v``, per-key log decays ``g`` (last axis dk or
1), the initial state ``s0`` and ``runs``, the segment index of each position (packed sequences,
``seqzoo.ops.segments.segment_index``), and return ``(o, S_T)``. Decay factors are only ever
formed as ``exp`` of a non-positive difference of cumulative sums taken inside a chunk (masked
before the ``exp``), so tiny decays underflow to zero instead of overflowing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def decay_per_key(log_decay: Array | None, q: Array) -> Array:
    """``log_decay`` as float32 shaped like ``q`` with the last axis dk or 1; zeros when absent."""
    if log_decay is None:
        return jnp.zeros(q.shape[:-1] + (1,), jnp.float32)
    log_decay = log_decay.astype(jnp.float32)
    return log_decay if log_decay.ndim == q.ndim else log_decay[..., None]


def _decay_matrix(cum: Array) -> Array:
    """``exp(G_i - G_j)`` for ``j <= i`` (0 above the diagonal) from ``cum: (..., t, h, d)``.

    Returns ``(..., h, d, t, t)``; the difference is masked before the ``exp``.
    """
    t = cum.shape[-3]
    diff = jnp.moveaxis(cum, -3, -1)[..., :, None] - jnp.moveaxis(cum, -3, -1)[..., None, :]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)


def _decayed_scores(q: Array, k: Array, decay: Array) -> Array:
    """``sum_d q_id k_jd D[d, i, j]``: q, k ``(..., t, h, dk)``, decay ``(..., h, dk|1, t, t)``."""
    if decay.shape[-3] == 1:
        return jnp.einsum("...ihd,...jhd->...hij", q, k, precision=_HI) * decay[..., 0, :, :]
    return jnp.einsum("...ihd,...jhd,...hdij->...hij", q, k, decay, precision=_HI)


def parallel(q, k, v, g, s0, runs):
    """The quadratic form: every ``(i, j)`` pair at once, ``O(t^2)`` memory."""
    cum = jnp.cumsum(g, axis=1)  # (b, t, h, d)
    same = (runs[:, :, None] == runs[:, None, :])[:, None]  # (b, 1, t, t)
    scores = _decayed_scores(q, k, _decay_matrix(cum)) * same  # (b, h, t, t)
    o = jnp.einsum("bhij,bjhv->bihv", scores, v, precision=_HI)
    first = (runs == 0)[..., None, None]  # S_0 reaches the first segment only
    o = o + jnp.einsum("bihd,bhdv->bihv", q * jnp.exp(cum) * first, s0, precision=_HI)
    last = (runs == runs[:, -1:])[..., None, None]  # S_T holds the last segment only
    to_end = jnp.exp(cum[:, -1:] - cum) * last  # exp(G_T - G_j) <= 1
    s_final = jnp.exp(cum[:, -1])[..., None] * s0 * (runs[:, -1] == 0)[:, None, None, None]
    s_final = s_final + jnp.einsum("bjhd,bjhv->bhdv", k * to_end, v, precision=_HI)
    return o, s_final


def chunked(q, k, v, g, s0, runs, chunk_size):
    """Lightning-2 / GLA: the quadratic form inside chunks of ``chunk_size``, the state passed
    over chunk boundaries (any length: padded with identity steps)."""
    b, t, h, dk = q.shape
    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t

    def blocks(a):  # (b, t, h, d) -> (b, n, c, h, d); padding: q=k=v=0, g=0 (identity step)
        a = jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return a.reshape(b, n, c, h, a.shape[-1])

    qc, kc, vc, gc = blocks(q), blocks(k), blocks(v), blocks(g)
    rc = jnp.pad(runs, ((0, 0), (0, pad)), mode="edge").reshape(b, n, c)  # segment per position
    cum = jnp.cumsum(gc, axis=2)  # G within each chunk, (b, n, c, h, d)
    total = cum[:, :, -1]  # (b, n, h, d): log decay across the whole chunk
    run_end = rc[:, :, -1]  # segment at each chunk's end, (b, n)
    run_before = jnp.pad(run_end[:, :-1], ((0, 0), (1, 0)))  # at the previous chunk's end

    # intra-chunk: the quadratic form on each block, within a segment
    same = (rc[..., :, None] == rc[..., None, :])[:, :, None]  # (b, n, 1, c, c)
    scores = _decayed_scores(qc, kc, _decay_matrix(cum)) * same  # (b, n, h, c, c)
    o_intra = jnp.einsum("bnhij,bnjhv->bnihv", scores, vc, precision=_HI)

    # inter-chunk: pass the state S over chunk boundaries, cut where a segment starts
    in_end_run = (rc == run_end[..., None])[..., None, None]
    k_to_end = kc * jnp.exp(total[:, :, None] - cum) * in_end_run  # exp(G_end - G_j) <= 1
    local = jnp.einsum("bnjhd,bnjhv->bnhdv", k_to_end, vc, precision=_HI)
    keep = (run_end == run_before)[..., None, None]  # (b, n, 1, 1): no segment start inside

    def carry(s, inputs):
        local_c, total_c, keep_c = inputs
        return keep_c[..., None] * jnp.exp(total_c)[..., None] * s + local_c, s

    xs = (local, total, keep)
    s_final, s_before = jax.lax.scan(carry, s0, tuple(jnp.moveaxis(a, 1, 0) for a in xs))
    s_before = jnp.moveaxis(s_before, 0, 1)  # (b, n, h, dk, dv): state entering each chunk
    in_first_run = (rc == run_before[..., None])[..., None, None]
    q_from_start = qc * jnp.exp(cum) * in_first_run
    o_inter = jnp.einsum("bnihd,bnhdv->bnihv", q_from_start, s_before, precision=_HI)
    o = (o_intra + o_inter).reshape(b, n * c, h, -1)[:, :t]
    return o, s_final
