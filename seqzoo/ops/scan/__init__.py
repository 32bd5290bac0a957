"""Diagonal scans: the linear recurrence under every state-space model, and Mamba-1's selective
scan built on it.

``linear_recurrence``: all states of

    h_t = a_t * h_{t-1} + b_t          (elementwise; real or complex)

evaluated exactly (no log-space tricks) by an associative scan, a sequential ``lax.scan`` or the
Pallas kernel. ``selective_scan`` (Gu & Dao, 2023, Algorithm 2), channel-last: per channel d and
state index n, with the zero-order-hold discretisation of A and the Euler one of B used by the
official ``selective_scan_ref`` (state-spaces/mamba):

    delta_t = softplus(delta_t + delta_bias)                (each optional)
    x_t     = exp(delta_t A) * x_{t-1} + delta_t B_t u_t    x_t: (d, n)
    y_t     = C_t . x_t + D u_t
    out_t   = y_t * silu(z_t)                               (if z is given)

B and C are shared by all channels ``(batch, length, n)`` or by groups of ``d / g``
consecutive channels ``(batch, length, g, n)``. A is real and should be non-positive
(``A = -exp(A_log)``) for a stable scan (checked on eager calls).

Files: this one validates and dispatches; ``xla.py`` (``associative``, the discretisation, and
the selective scan's associative form, whose backward pass recomputes its states),
``reference.py`` (``sequential``), ``pallas_gpu_recurrence.py`` and ``pallas_gpu_selective.py``
(``pallas``) and ``sequence_parallel.py`` (a sequence split over devices) hold the forms;
``seqzoo.ops.dispatch`` decides what ``impl="auto"`` runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels import mosaic_tpu_recurrence, mosaic_tpu_selective_scan
from seqzoo.ops.checks import check_groups, check_shape, check_stable
from seqzoo.ops.dispatch import accepted, canonical, on_platform
from seqzoo.ops.scan import (
    pallas_gpu_recurrence,
    pallas_gpu_selective,
    reference,
    sequence_parallel,
    xla,
)
from seqzoo.ops.scan.xla import compute_dtype, discretize_step, expand_groups
from seqzoo.ops.segments import segment_starts
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = accepted("linear_recurrence")
_F32 = jnp.float32

__all__ = [
    "IMPLS",
    "compute_dtype",
    "discretize_step",
    "expand_groups",
    "linear_recurrence",
    "linear_recurrence_local",
    "selective_scan",
    "selective_scan_local",
    "selective_scan_step",
]


def linear_recurrence_local(a: Array, b: Array, initial_state: Array | None = None, *,
                            reverse: bool = False, impl: str = "auto") -> tuple[Array, Array]:
    """The recurrence on unsplit data: ``(h, last state)``, ``impl`` resolved here (no
    validation, no sequence axis: what ``sequence_parallel.py`` and the chunked SSD run)."""
    out_dtype = jnp.result_type(a, b)

    def run(impl: str, platform: str):
        if impl == "pallas" and platform == "tpu":
            def on_tpu(a, b, initial_state):
                h, last = mosaic_tpu_recurrence.linear_recurrence(a, b, initial_state,
                                                                  reverse=reverse)
                return h.astype(out_dtype), last.astype(out_dtype)
            return on_tpu
        if impl == "pallas":
            return functools.partial(pallas_gpu_recurrence.linear_recurrence, reverse=reverse)
        return functools.partial(_xla_recurrence, reverse=reverse, impl=impl)

    return on_platform("linear_recurrence", impl, run, a, b, initial_state)


def _xla_recurrence(a: Array, b: Array, initial_state: Array | None, *, reverse: bool,
                    impl: str) -> tuple[Array, Array]:
    """``(h, last state)`` by ``impl``: "sequential" (``lax.scan``) or "associative"."""
    out_dtype = jnp.result_type(a, b)
    dtype = compute_dtype(out_dtype)
    a, b = a.astype(dtype), b.astype(dtype)
    if initial_state is not None:
        edge = -1 if reverse else 0
        b = b.at[:, edge].set(a[:, edge] * initial_state.astype(dtype) + b[:, edge])
    form = reference.sequential if impl == "sequential" else xla.associative
    h = form(a, b, reverse).astype(out_dtype)
    return h, h[:, 0 if reverse else -1]


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
    impl: "associative" (parallel prefix scan), "sequential" (lax.scan), "pallas" (the
       kernel; tolerances in its docstring) or "auto" (``seqzoo.ops.explain(
       "linear_recurrence")`` says what it picks and why).
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
       the active ``seqzoo.parallel.sequence_parallel`` context, if any).

    Returns h: (batch, length, ...) in the result dtype of (a, b), computed in at least f32;
    with ``return_final_state`` also the last state computed, (batch, ...): h_{length-1}, or
    h_0 when reversed.
    """
    impl = canonical("linear_recurrence", impl)
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
    local = functools.partial(linear_recurrence_local, reverse=reverse, impl=impl)
    axis = sequence_axis(seq_axis)
    if axis is None:
        h, last = local(a, b, initial_state)
    else:  # sequence parallel: the state is carried across shards
        h, last = sequence_parallel.sharded_linear_recurrence(
            local, a, b, axis=axis, initial_state=initial_state, reverse=reverse
        )
    return (h, last) if return_final_state else h


