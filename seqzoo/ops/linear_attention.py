"""(Gated) linear attention: recurrent, parallel and chunked forms of one recurrence.

    S_t = exp(g_t) * S_{t-1} + k_t v_t^T          S_t: (dk, dv)
    o_t = scale * q_t S_t

with no decay (Katharopoulos et al., 2020), a per-head scalar decay g_t (RetNet, Lightning
Attention-2, Mamba-2 style) or a per-key-dimension decay g_t (GLA, Yang et al., 2024), where
``exp(g_t)`` multiplies the rows of ``S``. Unrolled, with G_t = g_1 + ... + g_t,

    o_i = scale * (q_i * exp(G_i)) S_0 + scale * sum_{j<=i} sum_d q_id exp(G_id - G_jd) k_jd v_j.

With ``segment_ids`` (packed sequences) the state is reset to zero where the id changes, so each
segment runs as its own sequence (the first continues from ``S_0``).

Every form is exact in float32: decay factors are only ever formed as ``exp`` of a non-positive
difference of cumulative sums taken inside a chunk (masked before the ``exp``), so tiny decays
underflow to zero instead of overflowing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_linear_attention import choose, linear_attention_kernel
from seqzoo.ops.recurrence import segment_starts
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = ("auto", "chunk", "parallel", "recurrent", "pallas")
_HI = jax.lax.Precision.HIGHEST


def _check(q, k, v, log_decay, initial_state, impl, chunk_size):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be (batch, length, heads, dim); got ranks {q.ndim}, {k.ndim}, {v.ndim}"
        )
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {q.shape} and {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v's (batch, length, heads) {v.shape[:3]} differ from q's {q.shape[:3]}")
    if log_decay is not None and log_decay.shape not in (q.shape[:3], q.shape):
        raise ValueError(
            f"log_decay must be (batch, length, heads)={q.shape[:3]} or (batch, length, heads, dk)"
            f"={q.shape}, got {log_decay.shape}"
        )
    b, _, h, dk = q.shape
    if initial_state is not None and initial_state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial_state must be (batch, heads, dk, dv)={(b, h, dk, v.shape[-1])}, "
            f"got {initial_state.shape}"
        )
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _decay_per_key(log_decay: Array | None, q: Array) -> Array:
    """``log_decay`` as float32 shaped like ``q`` with the last axis dk or 1; zeros when absent."""
    if log_decay is None:
        return jnp.zeros(q.shape[:-1] + (1,), jnp.float32)
    log_decay = log_decay.astype(jnp.float32)
    return log_decay if log_decay.ndim == q.ndim else log_decay[..., None]


def linear_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    log_decay: Array | None = None,
    scale: float | None = None,
    initial_state: Array | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    segment_ids: Array | None = None,
    impl: str = "auto",
    seq_axis: str | None = None,
):
    """Gated linear attention ``o_t = scale * q_t S_t``, ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``.

    Args:
      q, k: ``(batch, length, heads, dk)``; feature maps are applied by the caller.
      v: ``(batch, length, heads, dv)``.
      log_decay: ``g``: None (no decay), ``(batch, length, heads)`` (scalar per head) or
        ``(batch, length, heads, dk)`` (per key dimension). Should be <= 0.
      scale: multiplies ``q``; default ``dk ** -0.5``.
      initial_state: ``S_0: (batch, heads, dk, dv)``; default zeros.
      return_final_state: also return ``S_T: (batch, heads, dk, dv)`` in float32.
      chunk_size: block length of the chunked form; any ``length`` works (padded internally).
      segment_ids: ``(batch, length)`` int or None: packed sequences, state reset at each change.
      impl: ``"chunk"`` (Lightning-2 / GLA intra-chunk quadratic + inter-chunk state passing;
        what ``"auto"`` picks off GPU), ``"parallel"`` (the quadratic form), ``"recurrent"`` (a
        scan), ``"pallas"`` (``seqzoo.kernels.chunked_linear_attention``, forward and backward
        kernels; what ``"auto"`` picks on a GPU for 16-bit q, k, v and no or per-head decay,
        where it measured faster (benchmarks/RESULTS.md) -- not in float32, where XLA is faster,
        and not for per-key decay, where it runs 13-18x slower than
        flash-linear-attention and is not shown to beat the XLA path; its chunk is
        ``chunk_size`` capped at its tuned size; with ``segment_ids`` it falls back to
        ``"chunk"``).
      seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that
        of the active ``seqzoo.parallel.sequence_parallel`` context).

    Returns:
      ``o: (batch, length, heads, dv)`` in ``v``'s dtype, and ``S_T`` if asked. Computation is
      float32 whatever the input dtype.
    """
    _check(q, k, v, log_decay, initial_state, impl, chunk_size)
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: seqzoo.parallel carries the state across shards
        from seqzoo.parallel.linear_attention import sharded_linear_attention

        return sharded_linear_attention(
            q, k, v, axis=axis, log_decay=log_decay, scale=scale, initial_state=initial_state,
            return_final_state=return_final_state, chunk_size=chunk_size,
            segment_ids=segment_ids, impl=impl,
        )
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    per_key = log_decay is not None and log_decay.ndim == 4
    impl = choose(impl, xla="chunk", dims=(dk, dv), dtypes=(q.dtype, k.dtype, v.dtype),
                  segment_ids=segment_ids, per_key=per_key)
    if impl == "pallas":
        o, s_final = linear_attention_kernel(q, k, v, log_decay, scale=scale,
                                             initial_state=initial_state, chunk_size=chunk_size)
        return (o, s_final) if return_final_state else o
    g = _decay_per_key(log_decay, q)
    s0 = (
        jnp.zeros((b, h, dk, dv), jnp.float32)
        if initial_state is None
        else initial_state.astype(jnp.float32)
    )
    qf, kf, vf = (a.astype(jnp.float32) for a in (q, k, v))
    t = q.shape[1]
    starts = jnp.zeros((b, t), bool) if segment_ids is None else segment_starts(segment_ids, b, t)
    runs = jnp.cumsum(starts.astype(jnp.int32), axis=1)  # segment index, 0 for the first
    form = {"auto": _chunk, "chunk": _chunk, "parallel": _parallel, "recurrent": _recurrent}[impl]
    if impl in ("auto", "chunk"):
        o, s_final = form(qf * scale, kf, vf, g, s0, runs, chunk_size)
    else:
        o, s_final = form(qf * scale, kf, vf, g, s0, runs)
    o = o.astype(v.dtype)
    return (o, s_final) if return_final_state else o


def linear_attention_step(
    state: Array,
    q_t: Array,
    k_t: Array,
    v_t: Array,
    log_decay_t: Array | None = None,
    scale: float | None = None,
) -> tuple[Array, Array]:
    """One decoding step: ``S = exp(g_t) S + k_t v_t^T``, ``o_t = scale * q_t S``.

    Args:
      state: ``(batch, heads, dk, dv)`` float32.
      q_t, k_t: ``(batch, heads, dk)``; v_t: ``(batch, heads, dv)``.
      log_decay_t: None, ``(batch, heads)`` or ``(batch, heads, dk)``.
    Returns:
      ``(state, o_t: (batch, heads, dv))`` with ``o_t`` in ``v_t``'s dtype.
    """
    dk = q_t.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    state, o = _recurrence_step(
        state.astype(jnp.float32),
        q_t.astype(jnp.float32) * scale,
        k_t.astype(jnp.float32),
        v_t.astype(jnp.float32),
        _decay_per_key(log_decay_t, q_t),
    )
    return state, o.astype(v_t.dtype)


def _recurrence_step(s, q_t, k_t, v_t, g_t):
    """One step. ``s: (b, h, dk, dv)``; ``q_t, k_t: (b, h, dk)``; ``v_t: (b, h, dv)``;
    ``g_t: (b, h, dk or 1)``."""
    s = jnp.exp(g_t)[..., None] * s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s, precision=_HI)


def _recurrent(q, k, v, g, s0, runs):
    def body(s, inputs):
        start, *step_inputs = inputs
        return _recurrence_step(jnp.where(start[:, None, None, None], 0.0, s), *step_inputs)

    starts = runs != jnp.pad(runs[:, :-1], ((0, 0), (1, 0)))
    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (starts, q, k, v, g))
    s_final, o = jax.lax.scan(body, s0, xs)
    return jnp.moveaxis(o, 0, 1), s_final


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


def _parallel(q, k, v, g, s0, runs):
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


def _chunk(q, k, v, g, s0, runs, chunk_size):
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
