"""Based's linear attention in closed form as one fused (flash-style) Pallas GPU kernel: the
fused form of ``taylor_parallel.py``, which it equals, without its ``(T, T)`` scores in memory.

    s_ij = q_i . k_j / sqrt(d)        p_ij = (1 + s_ij + s_ij^2 / 2) [j <= i, j live, same segment]
    o_i  = scale * sum_j p_ij v_j

Shapes and dtypes as ``taylor_parallel``: q, k ``(B, T, H, d)`` of one dtype; v
``(B, T, H, dv)``; mask ``(B, T)`` bool (False: the key adds nothing, its constant term
included); ``segment_ids`` ``(B, T)`` or None (no pair across a change of id;
``taylor_parallel.pair_ids``). Returns
``(B, T, H, dv)`` in v's dtype. Matmul operands are in the inputs' dtype (bf16 on tensor cores;
float32 at ``precision``: "highest" IEEE, "tf32x3" (the default) or "tf32" on tensor cores, as
the chunked kernels' ``seqzoo.kernels.matmul_precision``), accumulation float32; ``p`` is
computed in float32 and rounded to v's dtype before ``p @ v`` (as the XLA form rounds it); ``s``
and ``dp`` stay float32, ``ds`` is rounded to the inputs' dtype for the matmuls of dq and dk.

Layout: one program per (batch, head, block of ``BLOCK`` rows; fewer, a power of two >= 16,
for a shorter sequence), reading q, k, v in place from
``(B, T, H, width)``: T zero-padded to a multiple of the block, d and dv zero-padded to powers
of two >= 16 (``chunked_tiling.padded_width``: Triton's tiles), keys past T dead.

    forward, query block i:  acc = sum_{key blocks j <= i} p_ij v_j       o_i = scale acc
    backward, key block j:   dv_j = scale sum_{i >= j} p_ij^T do_i
                             dk_j = sum_{i >= j} ds_ij^T q_i / sqrt(d)
    backward, query block i: dq_i = sum_{j <= i} ds_ij k_j / sqrt(d)
    with dp_ij = scale do_i v_j^T,  ds_ij = dp_ij (1 + s_ij) [pair live]

Nothing sequence-squared is kept: the backward pass (``custom_vjp``) keeps q, k, v (padded)
and the ``(B, T)`` pair ids (mask and segment ids) and recomputes ``s`` block by block, in two
kernels (dk and dv over key blocks, dq over query blocks: Pallas Triton has no atomics for
one). Block sizes (``BLOCK`` rows and columns, ``NUM_WARPS``, ``NUM_STAGES``) are first
guesses, not tuned.

Checked in interpret mode on a CPU (``tests/test_ops_taylor_pallas_gpu.py``) against
``taylor_parallel``: float32 to ~1e-7 relative, outputs and each gradient; bf16 against the
float32 XLA form within 1.01x of the XLA form's own bf16 error (3.4e-3 .. 4.1e-3 at
(2, 300, 2, 16, 17)). Lowered for CUDA on the CPU (Triton IR) in the tests; on an H100 (bf16,
lengths 64 to 4096) its error equals the XLA form's and fla's (2.8e-3) and it is faster than
both (``benchmarks/RESULTS.md``, "Based's Taylor kernel fused on a GPU").

``featured_linear_attention(..., feature_map="taylor", impl="pallas")`` runs it on a GPU, and
``"auto"`` for 16-bit inputs (``seqzoo.ops.dispatch``: the closed form's ``pallas`` rules); in
float32 (timed at IEEE precision only, where it is slower than the XLA closed form) ``"auto"``
keeps the XLA form; its 3xTF32 default is not timed yet.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_tiling import padded_width
from seqzoo.kernels.matmul_precision import dot_precision, resolve_precision
from seqzoo.ops.linear_attention.taylor_parallel import pair_ids, score_scale, taylor_kernel

Array = jax.Array
_F32 = jnp.float32
BLOCK = 64  # rows of a query block and of a key block
NUM_WARPS = 4
NUM_STAGES = 2


def _dot(a: Array, b: Array, precision: str, *, transpose_b: bool = False) -> Array:
    """``a @ b`` (or ``a @ b^T``) in the operands' dtype, float32 accumulation; float32
    operands at ``precision`` (resolved: "highest", "tf32x3" or "tf32")."""
    dims = (((1,), (1 if transpose_b else 0,)), ((), ()))
    preset = dot_precision(precision) if a.dtype == _F32 else None
    return lax.dot_general(a, b, dims, precision=preset, preferred_element_type=_F32)


def _live(query_ids, key_ids, query_pos, key_pos) -> Array:
    """Whether each (query, key) pair is live (``taylor_parallel.pair_ids``); the arguments
    broadcast to the scores' shape."""
    return (key_pos <= query_pos) & (key_ids == query_ids)


