"""Attention's tokamax backend: flash attention from tokamax, the JAX team's kernel library.

``tokamax.dot_product_attention`` (an optional dependency: ``pip install "seqzoo[tokamax]"``,
Python >= 3.12, jax >= 0.11.1) runs a Pallas flash-attention kernel (Mosaic GPU on Hopper,
else Triton), memory linear in length, for float32 as well as bf16 / fp16 inputs, causal or
not, one- and two-sided sliding windows, GQA. Padding is given as lengths of the valid tokens
moved to the front, as for cuDNN (``valid_first.with_lengths``). Float32 inputs use
full-precision matmuls (``precision=HIGHEST``), as the XLA path does; 16-bit inputs accumulate
in float32.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp

from seqzoo.ops.attention.valid_first import with_lengths

Array = jax.Array
KERNELS = ("mosaic", "triton")  # tokamax's implementations, in the order tried


@functools.cache
def tokamax_installed() -> bool:
    """Whether ``tokamax`` can be imported here."""
    return importlib.util.find_spec("tokamax") is not None


def tokamax_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    window: int | None,
    mask: Array | None,
    scale: float | None,
    kernels: tuple[str, ...] = KERNELS,
) -> Array:
    """``tokamax.dot_product_attention`` on our semantics; shapes as ``fused_attention``.

    kernels: tokamax's ``implementation`` names, the first that takes the inputs runs.
    Raises ``ImportError`` saying how to install tokamax where it is missing.
    """
    if not tokamax_installed():
        raise ImportError('impl="tokamax" needs tokamax: pip install "seqzoo[tokamax]" '
                          "(Python >= 3.12, jax >= 0.11.1)")
    import tokamax  # an optional dependency, imported only where it is asked for

    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    attend = functools.partial(tokamax.dot_product_attention, precision=precision,
                               implementation=kernels)
    return with_lengths(attend, q, k, v, causal=causal, window=window, mask=mask, scale=scale)
