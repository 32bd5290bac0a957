"""Where GLA's ``impl="pallas_split"`` time goes: its parts timed apart, beside fla's (issue 24).

    PYTHONPATH=.:/tmp/site:.peers/site XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 500 \\
        python benchmarks/gla_phases.py [--quick] [--shape B T H D] [--parts all|ours|fla]
                                        [--rows TEXT[,TEXT]]

(On an H100 the JAX rows take ~5 minutes together, most of it compiling, and fla's first-call Triton
autotuning ~3 more: one call of 600 s fits ``--parts ours`` or ``--parts fla``, not both.)

Gated linear attention with a decay per key dimension (GLA), ``o_t = scale q_t S_t``,
``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, at (B, T, H, D) = (4, 2048, 16, 128) bf16, chunk
C = 64, scale D^-0.5, on the per-key-decay inputs of
``benchmarks/kernel_cases/chunked_linear_attention.py`` (``attention_inputs(shape, "key")``: q,
k, v normal bf16, g = logsigmoid(normal) float32) with g divided by 16 (GLA's decays: fla's GLA
layer's ``gate_logit_normalizer``; with the case's own, -0.8 a step on average, the terms across
chunks are a few percent of ``o``; the times do not depend on the values). Each JAX part is
jitted alone on inputs already in device memory (the parts' inputs made once beforehand by the
part before them), timed forward (``fwd``) and forward+backward (``fwd+bwd``: the gradients of
``sum(out * cos(arange(last axis)))`` w.r.t. every floating input, the loss returned too,
``kernel_harness.jax_gradients``). With ``G_t`` the chunk-local cumulative log decay
(restarting at every chunk) and ``o = o_inter + o_intra``:

- ``chunk-local cumsum``: ``G_t = sum_{s <= t in t's chunk} g_s``, float32
  (``chunked_vjp._chunk_cumsum``, what the split's custom VJP computes first); ``(Pallas
  kernel)``: the same by ``seqzoo.kernels.chunk_cumsum`` (forward only, as the split's
  ``cumsum_kernel=True`` runs it);
- ``inter-chunk kernel``: the pairs in different chunks, ``o_inter_i = scale (q_i * exp(G_i))
  S_{n-1}`` for i in chunk n, ``S_n = diag(exp(G_C)) S_{n-1} + sum_j (k_j * exp(G_C - G_j))
  v_j^T``: ``pallas_gpu.gated_linear_attention(intra=False)`` at the split's tilings
  (``pallas_gpu_split.kernel_tiling``, the forward at ``forward_tiling``'s where it has its
  own), its ``o_inter`` written in float32 as the split has it
  (an ``extra`` of zeros); fwd+bwd adds the three backward passes (dq, dv, dk) and the decays'
  chunk-local identity;
- ``inter-chunk kernel (intra=False, states pass + outputs)``: its forward as a states pass
  and a chunk-parallel output pass (``chunked_states.states_then_outputs``, fla's structure;
  the split's ``states_forward=True``);
- ``inter-chunk kernel (intra=False, approx exp)``: at the split's launches, the decays'
  exponentials by ``seqzoo.kernels.approx_exp`` (``Tiling.approx_exp``);
- ``inter-chunk kernel (intra=False, ...)``: the same with every pass at one launch
  (``INTER_VARIANTS``: the backward's, ``chunked_tiling.INTER_PER_DIMENSION``, the split's
  launch until its forward took its own; with value blocks of 64, the launch before that; 8
  warps; two stages);
- ``intra scores``: ``A_ij = scale sum_d q_id k_jd exp(G_id - G_jd)`` for ``j <= i`` in one chunk
  (``intra_chunk.intra_chunk_scores``, XLA: sub-chunks of 16 rows through a reference row, the
  diagonal blocks exactly; its own VJP, to q, k and G), on float32 copies of q, k holding bf16
  values, (B, T/C, C, H, D) -> (B, T/C, H, C, C) float32;
- ``intra scores A (Pallas kernel)``: the same scores by the opt-in Pallas kernel
  (``kernel=True``: ``pallas_gpu_intra.py``, what ``intra_kernel=True`` runs; sub-chunk pairs
  below the diagonal as matmuls through the reference rows, the diagonal blocks column by
  column), its forward beside XLA's; fwd+bwd adds XLA's VJP (the kernel has none). Not one of
  the split's parts (the op's own for float32; for bf16 the op runs ``pallas_gpu_intra.MEASURED``,
  the row "2 warps, stored diagonal, VJP kernel"). Its other launches (``SCORES_VARIANTS``,
  ``pallas_gpu_intra.ScoresTiling``), a row each: 8 warps (the diagonal blocks' column loop in
  ptxas: 169 instructions an iteration, 4 shuffles, where 4 warps take 431 to 455, 82
  shuffles); ``per sub-chunk`` (one program per (batch, chunk, head, sub-chunk): 4x the
  programs at C = 64, no register spills where the per-chunk launch spills at 255 registers),
  with 3 pipeline stages, with 8 warps, with the diagonal blocks stored column by column
  (``stored_diagonal``: exp2, 98 instructions an iteration at 8 warps), and that at 2 warps
  and at 1 (fla autotunes its diagonal pass over 1, 2, 4 and 8 warps: a (16, dk) tile is
  small, and a small program leaves room for more of them per multiprocessor); and ``bwd recomputes
  decays`` (XLA's and the last kernel's): the VJP's diagonal decays computed apart for dq and
  dk instead of one tensor shared with the forward (``recompute_decays=True``); ``VJP kernel``:
  dq and dk by ``pallas_gpu_intra_bwd`` (``vjp_kernel=True``), no XLA in the backward but
  ``dG = q dq - k dk``, at 2 warps (``MEASURED``), 8 and 1;
- ``intra A v``: ``o_intra = A v`` per chunk (``intra_chunk.intra_chunk_outputs``, bf16
  operands, float32 result; its VJP ``dA = do v^T``, ``dv = A^T do``);
- ``intra A v (Pallas kernel)``: the same product by ``pallas_gpu_intra_outputs`` (A and v
  read in their own layouts, no transposes; ``ScoresTiling.outputs_kernel``, the split's
  default);
- ``intra terms (scores + A v)``: the two as the split runs them
  (``pallas_gpu_split.intra_chunk_attention``, the kernel's ``extra``), from q, k, v, G;
- ``pallas_split (whole op)``: ``linear_attention(..., impl="pallas_split")``: the cumsum, the
  kernel, the intra terms summed once in float32 (``o = round(o_inter + o_intra)``), one custom
  VJP; for bf16 its scores and their VJP by the kernels (``pallas_gpu_intra.MEASURED``: the
  per-sub-chunk kernel, 2 warps, stored diagonal, the VJP by ``pallas_gpu_intra_bwd``, ``A v``
  by its kernel, one-instruction exponentials; the sums by ``chunk_cumsum``);
  ``pallas_split (whole op, XLA cumsum, XLA A v, libdevice exp)``: without the last three
  (the split's defaults before 2026-12-07);
  ``sum of the split's parts``: cumsum + kernel + XLA's scores + A v (XLA fuses across parts in
  the whole op, and the whole rounds once: the sum is not the whole's time);
- ``pallas_split (whole op, XLA scores)``: ``pallas_gpu_split.linear_attention_kernel`` with
  ``intra_kernel=False`` (the op's form before the kernels were its default), timed with the
  parts;
- ``pallas (one pass)``: ``impl="pallas"``, the kernel with its intra-chunk terms inside, for
  reference.

When fla imports (``fla.ops.gla``, 0.6.0's internals), on the same values as torch tensors, chunk
64, timed by ``kernel_harness.median_ms`` as ``benchmarks/kernels.py`` times fla (queued calls,
then ``torch.cuda.synchronize``): ``fla chunk_gla`` whole (fwd, fwd+bwd through autograd, and
its backward alone, ``chunk_gla_bwd`` from the forward's residuals), and its pieces:
``chunk_local_cumsum`` (G in log2 units), ``chunk_fwd_h`` (the state entering every chunk, bf16,
written out), ``chunk_gla_fwd_intra_gk`` (A, float32), ``chunk_gla_fwd_o_gk``
(``o = scale (q * exp(G)) h + A v``), then the backward's ``chunk_fwd_h`` (recomputed, float32
states), ``chunk_bwd_dh``, ``chunk_gla_bwd_dv``, ``chunk_gla_bwd_dA``,
``chunk_gla_bwd_dqk_intra`` and ``chunk_gla_bwd_dqkg``. A piece that does not run (another
signature) prints its error in its row; the rest go on. ``sum of fla's pieces``: the forward
pieces' and the backward pieces' times summed (against the whole's fwd and bwd alone).

Prints a markdown table, one row per part as it is timed (ms; "-": not timed for that pass).
``--parts ours`` times only the JAX parts, ``--parts fla`` only fla's (its Triton autotuning
takes minutes on a first call: a GPU call with too little time for both gets one of them whole).
``--rows``: only the JAX parts whose name contains one of the comma-separated texts (each row
compiles apart: a call can time the rows it needs).
``--quick``: (1, 64, 2, 16), chunk 32, few repeats, fla skipped: on a CPU the kernels run in
Pallas interpret mode (``seqzoo.kernels.launch``), the times are no claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from kernel_cases.chunked_linear_attention import attention_inputs  # noqa: E402
from kernel_harness import jax_gradients, median_ms, torch_variant  # noqa: E402

from seqzoo.kernels import chunked_vjp  # noqa: E402
from seqzoo.kernels.chunk_cumsum import chunk_cumsum  # noqa: E402
from seqzoo.kernels.chunked_states import states_then_outputs  # noqa: E402
from seqzoo.kernels.chunked_tiling import padded_width  # noqa: E402
from seqzoo.ops.linear_attention import intra_chunk, linear_attention, pallas_gpu_split  # noqa: E402
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention  # noqa: E402
from seqzoo.ops.linear_attention.pallas_gpu_intra import MEASURED, ScoresTiling  # noqa: E402

SHAPE = (4, 2048, 16, 128)
QUICK_SHAPE = (1, 64, 2, 16)
CHUNK, QUICK_CHUNK = 64, 32
FLA_CHUNK = 64  # chunk_gla's own: min(64, next power of two of T)
MODES = ("fwd", "fwd+bwd", "bwd")
DECAY_DIVISOR = 16.0  # GLA's gate_logit_normalizer: g = logsigmoid(x) / 16
F32 = jnp.float32

Parts = dict[str, dict[str, Callable[[], object]]]


def cos_cotangent(shape, dtype=F32):
    """``cos(arange(last axis))`` broadcast to ``shape``, materialized (a jitted function's
    argument, never a folded constant)."""
    return jnp.broadcast_to(jnp.cos(jnp.arange(shape[-1], dtype=F32)), shape).astype(dtype)


def _zero_terms(q, k, v, cum):
    """The kernel's ``extra`` for the inter-chunk part alone: no terms, but ``o_inter`` written in
    float32 as in the split (``chunked_vjp``: an ``extra`` widens the pass's output)."""
    del q, k, cum
    return jnp.zeros_like(v)


def split_tiling(shape, chunk: int, dtype=jnp.bfloat16):
    """The tiling ``pallas_gpu_split.linear_attention_kernel`` runs its kernel at for GLA inputs
    of ``shape`` (B, T, H, D) in ``dtype`` (``pallas_gpu_split.kernel_tiling``)."""
    qkv = jax.ShapeDtypeStruct(tuple(shape), dtype)
    return pallas_gpu_split.kernel_tiling(qkv, qkv, qkv, jax.ShapeDtypeStruct(tuple(shape), F32),
                                          chunk)


def gla_inputs(shape, dtype=jnp.bfloat16):
    """q, k, v (B, T, H, D) in ``dtype`` and g (B, T, H, D) float32: the kernel case's, g divided
    by ``DECAY_DIVISOR``."""
    q, k, v, g, _ = attention_inputs(tuple(shape), "key", dtype)
    return q, k, v, g / DECAY_DIVISOR


# The scores' other variants, a row each: ``intra_chunk.intra_chunk_scores``'s keyword arguments
_STORED = ScoresTiling(per_sub_chunk=True, stored_diagonal=True)  # XLA's VJP
SCORES_VARIANTS = {
    "intra scores A (Pallas kernel)": dict(kernel=True),
    "intra scores A (Pallas kernel, 8 warps)": dict(kernel=ScoresTiling(num_warps=8)),
    "intra scores A (Pallas kernel, per sub-chunk)": dict(
        kernel=ScoresTiling(per_sub_chunk=True)),
    "intra scores A (Pallas kernel, per sub-chunk, 3 stages)": dict(
        kernel=ScoresTiling(per_sub_chunk=True, num_stages=3)),
    "intra scores A (Pallas kernel, per sub-chunk, 8 warps)": dict(
        kernel=ScoresTiling(per_sub_chunk=True, num_warps=8)),
    "intra scores A (Pallas kernel, per sub-chunk, 8 warps, stored diagonal)": dict(
        kernel=dataclasses.replace(_STORED, num_warps=8)),
    "intra scores A (XLA, bwd recomputes decays)": dict(recompute_decays=True),
    "intra scores A (Pallas kernel, per sub-chunk, 8 warps, stored diagonal, bwd recomputes "
    "decays)": dict(kernel=dataclasses.replace(_STORED, num_warps=8), recompute_decays=True),
    "intra scores A (Pallas kernel, per sub-chunk, 2 warps, stored diagonal)": dict(
        kernel=dataclasses.replace(_STORED, num_warps=2)),
    "intra scores A (Pallas kernel, per sub-chunk, 1 warp, stored diagonal)": dict(
        kernel=dataclasses.replace(_STORED, num_warps=1)),
    "intra scores A (Pallas kernel, per sub-chunk, 2 warps, stored diagonal, VJP kernel)": dict(
        kernel=MEASURED),
    "intra scores A (Pallas kernel, per sub-chunk, 8 warps, stored diagonal, VJP kernel)": dict(
        kernel=dataclasses.replace(MEASURED, num_warps=8)),
    "intra scores A (Pallas kernel, per sub-chunk, 1 warp, stored diagonal, VJP kernel)": dict(
        kernel=dataclasses.replace(MEASURED, num_warps=1)),
}
# The inter-chunk kernel at other launches, a row each: ``Tiling`` fields replaced in the split's.
# The split's launch (value blocks of 32) runs B * H * (D / 32) = 256 programs at
# (4, 2048, 16, 128), two per multiprocessor of an H100; value blocks of 64 run one each (the
# launch until 2026-12-07: 1.620 against 1.523 ms forward+backward); 8 warps (forward 0.395
# against 0.440 ms at blocks of 64) or two stages (three asked for more shared memory than an
# H100 has) hide more of one program's latency instead.
INTER_VARIANTS = {
    "inter-chunk kernel (intra=False, states pass + outputs)": dict(
        forward_run=states_then_outputs),
    "inter-chunk kernel (intra=False, one launch)": {},
    "inter-chunk kernel (intra=False, block_v 64)": dict(block_v=64),
    "inter-chunk kernel (intra=False, 8 warps)": dict(num_warps=8),
    "inter-chunk kernel (intra=False, 2 stages)": dict(num_stages=2),
}
# The inter-chunk kernel at the split's launches, its decays by ``seqzoo.kernels.approx_exp``.
APPROX_INTER = "inter-chunk kernel (intra=False, approx exp)"
SPLIT_PARTS = ("chunk-local cumsum", "inter-chunk kernel (intra=False)",
               "intra scores A (XLA, per key)", "intra A v")


def jax_parts(shape, chunk: int = CHUNK, dtype=jnp.bfloat16) -> Parts:
    """Part name -> {mode: a function of no arguments running that part once (jitted, inputs
    bound)}. The forward functions return: the chunk-local cumsum (1, B, T, H, D) float32, the
    inter-chunk kernel's ``o_inter`` (B, T, H, D) in ``dtype`` (float32 before that rounding),
    the scores (B, N, H, C, C) float32, ``A v`` (B, N, C, H, D) float32, the intra terms
    (1, B, T, H, D) float32, and the whole ops' ``o`` (B, T, H, D)."""
    b, t, h, d = shape
    q, k, v, g = gla_inputs(shape, dtype)
    tiling = split_tiling(shape, chunk, dtype)
    c, sub = tiling.chunk, tiling.sub
    if t % c or padded_width(d) != d:
        raise ValueError(f"T a multiple of the chunk ({c}) and D a power of two >= 16: {shape}")
    n = t // c
    scale = d**-0.5
    o_ct = cos_cotangent((b, t, h, d))
    parts: Parts = {}

    def add(name, fn, args, cotangent):
        parts[name] = {"fwd": functools.partial(jax.jit(fn), *args),
                       "fwd+bwd": jax_gradients(fn, args, cotangent)}

    def cumsum(g):
        return chunked_vjp._chunk_cumsum(g[None], c)

    cum = jax.jit(cumsum)(g)  # (1, B, T, H, D) float32, as the split's custom VJP has it
    add("chunk-local cumsum", cumsum, (g,), cos_cotangent(cum.shape))
    parts["chunk-local cumsum (Pallas kernel)"] = {"fwd": functools.partial(
        jax.jit(lambda g: chunk_cumsum(g[None], c)), g)}

    def inter_with(launch, forward=None, forward_run=None):
        def inter(q, k, v, g):
            lead = [a[None] for a in (q, k, v, g)]
            return gated_linear_attention(*lead, None, None, scale=scale, tiling=launch,
                                          intra=False, extra=_zero_terms,
                                          forward_tiling=forward, forward_run=forward_run)[0][0]
        return inter

    forward = pallas_gpu_split.forward_tiling(q, k, v, g)
    add("inter-chunk kernel (intra=False)", inter_with(tiling, forward), (q, k, v, g), o_ct)
    for name, fields in INTER_VARIANTS.items():
        run = fields.get("forward_run")
        launch = dataclasses.replace(
            tiling, **{f: x for f, x in fields.items() if f != "forward_run"})
        add(name, inter_with(launch, forward if run else None, run), (q, k, v, g), o_ct)
    approx = functools.partial(dataclasses.replace, approx_exp=True)
    add(APPROX_INTER, inter_with(approx(tiling), forward and approx(forward)), (q, k, v, g), o_ct)

    # The intra terms' inputs as the split hands them over: float32 copies holding dtype's values
    qf, kf, vf = (a.astype(F32) for a in (q, k, v))
    qc, kc, vc = (a.reshape(b, n, c, h, d) for a in (qf, kf, vf))
    cum_c = cum.reshape(b, n, c, h, d)

    def scores_with(**options):
        def scores(q, k, cum):
            return intra_chunk.intra_chunk_scores(q, k, cum, scale=scale, sub=sub, dtype=dtype,
                                                  **options)
        return scores

    scores = scores_with()  # XLA's, what the split runs for float32
    try:
        a = jax.jit(scores)(qc, kc, cum_c)
    except Exception as exc:  # (A v is still timed, on zeros)
        print(f"intra scores failed ({type(exc).__name__}: {exc}); A v timed on zeros",
              flush=True)
        a = jnp.zeros((b, n, h, c, c), F32)
    add("intra scores A (XLA, per key)", scores, (qc, kc, cum_c), cos_cotangent(a.shape))

    for name, options in SCORES_VARIANTS.items():
        add(name, scores_with(**options), (qc, kc, cum_c), cos_cotangent(a.shape))

    def a_v(a, v):
        return intra_chunk.intra_chunk_outputs(a, v, dtype)

    add("intra A v", a_v, (a, vc), cos_cotangent(vc.shape))

    def a_v_kernel(a, v):
        return intra_chunk.intra_chunk_outputs(a, v, dtype, kernel=True)

    add("intra A v (Pallas kernel)", a_v_kernel, (a, vc), cos_cotangent(vc.shape))

    def intra_terms(q, k, v, cum):
        return pallas_gpu_split.intra_chunk_attention(q, k, v, cum, scale=scale, chunk=c,
                                                      sub=sub, dtype=dtype)

    add("intra terms (scores + A v)", intra_terms, (qf[None], kf[None], vf[None], cum),
        cos_cotangent((1, b, t, h, d)))

    def op(impl):
        def fn(q, k, v, g):
            return linear_attention(q, k, v, log_decay=g, chunk_size=chunk, impl=impl)
        return fn

    add("pallas_split (whole op)", op("pallas_split"), (q, k, v, g), o_ct)

    def split_with_xla_scores(q, k, v, g):
        return pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=scale, chunk_size=chunk,
                                                        intra_kernel=False)[0]

    add("pallas_split (whole op, XLA scores)", split_with_xla_scores, (q, k, v, g), o_ct)

    def split_without_s23(q, k, v, g):
        tiling = dataclasses.replace(MEASURED, outputs_kernel=False, approx_exp=False)
        return pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=scale, chunk_size=chunk,
                                                        intra_kernel=tiling,
                                                        cumsum_kernel=False)[0]

    add("pallas_split (whole op, XLA cumsum, XLA A v, libdevice exp)", split_without_s23,
        (q, k, v, g), o_ct)
    add("pallas (one pass, reference)", op("pallas"), (q, k, v, g), o_ct)
    return parts


