"""Sequence-parallel short depthwise convolution: a halo exchange, then the local convolution.

A convolution reading ``left`` past and ``right`` future steps needs, on shard ``i``, the last
``left`` steps of shard ``i - 1`` and the first ``right`` of shard ``i + 1`` (zeros past the
ends, the convolution's own zero padding): two ``ppermute`` of ``(batch, K - 1, C)`` at most,
whatever the length. Shards must be at least ``max(left, right)`` long.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from seqzoo.parallel.collectives import reject_segments, with_halo

Array = jax.Array


def sharded_depthwise_conv(
    local: Callable,
    x: Array,
    w: Array,
    b: Array | None = None,
    *,
    left: int,
    axis: str,
    segment_ids: Array | None = None,
) -> Array:
    """``seqzoo.ops.conv.depthwise_conv`` on a sequence split over mesh axis ``axis``.

    ``local(x, w, b)`` is the op's local core with ``left`` bound (``depthwise_conv_local``).
    x: (batch, l, C) this shard's steps; w: (K, C); b: (C,) or None; left: past taps.
    Returns (batch, l, C) in x's dtype.
    """
    reject_segments(segment_ids)
    length = x.shape[1]
    extended = with_halo(x, axis, left, w.shape[0] - 1 - left)
    return local(extended, w, b)[:, left : left + length]
