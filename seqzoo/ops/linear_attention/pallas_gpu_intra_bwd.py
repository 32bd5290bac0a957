"""The per-key intra-chunk scores' VJP (dq, dk) as a Pallas kernel, one program per (batch,
chunk, head, sub-chunk), the counterpart of ``pallas_gpu_intra``'s per-sub-chunk launch (fla's
``chunk_gla_bwd_dqk_intra``).

For ``A_ij = sum_d q_id k_jd exp(G_id - G_jd)`` (j <= i in one chunk of C steps) and its
cotangent ``dA: (C, C)`` float32:

    dq_id = sum_{j <= i} dA_ij k_jd exp(G_id - G_jd)
    dk_jd = sum_{i >= j} dA_ij q_id exp(G_id - G_jd)

The program of sub-chunk I (rows ``r .. r + sub - 1``, last row ``l = r + sub - 1``) writes
``dq_I, dk_I: (sub, dk)`` float32:

* sub-chunks J before I into dq_I through I's first row, as the forward:
  ``dq_I += exp(G_I - G_r) * sum_J dA[I, J] (k_J exp(G_r - G_J))``;
* sub-chunks J after I into dk_I through I's last row:
  ``dk_I += exp(G_l - G_I) * sum_J dA[J, I]^T (q_J exp(G_J - G_l))``; every factor <= 1;
  ``(sub, sub) x (sub, dk)`` matmuls, a loop over J each, the float32 operands split as
  ``hi + lo`` in the inputs' dtype (``seqzoo.kernels.split_product``: three matmuls, ~eps^2),
  IEEE for float32, as ``intra_chunk._scores_per_key_backward``'s XLA einsums;
* the diagonal block, one loop over its ``sub`` steps t: ``dq_I += [i >= t] dA[I, t] k_t
  exp(min(G_I - G_t, 0))`` and ``dk_I += [j <= t] dA[t, I] q_t exp(min(G_t - G_I, 0))``, 2-D
  ``(sub, dk)`` products (exponents <= 0: nothing overflows), accumulated from zeros in the
  elementwise layout and added to the matmuls' terms after the loop. The masks ``[i >= t]``,
  ``[j <= t]`` are dA's zeros above the diagonal, set by ``scores_vjp`` before the launch (one
  elementwise pass over dA instead of 32 compares and selects in every step of every program).

``dG = q dq - k dk`` is the caller's (elementwise). Exponentials per chunk: ``2 C dk`` for the
references plus the earlier / later rows' ``C (C - sub) / sub dk``, and ``2 C sub dk`` on the
diagonal blocks (XLA's VJP forms the diagonal decays once, ``C sub dk``, and shares them
between dq, dk and the forward through memory). At GLA's (4, 2048, 16, 128) bf16: 8192
programs. Timed by ``benchmarks/gla_phases.py``'s rows "... VJP kernel" (the op's default
launch, ``pallas_gpu_intra.MEASURED``, runs it at 2 warps); its machine code is counted in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from seqzoo.kernels import approx_exp, launch
from seqzoo.kernels.split_product import split_product
from seqzoo.ops.linear_attention.pallas_gpu_intra import ScoresTiling, padded_keys

Array = jax.Array
_F32 = jnp.float32


def _dot(a: Array, b: Array, dtype, contract_a: int) -> Array:
    """``a b`` (``contract_a`` = 1) or ``a^T b`` (0) for float32 ``a: (sub, sub)``,
    ``b: (sub, dk)``, split in ``dtype`` as ``hi + lo`` (module docstring)."""
    precision = lax.Precision.HIGHEST if dtype == _F32 else None

    def product(x, y):
        return lax.dot_general(x, y, (((contract_a,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=_F32)

    return split_product(product, a, b, dtype, split=True)


def _kernel(q_ref, k_ref, g_ref, da_ref, dq_ref, dk_ref, *, sub: int, dtype, approx: bool):
    exp = functools.partial(approx_exp.exp, approx=approx)
    i = pl.program_id(3)
    r = pl.multiple_of(i * sub, sub)
    rows = pl.ds(r, sub)
    g_i = g_ref[rows, :]
    g_r, g_l = g_ref[pl.ds(r, 1), :], g_ref[pl.ds(r + sub - 1, 1), :]

    def block(j):
        return pl.ds(pl.multiple_of(j * sub, sub), sub)

    def earlier(j, acc):
        to_first = k_ref[block(j), :].astype(_F32) * exp(g_r - g_ref[block(j), :])
        return acc + _dot(da_ref[rows, block(j)], to_first, dtype, 1)

    def later(j, acc):
        from_last = q_ref[block(j), :].astype(_F32) * exp(g_ref[block(j), :] - g_l)
        return acc + _dot(da_ref[block(j), rows], from_last, dtype, 0)

    zeros = jnp.zeros(g_i.shape, _F32)
    dq = lax.fori_loop(0, i, earlier, zeros) * exp(g_i - g_r)
    dk = lax.fori_loop(i + 1, q_ref.shape[0] // sub, later, zeros) * exp(g_l - g_i)

    def diagonal(t, carry):
        dq, dk = carry
        step = pl.ds(r + t, 1)
        g_t = g_ref[step, :]
        d_col = da_ref[rows, step]  # dA[I, t]: (sub, 1), zero for rows before t
        d_row = da_ref[step, rows].T  # dA[t, I]^T: (sub, 1), zero for rows after t
        dq = dq + d_col * k_ref[step, :].astype(_F32) * exp(jnp.minimum(g_i - g_t, 0.0))
        dk = dk + d_row * q_ref[step, :].astype(_F32) * exp(jnp.minimum(g_t - g_i, 0.0))
        return dq, dk

    # from zeros, added after: carried in the elementwise layout, not the matmuls' (which cost a
    # layout conversion of both (sub, dk) terms every step)
    dq_diagonal, dk_diagonal = lax.fori_loop(0, sub, diagonal, (zeros, zeros))
    dq_ref[...] = dq + dq_diagonal
    dk_ref[...] = dk + dk_diagonal


def scores_vjp(q: Array, k: Array, cum: Array, d_scores: Array, *, sub: int, dtype,
               tiling: ScoresTiling) -> tuple[Array, Array]:
    """q, k: (B, N, C, H, dk) in ``dtype`` (C a power of two >= 16, ``sub`` dividing it); cum:
    (B, N, C, H, dk) float32; d_scores: (B, N, H, C, C) float32, the cotangent of the unscaled
    scores. Returns ``dq, dk: (B, N, C, H, dk)`` float32 (module docstring). ``tiling``: its
    ``num_warps``, ``num_stages`` and ``approx_exp`` (the launch is always per sub-chunk)."""
    b, n, c, h, dk = q.shape
    q, k, cum = padded_keys(q, k, cum)
    width = q.shape[-1]
    chunk = pl.BlockSpec((None, None, c, None, width), lambda i, m, j, p: (i, m, 0, j, 0))
    rows = pl.BlockSpec((None, None, sub, None, width), lambda i, m, j, p: (i, m, p, j, 0))
    call = launch.pallas_call(
        functools.partial(_kernel, sub=sub, dtype=jnp.dtype(dtype), approx=tiling.approx_exp),
        grid=(b, n, h, c // sub),
        in_specs=[chunk, chunk, chunk,
                  pl.BlockSpec((None, None, None, c, c), lambda i, m, j, p: (i, m, j, 0, 0))],
        out_specs=[rows, rows],
        out_shape=[jax.ShapeDtypeStruct(q.shape, _F32)] * 2,
        num_warps=tiling.num_warps,
        num_stages=tiling.num_stages,
        name="intra_chunk_scores_vjp",
    )
    causal = jnp.tril(jnp.ones((c, c), bool))  # dA above the diagonal: A's constant zeros
    dq, dk_ = call(q, k, cum, jnp.where(causal, d_scores, 0.0))
    return dq[..., :dk], dk_[..., :dk]
