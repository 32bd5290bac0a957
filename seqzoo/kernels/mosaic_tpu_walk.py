"""How the Mosaic-TPU scan kernels walk a sequence: time blocks on the grid, tiles of rows
inside a block, one row at a time inside a tile.

Arrays are ``(batch, length, channels)`` with channels on the 128 lanes and time on the
sublanes. The grid is ``(batch, channel blocks, time blocks)``: the first two "parallel" (split
between the TensorCores of a megacore chip), the time blocks last and "arbitrary" (sequential, the
recurrence's state carried across them in VMEM scratch), so Pallas streams one
``(block_time, block_channels)`` block of each array HBM -> VMEM (double-buffered) per step. A
walk in reverse visits the blocks from the last (``time_block``).

Inside a block a ``fori_loop`` visits tiles of ``rows`` rows (8 for 32-bit arrays, 16 when one is
16-bit: one aligned vector load each) and the recurrence runs over the rows of a tile in Python
(unrolled): ``row`` reads row r of a tile as an ``(8, lanes)`` value, every sublane equal, which
is how states are kept (full vector registers, no sublane offsets to realign), and ``put_row``
writes a state back as row r of an output tile. A sequence whose length is not a multiple of
``block_time`` ends in a partial block: its rows past the end read unspecified values, which
``inside`` masks to the recurrence's identity, and its writes past the end are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from seqzoo.kernels.mosaic_tpu_common import SUBLANES, cdiv


def div(x, d: int):
    """x // d for x >= 0: truncating division, which Mosaic lowers on every generation (jnp's
    floor division adds sign corrections that need the chip's generation)."""
    return x // d if isinstance(x, int) else jax.lax.div(x, jnp.int32(d))


def rem(x, d: int):
    """x % d for x >= 0 (see ``div``)."""
    return x % d if isinstance(x, int) else jax.lax.rem(x, jnp.int32(d))


def time_block(step, blocks: int, descending: bool):
    """The time block visited at grid step ``step`` of ``blocks``."""
    return blocks - 1 - step if descending else step


def sequence_spec(block_time: int, block_channels: int, length: int,
                  descending: bool) -> pl.BlockSpec:
    """(batch, length, channels) arrays: block (block_time, block_channels) of (b, c, step)."""
    blocks = cdiv(length, block_time)
    return pl.BlockSpec((None, block_time, block_channels),
                        lambda b, c, s: (b, time_block(s, blocks, descending), c))


def state_spec(rows: int, block_channels: int) -> pl.BlockSpec:
    """(batch, rows, channels) arrays (states, per-channel sums): one block per (b, c), the same
    at every time step, so it stays in VMEM and is written back once."""
    return pl.BlockSpec((None, rows, block_channels), lambda b, c, s: (b, 0, c))


def positions(count: int, descending: bool) -> list[int]:
    """0 .. count-1 in the order a walk visits them."""
    return list(range(count))[::-1] if descending else list(range(count))


def walk(count: int, body: Callable[[Any, Any], Any], carry: Any, descending: bool) -> Any:
    """``body(j, carry)`` for j = 0 .. count-1 (descending: count-1 .. 0), a ``fori_loop``."""
    def step(i, carry):
        return body(count - 1 - i if descending else i, carry)

    return jax.lax.fori_loop(0, count, step, carry)


def load_tile(ref, start, rows: int):
    """Rows ``start .. start+rows-1`` (start a multiple of rows) of a (time, lanes) block, f32."""
    return ref[pl.ds(pl.multiple_of(start, rows), rows), :].astype(jnp.float32)


def store_tile(ref, start, rows: int, value) -> None:
    ref[pl.ds(pl.multiple_of(start, rows), rows), :] = value.astype(ref.dtype)


def row_ids(shape: tuple[int, ...]):
    return jax.lax.broadcasted_iota(jnp.int32, shape, 0)


def splat(condition, shape: tuple[int, ...]):
    """A scalar condition as a vector mask (an int32 broadcast and compare, which Mosaic lowers
    everywhere, rather than a broadcast boolean)."""
    return jnp.broadcast_to(condition.astype(jnp.int32), shape) != 0


def inside(first, shape: tuple[int, ...], length: int):
    """(rows, lanes) bool: which rows of a tile whose first row is global row ``first`` are
    inside the sequence."""
    return first + row_ids(shape) < length


def row(tile, r: int, height: int = SUBLANES):
    """Row r of a (rows, lanes) tile as a (height, lanes) value, every sublane equal."""
    return jnp.broadcast_to(tile[r:r + 1], (height, tile.shape[1]))


def put_row(tile, r: int, value):
    """``tile`` with row r replaced by ``value`` ((8, lanes), every sublane equal)."""
    if value.shape != tile.shape:
        value = jnp.broadcast_to(value[0:1], tile.shape)
    return jnp.where(row_ids(tile.shape) == r, value, tile)


def replicate(state_row):
    """A (1, lanes) row as an (8, lanes) state."""
    return jnp.broadcast_to(state_row.astype(jnp.float32), (SUBLANES, state_row.shape[-1]))
