"""The chunked gated-linear-attention algorithm around one kernel pass: padding, the custom
VJP and the decays' gradient, shared by the Triton (GPU) and Mosaic (TPU) backends.

    S_t = exp(g_t) S_{t-1} + ks_t k_t v_t^T        o_t = scale q_t S_t        (causal)

A pass ``run(q, k, v, cum, key_scale, row_scale, initial_state, *, scale, reverse, decay,
tiling, ...)`` computes one chunked scan (``seqzoo.kernels.chunked_pass`` on a GPU,
``seqzoo.kernels.mosaic_tpu_chunked.mosaic_pass`` on a TPU). The backward pass is three more
passes with the roles of the inputs exchanged:

    dq = pass(q=do, k=v,  v=k,  causal,  S_0^T)          decay on dq's columns
    dv = pass(q=k,  k=q,  v=do, reverse, dS_T) * ks      its final state is dS_0
    dk = pass(q=v,  k=do, v=q,  reverse, dS_T^T) * ks    decay on dk's columns

and the decays' gradient the chunk-local GLA identity (derivation and accuracy:
``seqzoo.ops.linear_attention.pallas_gpu``).

``extra`` (one causal direction, no key scale, every input with v's heads): a function
``extra(q, k, v, cum) -> (1, B, T, H, dv)`` float32 of the padded inputs (q, k, v as float32
copies holding the inputs' values; ``cum`` the chunk-local cumulative log decay, or None) added
to the pass's float32 output before its one rounding to v's dtype, and differentiated by JAX
(``jax.vjp`` in the forward, its residuals kept for the backward). Its gradients join the
passes' float32 ones before each gradient's one rounding to its input's dtype (dq, dk, dv) and
before the decays' chunk-local sum (d cum): ``impl="pallas_split"`` adds its intra-chunk terms
so, instead of summing two outputs and two sets of gradients already rounded to bf16 (relative
L2 of bf16 dq, dk 2.5e-3 -> 7e-5 against the float32 op rounded to bf16, GLA-like decays;
``seqzoo.ops.linear_attention.pallas_gpu_split``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from seqzoo.kernels.chunked_pass import Tiling

Array = jax.Array
_F32 = jnp.float32
_DUAL = {None: None, "scalar": "scalar", "key": "value"}  # the decay of the dq / dk passes


@dataclasses.dataclass(frozen=True)
class _Static:
    scale: float
    reverse: tuple[bool, ...]
    decay: str | None
    tiling: Tiling  # or the launch parameters ``run`` takes (anything with a ``chunk``)
    run: Callable  # one pass: kernels.chunked_pass (Triton) or mosaic_tpu_chunked.mosaic_pass
    intra: bool = True  # False: pairs in different chunks only (``chunked_pass``'s ``intra``)
    precision: str = "highest"  # of float32 matmuls (``chunked_pass``'s ``precision``)
    extra: Callable | None = None  # float32 terms added before rounding (module docstring)
    contracted_width: int | None = None  # v's width in the dq, dk passes (None: v's own)
    forward: Tiling | None = None  # the forward pass's launch (``tiling``'s chunk); None: tiling
    forward_run: Callable | None = None  # the forward pass, as ``run`` (None: ``run``)
    operands: tuple | None = None  # q, k, v's dtypes where they arrive as float32 copies
    cumsum: Callable | None = None  # the chunk-local cumulative sum (None: ``_chunk_cumsum``)


def _chunk_cumsum(g: Array, chunk: int) -> Array:
    """Inclusive cumulative sum along axis 2 restarting at every chunk of ``chunk`` steps."""
    s = g.shape
    blocks = g.reshape(*s[:2], s[2] // chunk, chunk, *s[3:])
    return jnp.cumsum(blocks, axis=3).reshape(s)


def _chunk_reverse_cumsum(x: Array, chunk: int) -> Array:
    """``sum_{s >= t, s in t's chunk} x_s`` along axis 2: the transpose of ``_chunk_cumsum``."""
    s = x.shape
    blocks = x.reshape(*s[:2], s[2] // chunk, chunk, *s[3:])
    return lax.cumsum(blocks, axis=3, reverse=True).reshape(s)


def _per_head(x: Array, heads: int) -> Array:
    """``(D, B, T, H_x, ...)`` -> ``(D, B, T, heads, ...)``, head h reading ``h // (heads/H_x)``."""
    return jnp.repeat(x, heads // x.shape[3], axis=3)


def _like(grad: Array, x: Array, head_axis: int = 3, dtype=None) -> Array:
    """A per-direction, per-head gradient summed back to ``x``'s directions and heads, in
    ``dtype`` (default x's)."""
    dirs, heads = grad.shape[0], grad.shape[head_axis]
    split = (*grad.shape[:head_axis], x.shape[head_axis], heads // x.shape[head_axis])
    grad = grad.reshape(*split, *grad.shape[head_axis + 1:]).sum(head_axis + 1)
    if x.shape[0] == 1 and dirs > 1:
        grad = grad.sum(0, keepdims=True)
    return grad.astype(x.dtype if dtype is None else dtype)


def _narrowed(xs, st: _Static) -> list:
    """q, k, v as the passes take them: in their own dtypes (``st.operands``) where they arrive
    as float32 copies (``padded_chunked``'s ``operands``; widening then narrowing is exact, and
    XLA drops the pair)."""
    if st.operands is None:
        return list(xs)
    return [x.astype(dtype) for x, dtype in zip(xs, st.operands, strict=True)]


def _transposed(state: Array | None) -> Array | None:
    return None if state is None else jnp.swapaxes(state, -1, -2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked(q, k, v, g, ks, s0, st: _Static):
    return _forward(q, k, v, g, ks, s0, st, differentiated=False)[0]


def _forward(q, k, v, g, ks, s0, st: _Static, differentiated: bool = True):
    cum = None if g is None else (st.cumsum or _chunk_cumsum)(g, st.tiling.chunk)
    widen = {} if st.extra is None else {"out_dtype": _F32}
    run = st.forward_run or st.run
    q_n, k_n, v_n = _narrowed((q, k, v), st)
    out, final = run(q_n, k_n, v_n, cum, ks, None, s0, scale=st.scale, reverse=st.reverse,
                     decay=st.decay, tiling=st.forward or st.tiling, **_options(st), **widen)
    extra_vjp = None
    if st.extra is not None:
        as_f32 = [x.astype(_F32) for x in (q, k, v)]
        if differentiated:
            terms, extra_vjp = jax.vjp(st.extra, *as_f32, cum)
        else:
            terms = st.extra(*as_f32, cum)
        out = (out + terms).astype(v_n.dtype)
    return (out, final), (q_n, k_n, v_n, g, cum, ks, s0, extra_vjp)


def _options(st: _Static) -> dict:
    """The pass's ``intra=False`` and ``precision`` where asked for (``mosaic_pass`` has neither
    option: it is always intra-chunk too, and float32 at HIGHEST). With roles exchanged, the
    backward passes of an inter-chunk forward are inter-chunk too, and the decays' identity
    below holds for that subset of pairs (it depends on G only through ``G_i - G_j`` and the
    chunk boundaries); every backward pass runs at the forward's precision."""
    return ({} if st.intra else {"intra": False}) | (
        {} if st.precision == "highest" else {"precision": st.precision})


def _decay_grads(dcum: Array, dots: Array, st: _Static, extra: Array | None = None) -> Array:
    """d loss / d g from the chunk-local identity: ``dcum`` (D, B, T, H, dk) plus the boundary
    dots (D, B, N, H, dk) at every chunk's last step (plus ``extra``'s d cum, in cum's shape),
    summed back within each chunk."""
    if st.decay == "scalar":
        dcum, dots = dcum.sum(-1), dots.sum(-1)
    if extra is not None:
        dcum = dcum + extra
    c = st.tiling.chunk
    s = dcum.shape
    blocks = dcum.reshape(*s[:2], s[2] // c, c, *s[3:])
    blocks = blocks.at[:, :, :, -1].add(dots * st.scale)
    return _chunk_reverse_cumsum(blocks.reshape(s), c)


def _backward(st: _Static, res, cotangents):
    q, k, v, g, cum, ks, s0, extra_vjp = res
    do, ds_final = cotangents
    flipped = tuple(not r for r in st.reverse)
    # The dq and dk passes contract over the value width: v, do and the states' value rows
    # zero-padded to ``contracted_width`` there (padded_chunked)
    wide = v.shape[-1] if st.contracted_width is None else st.contracted_width
    do_c, v_c = (_padded(x, {4: wide}) for x in (do, v))
    s0_t, ds_final_t = (_padded(_transposed(x), {3: wide}) for x in (s0, ds_final))
    common = dict(scale=st.scale, tiling=st.tiling, out_dtype=_F32, **_options(st))
    # With decays, the dq pass (state S^T) writes its state at every chunk boundary and the dk
    # pass (state dS^T / scale) dots its own with them there: <S_n, dS_n> for dg; both split
    # their float32 matmul operands, since dg takes differences of q.dq and k.dk.
    decayed = g is not None
    dq, _, *bounds = st.run(do_c, v_c, k, cum, ks, None, s0_t, reverse=st.reverse,
                            decay=_DUAL[st.decay], boundaries=decayed, split=decayed, **common)
    dv, ds0 = st.run(k, q, do, cum, None, ks, ds_final / st.scale, reverse=flipped,
                     decay=st.decay, **common)
    dk_eff, _, *dots = st.run(v_c, do_c, q, cum, None, None, ds_final_t / st.scale,
                              reverse=flipped, decay=_DUAL[st.decay],
                              partner=bounds[0] if bounds else None, split=decayed, **common)
    ds0 = ds0 * st.scale
    heads = dq.shape[3]
    k_heads = _per_head(k, heads).astype(_F32)
    dk = dk_eff if ks is None else dk_eff * _per_head(ks, heads)[..., None]
    # The extra terms' float32 gradients (their own d cum: the identity below is the passes')
    extra = (None,) * 4 if extra_vjp is None else extra_vjp(do.astype(_F32))
    grads_g = None
    if g is not None:
        sign = jnp.where(jnp.asarray(st.reverse), -1.0, 1.0).reshape(-1, 1, 1, 1, 1)
        dcum = sign * (_per_head(q, heads).astype(_F32) * dq - k_heads * dk)
        grads_g = _like(_decay_grads(dcum, dots[0], st, extra[3]), g)
    if extra_vjp is not None:  # joined before the one rounding of each gradient
        dq, dk, dv = dq + extra[0], dk + extra[1], dv + extra[2]
    grads_ks = None if ks is None else _like(jnp.sum(k_heads * dk_eff, axis=-1), ks)
    grads_s0 = None if s0 is None else _like(ds0, s0, head_axis=2)
    wide = None if st.operands is None else _F32  # the primals are float32 copies
    return (_like(dq, q, dtype=wide), _like(dk, k, dtype=wide), _like(dv, v, dtype=wide),
            grads_g, grads_ks, grads_s0)


_chunked.defvjp(_forward, _backward)


def _padded(x: Array | None, sizes: dict[int, int]) -> Array | None:
    """``x`` zero-padded at the end of each axis in ``sizes`` to that size."""
    if x is None:
        return None
    pad = [(0, 0)] * x.ndim
    for axis, size in sizes.items():
        pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad) if any(p[1] for p in pad) else x


def padded_chunked(q, k, v, g, key_scale, initial_state, *, scale: float,
                   reverse: tuple[bool, ...], tiling, widths: tuple[int, int],
                   run: Callable, intra: bool = True,
                   precision: str = "highest", extra: Callable | None = None,
                   contracted_width: int | None = None,
                   forward_tiling=None, forward_run: Callable | None = None,
                   operands: tuple | None = None,
                   cumsum: Callable | None = None) -> tuple[Array, Array]:
    """Chunked gated linear attention on the passes ``run`` (layout and arguments as
    ``seqzoo.ops.linear_attention.pallas_gpu.gated_linear_attention``): the inputs zero-padded
    to a multiple of ``tiling.chunk`` steps and to the key / value ``widths`` (identity steps,
    zero columns), the custom VJP (module docstring), the outputs cut back. ``intra=False``:
    the terms of pairs in different chunks only (and the initial state's), every pass.
    ``precision`` (resolved: a name, not None): of float32 matmuls, every pass. ``extra``: float32
    terms on the padded inputs (module docstring). ``contracted_width``: the value width of the
    passes that contract over it (dq and dk: v and do their keys), v and do zero-padded further
    to it there (Triton's power of two, where ``widths`` only pads the value width to a multiple
    of the value block); None: ``widths``' value width. ``forward_tiling``: the forward pass's
    launch where it differs from the backward passes' (``tiling``), with ``tiling``'s chunk and
    a value block tiling ``widths``' value width; None: ``tiling`` for every pass.
    ``forward_run``: the forward pass where another computation of ``run``'s sums serves it
    (``seqzoo.kernels.chunked_states``); None: ``run``. ``operands``: q, k, v are float32
    copies holding values of these three dtypes: the passes take them narrowed back (exact),
    ``o`` comes out in v's own dtype and the gradients of q, k, v stay float32, for a caller
    that adds gradients of its own before one rounding (``seqzoo.kernels.chunked_segments``).
    ``cumsum``: ``cumsum(g, chunk)``, the forward's chunk-local cumulative sum of the padded
    float32 decays (``seqzoo.kernels.chunk_cumsum``); None: XLA's.
    """
    if forward_tiling is not None and forward_tiling.chunk != tiling.chunk:
        raise ValueError(f"the forward's chunk {forward_tiling.chunk} is not the backward's "
                         f"{tiling.chunk}: the decays' cumulative sums are per chunk")
    length, dk, dv = q.shape[2], q.shape[-1], v.shape[-1]
    if extra is not None and (reverse != (False,) or key_scale is not None or any(
            x is not None and (x.shape[0], x.shape[3]) != (1, v.shape[3]) for x in (q, k, g))):
        raise ValueError("extra takes one causal direction, no key_scale and v's heads")
    decay = None if g is None else ("scalar" if g.ndim == 4 else "key")
    steps, (wk, wv) = -(-length // tiling.chunk) * tiling.chunk, widths
    as_f32 = [None if x is None else x.astype(_F32) for x in (g, key_scale, initial_state)]
    if operands is not None and any(x.dtype != _F32 for x in (q, k, v)):
        raise ValueError("operands: q, k, v must be float32 copies of their values")
    operands = None if operands is None or all(_F32 == d for d in operands) else tuple(
        jnp.dtype(d) for d in operands)
    out, final = _chunked(
        _padded(q, {2: steps, 4: wk}),
        _padded(k, {2: steps, 4: wk}),
        _padded(v, {2: steps, 4: wv}),
        _padded(as_f32[0], {2: steps} | ({4: wk} if decay == "key" else {})),
        _padded(as_f32[1], {2: steps}),
        _padded(as_f32[2], {3: wk, 4: wv}),
        _Static(float(scale), tuple(reverse), decay, tiling, run, intra, precision, extra,
                contracted_width, forward_tiling, forward_run, operands, cumsum),
    )
    return out[:, :, :length, :, :dv], final[..., :dk, :dv]
