"""FNet's token mixing (Lee-Thorp et al., 2022, "FNet: Mixing Tokens with Fourier Transforms").

    y = Re(DFT_seq(DFT_hidden(x)))          x: (batch, length, d_model); no parameters

a 1D DFT over the hidden axis of each token, then over the sequence, keeping the real part.
Bidirectional (non-causal) and data independent.

Padding: the sequence DFT is taken over the VALID tokens of each row only (``n`` = their count,
positions ``p`` counted over valid tokens, as attention's), so padding anywhere is invisible and
right padding equals the shorter sequence; without padding it is exactly the paper's FFT. (The
original pads to a fixed length and lets the pads take part.)

Matrix view: with ``X = DFT_hidden(x) = X_r + i X_i`` and the valid-token ``DFT = C - i S``,
``y = C X_r + S X_i``: two heads, values ``v = (X_r, X_i): (batch, length, 2, d_model)``,
``M = (C, S): (batch, 2, length, length)`` with ``C_kj = cos(2 pi p_k p_j / n)`` and
``S_kj = sin(2 pi p_k p_j / n)`` (Vandermonde in ``exp(-2 pi i p_k / n)``); the output sums
the heads.

Cost: the hidden DFT is an FFT (``O(L D log D)``); the sequence DFT of a per-row length ``n``
runs as Bluestein's chirp-z transform with FFTs of one fixed size (``O(L log L D)``; both heads
in one complex transform), see ``seqzoo.ops.fnet``. Lengths up to 32768.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.ops.fnet import check_length, cos_sin_transform, dft_matrix

Array = jax.Array


@register_mixer("fnet", test_config={})
class FNet(MatrixMixer):
    """FNet's parameter-free Fourier mixing; ``x: (batch, length, d_model)``."""

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="vandermonde",
        cost="O(L D log L + L D log D)",
        paper="Lee-Thorp et al. 2022, FNet: Mixing Tokens with Fourier Transforms",
    )

    def mixer_inputs(self, x, mask):
        check_length(x.shape[1])
        spectrum = jnp.fft.fft(x.astype(jnp.float32), axis=-1)
        v = jnp.stack([spectrum.real, spectrum.imag], axis=2)  # (batch, length, 2, D)
        return MixerInputs(values=zero_padded(v, mask), mask=mask, aux={})

    def mix_fast(self, inputs):
        v = inputs.values
        cos_part, sin_part = cos_sin_transform(v[:, :, 0], v[:, :, 1], inputs.mask)
        return jnp.stack([cos_part, sin_part], axis=2)

    def mix_matrix(self, inputs):
        return jnp.stack(dft_matrix(inputs.mask), axis=1)

    def mixer_output(self, inputs, mixed):
        return jnp.sum(mixed, axis=2)
