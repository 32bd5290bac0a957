"""Aaren (Feng et al., 2024, "Attention as an RNN", Sec. 3.3): attention with a learned query.

    k = x W_k,  v = x W_v                          (batch, length, heads, d)
    s_t = q_h . k_t / sqrt(d)                      q_h: a learned query token per head
    o_t = sum_{j<=t} exp(s_j) v_j / sum_{j<=t} exp(s_j)
    y = concat_h(o) W_o

Because the query does not depend on the position, the outputs of all prefixes are one parallel
prefix scan with the ``(max, sum-exp, weighted sum)`` combine (``seqzoo.ops.aaren``), and the
layer is an RNN whose state is that triple (constant memory). The paper stacks Aarens like
Transformer blocks (each with its own learned query); its layer internals (projections, heads)
are not released, so they follow standard multi-head attention here: bias-free ``W_k, W_v, W_o``
and one query per head, initialised N(0, 1) (so scores start at unit scale).

Matrix view: ``M[h, t, j] = exp(s_j) / sum_{j'<=t} exp(s_j')`` for ``j <= t``: causal softmax
attention whose score depends on the key only (data dependent, dense). Padding: a padded token
has score ``-inf`` and is left out of every sum, in every path (``step`` skips it).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense, merge_heads, split_heads
from seqzoo.ops.aaren import causal_softmax_init, causal_softmax_scan, causal_softmax_step
from seqzoo.ops.attention import attention_mask, attention_probs, valid_positions

Array = jax.Array


@register_mixer("aaren", test_config={"num_heads": 2})
class Aaren(MatrixMixer):
    """Aaren; ``x: (batch, length, d_model)``.

    Attributes:
      num_heads: heads ``H``, each with its own learned query.
      head_dim: per-head ``d`` (None: ``d_model // H``).
    """

    num_heads: int = 4
    head_dim: int | None = None

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="dense",
        cost="O(L D^2 + L D log L)",
        paper="Feng et al. 2024, Attention as an RNN",
    )

    def setup(self):
        h = self.num_heads
        if not isinstance(h, int) or h < 1:
            raise ValueError(f"num_heads must be an int >= 1, got {h!r}")
        if self.head_dim is None and self.d_model % h:
            raise ValueError(
                f"num_heads={h} must divide d_model={self.d_model} unless head_dim is set"
            )
        self.d = self.head_dim or self.d_model // h
        if self.d < 1:
            raise ValueError(f"head_dim must be >= 1, got {self.d}")
        self.query = self.param("query", nn.initializers.normal(1.0), (h, self.d), jnp.float32)
        self.k_proj = dense(h * self.d, "k_proj", dtype=self.dtype)
        self.v_proj = dense(h * self.d, "v_proj", dtype=self.dtype)
        self.o_proj = dense(self.d_model, "o_proj", dtype=self.dtype)

    # ---- pieces -----------------------------------------------------------------------------
    def _project(self, x: Array) -> tuple[Array, Array, Array]:
        """Scores ``(..., H)`` (float32), keys and values ``(..., H, d)``."""
        k = split_heads(self.k_proj(x), self.num_heads)
        v = split_heads(self.v_proj(x), self.num_heads)
        s = jnp.einsum("...hd,hd->...h", k.astype(jnp.float32), self.query, precision="highest")
        return s * self.d**-0.5, k, v

    def mixer_inputs(self, x, mask):
        s, k, v = self._project(x)
        return MixerInputs(values=zero_padded(v, mask), mask=mask, aux={"scores": s, "k": k})

    def mix_fast(self, inputs):
        return causal_softmax_scan(inputs.aux["scores"], inputs.values, inputs.mask)

    def mix_matrix(self, inputs):
        k, mask = inputs.aux["k"], inputs.mask
        q = jnp.broadcast_to(self.query, k.shape)  # the same query at every position
        pos = valid_positions(mask)
        allowed = attention_mask(pos, pos, causal=True, q_valid=mask, k_valid=mask)
        return attention_probs(q, k, allowed, scale=self.d**-0.5)

    def mixer_output(self, inputs, mixed):
        return self.o_proj(merge_heads(mixed).astype(inputs.aux["k"].dtype))

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        """``(m: (batch, H), u: (batch, H), w: (batch, H, d))``, the empty prefix."""
        return causal_softmax_init(batch, self.num_heads, self.d)

    def step_fn(self, state, x_t, mask_t):
        s, k, v = self._project(x_t)
        state, o = causal_softmax_step(state, s, v, mask_t)
        return state, self.o_proj(merge_heads(o).astype(k.dtype))
