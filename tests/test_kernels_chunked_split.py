"""``impl="pallas_split"`` of linear attention (issue 24): the chunked kernel's inter-chunk-only
mode and the intra-chunk scores in XLA, each against a dense reference that owes them nothing,
then their sum against the XLA op; Pallas in interpret mode on CPU, lowered for a GPU too.

The dense reference sums ``scale sum_d q_id k_jd exp(G_id - G_jd) v_j`` over the (i, j) pairs
it is given (all causal ones, those in different chunks, or those within one chunk) with the
full-sequence cumulative decay G, masked before the ``exp``, and differentiates by autodiff.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpu_lowering import dot_precisions, triton_modules

from seqzoo.kernels import chunked_tiling, launch
from seqzoo.kernels.chunked_pass import Tiling, chunked_pass
from seqzoo.ops.dispatch import resolve
from seqzoo.ops.linear_attention import (
    intra_chunk,
    linear_attention,
    pallas_gpu,
    pallas_gpu_intra,
    pallas_gpu_intra_bwd,
    pallas_gpu_intra_outputs,
    pallas_gpu_split,
)
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention

F32_TOL = 1e-5  # relative L2, outputs and every gradient (float32 matmuls at IEEE precision)


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(got).all()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def assert_each_close(got: dict, want: dict, tol: float) -> None:
    errors = {name: rel(got[name], want[name]) for name in want}
    assert max(errors.values()) < tol, errors


def inputs(decay, t, d=16, strength=1.0, seed=0):
    """q, k, v (1, t, 2, d), log decays <= 0 (None, per head or per key), S_0 (1, 2, d, d)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    q, k, v = normal(1, t, 2, d), normal(1, t, 2, d), normal(1, t, 2, d)
    shape = {None: None, "head": (1, t, 2), "key": (1, t, 2, d)}[decay]
    g = None if shape is None else -strength * jax.nn.softplus(normal(*shape))
    return dict(q=q, k=k, v=v, g=g, s0=normal(1, 2, d, d)), normal(1, t, 2, d)


def dense(q, k, v, g, s0, *, scale, pairs):
    """``(o, S_T)`` over the causal pairs where ``pairs(i, j)`` holds (a (T, T) bool mask),
    plus the initial state's term."""
    t = q.shape[1]
    full = jnp.zeros(q.shape) if g is None else jnp.broadcast_to(
        g[..., None] if g.ndim == 3 else g, q.shape)
    cum = jnp.cumsum(full, axis=1)  # (B, T, H, dk)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    live = jnp.asarray((j <= i) & pairs(i, j))[None, :, :, None, None]
    decay = jnp.exp(jnp.where(live, cum[:, :, None] - cum[:, None], -jnp.inf))
    scores = jnp.einsum("bihd,bjhd,bijhd->bhij", q, k, decay) * scale
    o = jnp.einsum("bhij,bjhe->bihe", scores, v)
    o = o + scale * jnp.einsum("bihd,bhde->bihe", q * jnp.exp(cum), s0)
    last = cum[:, -1]
    final = jnp.einsum("bjhd,bjhe->bhde", k * jnp.exp(last[:, None] - cum), v)
    return o, final + jnp.exp(last)[..., None] * s0


