r"""Forward-only formulations of Mamba-1's selective scan on Pallas' Triton backend, timed against
the library's kernel (issue 24 item 4: forward at (4, 2048, 2048, 16) bf16 from 0.263 ms on an
H100 to <= 0.2 ms). An experiment: the kernels live here, not in ``seqzoo/`` (yet).

GPU command (one call, < 150 s; prints a markdown row per variant as it goes)::

    PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 \
        python benchmarks/selective_scan_variants.py

``--quick``: a tiny shape in Pallas interpret mode (CPU; checks only, its times are no claim).
``--only TEXT[,TEXT]``: only the variants whose name contains one of the texts (and the
reference and the library's kernel). XLA's GEMM autotuning is turned off (as in RESULTS.md's
kernel runs) unless XLA_FLAGS sets it.

The computation (Mamba's default call: softplus on delta, D skip, gate z, B and C shared by all
channels, no packed resets, zero initial state), per batch element, channel d and state index n,
in float32:

    dt_t = softplus(delta_t + delta_bias)                     (batch, length, d)
    x_t  = exp(dt_t A) x_{t-1} + dt_t u_t B_t                 x: (batch, d, n), A: (d, n)
    y_t  = (C_t . x_t + D u_t) silu(z_t)                      B, C: (batch, length, n)

u, delta, z, out: (batch, length, d) bf16; A, D, delta_bias float32. Every variant is checked
against ``seqzoo.ops.selective_scan(impl="associative")`` (relative L2 over the output) and timed
with the harness' ``median_ms`` beside ``impl="pallas"`` (the library's kernel,
``seqzoo/ops/scan/pallas_gpu_selective.py``).

Why: the library kernel holds a program's state as one (width, n) = (32, 16) tile over 4 warps
(4 state elements per thread), loads (chunk, width) tiles, splits them into rows and reduces over
n each step (y_t = C_t . x_t). Its PTX has ~38 barriers per chunk of 8 steps (layout conversions
between the row and state layouts, cross-thread reductions). The per-step dependency chain is
one FMA, so what costs is instructions and barriers, not latency.

Budget (H100, 132 SMs of 4 sub-partitions, ~1.75 GHz): each (t, d, n) needs one ex2 on the MUFU
units, 16 per clock per SM (a warp's ex2 occupies its sub-partition's MUFU 8 clocks), so one pass
of B L D N = 2.7e8 ex2 takes >= 73 us, and only if all 528 sub-partitions have warps. With one
channel per thread a warp's step is 20 MUFU ops (160 clocks) against ~160 instructions issued
(1 per clock): both limits meet; and batch x d = 8192 threads = 256 warps leave half the
sub-partitions idle (>= ~150-190 us); hence (b) and (d) below. libdevice's exp2f (what
jnp.exp2 lowers to) is not the bare instruction (denormal fix-ups around MUFU.EX2), so the new
kernels use ``ex2.approx.ftz.f32`` by inline PTX where compiled (``libdevice`` variants: jnp's
functions).

Variants (all new kernels: a ``fori_loop`` over groups of U steps whose loads are issued one
group early, ``scan_loop.chunked_loop``; y stored per step; A passed as A log2(e) transposed to
(n, d) so that its (width,) columns are contiguous loads; B, C converted to float32 in the
wrapper, a tiny XLA op over (batch, length, n) inside the timed call, so that the kernel does
not convert 2n scalars per step: ``bf16bc`` converts in the kernel instead; softplus as
max(x, 0) + ln2 lg2(1 + ex2(-|x| log2 e)) and silu as z rcp(1 + ex2(-z log2 e)), approximate
MUFU instructions where compiled, ``libdevice``: log1pf, expf and an IEEE division):

* ``per-n wW nN uU`` (a): one channel per thread (W channels, N warps per program, W = 32 N);
  the state is n separate (W,) vectors (a Python list), so every operation is elementwise on 1-D
  vectors of one layout (no layout conversions, no barriers) and the readout sum_n C_t[n] x_n is
  n in-thread FMAs. Each step's rows of u, delta, z are (W,) loads from the refs at step t (no
  tile splitting); B_t[n], C_t[n] are scalar loads (one address for the whole warp: a broadcast
  load each). Per thread and step: n x (mul, ex2, mul, fma, fma) + ~20, and 2n + 3 loads;
  U x (3 + 2n) loaded values in flight (~140 registers at U = 4).
* ``seg P ...`` (b): the sequence cut into P segments (a third grid axis: P times the warps).
  Pass 1 walks segments 0 .. P-2 from a zero state (no readout, no z) and writes each segment's
  end state E_s (batch, P-1, n, d) and its sum of dt S_s (batch, P-1, d); an XLA loop over the
  segments on (batch, n, d) gives each segment's true initial state h_{s+1} = exp(A S_s) h_s +
  E_s, h_0 = 0; pass 2 runs the kernel from h_s over every segment and writes y. Pass 2 starts
  from the true state: exact up to float rounding (exp(A S_s) against the product of the steps'
  exp2, ~1e-7 relative). Costs a second read of u, delta, B over P-1 segments and (P-1)/P more
  ex2s, for P times the warps.
* ``split H wW nN uU`` (d): H threads per channel (H = 2, 4; W = 32 N / H channels, 512 or 1024
  warps in all): the state is n / H (H, W) tiles, tile k row r holding state r n / H + k, so
  each thread runs n / H states; B, C, A, u, delta, z are loaded straight into that layout
  (array indices), and the readout is one in-warp reduction over H per step (shuffles, no
  barrier), with the skip and the gate distributed over it: y = sum_r (sum_k C x + D u / H)
  silu(z), broadcast back over the H rows, which all store the same value to the same address.
  Costs softplus and silu (4 MUFU ops) on each of the H threads of a channel. ``perm``: the
  program's channels in the order (3 c) mod W (see ``_Lanes``), so that Triton gives u's and B's
  loads one layout: without it, its coalescing pass orders u's (contiguous along the channels)
  and B's (constant along them) differently and converts between them (warp shuffles) every
  step. ``seg P split H`` combines (d) with (b).
* ``tiled wW cC nN`` (c): the library kernel at launches RESULTS.md did not time.

Offline (triton 3.6 compiling each kernel's Triton IR for sm_90 on a CPU, as kernels/README.md
describes; no GPU): SASS instructions per step and warp in the time loop, registers, barriers:

    library (w32 c16 n4, 4 states / thread, 1024 warps)   103 per step, 128 regs, 66 BAR / loop
    per-n w32 n1 u4 (16 states / thread, 256 warps)        163 (20 MUFU, 35 LDG), 168 regs, 0 BAR
    seg 4 w32 n1 u4, pass 1 / pass 2                       104 / 163, 128 / 166 regs, 0 BAR
    split 2 w16 n1 u4 perm (8 states, 512 warps)           102 (12 MUFU, 19 LDG, 1 SHFL), 128 regs
    split 2 w16 n1 u4 (no perm)                            112 (13 SHFL)
    split 4 w8 n1 u4 perm (4 states, 1024 warps)            72 (8 MUFU, 11 LDG, 2 SHFL), 80 regs
    split 4 w8 n1 u4 (no perm)                              90 (10 SHFL)

Issue-bound model (1 instruction per clock per sub-partition, 528 of them, 1.755 GHz): the
library kernel 103 x 1024 warps x 2048 steps -> 240 us (measured 263 us); split 4 perm -> 165 us;
split 2 perm -> 115 us if its 512 warps fill 512 sub-partitions (one warp each: no latency
hiding); per-n: 256 busy sub-partitions x 163 x 2048 -> 190 us.

Lowering notes: tests/test_selective_scan_variants.py checks in interpret mode that each kernel
equals the reference to 1e-5 in float32, and that each lowers to Triton IR on a CPU
(``tests/gpu_lowering.py``). Compiled offline as above: no spills, no barriers, no shared memory
in any new kernel. What only the GPU tells: the times, and Triton's compile time there. That is
spent in its coalescing pass (99% of it), which grows with (tensor memory ops) x (ops)^2 per
kernel (scan_loop's docstring): 16-36 s for split 4 and per-n, 55-70 s for split 2 and seg's
pass 2 (U = 4) on the 2-core CPU here. ``main`` therefore compiles every variant in parallel
(``--workers``, the slow ones submitted first) and reports any not compiled within
``--compile-s`` seconds (default 110) instead of waiting for it; the whole run stays under the
200 s timeout of the command above.

**Measured (H100, 2026-12-06; benchmarks/RESULTS.md, "Other forward formulations, timed"): every
new formulation is slower than the library's tiled kernel** (library 0.291 ms; per-n 0.763, seg
4 0.368, split 0.472-0.750): the issue-bound model above does not hold. The one gain is a launch
of the tiled kernel, w16 c16 n2 (0.260 ms).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import pallas as pl  # noqa: E402
from jax.experimental.pallas import triton as plgpu  # noqa: E402
from kernel_harness import floor_ms, median_ms, relative_error  # noqa: E402

from seqzoo.kernels import launch  # noqa: E402
from seqzoo.kernels.launch import pallas_call  # noqa: E402
from seqzoo.kernels.scan_loop import chunked_loop  # noqa: E402
from seqzoo.ops.scan import pallas_gpu_selective as tiled_kernel  # noqa: E402
from seqzoo.ops.scan import selective_scan  # noqa: E402

_F32 = jnp.float32
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
MAIN = (4, 2048, 2048, 16)  # batch, length, d, n
QUICK = (2, 37, 16, 4)
RTOL = 1e-2  # bf16 outputs (relative L2), as benchmarks/kernel_cases/selective_scan.py


def _approx(op: str, x):
    """PTX ``op``.approx.ftz.f32 (one MUFU instruction) where kernels are compiled; the exact
    jnp function in interpret mode."""
    if not launch.kernels_compiled():
        return {"ex2": jnp.exp2, "lg2": jnp.log2, "rcp": lambda v: 1.0 / v}[op](x)
    return plgpu.elementwise_inline_asm(
        f"{op}.approx.ftz.f32 $0, $1;", args=[x], constraints="=r,r", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, _F32)])[0]


def _exp2(x, fast: bool):
    """2^x: libdevice's ``__nv_exp2f`` (what jnp.exp2 lowers to: non-ftz, denormal fix-ups
    around MUFU.EX2) or, ``fast``, the bare ``ex2.approx.ftz.f32``."""
    return _approx("ex2", x) if fast else jnp.exp2(x)


def _softplus(x, fast: bool):
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): libdevice's log1pf and expf, or ``fast``
    ex2 and lg2 approximations (two MUFU instructions; absolute error ~1e-7)."""
    if not fast:
        return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return jnp.maximum(x, 0.0) + _LN2 * _approx("lg2", 1.0 + _approx("ex2", -_LOG2E * jnp.abs(x)))


