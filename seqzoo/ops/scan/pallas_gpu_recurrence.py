"""The linear recurrence's Pallas GPU backend: the diagonal recurrence, forward and backward.

    h_t = a_t * h_{t-1} + b_t       t = 0 .. T-1, h_{-1} = initial state    (reverse: t = T-1 .. 0)

elementwise over channels, real or complex (complex as separate real/imaginary planes), evaluated
exactly as written: one multiply-add per step in float32 (at least), no log-space cumulative sums
(which overflow for tiny decays). The backward pass (``jax.custom_vjp``) is the adjoint
recurrence run by the same loop in the opposite direction, with every gradient fused into it:

    lam_t = g_t + mu_t,  mu_{t-1} = conj(a_t) lam_t,  mu_{T-1} = cotangent of the final state
    db_t = lam_t,  da_t = lam_t conj(h_{t-1}),  d initial state = mu_{-1}

so the forward pass reads a, b and writes h (3 arrays), the backward reads a, h, g and writes
da, db (5 arrays): both are memory bound.

Layout: (batch, length, channels) with a grid over (channel blocks of ``width``, batch); each
program walks the whole length with ``scan_loop.chunked_loop``, ``chunk`` rows at a time, the
next chunk's rows in flight while the current chunk's multiply-adds run.

Too few channels to fill the GPU (long sequences at a fixed batch x length x channels): the
sequence is also split into ``segments`` (a third grid axis). A first pass walks each segment
from a zero state and writes only its end state E_s and its decay product P_s = prod a_t
(exact products: they underflow to 0, never overflow for |a| <= 1); the S-step recurrence
carry_{s+1} = P_s carry_s + E_s runs in XLA; a second pass walks each segment again from its
carry and writes h. That reads a and b twice (5 arrays moved instead of 3) but keeps every SM
busy; the backward pass splits the same way.

Tolerance: in float32 the kernel rounds exactly like the sequential ``lax.scan``
(``impl="sequential"``) up to fused multiply-adds: relative errors ~1e-6 against it and against
the associative scan (tests: rtol = atol = 1e-5, values and gradients). bfloat16 inputs are
computed in float32 and rounded once on output (rtol 1e-2); their ``da`` uses the stored
bfloat16 states h_{t-1}, so agrees with the XLA path's gradient to ~1e-2 relative.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from seqzoo.kernels.launch import pallas_call
from seqzoo.kernels.planes import add, mul, one, split
from seqzoo.kernels.scan_loop import (
    ChannelBlock,
    Rows,
    chunked_loop,
    next_power_of_2,
    split_rows,
    stack_rows,
)

Array = jax.Array
# Rows of every array a program keeps in flight per chunk (a chunk of C rows of P planes of
# loads uses C * P of them), channels per program and warps per program, measured on an H100
# (kernels/README.md); the sequence is split into segments when fewer than MIN_WARPS warps
# would run (about 2 per SM of an H100: at 256 warps one pass still beats two).
ROWS_IN_FLIGHT = 32
WIDTH = 32
NUM_WARPS = 1
MIN_WARPS = 256
MIN_SEGMENT_CHUNKS = 8


@dataclasses.dataclass(frozen=True)
class Config:
    """Static shape and tuning of one kernel call (hashable: a ``custom_vjp`` nondiff argument)."""

    length: int
    channels: int
    planes: int  # 1 real, 2 complex
    reverse: bool
    chunk: int
    width: int
    num_warps: int
    segments: int
    segment_length: int  # a multiple of chunk; segments * segment_length >= length
    acc_dtype: np.dtype  # what the multiply-adds run in
    a_dtype: np.dtype
    b_dtype: np.dtype
    h_dtype: np.dtype

    def grid(self, batch: int) -> tuple[int, ...]:
        return (_ceil_div(self.channels, self.width), batch, self.segments)


def _groups(refs, planes: int, n: int):
    """Split a flat list of refs into n groups of ``planes`` refs (one value's planes)."""
    return [refs[i * planes:(i + 1) * planes] for i in range(n)]


class _Walk:
    """One program's part of the sequence (its segment's rows, in tiles of ``chunk`` rows from
    row ``start``; only the last segment's top tile overhangs), and its loads and stores."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.block = ChannelBlock.of_program(cfg.channels, cfg.width)
        self.segment = pl.program_id(2) if cfg.segments > 1 else 0
        self.masked = cfg.segments * cfg.segment_length != cfg.length

    def loop(self, load, run, carry, descending: bool):
        c = self.cfg
        return chunked_loop(c.segment_length, c.chunk, load, run, carry, reverse=descending,
                            first=self.segment * c.segment_length)

    def rows(self, start) -> Rows:
        return Rows(start, self.cfg.chunk, self.cfg.length, self.masked)

    def load(self, refs, start, fills) -> list:
        """Tiles of rows ``start ..`` (rows past the end read ``fills``), in the accumulation
        dtype."""
        rows = self.rows(start)
        return [self.block.load(r, (self.block.batch,), rows, fill=f).astype(self.cfg.acc_dtype)
                for r, f in zip(refs, fills, strict=True)]

    def load_row(self, refs, row) -> list:
        """One row of each ref, ``row`` clipped into the sequence."""
        top = self.cfg.length - 1
        row = min(max(row, 0), top) if isinstance(row, int) else jnp.clip(row, 0, top)
        return [self.block.load(r, (self.block.batch, row)).astype(self.cfg.acc_dtype)
                for r in refs]

    def store(self, refs, start, planes_rows) -> None:
        """Store rows (per plane, a list over tile positions)."""
        for ref, rows in zip(refs, planes_rows, strict=True):
            self.block.store(ref, (self.block.batch,), stack_rows(rows), self.rows(start))

    def segment_state(self, refs) -> tuple:
        """This segment's entry of (batch, segments, channels) refs."""
        return tuple(self.block.load(r, (self.block.batch, self.segment)).astype(
            self.cfg.acc_dtype) for r in refs)

    def store_segment_state(self, refs, values) -> None:
        for ref, v in zip(refs, values, strict=True):
            self.block.store(ref, (self.block.batch, self.segment), v)


def _positions(chunk: int, descending: bool) -> list[int]:
    """Positions in a tile, in the order a walk visits them."""
    return list(range(chunk))[::-1] if descending else list(range(chunk))


def _decay_fills(planes: int) -> tuple:
    """What rows past the end read for a: decay 1, which (with zero inputs) keeps the state."""
    return (1.0,) + (0.0,) * (planes - 1)


def _forward_kernel(*refs, cfg: Config, summary: bool):
    """h_t = a_t h_{t-1} + b_t over this program's rows. Full pass: from the segment's entry
    state ``h_in``, writing h and the end state. Summary pass: from 0, writing only the end
    state and the decay product of the segment."""
    p = cfg.planes
    if summary:
        a, b, end, prod = _groups(refs, p, 4)
    else:
        a, b, h_in, h, end = _groups(refs, p, 5)
    walk = _Walk(cfg)
    fills = _decay_fills(p) + (0.0,) * p

    def run(start, tiles, carry):
        state, decay = carry
        rows = [split_rows(t) for t in tiles]
        out = [[None] * cfg.chunk for _ in range(p)]
        for j in _positions(cfg.chunk, cfg.reverse):
            a_j = tuple(r[j] for r in rows[:p])
            state = add(mul(a_j, state), tuple(r[j] for r in rows[p:]))
            if summary:
                decay = mul(a_j, decay)
            for k in range(p):
                out[k][j] = state[k]
        if not summary:
            walk.store(h, start, out)
        return state, decay

    if summary:
        zero = tuple(jnp.zeros((cfg.width,), cfg.acc_dtype) for _ in range(p))
        init = (zero, one(zero))
    else:
        init = (walk.segment_state(h_in), None)
    state, decay = walk.loop(lambda start: walk.load((*a, *b), start, fills), run, init,
                             cfg.reverse)
    walk.store_segment_state(end, state)
    if summary:
        walk.store_segment_state(prod, decay)


def _backward_kernel(*refs, cfg: Config, summary: bool):
    """The adjoint walk lam_t = mu_t + g_t, mu_{t-1} = conj(a_t) lam_t (opposite direction).
    Full pass: from the segment's entry ``mu_in``, writing da, db and the end mu. Summary pass:
    from 0, writing the end mu and the product of conj(a) (no h needed)."""
    p, c = cfg.planes, cfg.chunk
    if summary:
        a, g, end, prod = _groups(refs, p, 4)
    else:
        a, g, h, h0, mu_in, da, db, end = _groups(refs, p, 8)
    walk = _Walk(cfg)
    # h_{t-1}: the row before in the forward walk's direction, from the same tile except at
    # the tile's edge (one more row load) and at the sequence's first row (h0).
    step = 1 if cfg.reverse else -1
    edge = cfg.length - 1 if cfg.reverse else 0
    first = None if summary else tuple(walk.block.load(r, (walk.block.batch,)).astype(
        cfg.acc_dtype) for r in h0)

    def load(start):
        fills = _decay_fills(p) + (0.0,) * p
        if summary:
            return walk.load((*a, *g), start, fills), None
        outside = start + (c if cfg.reverse else -1)  # the row next to the tile
        return walk.load((*a, *g, *h), start, fills + (0.0,) * p), walk.load_row(h, outside)

    def run(start, loaded, carry):
        mu, decay = carry
        tiles, outside = loaded
        rows = [split_rows(t) for t in tiles]
        d_a, d_b = ([[None] * c for _ in range(p)] for _ in range(2))
        for j in _positions(c, not cfg.reverse):
            a_j, g_j = tuple(r[j] for r in rows[:p]), tuple(r[j] for r in rows[p:2 * p])
            lam = add(mu, g_j)
            mu = mul(a_j, lam, conj_x=True)
            if summary:
                decay = mul(a_j, decay, conj_x=True)
                continue
            k = j + step
            h_prev = tuple(o if not 0 <= k < c else r[k]
                           for o, r in zip(outside, rows[2 * p:], strict=True))
            h_prev = tuple(jnp.where(start + j == edge, f, v)
                           for f, v in zip(first, h_prev, strict=True))
            for i, v in enumerate(mul(h_prev, lam, conj_x=True)):
                d_a[i][j], d_b[i][j] = v, lam[i]
        if not summary:
            walk.store(da, start, d_a)
            walk.store(db, start, d_b)
        return mu, decay

    if summary:
        zero = tuple(jnp.zeros((cfg.width,), cfg.acc_dtype) for _ in range(p))
        init = (zero, one(zero))
    else:
        init = (walk.segment_state(mu_in), None)
    mu, decay = walk.loop(load, run, init, not cfg.reverse)
    walk.store_segment_state(end, mu)
    if summary:
        walk.store_segment_state(prod, decay)


def _call(kernel, cfg: Config, summary: bool, batch: int, out_specs, *args):
    out_shape = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in out_specs]
    return pallas_call(functools.partial(kernel, cfg=cfg, summary=summary),
                       grid=cfg.grid(batch), out_shape=out_shape, num_warps=cfg.num_warps)(*args)


