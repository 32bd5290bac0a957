"""Mosaic-TPU Pallas kernel: Mamba-1's selective scan, forward and backward, state in VMEM.

Per channel d and state index n, in float32 (as ``seqzoo.ops.scan.pallas_gpu_selective``, the Triton
kernel whose signature and semantics this one mirrors):

    dt_t = softplus(delta_t + delta_bias)          (softplus optional)
    x_t  = keep_t exp(dt_t A) x_{t-1} + dt_t u_t B_t       x: (n, channels of the block)
    y_t  = (C_t . x_t + D u_t) silu(z_t)                    (gate optional)

keep_t = 0 where a packed segment starts (``resets``), else 1; with ``reverse`` the scan runs
from the end (x_{t+1} for x_{t-1}), which the XLA op does not offer. B and C are shared by all
channels or by groups of channels. Discretisation, state, readout, skip and gate are fused: the
forward pass reads u, delta, z, B, C once and writes y; the (batch, length, d, n) states never
reach HBM.

Layout and tiling (``mosaic_tpu_walk``): u, delta, z, y (batch, length, d) with channels on the
lanes, blocks (block_time, block_channels), grid (batch, channel blocks, time blocks), time last
and sequential. The state is (n, block_channels): state index on the sublanes (n padded to a
multiple of 8), channels on the lanes, kept in VMEM scratch across time blocks. Rows of u, dt
(one per step) are broadcast over the sublanes; B_t and C_t must be columns broadcast over the
lanes, so the wrapper passes them transposed, (batch, groups, n, length) float32, one
(n, block_time) block per step; the kernel reads the 128-step lane slab holding a tile's steps
and rotates it (``pltpu.roll``) so that step r of the tile sits in lane r. A block of channels
lies in one group of B/C or holds whole groups (``block_channels`` a multiple or divisor of the
group size).

Backward (``jax.custom_vjp``): the forward pass, when differentiated, also writes the state
entering every time block (checkpoints, (batch, time blocks, n, d) float32). The backward pass
walks the time blocks from the end; per block it recomputes the block's states from its
checkpoint into VMEM scratch (block_time, n, block_channels), then runs the adjoint recurrence
backwards through them:

    lam_t = mu_t + dy_t C_t,   mu_{t-1} = keep_t exp(dt_t A) lam_t,   dy_t = g_t silu(z_t)
    du_t = D dy_t + dt_t (B_t . lam_t),   d dt_t = A . (lam_t exp(dt_t A) keep_t x_{t-1})
                                                     + u_t (B_t . lam_t)
    dA += dt_t lam_t exp(dt_t A) keep_t x_{t-1},   dD += dy_t u_t,   d delta_bias += d delta_t
    dB_t = sum_d lam_t dt_t u_t,   dC_t = sum_d dy_t x_t

dA, dD, d delta_bias accumulate in VMEM per (batch, channel block) and are summed over the batch
by the wrapper; dB and dC are written per channel block as (n, block_time) lane-dense blocks
(a column per step, assembled in the 128-step slab) and summed over channel blocks.

VMEM: ``default_blocks`` picks block_channels up to ``LANE_CAP`` and the longest block_time of
``TIME_BLOCKS`` (multiples of 128: the lanes of the B/C blocks; a sequence of at most 128 steps
is one block) whose backward working set (``working_set``: double-buffered blocks and the
states scratch, block_time x n x block_channels x 4 bytes) fits
``mosaic_tpu_common.vmem_budget()`` (12 MiB on v4/v5e/v5p, 24 MiB on v6e). With z, at n = 16:
float32 256 x 256 (7.8 MiB) on v4/v5, 512 x 256 (15.5 MiB) on v6e; bf16 512 x 256 (12.0 MiB).
At n = 64: 128 x 256 (10.8 MiB) on v4/v5. A state too large for 128 steps raises ValueError.

Tolerance: float32 throughout; against the XLA op (associative or sequential scan) relative
errors ~1e-6 (outputs) to ~1e-5 (gradients summed over the sequence): tests assert 1e-5 and 1e-4.
bf16 u, delta, z, B, C: computed in float32, outputs and gradients rounded once, against the
float32 op on the same values within 2e-2.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from seqzoo.kernels import mosaic_tpu_common as common
from seqzoo.kernels import mosaic_tpu_walk as walk

Array = jax.Array
_F32 = jnp.float32
LANES = common.LANES
TIME_BLOCKS = (512, 256, 128)
LANE_CAP = 256
_SEQ = ("u", "delta", "z", "g")  # (batch, length, d) inputs


@dataclasses.dataclass(frozen=True)
class Config:
    """Static shapes, options and tiling of one call (a ``custom_vjp`` nondiff argument)."""

    length: int
    channels: int  # d
    state: int  # n, padded to a multiple of 8
    groups: int  # of B and C (1: shared)
    softplus: bool
    gate: bool
    resets: bool
    reverse: bool
    block_time: int
    block_channels: int
    rows: int  # rows per tile of the (length, d) blocks
    vmem_bytes: int
    interpret: bool

    @property
    def group_size(self) -> int:
        return self.channels // self.groups

    @property
    def groups_per_block(self) -> int:
        return max(1, self.block_channels // self.group_size)

    @property
    def time_blocks(self) -> int:
        return common.cdiv(self.length, self.block_time)

    @property
    def column_block(self) -> int:
        """Steps per block of the (.., n, steps) arrays: block_time, at least 128 lanes (then
        several time blocks share one)."""
        return max(self.block_time, LANES)

    @property
    def padded_length(self) -> int:
        """Steps of the (.., n, steps) arrays: zeros (keep: ones) past the sequence."""
        return common.round_up(self.length, self.column_block)

    @property
    def channel_blocks(self) -> int:
        return common.cdiv(self.channels, self.block_channels)

    def grid(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.channel_blocks, self.time_blocks)


def working_set(block_time: int, block_channels: int, state: int, groups_per_block: int,
                seq_itemsizes: tuple) -> int:
    """VMEM bytes of a backward grid step: double-buffered (block_time, block_channels) blocks
    of the sequence arrays (``seq_itemsizes``: inputs and gradients), B, C and their gradients'
    (n, block_time) blocks, five (n, block_channels) state blocks, and the scratch of the
    block's states."""
    seq = 2 * block_time * block_channels * sum(seq_itemsizes)
    columns = 2 * 4 * groups_per_block * state * block_time * 4
    states = (2 * 5 + 3) * state * block_channels * 4
    return seq + columns + states + block_time * state * block_channels * 4


