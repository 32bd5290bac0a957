"""Hydra's Cauchy matrix mixers: ``M_h[i, j] = sum_d 1 / (q_id + k_jd + tol) / sqrt(max_length r)``.

    cauchy:     q = exp(Q), k = exp(K); Q, K learned (max_length, heads, r), cut to L
    cauchy_dd:  q = exp(q') + b, k = exp(k') + b; q', k' convolved projections of x (no SiLU),
                b a learned scalar (init 0.5)

with ``tol = 1e-8`` as the official code (the only guard: ``q, k > 0`` while ``b >= 0``). No
cheaper exact product is used: the fast path builds ``block_size`` rows at a time,
O(L^2 (r + p)) per head (``seqzoo.ops.structured.cauchy_rows``, ``blocked_matvec``).

``cauchy`` indexes its learned ``Q, K`` by absolute position: left padding shifts them (see
``seqzoo.layers.structured.block`` on padding).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.structured.block import PAPER, XAVIER_NORMAL, RowwiseMixer
from seqzoo.layers.structured.configs import ROWWISE_TEST_CONFIG
from seqzoo.ops.structured import cauchy_rows

TOL = 1e-8


@register_mixer("cauchy", test_config=ROWWISE_TEST_CONFIG)
class Cauchy(RowwiseMixer):
    """Data-independent Cauchy: learned log-nodes ``Q, K: (max_length, heads, qk_dim)``
    (PyTorch ``xavier_normal_``). ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="cauchy",
        cost="O(L^2 (r H + E))",
        paper=PAPER,
        max_length_attr="max_length",
    )

    def setup_structure(self):
        if self.data_dependent:
            self.bias = self.param("bias", lambda _: jnp.asarray(0.5, jnp.float32))
        else:
            self.setup_qk(XAVIER_NORMAL)

    def structure(self, features, mask):
        q, k = self.qk(features, mask)
        shift = self.bias if self.data_dependent else 0.0
        return {"q": jnp.exp(q) + shift, "k": jnp.exp(k) + shift}

    def scale(self):
        return (self.max_length * self.qk_dim) ** -0.5

    def rows_fn(self, inputs):
        q, k = inputs.aux["q"], inputs.aux["k"]
        return lambda i: cauchy_rows(q[:, :, i], k, TOL)


@register_mixer("cauchy_dd", test_config=ROWWISE_TEST_CONFIG)
class CauchyDD(Cauchy):
    """Data-dependent Cauchy: nodes ``exp(q') + b``, ``exp(k') + b`` from the input.
    ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="cauchy",
        cost="O(L^2 (r H + E))",
        paper=PAPER,
    )
