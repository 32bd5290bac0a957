"""Matrix products whose float32 operands keep their accuracy on 16-bit matmul units.

A float32 operand ``x`` rounded to bf16 loses everything below 2^-8 of it. Split instead as

    x = hi + lo,   hi = round(x),   lo = round(x - hi)         (both in the 16-bit dtype)

the product ``a b`` is ``hi_a hi_b + lo_a hi_b + hi_a lo_b`` (``lo_a lo_b`` is below float32's
own rounding and dropped): two or three matmuls on tensor cores / the MXU with a rounding error
of ~eps^2 instead of eps (bf16: 2^-16 instead of 2^-8). Operands already in the 16-bit dtype are
exact and never split; with ``dtype`` float32 nothing is split. The same sum serves a Triton
kernel, a Mosaic-TPU kernel and XLA: ``product(a_part, b_part)`` is their matmul with a float32
result.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def parts(x: Array, dtype, split: bool) -> list[Array]:
    """``[x in dtype]``, or with ``split`` (x wider than a 16-bit ``dtype``) ``[hi, lo]``."""
    hi = x.astype(dtype)
    if not split or dtype == jnp.float32 or x.dtype == dtype:
        return [hi]
    return [hi, (x - hi.astype(x.dtype)).astype(dtype)]


def split_product(product: Callable[[Array, Array], Array], a: Array, b: Array, dtype, *,
                  split: bool) -> Array:
    """``product(a, b)`` with both operands in ``dtype``; ``split``: as the module docstring,
    the sum of the parts' products but ``lo x lo``."""
    out = None
    for i, a_part in enumerate(parts(a, dtype, split)):
        for j, b_part in enumerate(parts(b, dtype, split)):
            if i + j < 2:  # lo x lo is below float32's own rounding
                term = product(a_part, b_part)
                out = term if out is None else out + term
    return out
