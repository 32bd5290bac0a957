"""Functions whose backward pass keeps only their inputs, recomputing the rest block by block.

JAX's autodiff keeps a function's intermediates for the backward pass: exact GELU its erfc and
exp terms (three or four tensors of its input's size), GLU both halves and the sigmoid, layer
norm the centred and normalised input, an FFT convolution the input's zero-padded spectrum and
the twice-as-long inverse transform, the S4D kernel its ``(H, N/2, L)`` Vandermonde powers. In a
training step each lives from the layer's forward pass until the backward pass reaches it, in
every layer at once: most of an S4 model's memory. ``jax.checkpoint`` would recompute them, but
XLA's CPU scheduler is free to run the recomputation early, inside the forward pass, so the
memory stays: every residual block of lra/listops_s4d wrapped in ``nn.remat`` cut autodiff's
residuals from 30.6 to 2.7 GiB and left the compiled CPU step at 34.97 GiB (jax 0.10.2).

``blockwise(fn)`` is ``fn(rows, shared)`` (``rows``: arrays sharing a leading axis, e.g. the
batch; ``shared``: anything else, e.g. parameters) with a ``custom_vjp`` that keeps only the
arguments and, in the backward pass, recomputes ``fn`` and its VJP in a loop over blocks of
rows (at least ``BLOCKS``, its ``gpu_blocks`` on a GPU, or what ``fewest_blocks`` sets;
gradients of ``shared`` summed over the blocks). A loop body cannot be merged with, or moved
into, the forward pass, so this holds on every backend, and the recomputation's own
intermediates exist for one block at a time (the loop's accumulators are made to wait for the
cotangent, see ``_zero_after``). ``forward=True`` runs the forward pass block by block too,
for functions whose forward intermediates are large (a scan's states, attention scores). The
cost is one more forward pass of ``fn``. ``vjp=`` replaces autodiff's VJP of ``fn`` in that loop
by one written by hand (the chunked delta rule's, ``delta_rule/chunked_vjp.py``); with
``keep=True`` that VJP also gets arrays ``fn`` returns for it (its forward intermediates: no
recomputation, no blocks; speed for memory).
The values are ``fn``'s; gradients equal autodiff's up to float rounding (the sums over blocks).
Forward-mode autodiff (``jax.jvp``) is not defined for these functions (``custom_vjp``).

``chunkwise(fn, chunk)`` does the same along the sequence for a causal op that carries a state
(a scan): ``fn(rows, shared, state)`` runs one chunk of steps, a ``lax.scan`` runs the chunks in
order, and the backward pass keeps the arguments and the state entering each chunk, recomputing
one chunk at a time in reverse (see its docstring).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.kernels.launch import GPU_BACKENDS
from seqzoo.ops.checks import check_positive_int
from seqzoo.parallel.context import sequence_axis, sequence_parallel

Array = jax.Array
BLOCKS = 4  # row blocks of a backward pass (the smallest divisor of the rows >= this)
BLOCK_ELEMENTS = 2**24  # the most elements of one block's largest intermediate (``blockwise``)
_fewest_blocks: list[int] = []  # what ``fewest_blocks`` contexts set, the innermost last


@contextlib.contextmanager
def fewest_blocks(n: int):
    """Within: ``blockwise`` functions called here split their rows into at least ``n`` blocks
    (in place of ``BLOCKS`` or their ``gpu_blocks``; still more where ``row_elements`` needs
    them to stay under the budget).
    Fewer blocks trade memory for speed where a block runs a sequential loop (the delta rule's
    scan over chunks pays its latency once per block): ``with fewest_blocks(1): ...``. Read
    when the function is called (traced), for its forward and backward pass alike."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fewest_blocks needs an int >= 1, got {n!r}")
    _fewest_blocks.append(n)
    try:
        yield
    finally:
        _fewest_blocks.pop()


