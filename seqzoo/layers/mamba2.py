"""Mamba-2 (Dao & Gu, 2024): the SSD layer (official ``mamba_ssm/modules/mamba2.py``).

    z, xBC, dt = split(u W_in)                    z: (b, L, E), xBC: (b, L, E + 2GN), dt: (b, L, H)
    x, B, C    = split(silu(causal_conv(xBC)))    x: (b, L, H, P), B, C: (b, L, G, N)
    dt         = softplus(dt + dt_bias)
    H_t        = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T      per head, A_h = -exp(A_log_h)
    y_t        = H_t C_t + D_h x_t
    out        = RMSNormGated(y, z) W_out         norm(y * silu(z)) per group of E / G channels

with E = expand * d_model = H * P (P = headdim) and G = ngroups (heads h use group
``h // (H / G)``). Parameters follow the official init: torch's default ``U(+-1/sqrt(fan_in))``
for in_proj / out_proj and the conv (``conv_init``: the conv kernel's bound), ``A_log = log
U(A_init_range)`` per head, ``dt_bias`` the inverse softplus of a log-uniform dt in
``[dt_min, dt_max]`` floored at ``dt_init_floor``, ``D = 1`` per head, norm weight 1.

Matrix view: heads H, head_dim P, values v = x, M = ``ssd_matrix`` (the 1-semiseparable SSD
matrix) plus D on the diagonal; the gated norm and out_proj are the output stage.

Padding and segments as ``seqzoo.layers.mamba``: zero conv inputs and outputs at padded
positions, dt = 0 there (a no-op for the state); ``step`` pushes a zero into the conv buffer and
keeps the SSM state at a pad. Left or right padding gives the shorter sequence's outputs; a hole
takes a conv tap (a zero), by design. The conv does not reach across segment starts; the SSD
resets there.

Left out: ``d_ssm`` (the extra gated-MLP channels), ``D_has_hdim`` (a per-channel D is no
per-head matrix), ``dt_limit`` (a clamp on dt), tensor parallelism.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import RMSNorm, merge_heads
from seqzoo.layers.ssm import (
    SelectiveSSM,
    check_heads,
    check_power_of_two,
    compiled,
    conv_stage,
    log_uniform_a_init,
    plus_diagonal,
    ssm_info,
    step_size,
)
from seqzoo.ops.conv import conv_init_buffer, conv_step
from seqzoo.ops.ssd import ssd, ssd_matrix, ssd_step

Array = jax.Array
_F32 = jnp.float32

compiled_ssd = compiled(ssd, "chunk_size", "dt_softplus", "return_final_state", "impl",
                        "precision")


@jax.jit
def ssd_mixing_matrix(
    dt: Array, A: Array, B: Array, C: Array, D: Array, mask: Array, segment_ids: Array | None = None
) -> Array:
    """``ssd_matrix`` (dt already discretised) plus ``D[h]`` on the diagonal at valid positions:
    ``(batch, heads, length, length)`` float32. D: (heads,); mask: (batch, length)."""
    return plus_diagonal(ssd_matrix(dt, A, B, C, segment_ids=segment_ids), D, mask)


@register_mixer("mamba2", test_config={"d_state": 4, "headdim": 4, "expand": 2, "chunk_size": 4})
class Mamba2(SelectiveSSM):
    """Mamba-2 mixer; ``x: (batch, length, d_model)``. Attributes as the official ``Mamba2``:

    Attributes:
      d_state: N (128). d_conv: conv width (4). conv_init: the conv kernel's init bound (None:
        torch's default). expand: E = expand * d_model (2). headdim: P (None: 64, or E when
        E < 64, one head).
      ngroups: G groups of B, C (1); G must divide the number of heads.
      A_init_range: ``A_log = log U(A_init_range)`` ((1, 16)).
      rmsnorm: the gated RMSNorm (True); without it the output is ``y * silu(z)``.
      norm_before_gate: ``norm(y) * silu(z)`` instead of ``norm(y * silu(z))`` (False).
      dt_min, dt_max, dt_init_floor: the dt_bias init. bias: in_proj / out_proj biases (False).
      conv_bias: (True). chunk_size: SSD chunk, a power of two (256). impl: ``ssd``'s impl.
      precision: ``ssd``'s (the GPU kernel's float32 matmuls; None: the context's or "tf32x3").
    """

    d_state: int = 128
    expand: int = 2
    conv_init: float | None = None
    headdim: int | None = None
    ngroups: int = 1
    A_init_range: tuple[float, float] = (1.0, 16.0)
    rmsnorm: bool = True
    norm_before_gate: bool = False
    chunk_size: int = 256
    precision: str | None = None

    info: ClassVar[MixerInfo] = ssm_info(
        "Dao & Gu 2024, Transformers are SSMs (Mamba-2)", "O(L E (N + Q))"
    )

    def setup(self):
        e, self.ssd_impl = self.check_ssm_options("ssd")
        check_power_of_two(self.chunk_size, "chunk_size")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"A_init_range must satisfy 0 < lo <= hi, got {self.A_init_range}")
        h, self.head_size = check_heads(e, self.headdim, self.ngroups)
        gn = self.ngroups * self.d_state
        self.d_inner, self.nheads = e, h
        self.in_proj, self.out_proj = self.make_projections(2 * e + 2 * gn + h, e)
        self.conv_kernel, self.conv_bias_param = self.make_conv(e + 2 * gn, self.conv_init)
        self.dt_bias = self.make_dt_bias(h)
        self.A_log = self.make_a_log(log_uniform_a_init(lo, hi), (h,))
        self.D = self.make_skip(h)
        if self.rmsnorm:
            self.norm = RMSNorm(
                eps=1e-5, group_size=e // self.ngroups, norm_before_gate=self.norm_before_gate
            )

    # ---- pieces -----------------------------------------------------------------------------
    def _split(self, zxbcdt: Array) -> tuple[Array, Array, Array]:
        e, gn = self.d_inner, self.ngroups * self.d_state
        return tuple(jnp.split(zxbcdt, [e, 2 * e + 2 * gn], axis=-1))

    def _ssm_inputs(self, xbc: Array) -> tuple[Array, Array, Array]:
        """x: (..., H, P), B, C: (..., G, N) from the activated conv output."""
        e, gn = self.d_inner, self.ngroups * self.d_state
        x, B, C = jnp.split(xbc, [e, e + gn], axis=-1)
        lead = xbc.shape[:-1]
        return (
            x.reshape(lead + (self.nheads, self.head_size)),
            B.reshape(lead + (self.ngroups, self.d_state)),
            C.reshape(lead + (self.ngroups, self.d_state)),
        )

    def mixer_inputs(self, x, mask, segment_ids=None):
        z, xbc, dt = self._split(self.in_proj(x))
        xbc = conv_stage(
            xbc, mask, self.conv_kernel, self.conv_bias_param, segment_ids, left=self.d_conv - 1
        )
        v, B, C = self._ssm_inputs(xbc)
        dt = step_size(dt, self.dt_bias, mask)
        return self.scan_inputs(v, mask, segment_ids, z=z, dt=dt, B=B, C=C)

    def mix_fast(self, inputs):
        return compiled_ssd(  # x, B, C in the compute dtype (bf16 kernels), dt and A in f32
            inputs.values,
            *self.scan_args(inputs),
            chunk_size=self.chunk_size,
            D=self.D,
            segment_ids=inputs.aux.get("segment_ids"),
            impl=self.ssd_impl,
            precision=self.precision,
        )

    def mix_matrix(self, inputs):
        segment_ids = inputs.aux.get("segment_ids")
        return ssd_mixing_matrix(*self.scan_args(inputs), self.D, inputs.mask, segment_ids)

    def mixer_output(self, inputs, mixed):
        return self._output(merge_heads(mixed), inputs.aux["z"])

    def _output(self, y: Array, z: Array) -> Array:
        """y: (..., E) (the compute dtype or f32), z: (..., E) -> (..., d_model)."""
        return self.output_stage(y, z, self.norm if self.rmsnorm else None)

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        channels = self.d_inner + 2 * self.ngroups * self.d_state
        return {
            "conv": conv_init_buffer(batch, channels, self.d_conv),
            "ssm": jnp.zeros((batch, self.nheads, self.head_size, self.d_state), _F32),
        }

    def step_fn(self, state, x_t, mask_t):
        z, xbc, dt = self._split(self.in_proj(x_t))
        xbc = jnp.where(mask_t[:, None], xbc, jnp.zeros((), xbc.dtype))  # a pad pushes a zero
        conv, xbc = conv_step(state["conv"], xbc, self.conv_kernel, self.conv_bias_param)
        v, B, C = self._ssm_inputs(jax.nn.silu(xbc))
        dt = step_size(dt, self.dt_bias, mask_t)  # 0 at a pad: the state is kept
        ssm, y = ssd_step(state["ssm"], v.astype(_F32), dt, -jnp.exp(self.A_log), B, C, D=self.D)
        return {"conv": conv, "ssm": ssm}, self._output(merge_heads(y), z)
