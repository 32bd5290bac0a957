"""(Gated) linear attention: sequential, parallel, chunked and Pallas forms of one recurrence.

    S_t = exp(g_t) * S_{t-1} + k_t v_t^T          S_t: (dk, dv)
    o_t = scale * q_t S_t

with no decay (Katharopoulos et al., 2020), a per-head scalar decay g_t (RetNet, Lightning
Attention-2, Mamba-2 style) or a per-key-dimension decay g_t (GLA, Yang et al., 2024), where
``exp(g_t)`` multiplies the rows of ``S``. Unrolled, with G_t = g_1 + ... + g_t,

    o_i = scale * (q_i * exp(G_i)) S_0 + scale * sum_{j<=i} sum_d q_id exp(G_id - G_jd) k_jd v_j.

With ``segment_ids`` (packed sequences) the state is reset to zero where the id changes, so each
segment runs as its own sequence (the first continues from ``S_0``).

Files: this one validates and dispatches; ``xla.py`` (``chunked``, ``parallel``),
``reference.py`` (``sequential``, the step), ``pallas_gpu.py`` (``pallas``),
``pallas_gpu_split.py`` and ``intra_chunk.py`` (``pallas_split``) and
``sequence_parallel.py`` (a sequence split over devices) hold the forms; ``seqzoo.ops.dispatch``
decides what ``impl="auto"`` runs. ``featured.py`` applies a feature map inside the op (Based's
Taylor map: the features recomputed backwards, a block of rows at a time).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_segments import check_segments
from seqzoo.kernels.matmul_precision import resolve_precision
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.dispatch import accepted, canonical, on_platform
from seqzoo.ops.linear_attention import (
    pallas_gpu,
    pallas_gpu_split,
    pallas_tpu,
    reference,
    sequence_parallel,
    xla,
)
from seqzoo.ops.segments import segment_index
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = accepted("linear_attention")


def _check(q, k, v, log_decay, initial_state, chunk_size, segments, impl):
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
    check_positive_int(chunk_size, "chunk_size")
    check_segments(segments, q.shape[1], impl)


def linear_attention_local(q, k, v, log_decay, initial_state, *, scale: float, chunk_size: int,
                           segment_ids: Array | None, impl: str,
                           precision: str = "highest",
                           segments: int | None = None) -> tuple[Array, Array]:
    """The op on unsplit data: ``(o, S_T)``, ``impl`` resolved here on these inputs (no
    validation, no sequence axis: what ``sequence_parallel.py`` runs on each shard);
    ``precision``: the GPU kernel's, resolved (a name); ``segments`` reaches the kernel only."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]

    def run(chosen: str, platform: str):
        if chosen in ("pallas", "pallas_split"):
            parts = segments
            if parts is None and impl == "auto" and chosen == "pallas" and platform != "tpu":
                parts = pallas_gpu.auto_segments(b, h, t, dv)  # long sequences, few heads
            split = {} if parts is None else {"segments": parts}
            if platform == "tpu":  # float32 at HIGHEST: TF32 is a GPU format
                kernel = pallas_tpu.linear_attention_kernel
            else:
                gpu = pallas_gpu_split if chosen == "pallas_split" else pallas_gpu
                kernel = functools.partial(gpu.linear_attention_kernel, precision=precision)
            return lambda q, k, v, g, s0: kernel(q, k, v, g, scale=scale, initial_state=s0,
                                                 chunk_size=chunk_size, **split)
        return functools.partial(_xla_forms, impl=chosen, scale=scale, chunk_size=chunk_size,
                                 segment_ids=segment_ids)

    return on_platform("linear_attention", impl, run, q, k, v, log_decay, initial_state,
                       dims=(dk, dv), dtypes=(q.dtype, k.dtype, v.dtype), segment_ids=segment_ids,
                       per_key=log_decay is not None and log_decay.ndim == 4, precision=precision)