def num_blocks(rows: int, target: int = BLOCKS) -> int:
    """The smallest divisor of ``rows`` that is at least ``min(rows, target)``."""
    return next(k for k in range(max(1, min(rows, target)), rows + 1) if rows % k == 0)


def size_budget(arrays) -> int:
    """A ``blockwise`` budget (``block_elements``) relative to the data: the elements of
    ``arrays`` (say the inputs an op keeps, all rows), at most ``BLOCK_ELEMENTS``. A block's
    largest intermediate is then no larger than those inputs however small the step is, and no
    larger than with the default budget."""
    return min(BLOCK_ELEMENTS, sum(a.size for a in jax.tree.leaves(arrays)))


def blockwise(
    fn: Callable[[Any, Any], Any],
    *,
    row_elements: Callable[[Any], int] | None = None,
    forward: bool = False,
    block_elements: Callable[[Any], int] | None = None,
    gpu_blocks: int | None = None,
    vjp: Callable[..., tuple[Any, Any]] | None = None,
    keep: bool = False,
) -> Callable[[Any, Any], Any]:
    """``fn(rows, shared)`` with a backward pass that keeps only its arguments and recomputes
    ``fn`` block by block (see the module docstring). ``fn``'s outputs have the rows' leading
    axis and must not mix rows.

    row_elements: ``rows -> elements`` of ``fn``'s largest intermediate per row; the blocks
      are then also small enough that it stays under ``BLOCK_ELEMENTS`` per block (where rows
      allow). forward: run the forward pass block by block too (for an ``fn`` whose forward
      intermediates are the problem, e.g. a scan's states). block_elements: ``rows -> `` the
      budget per block in place of ``BLOCK_ELEMENTS``, e.g. the rows' own size, for an ``fn``
      whose intermediates are many times its arguments (so that they stay a fraction of the
      activations however small the step is). gpu_blocks: the fewest blocks where the default
      backend is a GPU, in place of ``BLOCKS`` (e.g. 1 for an ``fn`` that runs a sequential loop,
      whose latency each block pays again; a measured choice, see the caller), unless a
      ``fewest_blocks`` context is active. vjp: ``(rows, shared, cotangent) -> (d_rows,
      d_shared)``, ``fn``'s backward pass on one block written by hand, in place of autodiff's
      VJP of ``fn`` (None or anything for the leaves without a cotangent: ints, bools, None).
      keep: ``fn`` returns ``(out, kept)`` (``kept``: any arrays, e.g. intermediates of its
      forward pass) and the function returns ``out``; ``kept`` joins the arguments between the
      passes and the backward pass is ``vjp(rows, shared, cotangent, kept)`` (required; its
      cotangents in the arguments' dtypes) on all rows at once (``kept`` need not have the
      rows' leading axis; no loop, nothing recomputed but what ``vjp`` chooses to). Needs
      ``forward=False``.
    """

    if gpu_blocks is not None:
        check_positive_int(gpu_blocks, "gpu_blocks")
    if keep and (vjp is None or forward):
        raise ValueError("blockwise's keep=True needs a vjp and forward=False")

    def blocks(rows, fewest: int) -> int:
        n = jax.tree.leaves(rows)[0].shape[0]
        wanted = fewest
        if row_elements is not None:
            budget = BLOCK_ELEMENTS if block_elements is None else max(1, block_elements(rows))
            wanted = max(wanted, -(-n * row_elements(rows) // budget))
        return num_blocks(n, wanted)

    def in_context(axis, f=fn):  # f as traced where it was called (see below)
        def run(*args):
            with sequence_parallel(axis):
                return f(*args)

        return run

    def forward_pass(rows, shared, context):
        axis, fewest = context
        k = blocks(rows, fewest) if forward else 1
        if k == 1:
            return in_context(axis)(rows, shared)
        split = jax.tree.map(lambda a: a.reshape((k, a.shape[0] // k) + a.shape[1:]), rows)
        out = jax.lax.map(lambda part: in_context(axis)(part, shared), split)
        return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)

    def out_and_kept(rows, shared, context):
        out = forward_pass(rows, shared, context)
        return out if keep else (out, ())

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def call(rows, shared, context):
        return out_and_kept(rows, shared, context)[0]

    def fwd(rows, shared, context):
        out, kept = out_and_kept(rows, shared, context)
        return out, (rows, shared, kept)

    def bwd(context, residuals, g):
        axis, fewest = context
        fn_here = in_context(axis)
        vjp_here = None if vjp is None else in_context(axis, vjp)
        rows, shared, kept = residuals
        if keep:
            d_rows, d_shared = vjp_here(rows, shared, g, kept)
            return _cotangents(d_rows, rows), _cotangents(d_shared, shared)
        n = jax.tree.leaves(rows)[0].shape[0]
        k = blocks(rows, fewest)
        size = n // k

        def block(i, a):
            return jax.lax.dynamic_slice_in_dim(a, i * size, size)

        def put(i, full, part):
            if full is None:  # not differentiable: no cotangent to keep
                return None
            return jax.lax.dynamic_update_slice_in_dim(full, part.astype(full.dtype), i * size, 0)

        def body(i, carry):
            d_shared, d_rows = carry
            part = jax.tree.map(functools.partial(block, i), rows)
            g_part = jax.tree.map(functools.partial(block, i), g)
            if vjp_here is None:
                dr, ds = jax.vjp(fn_here, part, shared)[1](g_part)
            else:
                dr, ds = vjp_here(part, shared, g_part)
            d_rows = _map_float(functools.partial(put, i), d_rows, dr)
            return _map_float(jnp.add, d_shared, ds), d_rows

        zero = _zero_after(g)
        zeros = (_float_zeros(shared, zero), _float_zeros(rows, zero))
        d_shared, d_rows = jax.lax.fori_loop(0, k, body, zeros)
        return _cotangents(d_rows, rows), _cotangents(d_shared, shared)

    call.defvjp(fwd, bwd)

    def lean(rows, shared):
        # The backward pass is traced later, outside the caller's ``sequence_parallel`` context
        # (the sharded ops call the plain ones under ``sequence_parallel(None)``): fn runs under
        # the axis that was active here, in both passes.
        return call(rows, shared, (sequence_axis(), fewest()))

    def fewest() -> int:
        if _fewest_blocks:
            return _fewest_blocks[-1]
        on_gpu = gpu_blocks is not None and jax.default_backend() in GPU_BACKENDS
        return gpu_blocks if on_gpu else BLOCKS

    return lean


def _differentiable(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.inexact)


def _zero_after(g) -> Array:
    """An int32 0 computed from the cotangent ``g``, which XLA cannot prove to be 0.

    The backward loop's accumulators start from zeros; made from a constant, XLA's CPU
    scheduler allocates and fills them as early as it can, in the forward pass, so every
    layer's would be held from then on. Adding this zero makes them wait for the cotangent.
    (An integer: a float ``0 * g`` would turn an inf or NaN cotangent into NaN everywhere.)
    """
    leaf = jax.tree.leaves(g)[0]
    first = jnp.abs(jnp.ravel(leaf)[:1]).astype(jnp.float32)  # complex and 16-bit leaves too
    bits = jax.lax.bitcast_convert_type(first, jnp.int32)
    return jnp.minimum(jax.lax.population_count(bits)[0], 0)


def _float_zeros(tree, zero: Array):
    """Zeros (plus the int ``zero``) for the floating leaves of ``tree``, None for the others
    (ints, bools: no cotangent)."""

    def zeros(a):
        return jnp.zeros_like(a) + zero.astype(jnp.result_type(a)) if _differentiable(a) else None

    return jax.tree.map(zeros, tree)


def _map_float(f, acc, new):
    """``f(acc_leaf, new_leaf)`` where ``acc`` (from ``_float_zeros``) has a leaf, else None."""
    flat, treedef = jax.tree.flatten(acc, is_leaf=lambda a: a is None)
    new_flat = treedef.flatten_up_to(new)
    pairs = zip(flat, new_flat, strict=True)
    return treedef.unflatten([None if a is None else f(a, b) for a, b in pairs])


def _cotangents(acc, primal):
    """The cotangent of ``primal``: ``acc``'s leaves, float0 zeros for non-float leaves."""
    flat, treedef = jax.tree.flatten(acc, is_leaf=lambda a: a is None)
    primal_flat = treedef.flatten_up_to(primal)
    return treedef.unflatten([
        a if a is not None or p is None else np.zeros(np.shape(p), jax.dtypes.float0)
        for a, p in zip(flat, primal_flat, strict=True)
    ])


# ---- sequences, chunk by chunk ----------------------------------------------------------------
def chunkwise(fn: Callable[[Any, Any, Any], tuple[Any, Any]], chunk: int):
    """``fn(rows, shared, state) -> (out, state)``, a causal op on one chunk of a sequence, as the
    op on the whole sequence: ``lean(rows, shared, state) -> (out, final state)``.

    rows: arrays ``(batch, steps, ...)`` (None and integer leaves allowed: segment indices, say),
    cut along axis 1; shared: anything else (parameters); state: the state entering the chunk (a
    float array or tree of them); out: arrays ``(batch, steps, ...)``. ``fn`` must carry all it
    needs across steps in ``state``, so that running the chunks one after the other gives the
    op's result, and must not close over traced values.

    Forward: a ``lax.scan`` over the ``length // chunk`` whole chunks (then ``fn`` once on a
    shorter last chunk), keeping the state entering each. Backward (a ``custom_vjp``): a loop
    from the last chunk to the first that slices the chunk out of the arguments, recomputes it
    from its entering state, takes ``fn``'s VJP there and writes the rows' cotangents in place
    (no chunk-major copies), the state's cotangent carried to the chunk before. Kept between
    the passes: the arguments and ``length / chunk`` states; a scan's per-step states (or a
    chunked form's scores) exist for one chunk at a time, in both passes. The loop's
    accumulators and each recomputed chunk's inputs wait for the output's cotangent
    (``_zero_after``; not the final state's, often an unused constant zero), so XLA cannot
    move the recomputation into the forward pass (it did with one chunk, the loop unrolled).
    The cost is one more forward pass of ``fn``; gradients equal autodiff's up to float
    rounding (``shared``'s summed over the chunks).
    """

    def forward_pass(rows, shared, state):
        whole, tail = divmod(_steps(rows), chunk)
        outs = entering = out_tail = None
        if whole:
            def body(state, i):
                out, new = fn(_cut(rows, i * chunk, chunk), shared, state)
                return new, (out, state)

            state, (outs, entering) = jax.lax.scan(body, state, jnp.arange(whole))
            outs = jax.tree.map(  # (chunks, batch, chunk, ...) -> (batch, chunks * chunk, ...)
                lambda a: jnp.moveaxis(a, 0, 1).reshape((a.shape[1], -1) + a.shape[3:]), outs)
        last = state
        if tail:
            out_tail, state = fn(_cut(rows, whole * chunk, tail), shared, state)
        return (_join(outs, out_tail), state), (entering, last)

    @jax.custom_vjp
    def call(rows, shared, state):
        return forward_pass(rows, shared, state)[0]

    def fwd(rows, shared, state):
        out, states = forward_pass(rows, shared, state)
        return out, (rows, shared, states)

    def bwd(residuals, g):
        rows, shared, (entering, last) = residuals
        g_out, g_state = g
        zero = _zero_after(g_out)

        def after(tree):  # floats made to wait for the cotangent
            return jax.tree.map(lambda a: a + zero.astype(a.dtype), tree)

        whole, tail = divmod(_steps(rows), chunk)
        floats, rebuild, cotangents = _float_leaves(rows)

        def chunk_vjp(start, size, state, g_state, grads, d_shared):
            part = after(_cut(floats, start, size))

            def of_floats(part_floats, shared, state):
                return fn(rebuild(part_floats, _cut(rows, start, size)), shared, state)

            _, vjp = jax.vjp(of_floats, part, shared, after(state))
            d_part, ds, g_state = vjp((_cut(g_out, start, size), g_state))
            grads = jax.tree.map(
                lambda acc, d: jax.lax.dynamic_update_slice_in_dim(acc, d.astype(acc.dtype),
                                                                   start, 1), grads, d_part)
            return g_state, grads, _map_float(jnp.add, d_shared, ds)

        grads = after(jax.tree.map(jnp.zeros_like, floats))
        d_shared = _float_zeros(shared, zero)
        if tail:
            g_state, grads, d_shared = chunk_vjp(whole * chunk, tail, last, g_state, grads,
                                                 d_shared)
        if whole:
            def step(j, loop):
                i = whole - 1 - j
                state = jax.tree.map(lambda a: a[i], entering)
                return chunk_vjp(i * chunk, chunk, state, *loop)

            g_state, grads, d_shared = jax.lax.fori_loop(0, whole, step,
                                                         (g_state, grads, d_shared))
        return cotangents(grads), _cotangents(d_shared, shared), g_state

    call.defvjp(fwd, bwd)
    return call


def _steps(rows) -> int:
    return jax.tree.leaves(rows)[0].shape[1]


def _cut(rows, start: int | Array, size: int):
    """Positions ``start`` to ``start + size`` (axis 1) of every leaf of ``rows``."""
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=1), rows)


def _join(first, last):
    """``first`` and ``last`` concatenated along axis 1, either possibly None."""
    if first is None or last is None:
        return last if first is None else first
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), first, last)