def _softplus(x):
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


class _Block:
    """One grid step: the time block, its per-channel constants and masks, and its tiles."""

    def __init__(self, cfg: Config, refs: dict, descending: bool):
        self.cfg, self.refs = cfg, refs
        self.block = walk.time_block(pl.program_id(2), cfg.time_blocks, descending)
        self.first = self.block * cfg.block_time
        self.base = walk.rem(self.first, cfg.column_block)  # first step in its B/C block
        shape = (cfg.state, cfg.block_channels)
        self.ragged = cfg.channels % cfg.block_channels != 0  # the last block overhangs
        self.A = self.lanes(refs["A"][...], shape)
        self.D = self.lanes(refs["D"][...], (1, cfg.block_channels))
        self.bias = self.lanes(refs["bias"][...], (1, cfg.block_channels))
        group = walk.div(jax.lax.broadcasted_iota(jnp.int32, shape, 1), cfg.group_size)
        self.group_of_lane = group if cfg.groups_per_block > 1 else None

    def lanes_ok(self, shape):
        """(.., block_channels) bool: the lanes holding channels (an iota of the shape itself:
        no boolean broadcasts)."""
        lane = jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
        return pl.program_id(1) * self.cfg.block_channels + lane < self.cfg.channels

    def lanes(self, x, shape):
        """x in float32, 0 in the lanes past the last channel."""
        x = x.astype(_F32)
        return jnp.where(self.lanes_ok(shape), x, 0.0) if self.ragged else x

    def state(self, name):
        return self.lanes(self.refs[name][...], (self.cfg.state, self.cfg.block_channels))

    def tiles(self, j, names=_SEQ, grad: bool = False) -> dict:
        """Tile j's rows of the sequence arrays present, float32, zero outside the sequence and
        the channels; dt = softplus(delta + bias) (0 outside: steps that keep the state), dt u,
        and with ``grad`` softplus' derivative ``sig``."""
        cfg, rows = self.cfg, self.cfg.rows
        shape = (rows, cfg.block_channels)
        keep = None
        if cfg.length % cfg.block_time:
            keep = walk.inside(self.first + j * rows, shape, cfg.length)
        if self.ragged:
            lanes = self.lanes_ok(shape)
            keep = lanes if keep is None else keep & lanes
        out = {}
        for name in names:
            if name in self.refs:
                tile = walk.load_tile(self.refs[name], j * rows, rows)
                out[name] = tile if keep is None else jnp.where(keep, tile, 0.0)
        dt = out["delta"] + self.bias
        if cfg.softplus:
            if grad:
                out["sig"] = jax.nn.sigmoid(dt)
            dt = _softplus(dt)
        out["dt"] = dt if keep is None else jnp.where(keep, dt, 0.0)
        out["dtu"] = out["dt"] * out["u"]
        return out

    def lane(self, j):
        """Where tile j's first step sits in the block's (.., n, column_block) blocks."""
        return self.base + j * self.cfg.rows

    def slabs(self, j) -> dict:
        """The B, C (and keep) columns of tile j's steps: the 128-step lane slab holding them,
        rotated so that the tile's step r is lane r."""
        lane = self.lane(j)
        offset = pl.multiple_of(walk.div(lane, LANES) * LANES, LANES)
        shift = walk.rem(LANES - walk.rem(lane, LANES), LANES)
        return {name: [pltpu.roll(self.refs[name][g, :, pl.ds(offset, LANES)].astype(_F32),
                                  shift, 1) for g in range(self.refs[name].shape[0])]
                for name in ("B", "C", "keep") if name in self.refs}

    def column(self, slabs: list, r: int):
        """Step r's column of B or C, broadcast over the block's lanes: (n, block_channels),
        each lane reading its group's column."""
        shape = (self.cfg.state, self.cfg.block_channels)
        out = jnp.broadcast_to(slabs[0][:, r:r + 1], shape)
        for g in range(1, len(slabs)):
            out = jnp.where(self.group_of_lane == g, jnp.broadcast_to(slabs[g][:, r:r + 1], shape),
                            out)
        return out

    def decay(self, tiles: dict, slabs: dict, r: int):
        """keep_r exp(dt_r A): (n, block_channels)."""
        decay = jnp.exp(walk.row(tiles["dt"], r, self.cfg.state) * self.A)
        if "keep" in slabs:
            decay = decay * slabs["keep"][0][0:1, r:r + 1]
        return decay

    def step(self, x, tiles: dict, slabs: dict, r: int):
        """x_r from x_{r-1}: (decay, x_r)."""
        decay = self.decay(tiles, slabs, r)
        drive = self.column(slabs["B"], r) * walk.row(tiles["dtu"], r, self.cfg.state)
        return decay, decay * x + drive

    def group_sums(self, value) -> list:
        """Per group of the block, value (n, block_channels) summed over its lanes: (n, 1)."""
        if self.group_of_lane is None:
            return [jnp.sum(value, axis=1, keepdims=True)]
        return [jnp.sum(jnp.where(self.group_of_lane == g, value, 0.0), axis=1, keepdims=True)
                for g in range(self.cfg.groups_per_block)]


