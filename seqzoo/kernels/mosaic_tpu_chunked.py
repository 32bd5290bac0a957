"""Chunked gated linear attention as Mosaic-TPU Pallas kernels, forward and backward.

The same recurrence, layouts and autodiff as ``chunked_linear_attention`` (its docstring has the
equations, the three backward passes with roles exchanged and the chunk-local identity for the
decays' gradient): only the pass is a TPU kernel, ``mosaic_pass``, written for the MXU and VMEM.

    S_t = exp(g_t) S_{t-1} + ks_t k_t v_t^T        o_t = scale q_t S_t        (causal)

Kernel. Grid ``(direction, batch, head, value block, chunk)``: the first four "parallel" (the
megacore chips v4 / v5p split them over their two TensorCores), the chunks last and "arbitrary",
walked from the start or, for a reverse direction, from the end (the chunk index map reads
``N - 1 - i``). BlockSpecs pipeline one chunk of q, k (C, dk), v (C, block_v), the decays and
scales per grid step from HBM into VMEM (double-buffered); the state ``S: (dk, block_v)``
float32 lives in a VMEM scratch buffer across the chunk axis, set from the initial state at the
first chunk and written to the final-state block at the last. Layout: every (B, T, H, d) input
is read in place as (B, T, H d) (a free reshape), one (C, d) block per head (d a multiple of
128: the (8, 128) f32 / (16, 128) bf16 tiling), so nothing is transposed in HBM; per-step
scalars (per-head decays, key and row scales) are small (B, H, 1, T) rows, one (1, C) block
per chunk (128 lanes).

Per chunk of C steps (``G`` the chunk-local inclusive cumsum of the log decays, computed by XLA,
so that only ``exp`` of non-positive numbers is ever taken):

* no or scalar decay: the (C, C) scores ``q k^T`` on the MXU, the mask and ``exp(G_i - G_j)``
  applied in float32 (masked before the ``exp``), ``scores v + exp(G_i) q S``, and
  ``S <- exp(G_C) S + (exp(G_C - G_j) k_j)^T v``;
* per-key decay (and its gradient passes' per-column decay): sub-chunks of ``sub`` (16) rows;
  the columns before the sub-chunk through its first row r as reference (reverse: the columns
  after it, through its last row),
  ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)`` (both factors <= 1) on the MXU; the
  ``sub x sub`` diagonal block exactly on the VPU, key by key (a ``fori_loop`` of
  ``(sub, d)`` products ``q_i k_j exp(min(G_i - G_j, 0))`` reduced over d);
* across chunks as above, with the decay per key (a column factor on S) or per value column.

Matmuls take bf16 operands with float32 accumulation (``preferred_element_type``) for bf16
inputs, float32 at ``Precision.HIGHEST`` for float32 inputs; decays, scores, states and every
elementwise step are float32 (no bf16 VPU arithmetic: v4 / v5e have none). Float32
intermediates that enter the decays' gradient are split as bf16 ``hi + lo`` (``split``), as in
the Triton kernel. Row vectors become columns through a masked lane reduction with the
identity (``_column``), never a reshape, and rows / lanes are picked by masked sums.

Tiling and VMEM: ``vmem_bytes`` counts one grid step's working set (double-buffered blocks,
the state scratch, the float32 values the compiler keeps in VMEM); ``pick_tiling`` takes the
chunk = the MXU's side (128; 256 on v6e), the widest value block (512, 256, 128) dividing the
padded dv whose working set fits the generation's scoped VMEM default
(``mosaic_tpu_common.GENERATIONS``), and raises ``vmem_limit_bytes`` only when none does.
Working sets at bf16, dk = dv (``vmem_bytes``; the scoped default in brackets):

    dk = dv   decay       v4 / v5e / v5p [16 MiB]        v6e [32 MiB]
    128       none/head   chunk 128, block 128: 1.4 MiB  chunk 256, block 128: 2.6 MiB
    128       per key     chunk 128, block 128: 1.6 MiB  chunk 256, block 128: 2.5 MiB
    256       none/head   chunk 128, block 256: 4.0 MiB  chunk 256, block 256: 5.6 MiB
    512       none/head   chunk 128, block 512: 13.8 MiB chunk 256, block 512: 16.1 MiB
    512       per key     chunk 128, block 512: 15.5 MiB chunk 256, block 512: 19.0 MiB

Tolerances against the float32 XLA ops (``tests/test_tpu_chunked.py``, TPU interpret mode on
CPU; relative L2 error of outputs, final states and every gradient, each on its own): float32
inputs <= 3.5e-6 measured (3.3e-5 for Hydra's d A, a sum over everything), 1e-4 asserted; bf16
inputs against the float32 op on the same values <= 2.9e-3 measured, 6e-3 asserted.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from seqzoo.kernels import mosaic_tpu_common as common
from seqzoo.kernels.chunked_segments import segmented
from seqzoo.kernels.chunked_vjp import padded_chunked
from seqzoo.kernels.split_product import split_product

Array = jax.Array
DECAYS = (None, "scalar", "key", "value")
LANES = 128  # key and value widths pad to a multiple of this
_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Launch parameters of ``mosaic_pass``: they change speed, never results beyond rounding.

    chunk: steps per grid step (a multiple of 128: an MXU-sized score block, and the lane width
    of the per-step rows). block_v: value columns per program (a multiple of 128). sub: rows
    per sub-chunk for per-dimension decays (a multiple of 16 dividing chunk). vmem_limit_bytes:
    raises Mosaic's scoped VMEM limit (None: the generation's default). interpret: run in
    Pallas' TPU interpreter (None: compiled on a TPU, interpreted elsewhere).
    """

    chunk: int = 128
    block_v: int = 128
    sub: int = 16
    vmem_limit_bytes: int | None = None
    interpret: bool | None = None

    def __post_init__(self):
        if self.chunk % LANES or self.block_v % LANES:
            raise ValueError(f"chunk and block_v must be multiples of {LANES}: {self}")
        if self.sub % 16 or self.chunk % self.sub:
            raise ValueError(f"sub must be a multiple of 16 dividing chunk: {self}")


