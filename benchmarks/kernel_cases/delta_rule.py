"""The (gated) delta rule (issue 27): seqzoo's XLA chunked form against flash-linear-attention.

    python benchmarks/kernels.py --only delta_rule [--quick] [--match "gated delta rule fwd"]

Variants on the same bf16 values, layout (B, T, H, D) for both: ``xla chunked`` (``delta_rule``
with ``impl="chunked"``, chunk 64: the reference the others are checked against; bf16 matmul
operands, f32 accumulation, ``T`` and the state in f32), ``xla auto`` (``impl="auto"``) where the
dispatch table resolves it to something else, ``xla sequential`` (the float32 scan over positions)
with ``--quick`` only, and, when importable, fla's Triton kernels ``chunk_gated_delta_rule`` (Gated
DeltaNet) and ``chunk_delta_rule`` (DeltaNet, no decay) as torch tensors (fla 0.6.0: build it with
../shared/anchors/make_peer_site.sh and put it on PYTHONPATH); on Hopper with Triton 3.4 to 3.7.0
fla refuses its gated backward (fla #640: that compiler gets it wrong), so ``fla
chunk_gated_delta_rule #640 guard off`` runs it past the check, for its time (its error column says
how wrong it is; ``kernel_cases/fla_guard.py``). Same math for both: L2-normalised q and k, ``beta
= sigmoid(.)`` in (0, 1), ``log_decay = logsigmoid(. + 4) < 0``, scale ``dk ** -0.5`` (both
defaults), no initial state; so outputs and gradients are compared too (``RTOL``). Forward, and
forward+backward as the gradients of ``sum(o * do)`` w.r.t. q, k, v, beta and the log decay. The
floor is the larger of the memory floor (q, k, v, o, do and their gradients in bf16, beta and the
log decay in f32) and the matmul floor of the chunked algorithm (chunk 64; backward twice the
forward's flops).

The issue's goal (27): the XLA chunked form within 3x of fla, forward and forward+backward
(benchmarks/RESULTS.md). ``xla chunked`` recomputes the backward pass on all batch rows at once
on a GPU (``delta_rule.xla.GPU_BACKWARD_BLOCKS``), a quarter at a time elsewhere; ``xla chunked
4 blocks`` (forward+backward only) times the quarters (``lean_grad.fewest_blocks``), the choice
the GPU default was measured against: each block pays the scan over chunks' latency again.
``xla chunked unroll N`` runs ``N`` chunks per iteration of the scans over chunks
(``delta_rule.chunked_form.scan_unroll``; ``all``: no loop; ``1``: rolled), beside the default
(a GPU unrolls up to ``chunked_form.GPU_UNROLL_CHUNKS`` chunks whole, other backends roll).
``xla chunked keep inputs``, ``keep transform`` and ``keep states`` (forward+backward only)
keep nothing but the arguments, ``T``, or ``T``, the entering states and ``D``, from the
forward pass for the backward pass (``chunked_form.keep_residuals``: fla keeps its ``A`` /
``T``), at the memory its docstring states; a GPU's default keeps ``T``
(``chunked_form.GPU_KEPT``), other backends' the inputs. ``4 blocks`` keeps the inputs (row
blocks exist only there).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from kernel_harness import Case, floor_ms, jax_gradients, torch_variant

from kernel_cases.fla_guard import LABEL, unguarded
from seqzoo.ops.delta_rule import delta_rule
from seqzoo.ops.delta_rule.chunked_form import KEPT, keep_residuals, scan_unroll
from seqzoo.ops.dispatch import resolve
from seqzoo.ops.lean_grad import BLOCKS, fewest_blocks

SHAPES = [(4, 2048, 16, 128), (8, 1024, 8, 64)]  # fla's benchmark shapes
QUICK_SHAPES = [(1, 80, 2, 16)]
CHUNK = 64
RTOL = {"fwd": 2e-2, "fwd+bwd": 5e-2}  # bf16 against the reference variant (relative L2)
FLA = {True: "chunk_gated_delta_rule", False: "chunk_delta_rule"}


@functools.cache
def inputs(shape, gated: bool):
    """q, k (L2-normalised), v, do: (B, T, H, D) bf16; beta, g: (B, T, H) f32 (g None if not
    gated)."""
    b, t, h, d = shape
    keys = jax.random.split(jax.random.PRNGKey(0), 6)

    def normal(key, shape):
        return jax.random.normal(key, shape, jnp.float32)

    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True)
            for x in (normal(keys[0], shape), normal(keys[1], shape)))
    q, k, v, do = (x.astype(jnp.bfloat16) for x in (q, k, normal(keys[2], shape),
                                                     normal(keys[3], shape)))
    beta = jax.nn.sigmoid(normal(keys[4], (b, t, h)))
    g = jax.nn.log_sigmoid(normal(keys[5], (b, t, h)) + 4.0) if gated else None
    return q, k, v, beta, g, do


def xla_variant(args, do, mode, impl="chunked", blocks=None, unroll=None, keep=None):
    """``blocks``: ``lean_grad.fewest_blocks`` for the backward pass (default: its own);
    ``unroll``: ``scan_unroll``'s chunks per iteration (default: its own); ``keep``:
    ``keep_residuals``' what (default: its own, ``chunked_form.kept_residuals``)."""
    def fn(q, k, v, beta, g=None):
        with contextlib.ExitStack() as within:
            if blocks is not None:
                within.enter_context(fewest_blocks(blocks))
            if unroll is not None:
                within.enter_context(scan_unroll(unroll))
            if keep is not None:
                within.enter_context(keep_residuals(keep))
            return delta_rule(q, k, v, beta, g, chunk_size=CHUNK, impl=impl)

    if mode == "fwd":
        return functools.partial(jax.jit(fn), *args)
    return jax_gradients(fn, args, do)