def _names(cfg: Config, backward: bool) -> tuple[list, list]:
    """The kernel's input and output names, in order."""
    seq = ["u", "delta"] + (["z"] if cfg.gate else []) + (["g"] if backward else [])
    ins = seq + ["A", "B", "C", "D", "bias", "ckpt" if backward else "x0"]
    ins += (["g_last"] if backward else []) + (["keep"] if cfg.resets else [])
    if backward:
        outs = ["du", "ddelta"] + (["dz"] if cfg.gate else []) + [
            "dB", "dC", "dA", "dD", "dbias", "dx0"]
    else:
        outs = ["y", "last"]
    return ins, outs


def _forward_kernel(*refs, cfg: Config, save: bool):
    ins, outs = _names(cfg, backward=False)
    names = ins + outs + (["ckpt"] if save else []) + ["x"]
    refs = dict(zip(names, refs, strict=True))
    blk = _Block(cfg, refs, descending=cfg.reverse)
    step = pl.program_id(2)
    rows = cfg.rows

    @pl.when(step == 0)
    def _():
        refs["x"][...] = blk.state("x0")

    if save:
        refs["ckpt"][...] = refs["x"][...]

    def tile(j, x):
        tiles, slabs = blk.tiles(j), blk.slabs(j)
        y = jnp.zeros_like(tiles["u"])
        for r in walk.positions(rows, cfg.reverse):
            _, x = blk.step(x, tiles, slabs, r)
            y = walk.put_row(y, r, jnp.sum(x * blk.column(slabs["C"], r), axis=0,
                                           keepdims=True))
        y = y + blk.D * tiles["u"]
        if cfg.gate:
            y = y * jax.nn.silu(tiles["z"])
        walk.store_tile(refs["y"], j * rows, rows, y)
        return x

    x = walk.walk(cfg.block_time // rows, tile, refs["x"][...], descending=cfg.reverse)
    refs["x"][...] = x

    @pl.when(step == cfg.time_blocks - 1)
    def _():
        refs["last"][...] = x


def _backward_kernel(*refs, cfg: Config):
    ins, outs = _names(cfg, backward=True)
    names = ins + outs + ["states", "mu", "dA_acc", "dD_acc", "dbias_acc"]
    refs = dict(zip(names, refs, strict=True))
    descending = not cfg.reverse  # the adjoint walks against the forward
    blk = _Block(cfg, refs, descending=descending)
    step = pl.program_id(2)
    rows, n, width = cfg.rows, cfg.state, cfg.block_channels
    tiles_per_block = cfg.block_time // rows
    states = refs["states"]

    @pl.when(step == 0)
    def _():
        refs["mu"][...] = blk.state("g_last")
        for name in ("dA_acc", "dD_acc", "dbias_acc"):
            refs[name][...] = jnp.zeros(refs[name].shape, _F32)

    x_in = blk.state("ckpt")

    def recompute(j, x):  # the block's states x_t into scratch, a tile's rows at once
        tiles, slabs = blk.tiles(j, ("u", "delta")), blk.slabs(j)
        xs = [None] * rows
        for r in walk.positions(rows, cfg.reverse):
            _, x = blk.step(x, tiles, slabs, r)
            xs[r] = x
        states[pl.ds(pl.multiple_of(j * rows, rows), rows)] = jnp.stack(xs)
        return x

    walk.walk(tiles_per_block, recompute, x_in, descending=cfg.reverse)
    # the state before row r in the forward walk: row r - 1 (reverse: r + 1), across the tile's
    # edge the neighbouring tile's, at the block's start the checkpoint
    back, edge_row, first_tile = (1, 0, tiles_per_block - 1) if cfg.reverse else (-1, rows - 1, 0)

    def tile(j, carry):
        mu, dA = carry
        start = j * rows
        tiles, slabs = blk.tiles(j, grad=True), blk.slabs(j)
        if cfg.gate:  # out = y silu(z): dy = g silu(z)
            dy = tiles["g"] * jax.nn.silu(tiles["z"])
        else:
            dy = tiles["g"]
        lam_b, d_dt, cx = (jnp.zeros_like(dy) for _ in range(3))
        d_b, d_c = [None] * rows, [None] * rows
        xs = states[pl.ds(pl.multiple_of(start, rows), rows)]
        neighbour = jnp.clip(start + back * rows + edge_row, 0, cfg.block_time - 1)
        outside = jnp.where(walk.splat(j == first_tile, (n, width)), x_in, states[neighbour])
        for r in walk.positions(rows, descending):
            x_r = xs[r]
            x_prev = xs[r + back] if 0 <= r + back < rows else outside
            decay = blk.decay(tiles, slabs, r)
            c_col = blk.column(slabs["C"], r)
            dy_r = walk.row(dy, r, n)
            lam = mu + dy_r * c_col
            d_c[r] = blk.group_sums(dy_r * x_r)
            d_b[r] = blk.group_sums(lam * walk.row(tiles["dtu"], r, n))
            lam_b = walk.put_row(lam_b, r, jnp.sum(lam * blk.column(slabs["B"], r), axis=0,
                                                   keepdims=True))
            if cfg.gate:
                cx = walk.put_row(cx, r, jnp.sum(x_r * c_col, axis=0, keepdims=True))
            d_decay = lam * decay * x_prev
            d_dt = walk.put_row(d_dt, r, jnp.sum(d_decay * blk.A, axis=0, keepdims=True))
            dA = dA + d_decay * walk.row(tiles["dt"], r, n)
            mu = decay * lam
        d_dt = d_dt + tiles["u"] * lam_b
        if cfg.softplus:
            d_dt = d_dt * tiles["sig"]
        if cfg.length % cfg.block_time:
            d_dt = jnp.where(walk.inside(blk.first + start, d_dt.shape, cfg.length), d_dt, 0.0)
        walk.store_tile(refs["du"], start, rows, blk.D * dy + tiles["dt"] * lam_b)
        walk.store_tile(refs["ddelta"], start, rows, d_dt)
        if cfg.gate:
            sig = jax.nn.sigmoid(tiles["z"])
            y = cx + blk.D * tiles["u"]
            dz = tiles["g"] * y * sig * (1.0 + tiles["z"] * (1.0 - sig))
            walk.store_tile(refs["dz"], start, rows, dz)
        _store_columns(refs, "dB", blk.lane(j), d_b)
        _store_columns(refs, "dC", blk.lane(j), d_c)
        refs["dD_acc"][...] += jnp.sum(dy * tiles["u"], axis=0, keepdims=True)
        refs["dbias_acc"][...] += jnp.sum(d_dt, axis=0, keepdims=True)
        return mu, dA

    mu, dA = walk.walk(tiles_per_block, tile, (refs["mu"][...], refs["dA_acc"][...]),
                       descending)
    refs["mu"][...] = mu
    refs["dA_acc"][...] = dA

    @pl.when(step == cfg.time_blocks - 1)
    def _():
        for out, acc in (("dx0", "mu"), ("dA", "dA_acc"), ("dD", "dD_acc"),
                         ("dbias", "dbias_acc")):
            refs[out][...] = refs[acc][...]


def _store_columns(refs, name: str, first, columns: list) -> None:
    """Write a tile's columns (per step, per group (n, 1)) from lane ``first`` of the
    (groups, n, column_block) block: read-modify-write of the 128-step lane slab holding them."""
    ref = refs[name]
    offset = pl.multiple_of(walk.div(first, LANES) * LANES, LANES)
    lane = jax.lax.broadcasted_iota(jnp.int32, (ref.shape[1], LANES), 1) - walk.rem(first, LANES)
    for g in range(ref.shape[0]):
        slab = ref[g, :, pl.ds(offset, LANES)]
        for r, per_group in enumerate(columns):
            slab = jnp.where(lane == r, per_group[g], slab)
        ref[g, :, pl.ds(offset, LANES)] = slab


def _specs(cfg: Config, names: list, descending: bool) -> list:
    """The BlockSpec of each named array (see ``_prepare`` and ``_scan_bwd`` for the shapes)."""
    tb, cb, n, gpb = cfg.block_time, cfg.block_channels, cfg.state, cfg.groups_per_block
    blocks = cfg.time_blocks

    def t(s):
        return walk.time_block(s, blocks, descending)

    def group_block(c):
        return walk.div(walk.div(c * cb, cfg.group_size), gpb)

    def column_block(s):
        return walk.div(t(s) * tb, cfg.column_block)

    seq = walk.sequence_spec(tb, cb, cfg.length, descending)
    table = {
        "A": pl.BlockSpec((n, cb), lambda b, c, s: (0, c)),
        "B": pl.BlockSpec((None, gpb, n, cfg.column_block),
                          lambda b, c, s: (b, group_block(c), 0, column_block(s))),
        "D": pl.BlockSpec((1, cb), lambda b, c, s: (0, c)),
        "keep": pl.BlockSpec((None, 1, 1, cfg.column_block),
                             lambda b, c, s: (b, 0, 0, column_block(s))),
        "ckpt": pl.BlockSpec((None, None, n, cb), lambda b, c, s: (b, t(s), 0, c)),
        "dB": pl.BlockSpec((None, None, gpb, n, cfg.column_block),
                           lambda b, c, s: (b, c, 0, 0, column_block(s))),
        "state": walk.state_spec(n, cb),
        "row": walk.state_spec(1, cb),
    }
    alias = {"C": "B", "bias": "D", "dC": "dB", "x0": "state", "g_last": "state",
             "last": "state", "dx0": "state", "dA": "state", "dD": "row", "dbias": "row"}
    return [seq if name in _SEQ + ("y", "du", "ddelta", "dz") else table[alias.get(name, name)]
            for name in names]


def _launch(kernel, cfg: Config, ins: list, outs: list, shapes: dict, arrays: dict,
            scratch: list, descending: bool, **params):
    batch = arrays["u"].shape[0]
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg, **params),
        grid=cfg.grid(batch),
        in_specs=_specs(cfg, ins, descending),
        out_specs=_specs(cfg, outs, descending),
        out_shape=[jax.ShapeDtypeStruct(*shapes[name]) for name in outs],
        scratch_shapes=scratch,
        compiler_params=common.compiler_params(("parallel", "parallel", "arbitrary"),
                                               common.vmem_limit(cfg.vmem_bytes)),
        interpret=common.interpret_mode(cfg.interpret),
    )(*(arrays[name] for name in ins))


