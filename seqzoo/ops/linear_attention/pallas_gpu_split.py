"""Linear attention as the kernel's inter-chunk pass plus intra-chunk scores parallel over chunks
(``impl="pallas_split"``; meant for per-key decays, issue 24).

    o = o_inter + o_intra
    o_intra_i = scale sum_{j <= i, j in i's chunk} (sum_d q_id k_jd exp(G_id - G_jd)) v_j = (A v)_i
    o_inter_i = scale sum_{j in earlier chunks} (...) v_j + scale (q_i exp(G_i)) S_0

``o_inter`` and the final state are ``chunked_pass`` with ``intra=False`` (one program per
batch, head and value block walking the chunks; forward and three backward passes, the decays'
gradient by the chunk-local identity, all on pairs in different chunks only): with the exact
diagonal blocks gone, a per-key decay costs there what a scalar one does. ``o_intra`` is
``intra_chunk.py``: the (C x C) scores of every chunk at once (sub-chunks through a reference
row, the diagonal blocks exactly, as fla's ``chunk_gla``) and ``A v``, batched XLA matmuls
differentiated by JAX (their own VJPs); for 16-bit inputs the per-key scores and their VJP are
Pallas kernels by default (``pallas_gpu_intra.MEASURED``). Both parts use the same chunk C
(``pallas_gpu.launch_tiling``).

The sum is taken once, in float32: ``o_intra`` is the pass's ``extra`` (``chunked_vjp``), added
to the kernel's float32 ``o_inter`` before ``o``'s one rounding to v's dtype, and its gradients
(taken on float32 copies of q, k, v holding the same values, matmul operands still in the
inputs' dtype) join the passes' float32 ones before each gradient's one rounding. Rounding each
part to bf16 and summing in bf16 cost two or three roundings per gradient: bf16 dq, dk, dv at
2.5e-3, 2.5e-3, 3.1e-3 relative L2 against the float32 op rounded to bf16 at (1, 256, 2, 64),
GLA's decays ``logsigmoid(x) / 16``; one rounding: 7e-5, 5e-5, 2.5e-3 (dv's rest is the dv
pass's bf16 state and A's bf16 operands below the diagonal blocks, as fla's ``chunk_gla``).
No or scalar decays: the intra-chunk scores are differentiated by autodiff through their bf16
operands, which rounds their dq and dk once more before the sum.

Inputs as ``seqzoo.ops.linear_attention`` without ``segment_ids``; no, scalar and per-key decays
all run (the split is only expected to pay for per-key decays). Tolerances as ``impl="pallas"``
(float32: ~1e-6 relative to the XLA op; bf16 inputs: bf16 matmul operands, float32
accumulation, ``A`` rounded to bf16 for ``A v``). A float32 ``precision`` other than "highest"
(``seqzoo.kernels.matmul_precision``) applies to the inter-chunk passes only: the intra-chunk
scores and ``A v`` stay IEEE float32 (XLA's einsums and the scores' kernel at ``HIGHEST``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.kernels.chunked_segments import segment_length, segmented
from seqzoo.kernels.chunked_states import states_then_outputs
from seqzoo.kernels.chunked_tiling import device_limit, padded_width, resolve_inter_forward
from seqzoo.ops.linear_attention import intra_chunk, pallas_gpu_intra
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention, launch_tiling

Array = jax.Array


def _in_chunks(x: Array | None, chunk: int) -> Array | None:
    """(B, T, H, ...) -> (B, T / chunk, chunk, H, ...)."""
    if x is None:
        return None
    return x.reshape(x.shape[0], x.shape[1] // chunk, chunk, *x.shape[2:])


def intra_chunk_attention(q: Array, k: Array, v: Array, cum: Array | None, *, scale: float,
                          chunk: int, sub: int = 16,
                          kernel: bool | pallas_gpu_intra.ScoresTiling = False,
                          dtype=None) -> Array:
    """``o_intra: (D, B, T, H, dv)`` float32 for chunks of ``chunk`` steps from t = 0, in the
    layout of ``chunked_vjp``'s ``extra``: q, k (D, B, T, H, dk), v (D, B, T, H, dv), T a
    multiple of ``chunk``; cum: None or the chunk-local cumulative log decays, float32,
    (D, B, T, H) or (D, B, T, H, dk). ``dtype``: the matmul operands' (default q's; float32 q,
    k, v holding its values keep float32 gradients). ``kernel``: per-key scores by the Pallas
    kernel (True or its launch tiling: ``intra_chunk.intra_chunk_scores``; a tiling with
    ``outputs_kernel`` takes ``A v`` to ``pallas_gpu_intra_outputs`` too)."""
    lead = q.shape[:2]
    q, k, v, cum = (None if x is None else x.reshape(-1, *x.shape[2:]) for x in (q, k, v, cum))
    q, k, v, cum = (_in_chunks(x, chunk) for x in (q, k, v, cum))
    scores = intra_chunk.intra_chunk_scores(q, k, cum, scale=scale, sub=sub, kernel=kernel,
                                            dtype=dtype)
    outputs_kernel = isinstance(kernel, pallas_gpu_intra.ScoresTiling) and kernel.outputs_kernel
    out = intra_chunk.intra_chunk_outputs(scores, v, dtype, kernel=outputs_kernel)
    return out.reshape(*lead, -1, *out.shape[3:])


@dataclasses.dataclass(frozen=True)
class _IntraTerms:
    """``intra_chunk_attention`` as the pass's ``extra`` (hashable by value: it is part of the
    custom VJP's static arguments)."""

    scale: float
    chunk: int
    sub: int
    kernel: bool | pallas_gpu_intra.ScoresTiling
    dtype: jnp.dtype

    def __call__(self, q: Array, k: Array, v: Array, cum: Array | None) -> Array:
        return intra_chunk_attention(q, k, v, cum, scale=self.scale, chunk=self.chunk,
                                     sub=self.sub, kernel=self.kernel, dtype=self.dtype)


