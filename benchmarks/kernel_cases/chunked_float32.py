"""The chunked kernels in float32 at each matmul precision, beside XLA's float32 path (issue 24).

    python benchmarks/kernels.py --only chunked_float32 [--repeats 3 --calls 3]

Linear attention at (4, 2048, 16, 128) with no decay, a decay per head and a decay per key,
Mamba-2's SSD and Hydra's quasiseparable mixer at (2, 4096, 32, 64, 128), every input float32
(drawn in float32: TF32 rounds them), forward and forward+backward (the gradients of
``sum(out * do)`` w.r.t. every input).
Variants:

* ``xla``: the op's chunked XLA path, the reference every error is measured against and the
  baseline of the speedups (``impl="auto"`` runs it for Hydra and at precision "highest"; the
  kernel, or for per-key decays ``pallas_split``, elsewhere). It is IEEE float32 whatever
  ``jax.default_matmul_precision`` says: its einsums pass ``Precision.HIGHEST``
  (``seqzoo/ops/linear_attention/xla.py``, ``seqzoo/ops/ssd/xla.py``), so its lowering is the
  same under "highest" and under no context (checked in ``tests/test_kernels_precision.py``)
  and one row covers both; ``pallas highest`` is the like-for-like kernel row;
* ``pallas highest`` / ``pallas tf32x3`` / ``pallas tf32``: ``impl="pallas"`` at each
  ``precision`` (``seqzoo.kernels.matmul_precision``);
* per-key decays also ``pallas_split tf32x3`` / ``pallas_split tf32``: ``impl="pallas_split"``
  (the inter-chunk kernel at that precision, the intra-chunk scores and ``A v`` in IEEE float32),
  the form ``auto`` runs for 16-bit per-key decays; in bf16 its backward is 2.2x the one-pass
  kernel's speed (``benchmarks/RESULTS.md``), and the one-pass kernel's float32 backward is what
  loses to XLA here.

Per-key decays time ``xla`` last, after the kernel's rows: the XLA form holds (B, T/C, H, D, C, C)
float32 decays (4.3 GB at this shape), and a variant that runs out of memory is reported, not
fatal, unless it is the reference; there ``pallas highest`` is the reference and the baseline, and
``xla``'s row against ``pallas_split``'s is why ``auto`` takes the split for float32 per-key decays
at a tensor-core precision (benchmarks/RESULTS.md, issue 24 item 3). The tolerance (1e-2 relative
L2) only flags a broken path; the error column is the measurement (TF32 ~1e-3 expected).
``--quick``: tiny shapes in interpret mode, where every precision computes IEEE (no claim).
"""

from __future__ import annotations

import jax.numpy as jnp
from kernel_harness import Case

from kernel_cases.chunked_linear_attention import (
    MAMBA2,
    QUICK_MAMBA2,
    QUICK_SHAPES,
    SHAPES,
    _jax_variant,
    attention_inputs,
    ssd_inputs,
)
from seqzoo.kernels.matmul_precision import PRECISIONS
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.ssd import ssd

_F32 = jnp.float32
RTOL = 1e-2


def _variants(op, args, cotangent, mode, *, xla_first: bool) -> dict:
    """``op(impl, precision)`` -> a function of ``args``; the variants of the module docstring,
    ``xla`` first (the reference) or last."""
    def variant(fn):
        return _jax_variant(fn, args, cotangent, mode)

    xla = {"xla": variant(op("chunked", None))}
    kernel = {f"pallas {precision}": variant(op("pallas", precision)) for precision in PRECISIONS}
    return {**xla, **kernel} if xla_first else {**kernel, **xla}


def attention_case(shape, kind, mode) -> Case:
    q, k, v, g, do = attention_inputs(shape, kind, _F32)
    args = (q, k, v) if g is None else (q, k, v, g)

    def op(impl, precision):
        def fn(q, k, v, g=None):
            return linear_attention(q, k, v, log_decay=g, chunk_size=64, impl=impl,
                                    precision=precision)
        return fn

    variants = _variants(op, args, do, mode, xla_first=kind != "key")
    if kind == "key":  # before xla, which runs last (module docstring)
        split = {f"pallas_split {precision}": _jax_variant(op("pallas_split", precision), args,
                                                             do, mode)
                 for precision in ("tf32x3", "tf32")}
        variants = {name: fn for name, fn in variants.items() if name != "xla"} | split | {
            "xla": variants["xla"]}
    b, t, h, d = shape
    return Case(f"linear_attention {kind} {mode} precision", f"B{b} T{t} H{h} D{d} f32",
                variants, baseline="xla" if kind != "key" else "pallas highest",
                rtol=RTOL)


def ssm_case(shape, mode, *, hydra: bool) -> Case:
    """Mamba-2's SSD (causal) or Hydra's quasiseparable mixer (both directions)."""
    x, do, A, dt, (B, C), (B_bwd, C_bwd) = ssd_inputs(shape, _F32)

    def op(impl, precision):
        def mamba2(x, dt, B, C):
            return ssd(x, dt, A, B, C, chunk_size=64, impl=impl, precision=precision)

        def hydra_mixer(x, dt, dt_bwd, B, C, B_bwd, C_bwd):
            return quasiseparable(x, dt, dt_bwd, A, B, C, B_bwd, C_bwd, chunk_size=64,
                                  impl=impl, precision=precision)
        return hydra_mixer if hydra else mamba2

    args = (x, dt[0], dt[1], B, C, B_bwd, C_bwd) if hydra else (x, dt[0], B, C)
    variants = _variants(op, args, do, mode, xla_first=True)
    b, t, h, p, n = shape
    name = "quasiseparable (Hydra)" if hydra else "ssd (Mamba-2)"
    return Case(f"{name} {mode} precision", f"B{b} T{t} H{h} P{p} N{n} f32", variants,
                baseline="xla", rtol=RTOL)


def cases(quick: bool) -> list[Case]:
    shape, mamba2 = (QUICK_SHAPES[0], QUICK_MAMBA2) if quick else (SHAPES[0], MAMBA2)
    modes = ("fwd", "fwd+bwd")
    out = [attention_case(shape, kind, mode) for kind in ("none", "head", "key")
           for mode in modes]
    out += [ssm_case(mamba2, mode, hydra=hydra) for hydra in (False, True) for mode in modes]
    return out