def _forward(cfg: Config, arrays: dict, save: bool):
    u = arrays["u"]
    batch = u.shape[0]
    ins, outs = _names(cfg, backward=False)
    state = (batch, cfg.state, cfg.channels)
    shapes = {"y": (u.shape, u.dtype), "last": (state, _F32),
              "ckpt": ((batch, cfg.time_blocks, cfg.state, cfg.channels), _F32)}
    outs = outs + (["ckpt"] if save else [])
    scratch = [pltpu.VMEM((cfg.state, cfg.block_channels), _F32)]
    return _launch(_forward_kernel, cfg, ins, outs, shapes, arrays, scratch, cfg.reverse,
                   save=save)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: Config, arrays: dict):
    """(y, final state (batch, n, d)) from the prepared arrays (``_prepare``)."""
    return tuple(_forward(cfg, arrays, save=False))


def _scan_fwd(cfg, arrays):
    y, last, ckpt = _forward(cfg, arrays, save=True)
    return (y, last), (arrays, ckpt)


def _scan_bwd(cfg, residuals, cotangents):
    arrays, ckpt = residuals
    g, g_last = cotangents
    u = arrays["u"]
    batch = u.shape[0]
    ins, outs = _names(cfg, backward=True)
    state = (batch, cfg.state, cfg.channels)
    parts = (batch, cfg.channel_blocks, cfg.groups_per_block, cfg.state, cfg.padded_length)
    shapes = {"du": (u.shape, u.dtype), "ddelta": (u.shape, arrays["delta"].dtype),
              "dB": (parts, _F32), "dC": (parts, _F32), "dA": (state, _F32),
              "dD": ((batch, 1, cfg.channels), _F32), "dbias": ((batch, 1, cfg.channels), _F32),
              "dx0": (state, _F32)}
    if cfg.gate:
        shapes["dz"] = (u.shape, arrays["z"].dtype)
    n, width = cfg.state, cfg.block_channels
    scratch = [pltpu.VMEM((cfg.block_time, n, width), _F32), pltpu.VMEM((n, width), _F32),
               pltpu.VMEM((n, width), _F32), pltpu.VMEM((1, width), _F32),
               pltpu.VMEM((1, width), _F32)]
    inputs = arrays | {"g": g, "g_last": g_last.astype(_F32), "ckpt": ckpt}
    grads = dict(zip(outs, _launch(_backward_kernel, cfg, ins, outs, shapes, inputs, scratch,
                                   not cfg.reverse), strict=True))
    per_group = cfg.channel_blocks * cfg.groups_per_block // cfg.groups

    def columns(part):  # (batch, blocks, per block, n, T') -> (batch, groups, n, T')
        part = part.reshape(batch, -1, cfg.state, cfg.padded_length)[:, :cfg.groups * per_group]
        return part.reshape(batch, cfg.groups, per_group, cfg.state, cfg.padded_length).sum(2)

    out = {name: jnp.zeros_like(x) for name, x in arrays.items()}
    out.update(u=grads["du"], delta=grads["ddelta"], A=grads["dA"].sum(0),
               B=columns(grads["dB"]), C=columns(grads["dC"]),
               D=grads["dD"].sum(0), bias=grads["dbias"].sum(0), x0=grads["dx0"])
    if cfg.gate:
        out["z"] = grads["dz"]
    return (out,)


