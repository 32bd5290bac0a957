"""An einsum whose products run in a narrower dtype and whose gradients stay float32.

For float32 ``a``, ``b`` and a matmul dtype ``dtype`` (bf16, or float32 for IEEE products):

    out = einsum(spec, round(a), round(b))                       float32 accumulation
    d a = einsum(out_spec, b_spec -> a_spec)(round(do), split(b))          float32
    d b = einsum(a_spec, out_spec -> b_spec)(split(a), round(do))          float32

``round`` rounds to ``dtype`` (exact for float32 copies of values of it); ``split`` keeps a
float32 operand's accuracy as ``hi + lo`` in ``dtype`` (``split_product``: two products), as
the chunked kernels' gradient passes do with their float32 states. Autodiff through
``a.astype(dtype)`` would round each gradient to ``dtype`` (a transposed product's result takes
its operand's dtype) before the caller adds it to others, and take it from the rounded
operand; here it stays float32, so a caller whose other gradients are float32 rounds the sum
once (``seqzoo.kernels.chunked_segments``). Every index of an operand must appear in the other
operand or the output (the transposed products then exist as einsums).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from seqzoo.kernels.split_product import split_product

Array = jax.Array
_F32 = jnp.float32


def _specs(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.replace(" ", "").split("->")
    a, b = inputs.split(",")
    for operand, other in ((a, b), (b, a)):
        if set(operand) - set(other) - set(out):
            raise ValueError(f"{spec!r}: an index of {operand!r} is in neither {other!r} nor "
                             f"the output")
    return a, b, out


def _product(spec: str, a: Array, b: Array, dtype, split: bool = False) -> Array:
    precision = lax.Precision.HIGHEST if dtype == _F32 else None

    def product(a_part, b_part):
        return jnp.einsum(spec, a_part, b_part, precision=precision,
                          preferred_element_type=_F32)

    return split_product(product, a, b, dtype, split=split)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _einsum(spec: str, a: Array, b: Array, dtype) -> Array:
    return _product(spec, a, b, dtype)


def _einsum_forward(spec, a, b, dtype):
    return _product(spec, a, b, dtype), (a, b)


def _einsum_backward(spec, dtype, res, d_out):
    a, b = res
    sa, sb, so = _specs(spec)
    d_out = d_out.astype(dtype)  # rounded, never split
    return (_product(f"{so},{sb}->{sa}", d_out, b, dtype, split=True),
            _product(f"{sa},{so}->{sb}", a, d_out, dtype, split=True))


_einsum.defvjp(_einsum_forward, _einsum_backward)


def operand_einsum(spec: str, a: Array, b: Array, dtype) -> Array:
    """``einsum(spec, a, b)`` float32, the products' operands in ``dtype`` (module docstring);
    ``a``, ``b`` are taken as float32, their gradients float32."""
    _specs(spec)
    return _einsum(spec, a.astype(_F32), b.astype(_F32), jnp.dtype(dtype))
