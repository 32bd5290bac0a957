"""The diagonal linear recurrence step by step: ``impl="sequential"`` of the scans.

    h_t = a_t * h_{t-1} + b_t          (reverse: h_t = a_t * h_{t+1} + b_t)

one multiply-add per step by ``lax.scan``, exactly as written: the reference the associative scan
and the Pallas kernels are tested against. It computes in its inputs' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sequential(a: Array, b: Array, reverse: bool = False) -> Array:
    """All states along axis 1 from a zero state; a: (batch, length, ...) broadcastable to
    b: (batch, length, ...)."""
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    a_t, b_t = jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0)
    _, h = jax.lax.scan(step, jnp.zeros(b.shape[:1] + b.shape[2:], b.dtype), (a_t, b_t),
                        reverse=reverse)
    return jnp.moveaxis(h, 0, 1)