def _positions(block: int, start) -> Array:
    return start + lax.iota(jnp.int32, block)


def _forward_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, *, d: int, scale: float,
                    precision: str):
    """o of query block i: its scores against every key block j <= i."""
    block = q_ref.shape[0]
    i = pl.program_id(2)
    q, query_ids, rows = q_ref[...], qid_ref[...][:, None], _positions(block, i * block)[:, None]

    def body(j, acc):
        keys = pl.ds(j * block, block)
        s = _dot(q, k_ref[keys, :], precision, transpose_b=True) * score_scale(d)
        live = _live(query_ids, kid_ref[keys][None, :], rows, _positions(block, j * block)[None])
        p = jnp.where(live, taylor_kernel(s), 0.0).astype(v_ref.dtype)
        return acc + _dot(p, v_ref[keys, :], precision)

    acc = lax.fori_loop(0, i + 1, body, jnp.zeros(o_ref.shape, _F32))
    o_ref[...] = (scale * acc).astype(o_ref.dtype)


def _key_kernel(q_ref, k_ref, v_ref, do_ref, qid_ref, kid_ref, dk_ref, dv_ref, *, d: int,
                scale: float, precision: str):
    """dk, dv of key block j: its transposed scores ``s^T`` against every query block i >= j."""
    block = k_ref.shape[0]
    j, blocks = pl.program_id(2), q_ref.shape[0] // block
    k, v = k_ref[...], v_ref[...]
    key_ids, cols = kid_ref[...][:, None], _positions(block, j * block)[:, None]

    def body(i, carry):
        dk, dv = carry
        queries = pl.ds(i * block, block)
        q, do = q_ref[queries, :], do_ref[queries, :]
        s_t = _dot(k, q, precision, transpose_b=True) * score_scale(d)
        live_t = _live(qid_ref[queries][None, :], key_ids, _positions(block, i * block)[None],
                       cols)
        p_t = jnp.where(live_t, taylor_kernel(s_t), 0.0).astype(do.dtype)
        dp_t = scale * _dot(v, do, precision, transpose_b=True)
        ds_t = jnp.where(live_t, dp_t * (1.0 + s_t), 0.0).astype(q.dtype)
        return dk + _dot(ds_t, q, precision), dv + _dot(p_t, do, precision)

    zeros = (jnp.zeros(dk_ref.shape, _F32), jnp.zeros(dv_ref.shape, _F32))
    dk, dv = lax.fori_loop(j, blocks, body, zeros)
    dk_ref[...] = (score_scale(d) * dk).astype(dk_ref.dtype)
    dv_ref[...] = (scale * dv).astype(dv_ref.dtype)


def _query_kernel(q_ref, k_ref, v_ref, do_ref, qid_ref, kid_ref, dq_ref, *, d: int,
                  scale: float, precision: str):
    """dq of query block i: its scores against every key block j <= i."""
    block = q_ref.shape[0]
    i = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    query_ids, rows = qid_ref[...][:, None], _positions(block, i * block)[:, None]

    def body(j, dq):
        keys = pl.ds(j * block, block)
        k = k_ref[keys, :]
        s = _dot(q, k, precision, transpose_b=True) * score_scale(d)
        live = _live(query_ids, kid_ref[keys][None, :], rows, _positions(block, j * block)[None])
        dp = scale * _dot(do, v_ref[keys, :], precision, transpose_b=True)
        ds = jnp.where(live, dp * (1.0 + s), 0.0).astype(q.dtype)
        return dq + _dot(ds, k, precision)

    dq = lax.fori_loop(0, i + 1, body, jnp.zeros(dq_ref.shape, _F32))
    dq_ref[...] = (score_scale(d) * dq).astype(dq_ref.dtype)


