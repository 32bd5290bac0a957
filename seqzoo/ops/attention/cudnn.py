"""Attention's cuDNN backend: the fused (flash) path through cuDNN.

cuDNN's flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``, memory
linear in length) computes our semantics exactly for bf16 / fp16 inputs, head dim <= 128
(<= 256 from Hopper on) and a multiple of 8, causal or not, a causal sliding window, GQA and any
padding mask; ``seqzoo.ops.dispatch`` holds the rules by which ``impl="auto"`` takes it.

Padding: the valid tokens run first and cuDNN gets each row's length
(``seqzoo.ops.attention.valid_first.with_lengths``).
"""

from __future__ import annotations

import functools

import jax

from seqzoo.ops.attention.valid_first import with_lengths

Array = jax.Array


def fused_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    window: int | None,
    mask: Array | None,
    scale: float | None,
    implementation: str = "cudnn",
) -> Array:
    """``jax.nn.dot_product_attention`` on our semantics (``with_lengths``).

    q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``; mask:
    ``(batch, length)`` bool or None. ``implementation`` is jax's (``"xla"`` runs this same
    wrapper off a GPU: the tests' path). Padded query rows of the output are 0.
    """
    attend = functools.partial(jax.nn.dot_product_attention, implementation=implementation)
    return with_lengths(attend, q, k, v, causal=causal, window=window, mask=mask, scale=scale)
