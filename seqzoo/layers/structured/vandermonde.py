"""Hydra's Vandermonde matrix mixers, sums of real parts of Vandermonde matrices.

    M_h[i, j] = sum_d cos(2 pi a_id j) + s cos(2 pi b_jd i)    (times 1 / sqrt(2 max_length r))

row ``i`` of the first term holds the powers ``j`` of the nodes ``exp(2 pi sqrt(-1) a_id)``, the
second term is the transpose of the Vandermonde matrix of the nodes ``exp(2 pi sqrt(-1) b_jd)``.

    vandermonde (dft=True, default):  M[i, j] = cos(2 pi i j / max_length) / sqrt(max_length),
        the real part of the DFT matrix, shared by the heads, no parameters: the official
        data-independent path (``is_dft=True``, which the official block always takes)
    vandermonde (dft=False): learned nodes a, b: (max_length, heads, r), s = +1 (the official
        ``is_dft=False`` parameters)
    vandermonde_dd: a = 1e-3 q, b = 1e-3 k with q, k convolved projections of x (no SiLU),
        s = -1 (the official ``eps = 1e-3`` and sign)

Fast paths: the DFT matrix by an FFT of length max_length, O(max_length log max_length) per
channel; the others ``block_size`` rows at a time, O(L^2 (r + p)) per head (no cheaper exact
product is known). Deviations from the official code: its ``is_dft=False`` path sums the rows
instead of mixing (``einsum('n t l, b t n h -> b t n h')``) and starts the nodes at 0, where the
cosine's gradient vanishes; here it mixes and the nodes start at the DFT frequencies ``i /
max_length`` (plus a 1% jitter so the ``r`` copies differ).

The powers ``i, j`` (and the learned nodes) are absolute positions: left padding shifts them (see
``seqzoo.layers.structured.block`` on padding).
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.structured.block import PAPER, RowwiseMixer
from seqzoo.layers.structured.configs import ROWWISE_TEST_CONFIG
from seqzoo.ops.structured import cosine_dft_matrix, cosine_dft_matvec, vandermonde_rows

NODE_SCALE_DD = 1e-3  # the official ``eps``, "to stabilize training"


def dft_frequencies(key, shape, dtype=jnp.float32):
    """Nodes ``(max_length, heads, r)``: ``i / max_length`` plus ``N(0, (0.01 / max_length)^2)``."""
    length = shape[0]
    base = jnp.arange(length, dtype=dtype).reshape((length,) + (1,) * (len(shape) - 1)) / length
    return base + 0.01 / length * jax.random.normal(key, shape, dtype)


class _Vandermonde(RowwiseMixer):
    """What the data-independent and data-dependent Vandermonde mixers share."""

    def uses_dft(self) -> bool:
        return False

    def setup_structure(self):
        if not self.data_dependent and not self.uses_dft():
            self.setup_qk(dft_frequencies)

    def structure(self, features, mask):
        if self.uses_dft():
            return {}
        q, k = self.qk(features, mask)
        if self.data_dependent:
            q, k = NODE_SCALE_DD * q, NODE_SCALE_DD * k
        return {"q": q, "k": k}

    def scale(self):
        if self.uses_dft():
            return self.max_length**-0.5
        return (2 * self.max_length * self.qk_dim) ** -0.5

    def rows_fn(self, inputs):
        q, k = inputs.aux["q"], inputs.aux["k"]
        sign = -1.0 if self.data_dependent else 1.0
        return lambda i: vandermonde_rows(q[:, :, i], i, k, sign)

    def structure_matrix(self, inputs):
        if not self.uses_dft():
            return super().structure_matrix(inputs)
        length = inputs.values.shape[1]
        m = cosine_dft_matrix(length, self.max_length)
        return jnp.broadcast_to(m, (1, self.heads, length, length))

    def structure_matvec(self, inputs):
        if not self.uses_dft():
            return super().structure_matvec(inputs)
        return cosine_dft_matvec(inputs.values, self.max_length)


@register_mixer("vandermonde", test_config=ROWWISE_TEST_CONFIG)
class Vandermonde(_Vandermonde):
    """Data-independent Vandermonde: the cosine DFT matrix (``dft=True``) or learned nodes.
    ``x: (batch, length, d_model)``.

    Attributes:
      dft: use the fixed ``cos(2 pi i j / max_length)`` (``block_size`` and ``qk_dim`` unused).
    """

    dft: bool = True

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="vandermonde",
        cost="O(L log L E) (dft), O(L^2 (r H + E)) (learned nodes)",
        paper=PAPER,
        max_length_attr="max_length",
    )

    def uses_dft(self):
        return self.dft


@register_mixer("vandermonde_dd", test_config=ROWWISE_TEST_CONFIG)
class VandermondeDD(_Vandermonde):
    """Data-dependent Vandermonde: nodes ``1e-3 q_i``, ``1e-3 k_j`` from the input, the second
    term subtracted. ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="vandermonde",
        cost="O(L^2 (r H + E))",
        paper=PAPER,
    )
