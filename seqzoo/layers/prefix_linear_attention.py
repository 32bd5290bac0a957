"""Prefix linear attention (PLA), the mixer of JRT-RNN (Arora et al. 2024, "Just read twice:
closing the recall gap for recurrent language models"), as the official
``based/models/mixers/prefix_linear_attention.py``:

    phi = Based's 2nd-order Taylor map on ``feature_dim``-sized projections
    encoder (the first P = prefix_length positions, read non-causally):
      S_enc = sum_{j < P} phi(k^e_j) v^e_j^T,          z_enc = sum_{j < P} phi(k^e_j)
    decoder (every position, causal):
      S_i   = sum_{j <= i} phi(k_j) v_j^T,             z_i   = sum_{j <= i} phi(k_j)
    y_i = phi(q_i)^T (S_enc + S_i) / (phi(q_i)^T (z_enc + z_i) + eps),  then W_o

with separate encoder projections ``k^e = x W_k^e``, ``v^e = x W_v^e``. Every position reads the
whole prefix (the encoder), so the first ``P`` outputs see their future: JRT-RNN trains them with
a masked-LM loss, never next-token prediction. Past the prefix the state is constant-size
(``S_enc + S_i``), a recurrent decoder.

Matrix view: two value sets, stacked as heads: values ``(batch, length, 2 H, dv)`` (``v`` then
``v^e``, zero past the prefix), ``M[:, :H]`` the causal Based part and ``M[:, H:]`` the prefix
columns ``phi(q_i) . phi(k^e_j)``, both divided by the shared row normaliser; the output stage sums
the two halves. Below the diagonal and, inside the prefix, above it, ``M`` has rank
``1 + f + f^2``: quasiseparable.

Padding: a pad's features are zero (it writes nothing, in either part). The official layer
instead zeroes a pad's k and k^e *before* the feature map (and only in prefill), so there a pad
still writes ``phi(0) = e_0``: a 1 in the normaliser and its value in the numerator. ``P`` counts
positions, pads included: left padding moves the prefix.

Constants: the scores carry ``based``'s ``dk^-0.5`` and eps is 1e-6, where the official layer
has no scale and eps 1e-12; the scale cancels in the ratio, leaving eps ``sqrt(dk) 1e-6`` against
a normaliser of at least 1/2 per key (``1 + s + s^2 / 2 >= 1/2``): the same outputs and gradients
to float32 rounding (tests/test_prefix_linear_attention.py, against the official equations).

Init: ``seqzoo``'s ``dense`` (lecun normal), as the ``based`` mixer; the official layer keeps
torch's ``nn.Linear`` default. Left out: decoding (``step``; the mixer is not causal) and the
masked-LM loss on the prefix (a training objective: the official ``data_type: mixed`` trains
next-token prediction past the prefix plus 0.25 x a masked-LM loss on 15% of the prefix's
tokens, replaced by a mask token in the input). The official JRT-RNN language models
(``train/configs/experiment/baselines/jrt-*.yaml``) interleave this layer with BaseConv (short
convolution) and sliding-window attention layers, with SwiGLU MLPs: the model's business, not
the mixer's.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense, split_heads
from seqzoo.layers.linear_attention import Based
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.feature_maps import feature_map
from seqzoo.ops.linear_attention import linear_attention

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
_F32 = jnp.float32


@register_mixer(
    "prefix_linear_attention",
    test_config={"num_heads": 2, "key_dim": 4, "chunk_size": 4, "prefix_length": 5},
)
class PrefixLinearAttention(Based):
    """JRT-RNN's prefix linear attention; ``x: (batch, length, d_model)`` (module docstring).

    Attributes (besides ``based``'s: ``num_heads``, ``key_dim`` = feature_dim 16, ...):
      prefix_length: ``P``, the encoder's length (the official ``enc_length``; MQAR: the
        key-value context). Positions past the sequence are ignored.
    """

    prefix_length: int = 64

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="quasiseparable",
        cost="O(L C f^2 + L f^2 dv)",
        paper="Arora et al. 2024, Just read twice (JRT-RNN, prefix linear attention)",
    )

    keeps_features: ClassVar[bool] = True  # phi(q), phi(k), phi(k^e), read by both parts
    init_state = MatrixMixer.init_state  # not causal: no recurrent path
    step_fn = MatrixMixer.step_fn

    def setup(self):
        if self.decay is not None or not self.normalize:
            raise ValueError("prefix_linear_attention is normalised Based: no decay")
        check_positive_int(self.prefix_length, "prefix_length")
        super().setup()
        h = self.num_heads
        self.k_enc_proj = dense(h * self.dk, "k_enc_proj", dtype=self.dtype)
        self.v_enc_proj = dense(h * self.dv, "v_enc_proj", dtype=self.dtype)

    def mixer_inputs(self, x, mask, segment_ids=None):
        p = self._project(x, mask)
        p["q"], p["k"] = self._features(p["q"], p["k"], mask)  # kept: the decoder reads them
        h = self.num_heads
        in_prefix = mask & (jnp.arange(x.shape[1]) < self.prefix_length)
        k_enc = split_heads(self.k_enc_proj(x).astype(jnp.float32), h)
        k_enc = zero_padded(feature_map(self.feature_map, k_enc), in_prefix)
        v_enc = self.v_enc_proj(x).astype(p["v"].dtype)
        v_enc = zero_padded(split_heads(v_enc, h), in_prefix)
        values = jnp.concatenate([zero_padded(p.pop("v"), mask), v_enc], axis=2)
        return MixerInputs(values=values, mask=mask, aux=p | {"k_enc": k_enc})

    def _split(self, values: Array) -> tuple[Array, Array]:
        return values[:, :, : self.num_heads], values[:, :, self.num_heads :]

    def mix_fast(self, inputs):
        a, scale = inputs.aux, self.dk**-0.5
        v, v_enc = (self._values(u) for u in self._split(inputs.values))  # a ones column each
        o_dec = linear_attention(a["q"], a["k"], v, scale=scale, chunk_size=self.chunk_size,
                                 impl=self.impl).astype(jnp.float32)
        s_enc = jnp.einsum("blhf,blhd->bhfd", a["k_enc"], v_enc, precision=_HI,
                           preferred_element_type=_F32)
        o_enc = scale * jnp.einsum("blhf,bhfd->blhd", a["q"], s_enc, precision=_HI,
                                   preferred_element_type=_F32)
        denominator = o_dec[..., -1:] + o_enc[..., -1:] + self.eps  # (b, l, H, 1)
        return jnp.concatenate([o_dec[..., :-1] / denominator, o_enc[..., :-1] / denominator], 2)

    def mix_matrix(self, inputs):
        a, scale = inputs.aux, self.dk**-0.5
        length = a["q"].shape[1]
        causal = jnp.tril(jnp.ones((length, length), bool))
        m_dec = scale * jnp.einsum("bihf,bjhf->bhij", a["q"], a["k"], precision=_HI,
                                   preferred_element_type=_F32) * causal
        m_enc = scale * jnp.einsum("bihf,bjhf->bhij", a["q"], a["k_enc"], precision=_HI,
                                   preferred_element_type=_F32)
        denominator = m_dec.sum(-1, keepdims=True) + m_enc.sum(-1, keepdims=True) + self.eps
        return jnp.concatenate([m_dec / denominator, m_enc / denominator], axis=1)

    def mixer_output(self, inputs, mixed):
        dec, enc = self._split(mixed)
        return self._output(dec + enc, inputs.aux.get("gate"))
