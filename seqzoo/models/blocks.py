"""The residual block every seqzoo model stacks: pre-norm, a registry mixer, an optional MLP.

h = x + dropout(mixer(norm(x), mask))
y = h + dropout(mlp(norm(h)))           (mlp: none | gelu MLP | SwiGLU)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from seqzoo.layers.common import dense
from seqzoo.models.norms import apply_norm, make_norm
from seqzoo.registry import get_mixer

Array = jax.Array
MLPS = ("none", "mlp", "glu")


def mlp_width(d_model: int, kind: str, ratio: float) -> int:
    """The hidden width of an MLP of ``kind`` (mlp | glu): ``int(ratio * d_model)``, two thirds
    of it for SwiGLU (``glu``) to keep the parameter count of the gelu MLP."""
    hidden = int(ratio * d_model)
    return int(2 * hidden / 3) if kind == "glu" else hidden


class MLP(nn.Module):
    """``gelu`` MLP ``W_2 gelu(W_1 x)`` or SwiGLU ``W_2 (silu(W_g x) * W_1 x)``.

    Hidden width ``ratio * d`` (two thirds of it for SwiGLU, to keep the parameter count).
    """

    d_model: int
    kind: str = "glu"
    ratio: float = 4.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.kind not in ("mlp", "glu"):
            raise ValueError(f"mlp must be one of {MLPS}, got {self.kind!r}")
        hidden = mlp_width(self.d_model, self.kind, self.ratio)
        if hidden < 1:
            raise ValueError(
                f"mlp_ratio={self.ratio} gives the {self.kind} MLP of d_model={self.d_model} a "
                f"hidden width of {hidden}; it needs at least 1"
            )
        if self.kind == "glu":
            h = jax.nn.silu(dense(hidden, "gate", dtype=self.dtype)(x)) * dense(
                hidden, "up", dtype=self.dtype
            )(x)
        else:
            h = jax.nn.gelu(dense(hidden, "up", use_bias=True, dtype=self.dtype)(x))
        return dense(self.d_model, "down", use_bias=self.kind == "mlp", dtype=self.dtype)(h)


class ResidualBlock(nn.Module):
    """One pre-norm residual block around the registry mixer ``mixer``.

    Attributes:
      d_model: width.
      mixer: registry name (``"bi:<name>"`` for a bidirectional wrapper of a causal mixer).
      mixer_config: the mixer's options.
      mlp: ``none | mlp | glu``; mlp_ratio: hidden width over ``d_model``.
      norm: ``rms | layer | batch`` (``seqzoo.models.norms``); dropout: rate on both residual
        branches.
    """

    d_model: int
    mixer: str
    mixer_config: dict[str, Any] | None = None
    mlp: str = "glu"
    mlp_ratio: float = 4.0
    norm: str = "rms"
    dropout: float = 0.0
    dtype: Any = None

    def setup(self):
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        config = dict(self.mixer_config or {})
        self.mix = get_mixer(self.mixer, d_model=self.d_model, dtype=self.dtype, **config)
        self.norm_mix = make_norm(self.norm, "norm_mix")
        self.drop = nn.Dropout(self.dropout)
        if self.mlp != "none":
            self.norm_mlp = make_norm(self.norm, "norm_mlp")
            self.ffn = MLP(self.d_model, self.mlp, self.mlp_ratio, self.dtype)

    def __call__(self, x: Array, mask: Array | None = None, *, deterministic: bool = True):
        """``x: (batch, length, d_model)``, ``mask: (batch, length)`` -> same shape as ``x``."""
        h = apply_norm(self.norm_mix, x, mask, deterministic)
        x = x + self.drop(self.mix(h, mask), deterministic=deterministic)
        return self._mlp(x, mask, deterministic)

    def _mlp(self, x: Array, mask: Array | None, deterministic: bool) -> Array:
        if self.mlp == "none":
            return x
        h = apply_norm(self.norm_mlp, x, mask, deterministic)
        return x + self.drop(self.ffn(h), deterministic=deterministic)

    def init_state(self, batch: int):
        return self.mix.init_state(batch)

    def step(self, state, x_t: Array, mask_t: Array | None = None):
        """Decoding: ``x_t: (batch, d_model)`` -> ``(state, y_t)``, as ``__call__`` per token
        (in deterministic mode: batch norm uses its running averages)."""
        h = apply_norm(self.norm_mix, x_t, mask_t, True)
        state, h = self.mix.step(state, h, mask_t)
        return state, self._mlp(x_t + h, mask_t, deterministic=True)
