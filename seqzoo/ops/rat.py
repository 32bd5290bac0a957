"""RAT's chunked attention over gated recurrences (Wei et al., 2025, "RAT: Bridging RNN Efficiency
and Attention Accuracy", CLAIRE-Labo/RAT).

The sequence is cut into chunks of ``L`` tokens. Inside a chunk, per channel,

    k~_t = g_t k~_{t-1} + (1 - g_t) k_t,     v~_t = g_t v~_{t-1} + (1 - g_t) v_t
    (k~_{t-1} = v~_{t-1} = 0 at the first token of a chunk),  g_t = sigmoid(gate logit_t)

and a query attends with ONE softmax over the chunk-end states ``(k~, v~)`` of every strictly
earlier chunk plus its own current ``(k~_t, v~_t)``:

    o_t = (sum_{c<C(t)} e^{s_tc} v~_{end(c)} + e^{s_tt} v~_t) / (sum_{c<C(t)} e^{s_tc} + e^{s_tt})
    s_tc = scale * rope(q_t, C(t)) . rope(k~_{end(c)}, c),     s_tt = scale * q_t . k~_t

with RoPE at the CHUNK index ``C(t)`` (the official "interrope"; q_t and k~_t share one rotation,
so ``s_tt`` needs none).

Padding: positions count valid tokens only (``p = cumsum(mask) - 1``, as attention), chunks are
``C = p // L`` over those positions, and a padded token is a no-op: it neither advances nor
changes the recurrences (``g = 1``, no input). A sequence with holes therefore behaves exactly
as the same sequence with the holes removed, in every path, and the decoder simply skips padded
tokens.

Shapes: ``q, k, v, gate: (batch, length, heads, d)`` (per-head; the layer tiles grouped q, k);
``mask: (batch, length)`` bool.

Cost: the recurrence is one associative scan over the whole sequence (``O(T D)``, reset at chunk
starts: the same as a scan inside each chunk), the attention ``O(T (T / L) D)``: together
``O(T D + T^2 D / L)``. The official code scans inside reshaped chunks (needs ``T % L == 0``);
here chunk boundaries come from the valid-token positions, which allows any length and holes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.ops.attention import valid_positions
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.lean_grad import blockwise
from seqzoo.ops.rope import apply_rope
from seqzoo.ops.scan import linear_recurrence

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
_F32 = jnp.float32


def tile_heads(a: Array, heads: int) -> Array:
    """``a: (..., groups, d)`` -> ``(..., heads, d)``, head ``h`` reading group ``h % groups``
    (torch's ``repeat``, RAT's grouped q and k); ``a`` itself when it has ``heads`` already."""
    groups = a.shape[-2]
    if heads % groups:
        raise ValueError(f"q and k's {groups} heads must divide the {heads} heads of v")
    return jnp.tile(a, (1,) * (a.ndim - 2) + (heads // groups, 1))


def check_chunk_size(chunk_size) -> None:
    """``ValueError`` unless ``chunk_size`` (``L``) is a positive int."""
    check_positive_int(chunk_size, "chunk_size")


def chunk_layout(mask: Array, chunk_size: int) -> tuple[Array, Array]:
    """``(chunk index C, chunk-start flag)``, both ``(batch, length)``, over valid positions.

    The chunk index of a padded token is the one of the valid token before it (-1 before any);
    it is never a chunk start.
    """
    pos = valid_positions(mask)
    return pos // chunk_size, mask & (pos % chunk_size == 0)


def rat_recurrence(gate: Array, x: Array, mask: Array, chunk_size: int) -> Array:
    """The in-chunk gated recurrence ``h_t = g_t h_{t-1} + (1 - g_t) x_t``, reset at chunk starts.

    Args:
      gate: gate logits ``(batch, length, heads, d)`` (``g = sigmoid(gate)``).
      x: ``(batch, length, ..., heads, d)``: keys or values, or several stacked on the middle
        axes, all under the same gate.
      mask: ``(batch, length)``; a padded token keeps ``h`` unchanged.
    Returns ``h``, shaped like ``x``, float32.
    """
    check_chunk_size(chunk_size)
    _, start = chunk_layout(mask, chunk_size)
    shape = gate.shape[:2] + (1,) * (x.ndim - 4) + gate.shape[2:]
    gate = gate.astype(_F32).reshape(shape)
    valid = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
    first = start.reshape(valid.shape)
    a = jnp.where(valid, jnp.where(first, 0.0, jax.nn.sigmoid(gate)), 1.0)
    b = jnp.where(valid, jax.nn.sigmoid(-gate) * x.astype(_F32), 0.0)
    return linear_recurrence(a, b)


def chunk_ends(mask: Array, chunk_size: int) -> Array:
    """Index of the last token of each chunk, ``(batch, n)``, ``n = max(1, length // L)`` (the
    most chunks that can be complete); ``length`` where chunk ``c`` is not complete."""
    length = mask.shape[1]
    n = max(1, length // chunk_size)
    count = jnp.cumsum(mask.astype(jnp.int32), axis=1)
    targets = (jnp.arange(n, dtype=jnp.int32) + 1) * chunk_size
    return jax.vmap(lambda c: jnp.searchsorted(c, targets, side="left"))(count)


def _gather_time(x: Array, index: Array) -> Array:
    """``x: (batch, length, ...)`` at ``index: (batch, n)`` (clipped) -> ``(batch, n, ...)``."""
    index = jnp.clip(index, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def rat_probs(
    q: Array,
    k_tilde: Array,
    mask: Array,
    chunk_size: int,
    *,
    rope: bool = True,
    rope_theta: float = 10000.0,
    scale: float | None = None,
) -> tuple[Array, Array, Array]:
    """The softmax weights of RAT: ``(P_inter: (b, heads, length, n), P_self: (b, heads, length),
    ends: (b, n))``; ``P_inter[t, c]`` weighs chunk ``c``'s end state, ``P_self[t]`` the current
    state; they sum to one over the allowed chunks ``c < C(t)`` plus the current state."""
    check_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chunk, _ = chunk_layout(mask, chunk_size)
    ends = chunk_ends(mask, chunk_size)
    n = ends.shape[1]
    q = q.astype(_F32)
    k_tilde = k_tilde.astype(_F32)
    k_end = _gather_time(k_tilde, ends)  # (b, n, h, d)
    q_rot = q
    if rope:
        q_rot = apply_rope(q, chunk, rope_theta)
        k_end = apply_rope(k_end, jnp.arange(n), rope_theta)
    s_inter = jnp.einsum("bihd,bchd->bhic", q_rot, k_end, precision=_HI) * scale
    s_self = jnp.einsum("bihd,bihd->bhi", q, k_tilde, precision=_HI) * scale
    allowed = (jnp.arange(n)[None, None, :] < chunk[:, :, None])[:, None]  # (b, 1, l, n)
    s_inter = jnp.where(allowed, s_inter, -jnp.inf)
    s_max = jax.lax.stop_gradient(jnp.maximum(jnp.max(s_inter, axis=-1), s_self))
    e_inter = jnp.where(allowed, jnp.exp(s_inter - s_max[..., None]), 0.0)
    e_self = jnp.exp(s_self - s_max)
    total = jnp.sum(e_inter, axis=-1) + e_self  # >= 1
    return e_inter / total[..., None], e_self / total, ends


@functools.partial(jax.jit, static_argnames=("chunk_size", "rope", "rope_theta", "scale"))
def rat_attention(
    q: Array,
    k: Array,
    v: Array,
    gate: Array,
    mask: Array,
    chunk_size: int,
    *,
    rope: bool = True,
    rope_theta: float = 10000.0,
    scale: float | None = None,
) -> Array:
    """RAT's fast path: ``o: (batch, length, heads, d)`` float32 from ``q, k, v, gate`` (see the
    module docstring; ``rope``, ``rope_theta``, ``scale`` as ``rat_probs``). ``q, k`` may have
    fewer heads, ``groups`` dividing ``heads``: head ``h`` reads group ``h % groups`` (the
    official ``repeat``), tiled inside, so only the groups are kept for the backward pass.

    A ``lean_grad.blockwise`` function of the batch rows, forwards and backwards: autodiff of
    ``rat_attention_autodiff`` keeps the recurrences' scan levels and the ``(heads, length,
    length / L)`` scores and probabilities of every row; here they exist for one block of rows
    at a time (at most ``lean_grad.BLOCK_ELEMENTS`` where the rows allow) and the backward pass
    keeps only the arguments, recomputing them."""
    check_chunk_size(chunk_size)
    return _lean_rat((chunk_size, rope, rope_theta, scale))((q, k, v, gate, mask), ())


def rat_attention_autodiff(q, k, v, gate, mask, chunk_size, *, rope=True, rope_theta=10000.0,
                           scale=None) -> Array:
    """``rat_attention``'s values with plain autodiff (what its lean backward is tested
    against): q, k tiled over the heads, the key and value recurrences as one scan, then one
    softmax per query."""
    options = {"rope": rope, "rope_theta": rope_theta, "scale": scale}
    q, k = (tile_heads(a, v.shape[2]) for a in (q, k))
    k_tilde, v_tilde = jnp.unstack(
        rat_recurrence(gate, jnp.stack([k, v], 2), mask, chunk_size), axis=2
    )
    p_inter, p_self, ends = rat_probs(q, k_tilde, mask, chunk_size, **options)
    v_end = _gather_time(v_tilde, ends)  # (b, n, h, d)
    o = jnp.einsum("bhic,bchd->bihd", p_inter, v_end, precision=_HI)
    return o + jnp.moveaxis(p_self, 1, 2)[..., None] * v_tilde


@functools.cache
def _lean_rat(options: tuple):
    chunk_size, rope, rope_theta, scale = options

    def fn(rows, _):
        return rat_attention_autodiff(*rows, chunk_size, rope=rope, rope_theta=rope_theta,
                                      scale=scale)

    def per_row(rows):  # the larger of the stacked (k, v) states and the scores
        _, length, heads, d = rows[0].shape
        return 8 * heads * length * max(2 * d, length // chunk_size)

    return blockwise(fn, forward=True, row_elements=per_row)


@functools.partial(jax.jit, static_argnames=("chunk_size", "rope", "rope_theta", "scale"))
def rat_matrix(
    q: Array,
    k: Array,
    gate: Array,
    mask: Array,
    chunk_size: int,
    *,
    rope: bool = True,
    rope_theta: float = 10000.0,
    scale: float | None = None,
) -> Array:
    """RAT's mixing matrix per channel, ``M: (batch, heads * d, length, length)`` float32.

    ``o[t, ch] = sum_j M[ch, t, j] v[j, ch]`` with, for ``ch`` in head ``h``, ``w_j = 1 - g_j``
    and ``G(t, j) = prod_{j < i <= t} g_i`` (inside one chunk):

        M[ch, t, j] = P_self[h, t] w_j G(t, j)                  C(j) = C(t), j <= t
                    = P_inter[h, t, C(j)] w_j G(end(C(j)), j)    C(j) < C(t)

    Gate products are differences of a cumulative log gate that restarts at every chunk, so they
    stay exact over long sequences. Padded rows and columns are zero.
    """
    check_chunk_size(chunk_size)
    options = {"rope": rope, "rope_theta": rope_theta, "scale": scale}
    b, length, h, d = gate.shape
    chunk, start = chunk_layout(mask, chunk_size)
    gate = gate.astype(_F32)
    valid, first = mask[:, :, None, None], start[:, :, None, None]
    log_g = jnp.where(valid, jax.nn.log_sigmoid(gate), 0.0)
    log_w = jnp.where(valid, jax.nn.log_sigmoid(-gate), 0.0)
    # one scan for both: k~ (the recurrence of rat_recurrence) and the cumulative log gate,
    # restarting at chunk starts (it includes log g_t itself)
    a = jnp.stack(
        [
            jnp.where(valid, jnp.where(first, 0.0, jax.nn.sigmoid(gate)), 1.0),
            jnp.broadcast_to(jnp.where(first, 0.0, 1.0), gate.shape),
        ],
        2,
    )
    rhs = jnp.stack([jnp.where(valid, jax.nn.sigmoid(-gate) * k.astype(_F32), 0.0), log_g], 2)
    k_tilde, cum = jnp.unstack(linear_recurrence(a, rhs), axis=2)
    p_inter, p_self, ends = rat_probs(q, k_tilde, mask, chunk_size, **options)
    pair = mask[:, :, None] & mask[:, None, :]  # (b, t, j)
    same = pair & (chunk[:, :, None] == chunk[:, None, :]) & jnp.tril(jnp.ones((length,) * 2, bool))
    earlier = pair & (chunk[:, None, :] < chunk[:, :, None])
    # intra: (b, t, j, h, d)
    expo = cum[:, :, None] - cum[:, None, :] + log_w[:, None, :]
    intra = jnp.exp(jnp.where(same[..., None, None], expo, -jnp.inf))
    # chunk-end weights of column j: (b, j, h, d)
    n = ends.shape[1]
    col_chunk = jnp.clip(chunk, 0, n - 1)
    cum_end = _gather_time(_gather_time(cum, ends), col_chunk)
    complete = _gather_time(ends, col_chunk) < length  # (b, j)
    end_expo = jnp.where((mask & complete)[..., None, None], cum_end - cum + log_w, -jnp.inf)
    end_w = jnp.exp(end_expo)
    p_col = jnp.take_along_axis(
        p_inter, jnp.broadcast_to(col_chunk[:, None, None, :], (b, h, length, length)), axis=-1
    )
    p_col = jnp.where(earlier[:, None], p_col, 0.0)  # (b, h, t, j)
    m = jnp.einsum("bht,btjhd->bhdtj", p_self, intra, precision=_HI)
    m = m + jnp.einsum("bhtj,bjhd->bhdtj", p_col, end_w, precision=_HI)
    return m.reshape(b, h * d, length, length)


def rat_init_state(batch: int, slots: int, heads: int, d: int) -> dict[str, Array]:
    """The decoding state: ``k, v: (batch, slots, heads, d)`` chunk-end states (keys rotated to
    their chunk), ``chunk: (batch, slots)`` (-1: empty), the running ``k_t, v_t: (batch, heads,
    d)`` and ``pos: (batch,)`` (valid tokens seen)."""
    cache = jnp.zeros((batch, slots, heads, d), _F32)
    run = jnp.zeros((batch, heads, d), _F32)
    return {
        "k": cache,
        "v": cache,
        "chunk": jnp.full((batch, slots), -1, jnp.int32),
        "k_t": run,
        "v_t": run,
        "pos": jnp.zeros((batch,), jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("chunk_size", "rope", "rope_theta", "scale"))
def rat_step(
    state: dict[str, Array],
    q: Array,
    k: Array,
    v: Array,
    gate: Array,
    chunk_size: int,
    *,
    rope: bool = True,
    rope_theta: float = 10000.0,
    scale: float | None = None,
) -> tuple[dict[str, Array], Array]:
    """One decoding step on ``q, k, v, gate: (batch, heads, d)`` -> ``(state, o: (batch, heads,
    d))``. The chunk-end cache is a ring of ``slots`` chunks: past ``slots * L`` tokens the oldest
    chunks are dropped (the caller masks padded tokens by keeping the old state)."""
    check_chunk_size(chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pos = state["pos"]
    chunk = pos // chunk_size
    start = (pos % chunk_size == 0)[:, None, None]
    gate = gate.astype(_F32)
    g, w = jax.nn.sigmoid(gate), jax.nn.sigmoid(-gate)
    k_t = jnp.where(start, 0.0, g * state["k_t"]) + w * k.astype(_F32)
    v_t = jnp.where(start, 0.0, g * state["v_t"]) + w * v.astype(_F32)
    q = q.astype(_F32)
    q_rot = apply_rope(q[:, None], chunk[:, None], rope_theta)[:, 0] if rope else q
    s_inter = jnp.einsum("bhd,bchd->bhc", q_rot, state["k"], precision=_HI) * scale
    allowed = ((state["chunk"] >= 0) & (state["chunk"] < chunk[:, None]))[:, None]
    s_inter = jnp.where(allowed, s_inter, -jnp.inf)
    s_self = jnp.einsum("bhd,bhd->bh", q, k_t, precision=_HI) * scale
    s_max = jax.lax.stop_gradient(jnp.maximum(jnp.max(s_inter, axis=-1), s_self))
    e_inter = jnp.where(allowed, jnp.exp(s_inter - s_max[..., None]), 0.0)
    e_self = jnp.exp(s_self - s_max)
    total = jnp.sum(e_inter, axis=-1) + e_self
    o = jnp.einsum("bhc,bchd->bhd", e_inter, state["v"], precision=_HI) + e_self[..., None] * v_t
    o = o / total[..., None]
    # a completed chunk enters the cache
    slots = state["chunk"].shape[1]
    write = (pos % chunk_size == chunk_size - 1)[:, None] & (
        jnp.arange(slots)[None] == (chunk % slots)[:, None]
    )  # (b, slots)
    k_store = apply_rope(k_t[:, None], chunk[:, None], rope_theta)[:, 0] if rope else k_t
    w4 = write[..., None, None]
    new = {
        "k": jnp.where(w4, k_store[:, None], state["k"]),
        "v": jnp.where(w4, v_t[:, None], state["v"]),
        "chunk": jnp.where(write, chunk[:, None], state["chunk"]),
        "k_t": k_t,
        "v_t": v_t,
        "pos": pos + 1,
    }
    return new, o
