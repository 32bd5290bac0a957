"""Hydra (Hwang et al., 2024): the bidirectional quasiseparable SSM layer
(official ``goombalab/hydra``, ``hydra/modules/hydra.py``).

    z, xBC, dt = split(u W_in)          z: (b, L, E), xBC: (b, L, E + 4 G N), dt: (b, L, 2 H)
    xBC        = silu(conv(xBC))        depthwise, width d_conv (odd), "same" padding, bias
    x, B_f, C_f, B_b, C_b = split(xBC)  x: (b, L, H, P), each B, C: (b, L, G, N)
    dt_f, dt_b = softplus(split(dt) + dt_bias)       one dt_bias (H,) for both directions
    y          = shift(SS_f(x)) + flip(shift(SS_b(flip x))) + x * (x W_D + D)
    out        = (RMSNorm(y) * silu(z)) W_out        (RMSNormGated, norm_before_gate=True)

SS is Mamba-2's SSD with A = -exp(A_log) shared by both directions (``seqzoo.ops.quasiseparable``),
``shift`` delays by one step, and ``x W_D + D`` (``fc_D``, no bias, plus the per-head ``D``) is
the data-dependent diagonal. Parameters follow the official init: torch's default
``U(+-1/sqrt(fan_in))`` for in_proj, fc_D, out_proj and the conv (``conv_init``: the conv
kernel's bound), ``A_log = 0`` (A = -1), ``D = 1``, ``dt_bias`` the inverse softplus of a
log-uniform dt in ``[dt_min, dt_max]`` floored at ``dt_init_floor``, norm weight 1.

Matrix view: heads H, head_dim P, values v = x, M = ``quasiseparable_matrix`` (strictly lower
part from the forward SSD, strictly upper from the backward one, diagonal ``x_i W_D + D``).

Padding: conv inputs and outputs are zeroed at padded positions and dt = 0 there (in both
directions a padded token neither decays nor feeds the state); M's padded rows and columns are
zero. Since the shifted read-out of token i uses C at i - 1 (forward) and i + 1 (backward), and
C is zero at a padded position, the token next to a pad gets nothing from that direction, as at
the sequence ends: right (or left) padding equals the shorter sequence; a hole in the middle
leaves the states running through it but empties those two read-outs (and takes a conv tap), so
it differs from removing the token, by design. Segments: the conv does not
reach across segment boundaries and both scans reset there.

Left out: ``learnable_init_states``, ``dt_limit``, the fused ``use_mem_eff_path`` (same math).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo, MixerInputs
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import RMSNorm, merge_heads
from seqzoo.layers.ssm import (
    SelectiveSSM,
    check_heads,
    check_power_of_two,
    compiled,
    conv_stage,
    ssm_info,
    step_size,
    torch_linear,
)
from seqzoo.ops.quasiseparable import quasiseparable, quasiseparable_matrix

_F32 = jnp.float32

compiled_quasiseparable = compiled(quasiseparable, "chunk_size", "dt_softplus", "impl",
                                   "precision")


@jax.jit
def hydra_matrix(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, mask, segment_ids=None):
    """``quasiseparable_matrix`` (dt already discretised, data-dependent D: (b, l, heads)) with
    padded rows and columns zeroed: ``(batch, heads, length, length)`` float32."""
    m = quasiseparable_matrix(
        dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=D, segment_ids=segment_ids
    ).astype(_F32)
    keep = mask[:, None, :, None] & mask[:, None, None, :]
    return jnp.where(keep, m, 0.0)


@register_mixer("hydra", test_config={"d_state": 4, "headdim": 4, "expand": 2, "chunk_size": 4})
class Hydra(SelectiveSSM):
    """Hydra mixer (bidirectional, no step); ``x: (batch, length, d_model)``.

    Attributes (as the official ``Hydra``):
      d_state: N (64). d_conv: conv width, odd (7). conv_init: the conv kernel's init bound
        (None: torch's default). expand: E = expand * d_model (2). headdim: P (None: 64, or E
        when E < 64, one head).
      ngroups: G groups of B, C per direction (1), dividing the number of heads.
      dt_min, dt_max, dt_init_floor: the dt_bias init. bias: in_proj / out_proj biases (False).
      conv_bias: (True). chunk_size: SSD chunk, a power of two (256). impl: ``ssd``'s impl.
      precision: ``quasiseparable``'s (the GPU kernel's float32 matmuls; None: the context's or
        "tf32x3").
    """

    d_state: int = 64
    d_conv: int = 7
    expand: int = 2
    conv_init: float | None = None
    headdim: int | None = None
    ngroups: int = 1
    chunk_size: int = 256
    precision: str | None = None

    info: ClassVar[MixerInfo] = ssm_info(
        "Hwang et al. 2024, Hydra: Bidirectional State Space Models Through Generalized "
        "Matrix Mixers",
        "O(L E (N + Q))",
        causal=False,
        structure="quasiseparable",
    )

    def setup(self):
        e, self.ssd_impl = self.check_ssm_options("quasiseparable")
        if self.d_conv % 2 != 1:
            raise ValueError(f"d_conv must be odd for a 'same' convolution, got {self.d_conv}")
        check_power_of_two(self.chunk_size, "chunk_size")
        h, self.head_size = check_heads(e, self.headdim, self.ngroups)
        gn = self.ngroups * self.d_state
        self.d_inner, self.nheads = e, h
        self.in_proj, self.out_proj = self.make_projections(2 * e + 4 * gn + 2 * h, e)
        self.conv_kernel, self.conv_bias_param = self.make_conv(e + 4 * gn, self.conv_init)
        self.dt_bias = self.make_dt_bias(h)
        self.A_log = self.make_a_log(nn.initializers.zeros, (h,))
        self.D = self.make_skip(h)
        self.fc_D = torch_linear(h, e, "fc_D", dtype=self.dtype)
        self.norm = RMSNorm(eps=1e-5, norm_before_gate=True)

    # ---- pieces -----------------------------------------------------------------------------
    def mixer_inputs(self, x, mask, segment_ids=None):
        e, gn, h = self.d_inner, self.ngroups * self.d_state, self.nheads
        z, xbc, dt = jnp.split(self.in_proj(x), [e, 2 * e + 4 * gn], axis=-1)
        xbc = conv_stage(  # "same" padding: d_conv // 2 taps on each side
            xbc, mask, self.conv_kernel, self.conv_bias_param, segment_ids, left=self.d_conv // 2
        )
        u, b_f, c_f, b_b, c_b = jnp.split(xbc, [e, e + gn, e + 2 * gn, e + 3 * gn], axis=-1)
        groups = x.shape[:2] + (self.ngroups, self.d_state)
        dt_f, dt_b = (step_size(d, self.dt_bias, mask) for d in jnp.split(dt, 2, axis=-1))
        aux = {
            "z": z,
            "dt_fwd": dt_f,
            "dt_bwd": dt_b,
            "B_fwd": b_f.reshape(groups),
            "C_fwd": c_f.reshape(groups),
            "B_bwd": b_b.reshape(groups),
            "C_bwd": c_b.reshape(groups),
            "D": self.fc_D(u).astype(_F32) + self.D,  # (b, l, H): the data-dependent diagonal
        }
        if segment_ids is not None:
            aux["segment_ids"] = segment_ids
        v = u.reshape(x.shape[:2] + (h, self.head_size))
        return MixerInputs(values=v, mask=mask, aux=aux)

    def _ssm_args(self, a: dict) -> tuple:
        return (
            a["dt_fwd"],
            a["dt_bwd"],
            -jnp.exp(self.A_log),
            a["B_fwd"],
            a["C_fwd"],
            a["B_bwd"],
            a["C_bwd"],
        )

    def mix_fast(self, inputs):
        a = inputs.aux
        return compiled_quasiseparable(  # x, B, C in the compute dtype; dt, A, D in f32
            inputs.values,
            *self._ssm_args(a),
            D=a["D"],
            chunk_size=self.chunk_size,
            segment_ids=a.get("segment_ids"),
            impl=self.ssd_impl,
            precision=self.precision,
        )

    def mix_matrix(self, inputs):
        a = inputs.aux
        return hydra_matrix(*self._ssm_args(a), a["D"], inputs.mask, a.get("segment_ids"))

    def mixer_output(self, inputs, mixed):
        z = inputs.aux["z"]
        return self.output_stage(merge_heads(mixed), z, self.norm)
