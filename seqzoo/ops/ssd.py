"""Mamba-2's state-space duality (Dao & Gu, 2024): a scalar-decay SSM per head, three ways.

Per head h (with group ``h // (heads / g)`` for B and C) and step size dt_t:

    dt_t = softplus(dt_t + dt_bias)                            (each optional)
    H_t  = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T              H_t: (p, n)
    y_t  = H_t C_t + D x_t,  times silu(z_t) if z is given     (as mamba_chunk_scan_combined)

i.e. y = M x + D x with the (1-)semiseparable matrix of the paper's matrix form

    M[i, j] = C_i . B_j * exp(sum_{k=j+1..i} dt_k A) * dt_j      for j <= i, else 0.

``ssd`` evaluates it chunk by chunk (the paper's SSD algorithm: quadratic inside a chunk,
a recurrence over chunk states between chunks) or as a sequential scan; ``ssd_matrix``
materialises M; ``ssd_step`` is one decoding step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_linear_attention import choose
from seqzoo.kernels.chunked_ssd import ssd_kernel
from seqzoo.ops.checks import check_stable
from seqzoo.ops.recurrence import linear_recurrence, segment_starts
from seqzoo.ops.selective_scan import (
    check_groups,
    check_shape,
    discretize_step,
    selective_scan,
    selective_scan_step,
)
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = ("auto", "chunked", "sequential", "pallas")
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def check_ssd_inputs(dt, A, B, C, *, x=None, dt_bias=None, suffix=""):
    """Validate dt: (*lead, h), A: (h,), B, C: (*lead, g, n) with g | h, x: (*lead, h, p)."""
    lead, h = dt.shape[:-1], dt.shape[-1]
    if x is not None and x.shape[:-1] != dt.shape:
        raise ValueError(f"dt{suffix} must be x's shape without headdim, {x.shape[:-1]}; "
                         f"got {dt.shape}")
    check_shape("A", A, (h,))
    check_stable("A", A)
    check_groups(f"B{suffix}", B, lead, B.shape[-1], h, "heads", shared_ok=False)
    check_shape(f"C{suffix}", C, B.shape)
    check_shape("dt_bias", dt_bias, (h,))


def segment_index(segment_ids: Array | None, batch: int, length: int) -> Array:
    """Running count of segment starts, (batch, length) int32; zeros without segment_ids."""
    if segment_ids is None:
        return jnp.zeros((batch, length), jnp.int32)
    return jnp.cumsum(segment_starts(segment_ids, batch, length), axis=1, dtype=jnp.int32)


def _skip_and_gate(y, x, D, z):
    """``(y + D x) * silu(z)`` in f32; D: (h,) or (h, p)."""
    if D is not None:
        D = D.astype(_F32)
        y = y + x.astype(_F32) * (D[:, None] if D.ndim == 1 else D)
    if z is not None:
        y = y * jax.nn.silu(z.astype(_F32))
    return y


def _ssd_chunked(x, dt, A, B, C, seg, initial_state, chunk):
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
    states, final = linear_recurrence(carry[..., None, None], local, initial_state=state0,
                                      return_final_state=True)
    entering = jnp.concatenate([state0[:, None], states[:, :-1]], axis=1)

    # 4. Off-diagonal blocks: y_i += exp(cum_i) C_i . S_{c-1}, if i continues that segment.
    from_start = decay(cum, (seg == seg_before[..., None])[..., None, None])
    y = y + jnp.einsum("bcign,bcgkpn->bcigkp", C, entering, precision=_HI) * from_start[..., None]
    return y.reshape(b, nc * chunk, h, p)[:, :l], final.reshape(b, h, p, n)


def _as_channels(x, dt, A, B, D, z, dt_bias, state):
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


def ssd(
    x: Array,
    dt: Array,
    A: Array,
    B: Array,
    C: Array,
    *,
    chunk_size: int = 64,
    D: Array | None = None,
    z: Array | None = None,
    dt_bias: Array | None = None,
    dt_softplus: bool = False,
    initial_state: Array | None = None,
    return_final_state: bool = False,
    segment_ids: Array | None = None,
    impl: str = "auto",
    seq_axis: str | None = None,
):
    """Mamba-2 SSD: H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T, y_t = H_t C_t + D x_t.

    x: (batch, length, heads, headdim). dt: (batch, length, heads), non-negative after the
    optional bias and softplus. A: (heads,), non-positive (so every decay is <= 1: the chunked
    form, like upstream's, exponentiates only masked non-positive log-decays then).
    B, C: (batch, length, g, n), g dividing heads. D: (heads,) or (heads, headdim).
    z: (batch, length, heads, headdim) gate, out = y * silu(z). dt_bias: (heads,).
    initial_state: (batch, heads, headdim, n). segment_ids: (batch, length) int; the state
    resets wherever the id changes (packed sequences, like upstream's ``seq_idx`` for sorted
    ids; the first segment starts from ``initial_state``).
    chunk_size: a power of two; any length works (padded inside; the chunk shrinks to the
    next power of two >= length for short inputs). impl: "chunked" (what "auto" picks off GPU),
    "sequential", or "pallas" (``seqzoo.kernels.chunked_ssd``, forward and backward kernels;
    what "auto" picks on a GPU for 16-bit x, B, C: in float32 it is slower than XLA; its chunk
    is chunk_size capped at its tuned size; with segment_ids it falls back to "chunked").
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
    the active ``seqzoo.parallel.sequence_parallel`` context).

    Returns out: (batch, length, heads, headdim) in x's dtype (computed in f32), and with
    ``return_final_state`` also H_{length-1}: (batch, heads, headdim, n) float32.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, length, heads, headdim), got shape {x.shape}")
    check_ssd_inputs(dt, A, B, C, x=x, dt_bias=dt_bias)
    b, l, h, p = x.shape
    check_shape("D", D, (h,), (h, p))
    check_shape("z", z, x.shape)
    check_shape("initial_state", initial_state, (b, h, p, B.shape[-1]))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 or (
        chunk_size & (chunk_size - 1)
    ):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: seqzoo.parallel carries the state across shards
        from seqzoo.parallel.ssd import sharded_ssd

        return sharded_ssd(
            x, dt, A, B, C, axis=axis, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
            dt_softplus=dt_softplus, initial_state=initial_state,
            return_final_state=return_final_state, segment_ids=segment_ids, impl=impl,
        )

    if impl == "sequential":
        u, delta, A_, D_, z_, bias, state0 = _as_channels(x, dt, A, B, D, z, dt_bias,
                                                          initial_state)
        out, final = selective_scan(u, delta, A_, B, C, D_, z_, bias, dt_softplus, state0,
                                    return_final_state=True, segment_ids=segment_ids,
                                    impl="sequential")
        out, final = out.reshape(x.shape), final.reshape(b, h, p, -1)
    else:
        step = discretize_step(dt, dt_bias, dt_softplus)
        dims = (B.shape[-1], x.shape[-1])
        dtypes = (x.dtype, B.dtype, C.dtype)
        picked = choose(impl, xla="chunked", dims=dims, dtypes=dtypes, segment_ids=segment_ids)
        if picked == "pallas":
            y, final = ssd_kernel(x, step, A, B, C, initial_state, chunk_size=chunk_size)
        else:
            chunk = min(chunk_size, 1 << max(l - 1, 0).bit_length())
            seg = segment_index(segment_ids, b, l)
            y, final = _ssd_chunked(x.astype(_F32), step, A.astype(_F32), B.astype(_F32),
                                    C.astype(_F32), seg, initial_state, chunk)
        out = _skip_and_gate(y, x, D, z).astype(x.dtype)
    return (out, final) if return_final_state else out


