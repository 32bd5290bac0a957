"""Hydra's low-rank matrix mixers: ``M_h = Q_h K_h^T / sqrt(max_length r)``, no softmax.

    low_rank:     q, k = SiLU of convolved projections of x: (b, heads, L, r)
    low_rank_di:  q, k learned (max_length, heads, r), cut to L

The fast path is ``Q (K^T V)``, O(L r p) per head; ``rank(M_h) <= r``. ``low_rank_di`` indexes
its learned ``Q, K`` by absolute position: left padding shifts them (see
``seqzoo.layers.structured.block`` on padding).
"""

from __future__ import annotations

from typing import ClassVar

from seqzoo.layers.base import MixerInfo
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.structured.block import PAPER, XAVIER_NORMAL, StructuredMixer
from seqzoo.layers.structured.configs import TEST_CONFIG
from seqzoo.ops.structured import low_rank_matrix, low_rank_matvec


@register_mixer("low_rank", test_config=TEST_CONFIG)
class LowRank(StructuredMixer):
    """Data-dependent low rank ``M = Q K^T / sqrt(max_length qk_dim)``; ``k`` is zero at padded
    positions. ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="low-rank",
        cost="O(L r E)",
        paper=PAPER,
    )
    activate_features: ClassVar[bool] = True

    def setup_structure(self):
        if not self.data_dependent:
            self.setup_qk(XAVIER_NORMAL)

    def structure(self, features, mask):
        q, k = self.qk(features, mask, zero_pads=True)
        return {"q": q, "k": k}

    def scale(self):
        return (self.max_length * self.qk_dim) ** -0.5

    def structure_matrix(self, inputs):
        return low_rank_matrix(inputs.aux["q"], inputs.aux["k"])

    def structure_matvec(self, inputs):
        return low_rank_matvec(inputs.aux["q"], inputs.aux["k"], inputs.values)


@register_mixer("low_rank_di", test_config=TEST_CONFIG)
class LowRankDI(LowRank):
    """Data-independent low rank: learned ``Q, K: (max_length, heads, qk_dim)`` (PyTorch
    ``xavier_normal_``), ``M = Q K^T / sqrt(max_length qk_dim)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="low-rank",
        cost="O(L r E)",
        paper=PAPER,
        max_length_attr="max_length",
    )
