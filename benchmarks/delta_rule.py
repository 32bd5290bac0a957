"""The (gated) delta rule on a GPU: seqzoo's XLA chunked form against flash-linear-attention.

    python benchmarks/delta_rule.py [--quick] [--repeats N]

Variants on the same bf16 values, layout (B, T, H, D) for both: ``xla chunked`` (``delta_rule``
with ``impl="chunked"``, chunk 64: the reference the others are checked against) and, when
importable, fla's Triton kernels ``chunk_gated_delta_rule`` (Gated DeltaNet) and
``chunk_delta_rule`` (DeltaNet, no decay) as torch tensors (fla 0.6.0: build it with
../shared/anchors/make_peer_site.sh and put it on PYTHONPATH). Forward, and forward+backward as
the gradients of ``sum(o * do)`` w.r.t. q, k, v, beta and the log decay. Inputs as the layers
make them: L2-normalised q and k, ``beta = sigmoid(.)``, ``log_decay = logsigmoid(. + 4)`` < 0.
The floor is the larger of the memory floor (q, k, v, o, do and their gradients in bf16, beta
and the log decay in f32) and the matmul floor of the chunked algorithm (chunk 64; backward
twice the forward's flops). Times: median of ``--repeats`` means of 10 queued calls.

The issue's goal (27): the XLA chunked form within 3x of fla, forward and forward+backward.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from kernel_harness import Case, floor_ms, markdown, run_case  # noqa: E402

from seqzoo.ops.delta_rule import delta_rule  # noqa: E402

SHAPES = [(4, 2048, 16, 128), (2, 4096, 8, 64)]
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


def xla_variant(args, do, mode):
    def fn(q, k, v, beta, g=None):
        return delta_rule(q, k, v, beta, g, chunk_size=CHUNK, impl="chunked")

    def loss(*a):
        return jnp.sum(fn(*a).astype(jnp.float32) * do.astype(jnp.float32))

    run = jax.jit(fn if mode == "fwd" else jax.grad(loss, argnums=tuple(range(len(args)))))
    return functools.partial(run, *args)


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
    if mode == "fwd":
        return lambda: fn(*leaves)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).backward(grad_out)
        return tuple(leaf.grad for leaf in leaves)

    return forward_backward


def floor(shape, mode) -> float:
    b, t, h, d = shape
    tensors = 4 * 2 * b * t * h * d + 2 * 4 * b * t * h
    # per token and head: K K^T, Q K^T, T K, T V, scores D (chunk-wide) and W S, K^T D, Q S
    flops = b * t * h * (2 * CHUNK * 5 * d + 2 * 3 * d * d)
    if mode == "fwd+bwd":
        tensors, flops = 2 * tensors, 3 * flops
    return floor_ms(tensors, flops)


def case(shape, gated: bool, mode) -> Case:
    q, k, v, beta, g, do = inputs(shape, gated)
    args = (q, k, v, beta) if g is None else (q, k, v, beta, g)
    variants = {"xla chunked": xla_variant(args, do, mode)}
    fla = fla_variant(args, do, mode, gated)
    if fla is not None:
        variants[f"fla {FLA[gated]}"] = fla
    b, t, h, d = shape
    name = "gated delta rule" if gated else "delta rule"
    return Case(f"{name} {mode}", f"B{b} T{t} H{h} D{d} bf16", variants,
                baseline=f"fla {FLA[gated]}" if fla is not None else "xla chunked",
                floor_ms=floor(shape, mode), rtol=RTOL[mode])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny shape (a CPU smoke run)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}", flush=True)
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        for gated in (True, False):
            for mode in ("fwd", "fwd+bwd"):
                case_rows = run_case(case(shape, gated, mode), repeats=args.repeats, calls=10)
                print(markdown(case_rows), flush=True)
                rows += case_rows
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
