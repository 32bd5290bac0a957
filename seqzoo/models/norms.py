"""The normalisations a ``ResidualBlock`` and ``SequenceModel`` can use, by name.

    rms:    y = w * x / sqrt(mean_d x^2 + eps)                  per position
    layer:  y = w * (x - mean_d x) / sqrt(var_d x + eps) + b     per position
    batch:  y = w * (x - mu) / sqrt(sigma^2 + eps) + b           per channel (S4's ``norm: batch``)
            training: mu, sigma^2 over the valid (batch, length) positions of the batch, and
                      running averages  r <- 0.9 r + 0.1 stat  (torch's momentum 0.1)
            deterministic (eval, decoding): the running averages

Batch norm keeps its running averages in the ``batch_stats`` collection: training applies the
model with ``mutable=["batch_stats"]`` and the optimizer leaves that collection alone
(``seqzoo.runner.variables``). Padding is masked out of the statistics, so a padded row
normalises as it would alone in a batch of the same content.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.common import RMSNorm
from seqzoo.ops.lean_grad import layer_norm

Array = jax.Array
NORMS = ("rms", "layer", "batch")


class MaskedBatchNorm(nn.Module):
    """Batch norm over every axis but the last, statistics from valid positions only.

    ``x: (batch, length, d)`` or ``(batch, d)``; ``mask``: ``x.shape[:-1]`` bools or None (all
    valid). Statistics and parameters in float32; output in ``x``'s dtype.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        bn = nn.BatchNorm(
            momentum=self.momentum, epsilon=self.epsilon, param_dtype=jnp.float32, name="bn"
        )
        where = None if mask is None else mask.astype(bool)[..., None]
        y = bn(x.astype(jnp.float32), use_running_average=deterministic, mask=where)
        return y.astype(x.dtype)


class LayerNorm(nn.Module):
    """flax's ``nn.LayerNorm`` (float32 ``scale`` and ``bias``, epsilon 1e-6, float32 statistics)
    whose backward pass keeps only its input (``seqzoo.ops.lean_grad.layer_norm``)."""

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        return layer_norm(x, scale, bias, self.epsilon)


def make_norm(kind: str, name: str) -> nn.Module:
    """The normalisation called ``kind`` (one of ``NORMS``) as a submodule named ``name``."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    if kind == "rms":
        return RMSNorm(name=name)
    if kind == "layer":
        return LayerNorm(name=name)
    return MaskedBatchNorm(name=name)


def apply_norm(norm: nn.Module, x: Array, mask: Array | None, deterministic: bool) -> Array:
    """``norm(x)``; batch norm also takes the padding mask and the train / eval mode."""
    if isinstance(norm, MaskedBatchNorm):
        return norm(x, mask, deterministic)
    return norm(x)
