"""S4 (Gu et al., 2022) and S4D (Gu et al., 2022b): per-channel linear time-invariant SSMs.

Each of the H = d_model channels runs its own single-input SSM of state size N (d_state)

    x'(t) = A x(t) + B u(t),   y(t) = C x(t) + D u(t),

discretised with a per-channel step dt. Being LTI, it is a convolution y = K * u + D u with the
kernel K_l = C Abar^l Bbar; the layer then applies GELU and a position-wise ``Linear(H, 2H)``
followed by GLU (the official ``FFTConv`` + ``S4Block(final_act='glu')``).

The two models share this skeleton and differ only in the kernel:

* ``S4D``: A diagonal (S4D-Lin by default; inv / real / legs), kernel by a Vandermonde product,
  ZOH (default) or bilinear discretisation (``seqzoo.ops.s4.s4d``).
* ``S4``: A = diag(Lambda) - P P^* diagonal plus low rank from the HiPPO-LegS NPLR form, bilinear
  discretisation, kernel by the Cauchy/Woodbury generating function (``seqzoo.ops.s4.dplr``).

Both store one of each conjugate pair (N/2 complex entries); the real system's output is
``2 Re(C x)``.

Matrix view: heads = channels x H, head_dim = 1, values v = u (the input itself, tiled over the
``channels`` copies), and ``M[h, i, j] = K[h, i - j]`` (``j <= i``) plus ``D`` on the diagonal: the
lower-triangular Toeplitz matrix of the kernel, the same for every batch row (an SSM's Toeplitz
matrix is semiseparable of rank N; the structure is reported as ``semiseparable``). The
``*_bidirectional`` variants add ``M[h, i, j] = Kb[h, j - i - 1]`` above the diagonal, as the
official ``bidirectional=True`` (one kernel with 2 x channels channels, split ``(s c)``); they
are not causal, have no ``step``, and report ``quasiseparable``. (``bi:s4d`` is the other option:
two independent layers, the second run on the flipped sequence.)

Recurrent mode (``step``): S4D updates the diagonal complex state ``x = Abar x + Bbar u``; S4
steps the bilinear DPLR recurrence ``x = (2/dt - A)^{-1} ((2/dt + A) x + 2 B u)`` in O(N rank) per
step with the Woodbury identity (the official ``_step_state_linear``), on the half state of N/2
conjugate-pair entries.

Differences from the official code, all deliberate:

* S4's C parameter is the plain C (the official code stores C~ = C (I - Abar^{l_max}) after its
  first forward). Here C~ is recomputed for the call's length L (``s4_dplr_c_tilde``, dense
  O(H N^3 log L)), so the kernel is exactly ``C Abar^l Bbar`` for any L and ``step`` uses C
  directly: no ``l_max``, no kernel doubling, no (I - Abar^L)^{-1} solve for stepping.
* The official code gives the SSM parameters (dt, A, B, P) their own learning rate (0.001) and no
  weight decay through an optimizer hook; that is the optimizer's job here (the parameter names
  are ``log_dt``, ``log_A_real``, ``A_imag``, ``B``, ``P``).
* The official ``init`` option is called ``ssm_init`` (``init`` would shadow flax's
  ``Module.init``).
* ``A_imag`` is not clamped at 1e-4 as the official ``inv_transform`` does (it only moves a zero
  frequency to 1e-4).

Padding: the base class zeroes the input at padded positions; for an LTI convolution that alone
keeps them from influencing valid positions. In ``step`` a padded token is a zero input and the
state still advances, exactly as the convolution sees it, so ``step`` equals ``__call__`` for any
mask (holes included). Leading pads are zeros before the sequence, so left (or right) padding
gives the shorter sequence's outputs; a hole counts as a time step (a zero input), by design.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.complex_params import complex_normal, from_real_pair, to_real_pair
from seqzoo.ops.conv import (
    anticausal_toeplitz,
    bidirectional_conv,
    causal_conv,
    causal_toeplitz,
)
from seqzoo.ops.lean_grad import blockwise
from seqzoo.ops.s4 import (
    DISCRETISATIONS,
    NPLR_MEASURES,
    S4D_KINDS,
    conj_pairs,
    nplr,
    s4_dplr_c_tilde,
    s4_dplr_kernel,
    s4d_init,
    s4d_kernel,
)

Array = jax.Array

ACTIVATIONS = {
    "gelu": lambda a: jax.nn.gelu(a, approximate=False),  # torch nn.GELU()
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "id": lambda a: a,
    "identity": lambda a: a,
}
FINAL_ACTS = ("glu", "id", None)
MIN_A_REAL = 1e-4  # -Re A >= 1e-4 (the official inv_transform clamp)


def log_uniform_init(low: float, high: float):
    """``log dt ~ U[log low, log high]`` (the official ``init_dt``)."""

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, dtype)
        return u * (math.log(high) - math.log(low)) + math.log(low)

    return init


def constant_init(value: np.ndarray):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def complex_normal_init(key, shape, dtype=jnp.float32):
    """A CN(0, 1) complex tensor of ``shape[:-1]`` stored as real pairs (torch.randn(cfloat))."""
    return to_real_pair(complex_normal(key, shape[:-1])).astype(dtype)


def check_ssm_options(d_state: int, dt_min: float, dt_max: float) -> None:
    """Raise ValueError unless d_state is an even int >= 2 and 0 < dt_min <= dt_max."""
    if not isinstance(d_state, int) or d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be an even int >= 2, got {d_state!r}")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


# ---- kernels: parameters, convolution kernel, recurrent step ------------------------------------
class S4DKernel(nn.Module):
    """The diagonal SSM kernel (official ``SSMKernelDiag``): H copies, ``channels`` outputs each.

    Parameters (n = N/2): ``log_dt (H,)`` ~ U[log dt_min, log dt_max]; ``log_A_real (H, n)``
    with Re A = -exp(log_A_real); ``A_imag (H, n)`` = -Im A; ``B (H, n, 2)`` and
    ``C (channels, H, n, 2)`` complex as real pairs; A, B from ``s4d_init(ssm_init)`` (S4D-Lin:
    A_k = -1/2 - i pi k, B = 1), C ~ CN(0, 1).
    """

    H: int
    d_state: int = 64
    channels: int = 1
    ssm_init: str = "lin"
    disc: str = "zoh"
    dt_min: float = 1e-3
    dt_max: float = 0.1

    def setup(self):
        check_ssm_options(self.d_state, self.dt_min, self.dt_max)
        if self.ssm_init not in S4D_KINDS:
            raise ValueError(f"ssm_init must be one of {S4D_KINDS}, got {self.ssm_init!r}")
        if self.disc not in DISCRETISATIONS:
            raise ValueError(f"disc must be one of {DISCRETISATIONS}, got {self.disc!r}")
        n = self.d_state // 2
        a, b = s4d_init(self.ssm_init, self.d_state)
        self.log_dt = self.param("log_dt", log_uniform_init(self.dt_min, self.dt_max), (self.H,))
        self.log_A_real = self.param(
            "log_A_real", constant_init(np.log(np.maximum(-a.real, MIN_A_REAL))), (self.H, n)
        )
        self.A_imag = self.param("A_imag", constant_init(-a.imag), (self.H, n))
        self.B = self.param("B", constant_init(np.stack([b.real, b.imag], -1)), (self.H, n, 2))
        self.C = self.param("C", complex_normal_init, (self.channels, self.H, n, 2))

    def ssm(self) -> tuple[Array, Array, Array, Array]:
        """dt: (H,), A: (H, n), B: (H, n), C: (channels, H, n) (complex64)."""
        A = jax.lax.complex(-jnp.exp(self.log_A_real), -self.A_imag)
        return jnp.exp(self.log_dt), A, from_real_pair(self.B), from_real_pair(self.C)

    def __call__(self, length: int) -> Array:
        """The convolution kernel K: (channels, H, length) float32."""
        dt, A, B, C = self.ssm()
        k = _lean_s4d_kernel(length, self.disc)((dt, A, B, jnp.moveaxis(C, 0, 1)), ())
        return jnp.moveaxis(k, 1, 0)

    def discrete(self) -> tuple[Array, Array, Array]:
        """(Abar, Bbar, C): (H, n), (H, n), (channels, H, n), as ``s4d_kernel``."""
        dt, A, B, C = self.ssm()
        dtA = dt[:, None] * A
        if self.disc == "zoh":
            return jnp.exp(dtA), jnp.expm1(dtA) / A * B, C
        return (1 + dtA / 2) / (1 - dtA / 2), dt[:, None] / (1 - dtA / 2) * B, C

    def init_state(self, batch: int) -> Array:
        return jnp.zeros((batch, self.H, self.d_state // 2), jnp.complex64)

    def step(self, state: Array, u: Array) -> tuple[Array, Array]:
        """state: (b, H, n), u: (b, H) -> (state, y: (b, channels, H)) with y = 2 Re(C x)."""
        abar, bbar, C = self.discrete()
        state = abar * state + bbar * u.astype(jnp.float32)[..., None]
        y = 2 * jnp.einsum("chn,bhn->bch", C, state, precision="highest").real
        return state, y


class S4DPLRKernel(nn.Module):
    """The DPLR SSM kernel of S4 (official ``SSMKernelDPLR``), A = diag(Lambda) - P P^*.

    Parameters (n = N/2): ``log_dt (H,)``; ``log_A_real``, ``A_imag (H, n)`` for Lambda (as
    S4D); ``P (rank, H, n, 2)``, ``B (H, n, 2)``, ``C (channels, H, n, 2)``. Lambda, P, B from
    ``nplr(ssm_init, N, rank)`` (LegS: Re Lambda = -1/2, Im B clipped to [-2, 2]),
    C ~ CN(0, 1). -Re Lambda is clamped at 1e-4 at init and in use.
    """

    H: int
    d_state: int = 64
    channels: int = 1
    ssm_init: str = "legs"
    rank: int = 1
    dt_min: float = 1e-3
    dt_max: float = 0.1

    def setup(self):
        check_ssm_options(self.d_state, self.dt_min, self.dt_max)
        if self.ssm_init not in NPLR_MEASURES:
            raise ValueError(f"ssm_init must be one of {NPLR_MEASURES}, got {self.ssm_init!r}")
        min_rank = 2 if self.ssm_init == "legt" else 1
        if not isinstance(self.rank, int) or self.rank < min_rank:
            raise ValueError(
                f"rank must be an int >= {min_rank} for {self.ssm_init}, got {self.rank!r}"
            )
        n = self.d_state // 2
        lam, p, b, _ = nplr(self.ssm_init, self.d_state, self.rank)
        self.log_dt = self.param("log_dt", log_uniform_init(self.dt_min, self.dt_max), (self.H,))
        self.log_A_real = self.param(
            "log_A_real", constant_init(np.log(np.maximum(-lam.real, MIN_A_REAL))), (self.H, n)
        )
        self.A_imag = self.param("A_imag", constant_init(-lam.imag), (self.H, n))
        self.P = self.param(
            "P", constant_init(np.stack([p.real, p.imag], -1)[:, None]), (self.rank, self.H, n, 2)
        )
        self.B = self.param("B", constant_init(np.stack([b.real, b.imag], -1)), (self.H, n, 2))
        self.C = self.param("C", complex_normal_init, (self.channels, self.H, n, 2))

    def ssm(self) -> tuple[Array, Array, Array, Array, Array]:
        """dt: (H,), Lambda: (H, n), P: (rank, H, n), B: (H, n), C: (channels, H, n)."""
        lam_real = -jnp.maximum(jnp.exp(self.log_A_real), MIN_A_REAL)
        lam = jax.lax.complex(lam_real, -self.A_imag)
        P, B, C = (from_real_pair(a) for a in (self.P, self.B, self.C))
        return jnp.exp(self.log_dt), lam, P, B, C

    def __call__(self, length: int) -> Array:
        """K_l = C Abar^l Bbar (bilinear), (channels, H, length) float32, via C~ for this length."""
        dt, lam, P, B, C = self.ssm()
        rows = (dt, lam, jnp.moveaxis(P, 0, 1), B, jnp.moveaxis(C, 0, 1))
        return jnp.moveaxis(_lean_s4_dplr_kernel(length)(rows, ()), 1, 0)

    def init_state(self, batch: int) -> Array:
        return jnp.zeros((batch, self.H, self.d_state // 2), jnp.complex64)

    def step(self, state: Array, u: Array) -> tuple[Array, Array]:
        """One bilinear step x = (2/dt - A)^{-1} ((2/dt + A) x + 2 B u) on the half state.

        The full state [x, conj x] is formed, the inverse applied by Woodbury with the diagonal
        R = (2/dt - Lambda)^{-1}: (R^{-1} + P P^*)^{-1} = R - R P (I + P^* R P)^{-1} P^* R,
        and the first half kept. state: (b, H, n), u: (b, H) -> (state, y: (b, channels, H)).
        """
        dt, lam, P, B, C = self.ssm()
        n = lam.shape[-1]
        lam_f, p_f, b_f = conj_pairs(lam), conj_pairs(P), conj_pairs(B)  # (H, N) (r, H, N) (H, N)
        q_f = jnp.conj(p_f)
        x = conj_pairs(state)  # (b, H, N)
        two_dt = (2 / dt)[:, None]
        hp = "highest"
        rhs = (two_dt + lam_f) * x - jnp.einsum("rhn,rhm,bhm->bhn", p_f, q_f, x, precision=hp)
        rhs = rhs + 2 * b_f * u.astype(jnp.float32)[..., None]
        r = 1 / (two_dt - lam_f)  # (H, N)
        small = jnp.eye(P.shape[0], dtype=r.dtype) + jnp.einsum(
            "rhn,hn,shn->hrs", q_f, r, p_f, precision=hp
        )  # (H, r, r)
        w = jnp.einsum("rhn,hn,bhn->bhr", q_f, r, rhs, precision=hp)
        z = jnp.linalg.solve(jnp.broadcast_to(small, w.shape[:1] + small.shape), w[..., None])
        x = r * (rhs - jnp.einsum("rhn,bhr->bhn", p_f, z[..., 0], precision=hp))
        state = x[..., :n]
        y = 2 * jnp.einsum("chn,bhn->bch", C, state, precision=hp).real
        return state, y


# The kernels as functions of per-channel rows (H leading), whose backward passes keep only the
# parameters (``lean_grad.blockwise``): autodiff would keep the (H, N/2, L) Vandermonde powers or
# Cauchy terms of every layer until the backward pass.
@functools.cache
def _lean_s4d_kernel(length: int, disc: str):
    def fn(rows, _):
        dt, A, B, C = rows  # C: (H, channels, n)
        return jnp.moveaxis(s4d_kernel(dt, A, B, jnp.moveaxis(C, 1, 0), length, disc=disc), 0, 1)

    def per_channel(rows):  # the complex powers (N/2, L) and the (channels, L) products
        return 2 * rows[1].shape[1] * length * (1 + rows[3].shape[1])

    return blockwise(fn, forward=True, row_elements=per_channel)


@functools.cache
def _lean_s4_dplr_kernel(length: int):
    def fn(rows, _):
        dt, lam, P, B, C = (rows[0], rows[1], jnp.moveaxis(rows[2], 1, 0), rows[3],
                            jnp.moveaxis(rows[4], 1, 0))
        c_tilde = s4_dplr_c_tilde(dt, lam, P, C, length)
        return jnp.moveaxis(s4_dplr_kernel(dt, lam, P, B, c_tilde, length), 0, 1)

    def per_channel(rows):  # the complex Cauchy terms (1 + rank, channels + rank, N, L / 2)
        rank, channels, n = rows[2].shape[1], rows[4].shape[1], rows[1].shape[1]
        return 2 * (1 + rank) * (channels + rank) * 2 * n * (length // 2 + 1)

    return blockwise(fn, forward=True, row_elements=per_channel)


# ---- the layer skeleton -------------------------------------------------------------------------
class LinearParams(nn.Module):
    """The parameters of ``nn.Dense(features, use_bias=True)`` on ``in_features`` inputs (the
    same names, shapes, initialisers and order, hence the same initial values), returned as
    arrays for a pure function: ``kernel (in_features, features)``, ``bias (features,)``."""

    in_features: int
    features: int

    def setup(self):
        shape = (self.in_features, self.features)
        self.kernel = self.param("kernel", nn.linear.default_kernel_init, shape, jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)

    def __call__(self) -> tuple[Array, Array]:
        return self.kernel, self.bias


def _output_stage(y: Array, activation: str, final_act: str | None, dtype, linear) -> Array:
    """(..., channels * H) -> (..., d_model): activation, then ``nn.Dense``'s Linear (``dtype``
    compute) and GLU; ``linear``: ``(kernel, bias)`` or ``()`` without one."""
    y = ACTIVATIONS[activation](y.astype(jnp.float32))
    if final_act is None:
        return y
    kernel, bias = linear
    y, kernel, bias = nn.dtypes.promote_dtype(y, kernel, bias, dtype=dtype)
    y = jax.lax.dot_general(y, kernel, (((y.ndim - 1,), (0,)), ((), ())))
    y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    if final_act == "glu":
        a, g = jnp.split(y, 2, axis=-1)
        y = a * jax.nn.sigmoid(g)
    return y


@functools.cache
def _fast_path(activation: str, final_act: str | None, dtype):
    """``(u, (kf, kb, D, linear)) -> output``: the convolution (bidirectional when ``kb`` is
    not None), D, activation and Linear (+ GLU) of a ``(batch, length, H)`` input, as one
    ``blockwise`` function (its backward pass keeps u and recomputes the rest)."""

    def fn(u, shared):
        kf, kb, D, linear = shared
        if kb is None:
            y = causal_conv(u, kf, D, lean=False)
        else:
            y = bidirectional_conv(u, kf, kb, D, lean=False)
        y = y.reshape(y.shape[:2] + (-1,))  # (b, l, channels * H), (c h)
        return _output_stage(y, activation, final_act, dtype, linear)

    return blockwise(fn)


class _SSMConvMixer(MatrixMixer):
    """Shared S4 / S4D layer: kernel convolution (+ D u), activation, Linear + GLU.

    Attributes:
      d_state: state size N (even; N/2 complex conjugate pairs are stored).
      channels: outputs per input channel (the SSM maps 1 -> channels); the output linear sees
        channels x H features. Official default 1.
      dt_min, dt_max: range of the log-uniform dt init (per channel, shape (H,)).
      activation: applied after the convolution: gelu (default, exact erf), silu, relu, tanh, id.
      final_act: ``glu`` (Linear(channels H, 2 H) then GLU, default), ``id`` (Linear(channels H,
        H)) or None (no output linear; needs channels == 1).
    """

    d_state: int = 64
    channels: int = 1
    dt_min: float = 1e-3
    dt_max: float = 0.1
    activation: str = "gelu"
    final_act: str | None = "glu"

    bidirectional: ClassVar[bool] = False

    def make_kernel(self) -> nn.Module:
        raise NotImplementedError

    def setup(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.final_act not in FINAL_ACTS:
            raise ValueError(f"final_act must be one of {FINAL_ACTS}, got {self.final_act!r}")
        check_positive_int(self.channels, "channels")
        if self.final_act is None and self.channels != 1:
            raise ValueError("final_act=None (no output linear) needs channels == 1")
        self.kernel = self.make_kernel()
        self.D = self.param(
            "D", nn.initializers.normal(1.0), (self.channels, self.d_model), jnp.float32
        )
        if self.final_act is not None:
            width = 2 * self.d_model if self.final_act == "glu" else self.d_model
            self.out_proj = LinearParams(self.channels * self.d_model, width, name="out_proj")

    # ---- the fast path ----------------------------------------------------------------------
    def __call__(self, x, mask=None, segment_ids=None):
        """The fast path as one ``lean_grad.blockwise`` function of the input: convolution, D,
        activation, Linear (+ GLU); its backward pass keeps only the input and recomputes the
        rest block by block of rows (``mix_fast`` and ``mixer_output`` give the same values:
        the activations are 0 at 0, so masking before or after them is the same)."""
        inputs, x = self._inputs(x, mask, segment_ids)
        kf, kb = self._split(inputs.aux["kernel"])
        linear = () if self.final_act is None else self.out_proj()
        fast = _fast_path(self.activation, self.final_act, self.dtype)
        y = fast(inputs.values[:, :, : self.d_model, 0], (kf, kb, self.D, linear))
        return zero_padded(y, inputs.mask).astype(x.dtype)

    @property
    def kernel_channels(self) -> int:
        return self.channels * (2 if self.bidirectional else 1)

    # ---- pieces -----------------------------------------------------------------------------
    def mixer_inputs(self, x, mask):
        u = x.astype(jnp.float32)  # zero at padded positions (base class)
        values = jnp.tile(u, (1, 1, self.channels))[..., None]  # (b, l, channels * H, 1)
        return MixerInputs(values=values, mask=mask, aux={"kernel": self.kernel(x.shape[1])})

    def _split(self, k: Array) -> tuple[Array, Array | None]:
        if not self.bidirectional:
            return k, None
        return k[: self.channels], k[self.channels :]

    def mix_fast(self, inputs):
        u = inputs.values[:, :, : self.d_model, 0]
        kf, kb = self._split(inputs.aux["kernel"])
        if kb is None:
            y = causal_conv(u, kf, self.D)
        else:
            y = bidirectional_conv(u, kf, kb, self.D)
        return y.reshape(y.shape[:2] + (-1, 1))  # (b, l, channels * H, 1), heads as (c h)

    def mix_matrix(self, inputs):
        length = inputs.values.shape[1]
        kf, kb = self._split(inputs.aux["kernel"])
        m = causal_toeplitz(kf, length)  # (c, H, L, L)
        if kb is not None:
            m = m + anticausal_toeplitz(kb, length)
        m = m + self.D[..., None, None] * jnp.eye(length, dtype=m.dtype)
        m = m.reshape((-1, length, length))
        cols = inputs.mask[:, None, None, :]  # padded columns carry no weight
        return jnp.where(cols, m[None], 0.0)

    def mixer_output(self, inputs, mixed):
        return self._output(mixed[..., 0])

    def _output(self, y: Array) -> Array:
        """(..., channels * H) -> (..., d_model): activation, then Linear (+ GLU)."""
        linear = () if self.final_act is None else self.out_proj()
        return _output_stage(y, self.activation, self.final_act, self.dtype, linear)

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        if not self.info.causal:
            return super().init_state(batch)
        return self.kernel.init_state(batch)

    def step_fn(self, state, x_t, mask_t):
        # A padded token is a zero input (the base zeroed x_t) and the state still advances,
        # as in the convolution.
        u = x_t.astype(jnp.float32)
        state, y = self.kernel.step(state, u)  # (b, channels, H)
        y = y + self.D * u[:, None, :]
        return state, self._output(y.reshape(y.shape[0], -1))


@register_mixer("s4d", test_config={"d_state": 4})
class S4D(_SSMConvMixer):
    """S4D (Gu et al., 2022b): the diagonal SSM layer.

    Attributes (besides the shared ones, see ``_SSMConvMixer``):
      ssm_init: A init, ``lin`` (S4D-Lin, default), ``inv``, ``real`` or ``legs``.
      disc: ``zoh`` (default, as the official S4D) or ``bilinear``.
    """

    ssm_init: str = "lin"
    disc: str = "zoh"

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=False,
        structure="semiseparable",
        cost="O(B H L log L + H N L)",
        paper="Gu et al. 2022, On the Parameterization and Initialization of Diagonal SSMs (S4D)",
    )

    def make_kernel(self):
        return S4DKernel(
            H=self.d_model,
            d_state=self.d_state,
            channels=self.kernel_channels,
            ssm_init=self.ssm_init,
            disc=self.disc,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            name="kernel",
        )


@register_mixer("s4", test_config={"d_state": 4})
class S4(_SSMConvMixer):
    """S4 (Gu et al., 2022): the DPLR (HiPPO-LegS) SSM layer, bilinear discretisation.

    Attributes (besides the shared ones, see ``_SSMConvMixer``):
      ssm_init: NPLR measure, ``legs`` (default), ``legt`` (rank >= 2) or ``fourier``.
      rank: rank of the low-rank term P (default 1).
    """

    ssm_init: str = "legs"
    rank: int = 1

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=False,
        structure="semiseparable",
        cost="O(B H L log L + H N L + H N^3 log L)",
        paper="Gu et al. 2022, Efficiently Modeling Long Sequences with Structured State Spaces",
    )

    def make_kernel(self):
        return S4DPLRKernel(
            H=self.d_model,
            d_state=self.d_state,
            channels=self.kernel_channels,
            ssm_init=self.ssm_init,
            rank=self.rank,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            name="kernel",
        )


@register_mixer("s4d_bidirectional", test_config={"d_state": 4})
class S4DBidirectional(S4D):
    """S4D with the official ``bidirectional=True``: one kernel with 2 x channels outputs, the
    first half causal, the second anticausal (its tap 0 weights the next position). No step."""

    bidirectional: ClassVar[bool] = True
    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="quasiseparable",
        cost="O(B H L log L + H N L)",
        paper="Gu et al. 2022, S4D, bidirectional kernel",
    )


@register_mixer("s4_bidirectional", test_config={"d_state": 4})
class S4Bidirectional(S4):
    """S4 with the official ``bidirectional=True`` (see ``S4DBidirectional``). No step."""

    bidirectional: ClassVar[bool] = True
    info: ClassVar[MixerInfo] = MixerInfo(
        causal=False,
        data_dependent=False,
        structure="quasiseparable",
        cost="O(B H L log L + H N L + H N^3 log L)",
        paper="Gu et al. 2022, S4, bidirectional kernel",
    )
