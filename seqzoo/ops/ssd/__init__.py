"""Mamba-2's state-space duality (Dao & Gu, 2024): a scalar-decay SSM per head, three ways.

Per head h (with group ``h // (heads / g)`` for B and C) and step size dt_t:

    dt_t = softplus(dt_t + dt_bias)                            (each optional)
    H_t  = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T              H_t: (p, n)
    y_t  = H_t C_t + D x_t,  times silu(z_t) if z is given     (as mamba_chunk_scan_combined)

i.e. y = M x + D x with the (1-)semiseparable matrix of the paper's matrix form

    M[i, j] = C_i . B_j * exp(sum_{k=j+1..i} dt_k A) * dt_j      for j <= i, else 0.

``ssd`` evaluates it chunk by chunk (the paper's SSD algorithm: quadratic inside a chunk,
a recurrence over chunk states between chunks, ``xla.py``), on the chunked Pallas kernels
(``pallas_gpu.py``) or as a sequential scan (the selective scan's, one channel per head and
headdim pair); ``ssd_matrix`` materialises M; ``ssd_step`` is one decoding step. A sequence split
over devices runs ``sequence_parallel.py``; ``seqzoo.ops.dispatch`` decides what ``"auto"`` runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_segments import check_segments
from seqzoo.kernels.matmul_precision import resolve_precision
from seqzoo.ops.checks import check_groups, check_power_of_two, check_shape, check_stable
from seqzoo.ops.dispatch import accepted, canonical, on_platform
from seqzoo.ops.scan import discretize_step, selective_scan_local, selective_scan_step
from seqzoo.ops.segments import segment_index
from seqzoo.ops.ssd import pallas_gpu, pallas_tpu, sequence_parallel, xla
from seqzoo.parallel.context import sequence_axis

Array = jax.Array
IMPLS = accepted("ssd")
_F32 = jnp.float32


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


def ssd_local(x, dt, A, B, C, *, chunk_size: int, D, z, dt_bias, dt_softplus: bool,
              initial_state, segment_ids, impl: str,
              precision: str = "highest",
              segments: int | None = None) -> tuple[Array, Array]:
    """The op on unsplit data: ``(out, final state)``, ``impl`` resolved here on these inputs
    (no validation, no sequence axis: what ``sequence_parallel.py`` runs on each shard);
    ``precision``: the GPU kernel's, resolved (a name); ``segments`` reaches the kernel only."""
    b, l, h, p = x.shape

    def sequential(x, dt, A, B, C, initial_state):
        u, delta, A_, D_, z_, bias, state0 = xla.as_channels(x, dt, A, B, D, z, dt_bias,
                                                             initial_state)
        out, final = selective_scan_local(u, delta, A_, B, C, D_, z_, bias, dt_softplus, state0,
                                          segment_ids, impl="sequential")
        return out.reshape(x.shape), final.reshape(b, h, p, -1)

    def chunked(x, dt, A, B, C, initial_state):
        y, final = xla.lean_ssd(chunk_size, dt_softplus)(
            (x, dt, B, C, segment_ids, initial_state), (A, dt_bias))
        return xla.skip_and_gate(y, x, D, z).astype(x.dtype), final

    def run(impl: str, platform: str):
        if impl != "pallas":
            return {"sequential": sequential, "chunked": chunked}[impl]
        if platform == "tpu":  # float32 at HIGHEST: TF32 is a GPU format
            kernel = pallas_tpu.ssd_kernel
        else:
            kernel = functools.partial(pallas_gpu.ssd_kernel, precision=precision)

        def on_kernel(x, dt, A, B, C, initial_state):
            step = discretize_step(dt, dt_bias, dt_softplus)
            y, final = kernel(x, step, A, B, C, initial_state, chunk_size=chunk_size,
                              segments=segments)
            return xla.skip_and_gate(y, x, D, z).astype(x.dtype), final
        return on_kernel

    return on_platform("ssd", impl, run, x, dt, A, B, C, initial_state, dims=(B.shape[-1], p),
                       dtypes=(x.dtype, B.dtype, C.dtype), segment_ids=segment_ids,
                       precision=precision)


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
    precision: str | None = None,
    segments: int | None = None,
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
    next power of two >= length for short inputs). impl: "chunked", "sequential", "pallas"
    (the chunked kernels, forward and backward; its chunk is chunk_size capped at its tuned
    size; with segment_ids it falls back to "chunked") or "auto"
    (``seqzoo.ops.explain("ssd", ...)`` says what it picks and why).
    seq_axis: inside ``shard_map``, the mesh axis the sequence is split over (default: that of
    the active ``seqzoo.parallel.sequence_parallel`` context).
    precision: float32 matmuls of "pallas" on a GPU (the Triton kernel), forward and backward:
    "highest" (IEEE), "tf32x3" (3xTF32) or "tf32" (one TF32 pass); None:
    ``jax.default_matmul_precision``'s, else "tf32x3"; not read by 16-bit inputs, the TPU
    kernel or the XLA forms (as ``seqzoo.ops.linear_attention``'s).
    segments: where the Pallas kernel runs, cut the sequence into this many segments run in
    parallel (as ``seqzoo.ops.linear_attention``'s option; not measured for SSD, so ``"auto"``
    never sets it); None: one.

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
    check_power_of_two(chunk_size, "chunk_size")
    impl = canonical("ssd", impl)
    check_segments(segments, l, impl)
    local = functools.partial(ssd_local, chunk_size=chunk_size, D=D, dt_bias=dt_bias,
                              dt_softplus=dt_softplus, segment_ids=segment_ids, impl=impl,
                              precision=resolve_precision(precision), segments=segments)
    axis = sequence_axis(seq_axis)
    if axis is None:
        out, final = local(x, dt, A, B, C, z=z, initial_state=initial_state)
    else:  # sequence parallel: the state is carried across shards
        out, final = sequence_parallel.sharded_ssd(
            local, x, dt, A, B, C, axis=axis, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
            initial_state=initial_state, segment_ids=segment_ids,
        )
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
    u, delta, A_, D_, z_, bias, state_ = xla.as_channels(x_t, dt_t, A, B_t, D, z_t, dt_bias,
                                                         state)
    new, y = selective_scan_step(state_, u, delta, A_, B_t, C_t, D_, z_, bias, dt_softplus)
    return new.reshape(state.shape), y.reshape(x_t.shape)


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
    b, l, _ = dt.shape
    step = discretize_step(dt, dt_bias, dt_softplus)
    M = xla.matrix(step, A, B, C, segment_index(segment_ids, b, l))
    return M.astype(jnp.result_type(dt, B, C))
