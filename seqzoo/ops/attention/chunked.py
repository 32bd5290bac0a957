"""Causal softmax attention within fixed chunks (Mega's chunked attention), single head.

The sequence is cut into chunks of ``C`` positions (chunk ``t // C``); query ``i`` attends to the
valid keys ``j`` of its own chunk with ``j <= i``:

    P[i, j] = exp(s_ij) / sum_{j' allowed} exp(s_ij'),   s_ij = scale q_i . k_j + r[C - 1 + j - i]

with ``r: (2 C - 1,)`` Mega's ``SimpleRelativePositionalBias`` (``r[C - 1 + j - i]`` is its entry
for offset ``j - i``; None: no bias). ``P`` is block diagonal with lower-triangular blocks: cost
O(L C d). A row without an allowed key (a padded query) is 0.

``chunked_attention_step`` runs it one token at a time with a cache of the current chunk's keys
and values, cleared whenever a chunk starts (position ``t % C == 0``); positions count every
token, padded ones included, as the parallel form's chunks do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.ops.checks import check_positive_int

Array = jax.Array
_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def _check(q: Array, k: Array, v: Array | None, mask: Array, chunk_size: int, bias) -> None:
    check_positive_int(chunk_size, "chunk_size")
    if q.ndim != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must be (batch, length, dk) alike, got {q.shape}, {k.shape}")
    if v is not None and (v.ndim != 3 or v.shape[:2] != q.shape[:2]):
        raise ValueError(f"v must be (batch, length={q.shape[1]}, dv), got {v.shape}")
    if mask.shape != q.shape[:2]:
        raise ValueError(f"mask must be (batch, length)={q.shape[:2]}, got {mask.shape}")
    if bias is not None and bias.shape != (2 * chunk_size - 1,):
        raise ValueError(
            f"rel_bias must be (2 chunk_size - 1,)={(2 * chunk_size - 1,)}, got {bias.shape}"
        )


def _masked_softmax(scores: Array, allowed: Array) -> Array:
    scores = jnp.where(allowed, scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.where(allowed, jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def _offset_bias(bias: Array | None, chunk_size: int, offsets: np.ndarray) -> Array:
    """``r[C - 1 + (j - i)]`` for ``offsets = j - i`` (clipped; only used where allowed)."""
    if bias is None:
        return jnp.zeros(offsets.shape, _F32)
    idx = np.clip(chunk_size - 1 + offsets, 0, 2 * chunk_size - 2)
    return bias.astype(_F32)[idx]


def chunked_attention_probs(
    q: Array, k: Array, mask: Array, *, chunk_size: int, rel_bias: Array | None, scale: float
) -> Array:
    """Per chunk ``P: (batch, chunks, C, C)`` float32 (the sequence right-padded to chunks * C).

    q, k: (batch, length, dk); mask: (batch, length) bool; rel_bias: (2 C - 1,) or None.
    """
    _check(q, k, None, mask, chunk_size, rel_bias)
    batch, length, dk = q.shape
    n = -(-length // chunk_size)
    pad = n * chunk_size - length

    def chunks(a):
        a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
        return a.reshape((batch, n, chunk_size) + a.shape[2:])

    qc, kc = chunks(q.astype(_F32)), chunks(k.astype(_F32))
    valid = chunks(mask)
    pos = np.arange(chunk_size)
    offsets = pos[None, :] - pos[:, None]  # j - i
    s = jnp.einsum("bnid,bnjd->bnij", qc, kc, precision=_HI) * scale
    s = s + _offset_bias(rel_bias, chunk_size, offsets)
    allowed = jnp.asarray(offsets <= 0)[None, None] & valid[:, :, None, :]
    return _masked_softmax(s, allowed)


def chunked_causal_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    *,
    chunk_size: int,
    rel_bias: Array | None = None,
    scale: float | None = None,
) -> Array:
    """``o = P v`` chunk by chunk: q, k (batch, length, dk), v (batch, length, dv), mask
    (batch, length) bool. ``scale`` defaults to ``dk ** -0.5``. Returns float32 (batch, length,
    dv); padded query rows are 0."""
    _check(q, k, v, mask, chunk_size, rel_bias)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = chunked_attention_probs(q, k, mask, chunk_size=chunk_size, rel_bias=rel_bias, scale=scale)
    batch, n = p.shape[:2]
    length = q.shape[1]
    vc = jnp.pad(v.astype(_F32), ((0, 0), (0, n * chunk_size - length), (0, 0)))
    vc = vc.reshape(batch, n, chunk_size, v.shape[-1])
    o = jnp.einsum("bnij,bnjd->bnid", p, vc, precision=_HI)
    o = o.reshape(batch, n * chunk_size, v.shape[-1])[:, :length]
    return jnp.where(mask[..., None], o, 0.0)


def chunked_attention_matrix(
    q: Array,
    k: Array,
    mask: Array,
    *,
    chunk_size: int,
    rel_bias: Array | None = None,
    scale: float | None = None,
) -> Array:
    """The dense ``P: (batch, length, length)`` float32 of ``chunked_causal_attention``, built on
    the whole ``L x L`` grid (no reshape into chunks); padded rows and columns are 0."""
    _check(q, k, None, mask, chunk_size, rel_bias)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    length = q.shape[1]
    pos = np.arange(length)
    offsets = pos[None, :] - pos[:, None]
    same = (pos[:, None] // chunk_size) == (pos[None, :] // chunk_size)
    s = jnp.einsum("bid,bjd->bij", q.astype(_F32), k.astype(_F32), precision=_HI) * scale
    s = s + _offset_bias(rel_bias, chunk_size, offsets)
    allowed = jnp.asarray(same & (offsets <= 0))[None] & mask[:, None, :] & mask[:, :, None]
    return _masked_softmax(s, allowed)


def chunked_attention_init_cache(batch: int, chunk_size: int, dk: int, dv: int) -> dict:
    """Empty step cache: keys (batch, C, dk), values (batch, C, dv), valid (batch, C), and the
    position ``t: (batch,)`` int32 of the next token."""
    return {
        "k": jnp.zeros((batch, chunk_size, dk), _F32),
        "v": jnp.zeros((batch, chunk_size, dv), _F32),
        "valid": jnp.zeros((batch, chunk_size), bool),
        "t": jnp.zeros((batch,), jnp.int32),
    }


def chunked_attention_step(
    cache: dict,
    q_t: Array,
    k_t: Array,
    v_t: Array,
    mask_t: Array,
    *,
    rel_bias: Array | None = None,
    scale: float | None = None,
) -> tuple[dict, Array]:
    """One token: q_t, k_t (batch, dk), v_t (batch, dv), mask_t (batch,) bool.

    The token goes to slot ``t % C`` of the cache (the cache is cleared first when that slot is
    0); a padded token is stored as invalid. Returns (cache, o_t: (batch, dv) float32, 0 where
    ``mask_t`` is False).
    """
    chunk_size = cache["k"].shape[1]
    if rel_bias is not None and rel_bias.shape != (2 * chunk_size - 1,):
        raise ValueError(
            f"rel_bias must be (2 C - 1,)={(2 * chunk_size - 1,)}, got {rel_bias.shape}"
        )
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    slot = cache["t"] % chunk_size  # (b,)
    here = jax.nn.one_hot(slot, chunk_size, dtype=bool)  # (b, C)
    valid = jnp.where((slot == 0)[:, None], False, cache["valid"]) | (here & mask_t[:, None])
    keys = jnp.where(here[..., None], k_t.astype(_F32)[:, None], cache["k"])
    values = jnp.where(here[..., None], v_t.astype(_F32)[:, None], cache["v"])
    s = jnp.einsum("bd,bjd->bj", q_t.astype(_F32), keys, precision=_HI) * scale
    if rel_bias is not None:
        offsets = jnp.arange(chunk_size)[None, :] - slot[:, None]  # j - i
        s = s + rel_bias.astype(_F32)[jnp.clip(chunk_size - 1 + offsets, 0, 2 * chunk_size - 2)]
    p = _masked_softmax(s, valid)
    o = jnp.einsum("bj,bjd->bd", p, values, precision=_HI)
    cache = {"k": keys, "v": values, "valid": valid, "t": cache["t"] + 1}
    return cache, jnp.where(mask_t[:, None], o, 0.0)
