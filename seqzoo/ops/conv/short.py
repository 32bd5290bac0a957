"""Short depthwise convolutions along the sequence (Mamba, Mamba-2, Hydra), channel-last.

    y[t, c] = b[c] + sum_k w[k, c] x[t + k - left, c]       x zero outside [0, L)

``left = K - 1`` is the causal convolution of Mamba / Mamba-2 (PyTorch ``Conv1d(groups=C,
padding=K - 1)`` cut to the first L outputs; ``w[k, c]`` is torch's ``weight[c, 0, k]``, so the
last tap ``w[K - 1]`` weighs the current token). ``left = K // 2`` with odd K is the "same"
convolution of Hydra (``padding=K // 2``).

With ``segment_ids`` (packed sequences) a tap that reaches into another segment reads zero, so
each segment is convolved as if it were alone (zero padded at its own edges).

``conv_step`` is the causal convolution one token at a time (decoding): its buffer holds the
previous K - 1 inputs, ``(batch, C, K - 1)``, oldest first (the official ``conv_state`` without
the current token).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.conv import sequence_parallel
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
_F32 = jnp.float32


def _check(x: Array, w: Array, b: Array | None, segment_ids: Array | None) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must be (batch, length, channels), got shape {x.shape}")
    if w.ndim != 2 or w.shape[1] != x.shape[2] or w.shape[0] < 1:
        raise ValueError(f"w must be (kernel_size, channels={x.shape[2]}), got {w.shape}")
    if b is not None and b.shape != (x.shape[2],):
        raise ValueError(f"b must be (channels,)=({x.shape[2]},), got {b.shape}")
    if segment_ids is not None and segment_ids.shape != x.shape[:2]:
        raise ValueError(
            f"segment_ids must be (batch, length)={x.shape[:2]}, got {segment_ids.shape}"
        )


def depthwise_conv(
    x: Array,
    w: Array,
    b: Array | None = None,
    *,
    left: int,
    segment_ids: Array | None = None,
    seq_axis: str | None = None,
) -> Array:
    """``y[t, c] = b[c] + sum_k w[k, c] x[t + k - left, c]``, zeros outside ``[0, L)``.

    x: (batch, length, C). w: (K, C). b: (C,) or None. left: taps reaching into the past
    (0 <= left < K). segment_ids: (batch, length) int; taps outside position t's segment read 0.
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
    the active ``seqzoo.parallel.sequence_parallel`` context): a halo exchange with the
    neighbouring shards first.
    Returns (batch, length, C) in x's dtype, accumulated in float32.
    """
    _check(x, w, b, segment_ids)
    size = w.shape[0]
    if not 0 <= left < size:
        raise ValueError(f"left must be in [0, kernel_size={size}), got {left}")
    local = functools.partial(depthwise_conv_local, left=left)
    axis = sequence_axis(seq_axis)
    if axis is None:
        return local(x, w, b, segment_ids=segment_ids)
    # sequence parallel: read the neighbours' edge steps, then convolve
    return sequence_parallel.sharded_depthwise_conv(local, x, w, b, left=left, axis=axis,
                                                    segment_ids=segment_ids)


def depthwise_conv_local(x: Array, w: Array, b: Array | None = None, *, left: int,
                         segment_ids: Array | None = None) -> Array:
    """``depthwise_conv`` on unsplit data (no validation, no sequence axis: what
    ``sequence_parallel.py`` runs on each shard's extended steps)."""
    length, size = x.shape[1], w.shape[0]
    right = size - 1 - left
    xp = jnp.pad(x.astype(_F32), ((0, 0), (left, right), (0, 0)))
    if segment_ids is not None:
        sp = jnp.pad(segment_ids, ((0, 0), (left, right)), constant_values=-1)
    y = jnp.zeros(x.shape, _F32)
    for k in range(size):
        tap = xp[:, k : k + length]
        if segment_ids is not None and k != left:
            same = sp[:, k : k + length] == segment_ids
            tap = jnp.where(same[..., None], tap, 0.0)
        y = y + w[k].astype(_F32) * tap
    if b is not None:
        y = y + b.astype(_F32)
    return y.astype(x.dtype)


def causal_depthwise_conv(
    x: Array,
    w: Array,
    b: Array | None = None,
    *,
    segment_ids: Array | None = None,
    seq_axis: str | None = None,
) -> Array:
    """Causal depthwise convolution ``y[t] = b + sum_k w[k] x[t - (K - 1) + k]`` (Mamba's conv1d).

    x: (batch, length, C). w: (K, C) (torch ``weight[:, 0, :].T``). b: (C,) or None.
    segment_ids: (batch, length) int; the convolution does not reach across a segment start.
    seq_axis: as ``depthwise_conv``'s. Returns (batch, length, C) in x's dtype, accumulated in
    float32.
    """
    return depthwise_conv(
        x, w, b, left=w.shape[0] - 1, segment_ids=segment_ids, seq_axis=seq_axis
    )


def centered_depthwise_conv(
    x: Array,
    w: Array,
    b: Array | None = None,
    *,
    segment_ids: Array | None = None,
    seq_axis: str | None = None,
) -> Array:
    """Non-causal "same" depthwise convolution, odd K: ``y[t] = b + sum_k w[k] x[t + k - K//2]``
    (Hydra's conv1d and the structured matrix mixers'), with optional ``segment_ids`` and
    ``seq_axis`` (as ``depthwise_conv``'s)."""
    if w.shape[0] % 2 != 1:
        raise ValueError(f"kernel size must be odd for a 'same' convolution, got {w.shape[0]}")
    return depthwise_conv(
        x, w, b, left=w.shape[0] // 2, segment_ids=segment_ids, seq_axis=seq_axis
    )


def conv_init_buffer(batch: int, channels: int, kernel_size: int, dtype=_F32) -> Array:
    """The empty decoding buffer ``(batch, channels, kernel_size - 1)`` (zeros: the causal
    convolution's zero padding before the first token)."""
    return jnp.zeros((batch, channels, kernel_size - 1), dtype)


def conv_step(buffer: Array, x_t: Array, w: Array, b: Array | None = None) -> tuple[Array, Array]:
    """One token of ``causal_depthwise_conv``.

    buffer: (batch, C, K - 1), the previous K - 1 inputs, oldest first. x_t: (batch, C).
    w: (K, C). b: (C,) or None.
    Returns (new buffer (its last entry is x_t), y_t: (batch, C) in x_t's dtype, f32 sums).
    """
    if x_t.ndim != 2:
        raise ValueError(f"x_t must be (batch, channels), got shape {x_t.shape}")
    size, channels = w.shape
    want = (x_t.shape[0], channels, size - 1)
    if buffer.shape != want or x_t.shape[1] != channels:
        raise ValueError(
            f"buffer must be (batch, channels, kernel_size - 1)={want} and x_t (batch, channels);"
            f" got {buffer.shape} and {x_t.shape}"
        )
    window = jnp.concatenate([buffer.astype(_F32), x_t.astype(_F32)[..., None]], axis=-1)
    y = jnp.zeros(x_t.shape, _F32)
    for k in range(size):  # the same order of sums as ``depthwise_conv``
        y = y + w[k].astype(_F32) * window[..., k]
    if b is not None:
        y = y + b.astype(_F32)
    return window[..., 1:].astype(buffer.dtype), y.astype(x_t.dtype)
