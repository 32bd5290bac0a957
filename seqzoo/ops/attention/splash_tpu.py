"""Softmax attention on a TPU through jax's splash attention kernel (Pallas, Mosaic TPU).

``jax.experimental.pallas.ops.tpu.splash_attention`` is a flash-attention kernel that skips the
blocks a static mask leaves empty; this module gives it ``seqzoo.ops.attention``'s semantics:

    pattern (static, one per call):   causal -> CausalMask, window w -> LocalMask (w - 1 keys
                                      before, and after unless causal), neither -> FullMask
    padding mask (batch, length):     the valid tokens run first (``attention.valid_first``), the
                                      padded tail is segment -1, so it takes part in nothing
    segment_ids (packed sequences):   splash's SegmentIds on the runs of equal ids
    GQA (kv_heads < heads):           the kernel's multi-query form, mapped over the kv heads
    scale:                            q is multiplied by it first (the kernel does not scale)

Lengths are padded to a multiple of 128 (the kernel's block) as more padding. Attention sinks
(StreamingLLM) have no splash mask here: ``sinks_supported`` is False and the op keeps XLA.
Layout: q ``(batch, length, heads, d)``, k, v ``(batch, length, kv_heads, d)``; the kernel takes
``(heads, length, d)`` per example, mapped over the batch with ``jax.vmap``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from seqzoo.ops.attention.valid_first import valid_first
from seqzoo.ops.segments import segment_runs

Array = jax.Array
BLOCK = 128  # the kernel's smallest block: lengths are padded to a multiple of it
PADDED = -1  # segment id of padding


def _block(length: int) -> int:
    """The largest of 512, 256, 128 dividing ``length`` (a multiple of 128)."""
    return next(b for b in (512, 256, BLOCK) if length % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(length: int, heads: int, causal: bool, window: int | None, mqa: bool,
            interpret: bool):
    """The splash kernel for one static pattern (built once: its mask is analysed in numpy)."""
    shape = (length, length)
    if window is not None:
        pattern = masks.LocalMask(shape, (window - 1, 0 if causal else window - 1), offset=0)
    elif causal:
        pattern = masks.CausalMask(shape)
    else:
        pattern = masks.FullMask(shape)
    block = _block(length)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
    )
    make = splash.make_splash_mqa_single_device if mqa else splash.make_splash_mha_single_device
    with jax.ensure_compile_time_eval():  # its mask tables are constants, cached across traces
        return make(masks.MultiHeadMask([pattern] * heads), block_sizes=sizes,
                    interpret=interpret)


def splash_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    window: int | None,
    mask: Array | None,
    segment_ids: Array | None,
    scale: float | None,
    interpret: bool = False,
) -> Array:
    """``seqzoo.ops.dot_product_attention`` (no sinks) on splash attention (module docstring).

    q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``; mask:
    ``(batch, length)`` bool or None; segment_ids: ``(batch, length)`` int or None.
    ``interpret``: run the kernel in Pallas' interpreter (CPU tests). Returns q's shape and dtype;
    padded query rows are 0.
    """
    batch, length, heads, d = q.shape
    kv_heads = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    runs = (jnp.zeros((batch, length), jnp.int32) if segment_ids is None
            else segment_runs(segment_ids))
    padded = -(-length // BLOCK) * BLOCK
    kernel = _kernel(padded, heads // kv_heads if kv_heads < heads else heads, causal, window,
                     kv_heads < heads, interpret)

    def attend(lengths, q, k, v, runs):
        valid = jnp.arange(padded) < lengths[:, None]
        ids = jnp.where(valid, jnp.pad(runs, ((0, 0), (0, padded - length))), PADDED)
        q, k, v = (jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))) for x in (q, k, v))
        q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (batch, heads, length, d)
        if kv_heads < heads:  # (batch, kv, group, length, d) against one kv head each
            q = q.reshape(batch, kv_heads, heads // kv_heads, padded, d)
            one = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over kv heads
        else:
            one = kernel
        o = jax.vmap(lambda q, k, v, i: one(q, k, v, splash.SegmentIds(i, i)))(q, k, v, ids)
        o = o.reshape(batch, heads, padded, d)
        return jnp.swapaxes(o, 1, 2)[:, :length]

    mask = jnp.ones((batch, length), bool) if mask is None else mask
    return valid_first(attend, mask, q, k, v, runs)