def _combine(decays: tuple, ends: tuple, init: tuple, descending: bool) -> tuple:
    """The carry entering each segment, (batch, segments, channels) per plane, of
    carry_{s+1} = P_s carry_s + E_s from ``init``: (batch, channels), visiting the segments
    (axis 1) in descending order if ``descending``."""
    def step(carry, pe):
        decay, end = pe
        return add(mul(decay, carry), end), carry

    moved = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (decays, ends))
    _, entering = jax.lax.scan(step, init, moved, reverse=descending)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), entering)


def _in_segments(kernel, cfg: Config, batch: int, operands: tuple, summary_operands: tuple,
                 init: tuple, out_specs: list, descending: bool):
    """``kernel``'s full pass over ``operands`` from ``init`` (per plane, (batch, channels)),
    after its summary pass over ``summary_operands`` and ``_combine`` when the sequence is
    split. Returns (the full pass's other outputs, per plane the state leaving the walk)."""
    p = cfg.planes
    state = (batch, cfg.segments, cfg.channels)
    init = tuple(x.astype(cfg.acc_dtype) for x in init)
    if cfg.segments == 1:
        entering = tuple(x[:, None] for x in init)
    else:
        outs = _call(kernel, cfg, True, batch, [(state, cfg.acc_dtype)] * (2 * p),
                     *summary_operands)
        entering = _combine(tuple(outs[p:]), tuple(outs[:p]), init, descending)
    outs = _call(kernel, cfg, False, batch, out_specs + [(state, cfg.acc_dtype)] * p,
                 *operands, *entering)
    last = 0 if descending else cfg.segments - 1
    return outs[:-p], tuple(e[:, last] for e in outs[-p:])