def values_and_grads(fn, args: dict, cotangent):
    """``fn(**args) = (o, S_T)``; o, S_T and the gradient of ``sum(o * cotangent) + sum(S_T)``
    with respect to every array in ``args``, as one dict."""
    arrays = {n: x for n, x in args.items() if x is not None}

    def loss(arrays):
        o, final = fn(**{**args, **arrays})
        return jnp.sum(o.astype(jnp.float32) * cotangent) + jnp.sum(final), (o, final)

    (_, (o, final)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(arrays)
    return {"o": o, "final": final} | {f"d{n}": grads[n] for n in grads}


@pytest.mark.parametrize("decay", [pytest.param(None, marks=pytest.mark.slow), "head", "key"],
                         ids=["none", "head", "key"])
def test_inter_chunk_pass_is_the_pairs_in_different_chunks(decay):
    """``intra=False``: every pass (forward, dq, dv, dk) drops the same-chunk pairs, and the
    decays' chunk-local identity still gives their gradient; T = 37, chunks of 16."""
    args, cotangent = inputs(decay, 37)
    scale, chunk = 0.3, 16

    def kernel(q, k, v, g, s0):
        lead = [None if a is None else a[None] for a in (q, k, v, g, s0)]
        o, final = gated_linear_attention(*lead[:4], None, lead[4], scale=scale,
                                          tiling=Tiling(chunk=chunk), intra=False)
        return o[0], final[0]

    def across(q, k, v, g, s0):
        return dense(q, k, v, g, s0, scale=scale, pairs=lambda i, j: i // chunk != j // chunk)

    got, want = values_and_grads(kernel, args, cotangent), values_and_grads(across, args,
                                                                              cotangent)
    assert_each_close(got, want, F32_TOL)
    assert rel(got["o"], dense(**args, scale=scale, pairs=lambda i, j: i == i)[0]) > 0.05


def test_intra_chunk_scores_with_gradients_and_bounded_memory():
    """The sub-chunked scores (reference row below the diagonal, exact diagonal blocks) equal
    the dense ``(C, C, dk)`` form, value and dq, dk, dG, including decays of -20 per step
    (no inf / NaN); the gradient's jaxpr holds nothing of the dense form's size."""
    b, n, c, h, dk = 1, 2, 64, 2, 8
    rng = np.random.default_rng(1)
    q, k, w = (jnp.asarray(rng.standard_normal(s, np.float32))
               for s in ((b, n, c, h, dk), (b, n, c, h, dk), (b, n, h, c, c)))
    g = -jax.nn.softplus(jnp.asarray(rng.standard_normal((b, n, c, h, dk), np.float32)))
    g = g.at[:, 1, 20:40, :, :3].set(-20.0)

    def split(q, k, g):
        return intra_chunk.intra_chunk_scores(q, k, jnp.cumsum(g, axis=2), scale=0.5, sub=16)

    def reference(q, k, g):
        cum = jnp.cumsum(g, axis=2)
        live = jnp.tril(jnp.ones((c, c), bool))[None, None, :, :, None, None]
        decay = jnp.exp(jnp.where(live, cum[:, :, :, None] - cum[:, :, None], -jnp.inf))
        return 0.5 * jnp.einsum("bnihd,bnjhd,bnijhd->bnhij", q, k, decay)

    def with_grads(fn):
        def loss(*args):
            scores = fn(*args)
            return jnp.sum(scores * w), scores

        (_, scores), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, g)
        return {"A": scores, "dq": grads[0], "dk": grads[1], "dg": grads[2]}

    assert_each_close(with_grads(split), with_grads(reference), F32_TOL)
    dense_size = b * n * c * c * h * dk

    def sizes(jaxpr):
        for eqn in jaxpr.eqns:
            yield from (int(np.prod(v.aval.shape)) for v in eqn.outvars)
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from sizes(inner)

    grad = jax.grad(lambda *a: jnp.sum(split(*a) * w), (0, 1, 2))
    assert max(sizes(jax.make_jaxpr(grad)(q, k, g).jaxpr)) <= dense_size // 4


@pytest.mark.parametrize("decay", ["key", pytest.param("head", marks=pytest.mark.slow)])
def test_split_op_matches_the_xla_op_float32(decay):
    """``impl="pallas_split"`` against ``impl="chunked"``: o, S_T, dq, dk, dv, d log_decay and
    d S_0 apart; T = 77 (not a multiple of the chunk), chunks of 64 = four sub-chunks of 16."""
    args, cotangent = inputs(decay, 77, d=16)

    def op(impl):
        def fn(q, k, v, g, s0):
            return linear_attention(q, k, v, log_decay=g, initial_state=s0, chunk_size=64,
                                    return_final_state=True, impl=impl)
        return fn

    assert_each_close(values_and_grads(op("pallas_split"), args, cotangent),
                      values_and_grads(op("chunked"), args, cotangent), F32_TOL)


def test_split_with_every_scores_kernel_matches_the_xla_op_float32():
    """``linear_attention_kernel`` with the scores by ``pallas_gpu_intra.MEASURED`` (the
    per-sub-chunk kernel, stored diagonal) and their VJP by ``pallas_gpu_intra_bwd``: o, S_T and
    every gradient apart equal ``impl="chunked"``'s; T = 77, chunks of 64."""
    assert_kernel_matches_xla(16, intra_kernel=pallas_gpu_intra.MEASURED)


def assert_kernel_matches_xla(d, **options):
    """``linear_attention_kernel(..., **options)`` with chunks of 64 against ``impl="chunked"``
    in float32: o, S_T and every gradient apart; per-key decays, T = 77, width ``d``."""
    args, cotangent = inputs("key", 77, d=d)

    def split(q, k, v, g, s0):
        return pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=d**-0.5,
                                                        initial_state=s0, chunk_size=64,
                                                        **options)

    def xla(q, k, v, g, s0):
        return linear_attention(q, k, v, log_decay=g, initial_state=s0, chunk_size=64,
                                return_final_state=True, impl="chunked")

    assert_each_close(values_and_grads(split, args, cotangent),
                      values_and_grads(xla, args, cotangent), F32_TOL)


