"""Linear attention on features it computes itself: ``phi`` of q and k inside the op's lean region.

    o = linear_attention(phi(q), mask * phi(k), v, log_decay, ...)

q, k: ``(batch, length, heads, dk)`` before the feature map; mask ``(batch, length)`` bool, False
where ``phi(k)`` is zero (padding); the rest as ``seqzoo.ops.linear_attention``.

A map that widens (Based's Taylor map: ``dk -> 1 + dk + dk^2``, 273 features of 16) would have
the op keep ``phi(q)`` and ``phi(k)``, 17x the projections, for the backward pass, and the
backward make their full cotangents and, at one chunk, every intermediate of that size
(mqar_based kept 3.5x its estimate). Here the map and the op form one ``lean_grad.blockwise``
function of the batch rows, forwards and backwards: the backward pass keeps q, k, v, the
decays and the mask, and recomputes the features a block of rows at a time, so features and
their cotangents exist for one block at once (blocks sized by bytes: a block's features at most
the size of q, k and v of all rows). The values and gradients are the plain composition's
(the rows do not mix). A map that keeps the width (identity, elu, relu) runs as that
composition: its outputs are no larger than its inputs.
"""

from __future__ import annotations

import functools

import jax

from seqzoo.kernels.matmul_precision import resolve_precision
from seqzoo.ops import feature_maps
from seqzoo.ops.lean_grad import blockwise, size_budget
from seqzoo.ops.linear_attention import linear_attention

Array = jax.Array


def featured_linear_attention(q: Array, k: Array, v: Array, mask: Array, *, feature_map: str,
                              log_decay: Array | None = None, scale: float, chunk_size: int = 64,
                              segment_ids: Array | None = None, impl: str = "auto",
                              precision: str | None = None) -> Array:
    """``linear_attention(phi(q), phi(k) (0 where mask is False), v, ...)``: ``(b, l, h, dv)``
    in ``v``'s dtype (module docstring). ``log_decay`` is per head or per feature; ``precision``
    as ``linear_attention``'s (resolved here, before blocks are recomputed backwards)."""
    rows = (q, k, v, mask, log_decay, segment_ids)
    options = (feature_map, float(scale), chunk_size, impl, resolve_precision(precision))
    widens = feature_maps.feature_size(feature_map, q.shape[-1]) > q.shape[-1]
    return (_lean if widens else _featured)(*options)(rows, ())


def features(name: str, q: Array, k: Array, mask: Array) -> tuple[Array, Array]:
    """``phi(q)``, ``phi(k)`` by the map ``name``, ``phi(k)`` zero where ``mask: q.shape[:-2]``
    is False."""
    phi = feature_maps.feature_map
    return phi(name, q), phi(name, k, mask[..., None, None])


@functools.cache
def _featured(name: str, scale: float, chunk_size: int, impl: str, precision: str):
    def fn(rows, shared):
        del shared
        q, k, v, mask, log_decay, segment_ids = rows
        q, k = features(name, q, k, mask)
        return linear_attention(q, k, v, log_decay=log_decay, scale=scale, chunk_size=chunk_size,
                                segment_ids=segment_ids, impl=impl, precision=precision)

    return fn


@functools.cache
def _lean(name: str, scale: float, chunk_size: int, impl: str, precision: str):
    def features_per_row(rows) -> int:  # one row's phi(q) and phi(k)
        _, length, heads, dk = rows[0].shape
        return 2 * length * heads * feature_maps.feature_size(name, dk)

    def qkv_size(rows) -> int:  # a block's features at most q, k and v's size
        return size_budget(rows[:3])

    return blockwise(_featured(name, scale, chunk_size, impl, precision), forward=True,
                     row_elements=features_per_row, block_elements=qkv_size)