def _launch_facts(q, k, v, log_decay) -> tuple[str | None, tuple[int, int], int]:
    """The decay kind, the padded (key, value) widths and the operands' itemsize the launch
    tilings are chosen by."""
    decay = None if log_decay is None else ("scalar" if log_decay.ndim == 3 else "key")
    widths = (padded_width(q.shape[-1]), padded_width(v.shape[-1]))
    return decay, widths, max(a.dtype.itemsize for a in (q, k, v))


def kernel_tiling(q, k, v, log_decay, chunk_size: int, segments: int | None = None,
                  tiling: Tiling | None = None):
    """The inter-chunk kernel's launch tiling for these arguments (arrays or shape-dtype structs,
    shapes as ``linear_attention_kernel``'s), on ``segments`` segments of the sequence:
    ``pallas_gpu.launch_tiling`` without the intra-chunk terms for one launch's length (a
    segment's), from ``tiling`` where given; its chunk and sub-chunk are the intra terms' too."""
    decay, widths, itemsize = _launch_facts(q, k, v, log_decay)
    length = q.shape[1] if segments is None else segment_length(q.shape[1], segments)
    return launch_tiling(decay, length, widths, tiling=tiling, max_chunk=chunk_size, intra=False,
                         itemsize=itemsize)


def forward_tiling(q, k, v, log_decay, tiling: Tiling | None = None) -> Tiling | None:
    """The inter-chunk kernel's forward launch where it differs from its backward passes'
    (``chunked_tiling.resolve_inter_forward``: per-key decays, 16-bit operands, where it fits
    this GPU); None (every pass at ``kernel_tiling``'s) for other decays or a ``tiling`` asked
    for."""
    decay, widths, itemsize = _launch_facts(q, k, v, log_decay)
    if tiling is not None or decay != "key":
        return None
    return resolve_inter_forward(*widths, device_limit(), itemsize)


