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
and, where measured faster, for ``"auto"`` (``seqzoo.ops.dispatch``, ``closed_form``). Its
fused form, which never writes the scores, is the Pallas GPU kernel ``pallas_gpu_taylor.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqzoo.ops.segments import segment_index

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def score_scale(d: int) -> float:
    """The factor of the scores: ``s = (q.k) * score_scale(d)``, ``1 / sqrt(d)``."""
    return 1.0 / math.sqrt(d)


def taylor_kernel(s: Array) -> Array:
    """``K = 1 + s + s^2 / 2`` of the scores ``s`` (float32); its derivative is ``1 + s``."""
    return 1.0 + s + 0.5 * s * s


def pair_ids(mask: Array, segment_ids: Array | None) -> tuple[Array, Array]:
    """``(query_ids, key_ids)``, both ``(batch, length)`` int32: query i and key j pair where
    ``j <= i`` and ``key_ids[j] == query_ids[i]``. A position's id is its segment's index
    (``segment_index``, >= 0), a key's -1 where ``mask`` is False (it pairs with no query)."""
    b, t = mask.shape
    runs = segment_index(segment_ids, b, t)
    return runs, jnp.where(mask, runs, -1)


def taylor_parallel(q: Array, k: Array, v: Array, mask: Array, segment_ids: Array | None = None,
                    *, scale: float) -> Array:
    """``o``: ``(batch, length, heads, dv)`` (module docstring)."""
    t, d = q.shape[1], q.shape[-1]
    s = jnp.einsum("bihd,bjhd->bhij", q, k, precision=_HI,
                   preferred_element_type=jnp.float32) * score_scale(d)
    query_ids, key_ids = pair_ids(mask, segment_ids)
    live = jnp.tril(jnp.ones((t, t), bool))[None] & (query_ids[:, :, None] == key_ids[:, None, :])
    kernel = jnp.where(live[:, None], taylor_kernel(s), 0.0).astype(v.dtype)
    o = jnp.einsum("bhij,bjhe->bihe", kernel, v, precision=_HI,
                   preferred_element_type=jnp.float32)
    return (scale * o).astype(v.dtype)