def fla_variant(args, do, mode, gated: bool):
    """fla on the same values as torch tensors, gradients in our argument order; None where fla
    is not importable."""
    try:
        import torch
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    leaves = [torch.from_dlpack(a).clone().requires_grad_(mode != "fwd") for a in args]
    grad_out = torch.from_dlpack(do).clone()
    if gated:
        def fn(q, k, v, beta, g):
            return chunk_gated_delta_rule(q=q, k=k, v=v, g=g, beta=beta)[0]
    else:
        def fn(q, k, v, beta):
            return chunk_delta_rule(q=q, k=k, v=v, beta=beta)[0]
    return torch_variant(fn, leaves, grad_out, mode)


def floor(shape, mode) -> float:
    b, t, h, d = shape
    tensors = 4 * 2 * b * t * h * d + 2 * 4 * b * t * h
    # per token and head: K K^T, Q K^T, T K, T V, scores D (chunk-wide) and W S, K^T D, Q S
    flops = b * t * h * (2 * CHUNK * 5 * d + 2 * 3 * d * d)
    if mode == "fwd+bwd":
        tensors, flops = 2 * tensors, 3 * flops
    return floor_ms(tensors, flops)


def case(shape, gated: bool, mode, quick: bool = False) -> Case:
    q, k, v, beta, g, do = inputs(shape, gated)
    args = (q, k, v, beta) if g is None else (q, k, v, beta, g)
    variants = {"xla chunked": xla_variant(args, do, mode)}
    if mode == "fwd+bwd":  # the backward pass a quarter of the rows at a time; on kept arrays
        variants[f"xla chunked {BLOCKS} blocks"] = xla_variant(args, do, mode, blocks=BLOCKS,
                                                               keep="inputs")
        for keep in KEPT:
            variants[f"xla chunked keep {keep}"] = xla_variant(args, do, mode, keep=keep)
    chunks = -(-shape[1] // CHUNK)
    for unroll, label in ((1, "1"), (8, "8"), (chunks, "all")):
        variants[f"xla chunked unroll {label}"] = xla_variant(args, do, mode, unroll=unroll)
    if resolve("delta_rule", "auto").impl != "chunked":
        variants["xla auto"] = xla_variant(args, do, mode, impl="auto")
    if quick:  # the independent check of a CPU smoke run: the float32 scan over positions
        variants["xla sequential"] = xla_variant(args, do, mode, impl="sequential")
    fla = fla_variant(args, do, mode, gated)
    if fla is not None:
        variants[f"fla {FLA[gated]}"] = fla
        if gated and mode == "fwd+bwd":  # the same call past fla's Hopper check (fla_guard)
            variants[f"fla {FLA[gated]} {LABEL}"] = unguarded(fla)
    b, t, h, d = shape
    name = "gated delta rule" if gated else "delta rule"
    return Case(f"{name} {mode}", f"B{b} T{t} H{h} D{d} bf16", variants,
                baseline=f"fla {FLA[gated]}" if fla is not None else "xla chunked",
                floor_ms=floor(shape, mode), rtol=RTOL[mode])


def cases(quick: bool) -> list[Case]:
    return [case(shape, gated, mode, quick) for shape in (QUICK_SHAPES if quick else SHAPES)
            for gated in (False, True) for mode in ("fwd", "fwd+bwd")]
