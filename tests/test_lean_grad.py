"""``seqzoo.ops.lean_grad``: the same values as the plain functions, gradients equal to autodiff's,
and a backward pass that keeps only the arguments (a compiled step's size stays flat)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops import lean_grad
from seqzoo.ops.lean_grad import (
    blockwise,
    chunkwise,
    fewest_blocks,
    layer_norm,
    num_blocks,
    rms_norm,
    size_budget,
)
from seqzoo.parallel.context import sequence_axis, sequence_parallel


def _normal(seed, *shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _check(lean, plain, *args, rtol=1e-5):
    """Equal values, and equal gradients of a non-linear loss w.r.t. every argument."""
    np.testing.assert_allclose(lean(*args), plain(*args), rtol=rtol, atol=1e-6)

    def loss(f):
        return lambda *a: jnp.sum(jnp.sin(3.0 * f(*a)))

    argnums = tuple(range(len(args)))
    got = jax.jit(jax.grad(loss(lean), argnums))(*args)
    want = jax.grad(loss(plain), argnums)(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-5 * float(np.max(np.abs(w))))


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


gelu = blockwise(lambda x, _: _gelu(x))  # a lean GELU of rows x: (rows, ...)


def _gated(rows, w):
    y, z = rows
    return (y @ w) * jax.nn.silu(z)


@pytest.mark.parametrize("rows", [1, 50])
def test_blockwise_matches_autodiff(rows):
    x, z, w = _normal(0, rows, 7, 10), _normal(1, rows, 7, 10), _normal(2, 10, 10)
    _check(lambda x: gelu(x, ()), _gelu, x)
    _check(lambda x, z, w: blockwise(_gated)((x, z), w), lambda x, z, w: _gated((x, z), w),
           x, z, w)


def test_layer_norm_is_flax_layer_norm():
    x = 3.0 + 2.0 * _normal(0, 6, 5, 16)
    scale, bias = 1.0 + 0.1 * _normal(1, 16), 0.1 * _normal(2, 16)
    flax_norm = nn.LayerNorm(param_dtype=jnp.float32)

    def plain(x, scale, bias):
        return flax_norm.apply({"params": {"scale": scale, "bias": bias}}, x)

    np.testing.assert_array_equal(layer_norm(x, scale, bias), plain(x, scale, bias))
    _check(layer_norm, plain, x, scale, bias)
    assert layer_norm(x.astype(jnp.bfloat16), scale, bias).dtype == jnp.float32  # as flax's


def test_rms_norm_matches_its_formula():
    x, scale = _normal(0, 4, 9, 12), 1.0 + 0.1 * _normal(1, 12)
    _check(rms_norm, lambda x, w: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * w,
           x, scale)


@pytest.mark.parametrize("forward", [False, True])
def test_blockwise_takes_ints_none_and_several_outputs(forward):
    def fn(rows, shared):
        x, mask, nothing = rows
        (w,) = shared
        assert nothing is None
        y = jnp.where(mask[:, :, None], jnp.tanh(x @ w), 0.0)
        return y, jnp.sum(y, axis=(1, 2))

    lean = blockwise(fn, forward=forward, row_elements=lambda rows: 10**9)  # one row per block
    x, w = _normal(0, 5, 4, 3), _normal(1, 3, 2)
    mask = jnp.arange(4)[None, :] < jnp.array([1, 4, 2, 0, 3])[:, None]

    def loss(f):
        return lambda x, w: sum(jnp.sum(jnp.cos(o)) for o in f((x, mask, None), (w,)))

    got = jax.jit(jax.grad(loss(lean), (0, 1)))(x, w)
    want = jax.grad(loss(fn), (0, 1))(x, w)
    for g, v in zip(got, want, strict=True):
        np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-6)


def test_blockwise_runs_a_given_vjp_block_by_block():
    """``vjp=``: the hand-written backward pass runs in place of autodiff's, on each block (its
    rows and the cotangent's), with ``shared``'s cotangents summed over the blocks."""
    def fn(rows, w):
        x, mask = rows
        return jnp.where(mask[:, None], jnp.sin(x * w), 0.0)

    def vjp(rows, w, g):
        x, mask = rows
        seen.append(x.shape[0])
        d = jnp.where(mask[:, None], jnp.cos(x * w) * g, 0.0)
        return (d * w, None), jnp.sum(d * x)

    x, w = _normal(0, 8, 3), jnp.float32(0.7)
    mask = jnp.arange(8) % 3 > 0
    seen = []
    got = jax.grad(lambda x, w: jnp.sum(blockwise(fn, vjp=vjp)((x, mask), w) ** 2), (0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum(fn((x, mask), w) ** 2), (0, 1))(x, w)
    for g, v in zip(got, want, strict=True):
        np.testing.assert_allclose(g, v, rtol=1e-6, atol=1e-6)
    assert seen == [2]  # traced once, for blocks of 2 of the 8 rows (``BLOCKS`` = 4)



def test_blockwise_keep_passes_what_fn_keeps_to_the_vjp_on_all_rows():
    """``keep=True``: ``fn`` returns ``(out, kept)``, the call ``out``; the residuals are the
    arguments and ``kept`` (here not of the rows' leading axis); the given VJP gets ``kept`` and
    all rows at once, in the sequence-parallel context of the call (as without ``keep``)."""
    def fn(rows, w):
        x, mask = rows
        sin = jnp.where(mask[:, None], jnp.sin(x * w), 0.0)
        return sin, jnp.cos(x * w).T  # kept: (3, 8), transposed on purpose

    def vjp(rows, w, g, cos):
        x, mask = rows
        seen.append((x.shape[0], sequence_axis()))
        d = jnp.where(mask[:, None], cos.T * g, 0.0)
        return (d * w, None), jnp.sum(d * x)

    x, w = _normal(0, 8, 3), jnp.float32(0.7)
    mask = jnp.arange(8) % 3 > 0
    seen = []
    lean = blockwise(fn, vjp=vjp, keep=True)

    def loss(x, w):
        with sequence_parallel("seq"):
            out = lean((x, mask), w)
        return jnp.sum(out**2)

    got = jax.grad(loss, (0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum(fn((x, mask), w)[0] ** 2), (0, 1))(x, w)
    for g, v in zip(got, want, strict=True):
        np.testing.assert_allclose(g, v, rtol=1e-6, atol=1e-6)
    assert seen == [(8, "seq")]  # one call on all 8 rows, under the call's axis
    _, pullback = jax.vjp(lambda x: lean((x, mask), w), x)
    kept = sorted(np.shape(a) for a in jax.tree.leaves(pullback) if np.ndim(a))
    assert kept == [(3, 8), (8,), (8, 3)]
    with pytest.raises(ValueError, match="keep=True"):
        blockwise(fn, keep=True)  # no vjp
    with pytest.raises(ValueError, match="keep=True"):
        blockwise(fn, vjp=vjp, keep=True, forward=True)

def _backward_blocks(x) -> str:
    return str(jax.make_jaxpr(jax.grad(lambda x: gelu(x, ()).sum()))(x))


@pytest.mark.parametrize("fewest, blocks", [(1, 1), (10, 10)])
def test_fewest_blocks_sets_the_backward_loop_and_keeps_the_gradients(fewest, blocks):
    x = _normal(0, 50, 7, 10)
    with fewest_blocks(fewest):
        _check(lambda x: gelu(x, ()), _gelu, x)
        assert f"length={blocks}" in _backward_blocks(x)
    assert "length=5" in _backward_blocks(x)  # the default again: 50 rows in 5 blocks
    with pytest.raises(ValueError, match="int >= 1"), fewest_blocks(0):
        pass


def test_gpu_blocks_apply_on_a_gpu_backend_unless_a_context_says_otherwise(monkeypatch):
    x = _normal(0, 50, 7, 10)
    one_on_gpu = blockwise(lambda x, _: _gelu(x), gpu_blocks=1)

    def loop(x) -> str:
        return str(jax.make_jaxpr(jax.grad(lambda x: one_on_gpu(x, ()).sum()))(x))

    assert "length=5" in loop(x)  # this CPU: the default's 5 blocks of 10 rows
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "length=1" in loop(x) and "length=5" in _backward_blocks(x)  # only where asked
    _check(lambda x: one_on_gpu(x, ()), _gelu, x)
    with fewest_blocks(10):
        assert "length=10" in loop(x)
    with pytest.raises(ValueError, match="gpu_blocks"):
        blockwise(_gated, gpu_blocks=0)


def test_num_blocks_divides_the_rows():
    assert [num_blocks(n) for n in (1, 2, 3, 4, 6, 50, 64, 7)] == [1, 2, 3, 4, 6, 5, 4, 7]
    assert num_blocks(64, 10) == 16 and num_blocks(50, 26) == 50


def test_size_budget_counts_every_leaf_up_to_the_default(monkeypatch):
    arrays = (np.zeros((3, 5)), {"b": np.zeros(7)}, None)
    assert size_budget(arrays) == 22
    monkeypatch.setattr(lean_grad, "BLOCK_ELEMENTS", 10)
    assert size_budget(arrays) == 10


def test_backward_pass_keeps_only_the_inputs():
    """Eight layers of GELU: autodiff keeps about four copies of x per layer, the lean one x."""

    def step(f):
        def loss(x):
            for _ in range(8):
                x = f(x) + x
            return jnp.sum(x)

        x = jax.ShapeDtypeStruct((16, 256, 512), jnp.float32)
        before = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", False)
        try:
            return jax.jit(jax.grad(loss)).lower(x).compile().memory_analysis().temp_size_in_bytes
        finally:
            jax.config.update("jax_disable_most_optimizations", before)

    size = 16 * 256 * 512 * 4
    lean, plain = step(lambda x: gelu(x, ())), step(_gelu)
    assert lean < 0.6 * plain and lean < 12 * size, (lean / size, plain / size)


def _recurrence(rows, w, h):
    """A nonlinear recurrence over axis 1: h_t = tanh(h_{t-1} w) * keep_t + x_t, y_t = h_t x_t."""
    x, keep = rows

    def step(h, xk):
        h = jnp.tanh(h @ w) * xk[1][:, None] + xk[0]
        return h, h * xk[0]

    h, y = jax.lax.scan(step, h, (jnp.moveaxis(x, 1, 0), jnp.moveaxis(keep, 1, 0)))
    return jnp.moveaxis(y, 0, 1), h


@pytest.mark.parametrize("length", [16, 21], ids=["whole-chunks", "and-a-shorter-last"])
def test_chunkwise_matches_autodiff_in_float64(length):
    """Outputs, final state and the gradient of each float argument (x, w, the initial state)
    equal plain autodiff of the whole-sequence scan to float64 rounding; chunks of 8 (a
    sequence shorter than one chunk: the ops' tests at lengths 1 to 33)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)

        def normal(*shape):
            return jnp.asarray(rng.standard_normal(shape))

        x, w, h0, gy, gh = normal(3, length, 4), normal(4, 4), normal(3, 4), normal(3, length, 4), \
            normal(3, 4)
        keep = jnp.asarray(rng.integers(0, 2, (3, length)), jnp.int32)  # no cotangent
        lean = chunkwise(_recurrence, 8)

        def loss(f):
            def run(x, w, h0):
                y, h = f((x, keep), w, h0)
                return jnp.sum(y * gy) + jnp.sum(jnp.sin(h) * gh)
            return run

        for got, want in zip(lean((x, keep), w, h0), _recurrence((x, keep), w, h0), strict=True):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
        got = jax.jit(jax.grad(loss(lean), (0, 1, 2)))(x, w, h0)
        want = jax.grad(loss(_recurrence), (0, 1, 2))(x, w, h0)
        for name, g, v in zip(("x", "w", "initial state"), got, want, strict=True):
            np.testing.assert_allclose(g, v, rtol=1e-12, atol=1e-12, err_msg=name)