def test_split_at_a_given_launch_matches_the_xla_op_float32(monkeypatch):
    """``linear_attention_kernel(tiling=...)``: the inter-chunk kernel runs at the launch asked
    for (chunks of 32, value blocks of 16: two of them at d 32, two stages), the intra-chunk
    terms at its chunk; o, S_T and every gradient apart equal ``impl="chunked"``'s, T = 77."""
    launched = []

    def recorded(*a, tiling, extra, **kw):
        launched.append((tiling, extra.chunk))
        return gated_linear_attention(*a, tiling=tiling, extra=extra, **kw)

    monkeypatch.setattr(pallas_gpu_split, "gated_linear_attention", recorded)
    asked = Tiling(chunk=32, block_v=16, num_stages=2)
    assert_kernel_matches_xla(32, tiling=asked)
    assert launched and all(t == asked and chunk == 32 for t, chunk in launched)


def test_split_on_the_states_forward_matches_the_xla_op_float32():
    """``linear_attention_kernel(states_forward=True)``: the inter-chunk forward as a states
    pass and a chunk-parallel output (``seqzoo.kernels.chunked_states``); o, S_T and every
    gradient apart equal ``impl="chunked"``'s; T = 77, chunks of 64, width 32."""
    assert_kernel_matches_xla(32, states_forward=True)


def test_split_with_the_outputs_kernel_matches_the_xla_op_float32(monkeypatch):
    """``A v`` by ``pallas_gpu_intra_outputs`` (``ScoresTiling.outputs_kernel``) inside the
    split: o, S_T and every gradient apart equal ``impl="chunked"``'s (T = 77, chunks of 64,
    width 32: one value block of 32), and the kernel really ran."""
    calls, kernel = [], pallas_gpu_intra_outputs.intra_outputs

    def counted(scores, v, dtype, **kw):
        calls.append(v.shape)
        return kernel(scores, v, dtype, **kw)

    monkeypatch.setattr(pallas_gpu_intra_outputs, "intra_outputs", counted)
    tiling = dataclasses.replace(pallas_gpu_intra.MEASURED, outputs_kernel=True)
    assert_kernel_matches_xla(32, intra_kernel=tiling)
    assert calls


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-6)],
                         ids=["f32", "bf16"])
