"""The parts Mamba, Mamba-2 and Hydra (and DeltaNet's conv and dt) share, built in one place.

Each of those layers is

    parts  = split(u W_in)                        in_proj: (d_model, width), torch's init
    conv   = silu(conv(xBC))                      depthwise, width d_conv, zero at padded positions
    dt     = softplus(dt + dt_bias)               f32, 0 at padded positions (a no-op for the state)
    A      = -exp(A_log),  D                      per channel (Mamba) or per head (Mamba-2, Hydra)
    out    = gate(y, z) W_out                     y * silu(z), or a gated RMSNorm (Mamba-2, Hydra)

``SelectiveSSM`` holds the options they share and builds those parameters under the official
names (``in_proj``, ``conv_kernel``, ``conv_bias``, ``dt_bias``, ``A_log``, ``D``, ``out_proj``),
so that checkpoints of the official layers map one to one. Inits are the official ones: torch's
default ``U(+-1/sqrt(fan_in))`` for the projections and the conv, ``dt_bias`` the inverse
softplus of a dt drawn log-uniformly in ``[dt_min, dt_max]`` and floored at ``dt_init_floor``,
``D = 1``. Dense kernels are stored ``(in, out)`` (torch's ``weight.T``), the conv kernel
``(d_conv, channels)`` (torch's ``weight[:, 0, :].T``).

Dtypes (as ``mamba_ssm``): the projections and the conv output run in the compute dtype
(``dtype``); Mamba-2's and Hydra's chunked ops take x, B, C in it (bf16 in a bf16 model, so
that ``impl="auto"`` can take the bf16 kernels) and dt, A, D in f32, and accumulate in f32.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.common import dense, merge_heads, resolve_head_dim
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import depthwise_conv
from seqzoo.ops.delta_rule import delta_rule
from seqzoo.ops.dispatch import canonical
from seqzoo.ops.lean_grad import blockwise

Array = jax.Array
_F32 = jnp.float32


# The conv stage runs as one compiled function, so that an eager (un-jitted) call of a layer
# dispatches a few programs instead of hundreds of small ops; under an outer ``jit`` / ``grad`` /
# ``vmap`` it is simply inlined (the layers compile their ops the same way: ``compiled``).
@functools.partial(jax.jit, static_argnames="left")
def conv_stage(
    x: Array, mask: Array, w: Array, b: Array | None, segment_ids: Array | None, *, left: int
) -> Array:
    """``silu(conv(x))`` with the conv input and the result zero at padded positions.

    x: (batch, length, C); mask: (batch, length); w: (K, C); left: K - 1 (causal) or K // 2.
    Its backward pass keeps x and recomputes the rest (``lean_grad.blockwise``): autodiff would
    keep each tap's shifted copy of x and silu's terms, about eight copies of x.
    """
    return _lean_conv_stage(left, w.shape[0])((x, mask, segment_ids), (w, b))


@functools.cache
def _lean_conv_stage(left: int, taps: int):
    def fn(rows, shared):
        (x, mask, segment_ids), (w, b) = rows, shared
        y = depthwise_conv(zero_padded(x, mask), w, b, left=left, segment_ids=segment_ids)
        return zero_padded(jax.nn.silu(y), mask)

    def taps_per_row(rows):  # the backward pass's copies of x, a few per tap
        return rows[0].shape[1] * rows[0].shape[2] * taps

    # blocks small enough that those copies take at most a quarter of x's size
    return blockwise(fn, row_elements=taps_per_row,
                     block_elements=lambda rows: rows[0].size // 4)


def compiled(op, *static: str):
    """``op`` under ``jax.jit`` with its keyword options ``static`` (see ``conv_stage``)."""
    return jax.jit(op, static_argnames=static)


compiled_delta_rule = compiled(delta_rule, "return_final_state", "chunk_size", "impl")


def _whole(value: float, name: str) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not a positive whole number."""
    if value <= 0 or not math.isclose(value, round(value), rel_tol=1e-6):
        raise ValueError(f"{name} must be a positive whole number, got {value}")
    return round(value)


def delta_head_dims(d_model: int, num_heads: int, head_dim: int | None, expand_k: float,
                    expand_v: float) -> tuple[int, int]:
    """fla's DeltaNet head widths ``(dk, dv)``: ``dk = head_dim`` or ``expand_k d_model / H``,
    ``dv = dk expand_v``; a ValueError naming the option where one is not a whole number."""
    if head_dim is None:
        dk = _whole(expand_k * d_model / num_heads, "expand_k * d_model / num_heads")
    else:
        check_positive_int(head_dim, "head_dim")
        dk = head_dim
    return dk, _whole(dk * expand_v, "head_dim * expand_v")


def plus_diagonal(m: Array, D: Array, mask: Array) -> Array:
    """``m + diag(D)`` at valid positions: m: (batch, C, length, length), D: (C,), mask:
    (batch, length); float32."""
    diag = jnp.where(mask[:, None, :], D[None, :, None], 0.0)  # (b, C, l)
    return m.astype(_F32) + diag[..., None] * jnp.eye(m.shape[-1], dtype=_F32)


