"""The chunked delta rule's backward pass, derived by hand (as fla's ``chunk_gated_delta_rule``
backward is organised) in place of autodiff through the block inversion and the scan.

Forward, per chunk ``j`` (``xla.py``'s docstring; ``chunk_parts`` and ``chunk_states``):

    D_j = U_j - W_j S_j,    S_{j+1} = total_j S_j + kt_j^T D_j,    O_j = qg_j S_j + P_j D_j

with ``qg = diag(gamma) Q``, the scores ``P = (Q K^T) * Gamma``, ``U = T diag(b) V``, ``W = T
diag(b gamma) K``, ``T = (I + A)^{-1}``, ``A = diag(b) (K K^T * Gamma)`` strictly below the
diagonal, ``kt = diag(gamma_C / gamma) K``, ``total = gamma_C``. Given ``dO_j`` and ``dS_n``
(the final state's cotangent):

1. recompute the parts (parallel over chunks) and ``S_j``, ``D_j`` (the forward scan), or take
   ``T`` (and ``S_j``, ``D_j``) kept from the forward pass (``chunked_form.keep_residuals``);
2. a reverse scan over chunks carrying ``dS`` (``dS_{j+1}`` entering chunk ``j``):

       dD_j = P_j^T dO_j + kt_j dS_{j+1},   dS_j = total_j dS_{j+1} + qg_j^T dO_j - W_j^T dD_j

   (``P_j^T dO_j`` and ``qg_j^T dO_j`` computed for every chunk before it), ending in ``dS_0``,
   the initial state's cotangent;
3. parallel over chunks, from the stacked ``S_j``, ``D_j``, ``dS_{j+1}``, ``dD_j``:

       d kt = D dS_{j+1}^T,  d total = <S_j, dS_{j+1}>,  dU = dD,  dW = -dD S_j^T,
       d qg = dO S_j^T,  dP = dO D^T,
       dT = dU (diag(b) V)^T + dW (diag(b gamma) K)^T,  dA = -T^T dT T^T,

   then the products and the masks elementwise to ``dQ, dK, dV, dbeta`` and, with a decay, the
   cotangent of ``Gamma, gamma, gamma_C / gamma, gamma_C`` as one of the cumulative log decay
   ``cum`` (each factor ``x = exp(difference of cum)``: ``d cum = +-x dx``), and ``dg`` its
   reverse cumulative sum within the chunk. Without a decay (DeltaNet) the decays are constant
   masks: no decay arithmetic in either pass.

Masked entries (across a segment start, above the diagonal) get no gradient: every cotangent
passes through the same mask (a zero factor) as the forward value. Dtypes as the forward's:
matmul operands in the operand dtype (bf16 for bf16 inputs) accumulated in float32, except
``dA = -T^T dT T^T``, float32 at HIGHEST as ``T`` itself; ``dS`` and every elementwise cotangent
float32. The scans take ``chunked_form.scan_unroll``'s unroll.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.delta_rule.chunked_form import (
    chunk_inputs,
    chunk_parts,
    chunk_states,
    current_unroll,
    from_chunks,
    mm,
    to_chunks,
)


def chunked_core_vjp(rows, shared, cotangents, kept=(), *, c):
    """The VJP of ``xla._chunked_core(rows, shared, c)`` at ``rows`` for the cotangents ``(dO
    (b, n c, h, dv), dS_n (b, h, dk, dv))``: ``(d rows, d shared)``, None for ``g`` None,
    ``runs`` and ``before``. ``kept``: what step 1 takes from the forward pass rather than
    recomputing (``chunked_form.keep_residuals``): ``()``, ``(T,)`` or ``(T, S_j, D_j)``
    (``(n, b, h, c, c)``, ``(n, b, h, dk, dv)``, ``(n, b, h, c, dv)``)."""
    dt, g, s0 = rows[0].dtype, rows[4], rows[5]
    do, ds_final = cotangents
    qc, kc, vc, bc, decays = chunk_inputs(rows, c)
    ut, *states = kept or (None,)
    (qg, scores, u, w, kt, total), (ut, qk, kk) = chunk_parts(qc, kc, vc, bc, decays, ut)
    entering, d = states or chunk_states(s0, u, w, kt, total, dt)[1:]
    do = to_chunks(do, c)  # (n, b, h, c, dv)

    def body(ds, xs):  # ds = dS_{j+1}
        scores_do, qg_do, w, kt, total = xs
        dd = scores_do + mm("bhrd,bhdv->bhrv", kt, ds, dtype=dt)
        return total * ds + qg_do - mm("bhrd,bhrv->bhdv", w, dd, dtype=dt), (ds, dd)

    scores_do = mm("...ri,...rv->...iv", scores, do, dtype=dt)
    qg_do = mm("...rd,...rv->...dv", qg, do, dtype=dt)
    ds0, (ds, dd) = jax.lax.scan(body, ds_final,
                                 (scores_do, qg_do, w, kt, total), reverse=True,
                                 unroll=current_unroll(w.shape[0]))

    d_kt = mm("...rv,...dv->...rd", d, ds, dtype=dt)
    dw = -mm("...rv,...dv->...rd", dd, entering, dtype=dt)
    d_qg = mm("...rv,...dv->...rd", do, entering, dtype=dt)
    d_scores = mm("...rv,...iv->...ri", do, d, dtype=dt)

    gamma_ri, from_start, to_end, _ = decays
    bv = bc[..., None] * vc
    bk = (bc * from_start)[..., None] * kc
    dut = (mm("...rv,...iv->...ri", dd, bv, dtype=dt)
           + mm("...rd,...id->...ri", dw, bk, dtype=dt))
    da = -mm("...ir,...ij,...kj->...rk", ut, dut, ut)  # -T^T dT T^T in T's dtype (float32)
    dbv = mm("...ri,...rv->...iv", ut, dd, dtype=dt)  # T^T dU
    dbk = mm("...ri,...rd->...id", ut, dw, dtype=dt)  # T^T dW
    off_diagonal = 1.0 - jnp.eye(c, dtype=gamma_ri.dtype)
    strict = gamma_ri * off_diagonal
    d_strict = da * bc[..., :, None] * kk  # A = diag(b) (strict * K K^T)
    dkk = da * bc[..., :, None] * strict
    dqk = d_scores * gamma_ri
    k_dbk = jnp.sum(kc * dbk, axis=-1)

    dq = from_start[..., None] * d_qg + mm("...ri,...id->...rd", dqk, kc, dtype=dt)
    dk = ((bc * from_start)[..., None] * dbk + to_end[..., None] * d_kt
          + mm("...ri,...rd->...id", dqk, qc, dtype=dt)
          + mm("...ri,...id->...rd", dkk + jnp.swapaxes(dkk, -1, -2), kc, dtype=dt))
    dv = bc[..., None] * dbv
    dbeta = (jnp.sum(vc * dbv, axis=-1) + from_start * k_dbk
             + jnp.sum(strict * kk * da, axis=-1))
    dg = None
    if g is not None:
        dg = _decay_vjp(decays, d_total=jnp.sum(entering * ds, axis=(-2, -1)),
                        d_gamma=d_scores * qk + d_strict * off_diagonal,
                        d_from_start=jnp.sum(d_qg * qc, axis=-1) + bc * k_dbk,
                        d_to_end=jnp.sum(d_kt * kc, axis=-1))
    d_rows = (*(from_chunks(a).astype(dt) for a in (dq, dk, dv)), from_chunks(dbeta),
              dg, ds0, None, None)
    return d_rows, ()


def _decay_vjp(decays, d_total, d_gamma, d_from_start, d_to_end):
    """``dg`` ``(b, n c, h)`` from the cotangents of ``chunk_decays``' outputs ``(Gamma, gamma,
    gamma_C / gamma, gamma_C)``: each is ``exp`` of a difference of ``cum = cumsum(g)`` (or 0
    where masked), so ``d cum`` gathers ``x dx`` with the difference's signs, and ``dg`` is its
    reverse cumulative sum within the chunk."""
    gamma_ri, from_start, to_end, total = decays
    x = d_gamma * gamma_ri  # d (cum_r - cum_i)
    d_cum = jnp.sum(x, axis=-1) - jnp.sum(x, axis=-2) + d_from_start * from_start
    d_end = d_to_end * to_end  # d (cum_C - cum_i)
    d_cum = d_cum - d_end
    last = jnp.sum(d_end, axis=-1) + d_total * total[..., 0, 0]
    d_cum = d_cum + last[..., None] * (jnp.arange(d_cum.shape[-1]) == d_cum.shape[-1] - 1)
    return from_chunks(jax.lax.cumsum(d_cum, axis=d_cum.ndim - 1, reverse=True))