@pytest.mark.parametrize("dv", [48, 256])
def test_outputs_kernel_equals_xla_product(dtype, tol, dv):
    """``A v`` by the kernel against XLA's product on the same operands (A and v rounded to
    ``dtype``, float32 accumulation): value widths 48 (blocks of 16) and 256 (two of 128),
    chunks of 64, (B, N, H) = (2, 3, 2)."""
    rng = np.random.default_rng(4)
    scores = jnp.asarray(np.tril(rng.standard_normal((2, 3, 2, 64, 64))), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 3, 64, 2, dv)), jnp.float32).astype(dtype)
    got = pallas_gpu_intra_outputs.intra_outputs(scores, v, dtype)
    want = jnp.einsum("bnhij,bnjhe->bnihe", scores.astype(dtype).astype(jnp.float32),
                      v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    assert got.dtype == jnp.float32 and rel(got, want) < tol


def test_outputs_kernel_lowers_to_one_dot_per_program(monkeypatch):
    """Lowered for a GPU at GLA's size (chunk 64, dv 128, bf16): one Triton module with one
    ``(64, 64) x (64, 128)`` matmul; a width no block of 16 divides is refused."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    scores = jnp.ones((1, 2, 2, 64, 64), jnp.float32)
    v = jnp.ones((1, 2, 64, 2, 128), jnp.bfloat16)
    (module,) = triton_modules(functools.partial(pallas_gpu_intra_outputs.intra_outputs,
                                                 dtype=jnp.bfloat16), scores, v)
    assert re.search(r"tt\.dot [^\n]*tensor<64x64xbf16> \* tensor<64x128xbf16>", module)
    with pytest.raises(ValueError, match="multiple of 16"):
        pallas_gpu_intra_outputs.intra_outputs(scores, v[..., :24], jnp.bfloat16)


def test_split_forward_takes_its_own_launch_for_bf16_per_key_decays(monkeypatch):
    """bf16 per-key decays: the inter-chunk kernel's forward at ``INTER_FORWARD`` (value blocks
    of 64, two stages), its backward passes at ``kernel_tiling``'s; float32, scalar decays and
    a launch asked for run every pass at one tiling."""
    launched = []

    def recorded(*a, forward_tiling, **kw):
        launched.append(forward_tiling)
        return gated_linear_attention(*a, forward_tiling=forward_tiling, **kw)

    monkeypatch.setattr(pallas_gpu_split, "gated_linear_attention", recorded)
    x = jnp.ones((1, 32, 2, 32), jnp.bfloat16)
    key, head = -jnp.ones((1, 32, 2, 32), jnp.float32), -jnp.ones((1, 32, 2), jnp.float32)
    for q, g, tiling in ((x, key, None), (x.astype(jnp.float32), key, None), (x, head, None),
                         (x, key, Tiling(block_v=16, num_stages=1))):
        pallas_gpu_split.linear_attention_kernel(q, q, q, g, scale=0.2, tiling=tiling)
    assert launched == [chunked_tiling.INTER_FORWARD, None, None, None]


@pytest.mark.parametrize("dv", [64, 48], ids=["blocks-of-64", "width-48-blocks-of-16"])
def test_separate_forward_launch_changes_no_value_or_gradient_float32(dv, monkeypatch):
    """The inter-chunk pass with its forward at ``INTER_FORWARD`` and its backward at value
    blocks of 16 against every pass at blocks of 16: o, S_T and every gradient apart equal in
    float32 (a launch changes rounding only), the forward launched at two stages and the three
    backward passes at one. At dv 48 the padded width (48) is not a multiple of 64: the
    forward keeps the backward's block (``pallas_gpu.forward_launch``)."""
    launches = []

    def recorded(*a, tiling, **kw):
        launches.append((tiling.block_v, tiling.num_stages))
        return chunked_pass(*a, tiling=tiling, **kw)

    monkeypatch.setattr(pallas_gpu, "chunked_pass", recorded)
    args, cotangent = inputs("key", 77, d=16)
    rng = np.random.default_rng(1)
    args["v"] = jnp.asarray(rng.standard_normal((1, 77, 2, dv), np.float32))
    args["s0"] = jnp.asarray(rng.standard_normal((1, 2, 16, dv), np.float32))
    cotangent = jnp.asarray(rng.standard_normal((1, 77, 2, dv), np.float32))
    backward = Tiling(block_v=16, num_stages=1)

    def inter(forward_tiling):
        def fn(q, k, v, g, s0):
            o, final = gated_linear_attention(q[None], k[None], v[None], g[None], None, s0[None],
                                              scale=0.25, tiling=backward, intra=False,
                                              forward_tiling=forward_tiling)
            return o[0], final[0]
        return fn

    separate = values_and_grads(inter(chunked_tiling.INTER_FORWARD), args, cotangent)
    assert launches == [(64 if dv == 64 else 16, 2)] + [(16, 1)] * 3
    assert_each_close(separate, values_and_grads(inter(None), args, cotangent), F32_TOL)


