"""The GPU chunked kernels at value widths that are not powers of two (issue 24: fla's GLA layer
at d_model 768, 4 heads: key width 96, value width 192).

The value width pads only to a multiple of the value block (``chunked_tiling.padded_value_width``)
where a pass tiles it (forward, dv), and to a power of two where a pass contracts over it (dq,
dk). Checked here: the widths each pass runs at, the outputs, final state and every gradient
against the XLA chunked op in float32 (Pallas interpret mode on CPU), and the Triton lowering
for a GPU (every Triton array a power of two of elements).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.kernels.chunked_tiling import padded_value_width, padded_width
from seqzoo.ops.linear_attention import linear_attention, pallas_gpu
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention

F32_TOL = 1e-5  # relative L2 against the XLA op (interpret mode: IEEE float32 matmuls)
SCALE = 0.3


@pytest.mark.parametrize("dv, block_v, want", [
    (192, 64, 192), (192, 32, 192), (96, 32, 96), (96, 64, 128), (80, 32, 96), (80, 64, 128),
    (40, 16, 48), (40, 32, 64), (40, 64, 64), (24, 64, 32), (5, 64, 16), (320, 128, 384),
])
def test_padded_value_width(dv, block_v, want):
    assert padded_value_width(dv, block_v) == want


def test_padded_value_width_fits_the_kernel():
    """At least dv and 16, whole value blocks of a power of two (the block ``chunked_pass``
    clips to the width), never wider than the power of two of the dq and dk passes."""
    for block_v in (16, 32, 64, 128):
        for d in range(1, 600):
            width = padded_value_width(d, block_v)
            block = min(block_v, width)
            assert max(d, 16) <= width <= padded_width(d), (d, block_v)
            assert width % block == 0 and block & (block - 1) == 0, (d, block_v)


def test_powers_of_two_pad_as_before():
    for block_v in (16, 32, 64, 128):
        for d in (*range(1, 17), 32, 64, 128, 256, 512):
            assert padded_value_width(d, block_v) == padded_width(d), (d, block_v)


def inputs(decay, dk, dv, t=64, heads=2, seed=0):
    """q, k (1, t, heads, dk), v (1, t, heads, dv), log decays <= 0 (None, per head or per
    key), S_0 (1, heads, dk, dv); and a cotangent for o."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    q, k, v = normal(1, t, heads, dk), normal(1, t, heads, dk), normal(1, t, heads, dv)
    shape = {None: None, "head": (1, t, heads), "key": (1, t, heads, dk)}[decay]
    g = None if shape is None else -jax.nn.softplus(normal(*shape))
    return dict(q=q, k=k, v=v, g=g, s0=normal(1, heads, dk, dv)), normal(1, t, heads, dv)


