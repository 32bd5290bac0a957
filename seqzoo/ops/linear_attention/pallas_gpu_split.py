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
differentiated by autodiff. Both parts use the same chunk C (``pallas_gpu.launch_tiling``).

Inputs as ``seqzoo.ops.linear_attention`` without ``segment_ids``; no, scalar and per-key decays
all run (the split is only expected to pay for per-key decays). Tolerances as ``impl="pallas"``
(float32: ~1e-6 relative to the XLA op; bf16 inputs: bf16 matmul operands, float32
accumulation, ``A`` rounded to bf16 for ``A v``). A float32 ``precision`` other than "highest"
(``seqzoo.kernels.matmul_precision``) applies to the inter-chunk passes only: the intra-chunk
scores and ``A v`` stay IEEE float32 (XLA's einsums and the scores' kernel at ``HIGHEST``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels.chunked_tiling import padded_width
from seqzoo.ops.linear_attention import intra_chunk
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention, launch_tiling

Array = jax.Array


def _in_chunks(x: Array | None, steps: int, chunk: int) -> Array | None:
    """(B, T, H, ...) zero-padded to ``steps`` -> (B, steps / chunk, chunk, H, ...)."""
    if x is None:
        return None
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, steps - x.shape[1])
    x = jnp.pad(x, pad)
    return x.reshape(x.shape[0], steps // chunk, chunk, *x.shape[2:])


def intra_chunk_attention(q: Array, k: Array, v: Array, log_decay: Array | None, *,
                          scale: float, chunk: int, sub: int = 16, kernel: bool = False) -> Array:
    """``o_intra: (B, T, H, dv)`` float32 for chunks of ``chunk`` steps from t = 0 (layout as
    ``linear_attention_kernel``; padded to whole chunks with zero inputs and zero decays);
    ``kernel``: per-key scores by the Pallas kernel (``intra_chunk.intra_chunk_scores``)."""
    length = q.shape[1]
    steps = -(-length // chunk) * chunk
    q, k, v, g = (_in_chunks(x, steps, chunk) for x in (q, k, v, log_decay))
    cum = None if g is None else jnp.cumsum(g.astype(jnp.float32), axis=2)
    scores = intra_chunk.intra_chunk_scores(q, k, cum, scale=scale, sub=sub, kernel=kernel)
    out = intra_chunk.intra_chunk_outputs(scores, v)
    return out.reshape(out.shape[0], steps, *out.shape[3:])[:, :length]


def linear_attention_kernel(
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array | None = None,
    *,
    scale: float,
    initial_state: Array | None = None,
    chunk_size: int = 64,
    intra_kernel: bool = False,
    precision: str | None = None,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_attention`` (no segment_ids) as ``o_inter + o_intra``.

    q, k: (B, T, H, dk); v: (B, T, H, dv); log_decay: None, (B, T, H) or (B, T, H, dk);
    initial_state: (B, H, dk, dv); intra_kernel: the per-key intra-chunk scores by the Pallas
    kernel of ``pallas_gpu_intra.py`` instead of XLA (not measured: the op uses XLA's);
    precision: the inter-chunk passes' float32 matmuls (module docstring). Returns ``o`` in v's
    dtype and ``S_T`` float32.
    """
    decay = None if log_decay is None else ("scalar" if log_decay.ndim == 3 else "key")
    widths = (padded_width(q.shape[-1]), padded_width(v.shape[-1]))
    tiling = launch_tiling(decay, q.shape[1], widths, max_chunk=chunk_size, intra=False,
                           itemsize=max(a.dtype.itemsize for a in (q, k, v)))
    lead = [None if a is None else a[None] for a in (q, k, v, log_decay, initial_state)]
    inter, final = gated_linear_attention(*lead[:4], None, lead[4], scale=scale, tiling=tiling,
                                          intra=False, precision=precision)
    intra = intra_chunk_attention(q, k, v, log_decay, scale=scale, chunk=tiling.chunk,
                                  sub=tiling.sub, kernel=intra_kernel)
    return (inter[0].astype(jnp.float32) + intra).astype(v.dtype), final[0]