# Per decay strength (log decays logsigmoid(x) / divisor; 16 is GLA's): largest relative L2 of
# each bf16 gradient against the float32 op's rounded to bf16. Measured at (1, 128, 2, 32) with
# the parts rounded to bf16 and summed in bf16 (before), and summed in float32, rounded once
# (now): /16: dq 2.0e-3 -> 1.1e-4, dk 2.1e-3 -> 8.1e-5, dv 2.8e-3 -> 2.3e-3, dg 6.3e-6 (both);
# /1: dq 5.7e-4 -> 2.3e-6, dk 8.7e-4 -> 1.8e-5, dv 9.5e-4 -> 5.5e-4, dg 5.8e-6 (both). The op's
# default at (1, 512, 2, 128): /16: dq 8.3e-5, dk 1.1e-4, dv 2.5e-3, dg 6.7e-6; /1: 6.7e-5,
# 3.2e-5, 6.7e-4, 7.4e-6 (dv's is the bf16 state and A operands of its pass, as fla's chunk_gla).
BF16_SPLIT_TOL = {16.0: dict(dq=5e-4, dk=5e-4, dv=3e-3, dg=1e-4),
                  1.0: dict(dq=2e-4, dk=2e-4, dv=9e-4, dg=1e-4)}


@pytest.mark.parametrize("shape", [(1, 128, 2, 32, 32), (1, 512, 2, 128, 128),
                                   (1, 256, 2, 96, 192)],
                         ids=["tiny", "gla-width", "fla-gla-layer-widths"])
@pytest.mark.parametrize("scores", [None, False, pallas_gpu_intra.ScoresTiling(per_sub_chunk=True)],
                         ids=["op-default-kernels", "xla-scores", "per-sub-chunk-xla-vjp"])
@pytest.mark.parametrize("divisor", [16.0, 1.0], ids=["gla", "strong"])
def test_split_bf16_gradients_are_rounded_once(divisor, scores, shape):
    """bf16 ``impl="pallas_split"``: the inter- and intra-chunk gradients join in float32 and
    are rounded to bf16 once (``chunked_vjp``'s ``extra``), each gradient apart against the
    float32 XLA op on the same bf16 values (its gradients rounded to bf16: a correctly rounded
    gradient is then exact). Summing parts already rounded to bf16 failed every dq, dk and dv
    bound (numbers at ``BF16_SPLIT_TOL``). ``scores``: the op itself (None: for bf16 its
    scores and their VJP by the kernels, ``pallas_gpu_intra.MEASURED``; measured: /16: dq
    1.1e-4, dk 6.0e-5, dv 2.3e-3, dg 6.3e-6; /1: dq 3.2e-6, dk 1.1e-6, dv 5.5e-4, dg 5.9e-6),
    XLA's scores (False), or the scores' kernel with XLA's VJP
    (``linear_attention_kernel(intra_kernel=...)``); at a tiny shape, at GLA's head width over 8
    chunks and at fla's GLA layer widths (``shape``: B, T, H, dk, dv)."""
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    *lead, dk, dv = shape
    q, k, v, do = (jax.random.normal(key, (*lead, width)).astype(jnp.bfloat16)
                   for key, width in zip(keys[:4], (dk, dk, dv, dv), strict=True))
    g = jax.nn.log_sigmoid(jax.random.normal(keys[4], (*lead, dk))) / divisor

    def grads(impl, q, k, v):
        def loss(q, k, v, g):
            if impl == "pallas_split" and scores is not None:
                o = pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=dk**-0.5,
                                                             chunk_size=64, intra_kernel=scores)[0]
            else:
                o = linear_attention(q, k, v, log_decay=g, chunk_size=64, impl=impl)
            return jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32))

        names = ("dq", "dk", "dv", "dg")
        return dict(zip(names, jax.jit(jax.grad(loss, (0, 1, 2, 3)))(q, k, v, g), strict=True))

    got = grads("pallas_split", q, k, v)
    want = grads("chunked", *(x.astype(jnp.float32) for x in (q, k, v)))
    errors = {n: rel(got[n], want[n].astype(got[n].dtype)) for n in want}
    assert all(errors[n] < tol for n, tol in BF16_SPLIT_TOL[divisor].items()), errors


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, F32_TOL),
                                        pytest.param(jnp.bfloat16, 1e-3, marks=pytest.mark.slow)],
                         ids=["f32", "bf16"])
