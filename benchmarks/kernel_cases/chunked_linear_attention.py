"""Chunked linear attention, Mamba-2 SSD and Hydra (issue 7, kernels 3 and 4).

Shapes (B, T, H, D); GLA also at fla's layer shape (B, T, H, dk, dv) = ``GLA_LAYER``, the one
``benchmarks/train_throughput.py`` trains (``--match "Dk96 Dv192"``).

Variants: ``xla`` (the op's XLA path), ``pallas`` (``impl="pallas"``), for per-key decays
``pallas_split`` (``impl="pallas_split"``: the kernel's inter-chunk pass + the intra-chunk scores,
for 16-bit inputs by their Pallas kernels ``pallas_gpu_intra.MEASURED``, issue 24),
``pallas_split A kernel`` (the same with the scores' first launch: one program per chunk, XLA's
VJP), ``pallas_split states forward`` (its inter-chunk forward as a states pass and an output
pass parallel over chunks, ``seqzoo.kernels.chunked_states``), ``WITHOUT_S23`` (the split without
its three defaults of 2026-12-07: XLA's chunk-local sums instead of ``seqzoo.kernels.
chunk_cumsum``, XLA's ``A v`` instead of ``pallas_gpu_intra_outputs``, libdevice's exponentials
instead of ``seqzoo.kernels.approx_exp``'s), at ``GLA_LAYER`` the split's
inter-chunk kernel at other launches (``SPLIT_LAUNCHES``), and, when importable,
flash-linear-attention 0.6.0's Triton kernels on the same inputs as torch tensors (layout
(B, T, H, D) for both): ``chunk_linear_attn`` (no decay, ``normalize=False``),
``chunk_simple_gla`` (a decay per head; its backward refuses to run on Hopper with triton 3.6,
fla #640, reported as a failed variant, and is timed past that check as
``fla chunk_simple_gla #640 guard off``: ``fla_guard.py``) and ``chunk_gla`` (a decay per key).
Forward, and forward+backward as the gradients of ``sum(o * do)`` w.r.t. q, k, v and the log
decays. The floor is the larger of the memory floor (q, k, v, o, do, dq, dk, dv in bf16, log decays
and their gradient in f32; forward: q, k, v, o and g) and the matmul floor (chunk 64; backward
twice the forward's flops).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from kernel_harness import Case, floor_ms, jax_gradients, torch_variant

from kernel_cases.fla_guard import LABEL, unguarded
from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.ops.linear_attention import linear_attention, pallas_gpu_split
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention
from seqzoo.ops.linear_attention.pallas_gpu_intra import MEASURED
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.ssd import ssd
from seqzoo.ops.ssd.pallas_gpu import ssd_kernel

SHAPES = [(4, 2048, 16, 128), (4, 4096, 64, 128), (8, 1024, 8, 64)]
SCALING = [(65536 // t, t, 16, 128) for t in (1024, 2048, 4096, 8192, 16384, 32768, 65536)]
MAMBA2 = (2, 4096, 32, 64, 128)  # batch, length, heads, headdim p, state n (one group)
QUICK_SHAPES, QUICK_MAMBA2 = [(1, 80, 2, 16)], (1, 80, 2, 16, 16)
# GLA at fla's layer shape, as benchmarks/train_throughput.py builds it (d_model 768, 4 heads, key
# width d/2 per model, value width d): (B, T, H, dk, dv); dv 192 runs unpadded where a pass tiles
# it in value blocks (forward, dv) and at 256 where one contracts over it (dq, dk); the op's
# impl="auto" refuses it (MEASURED_WIDTH: pow2-padded 256 > 128)
GLA_LAYER, QUICK_GLA_LAYER = (8, 2048, 4, 96, 192), (1, 80, 2, 16, 32)
# The split without the defaults it took on 2026-12-07 (the cumsum and A v kernels, one-instruction
# exponentials): what they gained, timed beside it.
WITHOUT_S23 = "pallas_split XLA cumsum and A v and libdevice exp"
# Where the XLA path is timed too (its compilations take most of a run's time): the first
# shape, and the per-key kind where its (B, T/C, H, D, C, C) decays fit (not on the second).
XLA_AT = {(SHAPES[0], "none"), (SHAPES[0], "head"), (SHAPES[0], "key"), (SHAPES[2], "key")}
# Tilings tried on the large shape: (chunk, sub, block_v, num_warps, num_stages, slice).
SWEEP = {
    ("head", "fwd"): [(64, 16, 64, 4, 2, 32), (64, 16, 64, 4, 1, 32), (64, 16, 64, 4, 3, 32),
                      (64, 16, 64, 8, 2, 32), (64, 16, 128, 8, 2, 32), (128, 16, 64, 8, 2, 32),
                      (32, 16, 64, 4, 2, 32), (64, 16, 32, 4, 2, 32)],
    ("head", "fwd+bwd"): [(64, 16, 64, 4, 2, 32), (64, 16, 64, 8, 2, 32),
                          (64, 16, 128, 8, 2, 32)],
    ("key", "fwd"): [(64, 16, 64, 8, 2, 16), (64, 16, 64, 4, 2, 32), (64, 16, 64, 4, 2, 16),
                     (64, 16, 128, 8, 2, 16), (32, 16, 64, 8, 2, 16)],
    ("key", "fwd+bwd"): [(64, 16, 64, 8, 2, 16), (64, 16, 64, 4, 2, 32)],
    ("ssd", "fwd"): [(64, 16, 64, 4, 2, 32), (64, 16, 32, 4, 2, 32)],
    ("ssd", "fwd+bwd"): [(64, 16, 64, 4, 2, 32), (64, 16, 32, 4, 2, 32)],
}
QUICK_SWEEP = [(16, 16, 16, 4, 2, 16), (32, 16, 16, 4, 2, 16)]
# The split's inter-chunk kernel at other launches than its own (``pallas_split``: the forward at
# chunk 64, value blocks of 64, two stages, ``chunked_tiling.INTER_FORWARD``, the backward passes
# at value blocks of 32, one stage, ``INTER_PER_DIMENSION``), by ``linear_attention_kernel``'s
# ``tiling`` (every pass at it), at fla's layer widths only (C: chunk, bv: value block, s:
# stages, w: warps)
SPLIT_LAUNCHES = {
    "pallas_split C64 bv32 s1": Tiling(chunk=64, block_v=32, num_stages=1),
    "pallas_split C64 bv64 s1": Tiling(chunk=64, num_stages=1),
    "pallas_split C64 bv64 s2": Tiling(chunk=64, num_stages=2),
    "pallas_split C64 bv32 s2": Tiling(chunk=64, block_v=32, num_stages=2),
    "pallas_split C64 bv64 s1 w8": Tiling(chunk=64, num_stages=1, num_warps=8),
    "pallas_split C32 bv64 s1": Tiling(chunk=32, num_stages=1),
}
FLA = {"none": "chunk_linear_attn", "head": "chunk_simple_gla", "key": "chunk_gla"}
RTOL = {"fwd": 2e-2, "fwd+bwd": 5e-2}  # bf16 against the reference variant (relative L2)


def _normal(key, shape, dtype=jnp.bfloat16):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _dims(shape) -> tuple[int, int, int, int, int]:
    """(B, T, H, D) or (B, T, H, dk, dv) -> (B, T, H, dk, dv)."""
    return (*shape, shape[-1]) if len(shape) == 4 else tuple(shape)


@functools.cache
def attention_inputs(shape, kind, dtype=jnp.bfloat16):
    """q, k: (B, T, H, dk), v, do: (B, T, H, dv) in ``dtype`` (``shape``: (B, T, H, D) or
    (B, T, H, dk, dv)); g = logsigmoid(normal) per head or key, f32, or None."""
    b, t, h, dk, dv = _dims(shape)
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    q, k, v, do = (_normal(keys[i], (b, t, h, d), dtype)
                   for i, d in enumerate((dk, dk, dv, dv)))
    g_shape = {"none": None, "head": (b, t, h), "key": (b, t, h, dk)}[kind]
    g = None if g_shape is None else jax.nn.log_sigmoid(_normal(keys[4], g_shape, jnp.float32))
    return q, k, v, g, do


def _jax_variant(fn, args, cotangent, mode):
    if mode == "fwd":
        return functools.partial(jax.jit(fn), *args)
    return jax_gradients(fn, args, cotangent)


def _fla_variant(kind, mode, q, k, v, g, do, scale=None):
    """fla 0.6.0 on the same values as torch tensors; None where fla is not importable."""
    try:
        import torch
        from fla.ops.gla import chunk_gla
        from fla.ops.linear_attn import chunk_linear_attn
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    leaves = [torch.from_dlpack(a).clone().requires_grad_(mode != "fwd")
              for a in (q, k, v, g) if a is not None]
    grad_out = torch.from_dlpack(do).clone()
    fn = {"none": lambda q, k, v: chunk_linear_attn(q, k, v, scale, normalize=False)[0],
          "head": lambda q, k, v, g: chunk_simple_gla(q, k, v, g, scale=scale)[0],
          "key": lambda q, k, v, g: chunk_gla(q, k, v, g, scale)[0]}[kind]
    return torch_variant(fn, leaves, grad_out, mode)


def fla_variants(kind, mode, q, k, v, g, do, scale=None) -> dict:
    """``{"fla <kernel>": variant}`` where fla imports (else empty), and for a decay per head's
    forward+backward (``chunk_simple_gla``, whose backward fla refuses on Hopper with this
    Triton) the same call past the check, ``"fla <kernel> #640 guard off"``."""
    fla = _fla_variant(kind, mode, q, k, v, g, do, scale=scale)
    if fla is None:
        return {}
    variants = {f"fla {FLA[kind]}": fla}
    if kind == "head" and mode != "fwd":
        variants[f"fla {FLA[kind]} {LABEL}"] = unguarded(fla)
    return variants


def _attention_floor(shape, kind, mode) -> float:
    b, t, h, dk, dv = _dims(shape)
    g_bytes = {"none": 0, "head": 4 * b * t * h, "key": 4 * b * t * h * dk}[kind]
    tensors = 2 * b * t * h * (2 * dk + 2 * dv) + g_bytes
    flops = b * t * h * (2 * 64 * (dk + dv) + 4 * dk * dv)
    if mode == "fwd+bwd":
        tensors, flops = 2 * tensors, 3 * flops
    return floor_ms(tensors, flops)


def _split_with(**options):
    """``impl="pallas_split"`` with ``pallas_gpu_split.linear_attention_kernel``'s ``options``:
    ``intra_kernel=True`` (the intra-chunk scores' first launch: one program per chunk, XLA's
    VJP), ``tiling=`` (its inter-chunk kernel at another launch) or ``states_forward=True``."""
    def split(q, k, v, g):
        return pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=q.shape[-1] ** -0.5,
                                                        chunk_size=64, **options)[0]
    return split


def attention_case(shape, kind, mode, *, with_xla=True, split_launches=False) -> Case:
    """Linear attention with no decay, a decay per head or per key, bf16; with
    ``split_launches``, the split at ``SPLIT_LAUNCHES`` too."""
    q, k, v, g, do = attention_inputs(shape, kind)
    args = (q, k, v) if g is None else (q, k, v, g)

    def op(impl):
        def fn(q, k, v, g=None):
            return linear_attention(q, k, v, log_decay=g, chunk_size=64, impl=impl)
        return fn

    variants = {}
    if with_xla:
        variants["xla"] = _jax_variant(op("chunked"), args, do, mode)
    variants["pallas"] = _jax_variant(op("pallas"), args, do, mode)
    if kind == "key":
        variants["pallas_split"] = _jax_variant(op("pallas_split"), args, do, mode)
        variants["pallas_split A kernel"] = _jax_variant(_split_with(intra_kernel=True), args,
                                                         do, mode)
        variants["pallas_split states forward"] = _jax_variant(
            _split_with(states_forward=True), args, do, mode)
        variants[WITHOUT_S23] = _jax_variant(
            _split_with(intra_kernel=dataclasses.replace(MEASURED, outputs_kernel=False,
                                                         approx_exp=False),
                        cumsum_kernel=False), args, do, mode)
    for name, tiling in SPLIT_LAUNCHES.items() if split_launches else ():
        variants[name] = _jax_variant(_split_with(tiling=tiling), args, do, mode)
    fla = fla_variants(kind, mode, q, k, v, g, do)
    variants.update(fla)
    b, t, h, dk, dv = _dims(shape)
    widths = f"D{dk}" if dk == dv else f"Dk{dk} Dv{dv}"
    return Case(f"linear_attention {kind} {mode}", f"B{b} T{t} H{h} {widths} bf16", variants,
                baseline=f"fla {FLA[kind]}" if fla else "xla",
                floor_ms=_attention_floor(shape, kind, mode), rtol=RTOL[mode])


@functools.cache
def ssd_inputs(shape, dtype=jnp.bfloat16):
    """x, do (B, T, H, P) in ``dtype``; A (H,) < 0; per direction (2 of each): dt (B, T, H) > 0
    f32, B, C (B, T, 1, N) in ``dtype``."""
    b, t, h, p, n = shape
    keys = jax.random.split(jax.random.PRNGKey(1), 9)
    x, do = _normal(keys[0], (b, t, h, p), dtype), _normal(keys[1], (b, t, h, p), dtype)
    A = -jnp.exp(_normal(keys[2], (h,), jnp.float32))
    dt = [jax.nn.softplus(_normal(keys[3 + i], (b, t, h), jnp.float32) - 3.0) for i in (0, 1)]
    bc = [_normal(keys[5 + i], (b, t, 1, n), dtype) for i in range(4)]
    return x, do, A, dt, bc[:2], bc[2:]


def _ssm_floor(shape, mode, directions) -> float:
    b, t, h, p, n = shape
    tensors = 2 * 2 * b * t * h * p + directions * (2 * 2 * b * t * n + 4 * b * t * h)
    flops = directions * b * t * h * (2 * 64 * (n + p) + 4 * n * p)
    if mode == "fwd+bwd":
        tensors, flops = 2 * tensors, 3 * flops
    return floor_ms(tensors, flops)


def ssm_case(shape, mode, *, hydra: bool) -> Case:
    """Mamba-2's SSD (causal) or Hydra's quasiseparable mixer (both directions), bf16."""
    x, do, A, dt, (B, C), (B_bwd, C_bwd) = ssd_inputs(shape)

    def op(impl):
        def mamba2(x, dt, B, C):
            return ssd(x, dt, A, B, C, chunk_size=64, impl=impl)

        def hydra_mixer(x, dt, dt_bwd, B, C, B_bwd, C_bwd):
            return quasiseparable(x, dt, dt_bwd, A, B, C, B_bwd, C_bwd, chunk_size=64,
                                  impl=impl)

        return hydra_mixer if hydra else mamba2

    args = (x, dt[0], dt[1], B, C, B_bwd, C_bwd) if hydra else (x, dt[0], B, C)
    variants = {name: _jax_variant(op(impl), args, do, mode)
                for name, impl in (("xla", "chunked"), ("pallas", "pallas"))}
    if not hydra:  # SSD as simple GLA: q = C, k = B, v = x dt, g = dt A, scale 1
        heads = shape[2]
        as_gla = (C.repeat(heads, 2), B.repeat(heads, 2),
                  (x * dt[0][..., None]).astype(x.dtype), dt[0] * A, do)
        variants.update(fla_variants("head", mode, *as_gla, scale=1.0))
    b, t, h, p, n = shape
    name = "quasiseparable (Hydra)" if hydra else "ssd (Mamba-2)"
    return Case(f"{name} {mode}", f"B{b} T{t} H{h} P{p} N{n} bf16", variants, baseline="xla",
                floor_ms=_ssm_floor(shape, mode, 2 if hydra else 1), rtol=RTOL[mode])


def tiling_case(shape, kind, mode, tilings) -> Case:
    """The kernel alone (``gated_linear_attention``, or ``ssd_kernel`` for kind "ssd" on a
    Mamba-2 shape) under several tilings; the first is the reference."""
    if kind == "ssd":
        x, do, A, dt, (B, C), _ = ssd_inputs(shape)
        args = (x, dt[0], B, C)
    else:
        q, k, v, g, do = attention_inputs(shape, kind)
        args = (q, k, v) if g is None else (q, k, v, g)
    variants = {}
    for t in tilings:
        tiling = Tiling(*t)

        def mamba2(x, dt, B, C, tiling=tiling):
            return ssd_kernel(x, dt, A, B, C, tiling=tiling)[0]

        def attention(q, k, v, g=None, tiling=tiling):
            lead = [None if a is None else a[None] for a in (q, k, v, g)]
            return gated_linear_attention(*lead, scale=q.shape[-1] ** -0.5, tiling=tiling)[0][0]

        name = "pallas C{} sub{} bv{} w{} s{} sl{}".format(*t)
        variants[name] = _jax_variant(mamba2 if kind == "ssd" else attention, args, do, mode)
    if kind == "ssd":
        b, t, h, p, n = shape
        label, floor = f"B{b} T{t} H{h} P{p} N{n} bf16", _ssm_floor(shape, mode, 1)
    else:
        b, t, h, d = shape
        label, floor = f"B{b} T{t} H{h} D{d} bf16", _attention_floor(shape, kind, mode)
    return Case(f"{'ssd' if kind == 'ssd' else 'linear_attention ' + kind} {mode} tiling",
                label, variants, baseline=next(iter(variants)), floor_ms=floor, rtol=RTOL[mode])


def cases(quick: bool) -> list[Case]:
    """In order of importance (a run cut short keeps the first ones): the first shape, Mamba-2
    and Hydra, the other shapes without then with per-key decays, the tiling sweep, the length
    sweep at a fixed number of tokens."""
    shapes, scaling, mamba2, gla_layer = (
        (QUICK_SHAPES, QUICK_SHAPES, QUICK_MAMBA2, QUICK_GLA_LAYER) if quick
        else (SHAPES, SCALING, MAMBA2, GLA_LAYER))
    modes = ("fwd", "fwd+bwd")

    def attention(shape, kinds):
        return [attention_case(shape, kind, mode, with_xla=quick or (shape, kind) in XLA_AT)
                for kind in kinds for mode in modes]

    out = attention(shapes[0], ("none", "head", "key"))
    out += [ssm_case(mamba2, mode, hydra=hydra) for hydra in (False, True) for mode in modes]
    out += [case for shape in shapes[1:] for case in attention(shape, ("none", "head"))]
    out += [case for shape in shapes[1:] for case in attention(shape, ("key",))]
    out += [attention_case(gla_layer, "key", mode, split_launches=True)  # with XLA: it fits
            for mode in modes]
    for (kind, mode), tilings in SWEEP.items():
        shape = mamba2 if kind == "ssd" else shapes[min(1, len(shapes) - 1)]
        out.append(tiling_case(shape, kind, mode, QUICK_SWEEP if quick else tilings))
    out += [attention_case(shape, "none", mode, with_xla=False)
            for shape in scaling for mode in modes]
    return out
