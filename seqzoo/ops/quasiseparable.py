"""Hydra's bidirectional quasiseparable mixer (Hwang et al., 2024; goombalab/hydra).

    QS(x) = shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x)))) + D x

SS is the causal SSD (``seqzoo.ops.ssd``) with its own dt, B, C per direction and one A
shared by both; ``shift`` delays by one step (``y[0] = 0``), so the diagonal comes only from
D. The backward direction's dt, B, C are given in the original time order (as projected
from the tokens) and are flipped here, as upstream does before its batched scan. As a matrix,
with the ``ssd_matrix`` entries of each direction written in the original order,

    M[i, j] = C_fwd[i-1] . B_fwd[j] exp(A sum_{k=j+1..i-1} dt_fwd[k]) dt_fwd[j]    j < i
    M[i, i] = D_i
    M[i, j] = C_bwd[i+1] . B_bwd[j] exp(A sum_{k=i+1..j-1} dt_bwd[k]) dt_bwd[j]    j > i

Upstream Hydra uses a data-dependent diagonal, D_i = D + fc_D(x_i) per head: pass it as
``D: (batch, length, heads)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_linear_attention import choose
from seqzoo.kernels.chunked_ssd import quasiseparable_kernel
from seqzoo.ops.recurrence import segment_starts
from seqzoo.ops.selective_scan import check_shape, discretize_step
from seqzoo.ops.ssd import check_ssd_inputs, ssd, ssd_matrix
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
_F32 = jnp.float32


def _check(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, dt_bias, x=None):
    check_ssd_inputs(dt_fwd, A, B_fwd, C_fwd, x=x, dt_bias=dt_bias, suffix="_fwd")
    check_shape("dt_bwd", dt_bwd, dt_fwd.shape)
    check_shape("B_bwd", B_bwd, B_fwd.shape)
    check_shape("C_bwd", C_bwd, B_fwd.shape)
    b, l, h = dt_fwd.shape
    check_shape("D", D, (h,), (b, l, h))


def _stack_directions(fwd: Array, bwd: Array) -> Array:
    """[fwd; flip(bwd)] along the batch axis: both directions as one causal problem."""
    return jnp.concatenate([fwd, jnp.flip(bwd, axis=1)], axis=0)


def _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd):
    """dt, B, C of both directions, (2 batch, length, ...) each, in f32."""
    pairs = ((dt_fwd, dt_bwd), (B_fwd, B_bwd), (C_fwd, C_bwd))
    return tuple(_stack_directions(f, bw).astype(_F32) for f, bw in pairs)


def _merge_directions(y: Array, axes: tuple) -> Array:
    """Forward half plus the backward half flipped back along ``axes``."""
    half = y.shape[0] // 2
    return y[:half] + jnp.flip(y[half:], axis=axes)


def _delay(y: Array, axis: int, starts: Array | None) -> Array:
    """y one step later along ``axis`` (y[0] = 0), and 0 where a segment starts.

    starts: bool broadcastable to y, or None.
    """
    pad = [(0, 0)] * y.ndim
    pad[axis] = (1, 0)
    y = jax.lax.slice_in_dim(jnp.pad(y, pad), 0, y.shape[axis], axis=axis)
    return y if starts is None else jnp.where(starts, 0.0, y)


def _diagonal(D: Array) -> Array:
    """D as f32 (batch or 1, length or 1, heads)."""
    D = D.astype(_F32)
    return D if D.ndim == 3 else D[None, None]


def _stacked_starts(segment_ids, batch, length):
    """(2 batch, length) segment starts of both directions, or None without segment_ids."""
    if segment_ids is None:
        return None, None
    ids = _stack_directions(segment_ids, segment_ids)
    return ids, segment_starts(ids, 2 * batch, length)


def quasiseparable(
    x: Array,
    dt_fwd: Array,
    dt_bwd: Array,
    A: Array,
    B_fwd: Array,
    C_fwd: Array,
    B_bwd: Array,
    C_bwd: Array,
    *,
    D: Array | None = None,
    chunk_size: int = 64,
    dt_bias: Array | None = None,
    dt_softplus: bool = False,
    segment_ids: Array | None = None,
    impl: str = "auto",
    seq_axis: str | None = None,
) -> Array:
    """Hydra mixer QS(x) = shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x)))) + D x.

    x: (batch, length, heads, headdim). dt_fwd, dt_bwd: (batch, length, heads), each passed
    through ``softplus(dt + dt_bias)`` when asked (one dt_bias: (heads,) for both, as
    upstream). A: (heads,), shared. B_fwd, C_fwd, B_bwd, C_bwd: (batch, length, g, n), g | heads.
    D: (heads,) or data-dependent (batch, length, heads). segment_ids: (batch, length) int;
    tokens mix only within their segment (each segment behaves as a separate sequence).
    chunk_size, impl: as ``ssd`` (both directions run as one batched ``ssd`` call; with the
    "pallas" kernel as one launch, the backward direction reading its inputs in place from the
    end of the sequence, nothing flipped).
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
    the active ``seqzoo.parallel.sequence_parallel`` context).

    Returns (batch, length, heads, headdim) in x's dtype, computed in f32.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, length, heads, headdim), got shape {x.shape}")
    _check(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, dt_bias, x=x)
    axis = sequence_axis(seq_axis)
    if axis is not None:  # sequence parallel: seqzoo.parallel carries both directions' states
        from seqzoo.parallel.quasiseparable import sharded_quasiseparable

        return sharded_quasiseparable(
            x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, axis=axis, D=D,
            chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus,
            segment_ids=segment_ids, impl=impl,
        )
    b, l = x.shape[:2]
    dims = (B_fwd.shape[-1], x.shape[-1])
    dtypes = (x.dtype, B_fwd.dtype, C_fwd.dtype, B_bwd.dtype, C_bwd.dtype)
    if choose(impl, xla="chunked", dims=dims, dtypes=dtypes, segment_ids=segment_ids) == "pallas":
        steps = (discretize_step(d, dt_bias, dt_softplus) for d in (dt_fwd, dt_bwd))
        y = quasiseparable_kernel(x, *steps, A, B_fwd, C_fwd, B_bwd, C_bwd, chunk_size=chunk_size)
    else:
        ids, starts = _stacked_starts(segment_ids, b, l)
        dt, B, C = _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd)
        y = ssd(_stack_directions(x, x).astype(_F32), dt, A, B, C, chunk_size=chunk_size,
                dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=ids, impl=impl)
        starts = None if starts is None else starts[..., None, None]
        y = _merge_directions(_delay(y, 1, starts), (1,))
    if D is not None:
        y = y + x.astype(_F32) * _diagonal(D)[..., None]
    return y.astype(x.dtype)


