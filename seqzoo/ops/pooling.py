"""Masked max pooling along the sequence (PoNet's local and segment max-pooling), channel-last.

    local:    y[t, c] = max_{j : |j - t| <= w // 2, mask[j]} x[j, c]           (window w, odd)
    segment:  y[t, c] = max_{j : seg[j] = seg[t], mask[j]} x[j, c]

Padded positions take part in no maximum; a position whose window or segment holds no valid
position gets 0 (only padded positions can be in that case, since a valid position is in its
own window and segment). The gradient of a maximum goes to the position that attains it.

Max pooling is a selection, so each output is ``x`` at one position: ``y[:, c] = S_c x[:, c]``
with the 0/1 matrix ``S_c[t, j] = [j = argmax]``. ``local_max_selection`` /
``segment_max_selection`` build those matrices (ties, which have probability zero for continuous
inputs, go to the first position; the maxima themselves split a tie's gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.ops.checks import check_positive_int

Array = jax.Array
_F32 = jnp.float32


def _check(x: Array, mask: Array) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must be (batch, length, channels), got shape {x.shape}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be (batch, length)={x.shape[:2]}, got {mask.shape}")


def _check_window(window: int) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 != 1:
        raise ValueError(f"window must be an odd positive int, got {window!r}")


def fixed_segment_ids(length: int, segment_size: int | None) -> np.ndarray:
    """Equal-length segments ``t // segment_size`` (PoNet's LRA ``get_segment_index`` with
    ``segment_size = L // segment_num + 1``); None: one segment. Returns ``(length,)`` int32."""
    if segment_size is None:
        return np.zeros(length, np.int32)
    check_positive_int(segment_size, "segment_size")
    return (np.arange(length) // segment_size).astype(np.int32)


def _check_segments(segment_ids: Array, x: Array) -> Array:
    segment_ids = jnp.asarray(segment_ids)
    if segment_ids.ndim == 1:
        segment_ids = jnp.broadcast_to(segment_ids, x.shape[:2])
    if segment_ids.shape != x.shape[:2]:
        raise ValueError(
            f"segment_ids must be (length,) or (batch, length)={x.shape[:2]}, "
            f"got {segment_ids.shape}"
        )
    return segment_ids


def masked_local_max(x: Array, mask: Array, window: int = 3) -> Array:
    """``y[t] = max`` of ``x`` over the valid positions of ``[t - w//2, t + w//2]``.

    x: (batch, length, C); mask: (batch, length) bool; window: odd (PyTorch
    ``MaxPool1d(w, stride=1, padding=w // 2)``). Returns float32 (batch, length, C).
    """
    _check(x, mask)
    _check_window(window)
    half, length = window // 2, x.shape[1]
    xm = jnp.where(mask[..., None], x.astype(_F32), -jnp.inf)
    xp = jnp.pad(xm, ((0, 0), (half, half), (0, 0)), constant_values=-jnp.inf)
    y = xp[:, :length]
    for k in range(1, window):
        y = jnp.maximum(y, xp[:, k : k + length])
    return jnp.where(jnp.isfinite(y), y, 0.0)


def masked_segment_max(x: Array, mask: Array, segment_ids: Array) -> Array:
    """``y[t] = max`` of ``x`` over the valid positions of ``t``'s segment.

    x: (batch, length, C); mask: (batch, length) bool; segment_ids: (length,) or
    (batch, length) int in ``[0, length)`` (any layout, not only contiguous segments).
    Returns float32 (batch, length, C).
    """
    _check(x, mask)
    segment_ids = _check_segments(segment_ids, x)
    batch, length, channels = x.shape
    xm = jnp.where(mask[..., None], x.astype(_F32), -jnp.inf)
    flat = (segment_ids + length * jnp.arange(batch)[:, None]).reshape(-1)
    seg_max = jax.ops.segment_max(
        xm.reshape(-1, channels), flat, num_segments=batch * length, indices_are_sorted=False
    )
    y = seg_max[flat].reshape(x.shape)
    return jnp.where(jnp.isfinite(y), y, 0.0)


def masked_fixed_segment_max(x: Array, mask: Array, segment_size: int | None) -> Array:
    """``masked_segment_max`` for equal-length segments ``t // segment_size`` (None: the whole
    sequence), by a reshape: O(L C). Returns float32 (batch, length, C)."""
    _check(x, mask)
    batch, length, channels = x.shape
    size = length if segment_size is None else segment_size
    fixed_segment_ids(length, size)  # validates segment_size
    n = -(-length // size)
    xm = jnp.where(mask[..., None], x.astype(_F32), -jnp.inf)
    xm = jnp.pad(xm, ((0, 0), (0, n * size - length), (0, 0)), constant_values=-jnp.inf)
    seg_max = jnp.max(xm.reshape(batch, n, size, channels), axis=2, keepdims=True)
    y = jnp.broadcast_to(seg_max, (batch, n, size, channels)).reshape(batch, n * size, channels)
    y = y[:, :length]
    return jnp.where(jnp.isfinite(y), y, 0.0)


def _selection(x: Array, allowed: Array) -> Array:
    """One-hot ``argmax_j`` of ``x[j, c]`` over ``allowed[b, t, j]``: (batch, C, L, L) float32;
    a row with nothing allowed is 0."""
    x = jax.lax.stop_gradient(x.astype(_F32))
    scores = jnp.where(allowed[:, None], jnp.moveaxis(x, 2, 1)[:, :, None, :], -jnp.inf)
    pick = jax.nn.one_hot(jnp.argmax(scores, axis=-1), x.shape[1], dtype=_F32)
    return jnp.where(jnp.any(allowed, axis=-1)[:, None, :, None], pick, 0.0)


def local_max_selection(x: Array, mask: Array, window: int = 3) -> Array:
    """``S[b, c, t, j] = 1`` where ``j`` attains ``masked_local_max(x, mask, window)[b, t, c]``,
    else 0: (batch, C, L, L) float32, so that ``masked_local_max = S x`` per channel."""
    _check(x, mask)
    _check_window(window)
    pos = np.arange(x.shape[1])
    near = jnp.asarray(np.abs(pos[:, None] - pos[None, :]) <= window // 2)
    return _selection(x, near[None] & mask[:, None, :])


def segment_max_selection(x: Array, mask: Array, segment_ids: Array) -> Array:
    """``S[b, c, t, j] = 1`` where ``j`` attains ``masked_segment_max(x, mask, ids)[b, t, c]``:
    (batch, C, L, L) float32."""
    _check(x, mask)
    segment_ids = _check_segments(segment_ids, x)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return _selection(x, same & mask[:, None, :])
