"""BaseConv, the short gated convolution of Based (Arora et al. 2024), as the official
``based/models/mixers/convolution.py`` ``BaseConv``:

    [u, g] = x W_in + b_in                 u, g: (length, E),  E = expand_proj * d_model / 2
    c_t    = sum_{s=0}^{K-1} w_s u_{t-s}   causal depthwise conv, kernel K = 3, no bias
    y      = (silu(c) * g) W_out + b_out

Matrix view: the convolution is the mixing, one channel per head (``head_dim`` 1): values ``u``
``(batch, length, E, 1)``, ``M[c, i, j] = w_{i-j, c}`` for ``0 <= i - j < K`` (a banded Toeplitz
matrix, data independent), and the output stage the gate ``silu(c) * g`` and ``W_out``.

Init: torch's ``nn.Linear`` default ``U(+-1/sqrt(fan_in))`` (weights and biases) and
``Conv1d``'s for the kernel, as the official module (Based's GPT re-initialises its linear
layers with its own ``special_initializer``; a model choice).

Padding: ``u`` is zero at pads (the conv input), so a hole takes a tap (a zero) and leading pads
are no-ops; ``step`` pushes a zero into the conv buffer. With ``segment_ids`` the taps stop at
a segment start.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.ssm import conv_params, torch_linear
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import conv_init_buffer, conv_step, depthwise_conv
from seqzoo.ops.segments import segment_runs

Array = jax.Array


@register_mixer("base_conv", test_config={"expand_proj": 2})
class BaseConv(MatrixMixer):
    """Based's gated short convolution; ``x: (batch, length, d_model)`` (module docstring).

    Attributes:
      expand_proj: ``W_in``'s width over ``d_model`` (4, the Based 360M config); the conv and the
        gate each get half. kernel_size: ``K`` (3). use_bias: biases of ``W_in``, ``W_out`` (True).
    """

    expand_proj: int = 4
    kernel_size: int = 3
    use_bias: bool = True

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=False,
        structure="toeplitz",
        cost="O(L D K)",
        paper="Arora et al. 2024, Simple linear attention language models (Based: BaseConv)",
        segments=True,
    )

    def setup(self):
        check_positive_int(self.expand_proj, "expand_proj")
        check_positive_int(self.kernel_size, "kernel_size")
        if self.expand_proj * self.d_model % 2:
            raise ValueError(f"expand_proj * d_model must be even, got {self.expand_proj} * "
                             f"{self.d_model}")
        self.width = self.expand_proj * self.d_model // 2
        self.in_proj = torch_linear(2 * self.width, self.d_model, "in_proj",
                                    use_bias=self.use_bias, dtype=self.dtype)
        self.out_proj = torch_linear(self.d_model, self.width, "out_proj",
                                     use_bias=self.use_bias, dtype=self.dtype)
        self.conv_kernel, _ = conv_params(self, self.kernel_size, self.width, conv_bias=False)

    def mixer_inputs(self, x, mask, segment_ids=None):
        u, gate = jnp.split(self.in_proj(x), 2, axis=-1)
        u = zero_padded(u, mask)[..., None]  # (b, l, E, 1): one channel per head
        return MixerInputs(values=u, mask=mask, aux={"gate": gate, "segment_ids": segment_ids})

    def mix_fast(self, inputs):
        c = depthwise_conv(inputs.values[..., 0], self.conv_kernel, None,
                           left=self.kernel_size - 1, segment_ids=inputs.aux["segment_ids"])
        return c[..., None]

    def mix_matrix(self, inputs):
        length = inputs.values.shape[1]
        lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # i - j
        taps = self.conv_kernel[::-1]  # taps[s] multiplies u_{t - s}
        band = (lag >= 0) & (lag < self.kernel_size)
        m = jnp.where(band[None], taps[jnp.clip(lag, 0, self.kernel_size - 1)].transpose(2, 0, 1),
                      0.0)[None]  # (1, E, L, L)
        keep = inputs.mask[:, None, None, :]  # pads carry no weight
        if inputs.aux["segment_ids"] is not None:
            runs = segment_runs(inputs.aux["segment_ids"])
            keep = keep & (runs[:, :, None] == runs[:, None, :])[:, None]
        return jnp.where(keep, m, 0.0)

    def mixer_output(self, inputs, mixed):
        return self._output(mixed[..., 0], inputs.aux["gate"])

    def _output(self, c: Array, gate: Array) -> Array:
        y = jax.nn.silu(c.astype(jnp.float32)) * gate.astype(jnp.float32)
        return self.out_proj(y.astype(gate.dtype))

    def init_state(self, batch: int):
        return conv_init_buffer(batch, self.width, self.kernel_size)

    def step_fn(self, state, x_t, mask_t):
        u, gate = jnp.split(self.in_proj(x_t), 2, axis=-1)
        u = jnp.where(mask_t[:, None], u, jnp.zeros((), u.dtype))  # a pad pushes a zero
        state, c = conv_step(state, u, self.conv_kernel)
        return state, self._output(c, gate)
