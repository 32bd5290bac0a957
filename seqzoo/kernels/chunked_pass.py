"""One chunked pass of gated linear attention: the Pallas kernel behind every chunked op.

One program owns one (direction, batch, head, value block) and walks the chunks of its sequence
in order (``reverse=False``) or from the end (``reverse=True``), holding the state
``S: (dk, block_v)`` in float32 between chunks (a sequential ``fori_loop``; no state tensor is
written to memory). With per-step log decays ``g_t <= 0``, key and row scales ``ks``, ``rs``:

    causal   out_i = rs_i scale sum_{j <= i} ks_j sum_d q_id k_jd E_ij v_j   (+ the initial state)
    reverse  out_i = rs_i scale sum_{j >= i} ks_j sum_d q_id k_jd E_ij v_j
    E_ij = exp(G_i - G_j) (causal), exp(G_j - G_i) (reverse),   G_t = g_1 + ... + g_t

where ``E`` is 1 (``decay=None``), a scalar per head and step (``"scalar"``), or depends on the
contracted dimension d (``"key"``, GLA's per-key gate) or on the output column (``"value"``, the
gradient passes of a per-key gate). ``S`` enters at the start (causal) or the end (reverse) and the
final state is ``S_T = sum_j exp(G_T - G_j) ks_j k_j v_j^T + exp(G_T) S_0`` (causal) or
``sum_j exp(G_j) ks_j k_j v_j^T + exp(G_T) S_0`` (reverse: the state before position 0).

Inside a chunk of ``C`` steps the kernel reads ``G`` as the chunk-local inclusive cumsum and only
ever exponentiates non-positive numbers:

* scalar decays: ``exp(G_i - G_j)`` masked before the ``exp`` (the whole ``C x C`` block at once);
* per-dimension decays, per sub-chunk I of ``sub`` rows: earlier (later) sub-chunks through one
  reference row r of I, ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)`` with both factors
  <= 1, on tensor cores; the diagonal ``sub x sub`` block exactly, as (sub, sub, slice)
  elementwise products of ``exp(min(G_i - G_j, 0))`` reduced over the decayed dimension;
* across chunks: the state times ``exp(G_last)``, queries times ``exp(G_i)`` or
  ``exp(G_last - G_i)``, keys times the other one (all <= 1).

With ``intra=False`` the sums above skip every pair (i, j) within one chunk (the two bullets
before the last): the pass is then the inter-chunk term alone, and costs for per-dimension
decays what it costs for scalar ones (``seqzoo.ops.linear_attention.pallas_gpu_split`` adds the
intra-chunk term from a pass parallel over chunks).

Matmuls take the inputs' dtype (bf16 on tensor cores; float32 at the ``precision`` a user
chose, ``seqzoo.kernels.matmul_precision``: IEEE by default, 3xTF32 or TF32 on tensor cores) and
accumulate in float32; decays, scores and the state are float32 (rounded to the matmul dtype as
operands, or split in two bf16 parts with ``split``). Interpret mode (no GPU) runs float32
matmuls at IEEE whatever the precision.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqzoo.kernels import approx_exp, launch
from seqzoo.kernels.matmul_precision import dot_precision, resolve_precision
from seqzoo.kernels.split_product import split_product

Array = jax.Array
DECAYS = (None, "scalar", "key", "value")
_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Launch parameters of a chunked pass: they change speed, never results beyond rounding.

    chunk: steps per chunk (a power of two >= 16). sub: rows per sub-chunk for per-dimension
    decays (a power of two >= 16 dividing ``chunk``). block_v: value columns per program (a power
    of two >= 16; clipped to the value width). num_warps / num_stages: Triton's. approx_exp: the
    decays' exponentials by ``seqzoo.kernels.approx_exp`` (one ``ex2.approx`` each) instead of
    libdevice's ``expf``.
    """

    chunk: int = 64
    sub: int = 16
    block_v: int = 64
    num_warps: int = 4
    num_stages: int = 2
    slice: int = 32
    approx_exp: bool = False


# What the ops use where it fits (``chunked_tiling.resolve_tiling``): for no or scalar decays the
# setting of the H100 table; for per-key decays the fastest of the H200 sweep of 2026-12-05 at
# (4, 2048, 16, 128) (benchmarks/RESULTS.md).
TUNED = Tiling()
TUNED_PER_DIMENSION = Tiling(chunk=32, slice=16)


