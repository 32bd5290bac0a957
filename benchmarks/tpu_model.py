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

The sequential scans (linear recurrence, selective scan) do no matmuls: their arithmetic runs on
the VPU, one (8, 128) float32 vector register per operation. For them the model also counts
vector operations (``Cost.vector_ops``, counted by hand from the kernels' loop bodies, per step
and 128 channels: ``RECURRENCE_OPS``, ``selective_scan_ops``; exponentials, broadcasts and
reductions counted as one operation per register) against the VPU's rate: two vector ALU slots
per bundle, each a whole register (TPU v2/v3 as presented at Hot Chips 2020, "4 vector slots (2
for load/store, 2 for ALU)", assumed unchanged since), at the clock implied by the bf16 peak and
four 128 x 128 MXUs per TensorCore (jax's tpu_info): rate = 2 x peak / (4 x 128^2 x 2) =
peak / 65536: 3.0e9 registers/s on v5e, 7.0e9 on v5p (two TensorCores, the grid's parallel axes
split between them). The bound is then the largest of HBM, MXU and VPU time.

Not modelled: VPU and XLU work of the chunked kernels (masks, exponentials, the exact per-key
diagonal blocks, the transposes), the small XLA ops around the kernels (chunk-local cumsums,
gradient assembly; the scans' B/C transposes and complex plane splits are counted), the MXU's
fill at short operands, pipeline bubbles, grid-step overheads (~0.35 us each) and launch
overheads. So each time is a lower bound.
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

from seqzoo.kernels import mosaic_tpu_common as common  # noqa: E402
from seqzoo.kernels import mosaic_tpu_recurrence, mosaic_tpu_selective_scan  # noqa: E402
from seqzoo.kernels.mosaic_tpu_common import GENERATIONS  # noqa: E402
from seqzoo.ops import (  # noqa: E402
    linear_attention,
    linear_recurrence,
    quasiseparable,
    selective_scan,
    ssd,
)

MODELLED = ("v5e", "v5p")


@dataclasses.dataclass(frozen=True)
class Cost:
    """HBM bytes moved, MXU flops and VPU vector-register operations."""

    bytes: float
    flops: float
    vector_ops: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.flops + other.flops,
                    self.vector_ops + other.vector_ops)


@dataclasses.dataclass(frozen=True)
class Row:
    """One kernel at one shape, forward or forward+backward; ``xla``: (fn, abstract args) of the
    XLA form doing the same, or None."""

    kernel: str
    shape: str
    kind: str
    cost: Cost
    xla: tuple | None = None


def vpu_rate(generation: str) -> float:
    """Vector-register operations per second of a chip (module docstring)."""
    return GENERATIONS[generation].bf16_flops_per_s / 65536


def predicted(cost: Cost, generation: str) -> tuple[float, str]:
    """(seconds, bounding resource) on one generation."""
    gen = GENERATIONS[generation]
    times = {"HBM": cost.bytes / gen.hbm_bytes_per_s, "MXU": cost.flops / gen.bf16_flops_per_s,
             "VPU": cost.vector_ops / vpu_rate(generation)}
    bound = max(times, key=times.get)
    return times[bound], bound


def xla_cost(fn, args) -> Cost:
    """Bytes accessed and flops of ``fn`` compiled for this CPU (``cost_analysis``)."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return Cost(float(analysis.get("bytes accessed", math.nan)), float(analysis.get("flops", 0)))


def _abstract(*shapes, dtype=jnp.bfloat16):
    return [jax.ShapeDtypeStruct(s, dtype) for s in shapes]


# --- the sequential scans (seqzoo.kernels.mosaic_tpu_recurrence, mosaic_tpu_selective_scan) ----

# Vector operations per step and 128 channels (real, complex): forward: per row the broadcasts of
# a_t and b_t, the multiply and add (complex: 4 multiplies, 2 adds), writing the row into the
# output tile (a broadcast and a select); backward: broadcasts of g_t and a_t, the add, the
# conjugate multiply, writing lam into its tile, and per tile of 8 rows the rotated h_{t-1} and
# da = lam conj(h_{t-1}) on whole tiles.
RECURRENCE_OPS = {1: (6.0, 6.5), 2: (14.0, 17.5)}


def selective_scan_ops(state: int) -> tuple[float, float]:
    """Vector operations per step and 128 channels (forward, backward) at a state of ``state``
    (padded to 8: v registers of it per 128 lanes). Forward, per step: dt broadcast, dt A, exp,
    dt u broadcast, the drive B dt u, decay x, + drive, x C, the sum over n (v each, +1 for the
    in-register reduction) and the row's write (2). Backward: the block's states recomputed
    (9v) and stored, then per step the state load, decay (3v), lam (3v), dC and dB (5v with the
    lane reductions), B . lam, C . x and A . d(decay) (3v + 3 and a row write each), d(decay)
    (2v), dA (3v), mu (v)."""
    v = common.round_up(state, common.SUBLANES) / common.SUBLANES
    return 10 * v + 3, 36 * v + 9


def recurrence_cost(*, batch, length, channels, planes, itemsize, backward) -> Cost:
    """``linear_recurrence``: forward reads a, b and writes h (all planes); backward reads a,
    g, h and a halo tile per time block, writes da, db. Complex inputs add XLA's plane splits
    (a, b; g) and joins (h; da, db): one read and one write of each."""

    rows = common.tile_rows(jnp.bfloat16 if itemsize == 2 else jnp.float32)
    block_time, _ = mosaic_tpu_recurrence.default_blocks(length, channels, planes,
                                                         (itemsize,) * 5, rows)
    elems = batch * length * channels
    lanes = batch * length * common.cdiv(channels, common.LANES)
    fwd_ops, bwd_ops = RECURRENCE_OPS[planes]
    split = 2 * planes * itemsize if planes == 2 else 0  # read complex, write planes (or back)
    cost = Cost(elems * planes * 3 * itemsize + elems * 3 * split, 0, lanes * fwd_ops)
    if backward:
        halo = batch * common.cdiv(length, block_time) * rows * channels * planes * itemsize
        cost += Cost(elems * planes * 5 * itemsize + halo + elems * 3 * split, 0,
                     lanes * bwd_ops)
    return cost


def selective_scan_cost(*, batch, length, d, n, groups, itemsize, backward) -> Cost:
    """``selective_scan`` with z, D and delta_bias: forward reads u, delta, z, writes y; B and C
    transposed to (batch, groups, n, T) float32 by XLA (read, write) and read once per channel
    block; with ``backward`` the differentiated forward also writes a float32 checkpoint per
    time block, and the backward reads u, delta, z, g, the checkpoints and B, C again, writes
    du, ddelta, dz and per channel block float32 dB, dC, which XLA sums and transposes back."""

    rows = common.tile_rows(jnp.bfloat16 if itemsize == 2 else jnp.float32)
    seq = (2 * itemsize,) * 3 + (itemsize,)
    block_time, block_channels = mosaic_tpu_selective_scan.default_blocks(length, d, n, groups,
                                                                          rows, seq)
    n_pad = common.round_up(n, common.SUBLANES)
    blocks = common.cdiv(d, block_channels)
    steps = common.round_up(length, max(block_time, common.LANES))
    elems, lanes = batch * length * d, batch * length * common.cdiv(d, common.LANES)
    columns = batch * groups * n_pad * steps * 4  # one of B^T, C^T (float32)
    per_block_columns = batch * blocks * n_pad * steps * 4  # read by every channel block
    transpose = 2 * (batch * length * groups * n * itemsize + columns)
    fwd_ops, bwd_ops = selective_scan_ops(n)
    checkpoints = batch * common.cdiv(length, block_time) * n_pad * d * 4
    cost = Cost(elems * 4 * itemsize + transpose + 2 * per_block_columns, 0, lanes * fwd_ops)
    if not backward:
        return cost
    partial_sums = 2 * per_block_columns  # dB, dC per channel block, written
    reduce = partial_sums + transpose  # read and summed, transposed back
    cost += Cost(checkpoints, 0, 0)  # written by the differentiated forward
    cost += Cost(elems * 7 * itemsize + checkpoints + 2 * per_block_columns + partial_sums
                 + reduce, 0, lanes * bwd_ops)
    return cost


def _grad_of(fn, argnums):
    def loss(*a):
        out = fn(*a)
        return sum(jnp.sum(jnp.real(x).astype(jnp.float32)) for x in jax.tree.leaves(out))
    return jax.grad(loss, argnums=argnums)


def scan_rows() -> list[Row]:
    """The linear recurrence (f32, bf16, complex64) and Mamba-1's selective scan (bf16, f32),
    at the shapes measured on the H100 for the Triton kernels (RESULTS.md, issue 7); the XLA
    form is the op's associative scan (what "auto" runs on a TPU today)."""
    rows = []
    for (b, t, c), dtype, planes in (((8, 4096, 2048), jnp.float32, 1),
                                     ((8, 4096, 2048), jnp.bfloat16, 1),
                                     ((8, 4096, 1024), jnp.complex64, 2)):
        itemsize = jnp.dtype(dtype).itemsize // planes
        args = _abstract((b, t, c), (b, t, c), (b, c), dtype=dtype)

        def rec(a, x, h0):
            return linear_recurrence(a, x, initial_state=h0, return_final_state=True,
                                     impl="associative")

        for backward in (False, True):
            cost = recurrence_cost(batch=b, length=t, channels=c, planes=planes,
                                   itemsize=itemsize, backward=backward)
            xla = (_grad_of(rec, (0, 1, 2)) if backward else rec, args)
            rows.append(Row("linear recurrence", f"({b}, {t}, {c}) {jnp.dtype(dtype).name}",
                            "fwd+bwd" if backward else "fwd", cost, xla))
    b, t, d, n = 4, 2048, 2048, 16
    for dtype in (jnp.bfloat16, jnp.float32):
        args = [*_abstract((b, t, d), (b, t, d), dtype=dtype),
                jax.ShapeDtypeStruct((d, n), jnp.float32),
                *_abstract((b, t, n), (b, t, n), dtype=dtype),
                jax.ShapeDtypeStruct((d,), jnp.float32), *_abstract((b, t, d), dtype=dtype),
                jax.ShapeDtypeStruct((d,), jnp.float32)]

        def scan(u, delta, A, B, C, D, z, bias):
            return selective_scan(u, delta, A, B, C, D, z, bias, True, return_final_state=True,
                                  impl="associative")

        for backward in (False, True):
            cost = selective_scan_cost(batch=b, length=t, d=d, n=n, groups=1,
                                       itemsize=jnp.dtype(dtype).itemsize, backward=backward)
            xla = (_grad_of(scan, tuple(range(8))) if backward else scan, args)
            rows.append(Row("Mamba-1 selective scan",
                            f"({b}, {t}, {d}, n {n}) {jnp.dtype(dtype).name}",
                            "fwd+bwd" if backward else "fwd", cost, xla))
    return rows


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


def chunked_rows() -> list[Row]:
    """Linear attention (no, per-head, per-key decay), Mamba-2 SSD and Hydra, bf16."""

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
    head = ["kernel", "shape", "pass", "bytes (MB)", "GFLOP", "vector ops (M)"]
    for gen in MODELLED:
        head += [f"{gen} us", f"{gen} bound"]
    head += ["XLA form bytes (MB)", "XLA GFLOP"] if with_xla else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.kernel, row.shape, row.kind, f"{row.cost.bytes / 1e6:.1f}",
                 f"{row.cost.flops / 1e9:.1f}",
                 f"{row.cost.vector_ops / 1e6:.1f}" if row.cost.vector_ops else "-"]
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
    print(table(chunked_rows() + scan_rows(), not args.no_xla))


if __name__ == "__main__":
    main()
