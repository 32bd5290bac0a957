"""Mega's damped multi-dimensional EMA layer (Ma et al., 2023), the official ``MultiHeadEMA``.

Following ``facebookresearch/mega`` ``fairseq/modules/exponential_moving_average.py`` on
``x: (batch, length, d)``, per channel d and EMA dimension n (``ndim``, official default 2):

    h_t = p (.) beta (.) x_t + (1 - p (.) a) (.) h_{t-1}     p = sigmoid(delta), a = sigmoid(alpha)
    y_t = silu(sum_n eta_n h_t[n] + omega x_t)               eta = gamma sqrt(1 / ndim)

computed as ``silu(k * x + omega x)`` with the EMA kernel ``k_l = sum_n eta p beta q^l``
(``seqzoo.ops.ema``) by FFT. Parameters (official shapes without the trailing 1, official init):
``delta, alpha (D, ndim) ~ N(0, 0.2)``; ``beta (D, ndim) ~ N(0, 0.02) + [1, -1, 1, ...]``;
``gamma (D, ndim) ~ N(0, 1)``; ``omega (d,) ~ N(0, 1)``, with D = d, or 2 d bidirectional.

``mega_ema_bidirectional`` is the official ``bidirectional=True``: a second kernel ``k2`` from the
second half of the parameters runs backwards, and both include lag 0 (the official kernel
``pad(k1, (L-1, 0)) + pad(flip(k2), (0, L-1))``):

    y_t = silu(sum_{j <= t} k1_{t-j} x_j + sum_{j >= t} k2_{j-t} x_j + omega x_t).

Matrix view: heads = d channels, head_dim 1, values v = x, ``M[d, i, j] = k1[d, i - j]`` (j <= i)
``+ k2[d, j - i]`` (j >= i, bidirectional) ``+ omega[d] [i = j]``: the Toeplitz matrix of the
kernel plus the skip, data independent (an EMA is a diagonal SSM of state size ndim, so the causal
``M`` is semiseparable; bidirectional, quasiseparable). The output stage is the silu.

Recurrent mode (causal only): the state is ``h: (batch, d, ndim)``, the official ``one_step``.

Padding: x is zero at padded positions (base class), so a pad is a zero input to this LTI filter;
in ``step`` a padded token is a zero input and the state still decays, exactly what the
convolution computes, so ``step`` equals ``__call__`` for any mask. Left (causal) or right padding
gives the shorter sequence's outputs; a hole counts as a time step (a zero input), by design.

Left out: the official ``truncation`` (kernel cut to a length; default None) and the
incremental multi-token ``step``; the model-level Mega gated attention around this layer.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs
from seqzoo.layers.catalog import register_mixer
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import (
    anticausal_toeplitz,
    bidirectional_conv,
    causal_conv,
    causal_toeplitz,
)
from seqzoo.ops.ema import ema_kernel, ema_step

Array = jax.Array
PAPER = "Ma et al. 2023, Mega: Moving Average Equipped Gated Attention"


def normal_init(std: float, mean: float = 0.0):
    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def beta_init(key, shape, dtype=jnp.float32):
    """``N(0, 0.02) + [1, -1, 1, -1, ...]`` along the EMA dimension (official)."""
    signs = np.where(np.arange(shape[-1]) % 2 == 0, 1.0, -1.0)
    return jnp.asarray(signs, dtype) + 0.02 * jax.random.normal(key, shape, dtype)


def _ahead(k2: Array) -> Array:
    """``k2[1:]`` padded back to k2's length: the backward kernel from lag 1 (lag 0 is on the
    diagonal), as ``bidirectional_conv`` / ``anticausal_toeplitz`` take it."""
    return jnp.concatenate([k2[:, 1:], jnp.zeros_like(k2[:, :1])], axis=-1)


@register_mixer("mega_ema", test_config={"ndim": 2})
class MegaEMA(MatrixMixer):
    """The Mega EMA layer ``silu(EMA(x) + omega x)``; ``x: (batch, length, d_model)``.

    Attributes:
      ndim: the EMA dimension n per channel (official default 2; Mega's LM configs use 16).
    """

    ndim: int = 2

    bidirectional: ClassVar[bool] = False
    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=False,
        structure="semiseparable",
        cost="O(B D L log L + D n L)",
        paper=PAPER,
    )

    def setup(self):
        check_positive_int(self.ndim, "ndim")
        shape = ((2 if self.bidirectional else 1) * self.d_model, self.ndim)
        self.delta = self.param("delta", normal_init(0.2), shape, jnp.float32)
        self.alpha = self.param("alpha", normal_init(0.2), shape, jnp.float32)
        self.beta = self.param("beta", beta_init, shape, jnp.float32)
        self.gamma = self.param("gamma", normal_init(1.0), shape, jnp.float32)
        self.omega = self.param("omega", normal_init(1.0), (self.d_model,), jnp.float32)

    # ---- kernels ----------------------------------------------------------------------------
    def kernels(self, length: int) -> tuple[Array, Array | None]:
        """``k1: (d, length)`` and, bidirectional, ``k2: (d, length)`` (both from lag 0)."""
        k = ema_kernel(self.delta, self.alpha, self.beta, self.gamma, length)
        if not self.bidirectional:
            return k, None
        return k[: self.d_model], k[self.d_model :]

    # ---- pieces -----------------------------------------------------------------------------
    def mixer_inputs(self, x, mask):
        u = x.astype(jnp.float32)[..., None]  # zero at padded positions (base class)
        k1, k2 = self.kernels(x.shape[1])
        aux = {"k1": k1} if k2 is None else {"k1": k1, "k2": k2}
        return MixerInputs(values=u, mask=mask, aux=aux)

    def mix_fast(self, inputs):
        u = inputs.values[..., 0]
        k1 = inputs.aux["k1"]
        if not self.bidirectional:
            return causal_conv(u, k1, self.omega)[..., None]
        # the backward kernel of bidirectional_conv starts one step ahead: k2's lag 0 joins omega
        k2 = inputs.aux["k2"]
        return bidirectional_conv(u, k1, _ahead(k2), self.omega + k2[:, 0])[..., None]

    def mix_matrix(self, inputs):
        length = inputs.values.shape[1]
        m = causal_toeplitz(inputs.aux["k1"], length)  # (d, L, L)
        diag = self.omega
        if self.bidirectional:
            k2 = inputs.aux["k2"]
            m = m + anticausal_toeplitz(_ahead(k2), length)
            diag = diag + k2[:, 0]
        m = m + diag[:, None, None] * jnp.eye(length, dtype=m.dtype)
        return jnp.where(inputs.mask[:, None, None, :], m[None], 0.0)

    def mixer_output(self, inputs, mixed):
        return jax.nn.silu(mixed[..., 0])

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        if not self.info.causal:
            return super().init_state(batch)
        return jnp.zeros((batch, self.d_model, self.ndim), jnp.float32)

    def step_fn(self, state, x_t, mask_t):
        # a padded token is a zero input (the base zeroed x_t) and the state still decays
        u = x_t.astype(jnp.float32)
        state, y = ema_step(state, u, self.delta, self.alpha, self.beta, self.gamma)
        return state, jax.nn.silu(y + self.omega * u)


@register_mixer("mega_ema_bidirectional", test_config={"ndim": 2})
class MegaEMABidirectional(MegaEMA):
    """The official ``bidirectional=True`` EMA: a forward and a backward kernel (2 d channels of
    parameters), both with a lag-0 tap. Not causal: no ``step``."""

    bidirectional: ClassVar[bool] = True
    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="quasiseparable",
        cost="O(B D L log L + D n L)",
        paper=PAPER + ", bidirectional EMA",
    )
