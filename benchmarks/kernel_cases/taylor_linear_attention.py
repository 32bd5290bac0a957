"""Based's linear attention (the Taylor feature map) in its forms, by length.

    python benchmarks/kernels.py --only taylor_linear_attention [--quick]

``featured_linear_attention(..., feature_map="taylor")`` on the same values, layout
(B, T, H, d) with Based's d = 16 (273 features) and dv = 17 (16 values and the normaliser's
column of ones, as the layer passes them): ``chunked`` (the features through the chunked XLA
form, recomputed a block of rows at a time backwards: the reference), ``parallel`` (the kernel
``1 + s + s^2 / 2`` in closed form on the (T, T) scores, ``taylor_parallel.py``), on a GPU
``pallas`` (the same closed form as one fused Pallas kernel, ``pallas_gpu_taylor.py``,
``auto`` there in 16-bit), and ``auto`` where the dispatch table
(``seqzoo.ops.dispatch``, its ``closed_form`` rule) resolves it to something else, and, when
importable (fla 0.6.0: ../shared/anchors/make_peer_site.sh), fla's
Triton kernel of the same closed form, ``fla.ops.based.parallel_based`` (``use_norm=False``, its
``scale`` d^-1/2 inside the kernel: ours is 1 outside it, the same values). Forward, and
forward+backward as the gradients of ``sum(o * do)`` w.r.t. q, k and v (with the loss
computed: ``kernel_harness.forward_and_gradients``). The same number of
tokens per shape (B x T), lengths from 64 to 4096 on a GPU in bf16 and to 1024 in float32 (at
256: Zoology's MQAR at d_model 64, batch 256), to 1024 on a CPU: where the quadratic form stops
paying is the length ``auto`` switches at.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from kernel_harness import Case, jax_gradients, torch_variant

from seqzoo.ops.dispatch import resolve
from seqzoo.ops.linear_attention.featured import featured_linear_attention

D, DV, HEADS = 16, 17, 4
GPU_SHAPES = [(1024, 64), (512, 128), (256, 256), (128, 512), (64, 1024), (16, 4096)]
CPU_SHAPES = [(128, 64), (64, 128), (32, 256), (16, 512), (8, 1024)]  # (B, T)
QUICK_SHAPES = [(2, 40)]
RTOL = {"fwd": 1e-5, "fwd+bwd": 1e-5}


@functools.cache
def inputs(b: int, t: int, dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k = (jax.random.normal(key, (b, t, HEADS, D)).astype(dtype) for key in keys[:2])
    v, do = (jax.random.normal(key, (b, t, HEADS, DV)).astype(dtype) for key in keys[2:])
    return q, k, v, do


def variant(args, do, mode, impl):
    mask = jnp.ones(args[0].shape[:2], bool)

    def fn(q, k, v):
        return featured_linear_attention(q, k, v, mask, feature_map="taylor", scale=1.0,
                                         impl=impl)

    if mode == "fwd":
        return functools.partial(jax.jit(fn), *args)
    return jax_gradients(fn, args, do)


def fla_variant(args, do, mode):
    """fla's ``parallel_based`` on the same values as torch tensors; None where fla is not
    importable."""
    try:
        import torch
        from fla.ops.based import parallel_based
    except ImportError:
        return None
    leaves = [torch.from_dlpack(a).clone().requires_grad_(mode != "fwd") for a in args]

    def fn(q, k, v):
        return parallel_based(q, k, v, scale=D**-0.5, use_norm=False)

    return torch_variant(fn, leaves, torch.from_dlpack(do).clone(), mode)


def case(b: int, t: int, mode: str, dtype) -> Case:
    q, k, v, do = inputs(b, t, dtype)
    impls = ("chunked", "parallel") + (("pallas",) if jax.default_backend() == "gpu" else ())
    variants = {impl: variant((q, k, v), do, mode, impl) for impl in impls}
    auto = resolve("linear_attention", "auto", dims=(1 + D + D * D, DV), dtypes=(dtype,),
                   closed_form=True, length=t).impl
    if auto not in variants:
        variants["auto"] = variant((q, k, v), do, mode, "auto")
    fla = fla_variant((q, k, v), do, mode)
    if fla is not None:
        variants["fla parallel_based"] = fla
    name = jnp.dtype(dtype).name
    return Case(f"taylor_linear_attention {mode}", f"B{b} T{t} H{HEADS} D{D} Dv{DV} {name}",
                variants, baseline="chunked",
                rtol=RTOL[mode] if dtype == jnp.float32 else 2e-2)


def cases(quick: bool) -> list[Case]:
    """bf16 and float32 on a GPU (float32 to length 1024: the runner's default dtype, which
    ``auto`` gives the features until measured; ``--match float32`` picks them), float32 on a
    CPU."""
    if quick:
        plan = [(QUICK_SHAPES, jnp.float32)]
    elif jax.default_backend() == "gpu":
        plan = [(GPU_SHAPES, jnp.bfloat16), (GPU_SHAPES[:-1], jnp.float32)]
    else:
        plan = [(CPU_SHAPES, jnp.float32)]
    return [case(b, t, mode, dtype) for shapes, dtype in plan for b, t in shapes
            for mode in ("fwd", "fwd+bwd")]
