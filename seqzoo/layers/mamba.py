"""Mamba (Gu & Dao, 2023): the selective state-space layer (official ``mamba_simple.Mamba``).

    x, z   = split(u W_in)                        x, z: (b, L, E), E = d_inner = expand * d_model
    x      = silu(causal_conv(x))                 depthwise, width d_conv, with bias
    dt, B, C = split(x W_x)                       dt: (b, L, dt_rank), B, C: (b, L, N)
    delta  = softplus(dt W_dt + b_dt)             (b, L, E)
    h_t    = exp(delta_t A) h_{t-1} + delta_t B_t x_t       h_t: (E, N) per batch row
    y_t    = C_t . h_t + D x_t
    out    = (y * silu(z)) W_out

Parameters follow the official init: torch's default ``U(+-1/sqrt(fan_in))`` for the
projections and the conv; ``dt_proj`` weight ``U(+-dt_rank^-0.5 dt_scale)`` ("random") or the
constant ``dt_rank^-0.5 dt_scale`` ("constant"), its bias the inverse softplus of dt drawn
log-uniformly in ``[dt_min, dt_max]`` and floored at ``dt_init_floor``; ``A_log[d] = log(1..N)``
(S4D-real, ``A = -exp(A_log)``) and ``D = 1``. Dense kernels are stored ``(in, out)`` (torch's
``weight.T``), the conv kernel ``(d_conv, channels)`` (torch's ``weight[:, 0, :].T``).

Matrix view: heads = the E channels, head_dim 1, values v = the conv output x, and per channel

    M[d, i, j] = sum_n C_i[n] B_j[n] delta_j[d] exp(A[d, n] sum_{k=j+1..i} delta_k[d])   (j <= i)

plus D[d] on the diagonal; the z gate and out_proj are the output stage.

Padding: the in_proj output feeding the conv is zeroed at padded positions (so the conv reads a
zero there), the conv output too, and delta = 0 at padded positions (no decay, no input): a padded
token is a no-op for the SSM state. ``step`` does the same: it pushes a zero into the conv buffer
and leaves the SSM state unchanged. Left or right padding gives the shorter sequence's outputs; a
hole still takes a tap of the short conv (a zero), so it differs from removing the token, by
design. Segments (packed sequences): the conv does not reach across a
segment start and the scan resets there.

Decoding state (``init_state``): ``conv (batch, E, d_conv - 1)``, the previous conv inputs (the
official ``conv_state`` holds d_conv, the current one included), and ``ssm (batch, E, N)``.
Left out: the fused CUDA path (``use_fast_path``, the same math) and ``inference_params``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.ssm import (
    SelectiveSSM,
    compiled,
    conv_stage,
    dt_bias_init,
    plus_diagonal,
    s4d_real_a_init,
    ssm_info,
    step_size,
    symmetric_uniform,
    torch_linear,
)
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import conv_init_buffer, conv_step
from seqzoo.ops.scan import selective_scan, selective_scan_step
from seqzoo.ops.ssd import ssd_matrix

Array = jax.Array
_F32 = jnp.float32

compiled_selective_scan = compiled(
    selective_scan, "delta_softplus", "return_final_state", "impl"
)


@jax.jit
def selective_scan_matrix(
    delta: Array,
    A: Array,
    B: Array,
    C: Array,
    D: Array,
    mask: Array,
    segment_ids: Array | None = None,
) -> Array:
    """Mamba's mixing matrix per channel, ``(batch, E, length, length)`` float32:

    M[d, i, j] = sum_n C_i[n] B_j[n] delta_j[d] exp(A[d, n] sum_{k=j+1..i} delta_k[d]) (j <= i,
    same segment), plus ``D[d]`` on the diagonal at valid positions. delta: (b, l, E) (already
    discretised); A: (E, N); B, C: (b, l, N); D: (E,); mask: (b, l).
    """
    B = B.astype(_F32)[:, :, None, :, None]  # (b, l, 1, N, 1): one group per state index n
    C = C.astype(_F32)[:, :, None, :, None]

    def one_state(A_n, B_n, C_n):  # the channels' scalar-decay SSM of state index n
        return ssd_matrix(delta, A_n, B_n, C_n, segment_ids=segment_ids)

    m = jax.vmap(one_state, in_axes=(1, 3, 3))(A, B, C).sum(0)  # (b, E, l, l)
    return plus_diagonal(m, D, mask)


class DtProjection(nn.Module):
    """Mamba's ``dt_proj``: ``dt W + b`` (b added in f32, as the official ``delta_bias``).

    ``kernel (dt_rank, d_inner)`` ``U(+-s)`` ("random") or ``s`` ("constant"),
    s = dt_rank^-0.5 dt_scale; ``bias (d_inner,)`` from ``dt_bias_init``.
    """

    d_inner: int
    dt_rank: int
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    def setup(self):
        std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "random":
            kernel_init = symmetric_uniform(std)
        else:
            kernel_init = nn.initializers.constant(std)
        self.kernel = self.param("kernel", kernel_init, (self.dt_rank, self.d_inner), _F32)
        self.bias = self.param(
            "bias",
            dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor),
            (self.d_inner,),
            _F32,
        )

    def __call__(self, dt: Array, mask: Array) -> Array:
        """``dt: (..., dt_rank)`` -> ``delta = softplus(dt W + b)`` f32 (0 where not mask)."""
        raw = jnp.einsum("...r,rd->...d", dt, self.kernel.astype(dt.dtype))
        return step_size(raw, self.bias, mask)


@register_mixer("mamba", test_config={"d_state": 4, "expand": 2})
class Mamba(SelectiveSSM):
    """Mamba-1 mixer; ``x: (batch, length, d_model)``. Attributes as the official ``Mamba``:

    Attributes:
      d_state: SSM state size N per channel (16).
      d_conv: causal depthwise conv width (4).
      expand: ``d_inner = int(expand * d_model)`` (2).
      dt_rank: rank of the delta projection, ``"auto"`` = ceil(d_model / 16), or a positive int.
      dt_min, dt_max, dt_init_floor, dt_init ("random" | "constant"), dt_scale: the dt init.
      conv_bias: bias in the conv (True). bias: biases in in_proj / out_proj (False).
      impl: ``selective_scan``'s ``"auto" | "associative" | "sequential" | "pallas"``.
    """

    dt_rank: int | str = "auto"
    dt_init: str = "random"
    dt_scale: float = 1.0

    info: ClassVar[MixerInfo] = ssm_info(
        "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
        "O(L E N)",
    )

    def setup(self):
        e, self.scan_impl = self.check_ssm_options("selective_scan")
        if self.dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if self.dt_rank == "auto":
            rank = math.ceil(self.d_model / 16)
        else:
            check_positive_int(self.dt_rank, "dt_rank")
            rank = self.dt_rank
        n = self.d_state
        self.d_inner, self.rank = e, rank
        self.in_proj, self.out_proj = self.make_projections(2 * e, e)
        self.conv_kernel, self.conv_bias_param = self.make_conv(e)
        self.x_proj = torch_linear(rank + 2 * n, e, "x_proj", dtype=self.dtype)
        self.dt_proj = DtProjection(
            e,
            rank,
            self.dt_init,
            self.dt_scale,
            self.dt_min,
            self.dt_max,
            self.dt_init_floor,
            name="dt_proj",
        )
        self.A_log = self.make_a_log(s4d_real_a_init, (e, n))
        self.D = self.make_skip(e)

    # ---- pieces -----------------------------------------------------------------------------
    def _ssm_inputs(self, u: Array, mask: Array) -> tuple[Array, Array, Array]:
        """delta (f32, 0 at pads), B, C from the conv output ``u: (..., E)``."""
        dt, B, C = jnp.split(self.x_proj(u), [self.rank, self.rank + self.d_state], axis=-1)
        return self.dt_proj(dt, mask), B, C

    def mixer_inputs(self, x, mask, segment_ids=None):
        u, z = jnp.split(self.in_proj(x), 2, axis=-1)
        u = conv_stage(
            u, mask, self.conv_kernel, self.conv_bias_param, segment_ids, left=self.d_conv - 1
        )
        delta, B, C = self._ssm_inputs(u, mask)
        return self.scan_inputs(u[..., None], mask, segment_ids, z=z, dt=delta, B=B, C=C)

    def mix_fast(self, inputs):
        y = compiled_selective_scan(
            inputs.values[..., 0].astype(_F32),
            *self.scan_args(inputs),
            D=self.D,
            segment_ids=inputs.aux.get("segment_ids"),
            impl=self.scan_impl,
        )
        return y[..., None]

    def mix_matrix(self, inputs):
        segment_ids = inputs.aux.get("segment_ids")
        return selective_scan_matrix(*self.scan_args(inputs), self.D, inputs.mask, segment_ids)

    def mixer_output(self, inputs, mixed):
        z = inputs.aux["z"]
        return self.output_stage(mixed[..., 0], z)

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        return {
            "conv": conv_init_buffer(batch, self.d_inner, self.d_conv),
            "ssm": jnp.zeros((batch, self.d_inner, self.d_state), _F32),
        }

    def step_fn(self, state, x_t, mask_t):
        u, z = jnp.split(self.in_proj(x_t), 2, axis=-1)
        u = jnp.where(mask_t[:, None], u, jnp.zeros((), u.dtype))  # a pad pushes a zero
        conv, u = conv_step(state["conv"], u, self.conv_kernel, self.conv_bias_param)
        u = jax.nn.silu(u)
        delta, B, C = self._ssm_inputs(u, mask_t)  # delta = 0 at a pad: the state is kept
        ssm, y = selective_scan_step(
            state["ssm"], u.astype(_F32), delta, -jnp.exp(self.A_log), B, C, D=self.D
        )
        return {"conv": conv, "ssm": ssm}, self.output_stage(y, z)
