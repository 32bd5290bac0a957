"""Hyena (Poli et al., 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models").

Following ``HazyResearch/safari`` ``src/models/sequence/hyena.py`` (``HyenaOperator`` with its
defaults: one head, inner_factor 1, one block, no outer mixing, no post-order FFN, identity
activation), on ``x: (batch, length, d)`` with order N (default 2):

    z = shortconv(x W_in + b_in)             (L, (N + 1) d); depthwise causal, kernel 3, bias
    x_0, ..., x_{N-1}, v = split(z)          (L, d) each
    for o = 0 .. N - 2, with i = N - 1 - o (the official ``reversed(x[1:])``):
        v = h_o * (x_i (.) v) + D_o (.) (x_i (.) v)      causal long convolution (FFT) + skip
    y = (x_0 (.) v) W_out + b_out

For order 2: ``y = out(x_0 (.) (h * (x_1 (.) v) + D (.) x_1 (.) v))``.

The long filters ``h_o[c, l]`` are implicit (``HyenaFilter``): an MLP of the positional features
of ``l``, ``emb_dim`` of them (the normalised time ``t = l / (max_length - 1)`` and the cos / -sin
of ``(emb_dim - 1) / 2`` frequencies ``linspace(1e-4, bands - 1)`` at ``2 pi l / max_length``,
a trainable ``pos_emb``), ``Linear(emb_dim, F) sin [Linear(F, F) sin] x num_inner_mlps
Linear(F, (N - 1) d, no bias)`` with one shared trainable frequency vector ``sin(w (.) .)``, times
the exponential modulation window ``exp(-t |delta_c|) + shift`` with ``delta_c`` spaced linearly
from ``ln(target) / slow_decay_pct`` to ``ln(target) / fast_decay_pct`` over the channels (a fixed
buffer). The filter channels are ordered ``(v o)`` as the official rearrange. ``D_o`` is the
filter's ``bias`` (``randn``), the official ``fftconv_ref``'s skip term.

Matrix view: heads = d channels, head_dim 1, values v; given the gates the layer is linear in v,

    M[c] = diag(x_0[:, c]) (T_{N-2} + D_{N-2}) diag(x_1[:, c]) ... (T_0 + D_0) diag(x_{N-1}[:, c])

with ``T_o[c]`` the lower-triangular Toeplitz matrix of ``h_o[c]``: for order 2
``diag(x_0) (T + D) diag(x_1)``. Data dependent and causal; reported as ``toeplitz`` (a Toeplitz
matrix scaled on both sides).

``max_length`` (the official ``l_max``) bounds the input length: the positional features are laid
out over ``max_length`` positions (``t`` runs to 1 at ``max_length - 1``), and the filter is
evaluated at the positions ``0 .. L - 1`` of the current input, so the output for a prefix does
not depend on the padded length.

Recurrent mode: the long filter is implicit and of full length, so ``step`` keeps the history of
every long convolution's input, ``(N - 1, batch, max_length, d)``, and convolves it with the filter
at each token (O(max_length d) per token, and the filter MLP is re-evaluated, O(max_length F^2)),
plus the short convolution's last 2 projections and the position. Steps past ``max_length``
tokens are not supported (their inputs are dropped).

Padding: the projections are zeroed at padded positions before the short convolution (a pad is a
zero input to it), and ``v`` and the gates ``x_i`` are zero there, so every long convolution reads
zero at pads; in ``step`` a padded token writes those zeros and the position still advances, as in
the parallel paths. Left or right padding gives the shorter sequence's outputs (the filters are
convolutions from the first token; leading pads are zeros before it); a hole counts as a position
(a zero input), by design.

Initialisation: the layer's own (torch defaults: Linear and Conv1d U(+-1/sqrt(fan_in)); the safari
LM re-initialises Linears at the model level, which is the model's business).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import (
    causal_conv,
    causal_toeplitz,
    conv_buffer,
    dilated_causal_conv,
    dilated_conv_step,
)

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def hyena_positional_features(max_length: int, emb_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The official ``PositionalEmbedding``: ``z: (max_length, emb_dim)`` = [t, cos(f w),
    -sin(f w)] with ``t = linspace(0, 1, max_length)``, ``w = 2 pi l / max_length`` and
    ``f = linspace(1e-4, bands - 1, bands)``, bands = (emb_dim - 1) // 2; and ``t: (max_length,)``.
    """
    t = np.linspace(0.0, 1.0, max_length)
    bands = (emb_dim - 1) // 2
    w = 2 * math.pi * np.arange(max_length) / max_length
    f = np.linspace(1e-4, bands - 1, bands)
    phase = w[:, None] * f[None, :]
    z = np.concatenate([t[:, None], np.cos(phase), -np.sin(phase)], axis=-1)
    return z.astype(np.float32), t.astype(np.float32)


