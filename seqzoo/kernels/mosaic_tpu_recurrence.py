"""Mosaic-TPU Pallas kernel: the diagonal linear recurrence, forward and backward.

    h_t = a_t * h_{t-1} + b_t       t = 0 .. T-1, h_{-1} = initial state    (reverse: t = T-1 .. 0)

elementwise over channels, real or complex (complex as real/imaginary planes), one multiply-add
per step in float32 exactly as written (no log-space sums), like the Triton kernel
``seqzoo.ops.scan.pallas_gpu_recurrence`` whose signature and semantics this one mirrors. The
backward pass (``jax.custom_vjp``) is the adjoint recurrence walked in the opposite direction
with every gradient fused:

    lam_t = g_t + mu_t,   mu_{t-1} = conj(a_t) lam_t,   mu_{T-1} = cotangent of the final state
    db_t = lam_t,   da_t = lam_t conj(h_{t-1}),   d initial state = mu_{-1}

Layout and tiling (``mosaic_tpu_walk``): (batch, length, channels) arrays, channels on the lanes,
grid (batch, channel blocks, time blocks) with the time blocks last and sequential; the state
(8, block_channels) per plane stays in VMEM scratch between time blocks. Inside a block a
``fori_loop`` takes tiles of 8 rows (16 for bf16) and runs the recurrence over their rows. The
backward pass reads h_{t-1} from the tile (rotated by one row) and, at a block's edge, from an
extra block of the tile's height just outside the block (a halo BlockSpec on h); h_{-1} is the
initial state. Bytes moved: forward reads a, b and writes h (3 arrays), backward reads a, g, h
and writes da, db (5 arrays): memory bound (``benchmarks/tpu_model.py``).

VMEM: ``block_channels`` is up to ``LANE_CAP`` lanes and ``block_time`` the largest of
``TIME_BLOCKS`` whose backward working set (``working_set``: 2 buffers of a, g, h, da, db per
plane) fits ``mosaic_tpu_common.vmem_budget()``, 3/4 of the scoped default: 12 MiB on v4, v5e and
v5p, 24 MiB on v6e. Float32 real: 512 x 512 (10.3 MiB) on every generation; complex: 256 x 512
(10.7 MiB) on v4/v5, 512 x 512 (20.7 MiB) on v6e; bf16 real: 512 x 512 (5.2 MiB).

Tolerance: float32 inputs round as the sequential ``lax.scan`` (``impl="sequential"``) does, up
to fused multiply-adds: values and gradients within 1e-5 relative in the tests (interpret mode).
bf16 inputs run in float32, rounded once on output; ``da`` uses the stored bf16 states (as the
Triton kernel): within 2e-2 of the float32 op on the same values.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from seqzoo.kernels import mosaic_tpu_common as common
from seqzoo.kernels import mosaic_tpu_walk as walk
from seqzoo.kernels.planes import add, mul, split

Array = jax.Array
_F32 = jnp.float32
TIME_BLOCKS = (512, 256, 128, 64, 32, 16)
LANE_CAP = 512


@dataclasses.dataclass(frozen=True)
class Config:
    """Static shape and tiling of one call (hashable: a ``custom_vjp`` nondiff argument)."""

    length: int
    channels: int
    planes: int  # 1 real, 2 complex
    reverse: bool
    block_time: int
    block_channels: int
    rows: int  # rows per tile
    b_dtype: np.dtype
    h_dtype: np.dtype
    vmem_bytes: int  # the working set of a grid step (``working_set``)
    interpret: bool

    @property
    def time_blocks(self) -> int:
        return common.cdiv(self.length, self.block_time)

    def grid(self, batch: int) -> tuple[int, int, int]:
        return (batch, common.cdiv(self.channels, self.block_channels), self.time_blocks)

    def first_row(self, step, descending: bool):
        """The global row of the first row of the block visited at grid step ``step``."""
        return walk.time_block(step, self.time_blocks, descending) * self.block_time


def working_set(block_time: int, block_channels: int, planes: int, itemsizes: tuple) -> int:
    """VMEM bytes of one grid step of the backward pass (the larger): double-buffered blocks of
    the five (batch, length, channels) arrays per plane and their halo, the state scratch."""
    per_row = block_channels * planes * sum(itemsizes)
    return 2 * (block_time + 16) * per_row + 4 * common.SUBLANES * block_channels * planes


def _groups(refs, planes: int, n: int) -> list:
    """Split refs into n groups of ``planes`` refs (one value's planes)."""
    return [refs[i * planes:(i + 1) * planes] for i in range(n)]


def _over_blocks(cfg: Config, tile, init, state, final, descending: bool) -> None:
    """Run ``tile(j, carry) -> carry`` over the block's tiles, the carry (per plane, (8, lanes))
    kept in ``state`` scratch across time blocks: read from ``init`` ((1, lanes) refs) at the
    first grid step, written to ``final`` after the last."""
    step = pl.program_id(2)

    @pl.when(step == 0)
    def _():
        for s, x in zip(state, init, strict=True):
            s[...] = walk.replicate(x[...])

    carry = walk.walk(cfg.block_time // cfg.rows, tile, tuple(s[...] for s in state), descending)
    for s, c in zip(state, carry, strict=True):
        s[...] = c

    @pl.when(step == cfg.time_blocks - 1)
    def _():
        for ref, c in zip(final, carry, strict=True):
            ref[...] = c[0:1].astype(ref.dtype)


def _tiles(cfg: Config, refs_and_fills: list, first, start) -> list:
    """Tile ``start``'s rows of each group of refs, float32; rows past the sequence's end (in
    a partial last block) read the group's fills."""
    keep = None
    if cfg.length % cfg.block_time:
        keep = walk.inside(first + start, (cfg.rows, cfg.block_channels), cfg.length)
    out = []
    for refs, fills in refs_and_fills:
        tiles = tuple(walk.load_tile(r, start, cfg.rows) for r in refs)
        if keep is not None:
            tiles = tuple(jnp.where(keep, t, f) for t, f in zip(tiles, fills, strict=True))
        out.append(tiles)
    return out


def _identity(planes: int) -> tuple:
    """What rows past the end read for a: 1, which with b = 0 keeps the state."""
    return (1.0,) + (0.0,) * (planes - 1)


def _forward_kernel(*refs, cfg: Config):
    p, rows = cfg.planes, cfg.rows
    a, b, h0, h, last, state = _groups(refs, p, 6)
    first = cfg.first_row(pl.program_id(2), cfg.reverse)

    def tile(j, carry):
        start = j * rows
        a_t, b_t = _tiles(cfg, [(a, _identity(p)), (b, (0.0,) * p)], first, start)
        out = [jnp.zeros_like(t) for t in b_t]
        for r in walk.positions(rows, cfg.reverse):
            carry = add(mul(tuple(walk.row(t, r) for t in a_t), carry),
                        tuple(walk.row(t, r) for t in b_t))
            out = [walk.put_row(o, r, c) for o, c in zip(out, carry, strict=True)]
        for ref, o in zip(h, out, strict=True):
            walk.store_tile(ref, start, rows, o)
        return carry

    _over_blocks(cfg, tile, h0, state, last, cfg.reverse)


def _previous_states(cfg: Config, h, halo, h0, j, first_row):
    """Per plane the tile of h_{t-1} (reverse: h_{t+1}) for the rows of tile j: h's tile rotated
    by one row, the row that comes from outside the tile taken from the neighbouring tile or, at
    the block's edge, from the halo block; the initial state at the sequence's edge."""
    rows, tiles = cfg.rows, cfg.block_time // cfg.rows
    if cfg.reverse:  # row r <- row r+1; the last row <- the first row of the next tile
        shift, outer, inner, neighbour, edge = rows - 1, rows - 1, 0, j + 1, cfg.length - 1
        at_block_edge = j == tiles - 1
    else:  # row r <- row r-1; the first row <- the last row of the previous tile
        shift, outer, inner, neighbour, edge = 1, 0, rows - 1, j - 1, 0
        at_block_edge = j == 0
    neighbour = jnp.clip(neighbour, 0, tiles - 1) * rows
    ids = walk.row_ids((rows, cfg.block_channels))
    at_edge = first_row + ids == edge
    out = []
    for h_p, halo_p, h0_p in zip(h, halo, h0, strict=True):
        own = walk.load_tile(h_p, j * rows, rows)
        other = jnp.where(walk.splat(at_block_edge, ids.shape), halo_p[...].astype(_F32),
                          walk.load_tile(h_p, neighbour, rows))
        moved = jnp.where(ids == outer, other[inner:inner + 1],
                          pltpu.roll(own, shift, 0))
        out.append(jnp.where(at_edge, h0_p[...].astype(_F32), moved))
    return tuple(out)


def _backward_kernel(*refs, cfg: Config):
    p, rows = cfg.planes, cfg.rows
    a, g, h, halo, h0, g_last, da, db, dh0, state = _groups(refs, p, 10)
    descending = not cfg.reverse
    first = cfg.first_row(pl.program_id(2), descending)

    def tile(j, mu):
        start = j * rows
        a_t, g_t = _tiles(cfg, [(a, _identity(p)), (g, (0.0,) * p)], first, start)
        lam_t = [jnp.zeros_like(t) for t in g_t]
        for r in walk.positions(rows, descending):
            lam = add(mu, tuple(walk.row(t, r) for t in g_t))
            mu = mul(tuple(walk.row(t, r) for t in a_t), lam, conj_x=True)
            lam_t = [walk.put_row(o, r, v) for o, v in zip(lam_t, lam, strict=True)]
        h_prev = _previous_states(cfg, h, halo, h0, j, first + start)
        for ref, v in zip(da, mul(h_prev, tuple(lam_t), conj_x=True), strict=True):
            walk.store_tile(ref, start, rows, v)
        for ref, v in zip(db, lam_t, strict=True):
            walk.store_tile(ref, start, rows, v)
        return mu

    _over_blocks(cfg, tile, g_last, state, dh0, descending)


def _call(kernel, cfg: Config, batch: int, in_specs: list, outs: list, args: tuple):
    """One launch; ``outs``: (shape, dtype, spec) per output."""
    state = pltpu.VMEM((common.SUBLANES, cfg.block_channels), _F32)
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=cfg.grid(batch),
        in_specs=in_specs,
        out_specs=[spec for _, _, spec in outs],
        out_shape=[jax.ShapeDtypeStruct(shape, dtype) for shape, dtype, _ in outs],
        scratch_shapes=[state] * cfg.planes,
        compiler_params=common.compiler_params(("parallel", "parallel", "arbitrary"),
                                               common.vmem_limit(cfg.vmem_bytes)),
        interpret=common.interpret_mode(cfg.interpret),
    )(*args)


def _forward(cfg: Config, a: tuple, b: tuple, h0: tuple):
    p = cfg.planes
    batch = b[0].shape[0]
    seq = walk.sequence_spec(cfg.block_time, cfg.block_channels, cfg.length, cfg.reverse)
    state = walk.state_spec(1, cfg.block_channels)
    outs = ([((batch, cfg.length, cfg.channels), cfg.h_dtype, seq)] * p
            + [((batch, 1, cfg.channels), cfg.h_dtype, state)] * p)
    res = _call(_forward_kernel, cfg, batch, [seq] * (2 * p) + [state] * p, outs, (*a, *b, *h0))
    return tuple(res[:p]), tuple(res[p:])


def _halo_spec(cfg: Config) -> pl.BlockSpec:
    """The ``rows`` rows of h just before the block in the forward walk (reverse: just after),
    clipped into the sequence (the sequence's edge reads the initial state instead)."""
    per_block, last = cfg.block_time // cfg.rows, common.cdiv(cfg.length, cfg.rows) - 1
    descending = not cfg.reverse

    def index(b, c, s):
        block = walk.time_block(s, cfg.time_blocks, descending)
        tile = (block + 1) * per_block if cfg.reverse else block * per_block - 1
        return b, jnp.clip(tile, 0, last), c

    return pl.BlockSpec((None, cfg.rows, cfg.block_channels), index)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cfg: Config, a: tuple, b: tuple, h0: tuple):
    """(all states, final state) as planes from planes of a, b: (batch, length, channels) and
    h0: (batch, 1, channels)."""
    return _forward(cfg, a, b, h0)


