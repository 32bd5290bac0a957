"""Feature maps phi for linear attention: softmax(q k^T) is replaced by phi(q) phi(k)^T.

All maps act on the last axis: ``x: (..., d) -> (..., feature_size(name, d))``, computed in
float32 and returned in ``x``'s dtype (a bf16 layer hands its op bf16 features).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

FEATURE_MAPS = ("identity", "elu", "relu", "taylor")


def feature_size(name: str, dim: int) -> int:
    """Output size of feature map ``name`` on inputs of size ``dim``."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    return 1 + dim + dim * dim if name == "taylor" else dim


def feature_map(name: str, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Apply ``phi``; with ``mask`` (broadcastable to ``x``, bool) ``phi`` is 0 where it is False.

    * ``identity``: ``phi(x) = x`` (RetNet, GLA, Lightning Attention).
    * ``elu``: ``phi(x) = elu(x) + 1`` (Katharopoulos et al., 2020), positive.
    * ``relu``: ``phi(x) = max(x, 0)``.
    * ``taylor``: the 2nd-order Taylor map of Based (Arora et al., 2024),
      ``phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) d^(1/2))]`` so that
      ``phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d) ~ exp(q.k / sqrt(d))``.

    ``elu``'s backward pass keeps only its output ``y``: ``dy/dx = min(y, 1)`` (1 where ``x > 0``,
    ``exp(x) = y`` elsewhere, 0 where masked), so the one array the linear-attention op keeps
    anyway serves both (autodiff of ``elu(x) + 1`` keeps ``x``, ``exp(x)`` and masks besides).
    """
    if name not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    if name == "elu":
        return _elu_plus_one(x, jnp.ones((), bool) if mask is None else mask)
    y = _feature_map(name, x.astype(jnp.float32)).astype(x.dtype)
    return y if mask is None else jnp.where(mask, y, jnp.zeros((), y.dtype))


@jax.custom_vjp
def _elu_plus_one(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, jax.nn.elu(x.astype(jnp.float32)) + 1.0, 0.0).astype(x.dtype)


def _elu_plus_one_fwd(x, mask):
    y = _elu_plus_one(x, mask)
    return y, (y, mask)


def _elu_plus_one_bwd(residuals, g):
    y, mask = residuals
    return g * jnp.minimum(y, 1.0), np.zeros(np.shape(mask), jax.dtypes.float0)


_elu_plus_one.defvjp(_elu_plus_one_fwd, _elu_plus_one_bwd)


def _feature_map(name: str, x: jax.Array) -> jax.Array:
    if name == "identity":
        return x
    if name == "relu":
        return jax.nn.relu(x)
    d = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (d * d,))
    return jnp.concatenate(
        [jnp.ones_like(x[..., :1]), x / d**0.25, outer / (math.sqrt(2.0) * math.sqrt(d))], axis=-1
    )
