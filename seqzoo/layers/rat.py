"""RAT (Wei et al., 2025, "RAT: Bridging RNN Efficiency and Attention Accuracy"), as the official
``src/model/backbone/rat/rat.py`` of CLAIRE-Labo/RAT.

    [z, v, g, q, k] = x W_in                       z, v, g: (D,);  q, k: (G, d) grouped
    g = sigmoid(g + b_g),  b_g = log U(1, L - 1)   per channel; one gate for keys and values
    k~_t = g_t k~_{t-1} + (1 - g_t) k_t,  v~_t likewise, reset at chunk starts (chunks of L)
    o_t = softmax over {chunk-end (k~, v~) of earlier chunks} + {(k~_t, v~_t)}   (per head)
    y = (sigmoid(z) * o) W_out

(see ``seqzoo.ops.rat`` for the attention, RoPE at chunk indices and padding). "Grouped": q and k
have ``num_groups`` heads of size ``d = d_model / heads``, tiled over the ``heads`` heads as the
official ``repeat`` does (head ``h`` reads group ``h % num_groups``); the gate is per channel, so
the recurrent keys ``k~`` still differ per head. No projection has a bias (as the official code).
The official layer also applies its own RMSNorm and residual; here the block does (pre-norm).

Matrix view: ``o`` is linear in ``v`` channel by channel (the gate differs per channel), so
``M: (batch, d_model, length, length)``, one matrix per channel (heads = d_model, head_dim 1):
softmax weights composed with the in-chunk gate products (``seqzoo.ops.rat.rat_matrix``).

Padding: positions and chunks count valid tokens only and a padded token leaves every state
unchanged, so holes are invisible and right padding equals a shorter sequence; ``step`` skips
padded tokens. Decoding keeps a ring of ``ceil(max_decode_length / chunk_size)`` chunk-end states;
past ``max_decode_length`` tokens the oldest chunks drop out (as attention's cache).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, keep_where, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense, resolve_head_dim
from seqzoo.ops.rat import (
    check_chunk_size,
    rat_attention,
    rat_init_state,
    rat_matrix,
    rat_step,
    tile_heads,
)

Array = jax.Array


def log_uniform_gate_bias(chunk_size: int):
    """The official gate-bias init: ``log U(1, L - 1)`` (``log 1 = 0`` when ``L <= 2``)."""
    high = float(max(chunk_size - 1, 1))

    def init(key, shape, dtype=jnp.float32):
        return jnp.log(jax.random.uniform(key, shape, dtype, minval=1.0, maxval=high))

    return init


@register_mixer("rat", test_config={"head_dim": 4, "num_groups": 1, "chunk_size": 4})
class RAT(MatrixMixer):
    """RAT's chunked recurrence + attention; ``x: (batch, length, d_model)``.

    Attributes:
      head_dim: per-head ``d`` (None: the official 64, or ``d_model`` when narrower, one head);
        ``heads = d_model / d``.
      num_groups: q/k groups ``G`` (None: the official ``ngroups=2``, or 1 with one head); must
        divide ``heads``.
      chunk_size: ``L`` (official 64).
      rope: RoPE on q and the chunk-end keys at chunk indices, base ``rope_theta``.
      max_decode_length: tokens whose chunk-end states ``step`` keeps.
    """

    head_dim: int | None = None
    num_groups: int | None = None
    chunk_size: int = 64
    rope: bool = True
    rope_theta: float = 10000.0
    max_decode_length: int = 2048

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="dense",
        cost="O(L D + L^2 D / C)",
        paper="Wei et al. 2025, RAT: Bridging RNN Efficiency and Attention Accuracy",
    )

    def setup(self):
        check_chunk_size(self.chunk_size)
        self.d = d = resolve_head_dim(self.d_model, self.head_dim, "head_dim", 64, "d_model")
        if self.rope and d % 2:
            raise ValueError(f"rope needs an even head_dim, got head_dim={d}; set head_dim or "
                             f"rope=False")
        self.heads = self.d_model // d
        self.groups = g = min(2, self.heads) if self.num_groups is None else self.num_groups
        if not isinstance(g, int) or g < 1 or self.heads % g:
            raise ValueError(f"num_groups={g!r} must be an int >= 1 dividing heads={self.heads}")
        if self.max_decode_length < 1:
            raise ValueError(f"max_decode_length must be >= 1, got {self.max_decode_length}")
        self.in_proj = dense(3 * self.d_model + 2 * g * d, "in_proj", dtype=self.dtype)
        self.gate_bias = self.param(
            "gate_bias", log_uniform_gate_bias(self.chunk_size), (self.d_model,), jnp.float32
        )
        self.out_proj = dense(self.d_model, "out_proj", dtype=self.dtype)

    # ---- pieces -----------------------------------------------------------------------------
    def _project(self, x: Array) -> dict[str, Array]:
        """z ``(..., D)``; v, gate logits ``(..., heads, d)``; q, k ``(..., groups, d)``."""
        D, d, g = self.d_model, self.d, self.groups
        z, v, gate, q, k = jnp.split(self.in_proj(x), [D, 2 * D, 3 * D, 3 * D + g * d], axis=-1)
        lead = x.shape[:-1]

        def heads(a):
            return a.reshape(lead + (self.heads, d))

        gate = gate.astype(jnp.float32) + self.gate_bias
        q, k = q.reshape(lead + (g, d)), k.reshape(lead + (g, d))
        return {"z": z, "v": heads(v), "gate": heads(gate), "q": q, "k": k}

    def _options(self) -> dict:
        return {"rope": self.rope, "rope_theta": self.rope_theta}

    def mixer_inputs(self, x, mask):
        p = self._project(x)
        v = zero_padded(p["v"], mask)
        b, length = mask.shape
        aux = {"z": p["z"], "gate": p["gate"], "q": p["q"], "k": p["k"]}
        return MixerInputs(values=v.reshape(b, length, self.d_model, 1), mask=mask, aux=aux)

    def mix_fast(self, inputs):
        a = inputs.aux
        b, length = inputs.mask.shape
        v = inputs.values.reshape(b, length, self.heads, self.d)
        o = rat_attention(
            a["q"], a["k"], v, a["gate"], inputs.mask, self.chunk_size, **self._options()
        )
        return o.reshape(inputs.values.shape)

    def mix_matrix(self, inputs):
        a = inputs.aux
        q, k = (tile_heads(a[n], self.heads) for n in ("q", "k"))
        return rat_matrix(q, k, a["gate"], inputs.mask, self.chunk_size, **self._options())

    def _output(self, o: Array, z: Array) -> Array:
        o = o.reshape(z.shape).astype(jnp.float32) * jax.nn.sigmoid(z.astype(jnp.float32))
        return self.out_proj(o.astype(z.dtype))

    def mixer_output(self, inputs, mixed):
        return self._output(mixed, inputs.aux["z"])

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        slots = math.ceil(self.max_decode_length / self.chunk_size)
        return rat_init_state(batch, slots, self.heads, self.d)

    def step_fn(self, state, x_t, mask_t):
        p = self._project(x_t)
        q, k = (tile_heads(p[n], self.heads) for n in ("q", "k"))
        new, o = rat_step(state, q, k, p["v"], p["gate"], self.chunk_size, **self._options())
        return keep_where(mask_t, new, state), self._output(o, p["z"])
