"""Linear attention step by step, as the equations say: the sequential form and one decoding step.

    S_t = exp(g_t) * S_{t-1} + k_t v_t^T,     o_t = q_t S_t       (q already scaled)

with the state reset to zero where a packed segment starts. This is ``impl="sequential"`` and
the reference the chunked, parallel and Pallas forms are tested against; it computes in its
inputs' dtype (the op passes float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def recurrence_step(s, q_t, k_t, v_t, g_t):
    """One step. ``s: (b, h, dk, dv)``; ``q_t, k_t: (b, h, dk)``; ``v_t: (b, h, dv)``;
    ``g_t: (b, h, dk or 1)``. Returns ``(S_t, o_t: (b, h, dv))``."""
    s = jnp.exp(g_t)[..., None] * s + k_t[..., :, None] * v_t[..., None, :]
    return s, jnp.einsum("bhk,bhkv->bhv", q_t, s, precision=_HI)


def sequential(q, k, v, g, s0, runs):
    """All outputs and the final state by ``lax.scan``; ``runs: (b, t)`` the segment index."""
    def body(s, inputs):
        start, *step_inputs = inputs
        return recurrence_step(jnp.where(start[:, None, None, None], 0.0, s), *step_inputs)

    starts = runs != jnp.pad(runs[:, :-1], ((0, 0), (1, 0)))
    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (starts, q, k, v, g))
    s_final, o = jax.lax.scan(body, s0, xs)
    return jnp.moveaxis(o, 0, 1), s_final
