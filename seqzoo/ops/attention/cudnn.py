"""Attention's cuDNN backend: the fused (flash) path through cuDNN.

cuDNN's flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``, memory
linear in length) computes our semantics exactly for bf16 / fp16 inputs, head dim <= 128
(<= 256 from Hopper on) and a multiple of 8, causal or not, a causal sliding window, GQA and any
padding mask; ``seqzoo.ops.dispatch`` holds the rules by which ``impl="auto"`` takes it.

Padding: the valid tokens run first (``seqzoo.ops.attention.valid_first``) and cuDNN gets each
row's length (``query_seq_lengths = key_value_seq_lengths = mask.sum(1)``).
"""

from __future__ import annotations

import functools

import jax

from seqzoo.ops.attention.valid_first import valid_first

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
    """``jax.nn.dot_product_attention`` with padding as sequence lengths (module docstring).

    q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``; mask:
    ``(batch, length)`` bool or None. ``implementation`` is jax's (``"xla"`` runs this same
    wrapper off a GPU: the tests' path). Padded query rows of the output are 0.
    """
    sides = None if window is None else (window - 1, 0 if causal else window - 1)
    run = functools.partial(jax.nn.dot_product_attention, scale=scale, is_causal=causal,
                            local_window_size=sides, implementation=implementation)
    if mask is None:
        return run(q, k, v)

    def with_lengths(lengths, q, k, v):
        return run(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths)

    return valid_first(with_lengths, mask, q, k, v)
