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

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import merge_heads
from seqzoo.layers.mamba import (
    check_dt_range,
    check_positive_int,
    conv_params,
    conv_stage,
    dt_bias_init,
    inner_width,
    step_size,
    torch_linear,
)
from seqzoo.layers.mamba2 import GatedRMSNorm, check_heads, check_power_of_two
from seqzoo.ops.quasiseparable import quasiseparable, quasiseparable_matrix
from seqzoo.ops.ssd import IMPLS as SSD_IMPLS

Array = jax.Array
_F32 = jnp.float32

# one compiled program each in eager calls (see ``seqzoo.layers.mamba.conv_stage``)
compiled_quasiseparable = jax.jit(
    quasiseparable, static_argnames=("chunk_size", "dt_softplus", "impl")
)


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
class Hydra(MatrixMixer):
    """Hydra mixer (bidirectional, no step); ``x: (batch, length, d_model)``.

    Attributes (as the official ``Hydra``):
      d_state: N (64). d_conv: conv width, odd (7). conv_init: the conv kernel's init bound
        (None: torch's default). expand: E = expand * d_model (2). headdim: P (None: 64, or E
        when E < 64, one head).
      ngroups: G groups of B, C per direction (1), dividing the number of heads.
      dt_min, dt_max, dt_init_floor: the dt_bias init. bias: in_proj / out_proj biases (False).
      conv_bias: (True). chunk_size: SSD chunk, a power of two (256). impl: ``ssd``'s impl.
    """

    d_state: int = 64
    d_conv: int = 7
    conv_init: float | None = None
    expand: int = 2
    headdim: int | None = None
    ngroups: int = 1
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    bias: bool = False
    conv_bias: bool = True
    chunk_size: int = 256
    impl: str = "auto"

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=True,
        structure="quasiseparable",
        cost="O(L E (N + Q))",
        paper="Hwang et al. 2024, Hydra: Bidirectional State Space Models Through Generalized "
        "Matrix Mixers",
        segments=True,
    )

    def setup(self):
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        if self.d_conv % 2 != 1:
            raise ValueError(f"d_conv must be odd for a 'same' convolution, got {self.d_conv}")
        check_power_of_two(self.chunk_size, "chunk_size")
        check_dt_range(self.dt_min, self.dt_max, self.dt_init_floor)
        if self.impl not in SSD_IMPLS:
            raise ValueError(f"impl must be one of {SSD_IMPLS}, got {self.impl!r}")
        e = inner_width(self.expand, self.d_model)
        h, self.head_size = check_heads(e, self.headdim, self.ngroups)
        gn = self.ngroups * self.d_state
        self.d_inner, self.nheads = e, h
        self.in_proj = torch_linear(
            2 * e + 4 * gn + 2 * h, self.d_model, "in_proj", use_bias=self.bias, dtype=self.dtype
        )
        self.conv_kernel, self.conv_bias_param = conv_params(
            self, self.d_conv, e + 4 * gn, self.conv_bias, self.conv_init
        )
        self.dt_bias = self.param(
            "dt_bias", dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor), (h,), _F32
        )
        self.A_log = self.param("A_log", nn.initializers.zeros, (h,), _F32)
        self.D = self.param("D", nn.initializers.ones, (h,), _F32)
        self.fc_D = torch_linear(h, e, "fc_D", dtype=self.dtype)
        self.norm = GatedRMSNorm(eps=1e-5, norm_before_gate=True)
        self.out_proj = torch_linear(
            self.d_model, e, "out_proj", use_bias=self.bias, dtype=self.dtype
        )

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
        return compiled_quasiseparable(
            inputs.values.astype(_F32),
            *self._ssm_args(a),
            D=a["D"],
            chunk_size=self.chunk_size,
            segment_ids=a.get("segment_ids"),
            impl=self.impl,
        )

    def mix_matrix(self, inputs):
        a = inputs.aux
        return hydra_matrix(*self._ssm_args(a), a["D"], inputs.mask, a.get("segment_ids"))

    def mixer_output(self, inputs, mixed):
        z = inputs.aux["z"]
        return self.out_proj(self.norm(merge_heads(mixed), z).astype(z.dtype))
