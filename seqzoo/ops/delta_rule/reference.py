"""The delta rule exactly as the equations say, for tests: run it on float64 inputs under
``jax.enable_x64(True)`` for a float64 reference (it computes in its inputs' dtype).

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,     o_t = S_t^T (scale q_t)

with the ``dk x dk`` transition built explicitly (the fast forms never build it), ``a_t = exp(g_t)``
(1 without ``log_decay``) and ``S`` set to zero before a position where ``segment_ids`` changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def delta_rule_reference(
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    log_decay: Array | None = None,
    *,
    scale: float | None = None,
    initial_state: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """``(o: (b, t, h, dv), S_T: (b, h, dk, dv))`` step by step; shapes as ``delta_rule``'s."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    dtype = q.dtype
    scale = dk**-0.5 if scale is None else scale
    g = jnp.zeros((b, t, h), dtype) if log_decay is None else log_decay
    s0 = jnp.zeros((b, h, dk, dv), dtype) if initial_state is None else initial_state
    ids = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids
    starts = jnp.concatenate([jnp.zeros((b, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    eye = jnp.eye(dk, dtype=dtype)

    def step(s, inputs):
        start, q_t, k_t, v_t, b_t, g_t = inputs
        s = jnp.where(start[:, None, None, None], 0.0, s)
        outer_kk = jnp.einsum("bhi,bhj->bhij", k_t, k_t, precision=_HI)
        transition = jnp.exp(g_t)[..., None, None] * (eye - b_t[..., None, None] * outer_kk)
        write = b_t[..., None, None] * jnp.einsum("bhi,bhj->bhij", k_t, v_t, precision=_HI)
        s = jnp.einsum("bhij,bhjv->bhiv", transition, s, precision=_HI) + write
        return s, jnp.einsum("bhk,bhkv->bhv", scale * q_t, s, precision=_HI)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (starts, q, k, v, beta, g))
    s_final, o = jax.lax.scan(step, s0, xs)
    return jnp.moveaxis(o, 0, 1), s_final
