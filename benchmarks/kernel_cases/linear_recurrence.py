"""The diagonal linear recurrence h_t = a_t h_{t-1} + b_t (issue 7, kernel 1).

Variants: ``xla`` (the op's ``lax.associative_scan``, the reference) and ``pallas``
(``impl="pallas"``, the kernel's default launch), plus launch sweeps of the kernel (``w`` channels
per program, ``c`` rows per chunk, ``n`` warps). Forward, and forward+backward as the gradients
of ``sum(h * g)`` w.r.t. a and b. The floor is the memory floor: a, b, h (forward) plus a, h, g,
da, db (backward) in the inputs' dtype. Also: complex, bf16, reversed and ragged shapes
(correctness on the GPU), and a sweep of T = 1k .. 64k at a fixed B*T*D (time per token; past
4k, where the default splits the sequence into segments, also the unsplit walk).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from kernel_harness import Case, floor_ms, jax_gradients

from seqzoo.ops.scan import linear_recurrence
from seqzoo.ops.scan import pallas_gpu_recurrence as kernel

MAIN = (8, 4096, 2048)
SCALING = [(32, 1024, 2048), (16, 2048, 2048), (8, 4096, 2048), (4, 8192, 2048),
           (2, 16384, 2048), (1, 32768, 2048), (1, 65536, 1024)]
# Launches tried on the main shape: (width, chunk, num_warps).
SWEEP = {"fwd": [(32, 32, 1), (64, 32, 2), (32, 16, 1), (64, 16, 2), (128, 32, 4),
                 (128, 16, 4)],
         "fwd+bwd": [(32, 32, 1), (64, 32, 2), (32, 16, 1)]}
ODD = [((3, 1000, 300), jnp.complex64, True), ((3, 1000, 300), jnp.bfloat16, False),
       ((2, 999, 5, 7), jnp.float32, True)]
QUICK_MAIN, QUICK_SWEEP = (2, 64, 48), {"fwd": [(16, 8, 1)], "fwd+bwd": [(16, 8, 1)]}
RTOL = {jnp.float32: 1e-5, jnp.complex64: 1e-5, jnp.bfloat16: 1e-2}


@functools.cache
def inputs(shape, dtype):
    """a: decays in (0.5, 1) (complex: with random phases), b: normal, g: normal cotangent."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    a = jax.random.uniform(keys[0], shape, jnp.float32, 0.5, 1.0)
    b, g = (jax.random.normal(k, shape, jnp.float32) for k in keys[1:3])
    if dtype == jnp.complex64:
        a = a * jnp.exp(1j * jax.random.uniform(keys[3], shape, jnp.float32, 0.0, 6.28))
        b, g = b * (1 + 0.5j), g * (0.5 - 1j)
    return tuple(x.astype(dtype) for x in (a, b, g))


def _variant(fn, shape, dtype, mode):
    a, b, g = inputs(shape, dtype)
    if mode == "fwd":
        return functools.partial(jax.jit(fn), a, b)

    return jax_gradients(fn, (a, b), g)


def case(shape, dtype, mode, *, reverse=False, sweep=(), unsplit=False) -> Case:
    def op(impl):
        return functools.partial(linear_recurrence, reverse=reverse, impl=impl)

    variants = {name: _variant(op(impl), shape, dtype, mode)
                for name, impl in (("xla", "associative"), ("pallas", "pallas"))}
    for width, chunk, warps in sweep:
        launch = functools.partial(kernel.linear_recurrence, reverse=reverse, width=width,
                                   chunk=chunk, num_warps=warps)
        variants[f"pallas w{width} c{chunk} n{warps}"] = _variant(
            lambda a, b, launch=launch: launch(a, b)[0], shape, dtype, mode)
    if unsplit:  # the sequence walked whole even where the default splits it into segments
        variants["pallas 1 segment"] = _variant(
            lambda a, b: kernel.linear_recurrence(a, b, reverse=reverse, segments=1)[0],
            shape, dtype, mode)
    size = jnp.dtype(dtype).itemsize * int(jnp.prod(jnp.array(shape)))
    arrays = 3 if mode == "fwd" else 8
    channels = "x".join(map(str, shape[2:]))
    label = f"B{shape[0]} T{shape[1]} D{channels} {jnp.dtype(dtype).name}"
    label += " reverse" if reverse else ""
    return Case(f"linear_recurrence {mode}", label, variants, baseline="xla",
                floor_ms=floor_ms(arrays * size), rtol=RTOL[dtype])


def cases(quick: bool) -> list[Case]:
    if quick:
        out = [case(QUICK_MAIN, jnp.float32, mode, sweep=QUICK_SWEEP[mode])
               for mode in ("fwd", "fwd+bwd")]
        out.append(case((2, 37, 3), jnp.complex64, "fwd+bwd", reverse=True))
        return out
    out = [case(MAIN, jnp.float32, mode, sweep=SWEEP[mode]) for mode in ("fwd", "fwd+bwd")]
    out += [case(shape, dtype, "fwd+bwd", reverse=reverse) for shape, dtype, reverse in ODD]
    out += [case(shape, jnp.float32, "fwd", unsplit=shape[1] > MAIN[1])
            for shape in SCALING if shape != MAIN]
    return out
