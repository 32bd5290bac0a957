"""The (gated) delta rule: DeltaNet (Schlag et al. 2021; Yang et al. 2024) and Gated DeltaNet
(Yang, Kautz & Hatamizadeh 2025), per head, with the state ``S_t: (dk, dv)``:

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
    o_t = S_t^T (scale q_t)

``a_t = exp(log_decay_t)`` (None: ``a_t = 1``, DeltaNet), ``b_t = beta_t`` the writing strength.
Read as online regression: ``S`` takes one gradient step of size ``b_t`` on
``||S^T k_t - v_t||^2 / 2``, replacing the value stored under ``k_t`` instead of adding to it
(linear attention). (The papers write the transpose, ``S_t = a_t S_{t-1} (I - b_t k_t k_t^T) +
b_t v_t k_t^T``, ``o_t = S_t q_t``; this is the ``(dk, dv)`` layout of ``linear_attention`` and of
fla's states.) The transition is a contraction when ``0 <= b_t ||k_t||^2 <= 2`` and
``log_decay <= 0``: the layers L2-normalise ``k`` and take ``b_t = sigmoid(.)`` (times 2 with
negative eigenvalues allowed).

With ``segment_ids`` (packed sequences) the state is reset to zero where the id changes, so each
segment runs as its own sequence (the first continues from ``initial_state``).

Files: this one validates and dispatches; ``xla.py`` holds the forms (``chunked``: the WY /
UT-transform chunked form, ``sequential``: a scan, ``matrix``: the dense ``M``),
``sequence_parallel.py`` the sequence split over devices (matrix transitions carried across the
shards) and ``reference.py`` the equations step by step with explicit ``dk x dk`` transitions
(the float64 reference of the tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.delta_rule import sequence_parallel, xla
from seqzoo.ops.dispatch import canonical, resolve
from seqzoo.ops.segments import segment_runs
from seqzoo.parallel.context import sequence_axis

Array = jax.Array


def _check(q, k, v, beta, log_decay, initial_state, chunk_size, impl):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be (batch, length, heads, dim); got ranks {q.ndim}, {k.ndim}, {v.ndim}"
        )
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {q.shape} and {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v's (batch, length, heads) {v.shape[:3]} differ from q's {q.shape[:3]}")
    for name, a in (("beta", beta), ("log_decay", log_decay)):
        if a is not None and a.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (batch, length, heads)={q.shape[:3]}, got {a.shape}")
    b, _, h, dk = q.shape
    if initial_state is not None and initial_state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial_state must be (batch, heads, dk, dv)={(b, h, dk, v.shape[-1])}, "
            f"got {initial_state.shape}"
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    canonical("delta_rule", impl)


def _runs(segment_ids: Array | None, batch: int, length: int) -> Array:
    """The segment index of each position, ``(batch, length)`` int32 (zeros without ids)."""
    if segment_ids is None:
        return jnp.zeros((batch, length), jnp.int32)
    if segment_ids.shape != (batch, length):
        raise ValueError(
            f"segment_ids must be (batch, length)={(batch, length)}, got {segment_ids.shape}"
        )
    return segment_runs(segment_ids)


def _float32(*arrays):
    return tuple(None if a is None else a.astype(jnp.float32) for a in arrays)


def _operand_dtype(*arrays):
    """The chunked form's matmul operand dtype: the inputs' common dtype if narrower than float32
    (bf16, f16: fla's operands, f32 accumulation), else float32 (IEEE products)."""
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(jnp.float32)


def delta_rule(
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    log_decay: Array | None = None,
    *,
    scale: float | None = None,
    initial_state: Array | None = None,
    return_final_state: bool = False,
    segment_ids: Array | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
    seq_axis: str | None = None,
):
    """The (gated) delta rule ``S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T``,
    ``o_t = S_t^T (scale q_t)`` (module docstring).

    Args:
      q, k: ``(batch, length, heads, dk)``; normalisation (L2) is the caller's.
      v: ``(batch, length, heads, dv)``.
      beta: ``b: (batch, length, heads)``, the writing strength (in [0, 2 / ||k||^2]).
      log_decay: ``log a: (batch, length, heads)``, <= 0; None for no decay (DeltaNet).
      scale: multiplies ``q``; default ``dk ** -0.5``.
      initial_state: ``S_0: (batch, heads, dk, dv)``; default zeros.
      return_final_state: also return ``S_T: (batch, heads, dk, dv)`` in float32.
      segment_ids: ``(batch, length)`` int or None: packed sequences, state reset at each change.
      chunk_size: block length of the chunked form; any ``length`` works (padded internally).
      impl: ``"chunked"`` (the WY / UT-transform form: matrix products inside a chunk, the state
        passed across chunks; ``xla.py``), ``"sequential"`` (a ``lax.scan`` over positions) or
        ``"auto"`` (``"chunked"``).
      seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that
        of the active ``seqzoo.parallel.sequence_parallel`` context; ``sequence_parallel.py``).

    Returns:
      ``o: (batch, length, heads, dv)`` in ``v``'s dtype, and ``S_T`` if asked.

    Dtypes: ``"chunked"`` takes its matmul operands in the inputs' dtype when ``q, k, v`` are
    bf16 (or f16), accumulating in float32 (as fla's ``chunk_gated_delta_rule``); ``beta``, the
    decays, the triangular inverse ``T`` and the carried state are float32 always. float32
    inputs run every matmul in float32 at ``Precision.HIGHEST``. ``"sequential"`` computes in
    float32 whatever the input dtype.
    """
    _check(q, k, v, beta, log_decay, initial_state, chunk_size, impl)
    b, t, h, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    local = functools.partial(delta_rule_local, scale=scale, chunk_size=chunk_size, impl=impl)
    axis = sequence_axis(seq_axis)
    if axis is None:
        o, s_final = local(q, k, v, beta, log_decay, initial_state, segment_ids=segment_ids)
    else:  # sequence parallel: the state is carried across shards
        o, s_final = sequence_parallel.sharded_delta_rule(
            local, q, k, v, beta, log_decay, initial_state, axis=axis, segment_ids=segment_ids
        )
    return (o, s_final) if return_final_state else o


def delta_rule_local(q, k, v, beta, log_decay, initial_state, *, scale: float, chunk_size: int,
                     impl: str, segment_ids: Array | None = None) -> tuple[Array, Array]:
    """The op on unsplit data: ``(o, S_T)``, shapes as ``delta_rule``'s, ``scale`` given (no
    validation, no sequence axis: what ``sequence_parallel.py`` runs on each shard)."""
    b, t, h, dk = q.shape
    runs = _runs(segment_ids, b, t)
    bf, gf, s0 = _float32(beta, log_decay, initial_state)  # gf None: no decay (DeltaNet)
    s0 = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32) if s0 is None else s0
    if resolve("delta_rule", impl).impl == "sequential":
        qf, kf, vf = _float32(q, k, v)
        gf = jnp.zeros((b, t, h), jnp.float32) if gf is None else gf
        o, s_final = xla.sequential(qf * scale, kf, vf, bf, gf, s0, runs)
    else:
        operand = _operand_dtype(q, k, v)
        qo = (q.astype(jnp.float32) * scale).astype(operand)
        o, s_final = xla.chunked(qo, k.astype(operand), v.astype(operand), bf, gf, s0, runs,
                                 chunk_size)
    o = o.astype(v.dtype)
    return o, s_final


