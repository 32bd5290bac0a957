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

The Taylor map without decays, on a sequence not split over devices, also has a quadratic form
with no features at all (``taylor_parallel.py``: ``phi(q) . phi(k)`` in closed form on the
``(T, T)`` scores): ``impl="parallel"`` runs it, and ``"auto"`` where it is measured faster
(``seqzoo.ops.dispatch``, the ``closed_form`` rules: short sequences on a CPU and on a GPU in
float32); with a decay or a split sequence ``"parallel"`` is the features through
``linear_attention``'s quadratic form. On a GPU, ``impl="pallas"`` runs the same closed form as
one fused kernel (``pallas_gpu_taylor.py``, no ``(T, T)`` scores in memory; packed segments
too), and ``"auto"`` does for 16-bit inputs at every length; elsewhere, as with a decay or a
split sequence, ``"pallas"`` is the features through ``linear_attention``'s kernel.
"""

from __future__ import annotations

import functools

import jax

from seqzoo.kernels.launch import GPU_BACKENDS
from seqzoo.kernels.matmul_precision import resolve_precision
from seqzoo.ops import feature_maps
from seqzoo.ops.dispatch import on_platform
from seqzoo.ops.lean_grad import blockwise, size_budget
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.linear_attention.pallas_gpu_taylor import taylor_pallas_gpu
from seqzoo.ops.linear_attention.taylor_parallel import taylor_parallel
from seqzoo.parallel.context import sequence_axis

Array = jax.Array


def featured_linear_attention(q: Array, k: Array, v: Array, mask: Array, *, feature_map: str,
                              log_decay: Array | None = None, scale: float, chunk_size: int = 64,
                              segment_ids: Array | None = None, impl: str = "auto",
                              precision: str | None = None) -> Array:
    """``linear_attention(phi(q), phi(k) (0 where mask is False), v, ...)``: ``(b, l, h, dv)``
    in ``v``'s dtype (module docstring). ``log_decay`` is per head or per feature; ``precision``
    as ``linear_attention``'s (resolved here, before blocks are recomputed backwards)."""
    precision = resolve_precision(precision)
    width = feature_maps.feature_size(feature_map, q.shape[-1])
    options = (feature_map, float(scale), chunk_size, impl, precision)
    featured = (_lean if width > q.shape[-1] else _featured)(*options)

    def through_features(q, k, v, mask, segment_ids):  # linear_attention decides for them
        return featured((q, k, v, mask, log_decay, segment_ids), ())

    if feature_map != "taylor" or log_decay is not None or sequence_axis() is not None:
        return through_features(q, k, v, mask, segment_ids)

    def run(chosen: str, platform: str):  # otherwise the features' op chooses for the platform
        if chosen == "parallel":
            return functools.partial(taylor_parallel, scale=scale)
        if chosen == "pallas" and platform in GPU_BACKENDS:
            return functools.partial(taylor_pallas_gpu, scale=scale, precision=precision)
        return through_features

    return on_platform("linear_attention", impl, run, q, k, v, mask, segment_ids,
                       dims=(width, v.shape[-1]), dtypes=(q.dtype, k.dtype, v.dtype),
                       segment_ids=segment_ids, precision=precision, closed_form=True,
                       length=q.shape[1])


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