def linear_attention_kernel(
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array | None = None,
    *,
    scale: float,
    initial_state: Array | None = None,
    chunk_size: int = 64,
    intra_kernel: bool | pallas_gpu_intra.ScoresTiling | None = None,
    precision: str | None = None,
    segments: int | None = None,
    tiling: Tiling | None = None,
    states_forward: bool = False,
    cumsum_kernel: bool = True,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_attention`` (no segment_ids) as ``o_inter + o_intra``.

    q, k: (B, T, H, dk); v: (B, T, H, dv); log_decay: None, (B, T, H) or (B, T, H, dk);
    initial_state: (B, H, dk, dv); intra_kernel: the per-key intra-chunk scores by the Pallas
    kernel of ``pallas_gpu_intra.py`` instead of XLA: True (one program per chunk, slower than
    XLA's on an H100) or a ``pallas_gpu_intra.ScoresTiling`` (its launch, and with
    ``vjp_kernel`` the VJP by ``pallas_gpu_intra_bwd``); False: XLA's; None (the default):
    ``pallas_gpu_intra.MEASURED`` (kernels for the scores, their VJP and ``A v``, faster than
    XLA's on an H100: benchmarks/RESULTS.md) where q, k and v are all 16-bit and the chunk a
    power of two >= 16, XLA's otherwise (float32 scores: not timed);
    precision: the inter-chunk passes' float32 matmuls (module docstring); segments: None, or
    the number of parallel segments the sequence is cut into, each segment's inter- and
    intra-chunk terms in one launch from a zero state, the states entering each segment added
    after it (``seqzoo.kernels.chunked_segments``: its ``o`` is rounded to v's dtype once more);
    tiling: the inter-chunk kernel's launch (``seqzoo.kernels.chunked_pass.Tiling``; default
    ``kernel_tiling``'s, the first candidate that fits this GPU, and the forward's own launch
    where ``forward_tiling`` has one), its chunk capped at ``chunk_size`` and the sequence's
    length, and the intra-chunk terms' chunk and sub-chunk; a tiling asked for runs every pass.
    states_forward: per-key decays' inter-chunk forward as a states pass and an output pass
    parallel over chunks (``seqzoo.kernels.chunked_states``, fla's structure) instead of the
    kernel's one walk (slower than the walk at its own launch on an H100: benchmarks/
    RESULTS.md, "The forward's own launch and the states forward timed"; kept as the place to
    fuse ``A v`` into; the backward is the same; other decays are refused by
    ``states_then_outputs``).
    cumsum_kernel: per-key decays' chunk-local cumulative sum by ``seqzoo.kernels.chunk_cumsum``
    where it fits (float32 decays, power-of-two chunk and key width) instead of XLA's (the
    default: faster on an H100, benchmarks/RESULTS.md).
    Returns ``o`` in v's dtype and ``S_T`` float32.
    """
    forward = forward_tiling(q, k, v, log_decay, tiling)
    tiling = kernel_tiling(q, k, v, log_decay, chunk_size, segments, tiling)
    if intra_kernel is None:  # the kernels take chunks of a power of two >= 16 steps
        half = all(a.dtype.itemsize == 2 for a in (q, k, v))
        fits = padded_width(tiling.chunk) == tiling.chunk
        intra_kernel = pallas_gpu_intra.MEASURED if half and fits else False
    lead = [None if a is None else a[None] for a in (q, k, v, log_decay, initial_state)]
    intra = _IntraTerms(float(scale), tiling.chunk, tiling.sub, intra_kernel,
                        jnp.dtype(jnp.result_type(q.dtype, k.dtype, v.dtype)))
    attention = functools.partial(gated_linear_attention, tiling=tiling, intra=False,
                                  precision=precision, extra=intra, forward_tiling=forward,
                                  forward_run=states_then_outputs if states_forward else None,
                                  cumsum_kernel=cumsum_kernel)
    if segments is not None:
        attention = segmented(attention, segments)
    o, final = attention(*lead[:4], None, lead[4], scale=scale)
    return o[0], final[0]
