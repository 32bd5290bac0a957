"""The block shared by Hydra's matrix mixers (Hwang et al., 2024, Sec. 5 and Table 1).

Every structure (dense, low rank, Toeplitz, Vandermonde, Cauchy; data independent or dependent)
sits in the same block, as the official ``hydra/modules/matrix_mixer.py``:

    z, u, f = split(x W_in)                       z, u: (b, L, E), E = expand * d_model
    u, f = conv(u), conv(f)                        depthwise, width d_conv, "same" padding, bias
    v = silu(u)                                    v: (b, L, heads, head_dim), E = heads * head_dim
    y = scale * M v + v                            M: (b, heads, L, L) built from f or parameters
    out = (RMSNorm(y) * silu(z)) W_out             (gated RMSNorm, norm before gate)

``f`` holds the features a data-dependent ``M`` is built from (``f`` is empty for a
data-independent ``M``, built from parameters); some structures pass ``f`` through the SiLU too.
``scale`` is the official fixed normaliser, e.g. ``1 / sqrt(max_length * qk_dim)``, and ``+ v``
the official residual inside the mixer (kept out of ``M`` so that ``M`` keeps its structure).

A structure implements ``feature_width``, ``setup_structure`` (its parameters), ``structure``
(features -> ``aux``), ``scale``, and ``structure_matrix`` / ``structure_matvec`` (``M`` and
``M v`` without the scale); ``RowwiseMixer`` derives both from a function giving rows of ``M``.

Padding: x is zero at padded positions (so is ``x W_in``, which has no bias, hence the convolution
reads zeros there), ``v`` is zero there, each structure removes padded positions from its
data-dependent features, and ``M``'s padded rows and columns are zero. Right padding gives exactly
the shorter sequence's outputs. Positions count padded tokens, by design: a hole (a pad between
valid tokens) is a zero the convolution reads, not a removed token, and where ``M`` depends on
absolute positions (``dense``, ``low_rank_di``, ``cauchy``, ``vandermonde``, ``vandermonde_dd``,
``toeplitz_dd``: each module says how) left padding shifts them and changes the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInputs, zero_padded
from seqzoo.layers.common import RMSNorm, dense, merge_heads, resolve_head_dim, split_heads
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import centered_depthwise_conv
from seqzoo.ops.structured import blocked_matvec

Array = jax.Array
PAPER = "Hwang et al. 2024, Hydra: Bidirectional SSMs through generalized matrix mixers"


# PyTorch's ``xavier_normal_`` on the official >= 3-d parameters: fan_in along axis 1, fan_out
# along axis 0, the other axes a receptive field.
XAVIER_NORMAL = jax.nn.initializers.variance_scaling(
    1.0, "fan_avg", "normal", in_axis=1, out_axis=0
)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def position_major(param: Array, length: int) -> Array:
    """A data-independent ``(max_length, heads, r)`` parameter as features ``(1, heads, L, r)``."""
    return jnp.moveaxis(param[:length], 0, 1)[None]


class StructuredMixer(MatrixMixer):
    """Hydra's matrix-mixer block around a structured ``M``; ``x: (batch, length, d_model)``.

    Attributes:
      expand: ``E = expand * d_model`` inner channels.
      head_dim: channels per head (``heads = E / head_dim``); official ``headdim`` (None: its
        64, or ``E`` when narrower, one head).
      qk_dim: rank ``r`` of the per-position features (low rank, Cauchy, Vandermonde, attention).
      d_conv: width of the depthwise "same" convolution (odd).
      max_length: the official ``max_seq_len``: size of the data-independent parameters (a longer
        input raises) and, for every structure, the length in the fixed normaliser ``scale``.
    """

    expand: int = 2
    head_dim: int | None = None
    qk_dim: int = 16
    d_conv: int = 7
    max_length: int = 128

    activate_features: ClassVar[bool] = False

    def setup(self):
        for name in ("expand", "qk_dim", "d_conv", "max_length"):
            check_positive_int(getattr(self, name), name)
        if self.d_conv % 2 != 1:
            raise ValueError(f"d_conv must be odd for a 'same' convolution, got {self.d_conv}")
        self.inner = self.expand * self.d_model
        self.heads = self.inner // resolve_head_dim(
            self.inner, self.head_dim, "head_dim", 64, "expand * d_model"
        )
        channels = self.inner + self.feature_width()
        bound = self.d_conv**-0.5  # PyTorch's Conv1d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        self.in_proj = dense(self.inner + channels, "in_proj", dtype=self.dtype)
        self.conv_kernel = self.param(
            "conv_kernel", _uniform(bound), (self.d_conv, channels), jnp.float32
        )
        self.conv_bias = self.param("conv_bias", _uniform(bound), (channels,), jnp.float32)
        self.norm = RMSNorm(eps=1e-5, norm_before_gate=True)
        self.out_proj = dense(self.d_model, "out_proj", dtype=self.dtype)
        self.setup_structure()

    # ---- what a structure implements --------------------------------------------------------
    @property
    def data_dependent(self) -> bool:
        return self.info.data_dependent

    def feature_width(self) -> int:
        """Channels of the data-dependent features ``f``: by default ``q, k`` of ``qk_dim`` per
        head; 0 for a data-independent ``M``."""
        return 2 * self.heads * self.qk_dim if self.data_dependent else 0

    def setup_structure(self) -> None:
        """Create the structure's own parameters."""

    def structure(self, features: Array, mask: Array) -> dict[str, Array]:
        """``aux`` arrays defining ``M`` from ``features: (b, L, feature_width)`` float32."""
        raise NotImplementedError

    def scale(self) -> float:
        """The fixed normaliser multiplying ``M``."""
        raise NotImplementedError

    def structure_matrix(self, inputs: MixerInputs) -> Array:
        """``M / scale: (batch | 1, heads, L, L)``."""
        raise NotImplementedError

    def structure_matvec(self, inputs: MixerInputs) -> Array:
        """``(M / scale) v: (batch, L, heads, head_dim)`` by the structure's fast algorithm."""
        raise NotImplementedError

    # ---- the contract pieces ----------------------------------------------------------------
    def mixer_inputs(self, x, mask):
        z, u = jnp.split(self.in_proj(x), [self.inner], axis=-1)
        u = centered_depthwise_conv(u.astype(jnp.float32), self.conv_kernel, self.conv_bias)
        u, features = jnp.split(u, [self.inner], axis=-1)
        if self.activate_features:
            features = jax.nn.silu(features)
        v = zero_padded(split_heads(jax.nn.silu(u), self.heads), mask)
        return MixerInputs(values=v, mask=mask, aux={"z": z, **self.structure(features, mask)})

    def mix_fast(self, inputs):
        return self.scale() * self.structure_matvec(inputs)

    def mix_matrix(self, inputs):
        keep = inputs.mask[:, None, :, None] & inputs.mask[:, None, None, :]
        return jnp.where(keep, self.scale() * self.structure_matrix(inputs), 0.0)

    def mixer_output(self, inputs, mixed):
        y = merge_heads(mixed + inputs.values)
        return self.out_proj(self.norm(y, inputs.aux["z"]))

    # ---- per-position features q, k, shared by several structures ---------------------------
    def setup_qk(self, init: Callable) -> None:
        """Data independent: learned ``q, k`` parameters ``(max_length, heads, qk_dim)``."""
        shape = (self.max_length, self.heads, self.qk_dim)
        self.q_param = self.param("q", init, shape, jnp.float32)
        self.k_param = self.param("k", init, shape, jnp.float32)

    def qk(self, features: Array, mask: Array, zero_pads: bool = False) -> tuple[Array, Array]:
        """``q, k: (batch | 1, heads, L, qk_dim)``: the halves of the data-dependent features
        (official layout ``(heads qk_dim)``; zeroed at padded positions with ``zero_pads``) or the
        learned parameters cut to ``L``."""
        if not self.data_dependent:
            length = mask.shape[1]
            return position_major(self.q_param, length), position_major(self.k_param, length)
        if zero_pads:
            features = zero_padded(features, mask)
        q, k = jnp.split(features, 2, axis=-1)
        return tuple(jnp.moveaxis(split_heads(a, self.heads), 2, 1) for a in (q, k))


class RowwiseMixer(StructuredMixer):
    """A structure whose ``M`` comes row by row from ``rows_fn``; the fast path builds and applies
    ``block_size`` rows at a time (``seqzoo.ops.structured.blocked_matvec``), O(L^2 (r + p)) per
    head in time and O(block_size L r) in memory.

    Attributes:
      block_size: rows of ``M`` per block of the fast path.
    """

    block_size: int = 128

    def setup(self):
        check_positive_int(self.block_size, "block_size")
        super().setup()

    def rows_fn(self, inputs: MixerInputs) -> Callable[[Array], Array]:
        """A pure function ``rows(i: (B,) int) -> (M / scale)[:, :, i, :]``, each call
        ``(batch | 1, heads, B, L)``."""
        raise NotImplementedError

    def structure_matrix(self, inputs):
        return self.rows_fn(inputs)(jnp.arange(inputs.values.shape[1]))

    def structure_matvec(self, inputs):
        return blocked_matvec(self.rows_fn(inputs), inputs.values, self.block_size)
