"""Long convolutions y = k * u by FFT, causal and bidirectional (S4's ``FFTConv``).

Zero-padding both signals to n >= L + K - 1 turns the circular FFT convolution into the
linear one; the bidirectional kernel packs its backward half at the end of the same buffer, as
``state-spaces/s4`` ``src/models/sequence/kernels/fftconv.py`` does.

Memory: the backward passes of ``causal_conv`` and ``bidirectional_conv`` keep only ``u``, the
kernels and ``D``, and recompute the transforms block by block of batch rows
(``seqzoo.ops.lean_grad.blockwise``); autodiff would keep the zero-padded input's spectrum and
the inverse transform of length n, four float32 copies of ``u``'s size per call.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import blockwise

Array = jax.Array


def _circular_conv(u: Array, k: Array, n: int) -> Array:
    """First L outputs of the length-n circular convolution; u: (..., L), k: (..., <= n)."""
    y = jnp.fft.irfft(jnp.fft.rfft(u, n=n) * jnp.fft.rfft(k, n=n), n=n)
    return y[..., : u.shape[-1]]


def fft_causal_conv(u: Array, k: Array) -> Array:
    """y_t = sum_{j <= t} k_{t-j} u_j along the last axis (taps k_m = 0 for m >= K).

    u: (..., L), k: (..., K); leading axes broadcast. Taps past L cannot reach an output and
    are dropped. Computed in float32 via FFTs of length L + min(K, L); returns float32 (..., L).
    """
    u = jnp.asarray(u, jnp.float32)
    k = jnp.asarray(k, jnp.float32)[..., : u.shape[-1]]
    return _circular_conv(u, k, u.shape[-1] + k.shape[-1])


def _check_conv_args(u: Array, k: Array, D: Array | None, k_name: str = "k") -> None:
    if jnp.ndim(u) != 3:
        raise ValueError(f"u must be (batch, length, h), got shape {jnp.shape(u)}")
    if jnp.ndim(k) < 2 or jnp.shape(k)[-2] != jnp.shape(u)[-1] or jnp.shape(k)[-1] < 1:
        raise ValueError(
            f"{k_name} must be (*channels, h, k_len) with h={jnp.shape(u)[-1]}, "
            f"got shape {jnp.shape(k)}"
        )
    if D is not None and jnp.shape(D) != jnp.shape(k)[:-1]:
        raise ValueError(f"D must be (*channels, h)={jnp.shape(k)[:-1]}, got shape {jnp.shape(D)}")


def _conv_layout(u: Array, k_ndim: int, D: Array | None, conv: Callable[[Array], Array]) -> Array:
    """Run a last-axis convolution on u: (batch, L, h) -> (batch, L, *channels, h), add D u."""
    u = jnp.asarray(u)
    batch, length, h = u.shape
    channel_axes = (1,) * (k_ndim - 2)
    u32 = jnp.asarray(u, jnp.float32)
    y = jnp.moveaxis(conv(jnp.moveaxis(u32, 1, -1).reshape(batch, *channel_axes, h, length)), -1, 1)
    if D is not None:
        y = y + u32.reshape(batch, length, *channel_axes, h) * jnp.asarray(D, jnp.float32)
    return y.astype(u.dtype)


def causal_conv(u: Array, k: Array, D: Array | None = None, *, lean: bool = True) -> Array:
    """y_t = sum_{j <= t} k_{t-j} u_j + D u_t per feature h (S4 eq. 5 plus the skip D).

    u: (batch, length, h).
    k: (*channels, h, k_len), e.g. (h, k_len) or S4's (channels, h, k_len); any k_len (taps
       past ``length`` are dropped, missing taps are zero).
    D: (*channels, h) or None.
    lean: the backward pass keeps only the arguments (see the module docstring); False: plain
       autodiff (for a caller that recomputes the convolution in its own backward pass).

    Computed in float32 by FFT; returns (batch, length, *channels, h) in u's dtype.
    """
    _check_conv_args(u, k, D)
    return (_lean_causal_conv if lean else _causal_conv)(u, (k, D))


def _causal_conv(u: Array, shared: tuple) -> Array:
    k, D = shared
    return _conv_layout(u, jnp.ndim(k), D, lambda u_t: fft_causal_conv(u_t, k))


_lean_causal_conv = blockwise(_causal_conv)


def bidirectional_conv(
    u: Array, k_forward: Array, k_backward: Array, D: Array | None = None, *, lean: bool = True
) -> Array:
    """y_t = sum_{j <= t} kf_{t-j} u_j + sum_{j > t} kb_{j-t-1} u_j + D u_t (S4 bidirectional).

    As the official code, the backward kernel starts one step ahead (kb_0 weights u_{t+1}, no
    second lag-0 tap): both halves are placed in one buffer [kf, 0 .. 0, reversed kb] of
    length k_len + length and convolved circularly. s4 draws both from one kernel of
    2 x channels channels, split as ``(s c)``: the first half is k_forward.

    u: (batch, length, h); k_forward, k_backward: (*channels, h, k_len) (taps past ``length``
    are dropped); D: (*channels, h) or None; lean: as ``causal_conv``.
    Computed in float32 by FFT; returns (batch, length, *channels, h) in u's dtype.
    """
    _check_conv_args(u, k_forward, D, k_name="k_forward")
    if jnp.shape(k_backward) != jnp.shape(k_forward):
        raise ValueError(
            f"k_backward must match k_forward's shape {jnp.shape(k_forward)}, "
            f"got {jnp.shape(k_backward)}"
        )
    return (_lean_bidirectional_conv if lean else _bidirectional_conv)(
        u, (k_forward, k_backward, D)
    )


def _bidirectional_conv(u: Array, shared: tuple) -> Array:
    k_forward, k_backward, D = shared
    length = jnp.shape(u)[1]
    kf = jnp.asarray(k_forward, jnp.float32)[..., :length]
    kb = jnp.asarray(k_backward, jnp.float32)[..., :length]
    gap = jnp.zeros((*kf.shape[:-1], length - kf.shape[-1]), jnp.float32)
    full_kernel = jnp.concatenate([kf, gap, jnp.flip(kb, -1)], axis=-1)
    n = length + kf.shape[-1]
    return _conv_layout(u, kf.ndim, D, lambda u_t: _circular_conv(u_t, full_kernel, n))


_lean_bidirectional_conv = blockwise(_bidirectional_conv)