def _silu(x, fast: bool):
    """x sigmoid(x): an IEEE division, or ``fast`` ex2 and rcp approximations."""
    if not fast:
        return x / (1.0 + jnp.exp(-x))
    return x * _approx("rcp", 1.0 + _approx("ex2", -_LOG2E * x))


# ---------------------------------------------------------------------------------------------
# (a) / (b): the per-n-vectors kernel, whole sequence or one segment per program.


class _Lanes:
    """Where a program's state lives: ``split`` = 1: n vectors (width,), one channel per thread;
    ``split`` = H > 1: n / H tiles (H, width), H threads per channel (H x width = 32 x warps;
    Triton puts the H axis within a warp with ``perm``, and without it for one warp), tile k row
    r holding state r n / H + k.

    ``perm``: the program's channels in the order (3 c) mod width instead of c, so that Triton's
    axis analysis sees no contiguity in u's, delta's, z's and out's addresses (as in B's and C's,
    constant along the channels): its coalescing pass then gives every load the same layout
    (the order it picks for ties) instead of two, and the per-step layout conversions between
    them (warp shuffles) go. The hardware still coalesces the warp's accesses (same sectors)."""

    def __init__(self, block, width: int, n: int, split: int, perm: bool = False):
        self.width, self.split, self.per = width, split, n // split
        self.out_cols = pl.ds(block, width)
        if split == 1:
            self.shape, self.cols = (width,), self.out_cols
        else:
            self.shape = (split, width)
            c = jax.lax.broadcasted_iota(jnp.int32, self.shape, 1)
            self.cols = block + ((3 * c) % width if perm else c)
            self.rows = jax.lax.broadcasted_iota(jnp.int32, self.shape, 0)

    def state(self, k: int):
        """The index over n of state k: an int (one channel per thread) or an (H, width) array."""
        return k if self.split == 1 else self.rows * self.per + k

    def total(self, v):
        """Sum over the H threads of each channel: (width,)."""
        return v if self.split == 1 else jnp.sum(v, axis=0)