def _exp(spec: _Pass, x: Array) -> Array:
    """``exp(x)`` in a kernel, by ``approx_exp`` where the pass's tiling asks for it."""
    return approx_exp.exp(x, spec.tiling.approx_exp)


def _pick(rev, if_reverse, if_causal):
    """``if_reverse`` where the pass runs backwards in time; ``rev`` is a bool or a traced one."""
    if isinstance(rev, bool):
        return if_reverse if rev else if_causal
    return jnp.where(rev, if_reverse, if_causal)


@dataclasses.dataclass(frozen=True)
class _Operands:
    """The matmuls' operands: ``dtype`` (the inputs'); float32 ones multiplied at ``precision``
    (``matmul_precision.PRECISIONS``)."""

    dtype: jnp.dtype
    precision: str


def _dot(a: Array, b: Array, operands: _Operands, *, ta: bool = False, tb: bool = False,
         split: bool = False) -> Array:
    """``a @ b`` (``a.T`` / ``b.T`` when asked) with operands in ``operands.dtype``, float32
    result; float32 operands at ``operands.precision``.

    ``split``: a float32 operand is rounded as ``hi + lo`` (both in ``dtype``) and multiplied
    part by part (``hi b + lo b``; ``hi hi + lo hi + hi lo`` when both are float32), so its
    rounding error is ~eps^2 instead of eps (bf16: 2^-16 instead of 2^-8) at the cost of one or
    two more matmuls. Operands already in ``dtype`` are exact and never split. For float32
    inputs the same split is 3xTF32's: at ``"tf32"`` a split matmul runs at ``"tf32x3"``.
    """
    dtype = operands.dtype
    precision = dot_precision(operands.precision, split=split) if dtype == _F32 else None
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))

    def product(a_part, b_part):
        return lax.dot_general(a_part, b_part, dims, precision=precision,
                               preferred_element_type=_F32)

    return split_product(product, a, b, dtype, split=split)


def _rows(ref, start, size: int):
    """``size`` rows of a (T, ...) block from ``start``."""
    return ref[pl.ds(start, size)] if len(ref.shape) == 1 else ref[pl.ds(start, size), :]


def _scaled(x: Array, factor: Array | None) -> Array:
    """``x`` (rows, d) times a per-row ``factor`` (rows,), or unchanged."""
    return x if factor is None else x.astype(_F32) * factor[:, None]


@dataclasses.dataclass(frozen=True)
class _Pass:
    """The static description of one pass (hashable: it keys the compilation cache)."""

    scale: float
    reverse: tuple[bool, ...]  # per direction (the first grid axis)
    decay: str | None
    tiling: Tiling
    has_key_scale: bool
    has_row_scale: bool
    has_initial: bool
    operands: _Operands  # the matmuls' dtype and float32 precision
    split: bool  # matmuls with float32 intermediates split in two (``_dot``)
    boundaries: bool  # write the state at every chunk boundary ("sb")
    has_partner: bool  # dot the state at every boundary with a partner's ("pb" -> "dots")
    intra: bool  # pairs within a chunk too (False: only pairs in different chunks)
    outputs: bool = True  # False: the states only (no q, no out)


def _whole_chunk(spec: _Pass, refs: dict, rev, t0, state):
    """Scalar or no decay: the C x C block of scores at once. Writes the chunk, returns S."""
    c, dt, sp = spec.tiling.chunk, spec.operands, spec.split
    k, v = (_rows(refs[n], t0, c) for n in "kv")
    q = _rows(refs["q"], t0, c) if spec.outputs else None
    q_in = k_out = decay = None
    if spec.decay == "scalar":
        cum = _rows(refs["g"], t0, c)
        last = _rows(refs["g"], t0 + c - 1, 1)
        from_start, to_end = _exp(spec, cum), _exp(spec, last - cum)
        q_in, k_out = _pick(rev, to_end, from_start), _pick(rev, from_start, to_end)
        decay = _exp(spec, last)
    if spec.has_key_scale:
        key_scale = _rows(refs["ks"], t0, c)
        k_out = key_scale if k_out is None else k_out * key_scale
    if spec.outputs:
        out = _scaled(_dot(q, state, dt, split=sp) * spec.scale, q_in)
        if spec.intra:
            out = out + _dot(_chunk_scores(spec, refs, rev, t0, q, k), v, dt, split=sp)
        if spec.has_row_scale:
            out = out * _rows(refs["rs"], t0, c)[:, None]
        refs["o"][pl.ds(t0, c), :] = out.astype(refs["o"].dtype)
    carried = state if decay is None else state * decay
    return carried + _dot(_scaled(k, k_out), v, dt, ta=True, split=sp)