def vmem_bytes(tiling: Tiling, decay: str | None, dk: int, itemsize: int) -> int:
    """One grid step's VMEM working set (bytes) at key width ``dk`` (padded) and input itemsize.

    Double-buffered blocks: q, k (C, dk), v and o (C, block_v), the decays (C, dk) float32 per
    key or a few (8, C) float32 rows, the initial / final / boundary / partner states
    (dk, block_v) float32; the state scratch; float32 values the compiler keeps in VMEM: three
    states (before, after, a product), two (C, width) tiles, and four (C, C) score tiles for
    whole chunks or six (C, width) decay factors for sub-chunks.
    """
    c, bv = tiling.chunk, tiling.block_v
    width = max(dk, bv)
    blocks = c * (2 * dk + 2 * bv) * itemsize + 4 * dk * bv * 4
    blocks += c * dk * 4 if decay in ("key", "value") else 3 * 8 * c * 4
    scratch = dk * bv * 4
    temps = 3 * dk * bv + 2 * c * width
    temps += 4 * c * c if decay in (None, "scalar") else 6 * c * width
    return 2 * blocks + scratch + 4 * temps


def pick_tiling(decay: str | None, dk: int, dv: int, itemsize: int = 2,
                gen: common.Generation | None = None) -> Tiling:
    """The tiling for this generation (default: the device's; v5e's numbers off a TPU): chunk
    = the MXU's side, the widest block_v (<= 512, dividing the padded dv) whose working set
    fits the scoped VMEM default; else the narrowest, with the limit raised to fit (at most
    3/4 of the core's VMEM)."""
    gen = gen or common.generation() or common.GENERATIONS["v5e"]
    wk, wv = _lanes(dk), _lanes(dv)
    chunk = gen.mxu
    blocks = [b for b in (512, 256, 128) if b <= wv and wv % b == 0]
    for block in blocks:
        tiling = Tiling(chunk=chunk, block_v=block)
        if vmem_bytes(tiling, decay, wk, itemsize) <= gen.scoped_vmem:
            return tiling
    need = vmem_bytes(Tiling(chunk=chunk), decay, wk, itemsize)
    if need > gen.vmem * 3 // 4:
        raise ValueError(f"no tiling fits {gen.name}'s VMEM at key width {wk}: {need} bytes")
    return Tiling(chunk=chunk, vmem_limit_bytes=need + need // 4)


def _lanes(d: int) -> int:
    """``d`` rounded up to a multiple of 128 lanes."""
    return -(-d // LANES) * LANES


# --- in-kernel helpers (values in VMEM / vregs) ------------------------------------------------


def _dot(a: Array, b: Array, dtype, *, tb: bool = False, split: bool = False) -> Array:
    """``a @ b`` (``a @ b.T`` with ``tb``) on the MXU with operands in ``dtype``, float32 result.

    ``split``: a float32 operand is rounded as ``hi + lo`` (both in ``dtype``) and multiplied
    part by part, so its rounding error is ~eps^2 (as ``chunked_pass._dot``); operands already
    in ``dtype`` are exact and never split.
    """
    precision = lax.Precision.HIGHEST if dtype == _F32 else None
    dims = (((1,), (1 if tb else 0,)), ((), ()))

    def product(a_part, b_part):
        return lax.dot_general(a_part, b_part, dims, precision=precision,
                               preferred_element_type=_F32)

    return split_product(product, a, b, dtype, split=split)


def _t(x: Array) -> Array:
    """``x.T`` (a 2-D transpose in float32, as Mosaic transposes best), back in x's dtype."""
    return x.astype(_F32).T.astype(x.dtype)


def _iota(shape: tuple[int, int], axis: int) -> Array:
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def _column(row: Array, start=0, size: int | None = None) -> Array:
    """Lanes ``start .. start + size`` (start may be traced) of a (1, n) float32 row as a
    (size, 1) column, by a masked lane reduction (exact: every other term is zero)."""
    n = row.shape[1]
    size = n if size is None else size
    square = jnp.broadcast_to(row, (size, n))
    hit = _iota((size, n), 1) == _iota((size, n), 0) + start
    return jnp.sum(jnp.where(hit, square, 0.0), axis=1, keepdims=True)


def _pick_row(x: Array, index) -> Array:
    """Row ``index`` (traced) of a (rows, n) float32 value as (1, n), by a masked sum."""
    return jnp.sum(jnp.where(_iota(x.shape, 0) == index, x, 0.0), axis=0, keepdims=True)


def _pick_lane(x: Array, index) -> Array:
    """Column ``index`` (traced) of a (rows, n) float32 value as (rows, 1), by a masked sum."""
    return jnp.sum(jnp.where(_iota(x.shape, 1) == index, x, 0.0), axis=1, keepdims=True)


def _scaled(x: Array, factor: Array | None) -> Array:
    """``x`` times a broadcastable float32 ``factor``, or unchanged."""
    return x if factor is None else x.astype(_F32) * factor


@dataclasses.dataclass(frozen=True)
class _Pass:
    """The static description of one pass (hashable)."""

    scale: float
    reverse: tuple[bool, ...]
    decay: str | None
    tiling: Tiling
    has_key_scale: bool
    has_row_scale: bool
    has_initial: bool
    dtype: jnp.dtype  # the matmul operands'
    split: bool
    boundaries: bool
    has_partner: bool


def _whole_chunk(spec: _Pass, refs: dict, rev: bool, state: Array) -> Array:
    """No or scalar decay: the (C, C) scores at once. Writes the chunk's output, returns S."""
    c, dt, sp = spec.tiling.chunk, spec.dtype, spec.split
    q, k, v = (refs[n][...] for n in "qkv")
    i, j = _iota((c, c), 0), _iota((c, c), 1)
    live = j >= i if rev else j <= i
    scores = _dot(q, k, dt, tb=True) * spec.scale
    q_in = k_out = decay = None
    if spec.decay == "scalar":
        cum = refs["g"][...]  # (1, C)
        cum_col = _column(cum)
        last = _pick_lane(cum, c - 1)  # (1, 1)
        diff = cum - cum_col if rev else cum_col - cum
        scores = scores * jnp.exp(jnp.where(live, diff, -jnp.inf))
        from_start, to_end = jnp.exp(cum_col), jnp.exp(last - cum_col)
        q_in, k_out = (to_end, from_start) if rev else (from_start, to_end)
        decay = jnp.exp(last)
    else:
        scores = jnp.where(live, scores, 0.0)
    if spec.has_key_scale:
        key_scale = refs["ks"][...]
        scores = scores * key_scale
        k_out = _column(key_scale) if k_out is None else k_out * _column(key_scale)
    from_state = _dot(q, state, dt, split=sp) * spec.scale
    out = _dot(scores, v, dt, split=sp) + _scaled(from_state, q_in)
    if spec.has_row_scale:
        out = out * _column(refs["rs"][...])
    refs["o"][...] = out.astype(refs["o"].dtype)
    carried = _scaled(state, decay)
    return carried + _dot(_t(_scaled(k, k_out)), v, dt, split=sp)


def _key_diagonal(spec: _Pass, rev: bool, q, k, cum, v, key_scale, r0) -> Array:
    """Per-key decay, the sub-chunk's diagonal block exactly: ``sum_j [j live for i] ks_j v_j
    sum_d q_id k_jd exp(min(+-(G_id - G_jd), 0))``, one key j per loop step (VPU)."""
    sub = q.shape[0]
    sign = -1.0 if rev else 1.0
    rows = _iota((sub, 1), 0)

    def step(j, out):
        k_j, g_j, v_j = (_pick_row(x, j) for x in (k, cum, v))
        w = jnp.sum(q * k_j * jnp.exp(jnp.minimum(sign * (cum - g_j), 0.0)), axis=1,
                    keepdims=True)
        w = jnp.where(rows <= j if rev else rows >= j, w, 0.0) * spec.scale
        if key_scale is not None:
            w = w * _pick_lane(key_scale, r0 + j)
        return out + w * v_j

    return lax.fori_loop(0, sub, step, jnp.zeros((sub, v.shape[1]), _F32))


def _value_diagonal(rev: bool, scores, cum, v, r0) -> Array:
    """Per-value-column decay, the diagonal block exactly: ``sum_j [j live for i] w_ij v_je
    exp(min(+-(G_ie - G_je), 0))`` with ``w`` columns r0 .. r0 + sub of ``scores``."""
    sub = cum.shape[0]
    sign = -1.0 if rev else 1.0
    rows = _iota((sub, 1), 0)

    def step(j, out):
        w = jnp.where(rows <= j if rev else rows >= j, _pick_lane(scores, r0 + j), 0.0)
        g_j, v_j = _pick_row(cum, j), _pick_row(v, j)
        return out + w * v_j * jnp.exp(jnp.minimum(sign * (cum - g_j), 0.0))

    return lax.fori_loop(0, sub, step, jnp.zeros(cum.shape, _F32))


def _sub_chunks(spec: _Pass, refs: dict, rev: bool, state: Array) -> Array:
    """Per-key ("key") or per-value-column ("value") decays, sub-chunk by sub-chunk (a
    ``fori_loop``; whole-chunk tiles are re-read from VMEM where used). Writes the chunk's
    output, returns S."""
    c, sub, dt, sp = spec.tiling.chunk, spec.tiling.sub, spec.dtype, spec.split
    key = spec.decay == "key"
    sign = -1.0 if rev else 1.0
    g = refs["g"]
    last = _pick_row(g[c - 8:c, :], 7)  # an aligned 8-row load, then its last row
    key_scale = refs["ks"][...] if spec.has_key_scale else None

    def sub_chunk(n, carry):
        r = pl.multiple_of(n * sub, sub)
        rows = pl.ds(r, sub)
        q = refs["q"][rows, :]
        q32 = q.astype(_F32)
        cum_i = g[rows, :]
        ref = _pick_row(cum_i, sub - 1 if rev else 0)  # the reference row
        to_ref = jnp.exp(jnp.minimum(sign * (ref - g[...]), 0.0))  # exact on the live columns
        from_ref = jnp.exp(sign * (cum_i - ref))  # <= 1 on every row of the sub-chunk
        col = _iota((sub, c), 1)
        earlier = col >= r + sub if rev else col < r
        v_sub = refs["v"][rows, :].astype(_F32)
        q_in = jnp.exp(last - cum_i) if rev else jnp.exp(cum_i)
        if key:
            keys = refs["k"][...].astype(_F32) * to_ref
            scores = _dot(q32 * from_ref, keys, dt, tb=True, split=sp)
            scores = _scaled(jnp.where(earlier, scores, 0.0) * spec.scale, key_scale)
            out = _dot(scores, refs["v"][...], dt, split=sp)
            k_sub = refs["k"][rows, :].astype(_F32)
            out = out + _key_diagonal(spec, rev, q32, k_sub, cum_i, v_sub, key_scale, r)
            out = out + _dot(q32 * q_in, state, dt, split=sp) * spec.scale
        else:
            scores = _scaled(_dot(q, refs["k"][...], dt, tb=True) * spec.scale, key_scale)
            values = refs["v"][...].astype(_F32) * to_ref
            out = from_ref * _dot(jnp.where(earlier, scores, 0.0), values, dt, split=sp)
            out = out + _value_diagonal(rev, scores, cum_i, v_sub, r)
            out = out + q_in * _dot(q, state, dt, split=sp) * spec.scale
        if spec.has_row_scale:
            out = out * _column(refs["rs"][...], r, sub)
        refs["o"][rows, :] = out.astype(refs["o"].dtype)
        return carry

    lax.fori_loop(0, c // sub, sub_chunk, 0)
    cum, k_all, v_all = g[...], refs["k"][...], refs["v"][...]
    k_out = jnp.exp(cum) if rev else jnp.exp(last - cum)
    key_col = None if key_scale is None else _column(key_scale)
    if key:
        keys = _scaled(k_all.astype(_F32) * k_out, key_col)
        return state * _column(jnp.exp(last)) + _dot(_t(keys), v_all, dt, split=sp)
    values = v_all.astype(_F32) * k_out
    return state * jnp.exp(last) + _dot(_t(_scaled(k_all, key_col)), values, dt, split=sp)


def _chunk(spec: _Pass, refs: dict, rev: bool) -> None:
    """One grid step: the chunk's output, the state carried on, boundary states and dots."""
    before = refs["state"][...]
    chunk_fn = _whole_chunk if spec.decay in (None, "scalar") else _sub_chunks
    after = chunk_fn(spec, refs, rev, before)
    boundary = before if rev else after
    if spec.boundaries:
        refs["sb"][...] = boundary
    if spec.has_partner:
        refs["dots"][...] = jnp.sum(refs["pb"][...] * boundary, axis=0, keepdims=True)
    refs["state"][...] = after


def _kernel(*refs, spec: _Pass, names: tuple[str, ...]):
    refs = dict(zip(names, refs, strict=True))
    chunk = pl.program_id(4)

    @pl.when(chunk == 0)
    def _start():
        initial = refs["s0"][...] if spec.has_initial else 0.0
        refs["state"][...] = jnp.broadcast_to(initial, refs["state"].shape).astype(_F32)

    if all(spec.reverse) or not any(spec.reverse):
        _chunk(spec, refs, spec.reverse[0])
    else:  # two directions in one launch (Hydra): the first grid axis says which
        backward = pl.program_id(0) == spec.reverse.index(True)
        pl.when(backward)(functools.partial(_chunk, spec, refs, True))
        pl.when(jnp.logical_not(backward))(functools.partial(_chunk, spec, refs, False))

    @pl.when(chunk == pl.num_programs(4) - 1)
    def _finish():
        refs["sf"][...] = refs["state"][...]


# --- the launch ----------------------------------------------------------------------------------


def _chunk_index(reverse: tuple[bool, ...], chunks: int):
    """Grid (direction, chunk step i) -> the chunk read: i, or N - 1 - i for reverse."""
    if all(reverse) or not any(reverse):
        return (lambda d, i: chunks - 1 - i) if reverse[0] else (lambda d, i: i)
    backward = reverse.index(True)
    return lambda d, i: jnp.where(d == backward, chunks - 1 - i, i)


def _head(h, ratio: int):
    """Head ``h // ratio`` of an input with fewer heads (``lax.div``: ``//`` on traced ints
    lowers through ``sign``, which Mosaic's lowering resolves per TPU generation)."""
    return h if ratio == 1 else lax.div(h, ratio)


def _lane_spec(x: Array, heads: int, chunk: int, block: int, at_chunk, value_axis: bool):
    """(C, block) blocks of ``x: (D, B, T, H_x, w)`` read as (D, B, T, H_x w) (a free reshape):
    chunk ``at_chunk`` of head ``h // (H / H_x)``, and its value block j with ``value_axis``."""
    shared, ratio, per_head = x.shape[0] == 1, heads // x.shape[3], x.shape[4] // block

    def index(d, b, h, j, i):
        lane = _head(h, ratio) * per_head + (j if value_axis else 0)
        return (0 if shared else d, b, at_chunk(d, i), lane)

    return pl.BlockSpec((None, None, chunk, block), index)


def _row_spec(x: Array, heads: int, chunk: int, at_chunk):
    """One (1, C) block of a per-step row ``x: (D, B, H_x, 1, T)``."""
    shared, ratio = x.shape[0] == 1, heads // x.shape[2]
    return pl.BlockSpec((None, None, None, 1, chunk),
                        lambda d, b, h, j, i: (0 if shared else d, b, _head(h, ratio), 0,
                                               at_chunk(d, i)))


def _state_spec(shared: bool, dk: int, bv: int, at_chunk=None):
    """The (dk, block_v) block of a state ``(D, B, H, n dk, dv)``: the one state (n = 1) or the
    state at chunk ``at_chunk`` (boundary states)."""
    def index(d, b, h, j, i):
        return (0 if shared else d, b, h, 0 if at_chunk is None else at_chunk(d, i), j)

    return pl.BlockSpec((None, None, None, dk, bv), index)


def _as_rows(x: Array) -> Array:
    """A per-step scalar (D, B, T, H) as rows (D, B, H, 1, T)."""
    return jnp.swapaxes(x, 2, 3)[:, :, :, None, :]


def mosaic_pass(
    q: Array,
    k: Array,
    v: Array,
    g: Array | None = None,
    key_scale: Array | None = None,
    row_scale: Array | None = None,
    initial_state: Array | None = None,
    *,
    scale: float,
    reverse: tuple[bool, ...],
    decay: str | None,
    tiling: Tiling,
    out_dtype=None,
    split: bool = False,
    boundaries: bool = False,
    partner: Array | None = None,
) -> tuple[Array, ...]:
    """One launch of the Mosaic kernel: ``chunked_pass.chunked_pass``'s contract on a TPU.

    Layout as there (a leading direction axis D: 1 = shared or ``len(reverse)``; head h of an
    input with H_x heads reads head ``h // (H / H_x)``):
      q, k: (D, B, T, H_qk, dk); v: (D, B, T, H_v, dv); T a multiple of ``tiling.chunk``; dk, dv
        multiples of 128 (``LANES``).
      g: chunk-local inclusive cumsum of the log decays, float32: (D, B, T, H_g) for
        ``"scalar"``, (D, B, T, H_g, dk) for ``"key"``, (D, B, T, H_g, dv) for ``"value"``.
      key_scale, row_scale: (D, B, T, H_s) float32; initial_state: (D, B, H, dk, dv) float32.
      split, boundaries, partner: as ``chunked_pass`` (boundary states are this kernel's own
        layout, ``(len(reverse), B, H, N dk, dv)``, only ever handed back as ``partner``).
    Returns ``out: (len(reverse), B, T, H, dv)`` in ``out_dtype`` (default v's), the final
    states ``(len(reverse), B, H, dk, dv)`` float32, then the boundary states and the dots
    ``(len(reverse), B, N, H, dv)`` float32 where asked for.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    dirs, batch, length = len(reverse), v.shape[1], v.shape[2]
    heads = max(q.shape[3], k.shape[3], v.shape[3])
    dk, dv, c = q.shape[-1], v.shape[-1], tiling.chunk
    if length % c or dk % LANES or dv % LANES:
        raise ValueError(f"length {length} must be a multiple of the chunk {c} and widths "
                         f"{dk}, {dv} of {LANES}")
    bv = min(tiling.block_v, dv)
    bv = bv if dv % bv == 0 else LANES
    chunks = length // c
    at = _chunk_index(tuple(reverse), chunks)
    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    spec = _Pass(float(scale), tuple(reverse), decay, tiling, key_scale is not None,
                 row_scale is not None, initial_state is not None, jnp.dtype(dtype), split,
                 boundaries, partner is not None)

    streams = [("q", q, dk, False), ("k", k, dk, False), ("v", v, bv, True)]
    if decay in ("key", "value"):
        streams.append(("g", g, dk if decay == "key" else bv, decay == "value"))
    rows = [("g", g)] if decay == "scalar" else []
    rows += [(n, x) for n, x in (("ks", key_scale), ("rs", row_scale)) if x is not None]
    in_specs = [_lane_spec(x, heads, c, block, at, vax) for _, x, block, vax in streams]
    inputs = [x.reshape(*x.shape[:3], -1) for _, x, *_ in streams]
    in_specs += [_row_spec(_as_rows(x), heads, c, at) for _, x in rows]
    inputs += [_as_rows(x) for _, x in rows]
    names = tuple(n for n, *_ in streams) + tuple(n for n, _ in rows)
    if initial_state is not None:
        in_specs.append(_state_spec(initial_state.shape[0] == 1, dk, bv))
        inputs.append(initial_state)
        names += ("s0",)
    if partner is not None:
        in_specs.append(_state_spec(False, dk, bv, at))
        inputs.append(partner)
        names += ("pb",)
    out_dtype = v.dtype if out_dtype is None else out_dtype
    outs = [("o", jax.ShapeDtypeStruct((dirs, batch, length, heads * dv), out_dtype),
             pl.BlockSpec((None, None, c, bv),
                          lambda d, b, h, j, i: (d, b, at(d, i), h * (dv // bv) + j))),
            ("sf", jax.ShapeDtypeStruct((dirs, batch, heads, dk, dv), _F32),
             _state_spec(False, dk, bv))]
    if boundaries:
        outs.append(("sb", jax.ShapeDtypeStruct((dirs, batch, heads, chunks * dk, dv), _F32),
                     _state_spec(False, dk, bv, at)))
    if partner is not None:
        outs.append(("dots", jax.ShapeDtypeStruct((dirs, batch, heads, chunks, 1, dv), _F32),
                     pl.BlockSpec((None, None, None, None, 1, bv),
                                  lambda d, b, h, j, i: (d, b, h, at(d, i), 0, j))))
    call = pl.pallas_call(
        functools.partial(_kernel, spec=spec, names=names + tuple(n for n, *_ in outs)
                          + ("state",)),
        grid=(dirs, batch, heads, dv // bv, chunks),
        in_specs=in_specs,
        out_specs=[s for *_, s in outs],
        out_shape=[shape for _, shape, _ in outs],
        scratch_shapes=[pltpu.VMEM((dk, bv), _F32)],
        compiler_params=common.compiler_params(
            ("parallel", "parallel", "parallel", "parallel", "arbitrary"),
            tiling.vmem_limit_bytes),
        interpret=common.interpret_mode(tiling.interpret),
        name=f"mosaic_chunked_{decay or 'nodecay'}",
    )
    results = call(*inputs)
    out = results[0].reshape(dirs, batch, length, heads, dv)
    rest = list(results[1:])
    if partner is not None:
        rest[-1] = jnp.moveaxis(rest[-1][:, :, :, :, 0], 3, 2)  # (D, B, N, H, dv)
    return (out, *rest)


def gated_linear_attention(
    q: Array,
    k: Array,
    v: Array,
    g: Array | None = None,
    key_scale: Array | None = None,
    initial_state: Array | None = None,
    *,
    scale: float,
    reverse: tuple[bool, ...] = (False,),
    tiling: Tiling | None = None,
    max_chunk: int | None = None,
    operands: tuple | None = None,
) -> tuple[Array, Array]:
    """Chunked gated linear attention on the Mosaic-TPU kernels, differentiable in every input.

    Arguments, layouts and results as ``chunked_linear_attention.gated_linear_attention``
    (a leading direction axis; q, k, g, key_scale heads dividing v's; g None, per head or per
    key; key_scale Mamba-2's dt; initial state in, float32 final states out; ``reverse`` per
    direction). Any T (padded to the chunk with identity steps), any dk, dv (zero-padded to a
    multiple of 128). tiling: default ``pick_tiling`` for this device; max_chunk caps the chunk
    but never below 128 (an op's ``chunk_size`` of 64 runs at 128: the same result);
    operands: q, k, v as float32 copies of values of these dtypes, which the passes take
    (``chunked_vjp.padded_chunked``: ``o`` in v's own dtype, q, k, v's gradients float32).
    """
    if scale == 0:
        raise ValueError("scale must be non-zero")
    decay = None if g is None else ("scalar" if g.ndim == 4 else "key")
    dk, dv = q.shape[-1], v.shape[-1]
    if tiling is None:
        value_dtype = v.dtype if operands is None else operands[2]
        tiling = pick_tiling(decay, dk, dv, jnp.dtype(value_dtype).itemsize)
    if max_chunk is not None and max_chunk < tiling.chunk:
        chunk = max(LANES, max_chunk // LANES * LANES)
        tiling = dataclasses.replace(tiling, chunk=chunk, sub=min(tiling.sub, chunk))
    if tiling.interpret is None:  # decided now: the backward passes are built later, elsewhere
        tiling = dataclasses.replace(tiling, interpret=not common.on_tpu())
    return padded_chunked(q, k, v, g, key_scale, initial_state, scale=scale, reverse=reverse,
                          tiling=tiling, widths=(_lanes(dk), _lanes(dv)), run=mosaic_pass,
                          operands=operands)


def linear_attention_kernel(
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array | None = None,
    *,
    scale: float,
    initial_state: Array | None = None,
    chunk_size: int | None = None,
    tiling: Tiling | None = None,
    segments: int | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_attention`` (no segment_ids) on the Mosaic kernels.

    q, k: (B, T, H, dk); v: (B, T, H, dv); log_decay: None, (B, T, H) or (B, T, H, dk);
    initial_state: (B, H, dk, dv); chunk_size: caps the tiling's chunk (never below 128);
    segments: None, or the number of parallel segments (``seqzoo.kernels.chunked_segments``).
    Returns ``o`` in v's dtype and ``S_T`` float32.
    """
    lead = [None if a is None else a[None] for a in (q, k, v, log_decay, initial_state)]
    attention = gated_linear_attention if segments is None else segmented(
        gated_linear_attention, segments)
    o, final = attention(*lead[:4], None, lead[4], scale=scale, tiling=tiling,
                         max_chunk=chunk_size)
    return o[0], final[0]