def _walk(*, refs, lanes, length, seg_len, unroll, ragged, fast, batch_id, first, x, readout):
    """Steps ``first .. first+seg_len-1`` (rows past ``length`` leave x unchanged and are not
    written) of one program: ``x`` a list of n / split state tiles (``lanes.shape``, f32);
    returns (x, sum of dt)."""
    u_ref, delta_ref, z_ref, B_ref, C_ref, out_ref = refs
    A2, D_, bias = readout["A2"], readout.get("D"), readout["bias"]
    cols, per, b = lanes.cols, lanes.per, batch_id

    def row_index(t):
        return jnp.minimum(t, length - 1) if ragged else t

    def load(start):
        group = {"u": [], "delta": [], "z": [], "B": [], "C": []}
        for j in range(unroll):
            t = row_index(start + j)
            group["u"].append(u_ref[b, t, cols])
            group["delta"].append(delta_ref[b, t, cols])
            group["B"].append([B_ref[b, t, lanes.state(k)] for k in range(per)])
            if out_ref is not None:
                group["z"].append(z_ref[b, t, cols])
                group["C"].append([C_ref[b, t, lanes.state(k)] for k in range(per)])
        return group

    def run(start, group, carry):
        x, dt_sum = carry
        x = list(x)
        for j in range(unroll):
            t = start + j
            u = group["u"][j].astype(_F32)
            dt = group["delta"][j].astype(_F32) + bias
            dt = _softplus(dt, fast)
            if ragged:
                dt = jnp.where(t < length, dt, 0.0)
            dtu = dt * u
            dt_sum = dt_sum + dt
            y = None
            for k in range(per):
                decay = _exp2(dt * A2[k], fast)
                x[k] = decay * x[k] + dtu * group["B"][j][k].astype(_F32)
                if out_ref is not None:
                    term = group["C"][j][k].astype(_F32) * x[k]
                    y = term if y is None else y + term
            if out_ref is None:
                continue
            # (C . x + D u) silu(z); split: the gate distributes over the sum of the H parts
            y = (y + D_ * u * (1.0 / lanes.split)) * _silu(group["z"][j].astype(_F32), fast)
            if lanes.split > 1:
                # the sum broadcast back over the H rows, which all store the same value to the
                # same address: the (H, width) layout kept (no conversion before the store; a
                # row-0 mask would break interpret mode, whose masked stores write back the old
                # value where masked off)
                y = jnp.broadcast_to(jnp.sum(y, axis=0, keepdims=True), lanes.shape)
                y = y.astype(out_ref.dtype)
                if ragged:
                    inside = jnp.broadcast_to(t < length, lanes.shape)
                    plgpu.store(out_ref.at[b, row_index(t), cols], y, mask=inside)
                else:
                    out_ref[b, t, cols] = y
                continue
            y = lanes.total(y).astype(out_ref.dtype)
            if ragged:
                inside = jnp.broadcast_to(t < length, (lanes.width,))
                plgpu.store(out_ref.at[b, row_index(t), lanes.out_cols], y, mask=inside)
            else:
                out_ref[b, t, lanes.out_cols] = y
        return tuple(x), dt_sum

    carry = (tuple(x), jnp.zeros(lanes.shape, _F32))
    x, dt_sum = chunked_loop(seg_len, unroll, load, run, carry, first=first)
    return list(x), dt_sum


