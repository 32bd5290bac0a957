"""The Legendre Memory Unit (Voelker et al., 2019) in its feedforward (parallel) form.

As ``nengo/keras-lmu`` ``LMUFeedforward`` with a dense hidden layer (x: (batch, length, d)):

    u_t = g(x_t W_enc (+ b_enc))                     (d -> memory_d, glorot uniform; g = id)
    m_t = Abar m_{t-1} + Bbar u_t                    per memory channel, state (order,)
    h_t = f(W_h [m_t, x_t] + b_h)                    (memory_d order [+ d] -> d; f = tanh)

(A, B) is the LMU's Legendre delay system with window theta (``seqzoo.ops.lmu``), discretised
with unit step (ZOH or Euler). This is the *feedforward* LMU: the memory is driven by the input
only, with no hidden-to-memory or memory-to-memory connection and no h_{t-1} in the hidden
layer, so the memory is an LTI convolution m = H * u with the impulse response H_t = Abar^t Bbar
and the whole layer runs in parallel (Chilkuri & Eliasmith, 2021). The original recurrent LMU
cell (hidden_to_memory, memory_to_memory, a recurrent hidden cell) is not this layer.

Matrix view: heads = memory_d x order (index ``d order + o``, the keras-lmu layout of m), values
v = u repeated over the order axis, and ``M[(d, o), i, j] = H[i - j, o]`` (``j <= i``): per memory
channel, the Toeplitz matrices of the impulse response, one per Legendre coefficient; the same for
every batch row (data independent; semiseparable of rank order).

Padding: u is zero at padded positions, so they do not reach the memory; in ``step`` a padded
token is a zero input and the memory still advances (m = Abar m), exactly as the convolution.
Left or right padding gives the shorter sequence's outputs; a hole counts as a time step (a zero
input), by design.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import causal_toeplitz
from seqzoo.ops.lmu import (
    DISCRETISATIONS,
    lmu_discretize,
    lmu_impulse_response,
    lmu_memory_parallel,
    lmu_transition,
)

Array = jax.Array
HIDDEN_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": lambda a: jax.nn.gelu(a, approximate=False),
    "silu": jax.nn.silu,
    "id": lambda a: a,
    "identity": lambda a: a,
}


@register_mixer("lmu", test_config={"memory_d": 2, "order": 4, "theta": 6.0})
class LMU(MatrixMixer):
    """The feedforward LMU layer; output width d_model (the hidden layer's units).

    Attributes:
      memory_d: input channels of the memory (keras-lmu ``memory_d``; default 1, as the
        keras-lmu psMNIST example).
      order: Legendre coefficients per memory channel (default 256, the psMNIST example).
      theta: window length in steps (default 784.0, the psMNIST example).
      discretizer: ``zoh`` (default) or ``euler`` (keras-lmu advises theta > 4 order for it).
      trainable_theta: learn ``theta_inv`` (init 1 / theta) and rediscretise every call.
      input_to_hidden: feed x to the hidden layer beside m (the paper's W_x x_t; keras-lmu's
        default is False).
      use_bias: bias on the memory encoder u (keras-lmu ``use_bias``, default False).
      encoder_activation: g of the memory encoder (``id`` as keras-lmu; LMUFormer uses relu).
      hidden_activation: f of the hidden layer (tanh, as the paper).
    """

    memory_d: int = 1
    order: int = 256
    theta: float = 784.0
    discretizer: str = "zoh"
    trainable_theta: bool = False
    input_to_hidden: bool = True
    use_bias: bool = False
    hidden_activation: str = "tanh"
    encoder_activation: str = "id"

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=False,
        structure="semiseparable",
        cost="O(B L log L memory_d order + L order^2)",
        paper="Voelker et al. 2019, Legendre Memory Units (feedforward form, Chilkuri & "
        "Eliasmith 2021)",
    )

    def setup(self):
        for field in ("memory_d", "order"):
            check_positive_int(getattr(self, field), field)
        if not self.theta > 0:
            raise ValueError(f"theta must be positive, got {self.theta!r}")
        if self.discretizer not in DISCRETISATIONS:
            raise ValueError(
                f"discretizer must be one of {DISCRETISATIONS}, got {self.discretizer!r}"
            )
        for field in ("hidden_activation", "encoder_activation"):
            if getattr(self, field) not in HIDDEN_ACTIVATIONS:
                raise ValueError(
                    f"{field} must be one of {sorted(HIDDEN_ACTIVATIONS)}, "
                    f"got {getattr(self, field)!r}"
                )
        glorot = nn.initializers.glorot_uniform()
        self.encoder = dense(
            self.memory_d, "encoder", use_bias=self.use_bias, dtype=self.dtype, kernel_init=glorot
        )
        self.hidden = dense(
            self.d_model, "hidden", use_bias=True, dtype=self.dtype, kernel_init=glorot
        )
        if self.trainable_theta:
            self.theta_inv = self.param(
                "theta_inv", nn.initializers.constant(1 / self.theta), (), jnp.float32
            )

    # ---- the memory system ------------------------------------------------------------------
    def discrete_system(self) -> tuple[Array, Array]:
        """(Abar, Bbar): (order, order), (order,) float32."""
        theta = 1 / self.theta_inv if self.trainable_theta else float(self.theta)
        a, b = lmu_transition(self.order, theta)
        return lmu_discretize(a, b, method=self.discretizer)

    def _encode(self, x: Array, mask: Array) -> Array:
        u = HIDDEN_ACTIVATIONS[self.encoder_activation](self.encoder(x).astype(jnp.float32))
        return jnp.where(mask[..., None], u, 0.0)

    # ---- pieces -----------------------------------------------------------------------------
    def mixer_inputs(self, x, mask):
        u = self._encode(x, mask)  # (b, l, memory_d)
        values = jnp.repeat(u, self.order, axis=-1)[..., None]  # (b, l, memory_d * order, 1)
        aux = {"x": x, "impulse": lmu_impulse_response(*self.discrete_system(), x.shape[1])}
        return MixerInputs(values=values, mask=mask, aux=aux)

    def mix_fast(self, inputs):
        u = inputs.values[:, :, :: self.order, 0]  # (b, l, memory_d)
        m = lmu_memory_parallel(u, inputs.aux["impulse"])  # (b, l, memory_d, order)
        return m.reshape(m.shape[:2] + (-1, 1))

    def mix_matrix(self, inputs):
        length = inputs.values.shape[1]
        t = causal_toeplitz(inputs.aux["impulse"].T, length)  # (order, L, L)
        m = jnp.tile(t, (self.memory_d, 1, 1))  # heads d * order + o
        return jnp.where(inputs.mask[:, None, None, :], m[None], 0.0)

    def mixer_output(self, inputs, mixed):
        return self._output(mixed[..., 0], inputs.aux["x"])

    def _output(self, m: Array, x: Array) -> Array:
        """h = f(W_h [m, x] + b_h); m: (..., memory_d * order), x: (..., d_model)."""
        h_in = jnp.concatenate([m, x.astype(m.dtype)], axis=-1) if self.input_to_hidden else m
        return HIDDEN_ACTIVATIONS[self.hidden_activation](self.hidden(h_in))

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        return jnp.zeros((batch, self.memory_d, self.order), jnp.float32)

    def step_fn(self, state, x_t, mask_t):
        abar, bbar = self.discrete_system()
        u = self._encode(x_t, mask_t)  # zero for a padded token; the memory still advances
        state = jnp.einsum("po,bdo->bdp", abar, state, precision="highest") + u[..., None] * bbar
        return state, self._output(state.reshape(state.shape[0], -1), x_t)
