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

Files: this one validates and dispatches; ``masks.py`` (the allowed pairs), ``xla.py`` (the dense
softmax, ``impl="parallel"``), ``cudnn.py`` (``impl="cudnn"``), ``tokamax_gpu.py``
(``impl="tokamax"``), ``splash_tpu.py`` (``impl="splash"``), ``chunked.py`` (Mega's chunked
attention, its own op), ``sequence_parallel.py`` (ring attention over devices) and
``ulysses.py`` (DeepSpeed-Ulysses: the sequence traded for heads around any of the others);
``seqzoo.ops.dispatch`` decides what ``impl="auto"`` runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.attention import xla
from seqzoo.ops.attention.cudnn import fused_attention
from seqzoo.ops.attention.masks import (
    attention_mask,
    repeat_kv,
    segment_positions,
    self_mask,
    valid_positions,
)
from seqzoo.ops.attention.sequence_parallel import sharded_attention
from seqzoo.ops.attention.splash_tpu import splash_attention
from seqzoo.ops.attention.tokamax_gpu import tokamax_attention
from seqzoo.ops.attention.ulysses import ulysses_attention
from seqzoo.ops.attention.xla import attention_probs
from seqzoo.ops.dispatch import accepted, canonical, on_platform, resolve
from seqzoo.parallel.context import attention_scheme, sequence_axis

Array = jax.Array
IMPLS = accepted("attention")

__all__ = [
    "IMPLS",
    "attention_impl",
    "attention_mask",
    "attention_matrix",
    "attention_probs",
    "check_options",
    "dot_product_attention",
    "repeat_kv",
    "segment_positions",
    "valid_positions",
]


def check_options(window: int | None, num_sinks: int, impl: str = "auto") -> None:
    """Raise ``ValueError`` naming the bad option among ``window``, ``num_sinks``, ``impl``."""
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    if not isinstance(num_sinks, int) or num_sinks < 0:
        raise ValueError(f"num_sinks must be an int >= 0, got {num_sinks!r}")
    if num_sinks and window is None:
        raise ValueError(f"num_sinks={num_sinks} needs a window (without one every key is visible)")
    canonical("attention", impl)


def attention_impl(
    impl: str,
    dtype,
    head_dim: int,
    *,
    causal: bool,
    window: int | None = None,
    num_sinks: int = 0,
    segment_ids: bool = False,
    backend: str | None = None,
    compute_capability: str | None = None,
) -> tuple[str, str]:
    """``(implementation, why)`` that ``dot_product_attention`` runs for these options:
    ``seqzoo.ops.resolve("attention", ...)`` as a pair.

    impl: the op's ``impl`` (an explicit choice is kept as given, "xla" renamed "parallel").
    dtype: the inputs' dtype; head_dim: ``d``; segment_ids: whether packed ids are given.
    backend, compute_capability: the platform and the GPU's capability (default: the first
    device's).
    """
    choice = resolve("attention", impl, dtype=dtype, head_dim=head_dim, causal=causal,
                     window=window, num_sinks=num_sinks, segment_ids=segment_ids,
                     platform=backend, compute_capability=compute_capability)
    return choice.impl, choice.why


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
    allowed = self_mask(
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
      impl: ``"parallel"`` (XLA's dense softmax), ``"cudnn"`` (cuDNN's flash attention),
        ``"tokamax"`` (tokamax's flash attention, GPU, float32 too; optional dependency),
        ``"splash"`` (jax's splash attention, TPU) or ``"auto"`` (``attention_impl`` picks, and
        says why: cuDNN on a GPU where it applies, splash attention on a TPU (no sinks), else
        XLA; the TPU's choice is taken where the computation is lowered for a TPU);
        ``"xla"`` is the deprecated name of ``"parallel"``.
      seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
        the active ``seqzoo.parallel.sequence_parallel`` context): ring attention
        (``sequence_parallel.py``; ``impl`` is not used there), or where the context says
        ``attention="ulysses"``, DeepSpeed-Ulysses (``ulysses.py``: ``impl`` runs on head
        shards of whole sequences).

    cuDNN gets the pattern as ``is_causal`` / ``local_window_size`` and padding as sequence
    lengths (``fused_attention``); XLA (``xla.lean_dense``: the scores for a block of rows at a
    time, recomputed backwards) gets an explicit boolean mask from ``attention_mask``
    wherever there is padding, sinks or segments.
    Returns ``(batch, length, heads, d)`` in the inputs' dtype; softmax in float32 (float32 inputs
    use full-precision matmuls); padded query rows are 0.
    """
    check_options(window, num_sinks)
    impl = canonical("attention", impl)
    _check(q, k, v)
    axis = sequence_axis(seq_axis)
    pattern = dict(causal=causal, window=window, num_sinks=num_sinks, scale=scale)
    if axis is not None and attention_scheme() == "ulysses":  # whole sequences, some heads
        whole = functools.partial(_whole_sequences, impl=impl, **pattern)
        return ulysses_attention(q, k, v, axis=axis, attend=whole, mask=mask,
                                 segment_ids=segment_ids)
    if axis is not None:  # sequence parallel: K and V travel around the ring of shards
        return sharded_attention(
            q, k, v, axis=axis, mask=mask, segment_ids=segment_ids, **pattern
        )
    return _whole_sequences(q, k, v, mask, segment_ids, impl=impl, **pattern)


def _whole_sequences(
    q: Array, k: Array, v: Array, mask: Array | None, segment_ids: Array | None, *,
    causal: bool, window: int | None, num_sinks: int, scale: float | None, impl: str,
) -> Array:
    """``dot_product_attention`` of sequences held whole (checked ``impl``)."""
    dtype = jnp.result_type(q, k, v)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    options = dict(causal=causal, window=window, mask=mask, scale=scale)

    def run(impl: str, platform: str):
        if impl == "cudnn" and not num_sinks and segment_ids is None:
            return functools.partial(fused_attention, **options)
        if impl == "tokamax":  # (the policy sends sinks and segment_ids to XLA)
            return functools.partial(tokamax_attention, **options)
        if impl == "splash":
            return functools.partial(splash_attention, segment_ids=segment_ids, **options)
        if impl == "cudnn":  # asked for with sinks or segments: cuDNN takes the mask too
            return functools.partial(xla.dense, num_sinks=num_sinks, segment_ids=segment_ids,
                                     implementation="cudnn", **options)
        return functools.partial(xla.lean_dense, num_sinks=num_sinks, segment_ids=segment_ids,
                                 **options)

    return on_platform("attention", impl, run, q, k, v, dtype=dtype, head_dim=q.shape[-1],
                       causal=causal, window=window, num_sinks=num_sinks,
                       segment_ids=segment_ids is not None)