def _chunk_scores(spec: _Pass, refs: dict, rev, t0, q: Array, k: Array) -> Array:
    """Scalar or no decay: the chunk's (C, C) scores ``scale ks_j q_i.k_j exp(G_i - G_j)``,
    zero outside the causal (reverse: anti-causal) triangle."""
    c = spec.tiling.chunk
    i = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    j = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    live = _pick(rev, j >= i, j <= i)
    scores = _dot(q, k, spec.operands, tb=True) * spec.scale
    if spec.decay == "scalar":
        cum = _rows(refs["g"], t0, c)
        diff = _pick(rev, cum[None, :] - cum[:, None], cum[:, None] - cum[None, :])
        scores = scores * _exp(spec, jnp.where(live, diff, -jnp.inf))
    else:
        scores = jnp.where(live, scores, 0.0)
    if spec.has_key_scale:
        scores = scores * _rows(refs["ks"], t0, c)[None, :]
    return scores


def _pairwise_decay(spec: _Pass, cum: Array, sign) -> Array:
    """``exp(min(+-(G_i - G_j), 0))``: (rows, cols) -> (rows, rows, cols), exact on the live
    triangle (where the difference is <= 0), never overflowing elsewhere."""
    return _exp(spec, jnp.minimum(sign * (cum[:, None, :] - cum[None, :, :]), 0.0))


def _diagonal_scores(spec: _Pass, refs: dict, sign, r0) -> Array:
    """Key decay: ``sum_d q_id k_jd exp(G_id - G_jd)`` on the sub-chunk from row r0, exactly,
    through (sub, sub, slice) products over slices of the key dimension."""
    sub, dk = spec.tiling.sub, refs["q"].shape[1]
    width = min(spec.tiling.slice, dk)
    rows, scores = pl.ds(r0, sub), jnp.zeros((sub, sub), _F32)
    for d0 in range(0, dk, width):
        cols = pl.ds(d0, width)
        q, k = (refs[n][rows, cols].astype(_F32) for n in "qk")
        terms = q[:, None, :] * k[None, :, :] * _pairwise_decay(spec, refs["g"][rows, cols], sign)
        scores = scores + jnp.sum(terms, axis=2)
    return scores


def _diagonal_values(spec: _Pass, refs: dict, sign, r0, weights: Array) -> Array:
    """Value decay: ``sum_j w_ij v_je exp(G_ie - G_je)`` on the sub-chunk from row r0, exactly
    (one (sub, sub, block_v) product; value-decay passes keep block_v <= slice)."""
    rows = pl.ds(r0, spec.tiling.sub)
    v = refs["v"][rows, :].astype(_F32)
    decay = _pairwise_decay(spec, refs["g"][rows, :], sign)
    return jnp.sum(weights[:, :, None] * v[None, :, :] * decay, axis=1)