def fla_parts(shape) -> Parts:
    """fla's ``chunk_gla`` whole and its 0.6.0 pieces on the same values (module docstring);
    {} where fla does not import. A piece whose inputs could not be made raises when run."""
    try:
        import fla  # noqa: F401
        import torch
        from fla.ops.gla import chunk_gla
    except ImportError:
        return {}
    q, k, v, g = gla_inputs(shape)
    b, t, h, d = shape
    scale = d**-0.5

    def tensor(a, grad=False):
        return torch.from_dlpack(a).clone().requires_grad_(grad)

    qt, kt, vt, gt = (tensor(a) for a in (q, k, v, g))
    do = tensor(cos_cotangent((b, t, h, d), jnp.bfloat16))
    leaves = [tensor(a, True) for a in (q, k, v, g)]

    def whole(q, k, v, g):
        return chunk_gla(q, k, v, g, scale)[0]

    parts: Parts = {"fla chunk_gla (whole)": {
        "fwd": torch_variant(whole, [qt, kt, vt, gt], do, "fwd"),
        "fwd+bwd": torch_variant(whole, leaves, do, "fwd+bwd")}}

    made: dict = {}

    def step(name, mode, make):
        """Run ``make`` once now (its outputs feed later pieces); the part re-runs it."""
        try:
            made[name] = make()
        except Exception as exc:  # (another fla: reported in the row)
            error = f"{type(exc).__name__}: {exc}"

            def failed(error=error):
                raise RuntimeError(error)

            parts.setdefault(name, {})[mode] = failed
            return
        parts.setdefault(name, {})[mode] = make

    try:
        import fla.ops.gla.chunk as gla_chunk
        from fla.ops.common.chunk_h import chunk_bwd_dh, chunk_fwd_h
        from fla.ops.utils.cumsum import chunk_local_cumsum
    except ImportError as exc:
        print(f"fla's pieces do not import ({exc}); chunk_gla whole only", flush=True)
        return parts
    try:
        from fla.ops.utils.constant import RCP_LN2
    except ImportError:
        RCP_LN2 = 1 / math.log(2)
    bt = FLA_CHUNK

    def get(name):
        return made[name]

    step("fla fwd: chunk_local_cumsum (G, log2)", "fwd",
         lambda: chunk_local_cumsum(gt, bt, scale=RCP_LN2))
    gc = made.get("fla fwd: chunk_local_cumsum (G, log2)")
    step("fla fwd: chunk_fwd_h (states)", "fwd", lambda: chunk_fwd_h(
        k=kt, v=vt, g=None, gk=gc, gv=None, h0=None, output_final_state=False,
        chunk_size=bt, states_in_fp32=False)[0])
    step("fla fwd: chunk_gla_fwd_intra_gk (A)", "fwd", lambda: gla_chunk.chunk_gla_fwd_intra_gk(
        q=qt, k=kt, g=gc, scale=scale, chunk_size=bt))
    step("fla fwd: chunk_gla_fwd_o_gk (o)", "fwd", lambda: gla_chunk.chunk_gla_fwd_o_gk(
        q=qt, v=vt, g=gc, A=get("fla fwd: chunk_gla_fwd_intra_gk (A)"),
        h=get("fla fwd: chunk_fwd_h (states)"), scale=scale, chunk_size=bt))
    step("fla chunk_gla (whole)", "bwd", lambda: gla_chunk.chunk_gla_bwd(
        q=qt, k=kt, v=vt, g=None, g_cumsum=gc, scale=scale, initial_state=None, h=None,
        A=get("fla fwd: chunk_gla_fwd_intra_gk (A)"), do=do, dht=None, chunk_size=bt))
    step("fla bwd: chunk_fwd_h (states, fp32)", "bwd", lambda: chunk_fwd_h(
        k=kt, v=vt, g=None, gk=gc, gv=None, h0=None, output_final_state=False,
        chunk_size=bt, states_in_fp32=True)[0])
    step("fla bwd: chunk_bwd_dh (dh)", "bwd", lambda: chunk_bwd_dh(
        q=qt, k=kt, v=vt, g=None, gk=gc, gv=None, do=do, h0=None, dht=None, scale=scale,
        chunk_size=bt, states_in_fp32=True)[0])
    step("fla bwd: chunk_gla_bwd_dv (dv)", "bwd", lambda: gla_chunk.chunk_gla_bwd_dv(
        k=kt, g=gc, A=get("fla fwd: chunk_gla_fwd_intra_gk (A)"), do=do,
        dh=get("fla bwd: chunk_bwd_dh (dh)"), chunk_size=bt))
    step("fla bwd: chunk_gla_bwd_dA (dA)", "bwd", lambda: gla_chunk.chunk_gla_bwd_dA(
        v=vt, do=do, scale=scale, chunk_size=bt))
    step("fla bwd: chunk_gla_bwd_dqk_intra (dq, dk in)", "bwd",
         lambda: gla_chunk.chunk_gla_bwd_dqk_intra(
             q=qt, k=kt, g=gc, dA=get("fla bwd: chunk_gla_bwd_dA (dA)"), chunk_size=bt))
    step("fla bwd: chunk_gla_bwd_dqkg (dq, dk, dg)", "bwd", lambda: gla_chunk.chunk_gla_bwd_dqkg(
        q=qt, k=kt, v=vt, h=get("fla bwd: chunk_fwd_h (states, fp32)"), g=gc, do=do,
        dh=get("fla bwd: chunk_bwd_dh (dh)"),
        dq=get("fla bwd: chunk_gla_bwd_dqk_intra (dq, dk in)")[0],
        dk=get("fla bwd: chunk_gla_bwd_dqk_intra (dq, dk in)")[1], scale=scale,
        chunk_size=bt))
    return parts