def ssd_step(
    state: Array,
    x_t: Array,
    dt_t: Array,
    A: Array,
    B_t: Array,
    C_t: Array,
    D: Array | None = None,
    z_t: Array | None = None,
    dt_bias: Array | None = None,
    dt_softplus: bool = False,
):
    """One decoding step of ``ssd`` (upstream's ``selective_state_update``).

    state: (batch, heads, headdim, n). x_t, z_t: (batch, heads, headdim). dt_t: (batch, heads).
    B_t, C_t: (batch, g, n). A, dt_bias: (heads,). D: (heads,) or (heads, headdim).
    Returns (new state in state's dtype, y_t: (batch, heads, headdim) in x_t's dtype).
    """
    if x_t.ndim != 3:
        raise ValueError(f"x_t must be (batch, heads, headdim), got shape {x_t.shape}")
    check_ssd_inputs(dt_t, A, B_t, C_t, x=x_t, dt_bias=dt_bias, suffix="_t")
    b, h, p = x_t.shape
    check_shape("D", D, (h,), (h, p))
    check_shape("z_t", z_t, x_t.shape)
    check_shape("state", state, (b, h, p, B_t.shape[-1]))
    u, delta, A_, D_, z_, bias, state_ = _as_channels(x_t, dt_t, A, B_t, D, z_t, dt_bias, state)
    new, y = selective_scan_step(state_, u, delta, A_, B_t, C_t, D_, z_, bias, dt_softplus)
    return new.reshape(state.shape), y.reshape(x_t.shape)


