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

Files: this one validates and dispatches; ``xla.py`` (both directions as one batched SSD, and
the matrix), ``pallas_gpu.py`` (both directions in one kernel launch) and
``sequence_parallel.py`` (both directions' states carried across devices).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels.matmul_precision import resolve_precision
from seqzoo.ops.checks import check_power_of_two, check_shape
from seqzoo.ops.dispatch import accepted, canonical, on_platform
from seqzoo.ops.quasiseparable import pallas_gpu, pallas_tpu, sequence_parallel, xla
from seqzoo.ops.scan import discretize_step
from seqzoo.ops.ssd import check_ssd_inputs
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = accepted("quasiseparable")
_F32 = jnp.float32


def _check(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, dt_bias, x=None):
    check_ssd_inputs(dt_fwd, A, B_fwd, C_fwd, x=x, dt_bias=dt_bias, suffix="_fwd")
    check_shape("dt_bwd", dt_bwd, dt_fwd.shape)
    check_shape("B_bwd", B_bwd, B_fwd.shape)
    check_shape("C_bwd", C_bwd, B_fwd.shape)
    b, l, h = dt_fwd.shape
    check_shape("D", D, (h,), (b, l, h))


def quasiseparable_local(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, *, D, chunk_size: int,
                         dt_bias, dt_softplus: bool, segment_ids, impl: str,
                         precision: str = "highest") -> Array:
    """The op on unsplit data, in x's dtype; ``impl`` resolved here on these inputs (no
    validation, no sequence axis: what ``sequence_parallel.py`` runs on each shard);
    ``precision``: the GPU kernel's, resolved (a name)."""
    dtypes = (x.dtype, B_fwd.dtype, C_fwd.dtype, B_bwd.dtype, C_bwd.dtype)

    def run(impl: str, platform: str):
        if impl == "pallas":
            if platform == "tpu":  # float32 at HIGHEST: TF32 is a GPU format
                kernel = pallas_tpu.quasiseparable_kernel
            else:
                kernel = functools.partial(pallas_gpu.quasiseparable_kernel, precision=precision)

            def on_kernel(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd):
                steps = (discretize_step(d, dt_bias, dt_softplus) for d in (dt_fwd, dt_bwd))
                return kernel(x, *steps, A, B_fwd, C_fwd, B_bwd, C_bwd, chunk_size=chunk_size)
            return on_kernel
        form = functools.partial(xla.quasiseparable, chunk_size=chunk_size, dt_bias=dt_bias,
                                 dt_softplus=dt_softplus, segment_ids=segment_ids, impl=impl)
        return lambda *operands: form(*operands).astype(_F32)  # as the kernels return

    y = on_platform("quasiseparable", impl, run, x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd,
                    dims=(B_fwd.shape[-1], x.shape[-1]), dtypes=dtypes, segment_ids=segment_ids)
    if D is not None:
        y = y + x.astype(_F32) * xla.diagonal(D)[..., None]
    return y.astype(x.dtype)


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
    precision: str | None = None,
) -> Array:
    """Hydra mixer QS(x) = shift(SS_fwd(x)) + flip(shift(SS_bwd(flip(x)))) + D x.

    x: (batch, length, heads, headdim). dt_fwd, dt_bwd: (batch, length, heads), each passed
    through ``softplus(dt + dt_bias)`` when asked (one dt_bias: (heads,) for both, as
    upstream). A: (heads,), shared. B_fwd, C_fwd, B_bwd, C_bwd: (batch, length, g, n), g | heads.
    D: (heads,) or data-dependent (batch, length, heads). segment_ids: (batch, length) int;
    tokens mix only within their segment (each segment behaves as a separate sequence).
    chunk_size, impl: as ``ssd`` (both directions run as one batched SSD; with the "pallas"
    kernel as one launch, the backward direction reading its inputs in place from the end of
    the sequence, nothing flipped).
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
    the active ``seqzoo.parallel.sequence_parallel`` context).
    precision: as ``ssd``'s (both directions and every backward pass).

    Returns (batch, length, heads, headdim) in x's dtype, computed in f32.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, length, heads, headdim), got shape {x.shape}")
    _check(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, dt_bias, x=x)
    check_power_of_two(chunk_size, "chunk_size")
    impl = canonical("quasiseparable", impl)
    local = functools.partial(quasiseparable_local, D=D, chunk_size=chunk_size, dt_bias=dt_bias,
                              dt_softplus=dt_softplus, segment_ids=segment_ids, impl=impl,
                              precision=resolve_precision(precision))
    args = (x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd)
    axis = sequence_axis(seq_axis)
    if axis is None:
        return local(*args)
    # sequence parallel: both directions' states are carried across shards
    return sequence_parallel.sharded_quasiseparable(
        local, *args, axis=axis, dt_bias=dt_bias, dt_softplus=dt_softplus,
        segment_ids=segment_ids,
    )


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
    M = xla.matrix(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=D, dt_bias=dt_bias,
                   dt_softplus=dt_softplus, segment_ids=segment_ids)
    return M.astype(jnp.result_type(dt_fwd, B_fwd, C_fwd))
