"""Mamba-1's selective scan (issue 7, kernel 2).

Variants: ``xla`` (the op's associative scan over (B, L, D, N) f32 states, the reference) and
``pallas`` (``impl="pallas"``: the fused kernel's default launch), plus launch sweeps of the kernel
(``w`` channels per program, ``c`` steps per chunk, forward and checkpoint interval alike, ``n``
warps; when differentiating, the launch of both passes), ``pallas libdevice exp`` (the default
launch, the decays by libdevice's ``exp2f`` instead of ``seqzoo.kernels.approx_exp``'s instruction,
the default) and, forward+backward, ``pallas save w32 n4`` (the default differentiated launch but
the forward that saves checkpoints at the forward's width and warps). Mamba's call: u, delta, z, B,
C in bf16, A = -exp(A_log) and D, delta_bias in f32, softplus on delta, shared B and C. Forward, and
forward+backward as the gradients of ``sum(out * g)`` w.r.t. every input. The floor is the memory
floor: u, delta, z, B, C, out (forward) plus u, delta, z, B, C, g, du, ddelta, dz, dB, dC
(backward), in bf16. Also ragged shapes with B/C groups and packed segments, and a state size that
is not a power of two (correctness on the GPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from kernel_harness import Case, floor_ms, jax_gradients

from seqzoo.ops.scan import pallas_gpu_selective as kernel
from seqzoo.ops.scan import selective_scan

MAIN = (4, 2048, 2048, 16)  # batch, length, d, n
SWEEP = {"fwd": [(16, 16, 2), (32, 16, 2), (16, 16, 1), (8, 16, 1)],
         "fwd+bwd": [(32, 8, 4), (16, 8, 2), (16, 8, 1), (4, 8, 1)]}  # w32 n4, around w8 n1
ODD = [((2, 1000, 300, 16), 3, True), ((2, 777, 64, 12), None, False)]  # groups, packed
QUICK_MAIN, QUICK_SWEEP = (2, 40, 16, 4), {"fwd": [(8, 8, 4)], "fwd+bwd": [(8, 8, 4)]}
RTOL = {"fwd": 1e-2, "fwd+bwd": 2e-2}  # bf16 outputs and gradients (relative L2)


@functools.cache
def inputs(shape, groups, packed):
    """Keyword arguments of ``selective_scan`` (Mamba's initialisation) and a cotangent."""
    b, l, d, n = shape
    keys = jax.random.split(jax.random.PRNGKey(0), 8)

    def normal(i, shape, dtype=jnp.bfloat16, scale=1.0, shift=0.0):
        return (jax.random.normal(keys[i], shape, jnp.float32) * scale + shift).astype(dtype)

    bc = (b, l, n) if groups is None else (b, l, groups, n)
    kwargs = dict(
        u=normal(0, (b, l, d)), delta=normal(1, (b, l, d), scale=0.5, shift=-4.0),
        A=-jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32), (d, n)),
        B=normal(2, bc), C=normal(3, bc), D=jnp.ones((d,), jnp.float32),
        z=normal(4, (b, l, d)), delta_bias=normal(5, (d,), jnp.float32, scale=0.1))
    if packed:
        kwargs["segment_ids"] = jnp.cumsum(jax.random.bernoulli(keys[6], 0.01, (b, l)), axis=1)
    return kwargs, normal(7, (b, l, d))


def _variant(fn, shape, groups, packed, mode):
    kwargs, g = inputs(shape, groups, packed)
    kwargs = dict(kwargs)  # the cached inputs stay whole
    segment_ids = kwargs.pop("segment_ids", None)

    def call(kw):
        return fn(**kw, segment_ids=segment_ids) if segment_ids is not None else fn(**kw)

    if mode == "fwd":
        return functools.partial(jax.jit(call), kwargs)

    return jax_gradients(call, (kwargs,), g)


def _launch(width, chunk, warps, approx_exp=True, save=None):
    """The kernel with every pass at (width, chunk, warps), but the forward that saves
    checkpoints at ``save`` = (width, warps) if given."""
    save_width, save_warps = save or (width, warps)

    def fn(segment_ids=None, **kw):
        resets = None if segment_ids is None else jnp.concatenate(
            [jnp.zeros_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
            axis=1)
        return kernel.selective_scan(**kw, delta_softplus=True, resets=resets, chunk=chunk,
                                     width=width, num_warps=warps, checkpoint=chunk,
                                     grad_width=width, grad_num_warps=warps,
                                     save_width=save_width, save_num_warps=save_warps,
                                     approx_exp=approx_exp)[0]
    return fn


def case(shape, mode, *, groups=None, packed=False, sweep=()) -> Case:
    def op(impl):
        return functools.partial(selective_scan, delta_softplus=True, impl=impl)

    variants = {name: _variant(op(impl), shape, groups, packed, mode)
                for name, impl in (("xla", "associative"), ("pallas", "pallas"))}
    for width, chunk, warps in sweep:
        variants[f"pallas w{width} c{chunk} n{warps}"] = _variant(
            _launch(width, chunk, warps), shape, groups, packed, mode)
    default = ((kernel.WIDTH, kernel.CHUNK, kernel.NUM_WARPS) if mode == "fwd" else
               (kernel.GRAD_WIDTH, kernel.CHECKPOINT, kernel.GRAD_NUM_WARPS))
    variants["pallas libdevice exp"] = _variant(
        _launch(*default, approx_exp=False), shape, groups, packed, mode)
    if mode == "fwd+bwd" and sweep:  # the checkpoints saved at the forward's width and warps
        save = (kernel.WIDTH, kernel.NUM_WARPS)
        variants[f"pallas save w{save[0]} n{save[1]}"] = _variant(
            _launch(*default, save=save), shape, groups, packed, mode)
    b, l, d, n = shape
    seq, bc = 2 * b * l * d, 2 * b * l * n * (groups or 1)
    bytes_moved = 4 * seq + 2 * bc if mode == "fwd" else 10 * seq + 4 * bc
    label = f"B{b} L{l} D{d} N{n} bf16" + (f" g{groups}" if groups else "")
    label += " packed" if packed else ""
    return Case(f"selective_scan {mode}", label, variants, baseline="xla",
                floor_ms=floor_ms(bytes_moved), rtol=RTOL[mode])


def cases(quick: bool) -> list[Case]:
    if quick:
        return [case(QUICK_MAIN, mode, sweep=QUICK_SWEEP[mode]) for mode in ("fwd", "fwd+bwd")]
    out = [case(MAIN, mode, sweep=SWEEP[mode]) for mode in ("fwd", "fwd+bwd")]
    out += [case(shape, "fwd+bwd", groups=groups, packed=packed)
            for shape, groups, packed in ODD]
    return out