def delta_rule_step(
    state: Array,
    q_t: Array,
    k_t: Array,
    v_t: Array,
    beta_t: Array,
    log_decay_t: Array | None = None,
    scale: float | None = None,
) -> tuple[Array, Array]:
    """One decoding step of ``delta_rule``.

    Args:
      state: ``S: (batch, heads, dk, dv)`` float32.
      q_t, k_t: ``(batch, heads, dk)``; v_t: ``(batch, heads, dv)``.
      beta_t: ``(batch, heads)``; log_decay_t: ``(batch, heads)`` or None.
    Returns:
      ``(state, o_t: (batch, heads, dv))`` with ``o_t`` in ``v_t``'s dtype.
    """
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf, bf, gf, s = _float32(q_t, k_t, v_t, beta_t, log_decay_t, state)
    gf = jnp.zeros_like(bf) if gf is None else gf
    state, o = xla.recurrence_step(s, qf * scale, kf, vf, bf, gf)
    return state, o.astype(v_t.dtype)


def delta_rule_matrix(
    q: Array,
    k: Array,
    beta: Array,
    log_decay: Array | None = None,
    *,
    scale: float | None = None,
    segment_ids: Array | None = None,
) -> Array:
    """The mixing matrix ``M: (batch, heads, length, length)`` float32, ``o_i = sum_j M[i, j]
    v_j`` (zero initial state): ``M[i, j] = scale q_i^T A_i ... A_{j+1} b_j k_j`` for ``j <= i``
    in one segment, ``A_l = a_l (I - b_l k_l k_l^T)``. Shapes as ``delta_rule``'s; O(L^2 dk)."""
    b, t, h, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    qf, kf, bf, gf = _float32(q, k, beta, log_decay)
    gf = jnp.zeros((b, t, h), jnp.float32) if gf is None else gf
    return xla.matrix(qf * scale, kf, bf, gf, _runs(segment_ids, b, t))