def _recurrence_fwd(cfg, a, b, h0):
    h, last = _forward(cfg, a, b, h0)
    return (h, last), (a, h, h0)


def _recurrence_bwd(cfg, residuals, cotangents):
    a, h, h0 = residuals
    g, g_last = cotangents
    p, batch = cfg.planes, a[0].shape[0]
    seq = walk.sequence_spec(cfg.block_time, cfg.block_channels, cfg.length, not cfg.reverse)
    state = walk.state_spec(1, cfg.block_channels)
    in_specs = [seq] * (3 * p) + [_halo_spec(cfg)] * p + [state] * (2 * p)
    shape = (batch, cfg.length, cfg.channels)
    outs = ([(shape, x.dtype, seq) for x in a] + [(shape, cfg.b_dtype, seq)] * p
            + [((batch, 1, cfg.channels), x.dtype, state) for x in h0])
    res = _call(_backward_kernel, cfg, batch, in_specs, outs, (*a, *g, *h, *h, *h0, *g_last))
    return tuple(res[:p]), tuple(res[p:2 * p]), tuple(res[2 * p:])


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def default_blocks(length: int, channels: int, planes: int, itemsizes: tuple,
                   rows: int) -> tuple[int, int]:
    """(block_time, block_channels) for this shape: channels up to ``LANE_CAP`` lanes, then the
    longest of ``TIME_BLOCKS`` (not longer than the sequence needs) whose backward working set
    fits the budget."""
    block_channels = common.lane_block(channels, LANE_CAP)
    needed = common.round_up(length, rows)
    block_time = common.largest_fitting(
        [min(t, needed) for t in TIME_BLOCKS if t % rows == 0],
        lambda t: working_set(t, block_channels, planes, itemsizes))
    return block_time, block_channels