def test_pallas_intra_scores_match_the_xla_ones(dtype, tol):
    """``kernel=True``: the Pallas scores (interpret mode) equal XLA's (in bf16: the same
    rounding of the matmul operands), dk = 24 padded to 32, decays down to -20 per step."""
    b, n, c, h, dk = 1, 1, 64, 2, 24
    rng = np.random.default_rng(2)
    q, k = (jnp.asarray(rng.standard_normal((b, n, c, h, dk), np.float32)) for _ in range(2))
    g = -jax.nn.softplus(jnp.asarray(rng.standard_normal((b, n, c, h, dk), np.float32)))
    cum = jnp.cumsum(g.at[:, 0, 30:40, 1, :5].set(-20.0), axis=2)
    got, want = (jax.jit(lambda *a, kernel=kernel: intra_chunk.intra_chunk_scores(
        *a, scale=0.7, kernel=kernel))(q.astype(dtype), k.astype(dtype), cum)
        for kernel in (True, False))
    assert rel(got, want) < tol


def _intra_inputs(shape, seed=3, strength=1.0):
    """q, k normal float32 and the chunk-local cumulative log decays of ``-strength *
    softplus(normal)`` per step, all (B, N, C, H, dk)."""
    rng = np.random.default_rng(seed)
    q, k, g = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(3))
    return q, k, jnp.cumsum(-strength * jax.nn.softplus(g), axis=2)


# The kernel's launches: one program per chunk (``kernel=True``) and one per sub-chunk
TILINGS = [pallas_gpu_intra.ScoresTiling(), pallas_gpu_intra.ScoresTiling(per_sub_chunk=True)]
TILING_IDS = ["per-chunk", "per-sub-chunk"]


def _kernel_and_xla_scores(q, k, cum, dtype=None, tiling=TILINGS[0]):
    """Unscaled scores by the Pallas kernel at ``tiling`` (interpret mode) and by XLA."""
    return tuple(jax.jit(lambda *a, kernel=kernel: intra_chunk.intra_chunk_scores(
        *a, scale=1.0, sub=16, kernel=kernel, dtype=dtype))(q, k, cum) for kernel in (tiling,
                                                                                       False))


@pytest.mark.parametrize("tiling", TILINGS, ids=TILING_IDS)
@pytest.mark.parametrize("shape", [(1, 1, 16, 1, 16), (1, 2, 64, 2, 128), (2, 1, 32, 1, 40)],
                         ids=["diagonal-only", "gla-size", "dk40-padded"])
def test_pallas_intra_scores_float32_equal_xla(shape, tiling):
    """Float32 (IEEE matmuls): the kernel's scores are XLA's forward to float32's accuracy at
    C = 16 (one diagonal block), at GLA's C = 64, dk = 128, and at dk = 40 (zero-padded to 64);
    exactly zero above the diagonal."""
    got, want = _kernel_and_xla_scores(*_intra_inputs(shape), tiling=tiling)
    assert got.shape == want.shape == (shape[0], shape[1], shape[3], shape[2], shape[2])
    assert rel(got, want) < F32_TOL
    assert not np.triu(np.asarray(got), 1).any()


@pytest.mark.parametrize("tiling", TILINGS, ids=TILING_IDS)
def test_pallas_intra_scores_bf16_against_float32(tiling):
    """bf16 q, k: within bf16's rounding of the decayed matmul operands of the float32 scores
    on the same (bf16) values, and equal to XLA's on bf16 (the same roundings)."""
    q, k, cum = _intra_inputs((1, 2, 64, 2, 32), seed=4)
    qb, kb = q.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    got, want_bf16 = _kernel_and_xla_scores(qb, kb, cum, tiling=tiling)
    _, want_f32 = _kernel_and_xla_scores(qb.astype(jnp.float32), kb.astype(jnp.float32), cum,
                                         tiling=tiling)
    assert 1e-5 < rel(got, want_f32) < 1e-2
    assert rel(got, want_bf16) < 1e-3