_scan.defvjp(_scan_fwd, _scan_bwd)


def _block_channels(channels: int, groups: int) -> int:
    """Lanes per block: a multiple of 128 up to ``LANE_CAP`` that holds whole groups of B/C or
    lies in one; else the smallest multiple of 128 holding whole groups, else all channels."""
    size = channels // groups
    width = common.lane_block(channels, LANE_CAP,
                              lambda w: groups == 1 or size % w == 0 or w % size == 0)
    whole_groups = math.lcm(LANES, size)
    return whole_groups if width == channels and whole_groups < channels else width


def default_blocks(length: int, channels: int, state: int, groups: int, rows: int,
                   seq_itemsizes: tuple) -> tuple[int, int]:
    """(block_time, block_channels): block_channels up to ``LANE_CAP`` lanes holding whole B/C
    groups or lying in one; block_time the whole (row-padded) sequence up to 128 steps, else
    the longest of ``TIME_BLOCKS`` whose backward working set fits the budget."""
    block_channels = _block_channels(channels, groups)
    per_block = max(1, block_channels // (channels // groups))
    if length <= LANES:
        return common.round_up(length, rows), block_channels
    block_time = common.largest_fitting(
        [min(t, common.round_up(length, LANES)) for t in TIME_BLOCKS],
        lambda t: working_set(t, block_channels, state, per_block, seq_itemsizes))
    return block_time, block_channels


def _prepare(cfg: Config, u, delta, A, B, C, D, z, delta_bias, initial_state, resets) -> dict:
    """The kernel's arrays: B, C as (batch, groups, n, padded_length) float32, A and states as
    (.., n, d) float32, padded with zeros (n: A = 0, B = C = 0 and x0 = 0 keep those states at 0;
    steps: B = C = 0), D and the bias as (1, d), resets as keep (batch, 1, 1, padded_length)
    float32 (1 past the end)."""
    batch, length, d = u.shape

    def pad(x, axis, size, value=0.0):  # float32, padded with value up to size along axis
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, size - x.shape[axis])
        return jnp.pad(x.astype(_F32), widths, constant_values=value)

    def columns(x):  # (batch, length, groups, n) -> (batch, groups, n', length')
        x = jnp.transpose(x, (0, 2, 3, 1))
        return pad(pad(x, 2, cfg.state), 3, cfg.padded_length)

    if B.ndim == 3:  # shared by all channels: one group
        B, C = B[:, :, None], C[:, :, None]
    x0 = jnp.zeros((batch, d, A.shape[1]), _F32) if initial_state is None else initial_state
    arrays = dict(
        u=u, delta=delta, A=pad(A.T, 0, cfg.state), B=columns(B), C=columns(C),
        D=(jnp.zeros((d,), _F32) if D is None else D.astype(_F32))[None],
        bias=(jnp.zeros((d,), _F32) if delta_bias is None else delta_bias.astype(_F32))[None],
        x0=pad(jnp.swapaxes(x0, 1, 2), 1, cfg.state),
    )
    if z is not None:
        arrays["z"] = z
    if resets is not None:
        keep = jnp.where(resets, 0.0, 1.0)[:, None, None]
        arrays["keep"] = pad(keep, 3, cfg.padded_length, 1.0)
    return arrays


