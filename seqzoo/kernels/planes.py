"""Complex numbers as planes: a value is a tuple ``(re,)`` (real) or ``(re, im)`` (complex) of
real arrays, so kernels whose backends have no complex type (Triton, Mosaic-TPU) run the same
arithmetic for both."""

from __future__ import annotations

import jax.numpy as jnp


def mul(x: tuple, y: tuple, conj_x: bool = False) -> tuple:
    """x * y, or conj(x) * y."""
    if len(x) == 1:
        return (x[0] * y[0],)
    (xr, xi), (yr, yi) = x, y
    if conj_x:
        xi = -xi
    return (xr * yr - xi * yi, xr * yi + xi * yr)


def add(x: tuple, y: tuple) -> tuple:
    return tuple(p + q for p, q in zip(x, y, strict=True))


def one(like: tuple) -> tuple:
    """1 in the planes of ``like``."""
    return (jnp.ones_like(like[0]),) + tuple(jnp.zeros_like(p) for p in like[1:])


def split(x, complex_: bool) -> tuple:
    """An array as planes."""
    return (jnp.real(x), jnp.imag(x)) if complex_ else (x,)
