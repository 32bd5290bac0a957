"""Mamba-1's selective scan (Gu & Dao, 2023, Algorithm 2), channel-last layout.

Per channel d and state index n, with the zero-order-hold discretisation of A and the
Euler one of B used by the official ``selective_scan_ref`` (state-spaces/mamba):

    delta_t = softplus(delta_t + delta_bias)                (each optional)
    x_t     = exp(delta_t A) * x_{t-1} + delta_t B_t u_t    x_t: (d, n)
    y_t     = C_t . x_t + D u_t
    out_t   = y_t * silu(z_t)                               (if z is given)

B and C are shared by all channels ``(batch, length, n)`` or by groups of ``d / g``
consecutive channels ``(batch, length, g, n)``. A is real and should be non-positive
(``A = -exp(A_log)``) for a stable scan; it is a traced parameter, so this is not checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels import selective_scan as kernel
from seqzoo.kernels.launch import pick
from seqzoo.ops.checks import check_stable
from seqzoo.ops.recurrence import linear_recurrence, segment_starts
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def expand_groups(B: Array, units: int, lead_dims: int) -> Array:
    """Broadcast B to one row per unit: (*lead, n) or (*lead, g, n) -> (*lead, units, n).

    Unit u uses group ``u // (units // g)``, as ``repeat(B, "g n -> (g k) n")`` does upstream.
    ``lead_dims`` is the number of leading dimensions, e.g. 2 for (batch, length).
    """
    if B.ndim == lead_dims + 1:
        return jnp.broadcast_to(B[..., None, :], B.shape[:-1] + (units, B.shape[-1]))
    return jnp.repeat(B, units // B.shape[-2], axis=-2)


def check_shape(name: str, X: Array | None, *shapes: tuple) -> None:
    """ValueError naming ``name`` unless X is None or has one of ``shapes``."""
    if X is not None and X.shape not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {X.shape}")


def check_groups(name: str, X: Array, lead: tuple, n: int, units: int, unit_name: str, *,
                 shared_ok: bool = True) -> None:
    """Validate X: (*lead, g, n) with g dividing ``units``, or (*lead, n) if ``shared_ok``."""
    k = len(lead)
    grouped = X.ndim == k + 2
    if not (grouped or (shared_ok and X.ndim == k + 1)) or X.shape[:k] != lead or X.shape[-1] != n:
        forms = [str(lead + ("g", n))] + ([str(lead + (n,))] if shared_ok else [])
        raise ValueError(f"{name} must have shape {' or '.join(forms)}, got {X.shape}")
    if grouped and units % X.shape[-2] != 0:
        raise ValueError(
            f"{name} has g={X.shape[-2]} groups, which must divide {unit_name}={units}"
        )


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


def discretize_step(delta: Array, bias: Array | None, softplus: bool) -> Array:
    """Step size in f32: ``softplus(delta + bias)``, each optional; bias: (delta.shape[-1],)."""
    delta = delta.astype(_F32)
    if bias is not None:
        delta = delta + bias.astype(_F32)
    return jax.nn.softplus(delta) if softplus else delta


def _discretize(u, delta, A, B, delta_bias, delta_softplus):
    """f32 ``(exp(delta A), delta B u)``, both (..., d, n), from inputs with leading dims ..."""
    delta = discretize_step(delta, delta_bias, delta_softplus)
    decay = jnp.exp(delta[..., None] * A.astype(_F32))
    drive = (delta * u.astype(_F32))[..., None] * expand_groups(B.astype(_F32), u.shape[-1],
                                                               u.ndim - 1)
    return decay, drive


def _readout(x, u, C, D, z):
    """``(C . x + D u) * silu(z)`` in f32; x: (..., d, n), u, z: (..., d)."""
    C = expand_groups(C.astype(_F32), u.shape[-1], u.ndim - 1)
    y = jnp.einsum("...dn,...dn->...d", x, C, precision=_HI)
    if D is not None:
        y = y + D.astype(_F32) * u.astype(_F32)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    return y


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
    ``initial_state``). impl: "associative" or "sequential" (see ``linear_recurrence``), or
    "pallas": the fused kernel ``seqzoo.kernels.selective_scan`` (tolerances in its docstring);
    "auto" picks "pallas" on a GPU, else "associative". seq_axis: inside ``shard_map``, the
    mesh axis the sequence is split over (default: that of the active
    ``seqzoo.parallel.sequence_parallel`` context).

    Returns out: (batch, length, d) in u's dtype (computed in f32), and with
    ``return_final_state`` also x_{length-1}: (batch, d, n) float32.
    """
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, length, d), got shape {u.shape}")
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state, "")
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: seqzoo.parallel carries the state across shards
        from seqzoo.parallel.scan import sharded_selective_scan

        return sharded_selective_scan(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
            return_final_state, segment_ids, impl, axis=axis,
        )
    impl = pick(impl, kernel="pallas", xla="associative")
    if impl == "pallas":
        resets = None if segment_ids is None else segment_starts(segment_ids, *u.shape[:2])
        out, final = kernel.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                           initial_state, resets)
        return (out, final) if return_final_state else out
    decay, drive = _discretize(u, delta, A, B, delta_bias, delta_softplus)
    if segment_ids is not None:
        starts = segment_starts(segment_ids, *u.shape[:2])
        decay = jnp.where(starts[..., None, None], 0.0, decay)
    states = linear_recurrence(decay, drive, initial_state=initial_state, impl=impl,
                               return_final_state=return_final_state)
    if return_final_state:
        states, final = states
    out = _readout(states, u, C, D, z).astype(u.dtype)
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
    decay, drive = _discretize(u_t, delta_t, A, B_t, delta_bias, delta_softplus)
    new = decay * state.astype(_F32) + drive
    y = _readout(new, u_t, C_t, D, z_t)
    return new.astype(state.dtype), y.astype(u_t.dtype)
