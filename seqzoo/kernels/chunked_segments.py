"""Long sequences with few heads: the sequence split into segments run in parallel (issue 24).

A chunked pass (``chunked_pass``) runs one program per (direction, batch, head, value block)
and walks every chunk of the sequence in order: at (2, 32768, 4, 64) that is 8 programs for a
whole GPU. Here the sequence of T steps is cut into P segments of L = ceil(T / P) steps (the
end padded with identity steps: q, k, v zero, log decay 0), each one more batch row of ONE
launch from a zero state (B -> B * P rows of L steps):

    o_loc_t, F_p = pass(segment p, S_0 = 0)          F_p: (dk, dv), the segment's own state

With G_t the cumulative log decay from the start of t's segment (<= 0) and D_p = exp(G_L) the
segment's total decay (1 without decays, a scalar per head, or one factor per key row), the
state entering segment p, the outputs and the final state are

    S_in_0 = S_0,   S_in_{p+1} = D_p S_in_p + F_p      S_T = S_in_P
    o_t = o_loc_t + scale (q_t * exp(G_t)) S_in_p       (t in segment p; * over dk, or a scalar)

The recurrence over segments is solved in closed form, one batched matmul of a lower-triangular
(P+1, P+1) weight matrix:

    S_in_p = sum_{j <= p} exp(C_p - C_j) X_j,   X = (S_0, F_0, ..., F_{P-1}),
    C_j = log D_0 + ... + log D_{j-1}

masked before the ``exp`` (every exponent <= 0). All of it after the launch is XLA, so autodiff
differentiates it through the pass's ``custom_vjp`` (the cotangent of the local final states
``F`` included); the initial state enters here, never the kernel.

Shapes as the backends' ``gated_linear_attention`` (a leading direction axis of 1; causal only):
q, k: (1, B, T, H_qk, dk); v: (1, B, T, H, dv); g: None, (1, B, T, H_g) or (1, B, T, H_g, dk);
key_scale: (1, B, T, H_s) (inside the pass: it scales k only); initial_state: (1, B, H, dk, dv).
Numerics: float32 states and decays; the correction ``q S_in`` is a matmul in the inputs' dtype
(bf16 operands for bf16 inputs, as the kernel's own inter-chunk ``q S``; IEEE float32 for float32
ones) with float32 accumulation, the decays (a scalar one broadcast) on the queries' columns.
Each gradient is rounded once, as in the kernel alone: the launch takes q, k, v as float32
copies of their values (``chunked_vjp.padded_chunked``'s ``operands``; its passes still read
them in their own dtype) and returns the gradients of q, k, v in float32, and the correction's
gradients are float32 too (``operand_einsum``), so they join before the one rounding at the
input. The correction's dq stays further from the correctly rounded one than the kernel's
own: ``S_in`` comes from the launches' final states, accumulated from bf16-rounded decayed
keys. ``o_loc`` is rounded to v's dtype before the correction is added (one rounding more than
the kernel alone): a float32 ``o_loc`` would write and read two more bytes per element in a
forward pass whose lead over fla's is small (benchmarks/RESULTS.md, "Joined in float32").
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.kernels.operand_einsum import operand_einsum

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def check_segments(segments, length: int, impl: str = "pallas") -> None:
    """``segments`` must be None or an int in [1, length] (every segment at least one step),
    and an op's ``impl`` one that may run the kernel (``"pallas"``, ``"pallas_split"`` or
    ``"auto"``)."""
    if segments is None:
        return
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a positive int or None, got {segments!r}")
    if segments > length:
        raise ValueError(f"segments={segments} exceeds the sequence length {length}: every "
                         "segment needs at least one step")
    if impl not in ("auto", "pallas", "pallas_split"):
        raise ValueError(f"segments splits the Pallas kernel's sequence; impl={impl!r} does not "
                         "take it (its chunks already run in parallel)")


def propose_segments(batch: int, heads: int, length: int, value_blocks: int = 1,
                     sm_count: int | None = None, *, programs_per_sm: int = 2, chunk: int = 64,
                     min_chunks: int = 4) -> int:
    """A number of segments for ``segments=`` (a proposal for benchmarks to sweep around).

    The largest power of two P with ``batch * heads * value_blocks * P <= programs_per_sm *
    sm_count`` (programs of one launch against the GPU's streaming multiprocessors), capped so
    that each segment keeps ``min_chunks`` chunks of ``chunk`` steps; 1 where ``sm_count`` is
    unknown (None) or one launch already fills the GPU. Pure: a function of its arguments only.
    (Rounding down: the best measured counts on an H100, 132 multiprocessors, all launch 256
    programs, benchmarks/RESULTS.md "Long sequences with few heads".)
    """
    if sm_count is None:
        return 1
    programs = batch * heads * value_blocks
    cap = max(1, length // (min_chunks * chunk))
    p = 1
    while programs * 2 * p <= programs_per_sm * sm_count and 2 * p <= cap:
        p *= 2
    return p


def device_sm_count() -> int | None:
    """The first device's streaming multiprocessors (``core_count`` of a GPU), None elsewhere."""
    return getattr(jax.devices()[0], "core_count", None)


def segment_length(length: int, segments: int) -> int:
    """L = ceil(T / P): the steps of every segment (the last one padded to it)."""
    return -(-length // segments)


def _split(x: Array | None, segments: int, steps: int) -> Array | None:
    """(1, B, T, ...) -> (1, B * segments, steps, ...), zero-padded at the end to segments*steps."""
    if x is None:
        return None
    pad = [(0, 0)] * x.ndim
    pad[2] = (0, segments * steps - x.shape[2])
    x = jnp.pad(x, pad)
    return x.reshape(x.shape[0], x.shape[1] * segments, steps, *x.shape[3:])


def _per_head(x: Array, heads: int) -> Array:
    """(..., H_x, d) on axis 3 -> ``heads`` heads, head h reading ``h // (heads / H_x)``."""
    return jnp.repeat(x, heads // x.shape[3], axis=3)


def _entering_states(log_totals: Array | None, initial: Array, local: Array) -> Array:
    """``S_in_p`` for p = 0..P: (1, B, P+1, H, dk, dv) from the segments' log decays
    ``log_totals: (1, B, P, H, dk or 1)`` (None: no decay), ``initial: (1, B, H, dk, dv)`` and
    the local final states ``local: (1, B, P, H, dk, dv)`` (module docstring's closed form)."""
    x = jnp.concatenate([initial[:, :, None], local], axis=2)
    n = x.shape[2]
    lower = jnp.tril(jnp.ones((n, n), bool))
    if log_totals is None:
        return jnp.einsum("pj,dbjhkv->dbphkv", lower.astype(_F32), x, precision=_HI)
    c = jnp.cumsum(log_totals, axis=2)
    c = jnp.concatenate([jnp.zeros_like(c[:, :, :1]), c], axis=2)  # C_0 .. C_P
    mask = lower[:, :, None, None]
    diff = jnp.where(mask, c[:, :, :, None] - c[:, :, None, :], 0.0)  # (1, B, P+1, P+1, H, k)
    weights = jnp.where(mask, jnp.exp(diff), 0.0)
    weights = jnp.broadcast_to(weights, (*weights.shape[:-1], x.shape[-2]))
    return jnp.einsum("dbpjhk,dbjhkv->dbphkv", weights, x, precision=_HI)


def segmented(attention: Callable, segments: int) -> Callable:
    """``attention`` (a backend's ``gated_linear_attention``) on ``segments`` parallel segments.

    Returns a function with ``attention``'s arguments and results (module docstring: one
    direction, causal); ``segments`` must lie in [1, T]. Its other options (``tiling``,
    ``max_chunk``) go to each launch unchanged.
    """

    def run(q, k, v, g=None, key_scale=None, initial_state=None, *, scale: float,
            reverse: tuple[bool, ...] = (False,), **options) -> tuple[Array, Array]:
        if tuple(reverse) != (False,) or q.shape[0] != 1 or v.shape[0] != 1:
            raise ValueError(f"segments run one causal direction, got reverse={reverse}")
        batch, length, heads, dk, dv = v.shape[1], q.shape[2], v.shape[3], q.shape[4], v.shape[4]
        check_segments(segments, length)
        steps = segment_length(length, segments)
        g = None if g is None else g.astype(_F32)
        dtypes = tuple(x.dtype for x in (q, k, v))
        q, k, v = (x.astype(_F32) for x in (q, k, v))  # gradients summed in float32 (below)
        o_loc, local = attention(*(_split(a, segments, steps) for a in (q, k, v, g, key_scale)),
                                 None, scale=scale, reverse=(False,), operands=dtypes, **options)
        initial = (jnp.zeros((1, batch, heads, dk, dv), _F32) if initial_state is None
                   else initial_state.astype(_F32))
        local = local.reshape(1, batch, segments, heads, dk, dv)
        queries = _per_head(_split(q, segments, steps), heads)
        log_totals = None
        if g is not None:  # G_t from each segment's start: (1, B*P, L, H, dk or 1), <= 0
            cum = jnp.cumsum(_split(g, segments, steps), axis=2)
            cum = _per_head(cum if cum.ndim == 5 else cum[..., None], heads)
            log_totals = cum[:, :, -1].reshape(1, batch, segments, heads, -1)
            queries = queries * jnp.exp(cum)  # on the queries' columns (every one, if scalar)
        entering = _entering_states(log_totals, initial, local)
        states = entering[:, :, :segments].reshape(1, batch * segments, heads, dk, dv)
        correction = operand_einsum("dblhk,dbhkv->dblhv", queries, states,
                                    dtypes[0] if jnp.dtype(dtypes[0]).itemsize == 2 else _F32)
        o = o_loc.astype(_F32) + scale * correction
        o = o.reshape(1, batch, segments * steps, heads, dv)[:, :, :length]
        return o.astype(o_loc.dtype), entering[:, :, segments]

    return run