def _xla_forms(q, k, v, log_decay, initial_state, *, impl: str, scale: float, chunk_size: int,
               segment_ids: Array | None) -> tuple[Array, Array]:
    """``(o, S_T)`` by the XLA form ``impl`` (chunked, parallel or sequential)."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    g = xla.decay_per_key(log_decay, q)
    s0 = (jnp.zeros((b, h, dk, dv), jnp.float32) if initial_state is None
          else initial_state.astype(jnp.float32))
    qf, kf, vf = (a.astype(jnp.float32) for a in (q, k, v))
    runs = segment_index(segment_ids, b, t)  # segment index, 0 for the first
    if impl == "chunked":
        o, s_final = xla.chunked(qf, kf, vf, g, s0, runs, chunk_size, scale)
    else:
        form = {"parallel": xla.parallel, "sequential": reference.sequential}[impl]
        o, s_final = form(qf * scale, kf, vf, g, s0, runs)
    return o.astype(v.dtype), s_final


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
    precision: str | None = None,
    segments: int | None = None,
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
      impl: ``"chunked"`` (Lightning-2 / GLA intra-chunk quadratic + inter-chunk state passing),
        ``"parallel"`` (the quadratic form), ``"sequential"`` (a scan), ``"pallas"`` (the
        chunked kernels, forward and backward; its chunk is ``chunk_size`` capped at its tuned
        size; with ``segment_ids`` it falls back to ``"chunked"``), ``"pallas_split"`` (for
        per-key decays: the kernel for the terms across chunks, the intra-chunk scores parallel
        over chunks, by Pallas kernels for 16-bit inputs and XLA for float32; ``"pallas"`` on a
        TPU, ``"chunked"`` with ``segment_ids``) or
        ``"auto"``
        (``seqzoo.ops.explain("linear_attention", ...)`` says what it picks and why).
        ``"chunk"`` and ``"recurrent"`` are the deprecated names of ``"chunked"`` and
        ``"sequential"``.
      seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that
        of the active ``seqzoo.parallel.sequence_parallel`` context).
      precision: float32 matmuls of ``"pallas"`` on a GPU (the Triton kernel; of
        ``"pallas_split"``, its inter-chunk passes), forward and backward: ``"highest"`` (IEEE,
        no tensor cores), ``"tf32x3"`` (3xTF32 on tensor cores, about float32's accuracy) or
        ``"tf32"`` (one TF32 pass, ~1e-3 relative); None: ``jax.default_matmul_precision``'s,
        else "tf32x3" (``seqzoo.kernels.matmul_precision``). 16-bit inputs, the TPU kernel
        (float32 at HIGHEST) and the XLA forms (IEEE float32: their einsums pass
        ``Precision.HIGHEST``, whatever the context) do not read it; interpret mode computes
        IEEE. On a GPU, ``"auto"`` takes the kernel for float32 inputs without per-key decays,
        and ``"pallas_split"`` for float32 per-key decays, unless this resolves to "highest"
        (then XLA's IEEE form runs).
      segments: where the Pallas kernel runs (``impl="pallas"`` or ``"pallas_split"``, or
        ``"auto"`` when it picks one), cut the sequence into this many segments run in parallel
        as extra batch rows of one launch, their states combined after it
        (``seqzoo.kernels.chunked_segments``; for long sequences with few heads). None: one
        segment, the kernel walks the whole sequence; but where ``"auto"`` picks the one-pass
        GPU kernel for a launch that would leave most of the GPU idle,
        ``pallas_gpu.auto_segments``' count (measured faster, and than fla, at
        (2, 32768, 4, 64) and (1, 65536, 2, 128)); ``"pallas_split"`` takes a count only when
        given one (1, 2 or 4 segments ran slower than none at (4, 2048, 16, 128)). An int in
        [1, length]; refused with an explicit XLA ``impl``.

    Returns:
      ``o: (batch, length, heads, dv)`` in ``v``'s dtype, and ``S_T`` if asked. Computation is
      float32 whatever the input dtype.
    """
    impl = canonical("linear_attention", impl)
    _check(q, k, v, log_decay, initial_state, chunk_size, segments, impl)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    local = functools.partial(linear_attention_local, scale=scale, chunk_size=chunk_size,
                              segment_ids=segment_ids, impl=impl,
                              precision=resolve_precision(precision), segments=segments)
    axis = sequence_axis(seq_axis)
    if axis is None:
        o, s_final = local(q, k, v, log_decay, initial_state)
    else:  # sequence parallel: the state is carried across shards
        o, s_final = sequence_parallel.sharded_linear_attention(
            local, q, k, v, log_decay, initial_state, axis=axis, scale=scale,
            segment_ids=segment_ids,
        )
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
    state, o = reference.recurrence_step(
        state.astype(jnp.float32),
        q_t.astype(jnp.float32) * scale,
        k_t.astype(jnp.float32),
        v_t.astype(jnp.float32),
        xla.decay_per_key(log_decay_t, q_t),
    )
    return state, o.astype(v_t.dtype)
