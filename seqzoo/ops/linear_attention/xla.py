"""Linear attention's XLA forms: the quadratic (parallel) form and the chunked one.

Both take float32 ``q`` (already scaled; ``chunked`` scales it itself), ``k``, ``v``, per-key log
decays ``g`` (last axis dk or 1), the initial state ``s0`` and ``runs``, the segment index of each
position (packed sequences, ``seqzoo.ops.segments.segment_index``), and return ``(o, S_T)``.
Decay factors are only ever formed as ``exp`` of a non-positive difference of cumulative sums
taken inside a chunk (masked before the ``exp``), so tiny decays underflow to zero instead of
overflowing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import chunkwise
from seqzoo.ops.segments import entering_runs

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
PER_KEY_CHUNK = 16  # the longest chunk of the chunked form with a per-key decay (GLA)


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


def chunked(q, k, v, g, s0, runs, chunk_size, scale=1.0):
    """Lightning-2 / GLA: the quadratic form inside chunks of ``chunk_size``, the state passed
    over chunk boundaries (any length: padded with identity steps).

    One scan step per chunk (``seqzoo.ops.lean_grad.chunkwise``): the backward pass keeps
    only the inputs and the state entering each chunk, ``(n, b, h, dk, dv)``, and recomputes a
    chunk's ``(C, C)`` scores (``(dk, C, C)`` decays with a per-key decay) when it reaches it;
    the forward pass holds one chunk's at a time. With a per-key decay the chunk is at most
    ``PER_KEY_CHUNK``: its ``(dk, C, C)`` decays are ``dk C`` floats a position, ``C`` times
    the keys' size (GLA's secondary chunking, without its ``exp(G_ref - G_j)`` factors that can
    overflow). ``q`` is scaled by ``scale`` chunk by chunk (so the ``q`` kept is the caller's).
    """
    t = q.shape[1]
    c = min(chunk_size, t, PER_KEY_CHUNK if g.shape[-1] > 1 else t)
    lean = chunkwise(functools.partial(_chunk, scale=scale), c)
    return lean(((q, k, v, g), entering_runs(runs, c)), (), s0)


def _chunk(inputs, shared, s, *, scale: float):
    """One chunk entered with state ``s: (b, h, dk, dv)``: ``(o: (b, c, h, dv), S after it)``.

    q, k ``(b, c, h, dk)``, v ``(b, c, h, dv)``, g ``(b, c, h, dk|1)``, rc ``(b, c)`` the segment
    of each position, entering ``(b, c)`` the segment the state ``s`` belongs to (at every
    position)."""
    (q, k, v, g), (rc, entering) = inputs
    run_before = entering[:, 0]
    q = q * scale
    cum = jnp.cumsum(g, axis=1)  # G within the chunk, (b, c, h, d)
    total = cum[:, -1]  # (b, h, d): log decay across the whole chunk
    run_end = rc[:, -1]  # (b,)

    # intra-chunk: the quadratic form, within a segment
    same = (rc[:, :, None] == rc[:, None, :])[:, None]  # (b, 1, c, c)
    scores = _decayed_scores(q, k, _decay_matrix(cum)) * same  # (b, h, c, c)
    o = jnp.einsum("bhij,bjhv->bihv", scores, v, precision=_HI)

    # inter-chunk: the state entering the chunk reaches its first segment only
    q_from_start = q * jnp.exp(cum) * (rc == run_before[:, None])[..., None, None]
    o = o + jnp.einsum("bihd,bhdv->bihv", q_from_start, s, precision=_HI)

    # the state leaving it: cut where a segment starts inside the chunk
    k_to_end = k * jnp.exp(total[:, None] - cum) * (rc == run_end[:, None])[..., None, None]
    keep = (run_end == run_before)[:, None, None, None]
    s = keep * jnp.exp(total)[..., None] * s
    return o, s + jnp.einsum("bjhd,bjhv->bhdv", k_to_end, v, precision=_HI)