@pytest.mark.parametrize("tiling", TILINGS, ids=TILING_IDS)
def test_pallas_intra_scores_strong_decays_stay_finite(tiling):
    """Decays of -1e3 per step on some keys (cumulative -6e4 at the chunk's end): no inf or NaN
    (every exponent the kernel forms is <= 0), and XLA's values, zeros where the decays kill."""
    q, k, cum = _intra_inputs((1, 1, 64, 2, 32), seed=5)
    steps = jnp.diff(cum, axis=2, prepend=0.0).at[:, :, :, 0, :8].set(-1e3)
    steps = steps.at[:, :, 20:, 1, :].add(-50.0)
    cum = jnp.cumsum(steps, axis=2)
    got, want = _kernel_and_xla_scores(q, k, cum, tiling=tiling)
    assert np.isfinite(np.asarray(got)).all()
    assert rel(got, want) < F32_TOL


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_pallas_intra_scores_lower_to_2d_triton(monkeypatch, dtype):
    """The kernel lowers for Triton at GLA's size: one module, four matmuls below the diagonal
    (rows 0..16 for the second sub-chunk, 0..32 for the third, 0..32 and 32..48 for the last),
    IEEE for float32, and no tensor of rank 3 (the diagonal blocks column by column)."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q = jnp.ones((1, 2, 64, 2, 128), dtype)
    cum = -jnp.ones((1, 2, 64, 2, 128), jnp.float32)
    (module,) = triton_modules(functools.partial(pallas_gpu_intra.intra_chunk_scores, sub=16,
                                                 dtype=dtype), q, q, cum)
    precisions = dot_precisions(module)
    assert len(precisions) == 4
    if dtype == jnp.float32:
        assert set(precisions) == {"ieee"}
    assert not re.search(r"tensor<\d+x\d+x\d+x", module)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_per_sub_chunk_scores_lower_to_2d_triton(monkeypatch, dtype):
    """``per_sub_chunk``: one module, one ``(sub, dk) x (dk, sub)`` matmul (in the loop over the
    earlier sub-chunks), IEEE for float32, no tensor of rank 3, and a grid of C / sub = 4 times
    the per-chunk launch's programs (the last grid axis folded into Triton's first)."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q = jnp.ones((1, 2, 64, 2, 128), dtype)
    cum = -jnp.ones((1, 2, 64, 2, 128), jnp.float32)
    tiling = pallas_gpu_intra.ScoresTiling(per_sub_chunk=True)
    (module,) = triton_modules(functools.partial(pallas_gpu_intra.intra_chunk_scores, sub=16,
                                                 dtype=dtype, tiling=tiling), q, q, cum)
    assert dot_precisions(module) == ["ieee"] if dtype == jnp.float32 else len(
        dot_precisions(module)) == 1
    assert re.search(r"tt\.dot [^\n]*tensor<16x128x\w+> \* tensor<128x16x\w+>", module)
    assert not re.search(r"tensor<\d+x\d+x\d+x", module)
    assert len(re.findall(r"scf\.for", module)) == 3  # earlier blocks, diagonal columns, zeros


@pytest.mark.parametrize("per_sub_chunk", [False, True], ids=["per-chunk", "per-sub-chunk"])
def test_stored_diagonal_lowers_with_exp2_and_no_block(monkeypatch, per_sub_chunk):
    """``stored_diagonal``: the diagonal blocks' decays by exp2 (the rows' below the diagonal
    still by exp), each column a ``(sub, 1)`` store, no ``(sub, sub)`` block carried through
    the column loop; 2-D only."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q = jnp.ones((1, 2, 64, 2, 128), jnp.bfloat16)
    cum = -jnp.ones((1, 2, 64, 2, 128), jnp.float32)
    tiling = pallas_gpu_intra.ScoresTiling(per_sub_chunk=per_sub_chunk, stored_diagonal=True)
    (module,) = triton_modules(functools.partial(pallas_gpu_intra.intra_chunk_scores, sub=16,
                                                 dtype=jnp.bfloat16, tiling=tiling), q, q, cum)
    blocks = 1 if per_sub_chunk else 4
    assert module.count('symbol = "__nv_exp2f"') == blocks
    assert len(re.findall(r"tt\.store %\w+, %\w+ : tensor<16x1x!tt\.ptr<f32>>", module)) == blocks
    assert not re.search(r"iter_args\([^)]*\) -> \(tensor<16x16xf32>\)", module)
    assert not re.search(r"tensor<\d+x\d+x\d+x", module)


@pytest.mark.parametrize("dtype, dots", [(jnp.float32, ["ieee"] * 2), (jnp.bfloat16, 6)],
                         ids=["f32", "bf16"])
def test_scores_vjp_kernel_lowers_to_2d_triton(monkeypatch, dtype, dots):
    """``pallas_gpu_intra_bwd``: one module, a ``(sub, sub) x (sub, dk)`` matmul for dq's
    earlier sub-chunks and one for dk's later ones (bf16: each as three, ``dA`` and the decayed
    rows split as ``hi + lo``; float32: IEEE), no tensor of rank 3."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q = jnp.ones((1, 2, 64, 2, 128), dtype)
    cum = -jnp.ones((1, 2, 64, 2, 128), jnp.float32)
    d_scores = jnp.ones((1, 2, 2, 64, 64), jnp.float32)
    tiling = pallas_gpu_intra.ScoresTiling(per_sub_chunk=True, vjp_kernel=True)
    (module,) = triton_modules(functools.partial(pallas_gpu_intra_bwd.scores_vjp, sub=16,
                                                 dtype=dtype, tiling=tiling), q, q, cum, d_scores)
    precisions = dot_precisions(module)
    assert precisions == dots if dtype == jnp.float32 else len(precisions) == dots
    assert re.findall(r"tensor<16x16x\w+> \* tensor<16x128x\w+>", module)
    assert not re.search(r"tensor<\d+x\d+x\d+x", module)


