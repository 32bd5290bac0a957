"""Building blocks of sequential-scan kernels: a chunked loop whose loads run ahead of its
arithmetic, tiles of rows, and one program's block of channels.

A program that walks a sequence step by step, waiting for each step's loads before its
arithmetic, is latency bound: one memory round trip (~1 us on an H100) per step. ``chunked_loop``
walks the steps in chunks: each chunk's rows are read as one tile per array, one chunk ahead (the
next chunk's tiles are requested before the current chunk is computed and travel as loop-carried
values), and ``split_rows`` / ``stack_rows`` turn a tile into rows and back, so only the
dependent chain of the recurrence itself is serial and the loop is memory bound.

Tiles rather than row-by-row loads also keep Triton's compile time down: its coalescing pass
costs about (memory operations) x (operations)^2, which for 32 separate row loads per chunk
already takes minutes.

The layout every kernel here uses: arrays ``(batch, length, channels, ...)``, a grid
``(channel blocks, batch)``, each program owning ``width`` consecutive channels of one batch
element (``ChannelBlock``), with masked loads and stores where the channels do not divide into
blocks or a tile overhangs the sequence. Everything lowers through Pallas' Triton backend
(``fori_loop`` -> ``scf.for``; tile shapes are powers of two) and runs in interpret mode on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def chunked_loop(length: int, chunk: int, load: Callable, run: Callable, carry: Any, *,
                 reverse: bool = False, first=0) -> Any:
    """Walk rows ``first .. first+length-1`` chunk by chunk, each chunk's loads issued one chunk
    early.

    The rows split into ``ceil(length / chunk)`` chunks of ``chunk`` rows starting at ``first``
    plus multiples of ``chunk``, visited in ascending order, or descending when ``reverse``. A
    chunk may overhang the sequence: ``load`` masks the rows past its end and fills them with
    values that leave the carry unchanged (e.g. decay 1 and input 0), so every chunk runs the
    same code (one copy of the loop body keeps Triton's compile time down).

    load(start) -> tiles: issues the loads of rows ``start .. start+chunk-1`` (``start`` a
      Python int before the loop if ``first`` is, traced inside it).
    run(start, tiles, carry) -> carry: the arithmetic of those rows.
    """
    n = -(-length // chunk)

    def start_of(i):  # the i-th chunk visited; past the end: the last one again (not run)
        if isinstance(i, int) and isinstance(first, int):
            return first + (n - 1 - i if reverse else i) * chunk
        return first + jnp.clip(n - 1 - i if reverse else i, 0, n - 1) * chunk

    def body(i, state):
        tiles, carry = state
        following = load(start_of(i + 1))  # requested before this chunk's arithmetic
        return following, run(start_of(i), tiles, carry)

    _, carry = jax.lax.fori_loop(0, n, body, (load(start_of(0)), carry))
    return carry


def split_rows(tile) -> list:
    """(rows, ...) -> a list of ``rows`` arrays (...); rows a power of two (``lax.split``)."""
    return [r.reshape(r.shape[1:]) for r in jnp.split(tile, tile.shape[0], axis=0)]


def stack_rows(rows: list):
    """Inverse of ``split_rows``: by halves, each join along a new last axis (the only
    concatenation the Triton lowering has) then moved to the front."""
    if len(rows) == 1:
        return rows[0][None]
    half = len(rows) // 2
    pair = jnp.stack([stack_rows(rows[:half]), stack_rows(rows[half:])], axis=-1)
    pair = jnp.moveaxis(pair, -1, 0)
    return pair.reshape(-1, *pair.shape[2:])


def select_row(tile, j: int, row):
    """``tile`` with row ``j`` replaced by ``row``: ``where(iota == j, row[None], tile)``.

    A loop that computes a tile's rows one step at a time collects them this way rather than by
    ``stack_rows``: Triton converts each row once to the tile's layout (one shared-memory trip)
    and the select itself is per register, where the join tree of ``stack_rows`` converts
    layouts at every level (benchmarks/RESULTS.md counts both in the selective scan)."""
    step = jax.lax.broadcasted_iota(jnp.int32, tile.shape, 0)
    return jnp.where(step == j, row[None], tile)


def _traced(index: tuple) -> tuple:
    # Masked loads and stores in interpret mode cannot take Python-int indices (and unmasked
    # ones do not lower to Triton with int32 scalars): ints become int32 scalars here only.
    def one(i):
        if isinstance(i, int):
            return jnp.int32(i)
        if isinstance(i, pl.Slice) and isinstance(i.start, int):
            return pl.ds(jnp.int32(i.start), i.size)
        return i

    return tuple(map(one, index))


def load(ref, index: tuple, mask=None, fill: float = 0.0):
    """``ref[index]``; where ``mask`` (the result's shape, or None) is False, ``fill``."""
    if mask is None:
        return ref[index]
    return plgpu.load(ref.at[_traced(index)], mask=mask, other=fill)


def store(ref, index: tuple, value, mask=None) -> None:
    """``ref[index] = value`` cast to ref's dtype, where ``mask`` (or everywhere if None)."""
    value = value.astype(ref.dtype)
    if mask is None:
        ref[index] = value
    else:
        plgpu.store(ref.at[_traced(index)], value, mask=mask)


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows ``start .. start+count-1`` of a time axis of ``length``; ``masked`` when some may
    fall outside ``[0, length)`` (those read ``fill`` and are not written)."""

    start: Any
    count: int
    length: int
    masked: bool

    @property
    def index(self):
        return pl.ds(self.start, self.count)

    def mask(self, shape: tuple[int, ...]):
        """(count, *shape) bool: the rows inside the sequence; None when unmasked."""
        if not self.masked:
            return None
        rows = self.start + jnp.arange(self.count)
        inside = (rows >= 0) & (rows < self.length)
        return jnp.broadcast_to(inside.reshape(-1, *(1,) * len(shape)), (self.count, *shape))


@dataclasses.dataclass(frozen=True)
class ChannelBlock:
    """Program (i, b) of a ``(channels / width, batch)`` grid: channels ``[i*width, (i+1)*width)``
    of batch element b. ``mask`` (width,) marks the channels that exist; None when every block is
    full, so the common case compiles without masks."""

    batch: Any
    start: Any
    width: int
    mask: Any

    @classmethod
    def of_program(cls, channels: int, width: int) -> ChannelBlock:
        start = pl.program_id(0) * width
        ragged = channels % width != 0
        mask = start + jnp.arange(width) < channels if ragged else None
        return cls(pl.program_id(1), start, width, mask)

    def index_mask(self, lead: tuple, rows: Rows | None, trailing: tuple[int, ...]):
        """Index ``[*lead, (rows,) block channels, :...]`` into an array whose trailing axes
        have sizes ``trailing``, and the mask of what it selects (None if unmasked)."""
        shape = (self.width, *trailing)
        mask = None
        if self.mask is not None:
            mask = jnp.broadcast_to(self.mask.reshape(-1, *(1,) * len(trailing)), shape)
        index = tuple(lead)
        if rows is not None:
            index += (rows.index,)
            row_mask = rows.mask(shape)
            shape = (rows.count, *shape)
            if mask is not None:
                mask = jnp.broadcast_to(mask[None], shape)
            mask = row_mask if mask is None else mask if row_mask is None else mask & row_mask
        index += (pl.ds(self.start, self.width), *(slice(None),) * len(trailing))
        return index, mask

    def load(self, ref, lead: tuple, rows: Rows | None = None, trailing: tuple[int, ...] = (),
             fill: float = 0.0):
        """``ref[*lead, (rows,) block channels, :...]`` -> ((count,) width, *trailing)."""
        return load(ref, *self.index_mask(lead, rows, trailing), fill)

    def store(self, ref, lead: tuple, value, rows: Rows | None = None) -> None:
        """``ref[*lead, (rows,) block channels, :...] = value`` (cast to ref's dtype), masked."""
        trailing = value.shape[1 + (rows is not None):]
        index, mask = self.index_mask(lead, rows, trailing)
        store(ref, index, value, mask)