# ---- inits --------------------------------------------------------------------------------------
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


def log_uniform_a_init(lo: float, hi: float):
    """``log U(lo, hi)``: the official Mamba-2 ``A_log`` init (``A = -exp(A_log)``)."""

    def init(key, shape, dtype=_F32):
        return jnp.log(jax.random.uniform(key, shape, _F32, lo, hi)).astype(dtype)

    return init


def s4d_real_a_init(key, shape, dtype=_F32):
    """``A_log[..., n] = log(n + 1)`` (S4D-real, ``A = -(1..N)``): the official Mamba init."""
    del key  # deterministic
    return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=_F32)), shape).astype(dtype)


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


# ---- checks and sizes ---------------------------------------------------------------------------
def check_dt_range(dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(
            f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}"
        )
    if dt_init_floor < 0:
        raise ValueError(f"dt_init_floor must be >= 0, got {dt_init_floor}")


def check_power_of_two(value, name: str) -> None:
    check_positive_int(value, name)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")


def inner_width(expand: Any, d_model: int) -> int:
    """``d_inner = int(expand * d_model)`` (the official rounding), checked positive."""
    if isinstance(expand, bool) or not isinstance(expand, int | float) or expand <= 0:
        raise ValueError(f"expand must be a positive number, got {expand!r}")
    d_inner = int(expand * d_model)
    if d_inner < 1:
        raise ValueError(f"expand * d_model must be >= 1, got expand={expand}")
    return d_inner


def check_heads(d_inner: int, headdim: int | None, ngroups: int) -> tuple[int, int]:
    """(nheads, P): P = ``headdim``, or 64 (the official default) when None, or ``d_inner``
    when that is narrower; ValueErrors name headdim and ngroups."""
    size = resolve_head_dim(d_inner, headdim, "headdim", 64, "d_inner = expand * d_model")
    check_positive_int(ngroups, "ngroups")
    nheads = d_inner // size
    if nheads % ngroups:
        raise ValueError(f"ngroups={ngroups} must divide nheads = d_inner / headdim = {nheads}")
    return nheads, size


def step_size(dt: Array, bias: Array, mask: Array) -> Array:
    """``softplus(dt + bias)`` in f32, 0 where ``mask`` (dt's leading dims) is False."""
    delta = jax.nn.softplus(dt.astype(_F32) + bias.astype(_F32))
    return jnp.where(mask[..., None], delta, 0.0)


def ssm_info(paper: str, cost: str, *, causal: bool = True,
             structure: str = "semiseparable") -> MixerInfo:
    """What Mamba, Mamba-2 and Hydra share: data dependent, ``segment_ids`` and sequence
    parallel (each scan op has a sequence-parallel form)."""
    return MixerInfo(causal=causal, data_dependent=True, structure=structure, cost=cost,
                     paper=paper, segments=True, sequence_parallel=True)


def silu_gate(y: Array, z: Array) -> Array:
    """``y * silu(z)`` in float32 (the output gate without a norm); its backward pass keeps y and
    z (``lean_grad.blockwise``; autodiff would keep silu's terms and the product too)."""
    return _lean_silu_gate((y, z), ())


def _silu_gate(rows, _):
    y, z = rows
    return y.astype(_F32) * jax.nn.silu(z.astype(_F32))


_lean_silu_gate = blockwise(_silu_gate)


# ---- the layers' shared options and parameters --------------------------------------------------
class DeltaRuleMixer(MatrixMixer):
    """The options DeltaNet, Gated DeltaNet and MoM share (fla's names and defaults), their
    checks, head widths (``delta_head_dims``) and Gated DeltaNet's decay parameters.

    Attributes:
      num_heads: heads ``H``. head_dim: key width ``dk`` per head (None: ``expand_k d_model /
        H``). expand_k, expand_v: key width over ``d_model``, value width over ``dk``.
      conv_size: short conv width (4). conv_bias: (False). norm_eps: the output RMSNorm's (1e-5).
      A_init_range: ``A_log = log U(A_init_range)`` ((0, 16)). dt_min, dt_max, dt_init_floor:
        the ``dt_bias`` init (as Mamba-2's). chunk_size / impl: ``seqzoo.ops.delta_rule``'s.
    """

    num_heads: int = 4
    head_dim: int | None = None
    expand_k: float = 1.0
    expand_v: float = 1.0
    conv_size: int = 4
    conv_bias: bool = False
    norm_eps: float = 1e-5
    A_init_range: tuple[float, float] = (0.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    chunk_size: int = 64
    impl: str = "auto"

    def delta_setup(self, *, gated: bool) -> None:
        """Check the options (the decay's inits where ``gated``); set ``rule_impl``, ``dk``,
        ``dv``."""
        for name in ("num_heads", "conv_size", "chunk_size"):
            check_positive_int(getattr(self, name), name)
        self.rule_impl = canonical("delta_rule", self.impl)
        if gated:
            check_dt_range(self.dt_min, self.dt_max, self.dt_init_floor)
            lo, hi = self.A_init_range
            if not 0 <= lo <= hi:
                raise ValueError(f"A_init_range must satisfy 0 <= lo <= hi, got {(lo, hi)}")
        self.dk, self.dv = delta_head_dims(self.d_model, self.num_heads, self.head_dim,
                                           self.expand_k, self.expand_v)

    def decay_params(self) -> tuple[Array, Array]:
        """Gated DeltaNet's per-head ``(A_log, dt_bias)``, both ``(H,)`` float32."""
        h = self.num_heads
        a_log = self.param("A_log", log_uniform_a_init(*self.A_init_range), (h,), _F32)
        dt_bias = self.param(
            "dt_bias", dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor), (h,), _F32
        )
        return a_log, dt_bias

    def _output(self, o: Array, gate: Array | None) -> Array:
        """``o: (..., H, dv)`` -> ``(..., d_model)``: the per-head (gated) RMSNorm ``o_norm``,
        then ``o_proj`` (both built by the subclass's ``setup``)."""
        y = self.o_norm(o, gate)
        return self.o_proj(merge_heads(y).astype(o.dtype))


