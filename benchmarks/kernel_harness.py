"""What a kernel benchmark case is, and how benchmarks/kernels.py checks and times it.

A ``Case`` is one operation at one shape, run by several variants (the Pallas kernel, the XLA
path, an outside library's kernel): each variant is a zero-argument callable returning its
output (jax arrays, or torch tensors for PyTorch baselines). The first variant is the reference
the others are checked against (relative L2 error of every output leaf); ``floor_ms`` is the
fewest bytes moved over the measured memory bandwidth, or the flops over the measured matmul
rate, whichever is larger (see ``floor_ms``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Measured on the NVIDIA H100 80GB HBM3 this project benchmarks on (../shared/ANCHORS.md):
# device copy through XLA and a large bf16 matmul.
HBM_BYTES_PER_S = 2.9e12
BF16_FLOPS_PER_S = 7.9e14


def torch_variant(fn: Callable, leaves: list, grad_out, mode: str) -> Callable[[], Any]:
    """A PyTorch baseline as a variant: ``fn(*leaves)`` (``mode == "fwd"``), else its output's
    backward pass with ``grad_out``, returning the leaves' gradients (cleared before each call)."""
    if mode == "fwd":
        return lambda: fn(*leaves)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).backward(grad_out)
        return tuple(leaf.grad for leaf in leaves)

    return forward_backward


def forward_and_gradients(fn: Callable, argnums: tuple[int, ...]) -> Callable:
    """``(ct, *a) -> (loss, gradients)``, ``loss = sum(fn(*a) * ct)`` (the product in float32,
    or the cotangent's complex dtype; its real part). The loss is an output so that the forward
    pass runs as in training: with the gradients alone, XLA drops a forward whose output the
    backward pass does not read (a custom VJP keeping only its inputs, as Based's fused kernel
    does), and the row would time the backward pass alone."""
    def loss(ct, *a):
        dtype = jnp.promote_types(ct.dtype, jnp.float32)
        return jnp.real(jnp.sum(fn(*a).astype(dtype) * ct.astype(dtype)))

    return jax.value_and_grad(loss, argnums=tuple(i + 1 for i in argnums))


@dataclasses.dataclass(frozen=True)
class JitCall:
    """A variant: one call of ``fn`` (a jitted function, or its compiled executable) on fixed
    ``args``, returning its output's item ``pick`` (the whole output when None).
    ``parallel_compile.precompile`` swaps ``fn`` for its executable, compiled ahead."""

    fn: Callable
    args: tuple
    pick: int | None = None

    def __call__(self) -> Any:
        out = self.fn(*self.args)
        return out if self.pick is None else out[self.pick]


def jax_gradients(fn: Callable, args: tuple, cotangent, argnums=None) -> JitCall:
    """A JAX variant's forward+backward: one jitted call of ``forward_and_gradients``, returning
    the gradients w.r.t. ``argnums`` (default: every argument); the loss is computed in the same
    executable (whose outputs are ready together) and dropped. The cotangent is an argument of
    the jitted function: a closed-over array becomes a constant that XLA folds at compile time,
    which took seconds per variant for the (2, 32768, 4, 64) cases on an H200 and ran the
    segments rows past their limit."""
    argnums = tuple(range(len(args))) if argnums is None else tuple(argnums)
    return JitCall(jax.jit(forward_and_gradients(fn, argnums)), (cotangent, *args), pick=1)


def floor_ms(bytes_moved: float, flops: float = 0.0) -> float:
    """max(bytes / bandwidth, flops / matmul rate) in milliseconds."""
    return 1e3 * max(bytes_moved / HBM_BYTES_PER_S, flops / BF16_FLOPS_PER_S)


@dataclasses.dataclass
class Case:
    kernel: str  # e.g. "linear_recurrence fwd"
    shape: str  # e.g. "B8 T4096 D2048 f32"
    variants: dict[str, Callable[[], Any]]  # the first is the reference
    baseline: str | None = None  # variant whose time the others are divided by
    floor_ms: float | None = None
    rtol: float = 1e-5  # largest relative L2 error accepted against the reference


def _wait(out) -> None:
    leaves = jax.tree.leaves(out)
    if any(hasattr(x, "block_until_ready") for x in leaves):
        jax.block_until_ready(out)
    else:  # torch tensors
        import torch

        torch.cuda.synchronize()


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)


def relative_error(out, ref) -> float:
    """Largest over leaves of ||out - ref|| / ||ref|| (inf where shapes differ or out is NaN)."""
    outs, refs = jax.tree.leaves(out), jax.tree.leaves(ref)
    if len(outs) != len(refs):
        return float("inf")
    worst = 0.0
    for o, r in zip(outs, refs, strict=True):
        o, r = _as_numpy(o), _as_numpy(r)
        if o.shape != r.shape or not np.all(np.isfinite(o)):
            return float("inf")
        worst = max(worst, float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30)))
    return worst


def median_ms(fn: Callable[[], Any], *, repeats: int, calls: int) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` back-to-back calls (after a warm-up).

    Calls are queued asynchronously and waited for once, so the host's dispatch overlaps the
    device's work and short kernels are not dominated by launch latency.
    """
    _wait(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        _wait(out)
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(times)


@dataclasses.dataclass
class Row:
    kernel: str
    shape: str
    variant: str
    ms: float
    floor_ms: float | None
    speedup: float | None  # baseline time / this time
    error: float
    ok: bool


def run_case(case: Case, *, repeats: int, calls: int) -> list[Row]:
    """Check every variant against the reference, then time each; returns one row per variant."""
    names = list(case.variants)
    reference = case.variants[names[0]]()
    rows = []
    for name in names:
        try:
            error = 0.0 if name == names[0] else relative_error(case.variants[name](), reference)
            ms = median_ms(case.variants[name], repeats=repeats, calls=calls)
        except Exception as exc:  # an outside baseline that cannot run here is reported, not fatal
            print(f"  {case.kernel} {case.shape} {name}: failed: {type(exc).__name__}: {exc}")
            rows.append(Row(case.kernel, case.shape, name, float("nan"), case.floor_ms, None,
                            float("inf"), False))
            continue
        rows.append(Row(case.kernel, case.shape, name, ms, case.floor_ms, None, error,
                        error <= case.rtol))
    base = next((r.ms for r in rows if r.variant == case.baseline), None)
    for r in rows:
        r.speedup = base / r.ms if base and r.ms == r.ms else None
    return rows


def markdown(rows: list[Row]) -> str:
    """The table benchmarks/RESULTS.md quotes."""
    head = ("| kernel | shape | variant | ms | floor ms | % of floor | speedup vs baseline "
            "| rel. error | ok |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = f"{100 * r.floor_ms / r.ms:.0f}%" if r.floor_ms and r.ms == r.ms else "-"
        floor = f"{r.floor_ms:.3f}" if r.floor_ms else "-"
        speed = f"{r.speedup:.2f}x" if r.speedup else "-"
        lines.append(f"| {r.kernel} | {r.shape} | {r.variant} | {r.ms:.3f} | {floor} | {frac} "
                     f"| {speed} | {r.error:.1e} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines)
