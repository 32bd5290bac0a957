"""Predicted, not measured: what seqzoo's Mosaic-TPU kernels cost on a TPU v5e and v5p.

    python benchmarks/tpu_model.py            # the markdown table for benchmarks/RESULTS.md
    python benchmarks/tpu_model.py --no-xla   # without compiling the XLA forms on CPU

No TPU is lent here, so every number is a model. Per kernel and shape: the HBM bytes its
launches move (every BlockSpec block read or written once per grid step that changes its index,
as Pallas pipelines them) and its MXU flops; the predicted time ``max(bytes / HBM bandwidth,
flops / peak bf16)`` on each generation (``mosaic_tpu_common.GENERATIONS``: v5e 819 GB/s and
197 TFLOP/s, v5p 2765 GB/s and 459 TFLOP/s) and which of the two bounds it. Beside it, the XLA
form's bytes and flops from ``jax.jit(f).lower(...).compile().cost_analysis()`` on this CPU (its
fusion decisions, not a TPU's: a rough comparison of traffic, not a time).

Not modelled: VPU and XLU work (masks, exponentials, the exact per-key diagonal blocks, the
transposes), the small XLA ops around the kernels (chunk-local cumsums, gradient assembly), the
MXU's fill at short operands (the per-key kernel's 16-row sub-chunk matmuls run well below peak),
pipeline bubbles and launch overheads. So each time is a lower bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from seqzoo.kernels.mosaic_tpu_common import GENERATIONS  # noqa: E402

MODELLED = ("v5e", "v5p")


@dataclasses.dataclass(frozen=True)
class Cost:
    """HBM bytes moved and MXU flops."""

    bytes: float
    flops: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


@dataclasses.dataclass(frozen=True)
class Row:
    """One kernel at one shape, forward or forward+backward; ``xla``: (fn, abstract args) of the
    XLA form doing the same, or None."""

    kernel: str
    shape: str
    kind: str
    cost: Cost
    xla: tuple | None = None


def predicted(cost: Cost, generation: str) -> tuple[float, str]:
    """(seconds, bounding resource) on one generation."""
    gen = GENERATIONS[generation]
    memory, compute = cost.bytes / gen.hbm_bytes_per_s, cost.flops / gen.bf16_flops_per_s
    return max(memory, compute), ("HBM" if memory >= compute else "MXU")


def xla_cost(fn, args) -> Cost:
    """Bytes accessed and flops of ``fn`` compiled for this CPU (``cost_analysis``)."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return Cost(float(analysis.get("bytes accessed", math.nan)), float(analysis.get("flops", 0)))


# --- the chunked linear-attention kernels (seqzoo.kernels.mosaic_tpu_chunked) ---