def linear_recurrence(a: Array, b: Array, initial_state: Array | None = None, *,
                      reverse: bool = False, block_time: int | None = None,
                      block_channels: int | None = None, interpret: bool | None = None
                      ) -> tuple[Array, Array]:
    """All states and the final state of ``h_t = a_t h_{t-1} + b_t`` along axis 1, by the
    Mosaic-TPU kernel; the same call as ``seqzoo.ops.scan.pallas_gpu_recurrence.linear_recurrence``.

    a: broadcastable to b (materialised at b's shape), b: (batch, length, ...), real or complex;
    initial_state: (batch, ...) or None (zeros). With ``reverse`` the recurrence runs from the
    end, h_t = a_t h_{t+1} + b_t, and initial_state is h_length. block_time (a multiple of the
    tile height: 8, 16 for bf16) and block_channels (a multiple of 128, or all channels) override
    ``default_blocks``; interpret: simulate the TPU (default: unless running on one).

    Returns (h: b's shape, final state: (batch, ...)) in the result dtype of (a, b), the final
    state being h_{length-1} (h_0 if reversed).
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
    h0 = (jnp.zeros((batch, 1, channels), real_dtype) if initial_state is None
          else initial_state.reshape(batch, 1, channels))
    if complex_:
        a, b, h0 = (x.astype(out_dtype) for x in (a, b, h0))
    a_planes, b_planes, h0_planes = (split(x, complex_) for x in (a, b, h0))
    rows = common.tile_rows(a_planes[0].dtype, b_planes[0].dtype, real_dtype)
    # backward: a, g (h's dtype), h, da (a's), db (b's)
    itemsizes = tuple(np.dtype(d).itemsize for d in (a_planes[0].dtype, real_dtype, real_dtype,
                                                      a_planes[0].dtype, b_planes[0].dtype))
    auto_time, auto_channels = default_blocks(length, channels, planes, itemsizes, rows)
    block_time, block_channels = block_time or auto_time, block_channels or auto_channels
    cfg = Config(
        length=length, channels=channels, planes=planes, reverse=reverse,
        block_time=block_time, block_channels=block_channels, rows=rows,
        b_dtype=np.dtype(b_planes[0].dtype), h_dtype=np.dtype(real_dtype),
        vmem_bytes=working_set(block_time, block_channels, planes, itemsizes),
        interpret=not common.on_tpu() if interpret is None else interpret,
    )
    h, last = _recurrence(cfg, a_planes, b_planes, h0_planes)
    if complex_:
        h, last = jax.lax.complex(*h), jax.lax.complex(*last)
    else:
        (h,), (last,) = h, last
    return h.reshape(seq_shape), last.reshape(state_shape)
