"""Mamba-2's SSD and Hydra's quasiseparable mixer on the chunked linear-attention kernels.

Variants: ``xla`` (the ops' chunked XLA path, ``impl="chunked"``, the reference) and ``pallas``
(``impl="pallas"``: ``seqzoo.ops.ssd.pallas_gpu``). Inputs as the layers pass them: x, B, C in
the layer's dtype, dt after softplus in f32, A = -1 .. -heads, one group of B and C. Forward,
and forward+backward as the gradients of ``sum(y * g)`` w.r.t. x, dt, B and C. Shapes
(batch, length, heads, headdim, state): Hydra's and Mamba-2's at ListOps in
``experiments/repro`` (32 x 2000, 3 heads of 64, state 64; f32 as run there, and bf16), and a
long bf16 one. The floor is the memory floor of x, dt, B, C, y (forward) plus g and the four
gradients (backward).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from kernel_harness import Case, floor_ms, jax_gradients

from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.ssd import ssd

LISTOPS = (32, 2000, 3, 64, 64)
SHAPES = [(LISTOPS, jnp.float32), (LISTOPS, jnp.bfloat16), ((2, 4096, 32, 64, 128), jnp.bfloat16)]
QUICK = [((2, 40, 2, 8, 4), jnp.float32)]
RTOL = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2}


@functools.cache
def inputs(shape, dtype, bidirectional):
    """Arguments of the op (x, dt(s), A, B(s), C(s)) and a cotangent for its output."""
    b, l, h, p, n = shape
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 8))

    def normal(shape, dtype=dtype):
        return jax.random.normal(next(keys), shape, jnp.float32).astype(dtype)

    def step():  # softplus(dt_bias + noise) as the layers discretise it, around 0.01
        return jax.nn.softplus(normal((b, l, h), jnp.float32) - 4.6)

    x, A = normal((b, l, h, p)), -jnp.arange(1, h + 1, dtype=jnp.float32)
    if bidirectional:  # quasiseparable(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd)
        args = (x, step(), step(), A, *(normal((b, l, 1, n)) for _ in range(4)))
    else:  # ssd(x, dt, A, B, C)
        args = (x, step(), A, normal((b, l, 1, n)), normal((b, l, 1, n)))
    return args, normal((b, l, h, p))


def _variant(op, shape, dtype, bidirectional, mode):
    args, g = inputs(shape, dtype, bidirectional)
    if mode == "fwd":
        return functools.partial(jax.jit(op), *args)
    differentiated = (0, 1, 2, 4, 5, 6, 7) if bidirectional else (0, 1, 3, 4)
    return jax_gradients(op, args, g, differentiated)


def case(shape, dtype, bidirectional, mode) -> Case:
    fn = quasiseparable if bidirectional else ssd
    variants = {
        name: _variant(functools.partial(fn, impl=impl), shape, dtype, bidirectional, mode)
        for name, impl in (("xla", "chunked"), ("pallas", "pallas"))
    }
    b, l, h, p, n = shape
    size = jnp.dtype(dtype).itemsize
    dirs = 2 if bidirectional else 1
    tensors = size * b * l * h * p * 2 + dirs * (4 * b * l * h + size * 2 * b * l * n)
    bytes_moved = tensors if mode == "fwd" else 2 * tensors + size * b * l * h * p
    op = "quasiseparable" if bidirectional else "ssd"
    label = f"B{b} L{l} H{h} P{p} N{n} {jnp.dtype(dtype).name}"
    return Case(
        f"{op} {mode}",
        label,
        variants,
        baseline="xla",
        floor_ms=floor_ms(bytes_moved),
        rtol=RTOL[dtype],
    )


def cases(quick: bool) -> list[Case]:
    return [case(shape, dtype, bidirectional, mode)
            for shape, dtype in (QUICK if quick else SHAPES)
            for bidirectional in (True, False)
            for mode in ("fwd", "fwd+bwd")]