def selective_scan(u: Array, delta: Array, A: Array, B: Array, C: Array, D: Array | None = None,
                   z: Array | None = None, delta_bias: Array | None = None,
                   delta_softplus: bool = False, initial_state: Array | None = None,
                   resets: Array | None = None, *, reverse: bool = False,
                   block_time: int | None = None, block_channels: int | None = None,
                   interpret: bool | None = None) -> tuple[Array, Array]:
    """Mamba-1's selective scan by the Mosaic-TPU kernel; the same call as
    ``seqzoo.ops.scan.pallas_gpu_selective.selective_scan`` (arguments as
    ``seqzoo.ops.selective_scan``, which validates them), ``resets``: (batch, length) bool,
    True where the state is zeroed before the step (segment starts). With ``reverse`` the scan
    runs from the end, x_t = keep_t exp(dt_t A) x_{t+1} + dt_t u_t B_t, initial_state is
    x_length, the final state x_0, and resets[t] zeroes the state coming from step t+1.

    block_time (a multiple of 128, a divisor of 128 that is a multiple of the tile height 8 or
    16 (bf16), or the whole row-padded sequence) and block_channels (a multiple of 128 holding
    whole B/C groups or lying in one, or all channels) override ``default_blocks``; interpret:
    simulate the TPU (default: unless running on one). Returns (out: (batch, length, d) in u's
    dtype, final state: (batch, d, n) float32).
    """
    batch, length, d = u.shape
    n = A.shape[1]
    n_pad = common.round_up(n, common.SUBLANES)
    groups = 1 if B.ndim == 3 else B.shape[2]
    seq = [u, delta] + ([z] if z is not None else [])
    rows = common.tile_rows(*(x.dtype for x in seq))
    itemsizes = tuple(2 * np.dtype(x.dtype).itemsize for x in seq) + (u.dtype.itemsize,)
    auto_time, auto_channels = default_blocks(length, d, n_pad, groups, rows, itemsizes)
    block_time, block_channels = block_time or auto_time, block_channels or auto_channels
    if block_time % rows or (block_time % LANES and LANES % block_time
                             and block_time < length):
        raise ValueError(f"block_time={block_time} must be a multiple of {rows} and of 128, "
                         f"divide 128, or cover the sequence ({length})")
    cfg = Config(
        length=length, channels=d, state=n_pad, groups=groups, softplus=delta_softplus,
        gate=z is not None, resets=resets is not None, reverse=reverse, block_time=block_time,
        block_channels=block_channels, rows=rows,
        vmem_bytes=working_set(block_time, block_channels, n_pad,
                               max(1, block_channels // (d // groups)), itemsizes),
        interpret=not common.on_tpu() if interpret is None else interpret,
    )
    arrays = _prepare(cfg, u, delta, A, B, C, D, z, delta_bias, initial_state, resets)
    out, last = _scan(cfg, arrays)
    return out, jnp.swapaxes(last, 1, 2)[..., :n]
