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

import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import conv_init_buffer, conv_step, depthwise_conv
from seqzoo.ops.scan import IMPLS as SCAN_IMPLS
from seqzoo.ops.scan import selective_scan, selective_scan_step
from seqzoo.ops.ssd import ssd_matrix

Array = jax.Array
_F32 = jnp.float32

# The conv stage and the scans run as one compiled function each, so that an eager (un-jitted)
# call of the layer dispatches a few programs instead of hundreds of small ops; under an outer
# ``jit`` / ``grad`` / ``vmap`` they are simply inlined.


@functools.partial(jax.jit, static_argnames="left")
def conv_stage(
    x: Array, mask: Array, w: Array, b: Array | None, segment_ids: Array | None, *, left: int
) -> Array:
    """``silu(conv(x))`` with the conv input and the result zero at padded positions.

    x: (batch, length, C); mask: (batch, length); w: (K, C); left: K - 1 (causal) or K // 2.
    """
    y = depthwise_conv(zero_padded(x, mask), w, b, left=left, segment_ids=segment_ids)
    return zero_padded(jax.nn.silu(y), mask)


compiled_selective_scan = jax.jit(
    selective_scan, static_argnames=("delta_softplus", "return_final_state", "impl")
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

    m = jax.vmap(one_state, in_axes=(1, 3, 3))(A, B, C).sum(0).astype(_F32)  # (b, E, l, l)
    diag = jnp.where(mask[:, None, :], D[None, :, None], 0.0)  # (b, E, l)
    return m + diag[..., None] * jnp.eye(m.shape[-1], dtype=_F32)


# ---- inits shared by Mamba, Mamba-2 and Hydra -------------------------------------------------
def symmetric_uniform(bound: float):
    """``U(-bound, bound)``."""

    def init(key, shape, dtype=_F32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(
    features: int, fan_in: int, name: str, *, use_bias: bool = False, dtype: Any = None
) -> nn.Dense:
    """A ``Dense`` with torch's ``nn.Linear`` init: weight and bias ``U(+-1/sqrt(fan_in))``."""
    bound = fan_in**-0.5
    return dense(
        features,
        name,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=symmetric_uniform(bound),
        bias_init=symmetric_uniform(bound),
    )


def dt_bias_init(dt_min: float, dt_max: float, dt_init_floor: float):
    """Inverse softplus of ``dt = exp(U(log dt_min, log dt_max))`` floored at ``dt_init_floor``,
    so that ``softplus(bias)`` starts in ``[dt_min, dt_max]`` (the official dt init)."""

    def init(key, shape, dtype=_F32):
        lo, hi = math.log(dt_min), math.log(dt_max)
        dt = jnp.exp(jax.random.uniform(key, shape, _F32) * (hi - lo) + lo)
        dt = jnp.maximum(dt, dt_init_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def check_dt_range(dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(
            f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}"
        )
    if dt_init_floor < 0:
        raise ValueError(f"dt_init_floor must be >= 0, got {dt_init_floor}")


def inner_width(expand: Any, d_model: int) -> int:
    """``d_inner = int(expand * d_model)`` (the official rounding), checked positive."""
    if isinstance(expand, bool) or not isinstance(expand, int | float) or expand <= 0:
        raise ValueError(f"expand must be a positive number, got {expand!r}")
    d_inner = int(expand * d_model)
    if d_inner < 1:
        raise ValueError(f"expand * d_model must be >= 1, got expand={expand}")
    return d_inner


def step_size(dt: Array, bias: Array, mask: Array) -> Array:
    """``softplus(dt + bias)`` in f32, 0 where ``mask`` (dt's leading dims) is False."""
    delta = jax.nn.softplus(dt.astype(_F32) + bias.astype(_F32))
    return jnp.where(mask[..., None], delta, 0.0)


def conv_params(
    module: nn.Module, d_conv: int, channels: int, conv_bias: bool, conv_init: float | None = None
) -> tuple[Array, Array | None]:
    """The depthwise conv parameters ``conv_kernel (d_conv, channels)`` and ``conv_bias``, both
    torch's ``Conv1d`` default ``U(+-1/sqrt(d_conv))`` (``conv_init``: the kernel's bound)."""
    bound = d_conv**-0.5
    kernel_bound = bound if conv_init is None else conv_init
    kernel = module.param("conv_kernel", symmetric_uniform(kernel_bound), (d_conv, channels), _F32)
    bias = (
        module.param("conv_bias", symmetric_uniform(bound), (channels,), _F32)
        if conv_bias
        else None
    )
    return kernel, bias


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
class Mamba(MatrixMixer):
    """Mamba-1 mixer; ``x: (batch, length, d_model)``. Attributes as the official ``Mamba``:

    Attributes:
      d_state: SSM state size N per channel (16).
      d_conv: causal depthwise conv width (4).
      expand: ``d_inner = int(expand * d_model)`` (2).
      dt_rank: rank of the delta projection, ``"auto"`` = ceil(d_model / 16), or a positive int.
      dt_min, dt_max, dt_init_floor, dt_init ("random" | "constant"), dt_scale: the dt init.
      conv_bias: bias in the conv (True). bias: biases in in_proj / out_proj (False).
      impl: ``selective_scan``'s ``"auto" | "associative" | "sequential"``.
    """

    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    impl: str = "auto"

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="semiseparable",
        cost="O(L E N)",
        paper="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
        segments=True,
    )

    def setup(self):
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_dt_range(self.dt_min, self.dt_max, self.dt_init_floor)
        if self.dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if self.impl not in SCAN_IMPLS:
            raise ValueError(f"impl must be one of {SCAN_IMPLS}, got {self.impl!r}")
        if self.dt_rank == "auto":
            rank = math.ceil(self.d_model / 16)
        else:
            check_positive_int(self.dt_rank, "dt_rank")
            rank = self.dt_rank
        e, n = inner_width(self.expand, self.d_model), self.d_state
        self.d_inner, self.rank = e, rank
        self.in_proj = torch_linear(
            2 * e, self.d_model, "in_proj", use_bias=self.bias, dtype=self.dtype
        )
        self.conv_kernel, self.conv_bias_param = conv_params(self, self.d_conv, e, self.conv_bias)
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
        a_init = jnp.log(jnp.arange(1, n + 1, dtype=_F32))
        self.A_log = self.param("A_log", lambda k, s: jnp.broadcast_to(a_init, s), (e, n))
        self.D = self.param("D", nn.initializers.ones, (e,), _F32)
        self.out_proj = torch_linear(
            self.d_model, e, "out_proj", use_bias=self.bias, dtype=self.dtype
        )

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
        aux = {"z": z, "delta": delta, "B": B, "C": C}
        if segment_ids is not None:
            aux["segment_ids"] = segment_ids
        return MixerInputs(values=u[..., None], mask=mask, aux=aux)

    def mix_fast(self, inputs):
        a = inputs.aux
        y = compiled_selective_scan(
            inputs.values[..., 0].astype(_F32),
            a["delta"],
            -jnp.exp(self.A_log),
            a["B"],
            a["C"],
            D=self.D,
            segment_ids=a.get("segment_ids"),
            impl=self.impl,
        )
        return y[..., None]

    def mix_matrix(self, inputs):
        a = inputs.aux
        return selective_scan_matrix(
            a["delta"],
            -jnp.exp(self.A_log),
            a["B"],
            a["C"],
            self.D,
            inputs.mask,
            a.get("segment_ids"),
        )

    def mixer_output(self, inputs, mixed):
        z = inputs.aux["z"]
        return self._output(mixed[..., 0], z)

    def _output(self, y: Array, z: Array) -> Array:
        y = y.astype(_F32) * jax.nn.silu(z.astype(_F32))
        return self.out_proj(y.astype(z.dtype))

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
        return {"conv": conv, "ssm": ssm}, self._output(y, z)