class SelectiveSSM(MatrixMixer):
    """The options Mamba, Mamba-2 and Hydra share, and the parameters built from them.

    Attributes:
      d_state: the SSM state size N (each layer sets its official default).
      d_conv: the depthwise conv width.
      expand: ``d_inner = int(expand * d_model)`` (2).
      dt_min, dt_max, dt_init_floor: the dt init (``dt_bias_init``).
      conv_bias: a bias in the conv (True). bias: biases in in_proj / out_proj (False).
      impl: the scan op's ``impl`` (``seqzoo.ops.dispatch``'s vocabulary; ``"auto"``).
    """

    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    impl: str = "auto"

    def check_ssm_options(self, op: str) -> tuple[int, str]:
        """Checks the shared options; returns ``(d_inner, impl)`` with ``impl`` in ``op``'s
        canonical vocabulary (a renamed one warns)."""
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_dt_range(self.dt_min, self.dt_max, self.dt_init_floor)
        return inner_width(self.expand, self.d_model), canonical(op, self.impl)

    def make_projections(self, in_width: int, d_inner: int) -> tuple[nn.Dense, nn.Dense]:
        """``in_proj (d_model, in_width)`` and ``out_proj (d_inner, d_model)``, torch's init."""
        in_proj = torch_linear(
            in_width, self.d_model, "in_proj", use_bias=self.bias, dtype=self.dtype
        )
        out_proj = torch_linear(
            self.d_model, d_inner, "out_proj", use_bias=self.bias, dtype=self.dtype
        )
        return in_proj, out_proj

    def make_conv(
        self, channels: int, conv_init: float | None = None
    ) -> tuple[Array, Array | None]:
        """``conv_kernel (d_conv, channels)`` and ``conv_bias`` (see ``conv_params``)."""
        return conv_params(self, self.d_conv, channels, self.conv_bias, conv_init)

    def make_dt_bias(self, features: int) -> Array:
        """``dt_bias (features,)``, the inverse softplus of the official dt init."""
        init = dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor)
        return self.param("dt_bias", init, (features,), _F32)

    def make_a_log(self, init, shape: tuple[int, ...]) -> Array:
        """``A_log`` (``A = -exp(A_log)``) of ``shape``: (d_inner, N) for Mamba, (heads,) for
        Mamba-2 and Hydra, each with its official ``init``."""
        return self.param("A_log", init, shape, _F32)

    def make_skip(self, features: int) -> Array:
        """``D (features,)``, initialised to 1."""
        return self.param("D", nn.initializers.ones, (features,), _F32)

    def output_stage(self, y: Array, z: Array, norm: nn.Module | None = None) -> Array:
        """``out_proj(gate(y, z))``: ``y * silu(z)``, or the gated RMSNorm ``norm(y, z)``;
        y, z: (..., d_inner) -> (..., d_model) in z's dtype."""
        gated = silu_gate(y, z) if norm is None else norm(y, z)
        return self.out_proj(gated.astype(z.dtype))

    def scan_inputs(self, values: Array, mask: Array, segment_ids: Array | None, **aux: Array):
        """``MixerInputs`` of the scan: ``values`` and ``aux`` (the gate ``z``, step sizes
        ``dt``, ``B``, ``C``), with ``segment_ids`` where given."""
        if segment_ids is not None:
            aux["segment_ids"] = segment_ids
        return MixerInputs(values=values, mask=mask, aux=aux)

    def scan_args(self, inputs: MixerInputs) -> tuple[Array, Array, Array, Array]:
        """``(dt, A, B, C)`` of the scan, ``A = -exp(A_log)``."""
        a = inputs.aux
        return a["dt"], -jnp.exp(self.A_log), a["B"], a["C"]

