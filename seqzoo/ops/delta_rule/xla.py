"""The delta rule in XLA: the chunked WY / UT-transform form, the sequential scan, the dense M.

Every form takes float32 arrays with ``q`` already scaled (``seqzoo.ops.delta_rule`` casts and
scales; ``chunked`` takes ``q, k, v`` in its matmul operand dtype, bf16 or float32), in the state
layout ``S: (dk, dv)``:

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,     o_t = S_t^T q_t,   a_t = exp(g_t)

Shapes: ``q, k: (b, t, h, dk)``, ``v: (b, t, h, dv)``, ``beta, g: (b, t, h)`` (``chunked`` also
takes ``g`` None: no decay, DeltaNet, with no decay arithmetic at all),
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
``S`` passes from chunk to chunk: ``Gamma``, ``T``, ``U``, ``W`` and the scores of every chunk are
computed at once, batched over chunks, and a ``lax.scan`` over chunks carries only ``S`` (see
``chunked``). Decay factors are formed as ``exp`` of a non-positive
difference of cumulative log decays, masked before the ``exp``; a segment start
zeroes ``Gamma`` across it, as if ``a_t = 0`` there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.ops.delta_rule.chunked_form import (
    KEPT,
    chunk_inputs,
    chunk_parts,
    chunk_states,
    from_chunks,
    kept_residuals,
    mm,
)
from seqzoo.ops.delta_rule.chunked_vjp import chunked_core_vjp
from seqzoo.ops.lean_grad import blockwise

Array = jax.Array
# The backward pass recomputes all batch rows in one block on a GPU: each block pays the scans over
# chunks' latency again, and one block took 4.7 against 10.5 ms (four) for DeltaNet's forward +
# backward at (4, 2048, 16, 128) bf16 on an H100 ("The delta rule's chunk-parallel XLA form
# beside fla", benchmarks/RESULTS.md; measured with autodiff's backward pass, which ran the same
# two scans per block as ``chunked_vjp.py``: the forward's again and a reverse one). Other
# backends keep ``lean_grad.BLOCKS``.
GPU_BACKWARD_BLOCKS = 1


# ---- one step and the sequential form ---------------------------------------------------------
def recurrence_step(s, q_t, k_t, v_t, beta_t, g_t):
    """One step: ``s: (b, h, dk, dv)``; ``q_t, k_t: (b, h, dk)``; ``v_t: (b, h, dv)``;
    ``beta_t, g_t: (b, h)``. Returns ``(S_t, o_t: (b, h, dv))``, in O(dk dv) (no dk x dk
    matrix): ``S = a S``, ``d = b (v - S^T k)``, ``S = S + k d^T``."""
    s = jnp.exp(g_t)[..., None, None] * s
    d = beta_t[..., None] * (v_t - mm("bhk,bhkv->bhv", k_t, s))
    s = s + k_t[..., :, None] * d[..., None, :]
    return s, mm("bhk,bhkv->bhv", q_t, s)


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




# ---- the chunked form ---------------------------------------------------------------------------
def chunked(q, k, v, beta, g, s0, runs, chunk_size):
    """All outputs ``(b, t, h, dv)`` and the final state by the chunked WY form (module
    docstring); any ``t`` (the last chunk is padded with identity steps: ``k = b = g = 0``).

    Three passes over ``n = t / C`` chunks, as fla's ``chunk_gated_delta_rule``:

    1. parallel over all chunks (``chunk_parts``): decays, ``Gamma``, ``A``, ``T``, ``U``,
       ``W``, the scores ``Q K^T * Gamma``, ``(n, b, h, C, .)``;
    2. a ``lax.scan`` over chunks carrying only ``S``: ``D = U - W S``,
       ``S <- gamma_C S + (K * gamma_C / gamma)^T D``, stacking ``D`` and the entering ``S``;
    3. parallel: ``O = diag(gamma) Q S_entering + scores D``.

    Dtypes: ``q, k, v`` come in the matmul operand dtype (bf16 for bf16 inputs, float32 otherwise;
    ``beta, g, s0`` float32). Every matmul takes operands in that dtype and accumulates in float32
    (``preferred_element_type``; float32 operands at ``Precision.HIGHEST``); the decays, ``A``,
    ``T = (I + A)^{-1}`` (computed in float32 at HIGHEST, as fla's ``solve_tril``) and the
    carried ``S`` stay float32; ``T``, ``D``, ``S`` and the scores are rounded to the operand
    dtype only where they enter a matmul (fla stores them so). Output float32.

    Memory (``chunked_form.keep_residuals``, read when traced; by default ``"transform"`` on a
    GPU and ``"inputs"`` elsewhere): with ``"inputs"`` the backward pass keeps only the
    arguments (``seqzoo.ops.lean_grad.blockwise``: a ``custom_vjp``, here with the VJP derived
    by hand in ``chunked_vjp.py``, a block of batch rows at a time: all rows at once on a GPU,
    ``GPU_BACKWARD_BLOCKS``). It recomputes pass 1 and the scan's states, then runs a reverse
    scan over chunks carrying only the state's cotangent and the rest parallel over chunks; so
    no chunk's ``(C, C)`` matrices, ``U``, ``W``, ``D`` or states outlive the forward pass, at
    the cost of passes 1 and 2 once more. Both passes hold every chunk's ``(C, C)`` matrices at
    once (``n b h C^2`` floats each), the price of the chunk-parallel pass 1.

    With ``"transform"`` the backward pass takes ``T`` kept from the forward pass beside the
    arguments and skips the UT transform; with ``"states"`` also the entering states and ``D``,
    and skips the forward scan too (sizes in ``keep_residuals``' docstring). Both run on all
    rows at once: row blocks exist to bound the recomputation's intermediates, and what is kept
    already holds every row's; the point is speed, memory the price.
    """
    t = q.shape[1]
    c = min(chunk_size, t)
    vjp = functools.partial(chunked_core_vjp, c=c)
    what = kept_residuals()
    if what == "inputs":
        core = blockwise(functools.partial(_chunked_core, c=c), gpu_blocks=GPU_BACKWARD_BLOCKS,
                         vjp=vjp)
    else:
        core = blockwise(functools.partial(_chunked_core_keeping, c=c, kept=KEPT[what]),
                         vjp=vjp, keep=True)
    o, s = core(_padded(q, k, v, beta, g, s0, runs, c), ())
    return o[:, :t], s


def _padded(q, k, v, beta, g, s0, runs, c):
    """``_chunked_core``'s rows: the arguments padded to whole chunks of ``c`` (identity steps,
    ``k = b = g = 0``, in the last run) and ``before``."""
    t = q.shape[1]
    n = -(-t // c)
    pad = n * c - t
    before = runs[:, np.maximum(np.arange(n) * c - 1, 0)] * (np.arange(n) > 0)  # (b, n)
    if pad:
        q, k, v, beta, g = (None if a is None else
                            jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
                            for a in (q, k, v, beta, g))
        runs = jnp.pad(runs, ((0, 0), (0, pad)), mode="edge")
    return q, k, v, beta, g, s0, runs, before


def _chunked_core(rows, shared, c):
    """``chunked`` on a length that ``c`` divides: ``rows = (q, k, v, beta, g, s0, runs,
    before)``, ``before: (b, n)`` the run of the state entering each chunk; ``shared = ()``.
    Returns ``(o, S_T)``."""
    return _chunked_core_keeping(rows, shared, c, kept=0)[0]


def _chunked_core_keeping(rows, shared, c, kept):
    """``((o, S_T), kept arrays)``: ``_chunked_core``'s outputs and the first ``kept`` (a count,
    ``chunked_form.KEPT``) of ``(T, S_j, D_j)``, what ``chunked_core_vjp`` takes as ``kept``."""
    dt, s0 = rows[0].dtype, rows[5]
    (qg, scores, u, w, kt, total), (ut, _, _) = chunk_parts(*chunk_inputs(rows, c))
    s_final, entering, d = chunk_states(s0, u, w, kt, total, dt)
    o = mm("...rd,...dv->...rv", qg, entering, dtype=dt)
    o = o + mm("...ri,...iv->...rv", scores, d, dtype=dt)  # (n, b, h, c, dv)
    return (from_chunks(o), s_final), (ut, entering, d)[:kept]


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
        u = u - (beta_i[..., None] * mm("bhjd,bhd->bhj", u, k_i))[..., None] * k_i[:, :, None]
        u = jnp.exp(g_i)[..., None, None] * u
        u = u.at[:, :, i].set(beta_i[..., None] * k_i)
        return u, mm("bhjd,bhd->bhj", u, q_i)

    xs = (jnp.arange(t), *(jnp.moveaxis(a, 1, 0) for a in (run_starts(runs), q, k, beta, g)))
    _, rows = jax.lax.scan(body, jnp.zeros((b, h, t, dk), q.dtype), xs)
    return jnp.moveaxis(rows, 0, 2)  # (t_i, b, h, t_j) -> (b, h, t_i, t_j)