def test_split_lowers_for_a_gpu(monkeypatch):
    """Forward and gradient lower with the Triton kernels for CUDA on this CPU machine (the
    Pallas -> Triton lowering runs; a layout or op Triton lacks fails here)."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    x = jnp.ones((1, 100, 2, 32), jnp.bfloat16)
    g = -jnp.ones((1, 100, 2, 32), jnp.float32)

    def forward(q, k, v, g):
        return linear_attention(q, k, v, log_decay=g, chunk_size=64, impl="pallas_split")

    def grads(*args):
        return jax.grad(lambda *a: forward(*a).astype(jnp.float32).sum(), (0, 1, 2, 3))(*args)

    def with_intra_kernel(q, k, v, g, kernel=True):
        return pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=0.2, chunk_size=64,
                                                        intra_kernel=kernel)[0]

    def grads_with_vjp_kernel(*args):
        tiling = pallas_gpu_intra.ScoresTiling(per_sub_chunk=True, vjp_kernel=True)
        return jax.grad(lambda *a: with_intra_kernel(*a, kernel=tiling).astype(
            jnp.float32).sum(), (0, 1, 2, 3))(*args)

    for fn, kernels in ((forward, ["chunked_pass_key_inter", "intra_chunk_scores_sub"]),
                        (grads, ["chunked_pass_key_inter", "chunked_pass_value_inter",
                                 "intra_chunk_scores_vjp"]),
                        (with_intra_kernel, ["chunked_pass_key_inter", "intra_chunk_scores"]),
                        (grads_with_vjp_kernel, ["chunked_pass_value_inter",
                                                 "intra_chunk_scores_sub",
                                                 "intra_chunk_scores_vjp"])):
        text = jax.jit(fn).trace(x, x, x, g).lower(lowering_platforms=("cuda",)).as_text()
        assert all(name in text for name in kernels)
    # the op's default takes XLA's scores for float32 inputs (the kernels are timed for bf16)
    x32 = x.astype(jnp.float32)
    text = jax.jit(forward).trace(x32, x32, x32, g).lower(lowering_platforms=("cuda",)).as_text()
    assert "chunked_pass_key_inter" in text and "intra_chunk_scores" not in text


def test_dispatch_takes_the_split_for_per_key_decays_and_routes_it():
    facts = dict(dims=(128, 128), dtypes=(jnp.bfloat16,), per_key=True, platform="gpu",
                 shared_memory=232_448)
    assert resolve("linear_attention", "auto", **facts).impl == "pallas_split"
    for wide_or_f32 in (dict(dims=(256, 128)), dict(dtypes=(jnp.float32,))):
        assert resolve("linear_attention", "auto", **{**facts, **wide_or_f32}).impl == "chunked"
    assert resolve("linear_attention", "auto", **facts, segment_ids=True).impl == "chunked"
    assert resolve("linear_attention", "pallas_split", **facts).impl == "pallas_split"
    assert resolve("linear_attention", "pallas_split", **facts, segment_ids=True).impl == (
        "chunked")
    assert resolve("linear_attention", "pallas_split", **{**facts, "platform": "tpu"}).impl == (
        "pallas")
