"""Scaled dot-product softmax attention (Vaswani et al., 2017) with windows, sinks and GQA.

    o_i = sum_j P_ij v_j,   P_ij = exp(s_ij) / sum_{j' in A(i)} exp(s_ij'),   s_ij = scale q_i . k_j

for keys ``j`` in the allowed set ``A(i)`` (``P_ij = 0`` elsewhere). In positions ``p``:

* causal: ``p_j <= p_i``;
* window ``w`` (sliding-window attention): ``p_i - w < p_j`` (causal) or ``|p_i - p_j| < w``;
* ``num_sinks`` ``S`` (StreamingLLM attention sinks, Xiao et al., 2023): keys with ``p_j < S``
  stay visible to every query in addition to the window (still subject to causality);
* padding: padded queries and keys take part in nothing; a query with no allowed key outputs 0;
* ``segment_ids`` (packed sequences): keys of another segment (a maximal run of equal ids) are
  not allowed, and positions restart at each segment.

Positions count valid tokens only (``p = cumsum(mask) - 1``), so RoPE, windows and sinks ignore
padding wherever it is, and a decoder that skips padded tokens sees the same positions.
Grouped-query attention (Ainslie et al., 2023): ``k, v`` have ``kv_heads`` heads, query head ``n``
reads kv head ``n // (heads / kv_heads)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.fused_attention import attention_impl, fused_attention
from seqzoo.parallel.collectives import tokens_before
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = ("auto", "xla", "cudnn")
_HI = jax.lax.Precision.HIGHEST


def check_options(window: int | None, num_sinks: int, impl: str = "auto") -> None:
    """Raise ``ValueError`` naming the bad option among ``window``, ``num_sinks``, ``impl``."""
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    if not isinstance(num_sinks, int) or num_sinks < 0:
        raise ValueError(f"num_sinks must be an int >= 0, got {num_sinks!r}")
    if num_sinks and window is None:
        raise ValueError(f"num_sinks={num_sinks} needs a window (without one every key is visible)")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def valid_positions(mask: Array, seq_axis: str | None = None) -> Array:
    """Positions counted over valid tokens, ``cumsum(mask) - 1``: ``(..., length)`` int32.

    ``seq_axis`` (default: the active ``seqzoo.parallel`` context's): the sequence is split over
    this mesh axis, and the valid tokens of earlier shards count too.
    """
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: positions continue from the earlier shards
        positions = positions + tokens_before(mask, axis)[..., None]
    return positions


def segment_runs(segment_ids: Array) -> Array:
    """Index of the run of equal ids each position is in: ``(batch, length)`` int32."""
    change = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )
    return jnp.cumsum(change.astype(jnp.int32), axis=1) - 1


def segment_positions(mask: Array, segment_ids: Array | None) -> Array:
    """Positions over valid tokens, restarting at every segment: ``(batch, length)`` int32."""
    if segment_ids is None:
        return valid_positions(mask)
    before = jnp.cumsum(mask.astype(jnp.int32), axis=1) - mask.astype(jnp.int32)
    runs = segment_runs(segment_ids)
    start = jnp.concatenate([jnp.ones_like(runs[:, :1], bool), runs[:, 1:] != runs[:, :-1]], 1)
    base = jax.lax.cummax(jnp.where(start, before, 0), axis=1)  # valid tokens before the run
    return before - base


def repeat_kv(x: Array, heads: int) -> Array:
    """GQA: ``(batch, length, kv_heads, d) -> (batch, length, heads, d)``, head n reads n // g."""
    return jnp.repeat(x, heads // x.shape[-2], axis=-2)


def attention_mask(
    q_positions: Array,
    k_positions: Array,
    *,
    causal: bool,
    window: int | None = None,
    num_sinks: int = 0,
    q_valid: Array | None = None,
    k_valid: Array | None = None,
) -> Array:
    """The allowed (query, key) pairs ``A``: bool ``(..., lq, lk)``.

    Args:
      q_positions: ``(..., lq)``; k_positions: ``(..., lk)`` (leading axes broadcast).
      causal, window, num_sinks: see the module docstring.
      q_valid, k_valid: optional bool masks shaped like the positions; invalid rows/columns are
        all False.
    """
    diff = q_positions[..., :, None] - k_positions[..., None, :]
    allowed = diff >= 0 if causal else jnp.ones(diff.shape, bool)
    if window is not None:
        near = diff < window if causal else jnp.abs(diff) < window
        if num_sinks:
            near = near | (k_positions < num_sinks)[..., None, :]
        allowed = allowed & near
    if q_valid is not None:
        allowed = allowed & q_valid[..., :, None]
    if k_valid is not None:
        allowed = allowed & k_valid[..., None, :]
    return allowed


def _check(q: Array, k: Array, v: Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be (batch, length, heads, dim); got ranks {q.ndim}, {k.ndim}, {v.ndim}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {q.shape} and k {k.shape} differ in batch or head dim")
    if q.shape[2] % k.shape[2]:
        raise ValueError(
            f"kv heads ({k.shape[2]}) must divide query heads ({q.shape[2]}) for grouped-query "
            "attention"
        )


def _self_mask(
    mask: Array | None, length: int, segment_ids: Array | None = None, **options
) -> Array:
    """``A`` for self-attention over ``length`` tokens with padding ``mask: (batch, length)``
    and packed ``segment_ids: (batch, length)``."""
    if mask is None and segment_ids is None:
        positions = jnp.arange(length)
        return attention_mask(positions, positions, **options)[None]
    if mask is None:
        mask = jnp.ones(segment_ids.shape, bool)
    positions = segment_positions(mask, segment_ids)
    allowed = attention_mask(positions, positions, q_valid=mask, k_valid=mask, **options)
    if segment_ids is not None:
        runs = segment_runs(segment_ids)
        allowed = allowed & (runs[:, :, None] == runs[:, None, :])
    return allowed


def attention_probs(q: Array, k: Array, allowed: Array, scale: float | None = None) -> Array:
    """Masked softmax probabilities ``P: (batch, heads, lq, lk)`` in float32.

    Args:
      q: ``(batch, lq, heads, d)``; k: ``(batch, lk, kv_heads, d)``.
      allowed: bool, broadcastable to ``(batch, lq, lk)``.
    Scores are masked before the max subtraction, so disallowed keys never affect the result;
    a row without any allowed key is all zeros.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = repeat_kv(k.astype(jnp.float32), q.shape[2])
    s = jnp.einsum("bihd,bjhd->bhij", q.astype(jnp.float32), k, precision=_HI) * scale
    allowed = allowed[..., None, :, :]
    s = jnp.where(allowed, s, -jnp.inf)
    s_max = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.where(allowed, jnp.exp(s - jnp.where(jnp.isfinite(s_max), s_max, 0.0)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def attention_matrix(
    q: Array,
    k: Array,
    *,
    causal: bool = False,
    window: int | None = None,
    num_sinks: int = 0,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    scale: float | None = None,
) -> Array:
    """The attention matrix ``P: (batch, heads, length, length)`` (float32), same mask as
    ``dot_product_attention``; ``dot_product_attention(q, k, v) = P @ repeat_kv(v)``."""
    check_options(window, num_sinks)
    _check(q, k, k)
    allowed = _self_mask(
        mask, q.shape[1], segment_ids, causal=causal, window=window, num_sinks=num_sinks
    )
    return attention_probs(q, k, allowed, scale)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool = False,
    window: int | None = None,
    num_sinks: int = 0,
    mask: Array | None = None,
    segment_ids: Array | None = None,
    scale: float | None = None,
    impl: str = "auto",
    seq_axis: str | None = None,
) -> Array:
    """Softmax attention through ``jax.nn.dot_product_attention``.

    Args:
      q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``.
      causal, window, num_sinks: see the module docstring.
      mask: ``(batch, length)`` bool padding mask (True = valid) or None.
      segment_ids: ``(batch, length)`` int, packed sequences (see the module docstring), or None.
      scale: default ``d ** -0.5``.
      impl: ``"auto"`` (``seqzoo.ops.fused_attention.attention_impl`` picks, and says why:
        cuDNN's flash attention on a GPU where it applies, else XLA), ``"xla"`` or ``"cudnn"``.
      seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
        the active ``seqzoo.parallel.sequence_parallel`` context): ring attention
        (``seqzoo.parallel.ring_attention``; ``impl`` is not used there).

    cuDNN gets the pattern as ``is_causal`` / ``local_window_size`` and padding as sequence
    lengths (``fused_attention``); XLA gets an explicit boolean mask from ``attention_mask``
    wherever there is padding, sinks or segments.
    Returns ``(batch, length, heads, d)`` in the inputs' dtype; softmax in float32 (float32 inputs
    use full-precision matmuls); padded query rows are 0.
    """
    check_options(window, num_sinks, impl)
    _check(q, k, v)
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: K and V travel around the ring of shards
        from seqzoo.parallel.ring_attention import sharded_attention

        return sharded_attention(
            q, k, v, axis=axis, causal=causal, window=window, num_sinks=num_sinks, mask=mask,
            segment_ids=segment_ids, scale=scale,
        )
    dtype = jnp.result_type(q, k, v)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    chosen, _ = attention_impl(impl, dtype, q.shape[-1], causal=causal, window=window,
                               num_sinks=num_sinks, segment_ids=segment_ids is not None)
    if chosen == "cudnn" and not num_sinks and segment_ids is None:
        return fused_attention(q, k, v, causal=causal, window=window, mask=mask, scale=scale)
    if mask is None and segment_ids is None and not num_sinks:
        sides = None if window is None else (window - 1, 0 if causal else window - 1)
        pattern = {"is_causal": causal, "local_window_size": sides}
    else:  # (impl="cudnn" asked for with sinks or segments: cuDNN takes the mask too)
        options = {"causal": causal, "window": window, "num_sinks": num_sinks}
        pattern = {"mask": _self_mask(mask, q.shape[1], segment_ids, **options)[:, None]}
    precision = "highest" if dtype == jnp.float32 else None
    with jax.default_matmul_precision(precision):
        o = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=chosen, **pattern)
    if mask is not None:  # jax gives padded rows (no allowed key) a uniform average: zero them
        o = jnp.where(mask[:, :, None, None], o, jnp.zeros((), o.dtype))
    return o
