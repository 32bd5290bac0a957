"""``seqzoo.kernels.operand_einsum``: products in a narrower dtype, gradients kept float32.

Against float32 einsums at HIGHEST: the output on the operands rounded to bf16, each gradient
on the cotangent rounded to bf16 and the other operand whole (split in ``hi + lo``), each apart;
what it replaces, autodiff through ``astype``, rounds each gradient to bf16 and takes it from
the rounded operand (so the check can tell the two apart).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.kernels.operand_einsum import operand_einsum

SPEC = "dblhk,dbhkv->dblhv"  # the segments' correction (a CPU runs its bf16 products)
HI = jax.lax.Precision.HIGHEST


def rounded(x, dtype=jnp.bfloat16):
    return x.astype(dtype).astype(jnp.float32)


def operands(seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(size=(1, 2, 24, 3, 16)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(1, 2, 3, 16, 8)), jnp.float32)
    do = jnp.asarray(rng.normal(size=(1, 2, 24, 3, 8)), jnp.float32)
    return a, b, do


def run(spec, a, b, do, dtype):
    """The einsum's output and its two gradients for the cotangent ``do``."""
    out, vjp = jax.vjp(lambda a, b: operand_einsum(spec, a, b, dtype), a, b)
    return out, vjp(do)


def rel(x, y):
    return float(jnp.linalg.norm((x - y).ravel()) / jnp.linalg.norm(y.ravel()))


def test_bf16_products_with_float32_gradients():
    a, b, do = operands()
    out, (da, db) = jax.jit(lambda a, b, do: run(SPEC, a, b, do, jnp.bfloat16))(a, b, do)
    assert out.dtype == da.dtype == db.dtype == jnp.float32
    want = jnp.einsum(SPEC, rounded(a), rounded(b), precision=HI)
    want_da = jnp.einsum("dblhv,dbhkv->dblhk", rounded(do), b, precision=HI)
    want_db = jnp.einsum("dblhk,dblhv->dbhkv", a, rounded(do), precision=HI)
    assert rel(out, want) < 1e-6
    assert rel(da, want_da) < 2e-5  # bf16 hi + lo: ~2^-16 of the operand
    assert rel(db, want_db) < 2e-5
    # autodiff through astype rounds each gradient to bf16: ~1e-3 from the same reference
    naive = jax.jit(jax.vjp(lambda a, b: jnp.einsum(SPEC, a.astype(jnp.bfloat16), b.astype(
        jnp.bfloat16), preferred_element_type=jnp.float32), a, b)[1])
    assert rel(naive(do)[0].astype(jnp.float32), want_da) > 1e-4


def test_float32_is_ieee():
    a, b, do = operands(1)
    out, grads = jax.jit(lambda a, b, do: run(SPEC, a, b, do, jnp.float32))(a, b, do)
    ref, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(SPEC, a, b, precision=HI), a, b)
    assert rel(out, ref) < 1e-6
    for got, want in zip(grads, ref_vjp(do), strict=True):
        assert rel(got, want) < 1e-6


def test_an_index_summed_within_one_operand_is_refused():
    a, b, _ = operands()
    with pytest.raises(ValueError, match="in neither"):
        operand_einsum("dblhk,dbhkv->dbhv", a, b, jnp.bfloat16)
