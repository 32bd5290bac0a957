"""Based's linear attention in its quadratic form, without the features: the Taylor kernel in
closed form,

    K(q, k) = phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)
    o_i = scale * sum_{j <= i, j live, segment_j = segment_i} K(q_i, k_j) v_j

for ``phi`` the 2nd-order Taylor map (``seqzoo.ops.feature_maps``, ``taylor``). q, k:
``(batch, length, heads, d)`` before the map; v ``(batch, length, heads, dv)``; mask
``(batch, length)`` bool, False where the key is padding (``phi(k) = 0``: it adds nothing, the
constant term included); ``segment_ids`` ``(batch, length)`` or None (packed sequences: no
pair across a change of id). Returns ``(batch, length, heads, dv)`` in v's dtype: the scores
``q.k`` accumulate in float32 from the inputs' dtype, the kernel and its sums are float32 (the
kernel meets bf16 values as bf16, as the features meet the state in the chunked form).

Cost: ``O(L^2 (d + dv))`` per head, and the ``(L, L)`` scores kept for the backward pass,
against the chunked form's ``O(L C f + L f dv)`` on ``f = 1 + d + d^2`` features (273 at Based's
d 16) recomputed a block of rows at a time backwards (``featured.py``): far less work at short
lengths, more memory at long ones. ``featured_linear_attention`` runs it for ``impl="parallel"``
and, where measured faster, for ``"auto"`` (``seqzoo.ops.dispatch``, ``closed_form``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqzoo.ops.segments import segment_index

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def taylor_parallel(q: Array, k: Array, v: Array, mask: Array, segment_ids: Array | None = None,
                    *, scale: float) -> Array:
    """``o``: ``(batch, length, heads, dv)`` (module docstring)."""
    b, t, _, d = q.shape
    s = jnp.einsum("bihd,bjhd->bhij", q, k, precision=_HI,
                   preferred_element_type=jnp.float32) / math.sqrt(d)
    kernel = 1.0 + s + 0.5 * s * s
    live = jnp.tril(jnp.ones((t, t), bool))[None] & mask[:, None, :]  # (b, i, j)
    if segment_ids is not None:
        runs = segment_index(segment_ids, b, t)
        live = live & (runs[:, :, None] == runs[:, None, :])
    kernel = jnp.where(live[:, None], kernel, 0.0).astype(v.dtype)
    o = jnp.einsum("bhij,bjhe->bihe", kernel, v, precision=_HI,
                   preferred_element_type=jnp.float32)
    return (scale * o).astype(v.dtype)
