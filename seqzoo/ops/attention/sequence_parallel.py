"""Attention over devices: ring attention (Liu et al., 2023) and all-gather attention.

Shard ``i`` keeps its queries and visits every shard's keys and values block by block with the
online softmax of blockwise / flash attention: for a block of keys ``K_j, V_j``

    s = scale q K_j^T (masked)     m' = max(m, max_j s)     w = exp(m - m')
    l' = w l + sum_j exp(s - m')   o' = w o + exp(s - m') V_j

and finally ``o / l`` (0 for a query with no allowed key). ``schedule="ring"`` passes the blocks
around the ring with ``P - 1`` ``ppermute`` steps (the step's transfer can overlap the block's
compute), ``"all_gather"`` fetches all of them at once (K and V of the whole sequence, one
collective). Both move the same ``(P - 1) / P`` of every shard's K and V.

Inside a block the keys are visited ``block_size`` at a time with the same update (flash
attention's tiling), under ``jax.checkpoint``: the scores held at once are
``(batch, heads, l, block_size)`` rather than ``(batch, heads, l, l)`` (32 GiB at 32k tokens
per device), and the backward pass recomputes each tile's scores, keeping only the running
``(m, l, o)`` of every tile.

The allowed pairs are those of ``seqzoo.ops.attention`` (causal, window, sinks, padding) on global
positions: valid tokens counted over all earlier shards, which travel with their keys. Causal
attention skips the blocks of later shards (all masked) with a ``lax.cond``; the last shard then
computes ``P`` blocks and the first one, so the ring is load-imbalanced (a zigzag layout would fix
that, but it would reorder the sequence for every other op too).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.attention.masks import attention_mask, repeat_kv, valid_positions
from seqzoo.ops.checks import check_positive_int
from seqzoo.parallel.collectives import global_positions, reject_segments
from seqzoo.parallel.context import num_shards, shard_index

Array = jax.Array
SCHEDULES = ("ring", "all_gather")
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def _attend(state: tuple, queries: tuple, keys: tuple, pattern: dict, block_size: int) -> tuple:
    """``_attend_tile`` over the block's keys, ``block_size`` at a time (the last tile padded
    with invalid keys), each tile rematerialized in the backward pass."""
    length = keys[0].shape[1]
    if length <= block_size:
        return _attend_tile(state, queries, keys, pattern)
    tiles = -(-length // block_size)
    pad = tiles * block_size - length

    def split(a):  # (b, length, ...) -> (tiles, b, block_size, ...)
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(a.shape[0], tiles, block_size, *a.shape[2:]), 1, 0)

    @jax.checkpoint
    def step(state, tile):
        return _attend_tile(state, queries, tile, pattern), None

    state, _ = jax.lax.scan(step, state, jax.tree.map(split, keys))  # pads are invalid
    return state


def _attend_tile(state: tuple, queries: tuple, keys: tuple, pattern: dict) -> tuple:
    """One online-softmax update of ``state = (m, l, o)`` with a tile of keys.

    queries: ``(q (b, lq, h, d) scaled, positions (b, lq), valid (b, lq))``; keys: ``(k, v
    (b, lk, kv_heads, d), positions (b, lk), valid (b, lk))``. ``m, l: (b, h, lq)``, ``o: (b, lq,
    h, d)``, float32. The running max only stabilises (the result does not depend on it), so no
    gradient flows through it.
    """
    m, total, o = state
    q, q_pos, q_valid = queries
    k, v, k_pos, k_valid = keys
    heads = q.shape[2]
    k, v = repeat_kv(k.astype(_F32), heads), repeat_kv(v.astype(_F32), heads)
    allowed = attention_mask(q_pos, k_pos, q_valid=q_valid, k_valid=k_valid, **pattern)[:, None]
    s = jnp.where(allowed, jnp.einsum("bihd,bjhd->bhij", q, k, precision=_HI), -jnp.inf)
    m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(s, axis=-1)))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.where(allowed, jnp.exp(s - shift[..., None]), 0.0)
    w = jnp.exp(m - shift)  # 0 while m = -inf
    total = w * total + jnp.sum(p, axis=-1)
    o = jnp.swapaxes(w, 1, 2)[..., None] * o + jnp.einsum("bhij,bjhd->bihd", p, v, precision=_HI)
    return m_new, total, o


def sharded_attention(q: Array, k: Array, v: Array, *, axis: str, causal: bool = False,
                      window: int | None = None, num_sinks: int = 0, mask: Array | None = None,
                      segment_ids: Array | None = None, scale: float | None = None,
                      schedule: str = "ring", block_size: int = 1024) -> Array:
    """``seqzoo.ops.dot_product_attention`` on a sequence split over mesh axis ``axis``.

    Args:
      q: ``(batch, l, heads, d)``; k, v: ``(batch, l, kv_heads, d)``, this shard's positions.
      causal, window, num_sinks, mask, scale: as the op's (``mask: (batch, l)``, this shard's).
      schedule: ``"ring"`` or ``"all_gather"`` (see the module docstring).
      block_size: keys per tile inside a block (the scores' memory is ``batch * heads * l *
        block_size`` floats).
    Returns ``(batch, l, heads, d)`` in the inputs' dtype, computed in float32; padded query rows
    are 0.
    """
    reject_segments(segment_ids)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    check_positive_int(block_size, "block_size")
    b, length, heads, d = q.shape
    scale = d**-0.5 if scale is None else scale
    if mask is None:
        valid = jnp.ones((b, length), bool)
        positions = jnp.broadcast_to(global_positions(length, axis), (b, length))
    else:
        valid = mask.astype(bool)
        positions = valid_positions(valid, seq_axis=axis)
    queries = (q.astype(_F32) * scale, positions, valid)
    keys = (k, v, positions, valid)
    pattern = {"causal": causal, "window": window, "num_sinks": num_sinks}
    state = (
        jnp.full((b, heads, length), -jnp.inf, _F32),
        jnp.zeros((b, heads, length), _F32),
        jnp.zeros((b, length, heads, d), _F32),
    )
    if schedule == "all_gather":
        keys = jax.tree.map(lambda a: jax.lax.all_gather(a, axis, axis=1, tiled=True), keys)
        state = _attend(state, queries, keys, pattern, block_size)
    else:
        state = _ring(state, queries, keys, pattern, axis, causal, block_size)
    _, total, o = state
    o = o / jnp.swapaxes(jnp.where(total > 0, total, 1.0), 1, 2)[..., None]
    return o.astype(jnp.result_type(q, k, v))


def _ring(
    state: tuple, queries: tuple, keys: tuple, pattern: dict, axis: str, causal: bool, block: int
):
    """``P`` blocks: this shard's, then shard ``i - s``'s after ``s`` steps around the ring."""
    p, me = num_shards(axis), shard_index(axis)
    attend = functools.partial(_attend, queries=queries, pattern=pattern, block_size=block)
    state = attend(state, keys=keys)
    ring = [(j, (j + 1) % p) for j in range(p)]
    for step in range(1, p):
        keys = jax.tree.map(lambda a: jax.lax.ppermute(a, axis, ring), keys)
        if causal:  # keys of shard i - s < 0, i.e. a later shard, are all in the future
            state = jax.lax.cond(
                step <= me, lambda s, k: attend(s, keys=k), lambda s, k: s, state, keys
            )
        else:
            state = attend(state, keys=keys)
    return state