def _per_n_kernel(*refs, length, seg_len, unroll, width, n, split, perm, ragged, fast, segmented,
                  pass1):
    """Grid (d / width, batch, segments). pass1: the segment's end state from zero and its
    sum of dt; else the output from the segment's initial state (zero when not segmented)."""
    refs = list(refs)
    if pass1:
        u, delta, B, A2T, bias, x_end, dt_sum_ref = refs
        z = C = D = out = None
    else:
        u, delta, z, B, C, A2T, D, bias = refs[:8]
        x0 = refs[8] if segmented else None
        out = refs[-1]
    lanes = _Lanes(pl.program_id(0) * width, width, n, split, perm)
    b = pl.program_id(1)
    s = pl.program_id(2) if segmented else 0
    cols = lanes.cols
    readout = {"A2": [A2T[lanes.state(k), cols] for k in range(lanes.per)], "bias": bias[cols]}
    if not pass1:
        readout["D"] = D[cols]
    if segmented and not pass1:
        x = [x0[b, s, lanes.state(k), cols] for k in range(lanes.per)]
    else:
        x = [jnp.zeros(lanes.shape, _F32) for _ in range(lanes.per)]
    first = s * seg_len if segmented else 0
    x, dt_sum = _walk(refs=(u, delta, z, B, C, out), lanes=lanes, length=length,
                      seg_len=seg_len, unroll=unroll, ragged=ragged, fast=fast, batch_id=b,
                      first=first, x=x, readout=readout)
    if pass1:
        for k in range(lanes.per):
            x_end[b, s, lanes.state(k), cols] = x[k]
        dt_sum_ref[b, s, cols] = dt_sum  # split: the H rows store the same value


