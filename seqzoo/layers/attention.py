"""Softmax attention mixers (Vaswani et al., 2017) with RoPE, GQA, sliding windows and sinks.

    q = rope(x W_q), k = rope(x W_k), v = x W_v,    y = concat_h(P_h v_{g(h)}) W_o
    P_h = softmax(q_h k_{g(h)}^T / sqrt(d) + log A)        A: allowed pairs (causal, window, sinks)

``M = P: (batch, heads, length, length)``, one matrix per query head; with grouped-query attention
(``num_kv_heads < num_heads``) query head ``h`` reads kv head ``g(h) = h // (num_heads /
num_kv_heads)``, so ``MixerInputs.values`` is ``v`` repeated to the query heads. Positions count
valid tokens only (see ``seqzoo.ops.attention``), so padding anywhere is invisible.

Decoding keeps a KV cache of ``C`` slots, a ring buffer: with a ``window`` ``w``, ``C = num_sinks +
w`` (the StreamingLLM cache: sinks keep the first slots forever, the other tokens cycle through the
remaining ``w``), constant memory and equal to the parallel path at any length; without a window,
``C = max_decode_length`` and once more than ``C`` tokens are decoded the oldest keys are
overwritten, i.e. decoding past ``max_decode_length`` behaves as a window of ``C``.

Unlike StreamingLLM, which re-assigns positions inside the cache, RoPE uses each token's position
in the text, so a sink's distance to the query is the true one and ``step`` equals ``__call__``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense, merge_heads, split_heads
from seqzoo.ops.attention import (
    attention_mask,
    attention_matrix,
    attention_probs,
    check_options,
    dot_product_attention,
    repeat_kv,
    segment_positions,
)
from seqzoo.ops.dispatch import canonical
from seqzoo.ops.rope import apply_rope

Array = jax.Array


@register_mixer("attention", test_config={"num_heads": 2, "num_kv_heads": 1})
class Attention(MatrixMixer):
    """Causal multi-head softmax attention; ``x: (batch, length, d_model)``.

    Attributes:
      num_heads: query heads ``H``.
      num_kv_heads: key/value heads (None: ``H``); fewer gives grouped-query attention (1: MQA).
      head_dim: per-head ``d`` (None: ``d_model // H``).
      window: sliding window ``w`` (None: global), see ``seqzoo.ops.attention``.
      num_sinks: StreamingLLM attention sinks kept visible beside the window (needs ``window``).
      rope: rotary position embedding on q and k (half-split layout), base ``rope_theta``.
      max_decode_length: KV-cache slots for ``step`` when there is no window.
      impl: ``auto | parallel | cudnn | tokamax | splash``; ``auto`` takes cuDNN's flash
        attention on a GPU and splash attention on a TPU where they apply
        (``seqzoo.ops.attention_impl`` says why it picks what it picks).
    """

    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    window: int | None = None
    num_sinks: int = 0
    rope: bool = True
    rope_theta: float = 10000.0
    max_decode_length: int = 2048
    impl: str = "auto"

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="dense",
        cost="O(L^2 D)",
        paper="Vaswani et al. 2017, Attention Is All You Need",
        segments=True,
        sequence_parallel=True,
    )

    def setup(self):
        check_options(self.window, self.num_sinks)
        self.op_impl = canonical("attention", self.impl)
        h = self.num_heads
        self.kv_heads = self.num_kv_heads or h
        if h % self.kv_heads:
            raise ValueError(f"num_kv_heads={self.kv_heads} must divide num_heads={h}")
        if self.head_dim is None and self.d_model % h:
            raise ValueError(
                f"num_heads={h} must divide d_model={self.d_model} unless head_dim is set"
            )
        self.d = self.head_dim or self.d_model // h
        if self.rope and self.d % 2:
            raise ValueError(
                f"rope needs an even head_dim, got head_dim={self.d}"
                + ("" if self.head_dim else f" (d_model // num_heads = {self.d_model} // {h})")
                + "; set num_heads or head_dim, or rope=False"
            )
        if self.max_decode_length < 1:
            raise ValueError(f"max_decode_length must be >= 1, got {self.max_decode_length}")
        self.q_proj = dense(h * self.d, "q_proj", dtype=self.dtype)
        self.k_proj = dense(self.kv_heads * self.d, "k_proj", dtype=self.dtype)
        self.v_proj = dense(self.kv_heads * self.d, "v_proj", dtype=self.dtype)
        self.o_proj = dense(self.d_model, "o_proj", dtype=self.dtype)

    # ---- pieces -----------------------------------------------------------------------------
    def _project(self, x: Array, positions: Array) -> tuple[Array, Array, Array]:
        """q ``(..., H, d)``, k, v ``(..., kv_heads, d)`` for ``x: (..., d_model)``, ``positions:
        x.shape[:-1]``; RoPE on q and k."""
        q = split_heads(self.q_proj(x), self.num_heads)
        k = split_heads(self.k_proj(x), self.kv_heads)
        v = split_heads(self.v_proj(x), self.kv_heads)
        if self.rope:
            q = apply_rope(q, positions, self.rope_theta)
            k = apply_rope(k, positions, self.rope_theta)
        return q, k, v

    def _pattern(self) -> dict:
        return {"causal": self.info.causal, "window": self.window, "num_sinks": self.num_sinks}

    def mixer_inputs(self, x, mask, segment_ids=None):
        q, k, v = self._project(x, segment_positions(mask, segment_ids))
        v = zero_padded(v, mask)
        aux = {"q": q, "k": k, "v": v, "segment_ids": segment_ids}
        return MixerInputs(values=repeat_kv(v, self.num_heads), mask=mask, aux=aux)

    def mix_fast(self, inputs):
        a = inputs.aux
        return dot_product_attention(
            a["q"],
            a["k"],
            a["v"],
            mask=inputs.mask,
            segment_ids=a["segment_ids"],
            impl=self.op_impl,
            **self._pattern(),
        )

    def mix_matrix(self, inputs):
        a = inputs.aux
        return attention_matrix(
            a["q"], a["k"], mask=inputs.mask, segment_ids=a["segment_ids"], **self._pattern()
        )

    def mixer_output(self, inputs, mixed):
        return self.o_proj(merge_heads(mixed))

    # ---- recurrent path: a ring-buffer KV cache -------------------------------------------------
    def _cache_layout(self) -> tuple[int, int]:
        """``(sink slots, ring slots)`` of the KV cache."""
        if self.window is None:
            return 0, self.max_decode_length
        return self.num_sinks, self.window

    def init_state(self, batch: int):
        """``{k, v: (batch, C, kv_heads, d), slot_pos: (batch, C) (-1 = empty), pos: (batch,)}``."""
        c = sum(self._cache_layout())
        kv = jnp.zeros((batch, c, self.kv_heads, self.d), self.dtype or jnp.float32)
        return {
            "k": kv,
            "v": kv,
            "slot_pos": jnp.full((batch, c), -1, jnp.int32),
            "pos": jnp.zeros((batch,), jnp.int32),
        }

    def step_fn(self, state, x_t, mask_t):
        pos = state["pos"]
        q, k, v = self._project(x_t, pos)
        sinks, ring = self._cache_layout()
        slot = jnp.where(pos < sinks, pos, sinks + (pos - sinks) % ring)
        write = (jnp.arange(state["slot_pos"].shape[1]) == slot[:, None]) & mask_t[:, None]
        cache_k = jnp.where(write[..., None, None], k[:, None].astype(state["k"].dtype), state["k"])
        cache_v = jnp.where(write[..., None, None], v[:, None].astype(state["v"].dtype), state["v"])
        slot_pos = jnp.where(write, pos[:, None], state["slot_pos"])
        allowed = attention_mask(pos[:, None], slot_pos, k_valid=slot_pos >= 0, **self._pattern())
        p = attention_probs(q[:, None], cache_k, allowed)  # (batch, H, 1, C)
        o = jnp.einsum(
            "bhqc,bchd->bqhd",
            p,
            repeat_kv(cache_v, self.num_heads).astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )[:, 0]
        state = {"k": cache_k, "v": cache_v, "slot_pos": slot_pos, "pos": pos + mask_t}
        return state, self.o_proj(merge_heads(o))


@register_mixer("bidirectional_attention", test_config={"num_heads": 2})
class BidirectionalAttention(Attention):
    """Non-causal softmax attention (the Transformer encoder's); no ``step``."""

    init_state = MatrixMixer.init_state
    step_fn = MatrixMixer.step_fn

    info: ClassVar[MixerInfo] = dataclasses.replace(Attention.info, causal=False)
