"""Mamba-2 SSD's XLA forms: the chunked SSD algorithm and the materialised matrix.

The chunked form is the paper's SSD algorithm (Dao & Gu, 2024): quadratic inside a chunk, a
recurrence over chunk states between chunks; ``matrix`` is the (1-)semiseparable M itself. Both
take the step size already discretised (``seqzoo.ops.scan.discretize_step``) and compute in f32.
``as_channels`` maps SSD's arguments onto the selective scan's (the sequential form and the step).

``lean_ssd`` is the chunked form with a lean backward pass: autodiff would keep every chunk's
``(chunk, chunk)`` scores, decays and weights per head, its states and inputs carried to its end,
for the backward pass (6 to 9 times the layer's activations in a Hydra training step). There
the rows run in blocks (``lean_rows``: ``lean_grad.blockwise``), each ``max(chunk, LEAN_STEPS)``
steps at a time (``chunked_parts``: ``lean_grad.chunkwise``, the state carried between them):
between the passes only the arguments are kept, and those intermediates exist for one block's
steps at a time (at most the size of x), recomputed in the backward pass. The cost: two more
forward passes. Hydra's quasiseparable form runs the same pieces on both directions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import blockwise, chunkwise
from seqzoo.ops.scan import discretize_step, linear_recurrence_local
from seqzoo.ops.segments import segment_starts

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST
LEAN_STEPS = 256  # the fewest steps ``chunked_parts`` runs at a time (a multiple of the chunk)


def skip_and_gate(y, x, D, z):
    """``(y + D x) * silu(z)`` in f32; D: (h,) or (h, p)."""
    if D is not None:
        D = D.astype(_F32)
        y = y + x.astype(_F32) * (D[:, None] if D.ndim == 1 else D)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    return y


def chunked(x, dt, A, B, C, seg, initial_state, chunk):
    """The SSD algorithm on f32 inputs; dt already discretised, seg from ``segment_index``.

    Returns y: (b, l, h, p) without the D term, and the final state (b, h, p, n).
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    k = h // g  # heads per group
    nc = -(-l // chunk)

    def chunked(t, mode="constant"):  # (b, l, ...) -> (b, nc, chunk, ...), zero / edge padded
        pad = [(0, 0), (0, nc * chunk - l)] + [(0, 0)] * (t.ndim - 2)
        return jnp.pad(t, pad, mode=mode).reshape(b, nc, chunk, *t.shape[2:])

    # Padding with dt = 0 (decay 1, no input) and no new segment leaves the last state intact.
    x = chunked(x).reshape(b, nc, chunk, g, k, p)
    dt = chunked(dt).reshape(b, nc, chunk, g, k)
    B, C, seg = chunked(B), chunked(C), chunked(seg, "edge")
    cum = jnp.cumsum(dt * A.reshape(g, k), axis=2)  # (b, c, q, g, k) log-decay from chunk start

    def decay(log, mask):  # masked before the exp: masked entries are exactly 0, never inf
        return jnp.exp(jnp.where(mask, log, -jnp.inf))

    # 1. Diagonal blocks: y_i = sum_{j <= i, same segment} C_i.B_j exp(cum_i - cum_j) dt_j x_j.
    pos = jnp.arange(chunk)
    mask = (pos[:, None] >= pos[None, :]) & (seg[:, :, :, None] == seg[:, :, None, :])
    within = decay(cum[:, :, :, None] - cum[:, :, None, :], mask[..., None, None])
    scores = jnp.einsum("bcign,bcjgn->bcijg", C, B, precision=_HI)
    weights = scores[..., None] * within * dt[:, :, None]  # (b, c, i, j, g, k)
    y = jnp.einsum("bcijgk,bcjgkp->bcigkp", weights, x, precision=_HI)

    # 2. Chunk inputs carried to its end: sum_j exp(cum_end - cum_j) dt_j x_j B_j^T.
    seg_end = seg[:, :, -1]  # (b, c)
    to_end = decay(cum[:, :, -1:] - cum, (seg == seg_end[..., None])[..., None, None])
    local = jnp.einsum("bcjgn,bcjgk,bcjgkp->bcgkpn", B, to_end * dt, x, precision=_HI)

    # 3. Recurrence over chunks: S_c = exp(cum_end_c) S_{c-1} + local_c, cut at segment starts.
    seg_before = jnp.pad(seg_end[:, :-1], ((0, 0), (1, 0)))  # segment at the previous chunk's end
    carry = jnp.where(seg_end == seg_before, 1.0, 0.0)[..., None, None] * jnp.exp(cum[:, :, -1])
    state0 = (jnp.zeros((b, g, k, p, n), _F32) if initial_state is None
              else initial_state.astype(_F32).reshape(b, g, k, p, n))
    states, final = linear_recurrence_local(carry[..., None, None], local, state0)
    entering = jnp.concatenate([state0[:, None], states[:, :-1]], axis=1)

    # 4. Off-diagonal blocks: y_i += exp(cum_i) C_i . S_{c-1}, if i continues that segment.
    from_start = decay(cum, (seg == seg_before[..., None])[..., None, None])
    y = y + jnp.einsum("bcign,bcgkpn->bcigkp", C, entering, precision=_HI) * from_start[..., None]
    return y.reshape(b, nc * chunk, h, p)[:, :l], final.reshape(b, h, p, n)


def chunk_length(chunk_size: int, length: int) -> int:
    """The chunk ``chunked`` runs: ``chunk_size``, or the next power of two >= ``length`` if
    smaller."""
    return min(chunk_size, 1 << max(length - 1, 0).bit_length())


def chunked_parts(x, dt, A, B, C, segment_ids, initial_state, *, chunk_size: int, dt_bias,
                  dt_softplus: bool, steps: int = LEAN_STEPS) -> tuple[Array, Array]:
    """``chunked`` on the op's raw arguments (dt discretised here, any float dtype, computed in
    f32), ``max(chunk, steps)`` steps at a time (``lean_grad.chunkwise``: the backward pass keeps
    the arguments and the state entering each part). Returns y: (b, l, h, p) f32 without the D
    term, and the final state (b, h, p, n) f32."""
    b, l, h, p = x.shape
    chunk = chunk_length(chunk_size, l)
    step = discretize_step(dt, dt_bias, dt_softplus)
    starts = None if segment_ids is None else segment_starts(segment_ids, b, l)
    if initial_state is None:
        initial_state = jnp.zeros((b, h, p, B.shape[-1]), _F32)
    return _parts(chunk, max(chunk, steps))((x, step, B, C, starts), A,
                                            initial_state.astype(_F32))


@functools.cache
def _parts(chunk: int, steps: int):
    def one_part(rows, A, state):
        x, dt, B, C, starts = rows
        b, l = x.shape[:2]
        seg = (jnp.zeros((b, l), jnp.int32) if starts is None  # segments from the part's start
               else jnp.cumsum(starts, axis=1, dtype=jnp.int32))
        return chunked(x.astype(_F32), dt, A.astype(_F32), B.astype(_F32), C.astype(_F32), seg,
                       state, chunk)

    return chunkwise(one_part, steps)


def lean_rows(fn, chunk_size: int, directions: int = 1, steps: int = LEAN_STEPS):
    """``fn(rows, shared)`` (``rows[0]``: x, (b, l, h, p); fn runs ``chunked_parts`` on
    ``directions`` stacked copies of its rows) as a ``lean_grad.blockwise`` function, forwards and
    backwards: only the arguments are kept between the passes, and the blocks are small enough
    that one part's ``(chunk, chunk)`` weights per head (``steps`` as ``chunked_parts``'s) are
    at most the size of x."""

    def weights_per_row(rows):
        length, heads = rows[0].shape[1:3]
        chunk = chunk_length(chunk_size, length)
        return directions * min(max(chunk, steps), length) * chunk * heads

    return blockwise(fn, forward=True, row_elements=weights_per_row,
                     block_elements=lambda rows: rows[0].size)


@functools.cache
def lean_ssd(chunk_size: int, dt_softplus: bool, steps: int = LEAN_STEPS):
    """``lean_ssd(chunk_size, dt_softplus)((x, dt, B, C, segment_ids, initial_state),
    (A, dt_bias)) -> (y, final state)``: ``chunked_parts`` over blocks of rows (``lean_rows``)."""

    def fn(rows, shared):
        x, dt, B, C, segment_ids, initial_state = rows
        A, dt_bias = shared
        return chunked_parts(x, dt, A, B, C, segment_ids, initial_state, chunk_size=chunk_size,
                             dt_bias=dt_bias, dt_softplus=dt_softplus, steps=steps)

    return lean_rows(fn, chunk_size, steps=steps)


def as_channels(x, dt, A, B, D, z, dt_bias, state):
    """SSD arguments as ``selective_scan``'s, one channel per (head, headdim) pair.

    Returns (u, delta, A, D, z, delta_bias, state) with channels d = heads * headdim.
    """
    p, n = x.shape[-1], B.shape[-1]
    flat = x.shape[:-2] + (-1,)
    if D is not None:
        D = jnp.repeat(D, p) if D.ndim == 1 else D.reshape(-1)
    return (
        x.reshape(flat),
        jnp.repeat(dt, p, axis=-1),
        jnp.broadcast_to(jnp.repeat(A, p)[:, None], (A.shape[0] * p, n)),
        D,
        None if z is None else z.reshape(flat),
        None if dt_bias is None else jnp.repeat(dt_bias, p),
        None if state is None else state.reshape(state.shape[0], -1, n),
    )


def _segment_sums(log_decay: Array) -> Array:
    """S[..., i, j] = sum_{k=j+1..i} log_decay[..., k] for i >= j (0 above the diagonal).

    Summed term by term (upstream's stable ``segsum``), not as a difference of cumulative
    sums, so long sequences lose no precision. log_decay: (..., l) -> (..., l, l).
    """
    pos = jnp.arange(log_decay.shape[-1])
    terms = jnp.where(pos[:, None] > pos[None, :], log_decay[..., :, None], 0.0)
    return jnp.cumsum(terms, axis=-2)


def matrix(step: Array, A: Array, B: Array, C: Array, seg: Array) -> Array:
    """M: (batch, heads, length, length) in f32 from the discretised ``step: (batch, length,
    heads)``, A: (heads,), B, C: (batch, length, g, n) and the segment index ``seg``."""
    b, l, h = step.shape
    g = B.shape[2]
    step = jnp.swapaxes(step, 1, 2)  # (b, h, l)
    pos = jnp.arange(l)
    mask = (pos[:, None] >= pos[None, :]) & (seg[:, :, None] == seg[:, None, :])
    log_decay = _segment_sums(step * A.astype(_F32)[:, None])
    decay = jnp.exp(jnp.where(mask[:, None], log_decay, -jnp.inf))
    scores = jnp.einsum("bign,bjgn->bgij", C.astype(_F32), B.astype(_F32), precision=_HI)
    return jnp.repeat(scores, h // g, axis=1) * decay * step[:, :, None, :]
