"""The diagonal linear recurrence under every state-space scan, and packed-sequence resets.

    h_t = a_t * h_{t-1} + b_t          (elementwise; real or complex)

evaluated exactly (no log-space tricks) either as a parallel prefix scan over the associative
operator (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2) (Blelloch, 1990; used for S5 / Mamba in
JAX), as a sequential ``lax.scan``, or by the Pallas kernel ``seqzoo.kernels.linear_recurrence``
(``impl="pallas"``, what "auto" picks on a GPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels import linear_recurrence as kernel
from seqzoo.kernels.launch import pick
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = ("auto", "associative", "sequential", "pallas")


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype ops compute in: at least float32 (complex stays complex)."""
    return jnp.promote_types(dtype, jnp.float32)


def segment_starts(segment_ids: Array, batch: int, length: int) -> Array:
    """Where a packed sequence starts: ``segment_ids[t] != segment_ids[t-1]`` (never at t=0).

    segment_ids: (batch, length) int. Returns bool (batch, length). The recurrence state is
    reset to zero before step t where this is True, so each segment runs as its own sequence
    (the first segment continues from any initial state).
    """
    if segment_ids.shape != (batch, length):
        raise ValueError(
            f"segment_ids must be (batch, length)={(batch, length)}, got {segment_ids.shape}"
        )
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros((batch, 1), bool), changed], axis=1)


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def linear_recurrence(
    a: Array,
    b: Array,
    *,
    initial_state: Array | None = None,
    reverse: bool = False,
    return_final_state: bool = False,
    impl: str = "auto",
    seq_axis: str | None = None,
):
    """All states of ``h_t = a_t * h_{t-1} + b_t`` along axis 1.

    a: (batch, length, ...) broadcastable to b's shape, same length (e.g. a per-head decay
       ``(batch, length, heads, 1, 1)`` against ``b: (batch, length, heads, p, n)``).
    b: (batch, length, ...). Real or complex.
    initial_state: (batch, ...) = h_{-1} (zeros if None); with ``reverse=True`` it is h_length,
       the state entering from the right, and the recurrence is h_t = a_t * h_{t+1} + b_t.
    impl: "associative" (parallel prefix scan), "sequential" (lax.scan) or "pallas" (the
       kernel; tolerances in its docstring); "auto" picks "pallas" on a GPU, else "associative".
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
       the active ``seqzoo.parallel.sequence_parallel`` context, if any).

    Returns h: (batch, length, ...) in the result dtype of (a, b), computed in at least f32;
    with ``return_final_state`` also the last state computed, (batch, ...): h_{length-1}, or
    h_0 when reversed.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if b.ndim < 2 or b.shape[1] < 1:
        raise ValueError(f"b must be (batch, length>=1, ...), got shape {b.shape}")
    if a.ndim != b.ndim or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} must have b's rank and length, b is {b.shape}")
    try:
        broadcast = jnp.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        broadcast = None
    if broadcast != b.shape:
        raise ValueError(f"a {a.shape} must broadcast to b's shape {b.shape}")
    state_shape = b.shape[:1] + b.shape[2:]
    if initial_state is not None and initial_state.shape != state_shape:
        raise ValueError(
            f"initial_state must be (batch, ...)={state_shape}, got {initial_state.shape}"
        )
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: seqzoo.parallel carries the state across shards
        from seqzoo.parallel.scan import sharded_linear_recurrence

        return sharded_linear_recurrence(
            a, b, axis=axis, initial_state=initial_state, reverse=reverse,
            return_final_state=return_final_state, impl=impl,
        )
    impl = pick(impl, kernel="pallas", xla="associative")
    if impl == "pallas":
        h, last = kernel.linear_recurrence(a, b, initial_state, reverse=reverse)
        return (h, last) if return_final_state else h
    out_dtype = jnp.result_type(a, b)
    dtype = compute_dtype(out_dtype)
    a, b = a.astype(dtype), b.astype(dtype)
    if initial_state is not None:
        edge = -1 if reverse else 0
        first = a[:, edge] * initial_state.astype(dtype) + b[:, edge]
        b = b.at[:, edge].set(first)

    if impl == "sequential":
        def step(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        a_t, b_t = jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0)
        h0 = jnp.zeros(state_shape, dtype)
        _, h = jax.lax.scan(step, h0, (a_t, b_t), reverse=reverse)
        h = jnp.moveaxis(h, 0, 1)
    else:
        _, h = jax.lax.associative_scan(_combine, (a, b), reverse=reverse, axis=1)

    h = h.astype(out_dtype)
    if return_final_state:
        return h, h[:, 0 if reverse else -1]
    return h
