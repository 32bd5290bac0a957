"""The intra-chunk scores of per-key decays as a Pallas kernel: ``intra_chunk.py``'s forward on
a parallel grid, organised as fla's ``chunk_gla_fwd_A`` kernels (``chunk_gla_fwd_intra_gk``: one
pass for the sub-chunk pairs below the diagonal, one for the diagonal blocks, column by column).

    A_ij = sum_d q_id k_jd exp(G_id - G_jd)    j <= i in one chunk of C steps, else 0

A program reads its chunk's ``q, k: (C, dk)`` (the inputs' dtype) and ``G: (C, dk)`` float32
(the chunk-local cumulative log decays, non-increasing down the chunk) and writes rows of
``A: (C, C)`` float32 sub-chunk I by sub-chunk I of ``sub`` rows (first row r, rows
``i = r .. r + sub - 1``), every element of A written once:

* below the diagonal block (``j < r``): through I's first row as reference,
  ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)``, both factors <= 1, so
  ``A[I, :r] = (q_I exp(G_I - G_r)) (k_J exp(G_r - G_J))^T``: the decayed query rows
  ``(sub, dk)`` once per I, then only the rows before I are read (``pl.ds``) and decayed, one
  ``(sub, dk) x (dk, rows)`` matmul per piece of them, operands rounded to the inputs' dtype,
  float32 accumulation (IEEE for float32);
* the diagonal block ``A[I, r:r + sub]`` exactly, a loop over its ``sub`` columns j (a
  ``fori_loop``): ``sum_d q_Id k_jd exp(G_Id - G_jd)``, a ``(sub, dk)`` product reduced over dk
  into column j of a ``(sub, sub)`` float32 block (``where(col == j, ...)``), then the causal
  mask ``j <= i``, which also drops the rows above the diagonal, whose positive exponents may
  overflow (each row's sum is its own: nothing reaches a kept row). Every tensor is 2-D;
  ``(sub, sub, dk)`` is never formed;
* right of the diagonal block (``j >= r + sub``): zeros.

Two launches (``ScoresTiling``):

* one program per (batch, chunk, head) (the default, ``kernel=True``): every sub-chunk I
  unrolled in the program, the rows before I in power-of-two pieces (r = 48: rows 0..32 and
  32..48; Triton's tensors have power-of-two sides). Per program ``C (C - sub) / 2 * dk``
  multiply-adds and ``(C - sub) dk + C (C - sub) / (2 sub) dk`` exponentials below the diagonal
  (144 dk at C = 64, sub = 16) and ``C sub dk`` of each on the diagonal blocks (1024 dk). At
  GLA's (4, 2048, 16, 128) bf16 that is 2048 programs, each at ptxas' 255 registers (slower
  than XLA's scores on an H100);
* ``per_sub_chunk``: one program per (batch, chunk, head, sub-chunk), the grid's last axis,
  writing its ``(sub, C)`` rows: the sub-chunks before I one ``(sub, sub)`` block each (a loop
  of I steps: one ``(sub, dk) x (dk, sub)`` matmul), the diagonal block, then zero blocks (a
  loop). C / sub times the programs (8192 at GLA's shape, fla's diagonal pass's count), each
  one sub-chunk's code, no register spills. Exponentials ``sub dk`` more per chunk than the
  unrolled launch (the first sub-chunk's decayed queries, unused): 160 dk + 1024 dk (fla's two
  passes: 192 dk + 1024 dk).

The diagonal blocks' column loop reads key j's row as a ``(sub, dk)`` tile (``_column_sums``)
so that Triton keeps dk within threads for the row sums; its machine code, launch by launch, is
in benchmarks/RESULTS.md (sections on the scores kernel, issue 24), not here.

Unlike fla (a launch over sub-chunk pairs, then one over diagonal blocks) both parts run in the
same program. No state, nothing sequential: the grid is parallel over every axis. Forward
only; the VJP is ``intra_chunk._scores_per_key``'s (XLA), or ``pallas_gpu_intra_bwd``'s with
``ScoresTiling.vjp_kernel``. ``sub`` a power of two >= 16 dividing C for Triton (its matmuls
take sides >= 16; any divisor runs in interpret mode).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqzoo.kernels import approx_exp, launch
from seqzoo.kernels.chunked_tiling import padded_width

Array = jax.Array
_F32 = jnp.float32


def _pieces(start: int, stop: int) -> list[tuple[int, int]]:
    """``[start, stop)`` as consecutive ``(offset, size)`` pieces of power-of-two sizes, the
    largest first (48 rows -> 32 + 16)."""
    pieces = []
    while start < stop:
        size = 1 << ((stop - start).bit_length() - 1)
        pieces.append((start, size))
        start += size
    return pieces


def _from_reference(q_ref, g_ref, r, sub: int, dtype, approx: bool):
    """Sub-chunk I's rows from row ``r`` (static or traced): ``q_I, G_I: (sub, dk)`` float32,
    ``G_r: (1, dk)`` and the decayed queries ``q_I exp(G_I - G_r)`` in ``dtype`` (``approx``:
    ``approx_exp.exp``'s instruction)."""
    rows = pl.ds(r, sub)
    q_i, g_i = q_ref[rows, :].astype(_F32), g_ref[rows, :]
    g_r = g_ref[pl.ds(r, 1), :]
    return q_i, g_i, g_r, (q_i * approx_exp.exp(g_i - g_r, approx)).astype(dtype)


def _below(from_ref, g_r, k_ref, g_ref, earlier, dtype, approx: bool) -> Array:
    """``A[I, earlier] = (q_I exp(G_I - G_r)) (k_J exp(G_r - G_J))^T`` for rows ``earlier``
    before I (a ``pl.ds``): one ``(sub, dk) x (dk, rows)`` matmul, float32 accumulation (IEEE
    for float32)."""
    to_ref = k_ref[earlier, :].astype(_F32) * approx_exp.exp(g_r - g_ref[earlier, :], approx)
    precision = lax.Precision.HIGHEST if dtype == _F32 else None
    return lax.dot_general(from_ref, to_ref.astype(dtype), (((1,), (1,)), ((), ())),
                           precision=precision, preferred_element_type=_F32)


def _column_sums(q_i, g_i, k_ref, g_ref, r, j, sub: int, approx: bool) -> Array:
    """Column ``r + j`` of A on I's rows, unmasked: ``(sub,)`` float32,
    ``sum_d q_Id k_jd exp2((G_Id - G_jd) log2 e)``. Key j's row is read once per row of I (an
    index vector of ``sub`` copies of ``r + j``), a ``(sub, dk)`` tile of one row repeated:
    Triton then lays the loop's tensors out as the queries' tiles (dk within threads, 2
    shuffle rounds a row sum at 2 warps); read as a ``(1, dk)`` row and broadcast, they took
    that row's layout (dk over every lane of both warps: 5 shuffle rounds and a trip through
    shared memory a row sum; benchmarks/RESULTS.md counts both loops' instructions).
    No ``min(., 0)`` on the exponent: on rows above the diagonal (``i < j``, masked by the
    caller, each row's sum its own) it may overflow to inf or nan; on the others it is <= 0 up
    to rounding. The difference is taken before the scaling: scaling G first (log2 units, as
    fla) made ``G_I log2 e - G_j log2 e`` nonzero at i = j (an FMA rounds one product and not
    the other): in interpret mode on a CPU, A off by 2e-4 relative L2, 0.3% on its diagonal,
    at G = -6e4 (decays of -1e3 per step). ``approx``: ``approx_exp``'s instruction."""
    key = jnp.full((sub,), r + j, jnp.int32)
    decay = approx_exp.exp2((g_i - g_ref[key, :]) * approx_exp.LOG2E, approx)
    return jnp.sum(q_i * k_ref[key, :].astype(_F32) * decay, axis=1)


def _diagonal(q_i, g_i, k_ref, g_ref, r, sub: int, approx: bool) -> Array:
    """The diagonal block ``A[I, r:r + sub]``, ``(sub, sub)`` float32, column by column
    (``_column_sums`` into column j of the block, ``where(col == j, ...)``), then the causal
    mask ``j <= i``."""
    col = lax.broadcasted_iota(jnp.int32, (sub, sub), 1)

    def column(j, block):
        sums = _column_sums(q_i, g_i, k_ref, g_ref, r, j, sub, approx)
        return jnp.where(col == j, sums[:, None], block)

    block = lax.fori_loop(0, sub, column, jnp.zeros((sub, sub), _F32))
    return jnp.where(col <= lax.broadcasted_iota(jnp.int32, (sub, sub), 0), block, 0.0)


def _diagonal_stored(q_i, g_i, k_ref, g_ref, a_ref, rows, r, sub: int, approx: bool) -> None:
    """``_diagonal``'s block stored column by column into ``a_ref[rows, r + j]`` as computed
    (masked to ``j <= i`` there: no ``(sub, sub)`` block selected into, no layout
    conversion)."""
    row = lax.broadcasted_iota(jnp.int32, (sub,), 0)

    def column(j, carry):
        sums = _column_sums(q_i, g_i, k_ref, g_ref, r, j, sub, approx)
        a_ref[rows, pl.ds(r + j, 1)] = jnp.where(row >= j, sums, 0.0)[:, None]
        return carry

    lax.fori_loop(0, sub, column, 0)


def _diagonal_into(a_ref, rows, q_i, g_i, k_ref, g_ref, r, sub: int, stored: bool,
                   approx: bool) -> None:
    """The diagonal block ``A[I, r:r + sub]`` into ``a_ref[rows, r:r + sub]``: ``_diagonal``'s,
    or ``_diagonal_stored``'s where ``stored``."""
    if stored:
        _diagonal_stored(q_i, g_i, k_ref, g_ref, a_ref, rows, r, sub, approx)
    else:
        a_ref[rows, pl.ds(r, sub)] = _diagonal(q_i, g_i, k_ref, g_ref, r, sub, approx)


def _kernel(q_ref, k_ref, g_ref, a_ref, *, sub: int, dtype, stored: bool, approx: bool):
    """One program per chunk: every sub-chunk I unrolled, the rows before it in power-of-two
    pieces."""
    c = q_ref.shape[0]
    for r in range(0, c, sub):
        rows = pl.ds(r, sub)
        q_i, g_i, g_r, from_ref = _from_reference(q_ref, g_ref, r, sub, dtype, approx)
        for j0, size in _pieces(0, r):  # the sub-chunks before I, through I's first row
            earlier = pl.ds(j0, size)
            a_ref[rows, earlier] = _below(from_ref, g_r, k_ref, g_ref, earlier, dtype, approx)
        _diagonal_into(a_ref, rows, q_i, g_i, k_ref, g_ref, r, sub, stored, approx)
        for j0, size in _pieces(r + sub, c):
            a_ref[rows, pl.ds(j0, size)] = jnp.zeros((sub, size), _F32)


def _sub_chunk_kernel(q_ref, k_ref, g_ref, a_ref, *, sub: int, dtype, stored: bool,
                      approx: bool):
    """One program per sub-chunk I (the grid's last axis): its ``(sub, C)`` rows of A, the
    sub-chunks before it one ``(sub, sub)`` block each (a loop of I steps), then the diagonal
    block, then zero blocks."""
    i = pl.program_id(3)
    r = pl.multiple_of(i * sub, sub)
    q_i, g_i, g_r, from_ref = _from_reference(q_ref, g_ref, r, sub, dtype, approx)

    def block(j):
        return pl.ds(pl.multiple_of(j * sub, sub), sub)

    def earlier(j, carry):
        a_ref[:, block(j)] = _below(from_ref, g_r, k_ref, g_ref, block(j), dtype, approx)
        return carry

    def later(j, carry):
        a_ref[:, block(j)] = jnp.zeros((sub, sub), _F32)
        return carry

    lax.fori_loop(0, i, earlier, 0)
    _diagonal_into(a_ref, slice(None), q_i, g_i, k_ref, g_ref, r, sub, stored, approx)
    lax.fori_loop(i + 1, q_ref.shape[0] // sub, later, 0)


def padded_keys(*xs: Array) -> tuple[Array, ...]:
    """Each ``(B, N, C, H, dk)`` array with dk zero-padded to a power of two >= 16 (Triton's
    tensor sides; zero q, k: the padded columns add nothing to A or its gradients)."""
    width = padded_width(xs[0].shape[-1])
    return tuple(jnp.pad(x, [(0, 0)] * 4 + [(0, width - x.shape[-1])]) for x in xs)


@dataclasses.dataclass(frozen=True)
class ScoresTiling:
    """The scores kernel's launch. ``per_sub_chunk``: one program per (batch, chunk, head,
    sub-chunk) writing ``sub`` rows of A (``C / sub`` times the programs, each a fraction of the
    code) instead of one per (batch, chunk, head) writing all C rows; ``stored_diagonal``: the
    diagonal blocks by ``_diagonal_stored`` (exp2, columns stored as computed, as fla's diagonal
    pass) instead of ``_diagonal``; ``num_warps``, ``num_stages``: Triton's (the VJP kernel's
    too); ``vjp_kernel``: the VJP's dq and dk by ``pallas_gpu_intra_bwd`` (one program per
    sub-chunk) instead of XLA's einsums; ``outputs_kernel``: the split's ``A v`` by
    ``pallas_gpu_intra_outputs`` (on A's and v's own layouts) instead of XLA's batched matmul;
    ``approx_exp``: the scores' and their VJP kernel's exponentials by ``seqzoo.kernels.
    approx_exp`` (one ``ex2.approx`` each, as Triton's ``tl.exp``) instead of libdevice's."""

    per_sub_chunk: bool = False
    stored_diagonal: bool = False
    vjp_kernel: bool = False
    outputs_kernel: bool = False
    approx_exp: bool = False
    num_warps: int = 4
    num_stages: int = 1


# The split's scores for 16-bit inputs (``pallas_gpu_split.linear_attention_kernel``'s default):
# per sub-chunk, 2 warps, stored diagonal, the VJP kernel (benchmarks/RESULTS.md, "The scores
# kernel at 2 warps"), ``A v`` by its kernel and one-instruction exponentials (RESULTS.md, "The
# cumsum and A v kernels and one-instruction exponentials timed").
MEASURED = ScoresTiling(per_sub_chunk=True, stored_diagonal=True, vjp_kernel=True,
                        outputs_kernel=True, approx_exp=True, num_warps=2)


def intra_chunk_scores(q: Array, k: Array, cum: Array, *, sub: int, dtype,
                       tiling: ScoresTiling = ScoresTiling()) -> Array:
    """q, k: (B, N, C, H, dk) (C a power of two >= 16, ``sub`` dividing it); cum: (B, N, C, H,
    dk) float32, the chunk-local cumulative log decays. Returns unscaled ``A: (B, N, H, C, C)``
    float32, zero above the diagonal. dk is zero-padded to a power of two >= 16 (zero q, k:
    the padded columns add nothing)."""
    b, n, c, h, _ = q.shape
    q, k, cum = padded_keys(q, k, cum)
    width = q.shape[-1]
    if tiling.per_sub_chunk:
        kernel, grid, rows = _sub_chunk_kernel, (b, n, h, c // sub), sub
    else:
        kernel, grid, rows = _kernel, (b, n, h), c
    block = pl.BlockSpec((None, None, c, None, width), lambda i, m, j, *_: (i, m, 0, j, 0))
    call = launch.pallas_call(
        functools.partial(kernel, sub=sub, dtype=jnp.dtype(dtype),
                          stored=tiling.stored_diagonal, approx=tiling.approx_exp),
        grid=grid,
        in_specs=[block, block, block],
        out_specs=pl.BlockSpec((None, None, None, rows, c),
                               lambda i, m, j, *row: (i, m, j, *(row or (0,)), 0)),
        out_shape=jax.ShapeDtypeStruct((b, n, h, c, c), _F32),
        num_warps=tiling.num_warps,
        num_stages=tiling.num_stages,
        name="intra_chunk_scores_sub" if tiling.per_sub_chunk else "intra_chunk_scores",
    )
    return call(q, k, cum)
