"""The delta rule in XLA: the chunked WY / UT-transform form, the sequential scan, the dense M.

Every form takes float32 arrays with ``q`` already scaled (``seqzoo.ops.delta_rule`` casts and
scales), in the state layout ``S: (dk, dv)``:

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,     o_t = S_t^T q_t,   a_t = exp(g_t)

Shapes: ``q, k: (b, t, h, dk)``, ``v: (b, t, h, dv)``, ``beta, g: (b, t, h)``,
``s0: (b, h, dk, dv)``, ``runs: (b, t)`` int32, the index of the packed segment each position is
in (0 for the first, which continues from ``s0``; the state is zero where a run starts).

The chunked form (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length", section 3 and appendix B; the gated version of Yang, Kautz & Hatamizadeh 2025).
Write the step as ``S_t = a_t S_{t-1} + k_t d_t^T`` with ``d_t = b_t (v_t - a_t S_{t-1}^T k_t)``.
Inside a chunk of C positions entered with state ``S_0``, with ``gamma_r = a_1 ... a_r``,
``Gamma[r, i] = gamma_r / gamma_i`` (i <= r) and ``D = [d_1; ...; d_C]``:

    (I + A) D = diag(b) V - diag(b gamma) K S_0,   A[r, i] = b_r Gamma[r, i] k_r.k_i   (i < r)
    D  = U - W S_0,   U = T diag(b) V,   W = T diag(b gamma) K,   T = (I + A)^{-1} (UT transform)
    O  = diag(gamma) Q S_0 + (Q K^T * Gamma)_{i <= r} D
    S_C = gamma_C S_0 + (K * gamma_C / gamma)^T D

so everything inside a chunk is matrix products (``T`` by a log-depth block inversion), and only
``S`` passes from chunk to chunk (a ``lax.scan`` over chunks whose backward pass recomputes each
chunk from its inputs and entering state). Decay factors are formed as ``exp`` of a non-positive
difference of cumulative log decays, masked before the ``exp``; a segment start
zeroes ``Gamma`` across it, as if ``a_t = 0`` there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import chunkwise
from seqzoo.ops.segments import entering_runs

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def _mm(spec: str, *operands: Array) -> Array:
    return jnp.einsum(spec, *operands, precision=_HI)


# ---- one step and the sequential form ---------------------------------------------------------
def recurrence_step(s, q_t, k_t, v_t, beta_t, g_t):
    """One step: ``s: (b, h, dk, dv)``; ``q_t, k_t: (b, h, dk)``; ``v_t: (b, h, dv)``;
    ``beta_t, g_t: (b, h)``. Returns ``(S_t, o_t: (b, h, dv))``, in O(dk dv) (no dk x dk
    matrix): ``S = a S``, ``d = b (v - S^T k)``, ``S = S + k d^T``."""
    s = jnp.exp(g_t)[..., None, None] * s
    d = beta_t[..., None] * (v_t - _mm("bhk,bhkv->bhv", k_t, s))
    s = s + k_t[..., :, None] * d[..., None, :]
    return s, _mm("bhk,bhkv->bhv", q_t, s)


def run_starts(runs: Array) -> Array:
    """Where a packed segment starts (never at t = 0): ``(b, t)`` bool from ``runs``."""
    return runs != jnp.pad(runs[:, :-1], ((0, 0), (1, 0)))


def sequential(q, k, v, beta, g, s0, runs):
    """All outputs ``(b, t, h, dv)`` and the final state, one ``lax.scan`` step per position."""

    def body(s, inputs):
        start, *step_inputs = inputs
        return recurrence_step(jnp.where(start[:, None, None, None], 0.0, s), *step_inputs)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (run_starts(runs), q, k, v, beta, g))
    s_final, o = jax.lax.scan(body, s0, xs)
    return jnp.moveaxis(o, 0, 1), s_final


# ---- the UT transform ---------------------------------------------------------------------------
def _diagonal_blocks(a: Array, size: int) -> Array:
    """The ``size x size`` blocks on the diagonal of ``a: (..., n, n)``: ``(..., n // size,
    size, size)``. (A product with the identity rather than ``jnp.diagonal``, whose backward
    pass scatters into a zeros constant that XLA allocates once for the whole step.)"""
    m = a.shape[-1] // size
    blocks = a.reshape(a.shape[:-2] + (m, size, m, size))
    return _mm("...ipjq,ij->...ipq", blocks, jnp.eye(m, dtype=a.dtype))


def unit_lower_inverse(a: Array) -> Array:
    """``(I + A)^{-1}`` for a strictly lower-triangular ``a: (..., c, c)``.

    Recursive 2 x 2 block inversion, ``[[L11, 0], [L21, L22]]^{-1} = [[L11^{-1}, 0],
    [-L22^{-1} L21 L11^{-1}, L22^{-1}]]``, every diagonal block of one size at once: log2(c)
    rounds of batched matrix products (``c`` padded to a power of two with identity rows). Each
    intermediate is a block of the inverse itself, so nothing grows beyond it (unlike a Neumann
    series, whose powers of ``A`` cancel catastrophically in float32).
    """
    c = a.shape[-1]
    n = 1 << (c - 1).bit_length()
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, n - c), (0, n - c)])
    lead = a.shape[:-2]
    inverse = jnp.ones(lead + (n, 1, 1), a.dtype)  # the inverses of the 1 x 1 diagonal blocks
    size = 1
    while size < n:
        pairs = inverse.reshape(lead + (n // (2 * size), 2, size, size))
        inv11, inv22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
        a21 = _diagonal_blocks(a, 2 * size)[..., size:, :size]
        inv21 = -_mm("...ij,...jk,...kl->...il", inv22, a21, inv11)
        top = jnp.pad(inv11, [(0, 0)] * (inv11.ndim - 1) + [(0, size)])  # no zeros constant
        inverse = jnp.concatenate([top, jnp.concatenate([inv21, inv22], axis=-1)], axis=-2)
        size *= 2
    return inverse[..., 0, :c, :c]


# ---- the chunked form ---------------------------------------------------------------------------
def chunked(q, k, v, beta, g, s0, runs, chunk_size):
    """All outputs ``(b, t, h, dv)`` and the final state by the chunked WY form (module
    docstring); any ``t`` (the last chunk is padded with identity steps: ``b = g = 0``).

    One scan step per chunk (``seqzoo.ops.lean_grad.chunkwise``): the backward pass keeps
    only the inputs and the state entering each chunk, ``(n, b, h, dk, dv)``, and recomputes a
    chunk's ``(C, C)`` matrices (``Gamma``, ``T``, the scores) and its ``U, W, D`` when it
    reaches it.
    """
    c = min(chunk_size, q.shape[1])
    return chunkwise(_chunk, c)(((q, k, v, beta, g), entering_runs(runs, c)), (), s0)


def _chunk(inputs, shared, s):
    """One chunk entered with state ``s: (b, h, dk, dv)``: ``(o: (b, c, h, dv), S after it)``.

    q, k ``(b, c, h, dk)``, v ``(b, c, h, dv)``, beta, g ``(b, c, h)``; rc ``(b, c)`` the run of
    each position, entering ``(b, c)`` the run the state ``s`` belongs to (at every position)."""
    (q, k, v, beta, g), (rc, entering) = inputs
    rc, run_before = rc[:, None], entering[:, None, :1]  # (b, 1, c), (b, 1, 1)
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (b, h, c, d): heads first
    beta, g = jnp.swapaxes(beta, 1, 2), jnp.swapaxes(g, 1, 2)
    c = q.shape[-2]
    run_end = rc[..., -1:]  # (b, 1, 1)
    cum = jnp.cumsum(g, axis=-1)  # log gamma_r, (b, h, c)
    causal = jnp.tril(jnp.ones((c, c), bool))
    linked = causal & (rc[..., :, None] == rc[..., None, :])  # i <= r in one segment
    diff = jnp.where(linked, cum[..., :, None] - cum[..., None, :], 0.0)
    gamma_ri = jnp.where(linked, jnp.exp(diff), 0.0)  # Gamma[r, i], (b, h, c, c)
    from_start = jnp.where(rc == run_before, jnp.exp(cum), 0.0)  # gamma_r; 0 after a reset
    to_end = jnp.where(rc == run_end, jnp.exp(cum[..., -1:] - cum), 0.0)  # gamma_C / gamma_i
    total = jnp.where(run_end == run_before, jnp.exp(cum[..., -1:]), 0.0)[..., None]  # gamma_C

    strict = gamma_ri * (1.0 - jnp.eye(c, dtype=gamma_ri.dtype))
    a = beta[..., :, None] * strict * _mm("...rd,...id->...ri", k, k)
    ut = unit_lower_inverse(a)  # T, (b, h, c, c)
    u = _mm("...ri,...iv->...rv", ut, beta[..., None] * v)
    w = _mm("...ri,...id->...rd", ut, (beta * from_start)[..., None] * k)
    d = u - _mm("bhrd,bhdv->bhrv", w, s)

    scores = _mm("...rd,...id->...ri", q, k) * gamma_ri
    o = _mm("...rd,...dv->...rv", q * from_start[..., None], s)
    o = o + _mm("...ri,...iv->...rv", scores, d)
    s = total * s + _mm("bhrd,bhrv->bhdv", k * to_end[..., None], d)
    return jnp.swapaxes(o, 1, 2), s


# ---- the dense mixing matrix --------------------------------------------------------------------
def matrix(q, k, beta, g, runs):
    """``M: (b, h, t, t)`` with ``o_i = sum_j M[i, j] v_j``, straight from the recurrence:

        M[i, j] = q_i^T A_i A_{i-1} ... A_{j+1} b_j k_j    (j <= i, one segment),
        A_l = a_l (I - b_l k_l k_l^T).

    A scan over ``i`` carries ``u_j = A_i ... A_{j+1} b_j k_j`` for every ``j`` at once
    (O(t^2 dk) per head): no WY form, no chunks, so it checks the chunked form independently.
    """
    b, t, h, dk = q.shape

    def body(u, inputs):  # u: (b, h, t, dk), the columns' propagated keys (0 for j >= i)
        i, start, q_i, k_i, beta_i, g_i = inputs
        u = jnp.where(start[:, None, None, None], 0.0, u)
        u = u - (beta_i[..., None] * _mm("bhjd,bhd->bhj", u, k_i))[..., None] * k_i[:, :, None]
        u = jnp.exp(g_i)[..., None, None] * u
        u = u.at[:, :, i].set(beta_i[..., None] * k_i)
        return u, _mm("bhjd,bhd->bhj", u, q_i)

    xs = (jnp.arange(t), *(jnp.moveaxis(a, 1, 0) for a in (run_starts(runs), q, k, beta, g)))
    _, rows = jax.lax.scan(body, jnp.zeros((b, h, t, dk), q.dtype), xs)
    return jnp.moveaxis(rows, 0, 2)  # (t_i, b, h, t_j) -> (b, h, t_i, t_j)
