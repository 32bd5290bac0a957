"""Dilated causal convolutions along the sequence (TCN layers), channel-last, and their step.

    y[t, o] = b[o] + sum_{k < K} sum_c w[k, c, o] x[t - (K - 1 - k) f, c]      (x = 0 before t = 0)

with kernel size K and dilation f (PyTorch ``Conv1d(dilation=f, padding=(K - 1) f)`` cut to the
first L outputs; ``w[k, c, o]`` is torch's ``weight[o, c, k]``: the last tap weighs the current
token). A depthwise kernel ``w: (K, C)`` convolves each channel alone (``groups=C``). The receptive
field is ``(K - 1) f + 1`` positions. Cost O(L K C) (depthwise) or O(L K C^2), no FFT.

``dilated_conv_step`` is the same one token at a time: its buffer holds the previous
``(K - 1) f`` inputs, ``(batch, (K - 1) f, C)``, oldest first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.checks import check_positive_int

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def _check(w: Array, b: Array | None, channels: int, dilation: int) -> None:
    check_positive_int(dilation, "dilation")
    if w.ndim not in (2, 3) or w.shape[0] < 1 or w.shape[1] != channels:
        raise ValueError(
            f"w must be (kernel_size, channels={channels}) (depthwise) or "
            f"(kernel_size, channels, out_channels), got {w.shape}"
        )
    out = w.shape[-1]
    if b is not None and b.shape != (out,):
        raise ValueError(f"b must be (out_channels,)=({out},), got {b.shape}")


def _tap(w_k: Array, x: Array) -> Array:
    """One tap: depthwise ``w_k: (C,)`` scales, a full ``w_k: (C, O)`` mixes channels."""
    if w_k.ndim == 1:
        return w_k.astype(_F32) * x
    return jnp.einsum("...c,co->...o", x, w_k.astype(_F32), precision=_HI)


def dilated_causal_conv(x: Array, w: Array, b: Array | None = None, *, dilation: int = 1) -> Array:
    """``y[t] = b + sum_k w[k] x[t - (K - 1 - k) dilation]`` (zeros before the start).

    x: (batch, length, C). w: (K, C) depthwise or (K, C, O). b: (O,) or None.
    Returns float32 (batch, length, O).
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (batch, length, channels), got shape {x.shape}")
    _check(w, b, x.shape[2], dilation)
    size, length = w.shape[0], x.shape[1]
    reach = (size - 1) * dilation
    xp = jnp.pad(x.astype(_F32), ((0, 0), (reach, 0), (0, 0)))
    y = None
    for k in range(size):
        start = k * dilation
        term = _tap(w[k], xp[:, start : start + length])
        y = term if y is None else y + term
    if b is not None:
        y = y + b.astype(_F32)
    return y


def conv_buffer(batch: int, channels: int, kernel_size: int, dilation: int) -> Array:
    """The empty step buffer ``(batch, (kernel_size - 1) dilation, channels)`` float32."""
    return jnp.zeros((batch, (kernel_size - 1) * dilation, channels), _F32)


def dilated_conv_step(
    buffer: Array, x_t: Array, w: Array, b: Array | None = None, *, dilation: int = 1
) -> tuple[Array, Array]:
    """One token of ``dilated_causal_conv``.

    buffer: (batch, (K - 1) dilation, C), the previous inputs, oldest first. x_t: (batch, C).
    Returns (the buffer shifted by one with x_t last, y_t: (batch, O) float32), with the taps
    summed in the order of ``dilated_causal_conv``.
    """
    if x_t.ndim != 2:
        raise ValueError(f"x_t must be (batch, channels), got shape {x_t.shape}")
    _check(w, b, x_t.shape[1], dilation)
    size = w.shape[0]
    reach = (size - 1) * dilation
    if buffer.shape != (x_t.shape[0], reach, x_t.shape[1]):
        raise ValueError(
            f"buffer must be (batch, (kernel_size - 1) dilation, channels)="
            f"{(x_t.shape[0], reach, x_t.shape[1])}, got {buffer.shape}"
        )
    window = jnp.concatenate([buffer.astype(_F32), x_t.astype(_F32)[:, None]], axis=1)
    y = None
    for k in range(size):
        term = _tap(w[k], window[:, k * dilation])
        y = term if y is None else y + term
    if b is not None:
        y = y + b.astype(_F32)
    return window[:, 1:], y