def _sub_chunks(spec: _Pass, refs: dict, rev, t0, state):
    """Per-dimension decays ("key" or "value"), sub-chunk by sub-chunk. Writes, returns S.

    Whole-chunk tiles are re-read from memory (cache hits) where used rather than held across
    the sub-chunks, to keep registers for the (sub, sub, slice) products.
    """
    c, sub, dt, sp = spec.tiling.chunk, spec.tiling.sub, spec.operands, spec.split
    key = spec.decay == "key"
    last = _rows(refs["g"], t0 + c - 1, 1)
    key_scale = _rows(refs["ks"], t0, c) if spec.has_key_scale else None
    for r in range(0, c, sub) if spec.outputs else ():
        q = _rows(refs["q"], t0 + r, sub).astype(_F32)
        cum_i = _rows(refs["g"], t0 + r, sub)
        q_in = _pick(rev, _exp(spec, last - cum_i), _exp(spec, cum_i))
        if key:
            out = _dot(q * q_in, state, dt, split=sp) * spec.scale
        else:
            out = q_in * _dot(q, state, dt, split=sp) * spec.scale
        if spec.intra:
            out = out + _within_chunk(spec, refs, rev, t0, r, q, cum_i, key_scale)
        if spec.has_row_scale:
            out = out * _rows(refs["rs"], t0 + r, sub)[:, None]
        refs["o"][pl.ds(t0 + r, sub), :] = out.astype(refs["o"].dtype)
    cum, k, v = _rows(refs["g"], t0, c), _rows(refs["k"], t0, c), _rows(refs["v"], t0, c)
    k_out = _pick(rev, _exp(spec, cum), _exp(spec, last - cum))
    if key:
        carried = state * _exp(spec, last).reshape(-1, 1)
        return carried + _dot(_scaled(k * k_out, key_scale), v, dt, ta=True, split=sp)
    return state * _exp(spec, last) + _dot(_scaled(k, key_scale), v * k_out, dt, ta=True,
                                        split=sp)


def _within_chunk(spec: _Pass, refs: dict, rev, t0, r: int, q: Array, cum_i: Array,
                  key_scale: Array | None) -> Array:
    """Per-dimension decays: sub-chunk I's (rows ``t0 + r ...``, queries ``q``, decays
    ``cum_i``) terms from keys of its own chunk: earlier (later) sub-chunks through I's
    reference row, I's diagonal block exactly. (sub, block_v) float32."""
    c, sub, dt, sp = spec.tiling.chunk, spec.tiling.sub, spec.operands, spec.split
    key = spec.decay == "key"
    sign = _pick(rev, -1.0, 1.0)
    col = lax.broadcasted_iota(jnp.int32, (sub, c), 1)
    i = lax.broadcasted_iota(jnp.int32, (sub, sub), 0)
    j = lax.broadcasted_iota(jnp.int32, (sub, sub), 1)
    ref = _rows(refs["g"], t0 + _pick(rev, r + sub - 1, r), 1)  # reference row of I
    cum = _rows(refs["g"], t0, c)
    to_ref = _exp(spec, jnp.minimum(sign * (ref - cum), 0.0))  # exact on the live columns
    from_ref = _exp(spec, sign * (cum_i - ref))  # <= 1 on every row of I
    if key:
        scores = _dot(q * from_ref, _rows(refs["k"], t0, c) * to_ref, dt, tb=True, split=sp)
        diagonal = _diagonal_scores(spec, refs, sign, t0 + r)
    else:
        scores = _dot(q, _rows(refs["k"], t0, c), dt, tb=True)
        diagonal = _dot(q, _rows(refs["k"], t0 + r, sub), dt, tb=True)
    scores = jnp.where(_pick(rev, col >= r + sub, col < r), scores, 0.0) * spec.scale
    diagonal = jnp.where(_pick(rev, j >= i, j <= i), diagonal, 0.0) * spec.scale
    if key_scale is not None:
        scores = scores * key_scale[None, :]
        diagonal = diagonal * _rows(refs["ks"], t0 + r, sub)[None, :]
    if key:
        out = _dot(scores, _rows(refs["v"], t0, c), dt, split=sp)
        return out + _dot(diagonal, _rows(refs["v"], t0 + r, sub), dt, split=sp)
    out = from_ref * _dot(scores, _rows(refs["v"], t0, c) * to_ref, dt, split=sp)
    return out + _diagonal_values(spec, refs, sign, t0 + r, diagonal)


def _kernel(*refs, spec: _Pass, names: tuple[str, ...]):
    refs = dict(zip(names, refs, strict=True))
    if all(spec.reverse) or not any(spec.reverse):
        rev = spec.reverse[0]
    else:  # two directions in one launch (Hydra): the first grid axis says which
        rev = pl.program_id(0) == spec.reverse.index(True)
    c = spec.tiling.chunk
    n = refs["q"].shape[0] // c
    chunk_fn = _whole_chunk if spec.decay in (None, "scalar") else _sub_chunks
    shape = refs["sf"].shape
    state = refs["s0"][...].astype(_F32) if spec.has_initial else jnp.zeros(shape, _F32)

    def step(i, state):
        m = _pick(rev, n - 1 - i, i)
        new = chunk_fn(spec, refs, rev, pl.multiple_of(m * c, c), state)
        if spec.boundaries or spec.has_partner:  # states only: the state entering chunk m
            _at_boundary(refs, m, _pick(rev, state, new) if spec.outputs else state)
        return new

    refs["sf"][...] = lax.fori_loop(0, n, step, state)