def _check(u, delta, A, B, C, D, z, delta_bias, state, suffix):
    """Validate the arguments of one scan (suffix "") or one step (suffix "_t")."""
    lead, d = u.shape[:-1], u.shape[-1]
    check_shape(f"delta{suffix}", delta, u.shape)
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d, n) with d={d}, got {A.shape}")
    check_stable("A", A)
    n = A.shape[1]
    check_groups(f"B{suffix}", B, lead, n, d, "d")
    check_groups(f"C{suffix}", C, lead, n, d, "d")
    check_shape("D", D, (d,))
    check_shape(f"z{suffix}", z, u.shape)
    check_shape("delta_bias", delta_bias, (d,))
    check_shape("state" if suffix else "initial_state", state, (u.shape[0], d, n))


def selective_scan_local(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                         segment_ids, *, impl: str) -> tuple[Array, Array]:
    """The selective scan on unsplit data: ``(out, final state)``, ``impl`` resolved here (no
    validation, no sequence axis: what ``sequence_parallel.py`` and SSD's sequential form run)."""
    starts = None if segment_ids is None else segment_starts(segment_ids, *u.shape[:2])

    def run(impl: str, platform: str):
        if impl == "pallas":
            kernel = mosaic_tpu_selective_scan if platform == "tpu" else pallas_gpu_selective

            def on_kernel(u, delta, A, B, C, D, z, delta_bias, initial_state):
                out, final = kernel.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                                   delta_softplus, initial_state, starts)
                return out.astype(u.dtype), final.astype(jnp.float32)
            return on_kernel

        def on_xla(u, delta, A, B, C, D, z, delta_bias, initial_state):
            if impl == "associative":  # lean: recomputes its states backwards, chunk by chunk
                return xla.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          initial_state, starts)
            decay, drive = xla.discretize(u, delta, A, B, delta_bias, delta_softplus)
            if starts is not None:
                decay = jnp.where(starts[..., None, None], 0.0, decay)
            states, final = linear_recurrence_local(decay, drive, initial_state, impl=impl)
            return xla.readout(states, u, C, D, z).astype(u.dtype), final.astype(jnp.float32)
        return on_xla

    return on_platform("selective_scan", impl, run, u, delta, A, B, C, D, z, delta_bias,
                       initial_state)


def selective_scan(
    u: Array,
    delta: Array,
    A: Array,
    B: Array,
    C: Array,
    D: Array | None = None,
    z: Array | None = None,
    delta_bias: Array | None = None,
    delta_softplus: bool = False,
    initial_state: Array | None = None,
    return_final_state: bool = False,
    segment_ids: Array | None = None,
    impl: str = "auto",
    seq_axis: str | None = None,
):
    """Mamba-1 selective scan: x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t, y_t = C_t . x_t.

    u, delta: (batch, length, d). A: (d, n), real, non-positive.
    B, C: (batch, length, n) or (batch, length, g, n), g dividing d.
    D: (d,) skip. z: (batch, length, d) gate. delta_bias: (d,).
    initial_state: (batch, d, n) = x_{-1}. segment_ids: (batch, length) int; the state resets
    to zero wherever the id changes (packed sequences; the first segment starts from
    ``initial_state``). impl: "associative" or "sequential" (see ``linear_recurrence``),
    "pallas" (the fused kernel, tolerances in its docstring) or "auto"
    (``seqzoo.ops.explain("selective_scan")`` says what it picks and why). seq_axis: inside
    ``shard_map``, the mesh axis the sequence is split over (default: that of the active
    ``seqzoo.parallel.sequence_parallel`` context).

    Returns out: (batch, length, d) in u's dtype (computed in f32), and with
    ``return_final_state`` also x_{length-1}: (batch, d, n) float32.
    """
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, length, d), got shape {u.shape}")
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state, "")
    impl = canonical("selective_scan", impl)
    local = functools.partial(selective_scan_local, D=D, delta_bias=delta_bias,
                              delta_softplus=delta_softplus, segment_ids=segment_ids, impl=impl)
    axis = sequence_axis(seq_axis)
    if axis is None:
        out, final = local(u, delta, A, B, C, z=z, initial_state=initial_state)
    else:  # sequence parallel: the state is carried across shards
        out, final = sequence_parallel.sharded_selective_scan(
            local, u, delta, A, B, C, axis=axis, z=z, delta_bias=delta_bias,
            delta_softplus=delta_softplus, initial_state=initial_state, segment_ids=segment_ids,
        )
    return (out, final) if return_final_state else out


def selective_scan_step(
    state: Array,
    u_t: Array,
    delta_t: Array,
    A: Array,
    B_t: Array,
    C_t: Array,
    D: Array | None = None,
    z_t: Array | None = None,
    delta_bias: Array | None = None,
    delta_softplus: bool = False,
):
    """One decoding step of ``selective_scan``: the same equations for a single token.

    state: (batch, d, n). u_t, delta_t, z_t: (batch, d). B_t, C_t: (batch, n) or (batch, g, n).
    A: (d, n). D, delta_bias: (d,).
    Returns (new state in state's dtype, y_t: (batch, d) in u_t's dtype).
    """
    if u_t.ndim != 2:
        raise ValueError(f"u_t must be (batch, d), got shape {u_t.shape}")
    _check(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, state, "_t")
    decay, drive = xla.discretize(u_t, delta_t, A, B_t, delta_bias, delta_softplus)
    new = decay * state.astype(_F32) + drive
    y = xla.readout(new, u_t, C_t, D, z_t)
    return new.astype(state.dtype), y.astype(u_t.dtype)
