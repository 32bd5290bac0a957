"""PoNet (Tan et al., 2022, "PoNet: Pooling Network for Efficient Token Mixing in Long
Sequences"): global attention pooling, segment max-pooling and local max-pooling, fused.

Following the official ``lxchtan/PoNet`` (``PoNetSelfAttention`` of the Hugging Face model and
``examples/LRA/code/attention_ponet.py``), on ``x: (batch, length, d)`` with H heads of size p:

    Q, K, O = x W_q, x W_k, x W_o        L_in = x W_local,  S_in = x W_segment     (with biases)
    global aggregation, per head h:  q_h = mean_{valid t} Q[t, h]                (the mean query)
                                     g_h = sum_j softmax_j(q_h . K[j, h] / sqrt(p)) K[j, h]
                                                                                  (V = K, official)
    segment max-pooling:   S[t] = max_{j in seg(t), valid} S_in[j]         (per channel)
    local max-pooling:     Lm[t] = max_{|j - t| <= 1, valid} L_in[j]       (window 3)
    fused:                 Y[t] = (g + S[t]) (.) O[t] + Lm[t]
    y = Y W_out + b_out                        (the LRA code's ``ff``; BERT's ``SelfOutput.dense``)

Segments are equal-length, ``t // segment_size`` as the official LRA ``get_segment_index`` (which
uses ``segment_size = L // segment_num + 1``; here the size is fixed so that it does not depend on
the padded length). ``segment_size=None``: one segment (the LRA retrieval setting). Sentence
segments given per token (the pre-trained model) are supported by the op
``seqzoo.ops.pooling.masked_segment_max``, not by this layer's call signature.

Matrix view. The layer is linear in its pooled values given what they select: heads are the
3 d channels of ``v = [K, S_in, L_in]`` (head_dim 1) and

    M[c, i, j] = softmax_j(q_h . K[j, h] / sqrt(p))      c < d, h = c // p    (rank 1: g repeated)
    M[d + c, i, j]  = [j = argmax_{j' in seg(i), valid} S_in[j', c]]          (a selection)
    M[2d + c, i, j] = [j = argmax_{|j' - i| <= 1, valid} L_in[j', c]]        (a selection)

``M`` depends on the input (data dependent). ``M v`` is the layer's pooling exactly, and so are
the gradients: a maximum's gradient goes to its argmax, which ``M`` selects (``M`` itself is
piecewise constant). Only at exact ties, a probability-zero event for continuous inputs, do the
paths differ (the max splits the gradient, ``M`` picks the first position). Two thirds of the
heads have one non-zero per row, the rest are rank 1: the structure is reported as ``sparse``.

Padding: padded positions take part in no pooling (the official fills them with -10000 before the
maxima and the softmax; here they are excluded exactly), the mean query averages valid positions
only, and segments and windows count raw positions (a pad inside a window just drops out): right
padding gives the shorter sequence's outputs, but left padding or a hole shifts the segment grid
by design, as in the official layer.

Initialisation as the Hugging Face model (``initializer_range``: weights ~ N(0, 0.02), biases 0).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense, split_heads
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.pooling import (
    fixed_segment_ids,
    local_max_selection,
    masked_fixed_segment_max,
    masked_local_max,
    segment_max_selection,
)

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


@register_mixer("ponet", test_config={"num_heads": 2, "segment_size": 4, "initializer_range": 0.5})
class PoNet(MatrixMixer):
    """PoNet token mixing; ``x: (batch, length, d_model)``, bidirectional.

    Attributes:
      num_heads: heads H of the global aggregation (they only group its softmax); H | d_model.
      segment_size: length of the equal segments of the segment max-pooling (None: one segment).
      local_window: window of the local max-pooling (odd; official 3).
      initializer_range: std of the normal weight init (official 0.02; biases 0).
    """

    num_heads: int = 4
    segment_size: int | None = 32
    local_window: int = 3
    initializer_range: float = 0.02

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="sparse",
        cost="O(L D)",
        paper="Tan et al. 2022, PoNet: Pooling Network for Efficient Token Mixing",
    )

    def setup(self):
        check_positive_int(self.num_heads, "num_heads")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        if self.segment_size is not None:
            check_positive_int(self.segment_size, "segment_size")
        check_positive_int(self.local_window, "local_window")
        if self.local_window % 2 != 1:
            raise ValueError(f"local_window must be odd, got {self.local_window}")
        if not self.initializer_range > 0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range!r}")
        init = jax.nn.initializers.normal(self.initializer_range)
        d = self.d_model

        def linear(name):
            return dense(d, name, use_bias=True, dtype=self.dtype, kernel_init=init)

        self.dense_q, self.dense_k, self.dense_o = (linear(n) for n in ("q", "k", "o"))
        self.dense_local, self.dense_segment = linear("local"), linear("segment")
        self.out_proj = linear("out_proj")

    # ---- pieces -----------------------------------------------------------------------------
    def mixer_inputs(self, x, mask):
        d, h = self.d_model, self.num_heads
        f32 = jnp.float32
        q, k, o, local, segment = (
            zero_padded(proj(x).astype(f32), mask)
            for proj in (
                self.dense_q,
                self.dense_k,
                self.dense_o,
                self.dense_local,
                self.dense_segment,
            )
        )
        qh, kh = split_heads(q, h), split_heads(k, h)  # (b, L, H, p)
        count = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(f32)  # (b,)
        q_mean = jnp.sum(qh, axis=1) / count[:, None, None]  # (b, H, p)
        scores = jnp.einsum("bhp,blhp->bhl", q_mean, kh, precision=_HI) / math.sqrt(d // h)
        scores = jnp.where(mask[:, None, :], scores, -jnp.inf)
        probs = jnp.where(mask[:, None, :], jax.nn.softmax(scores, axis=-1), 0.0)  # (b, H, L)
        values = jnp.concatenate([k, segment, local], axis=-1)[..., None]  # (b, L, 3d, 1)
        return MixerInputs(values=values, mask=mask, aux={"probs": probs, "o": o})

    def _split(self, values: Array) -> tuple[Array, Array, Array]:
        """``(b, L, 3d, 1) -> K, S_in, L_in: (b, L, d)`` each."""
        return tuple(jnp.split(values[..., 0], 3, axis=-1))

    def mix_fast(self, inputs):
        k, segment, local = self._split(inputs.values)
        g = jnp.einsum(
            "bhl,blhp->bhp", inputs.aux["probs"], split_heads(k, self.num_heads), precision=_HI
        )
        g = jnp.broadcast_to(g.reshape(g.shape[0], 1, -1), k.shape)
        s = masked_fixed_segment_max(segment, inputs.mask, self.segment_size)
        lm = masked_local_max(local, inputs.mask, self.local_window)
        return jnp.concatenate([g, s, lm], axis=-1)[..., None]

    def mix_matrix(self, inputs):
        k, segment, local = self._split(inputs.values)
        mask, length = inputs.mask, k.shape[1]
        probs = jnp.repeat(inputs.aux["probs"], self.d_model // self.num_heads, axis=1)
        ga = jnp.broadcast_to(probs[:, :, None, :], probs.shape[:2] + (length, length))
        ids = jnp.asarray(fixed_segment_ids(length, self.segment_size))
        m = jnp.concatenate(
            [
                ga,
                segment_max_selection(segment, mask, ids),
                local_max_selection(local, mask, self.local_window),
            ],
            axis=1,
        )
        return jnp.where(mask[:, None, None, :], m, 0.0)

    def mixer_output(self, inputs, mixed):
        g, s, lm = self._split(mixed)
        y = (g + s) * inputs.aux["o"] + lm
        return self.out_proj(y)
