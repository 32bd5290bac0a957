"""The per-key intra-chunk scores at each launch of their Pallas kernel (``pallas_gpu_intra``,
interpret mode; diagonal blocks selected into a block or stored column by column) and by XLA,
each with XLA's VJP sharing the forward's diagonal decays or recomputing them
(``recompute_decays``) or with the VJP's kernel (``pallas_gpu_intra_bwd``), value and every
gradient apart, against a float64 NumPy
evaluation of the equation itself:

    A_ij = sum_d q_id k_jd exp(G_id - G_jd)    j <= i in one chunk, else 0

with the loss ``L = sum_ij W_ij A_ij``: ``dq_id = sum_j W_ij k_jd e_ijd``,
``dk_jd = sum_i W_ij q_id e_ijd`` and ``dG_md = sum_j W_mj T_mjd - sum_i W_im T_imd``
(``T_ijd = q_id k_jd e_ijd``, ``e_ijd = exp(G_id - G_jd)``: G_m enters as the row's G_i and as
the column's G_j). q, k, G: (B, N, C, H, dk); A, W: (B, N, H, C, C).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops.linear_attention import intra_chunk, pallas_gpu_intra

_PER_SUB_CHUNK = pallas_gpu_intra.ScoresTiling(per_sub_chunk=True)
VARIANTS = {"xla": dict(kernel=False), "per-chunk": dict(kernel=True),
            "per-sub-chunk": dict(kernel=_PER_SUB_CHUNK),
            "per-chunk-stored": dict(kernel=pallas_gpu_intra.ScoresTiling(stored_diagonal=True)),
            "per-sub-chunk-stored": dict(kernel=pallas_gpu_intra.ScoresTiling(
                per_sub_chunk=True, stored_diagonal=True, num_warps=8)),
            "per-sub-chunk-vjp-kernel": dict(kernel=pallas_gpu_intra.ScoresTiling(
                per_sub_chunk=True, stored_diagonal=True, num_warps=8, vjp_kernel=True)),
            "xla-recompute": dict(recompute_decays=True),
            "per-sub-chunk-recompute": dict(kernel=_PER_SUB_CHUNK, recompute_decays=True)}
NAMES = ("A", "dq", "dk", "dG")


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(got).all()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def equation(q, k, cum, w) -> dict:
    """A and the gradients of ``sum(W A)`` in float64 (module docstring), over the dense
    ``(C, C, dk)`` terms masked to ``j <= i`` before the exp."""
    q, k, cum, w = (np.asarray(x, np.float64) for x in (q, k, cum, w))
    c = q.shape[2]
    causal = np.tril(np.ones((c, c), bool))[None, None, :, :, None, None]
    diff = cum[:, :, :, None] - cum[:, :, None]  # (B, N, i, j, H, dk)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.where(causal, np.exp(np.where(causal, diff, 0.0)), 0.0)
    terms = q[:, :, :, None] * k[:, :, None] * e
    w_ij = np.moveaxis(w, 2, -1)[..., None]  # (B, N, i, j, H, 1)
    return {"A": np.einsum("bnijhd->bnhij", terms),
            "dq": np.sum(w_ij * k[:, :, None] * e, axis=3),
            "dk": np.sum(w_ij * q[:, :, :, None] * e, axis=2),
            "dG": np.sum(w_ij * terms, axis=3) - np.sum(w_ij * terms, axis=2)}


def scores_and_grads(q, k, cum, w, options: dict) -> dict:
    """A (unscaled) and the gradients of ``sum(W A)`` w.r.t. q, k and G, one jitted call;
    ``options``: ``intra_chunk_scores``'s keyword arguments."""
    def loss(q, k, cum):
        a = intra_chunk.intra_chunk_scores(q, k, cum, scale=1.0, sub=16, **options)
        return jnp.sum(a * w), a

    (_, a), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, cum)
    return dict(zip(NAMES, (a, *grads), strict=True))