def _cell(ms) -> str:
    return "-" if ms is None else (ms if isinstance(ms, str) else f"{ms:.3f}")


def time_parts(parts: Parts, repeats: int, calls: int, timed: dict) -> None:
    """Time every part's modes into ``timed`` (name -> {mode: ms or an error}), printing a row
    per part as it goes."""
    for name, modes in parts.items():
        row = {}
        for mode in MODES:
            if mode not in modes:
                continue
            try:
                row[mode] = median_ms(modes[mode], repeats=repeats, calls=calls)
            except Exception as exc:  # (one part's failure stops nothing)
                row[mode] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        timed[name] = row
        print(f"| {name} | " + " | ".join(_cell(row.get(m)) for m in MODES) + " |", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny shape, few repeats, no fla (CPU, interpret mode)")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("B", "T", "H", "D"))
    parser.add_argument("--parts", choices=("all", "ours", "fla"), default="all",
                        help="the JAX parts, fla's, or both (default)")
    parser.add_argument("--rows", help="only the JAX parts whose name contains one of these "
                        "comma-separated texts")
    args = parser.parse_args(argv)
    shape = tuple(args.shape or (QUICK_SHAPE if args.quick else SHAPE))
    chunk = QUICK_CHUNK if args.quick else CHUNK
    repeats, calls = (1, 1) if args.quick else (5, 10)
    device = jax.devices()[0]
    tiling = split_tiling(shape, chunk)
    print(f"# GLA (per-key decay) {shape} bf16, chunk {tiling.chunk} (sub {tiling.sub}), "
          f"{device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    print("| part | fwd ms | fwd+bwd ms | bwd alone ms |\n|---|---|---|---|", flush=True)
    timed: dict = {}
    if args.parts != "fla":
        time_ours(shape, chunk, repeats, calls, timed,
                  rows=None if args.rows is None else args.rows.split(","))
    if args.parts != "ours" and not args.quick:
        time_fla(shape, repeats, calls, timed)
    return timed


def time_ours(shape, chunk: int, repeats: int, calls: int, timed: dict,
              rows: list[str] | None = None) -> None:
    """Time the JAX parts (those whose name contains one of ``rows``' texts; all when None),
    then the split whole, the sum of its parts and the one-pass op."""
    try:
        parts = jax_parts(shape, chunk)
    except Exception:
        traceback.print_exc()
        parts = {}
    if rows is not None:
        parts = {name: modes for name, modes in parts.items() if any(t in name for t in rows)}
    whole = {name: parts.pop(name) for name in ("pallas_split (whole op)",
                                                "pallas (one pass, reference)") if name in parts}
    time_parts(parts, repeats, calls, timed)
    time_parts({"pallas_split (whole op)": whole["pallas_split (whole op)"]}
               if "pallas_split (whole op)" in whole else {}, repeats, calls, timed)
    sums = {}
    for mode in ("fwd", "fwd+bwd"):
        values = [timed.get(name, {}).get(mode) for name in SPLIT_PARTS]
        if all(isinstance(x, float) for x in values):
            sums[mode] = sum(values)
    if sums:
        timed["sum of the split's parts"] = sums
        print("| sum of the split's parts (cumsum + kernel + scores + A v) | "
              + " | ".join(_cell(sums.get(m)) for m in MODES) + " |", flush=True)
    time_parts({k: v for k, v in whole.items() if k != "pallas_split (whole op)"}, repeats,
               calls, timed)


def time_fla(shape, repeats: int, calls: int, timed: dict) -> None:
    """Time fla's whole ``chunk_gla`` and its pieces, then the sums of its pieces."""
    try:
        fla = fla_parts(shape)
    except Exception:
        traceback.print_exc()
        fla = {}
    if not fla:
        print("(fla not importable or its inputs failed: no fla rows)", flush=True)
    time_parts(fla, repeats, calls, timed)
    sums = {}
    for mode, prefix in (("fwd", "fla fwd:"), ("bwd", "fla bwd:")):
        values = [row.get(mode) for name, row in timed.items() if name.startswith(prefix)]
        if values and all(isinstance(x, float) for x in values):
            sums[mode] = sum(values)
    if sums:
        timed["sum of fla's pieces"] = sums
        print("| sum of fla's pieces | " + " | ".join(_cell(sums.get(m)) for m in MODES)
              + " |", flush=True)


if __name__ == "__main__":
    main()