def quasiseparable_matrix(
    dt_fwd: Array,
    dt_bwd: Array,
    A: Array,
    B_fwd: Array,
    C_fwd: Array,
    B_bwd: Array,
    C_bwd: Array,
    *,
    D: Array | None = None,
    dt_bias: Array | None = None,
    dt_softplus: bool = False,
    segment_ids: Array | None = None,
) -> Array:
    """The Hydra mixing matrix: ``quasiseparable(x) = einsum("bhij,bjhp->bihp", M, x)``.

    Strictly lower part from the delayed forward SSD matrix, strictly upper part from the
    delayed backward one, diagonal D (see the module docstring for the entries). Arguments
    as ``quasiseparable``. Returns M: (batch, heads, length, length) in the result dtype of
    (dt_fwd, B_fwd, C_fwd), computed in f32.
    """
    if dt_fwd.ndim != 3:
        raise ValueError(f"dt_fwd must be (batch, length, heads), got shape {dt_fwd.shape}")
    _check(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, dt_bias)
    b, l, _ = dt_fwd.shape
    ids, starts = _stacked_starts(segment_ids, b, l)
    dt, B, C = _stacked_params(dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd)
    M = ssd_matrix(dt, A, B, C, dt_bias=dt_bias, dt_softplus=dt_softplus, segment_ids=ids)
    M = _merge_directions(_delay(M, 2, None if starts is None else starts[:, None, :, None]),
                          (2, 3))
    if D is not None:
        M = M + jnp.swapaxes(_diagonal(D), 1, 2)[..., None] * jnp.eye(l, dtype=_F32)
    return M.astype(jnp.result_type(dt_fwd, B_fwd, C_fwd))