def exponential_modulation_deltas(
    channels: int, fast_decay_pct: float, slow_decay_pct: float, target: float
) -> np.ndarray:
    """The official ``ExponentialModulation`` rates: ``linspace(ln(target) / slow,
    ln(target) / fast, channels)``; the window is ``exp(-t |delta|) + shift``."""
    max_decay = math.log(target) / fast_decay_pct
    min_decay = math.log(target) / slow_decay_pct
    return np.linspace(min_decay, max_decay, channels).astype(np.float32)


@register_mixer("hyena", test_config={"filter_order": 8, "max_length": 160})
class Hyena(MatrixMixer):
    """The Hyena operator; ``x: (batch, length <= max_length, d_model)``, causal.

    Attributes:
      max_length: the official ``l_max`` (default 1024): bounds the input length.
      order: N >= 2 (default 2): N - 1 long convolutions, N gates.
      filter_order: width F of the implicit filter MLP (``HyenaOperator`` default 64).
      emb_dim: positional features of the filter (odd, >= 3; default 3).
      num_inner_mlps: hidden Linear + sin layers of the filter MLP (default 2).
      w: initial frequency of the filter's sin activations (default 1).
      short_filter_order: kernel of the short depthwise causal convolution (default 3).
      modulate, fast_decay_pct, slow_decay_pct, target, shift: the exponential modulation
        (defaults True, 0.3, 1.5, 1e-2, 0.0).
      normalized: divide the filter by its L1 norm over channels at each position (default False).
      filter_bias: use the skip ``D`` (the official filter ``bias``; default True).
    """

    max_length: int = 1024
    order: int = 2
    filter_order: int = 64
    emb_dim: int = 3
    num_inner_mlps: int = 2
    w: float = 1.0
    short_filter_order: int = 3
    modulate: bool = True
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    target: float = 1e-2
    shift: float = 0.0
    normalized: bool = False
    filter_bias: bool = True

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="toeplitz",
        cost="O(B N d L log L + L F^2)",
        paper="Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models",
        max_length_attr="max_length",
    )

    def setup(self):
        for name in ("max_length", "filter_order", "short_filter_order"):
            check_positive_int(getattr(self, name), name)
        if not isinstance(self.order, int) or isinstance(self.order, bool) or self.order < 2:
            raise ValueError(f"order must be an int >= 2, got {self.order!r}")
        if not isinstance(self.emb_dim, int) or self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3, got {self.emb_dim!r}")
        if not isinstance(self.num_inner_mlps, int) or self.num_inner_mlps < 0:
            raise ValueError(f"num_inner_mlps must be an int >= 0, got {self.num_inner_mlps!r}")
        if not (self.fast_decay_pct > 0 and self.slow_decay_pct > 0 and 0 < self.target < 1):
            raise ValueError(
                "need fast_decay_pct > 0, slow_decay_pct > 0 and 0 < target < 1, got "
                f"{self.fast_decay_pct}, {self.slow_decay_pct}, {self.target}"
            )
        d, n, f = self.d_model, self.order, self.filter_order
        width = (n + 1) * d
        torch_linear = {"kernel_init": _uniform(d**-0.5), "bias_init": _uniform(d**-0.5)}
        self.in_proj = dense(width, "in_proj", use_bias=True, dtype=self.dtype, **torch_linear)
        self.out_proj = dense(d, "out_proj", use_bias=True, dtype=self.dtype, **torch_linear)
        bound = self.short_filter_order**-0.5  # depthwise Conv1d: fan_in = kernel size
        self.short_kernel = self.param(
            "short_filter_kernel", _uniform(bound), (self.short_filter_order, width), jnp.float32
        )
        self.short_bias = self.param("short_filter_bias", _uniform(bound), (width,), jnp.float32)
        # the implicit filter
        z, t = hyena_positional_features(self.max_length, self.emb_dim)
        self.pos_emb = self.param("pos_emb", lambda key, shape: jnp.asarray(z), z.shape)
        self.filter_t = jnp.asarray(t)
        self.freq = self.param(
            "sin_freq", lambda key, shape: jnp.full(shape, self.w, jnp.float32), (f,)
        )
        fans = [self.emb_dim] + [f] * self.num_inner_mlps
        self.filter_layers = [
            dense(
                f,
                f"filter_{i}",
                use_bias=True,
                kernel_init=_uniform(fan**-0.5),
                bias_init=_uniform(fan**-0.5),
            )
            for i, fan in enumerate(fans)
        ]
        self.filter_out = dense(
            (n - 1) * d, "filter_out", use_bias=False, kernel_init=_uniform(f**-0.5)
        )
        self.filter_D = self.param(
            "filter_bias", jax.nn.initializers.normal(1.0), ((n - 1) * d,), jnp.float32
        )
        self.deltas = jnp.asarray(
            exponential_modulation_deltas(
                (n - 1) * d, self.fast_decay_pct, self.slow_decay_pct, self.target
            )
        )

    # ---- the implicit filter ----------------------------------------------------------------
    def filters(self, length: int) -> tuple[Array, Array]:
        """Long filters ``h: (N - 1, d, length)`` at positions ``0 .. length - 1`` and skips
        ``D: (N - 1, d)``, float32, in the official ``(v o)`` channel order."""
        h = self.pos_emb[:length].astype(jnp.float32)
        for layer in self.filter_layers:
            h = jnp.sin(self.freq * layer(h))
        h = self.filter_out(h)  # (length, (N - 1) d)
        if self.modulate:
            h = h * (jnp.exp(-self.filter_t[:length, None] * jnp.abs(self.deltas)) + self.shift)
        if self.normalized:
            h = h / jnp.sum(jnp.abs(h), axis=-1, keepdims=True)
        n1 = self.order - 1
        h = jnp.transpose(h.reshape(length, self.d_model, n1), (2, 1, 0))
        skip = self.filter_D.reshape(self.d_model, n1).T
        if not self.filter_bias:
            skip = jnp.zeros_like(skip)
        return h, skip

    # ---- pieces -----------------------------------------------------------------------------
    def _split(self, z: Array) -> tuple[list[Array], Array]:
        """``(..., (N + 1) d) -> [x_0 .. x_{N-1}], v``."""
        parts = jnp.split(z, self.order + 1, axis=-1)
        return parts[:-1], parts[-1]

    def mixer_inputs(self, x, mask):
        p = zero_padded(self.in_proj(x).astype(jnp.float32), mask)
        z = zero_padded(dilated_causal_conv(p, self.short_kernel, self.short_bias), mask)
        gates, v = self._split(z)
        h, skip = self.filters(x.shape[1])
        aux = {"gates": jnp.stack(gates), "h": h, "D": skip}  # gates (N, b, L, d)
        return MixerInputs(values=v[..., None], mask=mask, aux=aux)

    def _stages(self):
        """(o, i): long convolution o reads gate x_i, i = N - 1 - o."""
        return [(o, self.order - 1 - o) for o in range(self.order - 1)]

    def mix_fast(self, inputs):
        gates, h, skip = inputs.aux["gates"], inputs.aux["h"], inputs.aux["D"]
        v = inputs.values[..., 0]
        for o, i in self._stages():
            v = causal_conv(gates[i] * v, h[o], skip[o])
        return (gates[0] * v)[..., None]

    def mix_matrix(self, inputs):
        gates, h, skip = inputs.aux["gates"], inputs.aux["h"], inputs.aux["D"]
        length = h.shape[-1]
        eye = jnp.eye(length, dtype=jnp.float32)
        m = None  # (b, d, L, L)
        for o, i in self._stages():
            t = causal_toeplitz(h[o], length) + skip[o][:, None, None] * eye  # (d, L, L)
            g = jnp.moveaxis(gates[i], 1, 2)  # (b, d, L)
            if m is None:
                m = t[None] * g[:, :, None, :]  # T diag(x_i)
            else:
                m = jnp.einsum("dij,bdjk->bdik", t, g[..., :, None] * m, precision=_HI)
        m = jnp.moveaxis(gates[0], 1, 2)[..., :, None] * m  # diag(x_0) on the left
        return jnp.where(inputs.mask[:, None, None, :], m, 0.0)

    def mixer_output(self, inputs, mixed):
        return self.out_proj(mixed[..., 0])

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        width = (self.order + 1) * self.d_model
        return {
            "short": conv_buffer(batch, width, self.short_filter_order, 1),
            "history": jnp.zeros(
                (self.order - 1, batch, self.max_length, self.d_model), jnp.float32
            ),
            "t": jnp.zeros((batch,), jnp.int32),
        }

    def step_fn(self, state, x_t, mask_t):
        m = mask_t[:, None]
        p = jnp.where(m, self.in_proj(x_t).astype(jnp.float32), 0.0)
        short, z = dilated_conv_step(state["short"], p, self.short_kernel, self.short_bias)
        gates, v = self._split(jnp.where(m, z, 0.0))
        h, skip = self.filters(self.max_length)  # (N - 1, d, Lmax), (N - 1, d)
        t = state["t"]
        here = jax.nn.one_hot(t, self.max_length, dtype=bool)[..., None]  # (b, Lmax, 1)
        lag = t[:, None] - jnp.arange(self.max_length)[None, :]  # (b, Lmax): t - j
        history = []
        for o, i in self._stages():
            u = gates[i] * v
            hist = jnp.where(here, u[:, None, :], state["history"][o])
            taps = jnp.where(lag[..., None] >= 0, h[o].T[jnp.clip(lag, 0)], 0.0)  # (b, Lmax, d)
            v = jnp.sum(taps * hist, axis=1) + skip[o] * u
            history.append(hist)
        y = self.out_proj(gates[0] * v)
        return {"short": short, "history": jnp.stack(history), "t": t + 1}, y
