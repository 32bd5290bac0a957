"""The chunked delta rule's pieces, shared by its forward pass (``xla.chunked``) and its
hand-derived backward pass (``chunked_vjp.py``): the chunk layout, the decays of every chunk, the
UT transform ``T = (I + A)^{-1}``, the state-independent parts of every chunk, the scan over
chunks carrying ``S``, and the matmul rule every product follows. The equations and shapes are
in ``xla.py``'s docstring.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from seqzoo.kernels.launch import GPU_BACKENDS
from seqzoo.ops.checks import check_positive_int

Array = jax.Array
# On a GPU the scans over chunks are unrolled whole up to this many chunks: at 32 chunks ((4,
# 2048, 16, 128), chunk 64, an H100) DeltaNet's forward and forward+backward and Gated
# DeltaNet's forward+backward were each faster unrolled ("The delta rule's chunk-parallel XLA
# form beside fla", benchmarks/RESULTS.md). Longer inputs stay rolled: not timed, and the
# program grows with every chunk unrolled. Other backends roll (a CPU compiles it for tests).
GPU_UNROLL_CHUNKS = 32
# keep_residuals' choices: how many of ``(T, the entering states, D)`` each keeps (the ``kept``
# of ``chunked_vjp.chunked_core_vjp``)
KEPT = {"inputs": 0, "transform": 1, "states": 3}
# What a GPU keeps by default: ``T``, as fla's ``chunk_delta_rule`` keeps its ``A``. DeltaNet's
# forward+backward at (4, 2048, 16, 128) bf16 on an H100 took 4.07 ms keeping the inputs, 3.24
# keeping ``T`` and 3.23 keeping the states too, in one call ("The delta rule's chunk-parallel
# XLA form beside fla", benchmarks/RESULTS.md): "states" buys nothing more for 6x the memory.
# Other backends keep the inputs (their backward pass runs in blocks of rows, for memory).
GPU_KEPT = "transform"
_HI = jax.lax.Precision.HIGHEST
_unrolls: list[int] = []  # scan_unroll's stack
_keeps: list[str] = []  # keep_residuals' stack


@contextlib.contextmanager
def scan_unroll(n: int):
    """Within: the chunked form's scans over chunks run ``n`` chunks per loop iteration
    (``lax.scan``'s ``unroll``, forward and backward; read when traced), in place of the
    default (``current_unroll``). A GPU pays a fixed cost per iteration, which unrolling saves
    at the price of code size; ``benchmarks/kernel_cases/delta_rule.py`` times it (``xla
    chunked unroll N``)."""
    check_positive_int(n, "scan_unroll's n")
    _unrolls.append(n)
    try:
        yield
    finally:
        _unrolls.pop()


@contextlib.contextmanager
def keep_residuals(what: str):
    """Within: the chunked form's backward pass takes what ``what`` names from its forward pass
    rather than recomputing it from the inputs (read when traced; ``xla.chunked``). ``what``:

    - ``"inputs"``: nothing but the arguments; the backward pass recomputes ``T``, the states
      and ``D`` (in blocks of batch rows off a GPU, ``lean_grad.blockwise``): the least memory;
    - ``"transform"``: ``T = (I + A)^{-1}`` of every chunk, ``(n, b, h, c, c)`` float32; the
      backward pass skips the UT transform (``unit_lower_inverse``);
    - ``"states"``: ``T``, the state entering every chunk ``(n, b, h, dk, dv)`` float32 and
      ``D`` ``(n, b, h, c, dv)`` in the operand dtype; the backward pass skips the forward scan
      too, leaving its reverse scan the only one.

    Outside, the default (``kept_residuals``): ``"transform"`` on a GPU (``GPU_KEPT``),
    ``"inputs"`` elsewhere. Speed for memory, per layer: at ``(b, t, h, dk = dv = d)``, chunk
    ``c``, ``T`` is ``4 b t h c`` bytes, the states ``4 b t h d^2 / c``, ``D`` ``2 b t h d`` in
    bf16 (at (4, 2048, 16, 128) bf16, chunk 64: 32, 128 and 32 MiB, beside 32 MiB for each of
    ``q, k, v``). ``benchmarks/kernel_cases/delta_rule.py`` times the three (``xla chunked keep
    inputs``, ``keep transform``, ``keep states``)."""
    if what not in KEPT:
        raise ValueError(f"keep_residuals takes one of {tuple(KEPT)}, got {what!r}")
    _keeps.append(what)
    try:
        yield
    finally:
        _keeps.pop()


def kept_residuals() -> str:
    """What the innermost ``keep_residuals`` keeps; outside one, ``GPU_KEPT`` on a GPU and
    ``"inputs"`` elsewhere (read when traced, as ``current_unroll``)."""
    if _keeps:
        return _keeps[-1]
    return GPU_KEPT if jax.default_backend() in GPU_BACKENDS else "inputs"


def mm(spec: str, *operands: Array, dtype=None) -> Array:
    """``einsum`` with operands rounded to ``dtype`` (default: their common dtype), accumulated
    in float32 or wider; float32 (and wider) operands at ``Precision.HIGHEST``: IEEE products,
    not TF32 / bf16 passes."""
    dtype = jnp.dtype(jnp.result_type(*operands) if dtype is None else dtype)
    precision = _HI if dtype.itemsize >= 4 else None
    return jnp.einsum(spec, *(a.astype(dtype) for a in operands), precision=precision,
                      preferred_element_type=jnp.promote_types(dtype, jnp.float32))


def _below_diagonal_blocks(a: Array, size: int) -> Array:
    """The lower-left ``size x size`` quarter of each ``2 size x 2 size`` block on the diagonal
    of ``a: (..., n, n)``: ``(..., n // (2 size), size, size)``, ``a[2 j s + s + p, 2 j s + q]``.
    (Sliced before a product with the identity, rather than ``jnp.diagonal``, whose backward
    pass scattered into a zeros constant that XLA allocates once for the whole step; chosen
    while autodiff ran through this, which the chunked form's backward pass, ``chunked_vjp.py``,
    no longer does. The forward pass has not been timed with ``jnp.diagonal`` since.)"""
    m = a.shape[-1] // (2 * size)
    blocks = a.reshape(a.shape[:-2] + (m, 2, size, m, 2, size))[..., :, 1, :, :, 0, :]
    return mm("...ipjq,ij->...ipq", blocks, jnp.eye(m, dtype=a.dtype))


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
        a21 = _below_diagonal_blocks(a, size)
        inv21 = -mm("...ij,...jk,...kl->...il", inv22, a21, inv11)
        top = jnp.pad(inv11, [(0, 0)] * (inv11.ndim - 1) + [(0, size)])  # no zeros constant
        inverse = jnp.concatenate([top, jnp.concatenate([inv21, inv22], axis=-1)], axis=-2)
        size *= 2
    return inverse[..., 0, :c, :c]


def to_chunks(a: Array, c: int) -> Array:
    """``(b, n c, h, ...) -> (n, b, h, c, ...)`` (``(b, n c, h)`` -> ``(n, b, h, c)``)."""
    b, t, h = a.shape[:3]
    a = a.reshape((b, t // c, c, h) + a.shape[3:])
    return jnp.moveaxis(a, (0, 1, 2, 3), (1, 0, 3, 2))


def from_chunks(a: Array) -> Array:
    """``(n, b, h, c, ...) -> (b, n c, h, ...)``, the inverse of ``to_chunks``."""
    a = jnp.moveaxis(a, (0, 1, 2, 3), (1, 0, 3, 2))  # (b, n, c, h, ...)
    return a.reshape((a.shape[0], -1) + a.shape[3:])


def chunk_inputs(rows, c):
    """``chunk_parts``' arguments from ``_chunked_core``'s rows: ``q, k, v, beta`` by chunk and
    the decays (``chunk_decays``)."""
    q, k, v, beta, g, _, runs, before = rows
    rc = to_chunks(runs[..., None], c)  # (n, b, 1, c)
    g = None if g is None else to_chunks(g, c)
    return (*(to_chunks(a, c) for a in (q, k, v, beta)),
            chunk_decays(g, rc, before.T[:, :, None, None]))


def chunk_states(s0, u, w, kt, total, dt):
    """The scan over chunks carrying only ``S``: ``D = U - W S``, ``S <- total S + kt^T D``.
    Returns the final state, the state entering each chunk ``(n, b, h, dk, dv)`` float32 and
    ``D`` ``(n, b, h, c, dv)`` in ``dt`` (rounded as fla's ``v_new``)."""

    def body(s, xs):
        u, w, kt, total = xs
        d = (u - mm("bhrd,bhdv->bhrv", w, s, dtype=dt)).astype(dt)
        return total * s + mm("bhrd,bhrv->bhdv", kt, d, dtype=dt), (s, d)

    s_final, (entering, d) = jax.lax.scan(body, s0, (u, w, kt, total),
                                          unroll=current_unroll(u.shape[0]))
    return s_final, entering, d


def current_unroll(chunks: int) -> int:
    """The chunks per iteration of a scan over ``chunks`` chunks: ``scan_unroll``'s, else all
    of them on a GPU up to ``GPU_UNROLL_CHUNKS``, else 1."""
    if _unrolls:
        return _unrolls[-1]
    on_gpu = jax.default_backend() in GPU_BACKENDS
    return chunks if on_gpu and chunks <= GPU_UNROLL_CHUNKS else 1


def chunk_decays(g, rc, before):
    """The decays of every chunk, with a segment start zeroing every decay across it: ``Gamma``
    ``(n, b, h, c, c)`` (``Gamma[r, i] = gamma_r / gamma_i`` for ``i <= r`` in one segment, else
    0), ``gamma_r`` from the chunk's start ``(n, b, h, c)`` (0 after a reset), ``gamma_C /
    gamma_i`` ``(n, b, h, c)`` (0 before a reset) and ``gamma_C`` ``(n, b, h, 1, 1)`` (0 with
    a reset in the chunk), float32; the head axis is 1 where ``g`` is None (no decay: the masks
    alone). g ``(n, b, h, c)`` float32 or None; rc ``(n, b, 1, c)`` the run of each position;
    before ``(n, b, 1, 1)`` the run the entering state belongs to."""
    c = rc.shape[-1]
    run_end = rc[..., -1:]  # (n, b, 1, 1)
    causal = jnp.tril(jnp.ones((c, c), bool))
    linked = causal & (rc[..., :, None] == rc[..., None, :])  # i <= r in one segment
    if g is None:  # DeltaNet: the decays are the masks alone (a cumsum of zeros would be folded
        # by XLA into constants of every chunk's size, read from memory: slower than gated)
        return tuple(m.astype(jnp.float32) for m in (linked, rc == before, rc == run_end,
                                                      (run_end == before)[..., None]))
    cum = jnp.cumsum(g, axis=-1)  # log gamma_r
    diff = jnp.where(linked, cum[..., :, None] - cum[..., None, :], 0.0)
    gamma_ri = jnp.where(linked, jnp.exp(diff), 0.0)  # Gamma[r, i]
    from_start = jnp.where(rc == before, jnp.exp(cum), 0.0)  # gamma_r; 0 after a reset
    to_end = jnp.where(rc == run_end, jnp.exp(cum[..., -1:] - cum), 0.0)  # gamma_C / gamma_i
    total = jnp.where(run_end == before, jnp.exp(cum[..., -1:]), 0.0)[..., None]  # gamma_C
    return gamma_ri, from_start, to_end, total


def chunk_parts(q, k, v, beta, decays, ut=None):
    """Everything of every chunk that does not depend on the entering state, batched.

    q, k ``(n, b, h, c, dk)``, v ``(n, b, h, c, dv)`` in the operand dtype; beta ``(n, b, h,
    c)`` float32; decays ``chunk_decays``'; ut: ``T`` if known (kept from the forward pass,
    ``keep_residuals``), else None: computed here (the UT transform). Returns ``(diag(gamma) Q``
    ``(.., c, dk)``, the scores ``Q K^T * Gamma`` ``(.., c, c)``, ``U`` ``(.., c, dv)``, ``W``
    ``(.., c, dk)``, ``K * gamma_C / gamma`` ``(.., c, dk)`` (float32), ``gamma_C`` ``(.., 1,
    1))`` and, for the backward pass, ``(T, Q K^T, K K^T)`` ``(.., c, c)`` float32."""
    dt = q.dtype
    c = q.shape[-2]
    gamma_ri, from_start, to_end, total = decays
    kk = mm("...rd,...id->...ri", k, k, dtype=dt)
    if ut is None:
        strict = gamma_ri * (1.0 - jnp.eye(c, dtype=gamma_ri.dtype))
        ut = unit_lower_inverse(beta[..., :, None] * strict * kk)  # T, float32
    u = mm("...ri,...iv->...rv", ut, beta[..., None] * v, dtype=dt)
    w = mm("...ri,...id->...rd", ut, (beta * from_start)[..., None] * k, dtype=dt)
    qk = mm("...rd,...id->...ri", q, k, dtype=dt)
    parts = q * from_start[..., None], qk * gamma_ri, u, w, k * to_end[..., None], total
    return parts, (ut, qk, kk)
