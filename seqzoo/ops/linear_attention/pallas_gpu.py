"""Linear attention's Pallas GPU backend: chunked gated linear attention, forward and backward.

    S_t = exp(g_t) S_{t-1} + ks_t k_t v_t^T        o_t = scale q_t S_t        (causal)

(``exp(g_t)`` a scalar per head or one factor per key dimension; ``ks`` an optional key scale,
Mamba-2's dt). A reverse direction runs the same recurrence from the end of the sequence, with
``o_i`` collecting keys ``j >= i`` decayed by ``exp(g_{i+1} + ... + g_j)``: Hydra's backward
scan, read in place instead of flipped.

Every pass is one launch of ``chunked_pass`` (see there for the kernel), driven by
``seqzoo.kernels.chunked_vjp`` (shared with the TPU backend). The backward pass is three more
launches of the same kernel, with the roles of the inputs exchanged:

    dq = pass(q=do, k=v,  v=k,  causal,  S_0^T)          decay on dq's columns
    dv = pass(q=k,  k=q,  v=do, reverse, dS_T) * ks      its final state is dS_0
    dk = pass(q=v,  k=do, v=q,  reverse, dS_T^T) * ks    decay on dk's columns

("reverse" meaning the opposite direction of the forward's). The decays' gradient uses the
standard identity for ``o`` depending on the cumulative log decay ``G_t = g_1 + ... + g_t``
only through ``exp(G_i - G_j)`` between a query i and a key j (GLA, fla):

    dc_t = +-(q_t . dq_t - ks_t k_t . dk_t) + [t last in its chunk n] sum_v X_n . dX_n
    dg_t = sum_{s >= t in t's chunk} dc_s

for the gradient ``dc`` of the chunk-local cumulative log decay ``c`` (summed over the key
dimension for scalar decays; + for causal), with ``X_n`` the state at the boundary after chunk n
(causal: S after chunk n, the last one S_T; reverse: the state entering chunk n from the right,
the last one the initial state) and ``dX_n`` its gradient. The dq pass holds ``X^T`` and the dk
pass ``dX^T / scale`` at the same boundaries: the first writes its states there (one state per
chunk, float32, for the backward pass only) and the second dots its own with them. Summing
within a chunk keeps the identity's cancelling terms local: the same identity summed over the
whole sequence (``dg_t = sum_{s >= t} dG_s``) loses accuracy as the square root of the length
(bf16 Mamba-2 at T = 4096: d(dt) 5.7e-2 from the float32 op, against 1.7e-3 here).

Widths: the key width is zero-padded to a power of two >= 16 (``chunked_tiling.padded_width``),
the value width to a multiple of the value block (``chunked_tiling.padded_value_width``: fla's
GLA at d_model 768, 4 heads, dv 192, runs unpadded at blocks of 64) in the forward and dv
passes, which tile it, and to its power of two in the dq and dk passes, which contract over it
(Triton's tiles hold a power of two of elements).

This is ``impl="pallas"`` of ``seqzoo.ops.linear_attention`` and, through the same
``gated_linear_attention``, of ``seqzoo.ops.ssd`` and ``seqzoo.ops.quasiseparable``; the kernel
itself is the shared ``seqzoo.kernels.chunked_pass``. When ``impl="auto"`` takes it:
``seqzoo.ops.dispatch``.

Tolerances against the float32 XLA op (``seqzoo.ops.linear_attention``): float32 inputs run
float32 matmuls at ``precision`` (``seqzoo.kernels.matmul_precision``): at ``"highest"``
(IEEE) and at the default ``"tf32x3"`` they agree to about float32's accuracy (7.4e-7 and
5.7e-7 relative L2 at (4, 2048, 16, 128) on an H100), at ``"tf32"`` to ~4e-4
(``benchmarks/kernel_cases/chunked_float32.py``; interpret mode computes IEEE whatever the
precision). bf16 inputs run bf16 matmuls with float32 accumulation (the forward and dv passes
round the state for the inter-chunk matmul) and agree with the float32 op on the same values to
1.5e-3 .. 3e-3 relative, outputs and every gradient (``tests/test_kernels_bf16_gradients.py``),
the order of rounding the inputs to bf16.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunk_cumsum import chunk_cumsum
from seqzoo.kernels.chunk_cumsum import fits as chunk_cumsum_fits
from seqzoo.kernels.chunked_pass import TUNED, Tiling, chunked_pass
from seqzoo.kernels.chunked_segments import device_sm_count, propose_segments, segmented
from seqzoo.kernels.chunked_tiling import (
    device_limit,
    padded_value_width,
    padded_width,
    resolve_tiling,
)
from seqzoo.kernels.chunked_vjp import padded_chunked
from seqzoo.kernels.matmul_precision import resolve_precision

Array = jax.Array
# ``impl="auto"`` cuts the sequence into segments where the proposal reaches this many: at
# (2, 32768, 4, 64) bf16 on an H100 the proposed 32 ran 3.8x (no decay) and 3.6x (per-head decay)
# the forward pass without segments, and 8 already 2.8x ("Long sequences with few heads",
# benchmarks/RESULTS.md); fewer segments (a launch that nearly fills the GPU) are not measured.
AUTO_MIN_SEGMENTS = 8


def launch_tiling(decay: str | None, length: int, widths: tuple[int, int], *,
                  tiling: Tiling | None = None, max_chunk: int | None = None,
                  intra: bool = True, itemsize: int = 2) -> Tiling:
    """The tiling a pass runs at: ``tiling`` (default: ``chunked_tiling.resolve_tiling``'s for
    this GPU and operands of ``itemsize`` bytes) with its chunk capped at ``max_chunk`` and at
    the next power of two >= ``length`` (at least 16). ``widths``: the key and value widths
    padded to powers of two (``chunked_tiling.padded_width``: what the shared-memory fit reads,
    the widest a pass reads whole)."""
    if tiling is None:
        tiling, why = resolve_tiling(decay, *widths, device_limit(), intra, itemsize)
        if tiling is None:
            raise ValueError(f"impl='pallas' cannot run here: {why}; use the op's XLA path")
    chunk = min(tiling.chunk, padded_width(length), padded_width(max_chunk or tiling.chunk))
    return dataclasses.replace(tiling, chunk=chunk, sub=min(tiling.sub, chunk))


def gated_linear_attention(
    q: Array,
    k: Array,
    v: Array,
    g: Array | None = None,
    key_scale: Array | None = None,
    initial_state: Array | None = None,
    *,
    scale: float,
    reverse: tuple[bool, ...] = (False,),
    tiling: Tiling | None = None,
    max_chunk: int | None = None,
    intra: bool = True,
    precision: str | None = None,
    extra: Callable | None = None,
    forward_tiling: Tiling | None = None,
    forward_run: Callable | None = None,
    operands: tuple | None = None,
    cumsum_kernel: bool = False,
) -> tuple[Array, Array]:
    """Chunked gated linear attention in one or two directions, differentiable in every input.

    Layout (a leading direction axis D: 1 = shared, or ``len(reverse)``; heads of q, k, g,
    key_scale dividing v's H, Mamba-2's groups):
      q, k: (D, B, T, H_qk, dk); v: (D, B, T, H, dv); any T, dk, dv.
      g: log decays <= 0, None, (D, B, T, H_g) (scalar per head) or (D, B, T, H_g, dk) (per key).
      key_scale: (D, B, T, H_s) multiplies k_t (Mamba-2's dt); initial_state: (D, B, H, dk, dv).
      reverse: per direction, whether it runs from the end of the sequence.
      tiling, max_chunk: as ``launch_tiling`` takes them (max_chunk: an op's ``chunk_size``).
      intra: False keeps only the terms of (query, key) pairs in different chunks of
        ``launch_tiling``'s chunk (and the initial state's): ``chunked_pass``'s ``intra``.
      precision: of float32 matmuls in every pass, forward and backward: ``"highest"`` (IEEE),
        ``"tf32x3"`` or ``"tf32"``; None: ``jax.default_matmul_precision``'s, else "tf32x3"
        (``seqzoo.kernels.matmul_precision``). 16-bit inputs ignore it.
      extra: ``extra(q, k, v, cum)``, float32 terms on the padded inputs added to ``o`` before
        its rounding, their gradients joined in float32 (``seqzoo.kernels.chunked_vjp``; one
        causal direction, no key_scale, q, k, g with v's heads).
      forward_tiling: the forward pass's launch where it differs from the backward passes'
        (``forward_launch``); None: ``launch_tiling``'s for every pass.
      forward_run: the forward pass by another computation of its sums
        (``seqzoo.kernels.chunked_states.states_then_outputs``); None: ``chunked_pass``.
      operands: q, k, v are float32 copies of values of these three dtypes, which the passes
        take (and the launch is chosen for); ``o`` is in v's own dtype and q, k, v's
        gradients stay float32 (``seqzoo.kernels.chunked_vjp.padded_chunked``).
      cumsum_kernel: per-key decays' chunk-local cumulative sum by
        ``seqzoo.kernels.chunk_cumsum`` (where its tiles fit) instead of XLA's.
    Returns ``o: (len(reverse), B, T, H, dv)`` in v's dtype (``operands``' for v) and the final
    states ``(len(reverse), B, H, dk, dv)`` float32 (for a reverse direction: the state before
    t=0).
    """
    if scale == 0:
        raise ValueError("scale must be non-zero")
    precision = resolve_precision(precision)  # once: the backward passes are traced later
    decay = None if g is None else ("scalar" if g.ndim == 4 else "key")
    wk, wv = padded_width(q.shape[-1]), padded_width(v.shape[-1])
    dtypes = operands or (q.dtype, k.dtype, v.dtype)
    tiling = launch_tiling(decay, q.shape[2], (wk, wv), tiling=tiling, max_chunk=max_chunk,
                           intra=intra, itemsize=max(jnp.dtype(d).itemsize for d in dtypes))
    widths = (wk, padded_value_width(v.shape[-1], tiling.block_v))  # whole value blocks
    if forward_tiling is not None:
        forward_tiling = forward_launch(forward_tiling, tiling, widths[1])
    kernel_sums = cumsum_kernel and decay == "key" and chunk_cumsum_fits(tiling.chunk, wk)
    cumsum = chunk_cumsum if kernel_sums else None
    return padded_chunked(q, k, v, g, key_scale, initial_state, scale=scale, reverse=reverse,
                          tiling=tiling, widths=widths, run=chunked_pass, intra=intra,
                          precision=precision, extra=extra, contracted_width=wv,
                          forward_tiling=forward_tiling, forward_run=forward_run,
                          operands=operands, cumsum=cumsum)


def forward_launch(forward: Tiling, tiling: Tiling, value_width: int) -> Tiling:
    """``forward`` with ``tiling``'s chunk and sub-chunk (the passes share the decays' chunk
    sums), and its value block where that tiles ``value_width`` (the padded width every pass
    runs at: ``padded_value_width`` for ``tiling``'s block) in whole power-of-two blocks (a
    multiple of it, or a power of two below it: one block clipped to the width), else
    ``tiling``'s block."""
    block = forward.block_v
    if value_width % block and padded_width(value_width) != value_width:
        block = tiling.block_v
    return dataclasses.replace(forward, chunk=tiling.chunk, sub=tiling.sub, block_v=block)