def _segment_sums(log_decay: Array) -> Array:
    """S[..., i, j] = sum_{k=j+1..i} log_decay[..., k] for i >= j (0 above the diagonal).

    Summed term by term (upstream's stable ``segsum``), not as a difference of cumulative
    sums, so long sequences lose no precision. log_decay: (..., l) -> (..., l, l).
    """
    pos = jnp.arange(log_decay.shape[-1])
    terms = jnp.where(pos[:, None] > pos[None, :], log_decay[..., :, None], 0.0)
    return jnp.cumsum(terms, axis=-2)


def ssd_matrix(
    dt: Array,
    A: Array,
    B: Array,
    C: Array,
    dt_bias: Array | None = None,
    dt_softplus: bool = False,
    segment_ids: Array | None = None,
) -> Array:
    """The SSD mixing matrix, ``ssd(x) = einsum("bhij,bjhp->bihp", M, x)`` (without D, z).

    M[b, h, i, j] = C_i . B_j * exp(A_h sum_{k=j+1..i} dt_k) * dt_j for j <= i (and i, j in
    the same segment), else 0; dt after the optional bias and softplus.
    dt: (batch, length, heads). A, dt_bias: (heads,). B, C: (batch, length, g, n), g | heads.
    segment_ids: (batch, length) int. Returns M: (batch, heads, length, length) in the
    result dtype of (dt, B, C), computed in f32.
    """
    if dt.ndim != 3:
        raise ValueError(f"dt must be (batch, length, heads), got shape {dt.shape}")
    check_ssd_inputs(dt, A, B, C, dt_bias=dt_bias)
    b, l, h = dt.shape
    g = B.shape[2]
    step = jnp.swapaxes(discretize_step(dt, dt_bias, dt_softplus), 1, 2)  # (b, h, l)
    seg = segment_index(segment_ids, b, l)
    pos = jnp.arange(l)
    mask = (pos[:, None] >= pos[None, :]) & (seg[:, :, None] == seg[:, None, :])
    log_decay = _segment_sums(step * A.astype(_F32)[:, None])
    decay = jnp.exp(jnp.where(mask[:, None], log_decay, -jnp.inf))
    scores = jnp.einsum("bign,bjgn->bgij", C.astype(_F32), B.astype(_F32), precision=_HI)
    M = jnp.repeat(scores, h // g, axis=1) * decay * step[:, :, None, :]
    return M.astype(jnp.result_type(dt, B, C))
