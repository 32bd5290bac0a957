"""Carrying a linear recurrence's state across sequence shards (LASP-2's prefix combine).

Every recurrence here has the form ``S_t = a_t * S_{t-1} + u_t``. Run from a zero state on its own
steps, shard ``i`` ends in its local state ``s_i`` and has total decay ``d_i = prod_t a_t``; the
true state entering shard ``i`` is the combine of everything before it,

    c_0 = S_init,   c_{i+1} = d_i * c_i + s_i          (reversed: from the last shard down)

which each shard evaluates after one ``all_gather`` of ``(d_i, s_i)``: communication is
``P * size(state)``, independent of the sequence length. Inside the shard the true states are
then ``S_t = (prod_{t' <= t} a_t') * c_i + S_t^local``, a local correction.

Matrix transitions (``matrix=True``; the delta rule) combine the same way with ``d_i`` an
``(n, n)`` matrix acting on the rows of an ``(n, m)`` state, ``c_{i+1} = d_i @ c_i + s_i``: the
associative scan's step is ``(d_l, s_l) o (d_r, s_r) = (d_r @ d_l, d_r @ s_l + s_r)``, and the
gather moves ``P * (n * n + size(state))`` floats.

ZeCO's All-Scan (Chou et al., 2025) evaluates the same combine as a pipeline instead
(``carry="all_scan"`` in ``seqzoo.parallel.sequence_parallel``): each row's state is cut
into ``K`` equal chunks of its elements (flattened, zero-padded to a multiple of ``K``); the
combine is elementwise, so any cut works. At step ``t`` shard ``i`` (counted along the
recurrence) completes chunk ``j = t - i`` of ``c_{i+1} = d_i c_i + s_i`` and sends it to shard
``i + 1`` alone (``ppermute``). After ``P + K - 2`` steps every shard holds its ``c_i``; each
step moves ``size(state) / K``, so a device sends ``(P + K - 2) / K`` states in all rather
than gathering ``P`` of them (and ``d_i`` never travels). The state after the whole sequence
is then the last shard's, summed to every shard (one ``psum`` of a state, dropped by XLA where
unused).

With matrix transitions the cut goes along the state's columns instead: ``d_i @ c_i`` maps
each column of ``c_i`` by itself, so a chunk of ``ceil(m / K)`` columns (``K = min(8, m)``) is
completed from the same columns of ``c_i`` and ``s_i`` with the whole ``d_i``, which stays on its
shard; a step moves ``n * ceil(m / K)`` elements per row.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqzoo.parallel.collectives import from_neighbour
from seqzoo.parallel.context import carry_scheme, num_shards, shard_index

Array = jax.Array


def _matmul(d: Array, x: Array) -> Array:
    """A matrix transition ``d: (..., n, n)`` applied to ``x: (..., n, m)``: ``d @ x``."""
    return jnp.einsum("...ij,...jm->...im", d, x, precision=jax.lax.Precision.HIGHEST)


def _states_after(decays: Array, states: Array, initial_state: Array | None,
                  reverse: bool, matrix: bool = False) -> Array:
    """The state after each shard, ``(batch, P, ...)``: the recurrence ``c_{i+1} = d_i c_i + s_i``
    over the shard axis 1 from ``initial_state`` (reversed: from the last shard down), by an
    associative scan, in at least float32; ``d_i c_i`` elementwise, or ``d_i @ c_i`` where
    ``matrix``."""
    dtype = jnp.promote_types(jnp.result_type(decays, states), jnp.float32)
    a, s = decays.astype(dtype), states.astype(dtype)
    apply = _matmul if matrix else jnp.multiply

    def combine(left, right):
        (a_l, s_l), (a_r, s_r) = left, right
        return apply(a_r, a_l), apply(a_r, s_l) + s_r

    if initial_state is not None:
        edge = -1 if reverse else 0
        s = s.at[:, edge].set(apply(a[:, edge], initial_state.astype(dtype)) + s[:, edge])
    return jax.lax.associative_scan(combine, (a, s), reverse=reverse, axis=1)[1]


def gather_summaries(decay: Array, state: Array, axis: str) -> tuple[Array, Array]:
    """``all_gather`` of each shard's ``(d_i, s_i)``: ``(P, batch, ...)`` each."""
    return jax.lax.all_gather((decay, state), axis)


