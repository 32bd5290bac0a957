"""Classic gated RNNs, LSTM (Hochreiter & Schmidhuber, 1997) and GRU (Cho et al., 2014), with
PyTorch's gate conventions, as the subject of FlashRNN (Poeppel et al., 2024).

Both share one skeleton: the input projection of every gate ``u = x W_ih + b_ih: (batch, length,
gates, hidden)`` is computed in parallel, then ``lax.scan`` runs the cell, whose recurrent
projection ``r = h W_hh + b_hh`` is block diagonal over ``num_heads`` heads (FlashRNN's heads;
1 head = the dense PyTorch cell). Gates in PyTorch order; with ``r_*`` the recurrent parts:

    LSTM (i, f, g, o):  i = sig(u_i + r_i), f = sig(u_f + r_f), g = tanh(u_g + r_g),
                        o = sig(u_o + r_o);   c' = f c + i g,   h' = o tanh(c')
    GRU (r, z, n):      r = sig(u_r + r_r), z = sig(u_z + r_z), n = tanh(u_n + r * r_n)
                        h' = (1 - z) n + z h

Initialisation as PyTorch: every weight and bias ``U(-1/sqrt(hidden), 1/sqrt(hidden))``. The output
is ``h`` (``hidden_size = d_model`` by default), projected to ``d_model`` by a bias-free linear only
when the sizes differ. Nonlinear: no matrix ``M`` (``has_matrix=False``).

Padding: a padded token leaves the carry ``(h[, c])`` unchanged and outputs 0, in the scan and in
``step``. The scan is sequential: ``O(L)`` depth, ``O(L D hidden + L hidden^2 / heads)`` work.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, keep_where, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def _uniform(bound: float):
    def init(key, shape, dtype=_F32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _info(paper: str) -> MixerInfo:
    return MixerInfo(
        causal=True,
        data_dependent=True,
        structure="none",
        cost="O(L D^2), sequential",
        paper=paper,
        has_matrix=False,
    )


class GatedRNN(MatrixMixer):
    """The shared skeleton; subclasses set ``num_gates`` and implement ``zero_carry`` / ``cell``.

    Attributes:
      hidden_size: ``N`` (None: ``d_model``).
      num_heads: block-diagonal recurrent heads (FlashRNN); must divide ``N``.
    """

    hidden_size: int | None = None
    num_heads: int = 1

    num_gates: ClassVar[int]

    def setup(self):
        n = self.d_model if self.hidden_size is None else self.hidden_size
        h = self.num_heads
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"hidden_size must be an int >= 1, got {self.hidden_size!r}")
        if not isinstance(h, int) or h < 1 or n % h:
            raise ValueError(f"num_heads={h!r} must be an int >= 1 dividing hidden_size={n}")
        self.n, self.dh = n, n // h
        bound = 1.0 / math.sqrt(n)
        init = {"kernel_init": _uniform(bound), "bias_init": _uniform(bound)}
        self.in_proj = dense(self.num_gates * n, "in_proj", use_bias=True, dtype=self.dtype, **init)
        g = self.num_gates
        shape = (h, self.dh, g, self.dh)
        self.recurrent_kernel = self.param("recurrent_kernel", _uniform(bound), shape)
        self.recurrent_bias = self.param("recurrent_bias", _uniform(bound), (g, n))
        if n != self.d_model:
            self.out_proj = dense(self.d_model, "out_proj", dtype=self.dtype)

    # ---- the cell ---------------------------------------------------------------------------
    def zero_carry(self, batch: int) -> Any:
        raise NotImplementedError

    def cell(self, carry: Any, u: Array, r: Array) -> tuple[Any, Array]:
        """``u, r: (batch, gates, N)`` input and recurrent pre-activations -> ``(carry, h)``."""
        raise NotImplementedError

    def hidden(self, carry: Any) -> Array:
        """``h: (batch, N)`` of a carry."""
        raise NotImplementedError

    def _recurrent(self, h: Array) -> Array:
        """``h W_hh + b_hh: (batch, gates, N)``, block diagonal over heads."""
        hh = h.reshape(h.shape[0], self.num_heads, self.dh)
        r = jnp.einsum("bhi,higj->bghj", hh, self.recurrent_kernel, precision=_HI)
        return r.reshape(h.shape[0], self.num_gates, self.n) + self.recurrent_bias

    def _step(self, carry, u_t: Array, mask_t: Array):
        new, h = self.cell(carry, u_t, self._recurrent(self.hidden(carry)))
        return keep_where(mask_t, new, carry), h

    def _input_projection(self, x: Array) -> Array:
        u = self.in_proj(x).astype(_F32)
        return u.reshape(x.shape[:-1] + (self.num_gates, self.n))

    # ---- pieces -----------------------------------------------------------------------------
    def mixer_inputs(self, x, mask):
        """``values``: the input pre-activations ``u: (batch, length, gates, N)``."""
        u = zero_padded(self._input_projection(x), mask)
        return MixerInputs(values=u, mask=mask, aux={})

    def mix_fast(self, inputs):
        def body(carry, xs):
            return self._step(carry, *xs)

        carry = self.zero_carry(inputs.mask.shape[0])
        xs = (jnp.moveaxis(inputs.values, 1, 0), inputs.mask.T)
        _, h = jax.lax.scan(body, carry, xs)
        return jnp.moveaxis(h, 0, 1)[:, :, None]  # (batch, length, 1, N)

    def _output(self, h: Array) -> Array:
        """``h: (..., N)`` float32 -> ``(..., d_model)`` (the caller casts to the input dtype)."""
        return self.out_proj(h) if self.n != self.d_model else h

    def mixer_output(self, inputs, mixed):
        return self._output(mixed[:, :, 0])

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        return self.zero_carry(batch)

    def step_fn(self, state, x_t, mask_t):
        state, h = self._step(state, self._input_projection(x_t), mask_t)
        return state, self._output(h)


@register_mixer("lstm", test_config={"num_heads": 2})
class LSTM(GatedRNN):
    """LSTM (PyTorch ``nn.LSTM`` cell, gates i, f, g, o); carry ``(h, c)``, each ``(batch, N)``."""

    num_gates: ClassVar[int] = 4
    info: ClassVar[MixerInfo] = _info("Hochreiter & Schmidhuber 1997, Long Short-Term Memory")

    def zero_carry(self, batch):
        z = jnp.zeros((batch, self.n), _F32)
        return (z, z)

    def hidden(self, carry):
        return carry[0]

    def cell(self, carry, u, r):
        _, c = carry
        pre = u + r
        i, f, o = (jax.nn.sigmoid(pre[:, k]) for k in (0, 1, 3))
        c = f * c + i * jnp.tanh(pre[:, 2])
        h = o * jnp.tanh(c)
        return (h, c), h


@register_mixer("gru", test_config={"num_heads": 2})
class GRU(GatedRNN):
    """GRU (PyTorch ``nn.GRU`` cell, gates r, z, n; ``b_hn`` inside the reset); carry ``h``."""

    num_gates: ClassVar[int] = 3
    info: ClassVar[MixerInfo] = _info("Cho et al. 2014, GRU (RNN Encoder-Decoder)")

    def zero_carry(self, batch):
        return jnp.zeros((batch, self.n), _F32)

    def hidden(self, carry):
        return carry

    def cell(self, carry, u, r):
        reset = jax.nn.sigmoid(u[:, 0] + r[:, 0])
        update = jax.nn.sigmoid(u[:, 1] + r[:, 1])
        n = jnp.tanh(u[:, 2] + reset * r[:, 2])
        h = (1.0 - update) * n + update * carry
        return h, h
