"""Hydra's dense matrix mixers: a learned ``M`` (data independent) and softmax attention (data
dependent, the official ``Attention`` mixer; the official ``Dense`` has no data-dependent form).

    dense:     M_h[i, j] = W_h[i, j] / sqrt(max_length)        W_h: (max_length, max_length)
    dense_dd:  M_h[i, j] = softmax_j(q_i . k_j / sqrt(r))      over the valid keys j

``q, k: (b, heads, L, r)`` are convolved projections of ``x`` (no SiLU), as the official code.
``dense`` indexes ``W_h`` by absolute positions: left padding shifts them (see
``seqzoo.layers.structured.block`` on padding).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo, apply_matrix
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.structured.block import (
    PAPER,
    XAVIER_NORMAL,
    RowwiseMixer,
    StructuredMixer,
)
from seqzoo.layers.structured.configs import ROWWISE_TEST_CONFIG, TEST_CONFIG
from seqzoo.ops.structured import masked_softmax_rows


@register_mixer("dense", test_config=TEST_CONFIG)
class Dense(StructuredMixer):
    """A learned dense ``M_h: (max_length, max_length)`` per head, cut to ``(L, L)``, times
    ``1 / sqrt(max_length)``; PyTorch ``xavier_normal_`` init. ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="dense",
        cost="O(L^2 E)",
        paper=PAPER,
        max_length_attr="max_length",
    )

    def setup_structure(self):
        shape = (self.heads, self.max_length, self.max_length)
        self.weight = self.param("matrix", XAVIER_NORMAL, shape, jnp.float32)

    def structure(self, features, mask):
        length = mask.shape[1]
        return {"matrix": self.weight[None, :, :length, :length]}

    def scale(self):
        return self.max_length**-0.5

    def structure_matrix(self, inputs):
        return inputs.aux["matrix"]

    def structure_matvec(self, inputs):
        return apply_matrix(inputs.aux["matrix"], inputs.values)


@register_mixer("dense_dd", test_config=ROWWISE_TEST_CONFIG)
class DenseDD(RowwiseMixer):
    """Softmax attention ``M = softmax(q k^T / sqrt(qk_dim))`` inside the Hydra block (the
    official data-dependent ``Attention`` matrix mixer); padded keys get no weight.
    ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="dense",
        cost="O(L^2 (r H + E))",
        paper=PAPER,
    )

    def structure(self, features, mask):
        q, k = self.qk(features, mask)
        return {"q": q, "k": k}

    def scale(self):
        return 1.0

    def rows_fn(self, inputs):
        q, k, mask = inputs.aux["q"], inputs.aux["k"], inputs.mask
        temperature = self.qk_dim**-0.5
        return lambda i: masked_softmax_rows(q[:, :, i], k, mask, temperature)