def _float_leaves(tree):
    """``(floats, rebuild, cotangents)``: ``tree``'s leaves as a list with None for the non-float
    ones (ints, bools: no cotangent); ``rebuild(floats, like)`` puts ``like``'s non-float leaves
    back (``like``: a tree of ``tree``'s structure, e.g. a slice of it); ``cotangents(floats)``
    is ``tree``'s cotangent from such a list (float0 zeros for the others)."""
    leaves, treedef = jax.tree.flatten(tree)
    keep = [_differentiable(a) for a in leaves]

    def rebuild(floats, like):
        others = treedef.flatten_up_to(like)
        return treedef.unflatten([f if k else o for f, o, k in zip(floats, others, keep,
                                                                   strict=True)])

    def cotangents(floats):
        return treedef.unflatten([
            f if k else np.zeros(np.shape(a), jax.dtypes.float0)
            for f, a, k in zip(floats, leaves, keep, strict=True)
        ])

    return [a if k else None for a, k in zip(leaves, keep, strict=True)], rebuild, cotangents


# ---- norms -----------------------------------------------------------------------------------
def _layer_norm_fn(eps: float):
    def fn(x, params):
        scale, bias = params
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.maximum(0.0, jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean)
        return (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias

    return fn


@functools.cache
def _layer_norm(eps: float):
    return blockwise(_layer_norm_fn(eps))


def layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-6) -> Array:
    """flax's ``LayerNorm`` over the last axis of ``x: (rows, ..., d)``: float32 statistics,
    variance ``max(0, E[x^2] - E[x]^2)``, ``(x - mean) * (rsqrt(var + eps) * scale) + bias``,
    in the result dtype of ``x`` and the parameters."""
    dtype = jnp.result_type(x, scale, bias)
    return _layer_norm(float(eps))(x, (scale, bias)).astype(dtype)


@functools.cache
def _rms_norm(eps: float):
    def fn(x, scale):
        x = x.astype(jnp.float32)
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale

    return blockwise(fn)


def rms_norm(x: Array, scale: Array, eps: float = 1e-5) -> Array:
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis of ``x: (rows, ..., d)`` in
    float32 (seqzoo's ``RMSNorm``), returned in ``x``'s dtype."""
    return _rms_norm(float(eps))(x, scale).astype(x.dtype)