def proposed_segments(batch: int, heads: int, length: int, dv: int,
                      sm_count: int | None = None) -> int:
    """``chunked_segments.propose_segments``' count for this op's launch: ``batch * heads`` rows
    of ``dv``'s value blocks (``TUNED.block_v`` columns each) on ``sm_count`` multiprocessors
    (default: this GPU's; 1 off a GPU)."""
    value_blocks = -(-padded_value_width(dv, TUNED.block_v) // TUNED.block_v)
    sm_count = device_sm_count() if sm_count is None else sm_count
    return propose_segments(batch, heads, length, value_blocks, sm_count)


def auto_segments(batch: int, heads: int, length: int, dv: int,
                  sm_count: int | None = None) -> int | None:
    """The ``segments=`` that ``impl="auto"`` runs the kernel with: ``proposed_segments`` where
    it is at least ``AUTO_MIN_SEGMENTS`` (long sequences with few heads), else None (one
    segment)."""
    proposed = proposed_segments(batch, heads, length, dv, sm_count)
    return proposed if proposed >= AUTO_MIN_SEGMENTS else None


def linear_attention_kernel(
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array | None = None,
    *,
    scale: float,
    initial_state: Array | None = None,
    chunk_size: int = 64,
    precision: str | None = None,
    segments: int | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_attention`` (no segment_ids) on the kernels.

    q, k: (B, T, H, dk); v: (B, T, H, dv); log_decay: None, (B, T, H) or (B, T, H, dk);
    initial_state: (B, H, dk, dv); precision: as ``gated_linear_attention``; segments: None, or
    the number of parallel segments the sequence is cut into
    (``seqzoo.kernels.chunked_segments``). Returns ``o`` in v's dtype and ``S_T`` float32.
    """
    lead = [None if a is None else a[None] for a in (q, k, v, log_decay, initial_state)]
    attention = functools.partial(gated_linear_attention, precision=precision)
    if segments is not None:
        attention = segmented(attention, segments)
    o, final = attention(*lead[:4], None, lead[4], scale=scale, max_chunk=chunk_size)
    return o[0], final[0]