def inputs(shape, seed, strength=1.0):
    """q, k normal, G the chunk-local cumsum of ``-strength * softplus(normal)`` per step, all
    (B, N, C, H, dk) float32; W normal (B, N, H, C, C)."""
    rng = np.random.default_rng(seed)
    q, k, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    b, n, c, h, _ = shape
    w = rng.standard_normal((b, n, h, c, c)).astype(np.float32)
    return q, k, np.cumsum(-strength * np.logaddexp(0.0, g), axis=2, dtype=np.float32), w


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [(1, 1, 32, 1, 16), (1, 2, 64, 2, 128), (1, 1, 128, 1, 32)],
                         ids=["tiny", "gla-size", "chunk-128"])
def test_float32_value_and_each_gradient_equal_the_equation(shape, variant):
    """Float32 at IEEE precision: A, dq, dk and dG each within 1e-5 (relative L2) of float64."""
    q, k, cum, w = inputs(shape, seed=7)
    got = scores_and_grads(*(jnp.asarray(x) for x in (q, k, cum, w)), VARIANTS[variant])
    want = equation(q, k, cum, w)
    errors = {name: rel(got[name], want[name]) for name in NAMES}
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_value_and_each_gradient_against_float32(variant):
    """bf16 q, k (matmul operands rounded to bf16, the rest float32): A, dq, dk, dG each within
    bf16's rounding of the float32 computation on the same values, and not equal to it (the
    rounding happened)."""
    q, k, cum, w = (jnp.asarray(x) for x in inputs((1, 2, 64, 2, 128), seed=8))
    qb, kb = q.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    got = scores_and_grads(qb, kb, cum, w, VARIANTS[variant])
    want = scores_and_grads(qb.astype(jnp.float32), kb.astype(jnp.float32), cum, w,
                            VARIANTS[variant])
    errors = {name: rel(got[name], want[name]) for name in NAMES}
    assert max(errors.values()) < 1e-2 and errors["A"] > 1e-5, errors


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_strong_decays_stay_finite(variant):
    """Log decays of -1e3 per step on some keys (cumulative -6e4 by the chunk's end) and -50 on
    a whole head's later half: A and every gradient finite and equal to float64's (the killed
    terms zero)."""
    q, k, cum, w = inputs((1, 1, 64, 2, 32), seed=9)
    steps = np.diff(cum, axis=2, prepend=0.0)
    steps[:, :, :, 0, :8] = -1e3
    steps[:, :, 20:, 1, :] -= 50.0
    cum = np.cumsum(steps, axis=2, dtype=np.float32)
    got = scores_and_grads(*(jnp.asarray(x) for x in (q, k, cum, w)), VARIANTS[variant])
    want = equation(q, k, cum, w)
    errors = {name: rel(got[name], want[name]) for name in NAMES}
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("recompute, written", [(False, 4), (True, 0)],
                         ids=["shared", "recompute"])
def test_recomputed_decays_are_not_written_out(recompute, written):
    """XLA on this CPU backend: the forward+backward of XLA's scores writes each sub-chunk's
    diagonal decays ``(B, N, sub, sub, H, dk)`` out (4 at C = 64: one expression for A, dq and
    dk), and none with ``recompute_decays`` (each exp fused into its one reduction). The CPU's
    fusion is no GPU's (it also writes broadcasts of q, k and dA of that shape out, which a
    GPU fuses): ``benchmarks/gla_phases.py`` times both there."""
    b, n, c, h, dk = 1, 2, 64, 2, 128

    def loss(q, k, cum, w):
        a = intra_chunk.intra_chunk_scores(q, k, cum, scale=1.0, sub=16,
                                           recompute_decays=recompute)
        return jnp.sum(a * w)

    x = jax.ShapeDtypeStruct((b, n, c, h, dk), jnp.float32)
    w = jax.ShapeDtypeStruct((b, n, h, c, c), jnp.float32)
    hlo = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(x, x, x, w).compile().as_text()
    assert len(written_exps(hlo, f"f32[{b},{n},16,16,{h},{dk}]")) == written


def written_exps(hlo: str, shape: str) -> list[str]:
    """The fusions of a compiled HLO module's text whose output is ``shape`` and whose fused
    computation takes an ``exponential`` (an exp written to memory)."""
    bodies = dict(re.findall(r"^(%[\w.]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
    calls = re.findall(rf"= {re.escape(shape)}\S* fusion\([^\n]*calls=(%[\w.]+)", hlo)
    return [c for c in calls if "exponential(" in bodies.get(c, "")]