def values_and_grads(fn, args: dict, cotangent) -> dict:
    """``fn(**args) = (o, S_T)``: o, S_T and the gradient of ``sum(o * cotangent) +
    sum(S_T)`` with respect to every array in ``args``."""
    arrays = {n: x for n, x in args.items() if x is not None}

    def loss(arrays):
        o, final = fn(**{**args, **arrays})
        return jnp.sum(o * cotangent) + jnp.sum(jnp.sin(final)), (o, final)

    (_, (o, final)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(arrays)
    return {"o": o, "final": final} | {f"d{n}": grads[n] for n in grads}


def assert_each_close(got: dict, want: dict) -> None:
    """Every output and gradient within ``F32_TOL`` (relative L2), each one on its own."""
    assert got.keys() == want.keys()
    errors = {}
    for name in want:
        g, w = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        assert g.shape == w.shape, name
        assert np.isfinite(g).all() and np.linalg.norm(w) > 0, name
        errors[name] = float(np.linalg.norm(g - w) / np.linalg.norm(w))
    for name, error in errors.items():
        assert error < F32_TOL, (name, errors)


def op(impl, chunk=32):
    def fn(q, k, v, g, s0):
        return linear_attention(q, k, v, log_decay=g, initial_state=s0, scale=SCALE,
                                return_final_state=True, chunk_size=chunk, impl=impl)
    return fn


CASES = [(None, "pallas"), ("head", "pallas"), ("key", "pallas"), ("key", "pallas_split")]


@pytest.mark.parametrize("decay, impl", CASES, ids=[f"{d}-{i}" for d, i in CASES])
@pytest.mark.parametrize("dk, dv", [(24, 192), (16, 96), (16, 40)])
def test_kernels_match_xla_at_the_op_tilings(decay, impl, dk, dv):
    """The ops' own tilings (value blocks of 64: 192 runs unpadded, 96 and 40 as powers of
    two), key width 24 padded to 32."""
    args, do = inputs(decay, dk, dv, heads=1)
    assert_each_close(values_and_grads(op(impl), args, do),
                      values_and_grads(op("chunked"), args, do))


@pytest.mark.parametrize("decay", [None, "head", "key"])
@pytest.mark.parametrize("dv, block_v", [(96, 32), (40, 16)])
def test_kernel_matches_xla_at_small_value_blocks(decay, dv, block_v):
    """Value blocks of 32 and 16: 96 runs unpadded, 40 at 48 (neither a power of two)."""
    args, do = inputs(decay, 16, dv, t=48)
    tiling = Tiling(chunk=16, block_v=block_v, slice=16)

    def kernel(q, k, v, g, s0):
        o, final = gated_linear_attention(q[None], k[None], v[None],
                                          None if g is None else g[None], None, s0[None],
                                          scale=SCALE, tiling=tiling)
        return o[0], final[0]

    assert_each_close(values_and_grads(kernel, args, do),
                      values_and_grads(op("chunked", chunk=16), args, do))


def pass_widths(monkeypatch, decay, dk, dv) -> set[tuple[int, int]]:
    """The (key width, value width) pairs of the ``chunked_pass`` launches of
    ``impl="pallas"``'s forward and backward (forward, dq, dv, dk), traced only."""
    widths, run = [], pallas_gpu.chunked_pass

    def recording(q, k, v, *args, **kwargs):
        widths.append((q.shape[-1], v.shape[-1]))
        return run(q, k, v, *args, **kwargs)

    args, do = inputs(decay, dk, dv, t=32, heads=1)
    monkeypatch.setattr(pallas_gpu, "chunked_pass", recording)
    jax.make_jaxpr(lambda a: values_and_grads(op("pallas"), a, do))(args)
    return set(widths)


@pytest.mark.parametrize("decay", [None, "key"])
def test_each_pass_runs_at_its_padded_widths(monkeypatch, decay):
    """dk 96, dv 192 (fla's GLA at d_model 768, 4 heads): forward and dv passes tile the value
    width at 192; the dq and dk passes contract over it at 256 and tile the key width (128)."""
    assert pass_widths(monkeypatch, decay, 96, 192) == {(128, 192), (256, 128)}


def test_powers_of_two_run_every_pass_at_their_width(monkeypatch):
    assert pass_widths(monkeypatch, "key", 64, 128) == {(64, 128), (128, 64)}


@pytest.mark.parametrize("impl, decay", [("pallas", None), ("pallas", "head"),
                                         ("pallas", "key"), ("pallas_split", "key")])
def test_value_width_192_lowers_for_a_gpu(monkeypatch, impl, decay):
    """Forward and every gradient lower with the Triton kernels for CUDA on this CPU machine at
    dk 96, dv 192 (Triton takes arrays of a power of two of elements only)."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q = jnp.ones((1, 64, 2, 96), jnp.bfloat16)
    v = jnp.ones((1, 64, 2, 192), jnp.bfloat16)
    g = {None: None, "head": -jnp.ones((1, 64, 2)), "key": -jnp.ones((1, 64, 2, 96))}[decay]

    def loss(q, k, v, g):
        o = linear_attention(q, k, v, log_decay=g, chunk_size=64, impl=impl)
        return jnp.sum(o.astype(jnp.float32))

    argnums = (0, 1, 2) if g is None else (0, 1, 2, 3)
    text = jax.jit(jax.grad(loss, argnums)).trace(q, q, v, g).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "chunked_pass" in text