def combine_gathered(
    decays: Array,
    states: Array,
    axis: str,
    *,
    reverse: bool = False,
    initial_state: Array | None = None,
    matrix: bool = False,
) -> tuple[Array, Array]:
    """The state entering this shard and the state after the whole sequence.

    Args:
      decays: ``(P, batch, ...)`` each shard's total decay, broadcastable to ``states``; with
        ``matrix``, ``(P, batch, ..., n, n)``, each shard's transition of ``(..., n, m)`` states.
      states: ``(P, batch, ...)`` each shard's final state from a zero start.
      reverse: the recurrence runs from the last position to the first (the carry enters from
        the right, and "after the whole sequence" is before position 0).
      initial_state: ``(batch, ...)`` the state before the sequence (zeros if None).
      matrix: the decays are matrices applied to the states' rows (module docstring).
    Returns:
      ``(carry_in, final)``, both ``(batch, ...)`` in the states' dtype (at least float32);
      ``final`` is the same on every shard.
    """
    a, s = jnp.moveaxis(decays, 0, 1), jnp.moveaxis(states, 0, 1)  # (batch, P, ...)
    after = _states_after(a, s, initial_state, reverse, matrix)  # done on each shard
    start = jnp.zeros_like(after[:, :1]) if initial_state is None else initial_state[:, None]
    start = start.astype(after.dtype)
    if reverse:
        entering, final = jnp.concatenate([after[:, 1:], start], axis=1), after[:, 0]
    else:
        entering, final = jnp.concatenate([start, after[:, :-1]], axis=1), after[:, -1]
    return entering[:, shard_index(axis)], final


def carry_in(
    decay: Array,
    state: Array,
    axis: str,
    *,
    reverse: bool = False,
    initial_state: Array | None = None,
    matrix: bool = False,
) -> tuple[Array, Array]:
    """``combine_gathered`` of this shard's ``decay: (batch, ...)`` and ``state: (batch, ...)``
    after one ``all_gather``, or where the context says ``carry="all_scan"``, ``scan_carry_in``:
    ``(carry_in, final)``."""
    if carry_scheme() == "all_scan":
        return scan_carry_in(
            decay, state, axis, reverse=reverse, initial_state=initial_state, matrix=matrix
        )
    decays, states = gather_summaries(decay, state, axis)
    return combine_gathered(
        decays, states, axis, reverse=reverse, initial_state=initial_state, matrix=matrix
    )


def scan_carry_in(
    decay: Array,
    state: Array,
    axis: str,
    *,
    reverse: bool = False,
    initial_state: Array | None = None,
    chunks: int = 8,
    matrix: bool = False,
) -> tuple[Array, Array]:
    """``carry_in`` by ZeCO's All-Scan (see the module docstring): ``(carry_in, final)``.

    ``state: (batch, ...)``: each row's ``m`` elements are cut into ``K = min(chunks, m)``
    chunks of ``ceil(m / K)`` (zero-padded); ``decay`` broadcasts to ``state``. With
    ``matrix``, ``state: (batch, ..., n, m)`` is cut along its ``m`` columns and ``decay:
    (batch, ..., n, n)`` applies to each chunk whole. Returns both ``(batch, ...)`` in the
    state's dtype (at least float32); ``final`` is the same on every shard.
    """
    p = num_shards(axis)
    me = shard_index(axis)
    position = p - 1 - me if reverse else me  # along the recurrence
    dtype = jnp.promote_types(jnp.result_type(decay, state), jnp.float32)
    lead = state.shape[:-1] if matrix else state.shape[:1]  # what a chunk keeps whole
    m = math.prod(state.shape[len(lead):])
    k = min(chunks, m)
    size = -(-m // k)

    def split(a):  # (*lead, m) -> (*lead, K, ceil(m / K))
        a = jnp.broadcast_to(a.astype(dtype), state.shape).reshape(*lead, m)
        return jnp.pad(a, ((0, 0),) * len(lead) + ((0, k * size - m),)).reshape(*lead, k, size)

    def unsplit(a):
        return a.reshape(*lead, k * size)[..., :m].reshape(state.shape)

    def chunk(a, j):
        return jax.lax.dynamic_index_in_dim(a, j, -2, False)

    apply = _matmul if matrix else jnp.multiply
    decay = decay.astype(dtype)
    d, s = decay if matrix else split(decay), split(state)
    c = jnp.zeros_like(s) if initial_state is None else split(initial_state)

    def step(t, c):
        j = jnp.clip(t - position, 0, k - 1)  # the chunk this shard completes and passes on
        done = apply(d if matrix else chunk(d, j), chunk(c, j)) + chunk(s, j)
        received = from_neighbour(done, axis, -1 if reverse else 1)  # the previous shard's
        r = t - position + 1  # the chunk it completed
        keep = (position > 0) & (r >= 0) & (r < k)
        updated = jax.lax.dynamic_update_index_in_dim(c, received, jnp.clip(r, 0, k - 1), -2)
        return jnp.where(keep, updated, c)

    c = jax.lax.fori_loop(0, p + k - 2, step, c)
    entering = unsplit(c)
    last = jnp.where(position == p - 1, apply(decay, entering) + state.astype(dtype), 0.0)
    return entering, jax.lax.psum(last, axis)
