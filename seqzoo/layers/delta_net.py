"""DeltaNet (Yang et al. 2024) and Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025), as fla's
``fla/layers/delta_net.py`` and ``fla/layers/gated_deltanet.py``:

    q, k, v = silu(conv(x W_q)), silu(conv(x W_k)), silu(conv(x W_v))    short causal convs
    q, k    = q / ||q||, k / ||k||                      per head (L2, eps 1e-6)
    b_t     = sigmoid(x_t W_b)                          per head (x 2 with allow_neg_eigval)
    a_t     = exp(-exp(A_log) softplus(x_t W_a + dt_bias))    Gated DeltaNet; DeltaNet: a_t = 1
    S_t     = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(dk)
    y       = RMSNorm(o_t) * silu(x_t W_g)  per head (plain RMSNorm without use_gate), then W_o

Widths: ``num_heads`` heads of key width ``head_dim`` (default ``expand_k * d_model /
num_heads``) and value width ``head_dim * expand_v``. The official defaults: DeltaNet
``expand_k = expand_v = 1``, 4 heads, no output gate; Gated DeltaNet ``num_heads * head_dim =
0.75 d_model`` (6 heads of 256 at d_model 2048), ``expand_v = 2``, output gate.

Init as the official layers: torch's ``nn.Linear`` default ``U(+-1/sqrt(fan_in))`` for every
projection (no biases), the depthwise convs torch's ``Conv1d`` default (no bias), ``A_log = log
U(0, 16)`` and ``dt_bias`` the inverse softplus of a log-uniform dt in [1e-3, 0.1] floored at
1e-4 (Mamba-2's), norm weights 1. (fla's language models re-initialise the projections and
convs ``N(0, 0.02)`` in ``_init_weights``: a model choice, not the layer's.) The q, k and v convs
are one depthwise conv over the concatenated channels (the same per-channel maps).

Matrix view: values ``v`` (after the conv), ``M[i, j] = q_i^T A_i ... A_{j+1} b_j k_j /
sqrt(dk)`` for ``j <= i``, ``A_l = a_l (I - b_l k_l k_l^T)`` (``seqzoo.ops.delta_rule``): an
SSM with a ``dk``-dimensional state per value channel, so semiseparable of rank ``dk``.

Padding as ``seqzoo.layers.mamba2``: the conv input and output are zero at padded positions,
``b = 0`` and ``a = 1`` there (a no-op for the state); ``step`` pushes a zero into the conv
buffer and keeps ``S``. Left or right padding gives the shorter sequence's outputs; a hole takes
a conv tap (a zero), by design. With ``segment_ids`` the conv does not reach across a segment
start and ``S`` resets there.

Left out: grouped value heads (``num_v_heads``), DeltaNet's ``use_beta=False``, other
``qk_activation`` / ``qk_norm`` choices and ``use_short_conv=False`` (which fla warns against).
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo, MixerInputs
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import RMSNorm, l2_normalize, split_heads
from seqzoo.layers.ssm import (
    DeltaRuleMixer,
    compiled_delta_rule,
    conv_params,
    conv_stage,
    step_size,
    torch_linear,
)
from seqzoo.ops.conv import conv_init_buffer, conv_step
from seqzoo.ops.delta_rule import delta_rule_matrix, delta_rule_step

Array = jax.Array
_F32 = jnp.float32

def _info(paper: str) -> MixerInfo:
    return MixerInfo(
        causal=True,
        data_dependent=True,
        structure="semiseparable",
        cost="O(L (C^2 + C dk + dk dv))",
        paper=paper,
        segments=True,
        sequence_parallel=True,
    )


@register_mixer("delta_net", test_config={"num_heads": 2, "chunk_size": 4})
class DeltaNet(DeltaRuleMixer):
    """DeltaNet mixer; ``x: (batch, length, d_model)`` (module docstring for the equations).

    Attributes:
      num_heads: heads ``H`` (4).
      head_dim: key width ``dk`` per head (None: ``expand_k * d_model / H``).
      expand_k: key width over ``d_model`` when ``head_dim`` is None (1).
      expand_v: value width over ``dk`` per head (1).
      gated: Gated DeltaNet's data-dependent decay ``a_t`` (False).
      use_gate: output gate ``silu(x W_g)`` after the per-head RMSNorm (False).
      allow_neg_eigval: ``b_t = 2 sigmoid(.)`` so that ``I - b k k^T`` may flip sign (False).
      conv_size: short conv width (4). conv_bias: (False). norm_eps: the RMSNorm's (1e-5).
      A_init_range: ``A_log = log U(A_init_range)`` ((0, 16)); gated only.
      dt_min, dt_max, dt_init_floor: the ``dt_bias`` init; gated only.
      chunk_size / impl: passed to ``seqzoo.ops.delta_rule``.
    """

    gated: bool = False
    use_gate: bool = False
    allow_neg_eigval: bool = False

    info: ClassVar[MixerInfo] = _info(
        "Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule (DeltaNet)"
    )

    def setup(self):
        self.delta_setup(gated=self.gated)
        h = self.num_heads
        widths = (h * self.dk, h * self.dk, h * self.dv)
        self.q_proj, self.k_proj, self.v_proj = (
            torch_linear(w, self.d_model, name, dtype=self.dtype)
            for w, name in zip(widths, ("q_proj", "k_proj", "v_proj"), strict=True)
        )
        self.conv_kernel, self.conv_bias_param = conv_params(
            self, self.conv_size, sum(widths), self.conv_bias
        )
        self.b_proj = torch_linear(h, self.d_model, "b_proj", dtype=self.dtype)
        if self.gated:
            self.a_proj = torch_linear(h, self.d_model, "a_proj", dtype=self.dtype)
            self.A_log, self.dt_bias = self.decay_params()
        if self.use_gate:
            self.g_proj = torch_linear(h * self.dv, self.d_model, "g_proj", dtype=self.dtype)
        self.o_norm = RMSNorm(eps=self.norm_eps, norm_before_gate=True)
        self.o_proj = torch_linear(self.d_model, h * self.dv, "o_proj", dtype=self.dtype)

    # ---- pieces -----------------------------------------------------------------------------
    def _qkv(self, x: Array) -> Array:
        """The concatenated q, k, v projections (the conv's input), ``(..., 2 H dk + H dv)``."""
        return jnp.concatenate([self.q_proj(x), self.k_proj(x), self.v_proj(x)], axis=-1)

    def _heads(self, qkv: Array) -> tuple[Array, Array, Array]:
        """The conv output split into L2-normalised q, k ``(..., H, dk)`` and v ``(..., H, dv)``,
        all in the conv output's dtype (normalised in float32, as fla's ``l2norm``): a bf16
        layer hands the delta rule bf16 matmul operands."""
        key_width = self.num_heads * self.dk
        q, k, v = jnp.split(qkv, [key_width, 2 * key_width], axis=-1)
        q, k, v = (split_heads(a, self.num_heads) for a in (q, k, v))
        return l2_normalize(q).astype(v.dtype), l2_normalize(k).astype(v.dtype), v

    def _gates(self, x: Array, mask: Array) -> dict[str, Array]:
        """``beta`` and, where used, ``log_decay`` (both 0 at pads) and the output gate."""
        beta = jax.nn.sigmoid(self.b_proj(x).astype(_F32)) * (2.0 if self.allow_neg_eigval else 1.0)
        out = {"beta": jnp.where(mask[..., None], beta, 0.0)}
        if self.gated:
            out["log_decay"] = -jnp.exp(self.A_log) * step_size(self.a_proj(x), self.dt_bias, mask)
        if self.use_gate:
            out["gate"] = split_heads(self.g_proj(x), self.num_heads)
        return out

    def mixer_inputs(self, x, mask, segment_ids=None):
        qkv = conv_stage(
            self._qkv(x), mask, self.conv_kernel, self.conv_bias_param, segment_ids,
            left=self.conv_size - 1,
        )
        q, k, v = self._heads(qkv)
        aux = self._gates(x, mask) | {"q": q, "k": k, "segment_ids": segment_ids}
        return MixerInputs(values=v, mask=mask, aux=aux)

    def mix_fast(self, inputs):
        a = inputs.aux
        return compiled_delta_rule(
            a["q"], a["k"], inputs.values, a["beta"], a.get("log_decay"), scale=self.dk**-0.5,
            segment_ids=a["segment_ids"], chunk_size=self.chunk_size, impl=self.rule_impl,
        )

    def mix_matrix(self, inputs):
        a = inputs.aux
        return delta_rule_matrix(
            a["q"], a["k"], a["beta"], a.get("log_decay"), scale=self.dk**-0.5,
            segment_ids=a["segment_ids"],
        )

    def mixer_output(self, inputs, mixed):
        return self._output(mixed, inputs.aux.get("gate"))

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        channels = self.num_heads * (2 * self.dk + self.dv)
        return {
            "conv": conv_init_buffer(batch, channels, self.conv_size),
            "S": jnp.zeros((batch, self.num_heads, self.dk, self.dv), _F32),
        }

    def step_fn(self, state, x_t, mask_t):
        qkv = self._qkv(x_t)
        qkv = jnp.where(mask_t[:, None], qkv, jnp.zeros((), qkv.dtype))  # a pad pushes a zero
        conv, qkv = conv_step(state["conv"], qkv, self.conv_kernel, self.conv_bias_param)
        q, k, v = self._heads(jax.nn.silu(qkv))
        gates = self._gates(x_t, mask_t)  # b = 0, a = 1 at a pad: S is kept
        s, o = delta_rule_step(
            state["S"], q, k, v, gates["beta"], gates.get("log_decay"), scale=self.dk**-0.5
        )
        return {"conv": conv, "S": s}, self._output(o, gates.get("gate"))


@register_mixer("gated_deltanet", test_config={"num_heads": 2, "head_dim": 4, "chunk_size": 4})
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet: DeltaNet with Mamba-2's decay ``a_t`` and the output gate, at the
    official widths (``num_heads * head_dim = 0.75 d_model``, values twice as wide)."""

    num_heads: int = 6
    expand_k: float = 0.75
    expand_v: float = 2.0
    gated: bool = True
    use_gate: bool = True

    info: ClassVar[MixerInfo] = _info(
        "Yang, Kautz & Hatamizadeh 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule"
    )