def _lanes(d: int) -> int:
    return -(-d // 128) * 128


def chunked_pass_cost(*, dirs, batch, length, heads, dk, dv, decay, itemsize, out_itemsize,
                      chunk=128, block_v=128, initial=False, key_scale=False, row_scale=False,
                      boundaries=False, partner=False, split=False) -> Cost:
    """One ``mosaic_pass`` launch: grid (dirs, batch, heads, value blocks, chunks); every grid
    step reads its chunk of q, k (C, dk) and v (C, block_v), the decays, the scales, writes its
    output block; states once per program; boundary states and dots once per chunk. Flops:
    q k^T, scores v, q S, k^T v per chunk, split float32 operands counted twice."""
    wk, wv = _lanes(dk), _lanes(dv)
    bv = min(block_v, wv)
    programs = dirs * batch * heads * (wv // bv)
    steps = -(-length // chunk) * chunk
    chunks = steps // chunk
    per_step = {None: 0, "scalar": 1, "key": wk, "value": bv}[decay] * 4
    per_step += 4 * (key_scale + row_scale)
    per_program = steps * ((2 * wk + bv) * itemsize + bv * out_itemsize + per_step)
    per_program += wk * bv * 4 * (1 + initial)  # final state (+ initial)
    per_program += chunks * wk * bv * 4 * (boundaries + partner) + chunks * bv * 4 * partner
    mult = 2 if split else 1
    per_chunk = 2 * chunk * chunk * wk + mult * (2 * chunk * chunk * bv + 4 * chunk * wk * bv)
    return Cost(programs * per_program, programs * chunks * per_chunk)


def chunked_cost(*, dirs, batch, length, heads, dk, dv, decay, itemsize, key_scale=False,
                 initial=False, backward=False) -> Cost:
    """``gated_linear_attention``: the forward launch, and with ``backward`` the three gradient
    launches (``chunked_linear_attention``'s roles: dq = pass(do, v, k), dv = pass(k, q, do),
    dk = pass(v, do, q); float32 outputs; boundary states and dots when decayed)."""
    common = dict(dirs=dirs, batch=batch, length=length, heads=heads, itemsize=itemsize)
    cost = chunked_pass_cost(**common, dk=dk, dv=dv, decay=decay, out_itemsize=itemsize,
                             initial=initial, key_scale=key_scale)
    if not backward:
        return cost
    dual = {None: None, "scalar": "scalar", "key": "value"}[decay]
    decayed = decay is not None
    cost += chunked_pass_cost(**common, dk=dv, dv=dk, decay=dual, out_itemsize=4,
                              initial=initial, key_scale=key_scale, boundaries=decayed,
                              split=decayed)
    cost += chunked_pass_cost(**common, dk=dk, dv=dv, decay=decay, out_itemsize=4,
                              initial=True, row_scale=key_scale)
    cost += chunked_pass_cost(**common, dk=dv, dv=dk, decay=dual, out_itemsize=4, initial=True,
                              partner=decayed, split=decayed)
    return cost


def _abstract(*shapes, dtype=jnp.bfloat16):
    return [jax.ShapeDtypeStruct(s, dtype) for s in shapes]


def _grad_of(fn, argnums):
    return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=argnums)


def chunked_rows() -> list[Row]:
    """Linear attention (no, per-head, per-key decay), Mamba-2 SSD and Hydra, bf16."""
    from seqzoo.ops.linear_attention import linear_attention
    from seqzoo.ops.quasiseparable import quasiseparable
    from seqzoo.ops.ssd import ssd

    rows = []
    b, t, h, d = 4, 2048, 16, 128
    for decay, g_shape in ((None, None), ("scalar", (b, t, h)), ("key", (b, t, h, d))):
        args = _abstract((b, t, h, d), (b, t, h, d), (b, t, h, d))
        if g_shape is not None:
            args.append(jax.ShapeDtypeStruct(g_shape, jnp.float32))

        def fwd(q, k, v, g=None):
            return linear_attention(q, k, v, log_decay=g, impl="chunk")

        name = f"linear attention, decay {decay or 'none'}"
        for backward in (False, True):
            cost = chunked_cost(dirs=1, batch=b, length=t, heads=h, dk=d, dv=d, decay=decay,
                                itemsize=2, backward=backward)
            xla = (_grad_of(fwd, tuple(range(len(args)))) if backward else fwd, args)
            rows.append(Row(name, f"({b}, {t}, {h}, {d})", "fwd+bwd" if backward else "fwd",
                            cost, xla))
    b, t, h, p, n = 2, 4096, 32, 64, 128  # Mamba-2 (2.7B-like heads), one group of B / C
    args = [*_abstract((b, t, h, p)), jax.ShapeDtypeStruct((b, t, h), jnp.float32),
            jax.ShapeDtypeStruct((h,), jnp.float32), *_abstract((b, t, 1, n), (b, t, 1, n))]

    def ssd_fwd(x, dt, A, B, C):
        return ssd(x, dt, A, B, C, impl="chunked")

    for backward in (False, True):
        cost = chunked_cost(dirs=1, batch=b, length=t, heads=h, dk=n, dv=p, decay="scalar",
                            itemsize=2, key_scale=True, backward=backward)
        xla = (_grad_of(ssd_fwd, tuple(range(5))) if backward else ssd_fwd, args)
        rows.append(Row("Mamba-2 SSD", f"({b}, {t}, {h}, p {p}, n {n})",
                        "fwd+bwd" if backward else "fwd", cost, xla))
    b, t, h, p, n = 2, 2048, 16, 64, 64  # Hydra: both directions in one launch
    args = [*_abstract((b, t, h, p)), *[jax.ShapeDtypeStruct(s, jnp.float32)
                                        for s in ((b, t, h), (b, t, h), (h,))],
            *_abstract(*[(b, t, 1, n)] * 4)]

    def hydra_fwd(*a):
        return quasiseparable(*a, impl="chunked")

    for backward in (False, True):
        cost = chunked_cost(dirs=2, batch=b, length=t, heads=h, dk=n, dv=p, decay="scalar",
                            itemsize=2, key_scale=True, backward=backward)
        xla = (_grad_of(hydra_fwd, tuple(range(8))) if backward else hydra_fwd, args)
        rows.append(Row("Hydra quasiseparable", f"({b}, {t}, {h}, p {p}, n {n})",
                        "fwd+bwd" if backward else "fwd", cost, xla))
    return rows


def table(rows: list[Row], with_xla: bool) -> str:
    head = ["kernel", "shape", "pass", "bytes (MB)", "GFLOP"]
    for gen in MODELLED:
        head += [f"{gen} us", f"{gen} bound"]
    head += ["XLA form bytes (MB)", "XLA GFLOP"] if with_xla else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.kernel, row.shape, row.kind, f"{row.cost.bytes / 1e6:.1f}",
                 f"{row.cost.flops / 1e9:.1f}"]
        for gen in MODELLED:
            seconds, bound = predicted(row.cost, gen)
            cells += [f"{seconds * 1e6:.0f}", bound]
        if with_xla:
            xla = xla_cost(*row.xla) if row.xla else None
            cells += ["-", "-"] if xla is None else [f"{xla.bytes / 1e6:.1f}",
                                                      f"{xla.flops / 1e9:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA forms' cost")
    args = parser.parse_args()
    print(table(chunked_rows(), not args.no_xla))


if __name__ == "__main__":
    main()