def per_n(u, delta, A, B, C, D, z, delta_bias, *, width=32, warps=1, unroll=4, segments=1,
          split=1, perm=False, bc_f32=True, fast=True):
    """Variants (a) (segments=1, split=1), (b) (segments > 1) and (d) (split > 1): out
    (batch, length, d) in u's dtype.

    B, C: (batch, length, n) shared; d a multiple of width, n of split; softplus on, gate on."""
    batch, length, d = u.shape
    n = A.shape[1]
    if d % width or n % split:
        raise ValueError(f"d={d} must be a multiple of width={width}, n={n} of split={split}")
    if perm and split == 1:
        raise ValueError("perm: for split > 1")
    seg_len = -(-length // segments)
    seg_len = -(-seg_len // unroll) * unroll  # a multiple of unroll: only the last overhangs
    segments = -(-length // seg_len)
    A2T = (A.astype(_F32) * _LOG2E).T  # (n, d)
    if bc_f32:
        B, C = B.astype(_F32), C.astype(_F32)
    bias = delta_bias.astype(_F32)
    static = dict(length=length, seg_len=seg_len, unroll=unroll, width=width, n=n, split=split,
                  perm=perm,
                  ragged=segments * seg_len != length, fast=fast, segmented=segments > 1)
    x0 = []
    if segments > 1:  # pass 1 over segments 0 .. P-2, then the carries in XLA
        ends, sums = pallas_call(
            functools.partial(_per_n_kernel, **static, pass1=True),
            grid=(d // width, batch, segments - 1), num_warps=warps,
            out_shape=[jax.ShapeDtypeStruct((batch, segments - 1, n, d), _F32),
                       jax.ShapeDtypeStruct((batch, segments - 1, d), _F32)],
        )(u, delta, B, A2T, bias)
        h = jnp.zeros((batch, n, d), _F32)
        starts = [h]
        for s in range(segments - 1):
            h = jnp.exp(A.astype(_F32).T[None] * sums[:, s, None, :]) * h + ends[:, s]
            starts.append(h)
        x0 = [jnp.stack(starts, axis=1)]  # (batch, segments, n, d)
    return pallas_call(
        functools.partial(_per_n_kernel, **static, pass1=False),
        grid=(d // width, batch, segments), num_warps=warps,
        out_shape=jax.ShapeDtypeStruct(u.shape, u.dtype),
    )(u, delta, z, B, C, A2T, D.astype(_F32), bias, *x0)


# ---------------------------------------------------------------------------------------------
# The variants and the reference.


def reference(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                          impl="associative")


def library(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                          impl="pallas")


def tiled(width, chunk, warps):
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return tiled_kernel.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                           delta_softplus=True, width=width, chunk=chunk,
                                           checkpoint=chunk, num_warps=warps)[0]
    return fn


def _name(width, warps, unroll, segments=1, split=1, **flags) -> str:
    name = f"seg {segments} " if segments > 1 else ("per-n " if split == 1 else "")
    name += f"split {split} " if split > 1 else ""
    name += f"w{width} n{warps} u{unroll}"
    return name + "".join(f" {k}" for k, on in flags.items() if on)


def variants(quick: bool) -> dict:
    """name -> fn(u, delta, A, B, C, D, z, delta_bias) -> out; the first is the reference.
    In the order compiled and timed (most telling first: the last may miss ``--compile-s``)."""
    out = {"xla (associative, reference)": reference, "pallas (library, impl=pallas)": library}
    if quick:  # interpret mode: every code path at a tiny shape (warps are ignored)
        launches = [dict(width=8, warps=1, unroll=4), dict(width=8, warps=1, unroll=4, split=2),
                    dict(width=8, warps=1, unroll=4, split=2, perm=True),
                    dict(width=4, warps=1, unroll=2, split=4, segments=3, perm=True),
                    dict(width=8, warps=1, unroll=4, segments=3),
                    dict(width=16, warps=2, unroll=2, segments=2),
                    dict(width=8, warps=1, unroll=4, libdevice=True),
                    dict(width=8, warps=1, unroll=4, segments=3, libdevice=True),
                    dict(width=8, warps=1, unroll=4, bf16bc=True)]
        tiles = [(8, 8, 1)]
    else:  # Triton compile times on a 2-core CPU (triton 3.6, sm_90) in brackets
        launches = [
            # (d): H threads per channel, one warp per program: 512 / 1024 warps (68 s, 16 s)
            dict(width=16, warps=1, unroll=4, split=2, perm=True),
            dict(width=8, warps=1, unroll=4, split=4, perm=True),
            # (d) and (b): 1024 / 2048 warps, pass 1 over half of the sequence (~100 s, ~24 s)
            dict(width=16, warps=1, unroll=4, split=2, segments=2, perm=True),
            dict(width=8, warps=1, unroll=4, split=4, segments=2, perm=True),
            # (b): one channel per thread, 4 segments: 1024 warps (67 s)
            dict(width=32, warps=1, unroll=4, segments=4),
            # (a): one channel per thread, 256 warps (36 s)
            dict(width=32, warps=1, unroll=4),
            # (d) without the channel permutation: layout conversions (shuffles) every step
            dict(width=16, warps=1, unroll=4, split=2), dict(width=8, warps=1, unroll=4, split=4),
            # two warps per program, shallower prefetch, libdevice, bf16 B and C
            dict(width=32, warps=2, unroll=4, split=2, perm=True),
            dict(width=16, warps=2, unroll=4, split=4, perm=True),
            dict(width=16, warps=1, unroll=2, split=2, perm=True),
            dict(width=8, warps=1, unroll=2, split=4, perm=True),
            dict(width=8, warps=1, unroll=4, split=4, perm=True, libdevice=True),
            dict(width=8, warps=1, unroll=4, split=4, perm=True, bf16bc=True),
        ]
        tiles = [(16, 16, 2), (32, 16, 2), (64, 16, 8), (32, 32, 4)]
    for launch_ in launches:
        kw = dict(launch_)
        libdevice, bf16bc = kw.pop("libdevice", False), kw.pop("bf16bc", False)
        out[_name(**launch_)] = functools.partial(per_n, **kw, fast=not libdevice,
                                                  bc_f32=not bf16bc)
    for w, c, nw in tiles:
        out[f"tiled w{w} c{c} n{nw}"] = tiled(w, c, nw)
    return out


def inputs(shape, dtype=jnp.bfloat16, seed=0) -> tuple:
    """Mamba's call at ``shape`` (as benchmarks/kernel_cases/selective_scan.py):
    (u, delta, A, B, C, D, z, delta_bias)."""
    b, l, d, n = shape
    keys = jax.random.split(jax.random.PRNGKey(seed), 7)

    def normal(i, shape, dtype=dtype, scale=1.0, shift=0.0):
        return (jax.random.normal(keys[i], shape, _F32) * scale + shift).astype(dtype)

    A = -jnp.broadcast_to(jnp.arange(1, n + 1, dtype=_F32), (d, n))
    A = A * (1.0 + 0.1 * jax.random.uniform(keys[6], (d, n)))  # not exactly Mamba's init
    return (normal(0, (b, l, d)), normal(1, (b, l, d), scale=0.5, shift=-4.0), A,
            normal(2, (b, l, n)), normal(3, (b, l, n)), normal(4, (d,), _F32, shift=1.0),
            normal(5, (b, l, d)), normal(6, (d,), _F32, scale=0.1))


def _compile(fn, args):
    return jax.jit(fn).lower(*args).compile()


def main(argv=None) -> list[tuple[str, float, float]]:
    """Check and time every variant; returns (name, ms, error) rows (nan ms where it failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape (CPU interpret mode)")
    parser.add_argument("--only", help="comma-separated texts: only the variants whose name "
                        "has one (besides the reference and the library's kernel)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--compile-s", type=float, default=110.0,
                        help="give up on variants not compiled by then")
    parser.add_argument("--workers", type=int, default=12, help="compile threads")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    shape = QUICK if args.quick else MAIN
    repeats, calls = (1, 1) if args.quick else (args.repeats, args.calls)
    fns = variants(args.quick)
    if args.only:
        names = list(fns)  # the reference and the library's kernel always
        keep = [k for k in names[2:] if any(t in k for t in args.only.split(","))]
        fns = {k: fns[k] for k in names[:2] + keep}
    a = inputs(shape)
    b, l, d, n = shape
    floor = floor_ms(2 * (4 * b * l * d + 2 * b * l * n))  # u, delta, z, out, B, C in bf16
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"selective_scan fwd B{b} L{l} D{d} N{n} bf16, softplus, D, gate; floor "
          f"{floor:.3f} ms", flush=True)
    pool = ThreadPoolExecutor(args.workers)
    futures = {name: pool.submit(_compile, fn, a) for name, fn in fns.items()}
    print("| variant | ms | floor ms | % of floor | vs library | rel. L2 error | ok |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    rows, ref, base = [], None, None
    deadline = began + args.compile_s
    for name, future in futures.items():
        try:
            exe = future.result(timeout=max(deadline - time.perf_counter(), 0.1))
            fn = functools.partial(exe, *a)
            out = fn()
            if ref is None:
                ref, error = out, 0.0
            else:
                error = relative_error(out, ref)
            ms = median_ms(fn, repeats=repeats, calls=calls)
        except FutureTimeout:
            print(f"| {name} | compile not done after {args.compile_s:.0f} s | | | | | NO |",
                  flush=True)
            rows.append((name, float("nan"), float("inf")))
            continue
        except Exception as exc:  # one failing variant does not stop the rest
            msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")[:300]
            print(f"| {name} | failed: {msg} | | | | | NO |", flush=True)
            rows.append((name, float("nan"), float("inf")))
            continue
        if name.startswith("pallas (library"):
            base = ms
        speed = f"{base / ms:.2f}x" if base else "-"
        print(f"| {name} | {ms:.3f} | {floor:.3f} | {100 * floor / ms:.0f}% | {speed} "
              f"| {error:.1e} | {'yes' if error <= RTOL else 'NO'} |", flush=True)
        rows.append((name, ms, error))
    print(f"# {time.perf_counter() - began:.0f} s", flush=True)
    pool.shutdown(wait=False, cancel_futures=True)
    return rows


if __name__ == "__main__":
    if "xla_gpu_autotune_level" not in os.environ.get("XLA_FLAGS", ""):  # read at backend start
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0"
    main()
    sys.stdout.flush()
    os._exit(0)  # compiles still running past --compile-s are not waited for