def _at_boundary(refs: dict, m, state: Array) -> None:
    """The state between chunks m and m + 1 (after chunk m causally, before it in reverse):
    stored in rows ``m dk ...`` of ``sb``, and its column sums of products with the partner's
    state there as row m of ``dots``."""
    dk = state.shape[0]
    rows = pl.ds(pl.multiple_of(m * dk, dk), dk)
    if "sb" in refs:
        refs["sb"][rows, :] = state.astype(refs["sb"].dtype)
    if "pb" in refs:
        refs["dots"][pl.ds(m, 1), :] = jnp.sum(refs["pb"][rows, :] * state, axis=0, keepdims=True)


def _sequence_spec(x: Array, heads: int, block: tuple, value_axis: bool) -> pl.BlockSpec:
    """One (direction, batch, head) sequence ``block = (T, ...)`` of ``x: (D, B, T, H_x, ...)``.

    A direction axis of 1 is shared by every direction; head h reads head ``h // (H / H_x)``;
    with ``value_axis`` the last axis is split in value blocks (the grid's last axis).
    """
    shared, ratio = x.shape[0] == 1, heads // x.shape[3]

    def index(d, b, h, j):
        rest = (j,) if value_axis else (0,) * (len(block) - 1)
        return (0 if shared else d, b, 0, h // ratio, *rest)

    return pl.BlockSpec((None, None, block[0], None, *block[1:]), index)


def _state_spec(shared: bool, dk: int, bv: int) -> pl.BlockSpec:
    """The (dk, block_v) block of a state ``(D, B, H, dk, dv)``."""
    return pl.BlockSpec((None, None, None, dk, bv),
                        lambda d, b, h, j: (0 if shared else d, b, h, 0, j))


def chunked_pass(
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
    intra: bool = True,
    precision: str = "highest",
    outputs: bool = True,
    boundary_dtype=None,
) -> tuple[Array | None, ...]:
    """One launch of the chunked kernel (module docstring); no padding, no autodiff.

    Every input has a leading direction axis D (1 = shared by all directions, or
    ``len(reverse)``) and a head axis dividing the output's H (head h reads head
    ``h // (H / H_x)``: Mamba-2's groups):
      q, k: (D, B, T, H_qk, dk); v: (D, B, T, H_v, dv); T a multiple of ``tiling.chunk``,
        dk a power of two >= 16, dv one up to ``tiling.block_v`` and a multiple of it above
        (every tile Triton reads holds a power of two of elements).
      g: chunk-local inclusive cumsum of the log decays, (D, B, T, H_g) for ``"scalar"``,
        (D, B, T, H_g, dk) for ``"key"``, (D, B, T, H_g, dv) for ``"value"``; float32.
      key_scale (``ks_j``), row_scale (``rs_i``): (D, B, T, H_s) float32.
      initial_state: (D, B, H, dk, dv) float32.
      split: round float32 matmul operands (scores, states, decayed keys) as bf16 ``hi + lo``
        (``_dot``): the gradient passes whose outputs enter the decays' gradient.
      boundaries: also return the state at the boundary after every chunk n (causal: after chunk
        n; reverse: before chunk n, i.e. after chunk n + 1; the last is the final (causal) or
        initial (reverse) state): ``(len(reverse), B, N dk, H, dv)`` float32, N = T / chunk,
        rows ``n dk ... (n + 1) dk`` for boundary n.
      partner: states in that layout; also return ``dots: (len(reverse), B, N, H, dv)`` float32,
        ``dots[n, e] = sum_d partner_n[d, e] state_n[d, e]`` at every boundary n.
      intra: False drops every (i, j) pair within one chunk from ``out`` (the intra-chunk
        scores, scalar and exact diagonal blocks alike): ``out_i`` then sums keys of other
        chunks and the initial state only. With roles exchanged this holds for the backward
        passes too. States, boundary states and dots are unchanged; per-dimension decays then
        read each chunk as one block (``tiling.sub`` is ignored).
      precision: of float32 matmuls, ``"highest"`` (IEEE), ``"tf32x3"`` or ``"tf32"``
        (``seqzoo.kernels.matmul_precision``); IEEE in interpret mode whatever it says.
      outputs: False computes the states only (q is not read, ``out`` is None), and the
        boundary states are then the states entering each chunk n (causal: before chunk n;
        reverse: after it), what a chunk-parallel output pass reads (``chunked_states``).
      boundary_dtype: the boundary states' dtype (default float32).
    Returns ``out: (len(reverse), B, T, H, dv)`` in ``out_dtype`` (default v's), the final
    states ``(len(reverse), B, H, dk, dv)`` float32, then the boundary states and the dots where
    asked for (in that order).
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    dirs, batch, length = len(reverse), v.shape[1], v.shape[2]
    heads = max(q.shape[3], k.shape[3], v.shape[3])
    dk, dv = q.shape[-1], v.shape[-1]
    bv = min(tiling.block_v, dv, tiling.slice if decay == "value" and intra else dv)
    precision = resolve_precision(precision)
    if not launch.kernels_compiled():  # the CPU's dot has no TF32
        precision = "highest"
    operands = _Operands(jnp.dtype(jnp.result_type(q.dtype, k.dtype, v.dtype)), precision)
    if not intra:  # no diagonal blocks: per-dimension decays read each chunk as one block
        tiling = dataclasses.replace(tiling, sub=tiling.chunk)
    spec = _Pass(float(scale), tuple(reverse), decay, tiling, key_scale is not None,
                 row_scale is not None, initial_state is not None, operands, split,
                 boundaries, partner is not None, intra, outputs)
    g_block = {None: None, "scalar": (length,), "key": (length, dk), "value": (length, bv)}
    named = [("q", q, (length, dk), False), ("k", k, (length, dk), False),
             ("v", v, (length, bv), True), ("g", g, g_block[decay], decay == "value"),
             ("ks", key_scale, (length,), False), ("rs", row_scale, (length,), False)]
    named = [item for item in named if item[1] is not None]
    in_specs = [_sequence_spec(x, heads, block, vax) for _, x, block, vax in named]
    inputs = [x for _, x, *_ in named]
    names = tuple(n for n, *_ in named)
    if initial_state is not None:
        in_specs.append(_state_spec(initial_state.shape[0] == 1, dk, bv))
        inputs.append(initial_state)
        names += ("s0",)
    chunks = length // tiling.chunk
    if partner is not None:
        in_specs.append(_sequence_spec(partner, heads, (chunks * dk, bv), True))
        inputs.append(partner)
        names += ("pb",)
    out_dtype = v.dtype if out_dtype is None else out_dtype
    outs = [("sf", jax.ShapeDtypeStruct((dirs, batch, heads, dk, dv), _F32), None)]
    if outputs:
        outs.insert(0, ("o", jax.ShapeDtypeStruct((dirs, batch, length, heads, dv), out_dtype),
                        length))
    if boundaries:
        outs.append(("sb", jax.ShapeDtypeStruct((dirs, batch, chunks * dk, heads, dv),
                                                boundary_dtype or _F32), chunks * dk))
    if partner is not None:
        outs.append(("dots", jax.ShapeDtypeStruct((dirs, batch, chunks, heads, dv), _F32), chunks))
    out_specs = [_state_spec(dirs == 1, dk, bv) if rows is None
                 else _sequence_spec(shape, heads, (rows, bv), True) for _, shape, rows in outs]
    call = launch.pallas_call(
        functools.partial(_kernel, spec=spec, names=names + tuple(n for n, *_ in outs)),
        grid=(dirs, batch, heads, dv // bv),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=[shape for _, shape, _ in outs],
        num_warps=tiling.num_warps,
        num_stages=tiling.num_stages,
        name=f"chunked_pass_{decay or 'nodecay'}{'' if intra else '_inter'}"
             f"{'' if outputs else '_states'}",
    )
    results = tuple(call(*inputs))
    return results if outputs else (None, *results)