def _forward(cfg: Config, a: tuple, b: tuple, h0: tuple):
    batch = b[0].shape[0]
    seq = (batch, cfg.length, cfg.channels)
    h, last = _in_segments(_forward_kernel, cfg, batch, (*a, *b), (*a, *b), h0,
                           [(seq, cfg.h_dtype)] * cfg.planes, cfg.reverse)
    return tuple(h), tuple(x.astype(cfg.h_dtype) for x in last)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cfg: Config, a: tuple, b: tuple, h0: tuple):
    """(all states, final state), each a tuple of planes, from planes of a, b: (batch, length,
    channels) and h0: (batch, channels)."""
    return _forward(cfg, a, b, h0)


def _recurrence_fwd(cfg, a, b, h0):
    h, last = _forward(cfg, a, b, h0)
    return (h, last), (a, h, h0)


def _recurrence_bwd(cfg, residuals, cotangents):
    a, h, h0 = residuals
    g, g_last = cotangents
    batch, p = a[0].shape[0], cfg.planes
    seq = (batch, cfg.length, cfg.channels)
    grads, dh0 = _in_segments(_backward_kernel, cfg, batch, (*a, *g, *h, *h0), (*a, *g), g_last,
                              [(seq, cfg.a_dtype)] * p + [(seq, cfg.b_dtype)] * p,
                              not cfg.reverse)
    return (tuple(grads[:p]), tuple(grads[p:]),
            tuple(d.astype(x.dtype) for d, x in zip(dh0, h0, strict=True)))


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _segments(batch: int, length: int, channels: int, chunk: int, width: int,
              num_warps: int) -> int:
    """How many segments to split the sequence into: 1 if the channels alone give MIN_WARPS
    warps, else enough for that, each segment at least MIN_SEGMENT_CHUNKS chunks long."""
    warps = batch * _ceil_div(channels, width) * num_warps
    wanted = _ceil_div(MIN_WARPS, warps)
    return max(1, min(wanted, length // (MIN_SEGMENT_CHUNKS * chunk)))


def linear_recurrence(a: Array, b: Array, initial_state: Array | None = None, *,
                      reverse: bool = False, chunk: int | None = None, width: int = WIDTH,
                      num_warps: int = NUM_WARPS, segments: int | None = None
                      ) -> tuple[Array, Array]:
    """All states and the final state of ``h_t = a_t h_{t-1} + b_t`` along axis 1, by the kernel.

    a: broadcastable to b (materialised at b's shape), b: (batch, length, ...), real or complex;
    initial_state: (batch, ...) or None (zeros). With ``reverse`` the recurrence runs from the
    end, h_t = a_t h_{t+1} + b_t, and initial_state is h_length. The arguments are validated by
    ``seqzoo.ops.linear_recurrence``, the public entry point (``impl="pallas"``).
    chunk (rows per chunk, a power of two, default ROWS_IN_FLIGHT / planes), width (channels per
    program, a power of two, capped at the channel count), num_warps and segments (default:
    see ``_segments``) tune the launch; none changes the result beyond rounding.

    Returns (h: b's shape, final state: (batch, ...)), both in the result dtype of (a, b), the
    final state being h_{length-1} (h_0 if reversed).
    """
    out_dtype = jnp.result_type(a, b)
    complex_ = jnp.issubdtype(out_dtype, jnp.complexfloating)
    planes = 2 if complex_ else 1
    batch, length = b.shape[:2]
    seq_shape, state_shape = b.shape, b.shape[:1] + b.shape[2:]
    channels = int(np.prod(b.shape[2:], dtype=int))
    a = jnp.broadcast_to(a, b.shape).reshape(batch, length, channels)
    b = b.reshape(batch, length, channels)
    real_dtype = jnp.finfo(out_dtype).dtype if complex_ else out_dtype
    h0 = (jnp.zeros((batch, channels), real_dtype) if initial_state is None
          else initial_state.reshape(batch, channels))
    if complex_:
        a, b, h0 = (x.astype(out_dtype) for x in (a, b, h0))
    a_planes, b_planes, h0_planes = (split(x, complex_) for x in (a, b, h0))
    chunk = chunk or ROWS_IN_FLIGHT // planes
    width = min(width, next_power_of_2(channels))
    segments = segments or _segments(batch, length, channels, chunk, width, num_warps)
    segment_length = _ceil_div(_ceil_div(length, segments), chunk) * chunk
    cfg = Config(
        length=length,
        channels=channels,
        planes=planes,
        reverse=reverse,
        chunk=chunk,
        width=width,
        num_warps=num_warps,
        segments=_ceil_div(length, segment_length),
        segment_length=segment_length,
        acc_dtype=np.dtype(jnp.promote_types(real_dtype, jnp.float32)),
        a_dtype=np.dtype(a_planes[0].dtype),
        b_dtype=np.dtype(b_planes[0].dtype),
        h_dtype=np.dtype(real_dtype),
    )
    h, last = _recurrence(cfg, a_planes, b_planes, h0_planes)
    if complex_:
        h, last = jax.lax.complex(*h), jax.lax.complex(*last)
    else:
        (h,), (last,) = h, last
    return h.reshape(seq_shape), last.reshape(state_shape)
