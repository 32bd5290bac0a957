"""The scans' XLA forms and their shared pieces: the associative scan, Mamba's discretisation
and read-out.

The diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (elementwise; real or complex) is
evaluated exactly (no log-space tricks) as a parallel prefix scan over the associative operator
(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2) (Blelloch, 1990; used for S5 / Mamba in JAX). The
selective scan is that recurrence with ``a = exp(delta A)``, ``b = delta B u`` (``discretize``)
and ``y = C . x + D u`` (``readout``).

``selective_scan`` is the whole associative form with a lean backward pass: autodiff of the
associative scan would keep its ``(batch, length, d, n)`` decays, inputs and states, and every
level of the scan's tree, for the backward pass (about 20 times the layer's activations in a
Mamba training step). Here the rows run in blocks (``lean_grad.blockwise``), each ``CHUNK``
steps at a time (``lean_grad.chunkwise``): between the passes only the arguments are kept, and
the states exist for one chunk of one block at a time (a block's chunk of states at most an
eighth of ``u``'s size), recomputed in the backward pass. The cost: two more forward passes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import blockwise, chunkwise

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST
CHUNK = 64  # steps recomputed at a time by the backward pass of ``selective_scan``


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype ops compute in: at least float32 (complex stays complex)."""
    return jnp.promote_types(dtype, jnp.float32)


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def associative(a: Array, b: Array, reverse: bool = False) -> Array:
    """All states along axis 1 from a zero state by ``lax.associative_scan``; a broadcastable to
    b: (batch, length, ...)."""
    return jax.lax.associative_scan(_combine, (a, b), reverse=reverse, axis=1)[1]


def expand_groups(B: Array, units: int, lead_dims: int) -> Array:
    """Broadcast B to one row per unit: (*lead, n) or (*lead, g, n) -> (*lead, units, n).

    Unit u uses group ``u // (units // g)``, as ``repeat(B, "g n -> (g k) n")`` does upstream.
    ``lead_dims`` is the number of leading dimensions, e.g. 2 for (batch, length).
    """
    if B.ndim == lead_dims + 1:
        return jnp.broadcast_to(B[..., None, :], B.shape[:-1] + (units, B.shape[-1]))
    return jnp.repeat(B, units // B.shape[-2], axis=-2)


def discretize_step(delta: Array, bias: Array | None, softplus: bool) -> Array:
    """Step size in f32: ``softplus(delta + bias)``, each optional; bias: (delta.shape[-1],)."""
    delta = delta.astype(_F32)
    if bias is not None:
        delta = delta + bias.astype(_F32)
    return jax.nn.softplus(delta) if softplus else delta


def discretize(u, delta, A, B, delta_bias, delta_softplus):
    """f32 ``(exp(delta A), delta B u)``, both (..., d, n), from inputs with leading dims ..."""
    delta = discretize_step(delta, delta_bias, delta_softplus)
    decay = jnp.exp(delta[..., None] * A.astype(_F32))
    drive = (delta * u.astype(_F32))[..., None] * expand_groups(B.astype(_F32), u.shape[-1],
                                                               u.ndim - 1)
    return decay, drive


def readout(x, u, C, D, z):
    """``(C . x + D u) * silu(z)`` in f32; x: (..., d, n), u, z: (..., d)."""
    C = expand_groups(C.astype(_F32), u.shape[-1], u.ndim - 1)
    y = jnp.einsum("...dn,...dn->...d", x, C, precision=_HI)
    if D is not None:
        y = y + D.astype(_F32) * u.astype(_F32)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    return y


def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, initial_state,
                   starts, *, chunk: int = CHUNK) -> tuple[Array, Array]:
    """The selective scan by the associative scan, lean (see the module docstring):
    ``(out (batch, length, d) in u's dtype, final state (batch, d, n) float32)``.

    Arguments as ``seqzoo.ops.scan.selective_scan``'s; starts: (batch, length) bool, the state
    reset to zero before those steps, or None.
    """
    if initial_state is None:
        initial_state = jnp.zeros(u.shape[:1] + A.shape, _F32)
    rows = (u, delta, B, C, z, starts, initial_state.astype(_F32))
    return _lean_selective_scan(bool(delta_softplus), chunk)(rows, (A, D, delta_bias))


@functools.cache
def _lean_selective_scan(delta_softplus: bool, chunk: int):
    def one_chunk(rows, shared, state):
        u, delta, B, C, z, starts = rows
        A, D, delta_bias = shared
        decay, drive = discretize(u, delta, A, B, delta_bias, delta_softplus)
        if starts is not None:
            decay = jnp.where(starts[..., None, None], 0.0, decay)
        drive = drive.at[:, 0].add(decay[:, 0] * state)  # the state entering the chunk
        states = associative(decay, drive)
        return readout(states, u, C, D, z).astype(u.dtype), states[:, -1]

    scan = chunkwise(one_chunk, chunk)

    def fn(rows, shared):
        return scan(rows[:-1], shared, rows[-1])

    def states_per_row(rows):  # one chunk's (chunk, d, n) states
        u, state = rows[0], rows[-1]
        return min(chunk, u.shape[1]) * state.shape[1] * state.shape[2]

    def eighth_of_u(rows):  # a block's chunk of states (of some ten such intermediates)
        return rows[0].size // 8

    return blockwise(fn, forward=True, row_elements=states_per_row, block_elements=eighth_of_u)
