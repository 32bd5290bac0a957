"""Hydra's Toeplitz matrix mixers: ``M_h[i, j] = c_h[i - j] * 0.5 / sqrt(max_length)``.

    toeplitz:     c_h[d], |d| < max_length, learned (heads, 2 max_length - 1), the centre cut to L
    toeplitz_dd:  c[d] = f[d] for d >= 0 (the "forward" feature of position d),
                  c[d] = g[-d] for d < 0 (the "reverse" feature of position -d)

``f, g: (b, L, heads)`` are SiLU of convolved projections of ``x``, zero at padded positions (a
padded position gives no kernel entry). The fast path is an FFT convolution, O(L log L) per
channel (``seqzoo.ops.conv.toeplitz_matvec``). ``toeplitz_dd``'s kernel entry for offset
``d`` comes from absolute position ``|d|``: left padding shifts it (see
``seqzoo.layers.structured.block`` on padding); ``toeplitz``'s learned kernel does not move.

The official code builds the data-dependent kernel as ``cat(flip(g[1:]), f)`` like here, but its
FFT of length ``2 max_length - 1`` with the input left-padded by ``max_length - 1`` aliases: for
``L = max_length`` it gives ``M[i, j] = f[i - j + 1]`` (the diagonal from ``f[1]``, the first
upper diagonal from ``f[0]``, the corner ``M[L - 1, 0]`` from ``g[L - 1]``), other lengths lose
diagonals. seqzoo implements the Toeplitz matrix the kernel describes, without the shift.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from flax import linen as nn

from seqzoo.layers.base import MixerInfo, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.structured.block import PAPER, StructuredMixer
from seqzoo.layers.structured.configs import TEST_CONFIG
from seqzoo.ops.conv import toeplitz_matrix, toeplitz_matvec


@register_mixer("toeplitz", test_config=TEST_CONFIG)
class Toeplitz(StructuredMixer):
    """Data-independent Toeplitz: a learned kernel ``c_h[d]`` per head for
    ``|d| < max_length`` (PyTorch ``xavier_uniform_``). ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="toeplitz",
        cost="O(L log L E)",
        paper=PAPER,
        max_length_attr="max_length",
    )
    activate_features: ClassVar[bool] = True

    def feature_width(self):
        return 2 * self.heads if self.data_dependent else 0

    def setup_structure(self):
        if not self.data_dependent:
            shape = (self.heads, 2 * self.max_length - 1)
            self.kernel = self.param("kernel", nn.initializers.xavier_uniform(), shape)

    def structure(self, features, mask):
        """``kernel: (batch | 1, heads, 2L - 1)`` holding ``c[d]`` at index ``L - 1 + d``."""
        length = mask.shape[1]
        if not self.data_dependent:
            centre = self.max_length - 1
            return {"kernel": self.kernel[None, :, centre - length + 1 : centre + length]}
        forward, reverse = jnp.split(zero_padded(features, mask), 2, axis=-1)
        kernel = jnp.concatenate([jnp.flip(reverse[:, 1:], axis=1), forward], axis=1)
        return {"kernel": jnp.moveaxis(kernel, 1, 2)}

    def scale(self):
        return 0.5 * self.max_length**-0.5

    def structure_matrix(self, inputs):
        return toeplitz_matrix(inputs.aux["kernel"])

    def structure_matvec(self, inputs):
        return toeplitz_matvec(inputs.aux["kernel"], inputs.values)


@register_mixer("toeplitz_dd", test_config=TEST_CONFIG)
class ToeplitzDD(Toeplitz):
    """Data-dependent Toeplitz: the kernel's lower half from the "forward" feature of each
    position, its upper half from the "reverse" feature. ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="toeplitz",
        cost="O(L log L E)",
        paper=PAPER,
    )