def _call(kernel, inputs, outputs, *, block: int, d: int, scale: float, precision: str,
          name: str):
    """One launch over the grid ``(B, H, T / block)``. ``inputs``, ``outputs``: ``(array or
    ShapeDtypeStruct, whole)`` pairs of ``(B, T, H, w)`` arrays or ``(B, T)`` ids, read a block
    of ``block`` rows at a time, or ``whole`` (every row of the program's batch and head)."""
    b, t, h, _ = inputs[0][0].shape

    def spec(x, whole):
        rows = t if whole else block
        if x.ndim == 2:
            return pl.BlockSpec((None, rows), lambda i, m, n: (i, 0 if whole else n))
        return pl.BlockSpec((None, rows, None, x.shape[-1]),
                            lambda i, m, n: (i, 0 if whole else n, m, 0))

    call = launch.pallas_call(
        functools.partial(kernel, d=d, scale=scale, precision=precision),
        grid=(b, h, t // block),
        in_specs=[spec(x, whole) for x, whole in inputs],
        out_specs=[spec(x, whole) for x, whole in outputs],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x, _ in outputs],
        num_warps=NUM_WARPS, num_stages=NUM_STAGES, name=name)
    return call(*(x for x, _ in inputs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _fused(q, k, v, query_ids, key_ids, block: int, d: int, scale: float,
           precision: str) -> Array:
    """``o`` on the padded inputs (``taylor_pallas_gpu``)."""
    (o,) = _call(_forward_kernel, [(q, False), (k, True), (v, True), (query_ids, False),
                                   (key_ids, True)], [(v, False)],
                 block=block, d=d, scale=scale, precision=precision, name="taylor_forward")
    return o


def _fused_forward(q, k, v, query_ids, key_ids, block, d, scale, precision):
    o = _fused(q, k, v, query_ids, key_ids, block, d, scale, precision)
    return o, (q, k, v, query_ids, key_ids)


def _fused_backward(block, d, scale, precision, saved, do):
    q, k, v, query_ids, key_ids = saved
    options = dict(block=block, d=d, scale=scale, precision=precision)
    dk, dv = _call(_key_kernel, [(q, True), (k, False), (v, False), (do, True),
                                 (query_ids, True), (key_ids, False)], [(k, False), (v, False)],
                   name="taylor_backward_keys", **options)
    (dq,) = _call(_query_kernel, [(q, False), (k, True), (v, True), (do, False),
                                  (query_ids, False), (key_ids, True)], [(q, False)],
                  name="taylor_backward_queries", **options)
    return dq, dk, dv, None, None


_fused.defvjp(_fused_forward, _fused_backward)


def taylor_pallas_gpu(q: Array, k: Array, v: Array, mask: Array,
                      segment_ids: Array | None = None, *, scale: float,
                      precision: str | None = None) -> Array:
    """``o``: ``(batch, length, heads, dv)`` in v's dtype, ``taylor_parallel``'s (module
    docstring), differentiable in q, k and v. ``precision``: of float32 matmuls
    (``seqzoo.kernels.matmul_precision.resolve_precision``; bf16 inputs ignore it)."""
    precision = resolve_precision(precision)
    t, d, dv = q.shape[1], q.shape[-1], v.shape[-1]
    block = min(BLOCK, padded_width(t))
    rows = -(-t // block) * block - t

    def padded(x, width):
        return jnp.pad(x, [(0, 0), (0, rows), (0, 0), (0, width - x.shape[-1])])

    query_ids, key_ids = pair_ids(mask, segment_ids)
    o = _fused(padded(q, padded_width(d)), padded(k, padded_width(d)), padded(v, padded_width(dv)),
               jnp.pad(query_ids, [(0, 0), (0, rows)]),
               jnp.pad(key_ids, [(0, 0), (0, rows)], constant_values=-1),  # keys past T: dead
               block, d, float(scale), precision)
    return o[:, :t, :, :dv]
