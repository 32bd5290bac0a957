"""Chunked gated linear attention as Pallas kernels, forward and backward (``jax.custom_vjp``).

    S_t = exp(g_t) S_{t-1} + ks_t k_t v_t^T        o_t = scale q_t S_t        (causal)

(``exp(g_t)`` a scalar per head or one factor per key dimension; ``ks`` an optional key scale,
Mamba-2's dt). A reverse direction runs the same recurrence from the end of the sequence, with
``o_i`` collecting keys ``j >= i`` decayed by ``exp(g_{i+1} + ... + g_j)``: Hydra's backward
scan, read in place instead of flipped.

Every pass is one launch of ``chunked_pass`` (see there for the kernel). The backward pass is
three more launches of the same kernel, with the roles of the inputs exchanged:

    dq = pass(q=do, k=v,  v=k,  causal,  S_0^T)          decay on dq's columns
    dv = pass(q=k,  k=q,  v=do, reverse, dS_T) * ks      its final state is dS_0
    dk = pass(q=v,  k=do, v=q,  reverse, dS_T^T) * ks    decay on dk's columns

("reverse" meaning the opposite direction of the forward's). The decays' gradient uses the
standard identity for ``o`` depending on the cumulative log decay ``G_t = g_1 + ... + g_t``
only through ``exp(G_i - G_j)`` between a query i and a key j (GLA, fla):

    dc_t = +-(q_t . dq_t - ks_t k_t . dk_t) + [t last in its chunk n] sum_v X_n . dX_n
    dg_t = sum_{s >= t in t's chunk} dc_s

for the gradient ``dc`` of the chunk-local cumulative log decay ``c`` (summed over the key
dimension for scalar decays; + for causal), with ``X_n`` the state at the boundary after chunk n
(causal: S after chunk n, the last one S_T; reverse: the state entering chunk n from the right,
the last one the initial state) and ``dX_n`` its gradient. The dq pass holds ``X^T`` and the dk
pass ``dX^T / scale`` at the same boundaries: the first writes its states there (one state per
chunk, float32, for the backward pass only) and the second dots its own with them. Summing
within a chunk keeps the identity's cancelling terms local: the same identity summed over the
whole sequence (``dg_t = sum_{s >= t} dG_s``) loses accuracy as the square root of the length
(bf16 Mamba-2 at T = 4096: d(dt) 5.7e-2 from the float32 op, against 1.7e-3 here).

Tolerances against the float32 XLA op (``seqzoo.ops.linear_attention``): float32 inputs run
float32 matmuls (IEEE) and agree to ~1e-5 relative; bf16 inputs run bf16 matmuls with float32
accumulation (the forward and dv passes round the state for the inter-chunk matmul) and agree
with the float32 op on the same values to 1.5e-3 .. 3e-3 relative, outputs and every gradient
(``tests/test_kernels_bf16_gradients.py``), the order of rounding the inputs to bf16.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_pass import Tiling, chunked_pass
from seqzoo.kernels.chunked_tiling import device_limit, resolve_tiling

Array = jax.Array
_F32 = jnp.float32
_DUAL = {None: None, "scalar": "scalar", "key": "value"}  # the decay of the dq / dk passes


@dataclasses.dataclass(frozen=True)
class _Static:
    scale: float
    reverse: tuple[bool, ...]
    decay: str | None
    tiling: Tiling  # or the launch parameters ``run`` takes (anything with a ``chunk``)
    run: Callable = chunked_pass  # one pass: chunked_pass, or mosaic_tpu_chunked.mosaic_pass


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


def _like(grad: Array, x: Array, head_axis: int = 3) -> Array:
    """A per-direction, per-head gradient summed back to ``x``'s directions and heads."""
    dirs, heads = grad.shape[0], grad.shape[head_axis]
    split = (*grad.shape[:head_axis], x.shape[head_axis], heads // x.shape[head_axis])
    grad = grad.reshape(*split, *grad.shape[head_axis + 1:]).sum(head_axis + 1)
    if x.shape[0] == 1 and dirs > 1:
        grad = grad.sum(0, keepdims=True)
    return grad.astype(x.dtype)


def _transposed(state: Array | None) -> Array | None:
    return None if state is None else jnp.swapaxes(state, -1, -2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked(q, k, v, g, ks, s0, st: _Static):
    return _forward(q, k, v, g, ks, s0, st)[0]


def _forward(q, k, v, g, ks, s0, st: _Static):
    cum = None if g is None else _chunk_cumsum(g, st.tiling.chunk)
    out = st.run(q, k, v, cum, ks, None, s0, scale=st.scale, reverse=st.reverse,
                 decay=st.decay, tiling=st.tiling)
    return out, (q, k, v, g, cum, ks, s0)


def _decay_grads(dcum: Array, dots: Array, st: _Static) -> Array:
    """d loss / d g from the chunk-local identity: ``dcum`` (D, B, T, H, dk) plus the boundary
    dots (D, B, N, H, dk) at every chunk's last step, summed back within each chunk."""
    if st.decay == "scalar":
        dcum, dots = dcum.sum(-1), dots.sum(-1)
    c = st.tiling.chunk
    s = dcum.shape
    blocks = dcum.reshape(*s[:2], s[2] // c, c, *s[3:])
    blocks = blocks.at[:, :, :, -1].add(dots * st.scale)
    return _chunk_reverse_cumsum(blocks.reshape(s), c)


def _backward(st: _Static, res, cotangents):
    q, k, v, g, cum, ks, s0 = res
    do, ds_final = cotangents
    flipped = tuple(not r for r in st.reverse)
    common = dict(scale=st.scale, tiling=st.tiling, out_dtype=_F32)
    # With decays, the dq pass (state S^T) writes its state at every chunk boundary and the dk
    # pass (state dS^T / scale) dots its own with them there: <S_n, dS_n> for dg; both split
    # their float32 matmul operands, since dg takes differences of q.dq and k.dk.
    decayed = g is not None
    dq, _, *bounds = st.run(do, v, k, cum, ks, None, _transposed(s0), reverse=st.reverse,
                            decay=_DUAL[st.decay], boundaries=decayed, split=decayed, **common)
    dv, ds0 = st.run(k, q, do, cum, None, ks, ds_final / st.scale, reverse=flipped,
                     decay=st.decay, **common)
    dk_eff, _, *dots = st.run(v, do, q, cum, None, None, _transposed(ds_final) / st.scale,
                              reverse=flipped, decay=_DUAL[st.decay],
                              partner=bounds[0] if bounds else None, split=decayed, **common)
    ds0 = ds0 * st.scale
    heads = dq.shape[3]
    k_heads = _per_head(k, heads).astype(_F32)
    dk = dk_eff if ks is None else dk_eff * _per_head(ks, heads)[..., None]
    grads_g = None
    if g is not None:
        sign = jnp.where(jnp.asarray(st.reverse), -1.0, 1.0).reshape(-1, 1, 1, 1, 1)
        dcum = sign * (_per_head(q, heads).astype(_F32) * dq - k_heads * dk)
        grads_g = _like(_decay_grads(dcum, dots[0], st), g)
    grads_ks = None if ks is None else _like(jnp.sum(k_heads * dk_eff, axis=-1), ks)
    grads_s0 = None if s0 is None else _like(ds0, s0, head_axis=2)
    return (_like(dq, q), _like(dk, k), _like(dv, v), grads_g, grads_ks, grads_s0)


_chunked.defvjp(_forward, _backward)


def _padded(x: Array | None, sizes: dict[int, int]) -> Array | None:
    """``x`` zero-padded at the end of each axis in ``sizes`` to that size."""
    if x is None:
        return None
    pad = [(0, 0)] * x.ndim
    for axis, size in sizes.items():
        pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad) if any(p[1] for p in pad) else x


def _width(d: int) -> int:
    """The smallest power of two >= max(d, 16): what Triton's matmuls take."""
    return max(16, 1 << (d - 1).bit_length())


# The widest padded key / value width the kernel has been compiled, checked and timed at on a GPU
# (the H100 and H200 tables of benchmarks/RESULTS.md); wider ones run only when asked for.
MEASURED_WIDTH = 128


def kernel_impl(impl: str, *, xla: str, dims: tuple[int, int], dtypes: tuple, segment_ids=None,
                per_key: bool = False) -> tuple[str, str]:
    """``(implementation, why)`` an op runs for ``impl``, where ``"pallas"`` names this kernel
    and ``xla`` the op's own chunked path.

    ``"auto"`` takes the kernel on a GPU when the inputs' ``dtypes`` (q, k, v or their SSD
    counterparts) are all 16-bit, a tiling fits the GPU's shared memory at the padded key and
    value widths ``dims`` (``chunked_tiling.resolve_tiling``), those widths are at most
    ``MEASURED_WIDTH`` and the decay is not per key,
    ``xla`` elsewhere: in float32 the kernel's matmuls run far slower than XLA's (Hydra's
    quasiseparable fwd+bwd at (32, 2000, 3 heads, 64, state 64) on an H100: 74.1 ms against
    XLA's 2.8 ms; in bf16 0.94 against 2.67 ms, benchmarks/RESULTS.md), and the per-key kernel
    is 4-8x slower than fla's chunk_gla (H200, benchmarks/RESULTS.md). Packed sequences
    (``segment_ids``) always run ``xla``: the kernel has no resets.
    """
    if impl in ("auto", "pallas") and segment_ids is not None:
        return xla, "packed segment_ids: the kernel has no resets"
    if impl != "auto":
        return impl, "asked for"
    if not launch.kernels_compiled():
        return xla, "Pallas kernels are compiled on a GPU only"
    if not all(jnp.dtype(d).itemsize == 2 for d in dtypes):
        return xla, "float32: XLA's matmuls are faster than the kernel's"
    if per_key:
        return xla, "per-key decays: the kernel is slower than fla's (issue 24)"
    widths = [_width(d) for d in dims]
    if max(widths) > MEASURED_WIDTH:
        return xla, f"widths {dims} pad to {widths}: the kernel is measured up to {MEASURED_WIDTH}"
    tiling, why = resolve_tiling(None, *widths, device_limit())
    return ("pallas", why) if tiling is not None else (xla, why)


def choose(impl: str, **options) -> str:
    """The implementation of ``kernel_impl`` (same arguments), without the reason."""
    return kernel_impl(impl, **options)[0]


def gated_linear_attention(
    q: Array,
    k: Array,
    v: Array,
    g: Array | None = None,
    key_scale: Array | None = None,
    initial_state: Array | None = None,
    *,
    scale: float,
    reverse: tuple[bool, ...] = (False,),
    tiling: Tiling | None = None,
    max_chunk: int | None = None,
) -> tuple[Array, Array]:
    """Chunked gated linear attention in one or two directions, differentiable in every input.

    Layout (a leading direction axis D: 1 = shared, or ``len(reverse)``; heads of q, k, g,
    key_scale dividing v's H, Mamba-2's groups):
      q, k: (D, B, T, H_qk, dk); v: (D, B, T, H, dv); any T, dk, dv.
      g: log decays <= 0, None, (D, B, T, H_g) (scalar per head) or (D, B, T, H_g, dk) (per key).
      key_scale: (D, B, T, H_s) multiplies k_t (Mamba-2's dt); initial_state: (D, B, H, dk, dv).
      reverse: per direction, whether it runs from the end of the sequence.
      tiling: launch parameters (default: ``chunked_tiling.resolve_tiling``'s for this GPU);
      max_chunk: caps its chunk (an op's ``chunk_size``). The chunk also shrinks to the next
      power of two >= T (at least 16) for short inputs.
    Returns ``o: (len(reverse), B, T, H, dv)`` in v's dtype and the final states
    ``(len(reverse), B, H, dk, dv)`` float32 (for a reverse direction: the state before t=0).
    """
    length, dk, dv = q.shape[2], q.shape[-1], v.shape[-1]
    if scale == 0:
        raise ValueError("scale must be non-zero")
    decay = None if g is None else ("scalar" if g.ndim == 4 else "key")
    if tiling is None:
        tiling, why = resolve_tiling(decay, _width(dk), _width(dv), device_limit())
        if tiling is None:
            raise ValueError(f"impl='pallas' cannot run here: {why}; use the op's XLA path")
    chunk = min(tiling.chunk, _width(length), _width(max_chunk or tiling.chunk))
    tiling = dataclasses.replace(tiling, chunk=chunk, sub=min(tiling.sub, chunk))
    return padded_chunked(q, k, v, g, key_scale, initial_state, scale=scale, reverse=reverse,
                          tiling=tiling, widths=(_width(dk), _width(dv)), run=chunked_pass)


def padded_chunked(q, k, v, g, key_scale, initial_state, *, scale: float,
                   reverse: tuple[bool, ...], tiling, widths: tuple[int, int],
                   run: Callable) -> tuple[Array, Array]:
    """``gated_linear_attention`` on the passes ``run`` (arguments as there): the inputs
    zero-padded to a multiple of ``tiling.chunk`` steps and to the key / value ``widths``
    (identity steps, zero columns), the custom_vjp, the outputs cut back."""
    length, dk, dv = q.shape[2], q.shape[-1], v.shape[-1]
    decay = None if g is None else ("scalar" if g.ndim == 4 else "key")
    steps, (wk, wv) = -(-length // tiling.chunk) * tiling.chunk, widths
    as_f32 = [None if x is None else x.astype(_F32) for x in (g, key_scale, initial_state)]
    out, final = _chunked(
        _padded(q, {2: steps, 4: wk}),
        _padded(k, {2: steps, 4: wk}),
        _padded(v, {2: steps, 4: wv}),
        _padded(as_f32[0], {2: steps} | ({4: wk} if decay == "key" else {})),
        _padded(as_f32[1], {2: steps}),
        _padded(as_f32[2], {3: wk, 4: wv}),
        _Static(float(scale), tuple(reverse), decay, tiling, run),
    )
    return out[:, :, :length, :, :dv], final[..., :dk, :dv]


def linear_attention_kernel(
    q: Array,
    k: Array,
    v: Array,
    log_decay: Array | None = None,
    *,
    scale: float,
    initial_state: Array | None = None,
    chunk_size: int = 64,
) -> tuple[Array, Array]:
    """``seqzoo.ops.linear_attention`` (no segment_ids) on the kernels.

    q, k: (B, T, H, dk); v: (B, T, H, dv); log_decay: None, (B, T, H) or (B, T, H, dk);
    initial_state: (B, H, dk, dv). Returns ``o`` in v's dtype and ``S_T`` float32.
    """
    lead = [None if a is None else a[None] for a in (q, k, v, log_decay, initial_state)]
    o, final = gated_linear_attention(*lead[:4], None, lead[4], scale=scale,
                                      max_chunk=chunk_size)
    return o[0], final[0]
