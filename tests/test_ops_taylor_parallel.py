"""Based's linear attention in closed form (``taylor_parallel``): the same outputs and each
gradient as the features through the chunked form, padding, packed segments and causality,
bf16 against float32, and what ``impl="auto"`` runs where."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops import dispatch
from seqzoo.ops.linear_attention import featured
from seqzoo.ops.linear_attention.featured import featured_linear_attention

D, DV = 16, 17


def _inputs(b, t, h, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k = (jax.random.normal(key, (b, t, h, D)).astype(dtype) for key in keys[:2])
    v, do = (jax.random.normal(key, (b, t, h, DV)).astype(dtype) for key in keys[2:])
    return q, k, v, do


def _op(impl, mask, segment_ids=None):
    def fn(q, k, v):
        return featured_linear_attention(q, k, v, mask, feature_map="taylor", scale=D**-0.5,
                                         segment_ids=segment_ids, impl=impl)
    return fn


def _rel(a, b):
    a, b = (np.asarray(x, np.float64) for x in (a, b))
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _outputs_and_gradients(fn, args, do):
    o, vjp = jax.vjp(fn, *args)
    return (o, *vjp(do.astype(o.dtype)))


@pytest.mark.parametrize("shape", [(2, 40, 2), (4, 256, 4)], ids=["tiny", "realistic"])
@pytest.mark.parametrize("packing", ["plain", "padding", "segments"])
def test_closed_form_equals_the_features_output_and_each_gradient(shape, packing):
    b, t, _ = shape
    q, k, v, do = _inputs(*shape)
    mask, segments = jnp.ones((b, t), bool), None
    if packing == "padding":  # left padding on one row, holes on another
        mask = mask.at[0, :7].set(False).at[1, 11::5].set(False)
    if packing == "segments":
        segments = jnp.cumsum(jnp.arange(t)[None].repeat(b, 0) % 13 == 0, axis=1) \
            + jnp.arange(b)[:, None]
    want = _outputs_and_gradients(_op("chunked", mask, segments), (q, k, v), do)
    got = _outputs_and_gradients(_op("parallel", mask, segments), (q, k, v), do)
    for name, g, w in zip(("o", "dq", "dk", "dv"), got, want, strict=True):
        assert _rel(g, w) < 2e-6, name


def test_closed_form_is_causal():
    q, k, v, _ = _inputs(2, 64, 2)
    fn = _op("parallel", jnp.ones((2, 64), bool))
    later = jax.random.normal(jax.random.key(9), (2, 24, 2, D))
    o = fn(q, k, v)
    o2 = fn(q, k.at[:, 40:].set(later), v.at[:, 40:].add(1.0))
    np.testing.assert_array_equal(o[:, :40], o2[:, :40])
    assert not np.allclose(o[:, 40:], o2[:, 40:])


def test_bf16_is_as_close_to_float32_as_the_features_are():
    """Each of the output and gradients in bf16 against the float32 result of the same form:
    the closed form's error at most 1.5x the chunked features' (bf16 values, float32 sums in
    both)."""
    q, k, v, do = _inputs(4, 256, 4)
    mask = jnp.ones((4, 256), bool)
    for impl in ("chunked", "parallel"):
        exact = _outputs_and_gradients(_op(impl, mask), (q, k, v), do)
        args16 = tuple(a.astype(jnp.bfloat16) for a in (q, k, v))
        half = _outputs_and_gradients(_op(impl, mask), args16, do.astype(jnp.bfloat16))
        errors = [_rel(h.astype(jnp.float32), e) for h, e in zip(half, exact, strict=True)]
        if impl == "chunked":
            features = errors
        else:
            for name, err, ref in zip(("o", "dq", "dk", "dv"), errors, features, strict=True):
                assert half[0].dtype == jnp.bfloat16
                assert err < max(1.5 * ref, 1e-3), (name, err, ref)


def test_auto_takes_the_closed_form_up_to_its_measured_length():
    cpu, gpu = dispatch.TAYLOR_PARALLEL_CPU_LENGTH, dispatch.TAYLOR_PARALLEL_GPU_LENGTH
    facts = dict(dims=(273, 17), dtypes=(jnp.float32,), closed_form=True)
    half = (jnp.bfloat16,) * 3

    def chosen(**more):
        return dispatch.resolve("linear_attention", "auto", **{**facts, **more})

    assert chosen(length=cpu, platform="cpu").impl == "parallel"
    assert chosen(length=cpu + 1, platform="cpu").impl == "chunked"
    # float32 at IEEE precision (at a tensor-core one the fused kernel: test_ops_taylor_pallas_gpu)
    assert chosen(length=gpu, platform="gpu", precision="highest").impl == "parallel"
    assert chosen(length=gpu + 1, platform="gpu", precision="highest").impl == "chunked"
    for length in (64, gpu + 1, 65536):  # 16-bit: the fused kernel (test_ops_taylor_pallas_gpu)
        assert chosen(length=length, platform="gpu", dtypes=half).impl == "pallas"
    assert chosen(length=64, platform="tpu", dtypes=half).impl == "pallas"  # not measured
    assert chosen(length=64, platform="cpu", closed_form=False).impl == "chunked"
    assert chosen(length=64, platform="gpu", dtypes=half, closed_form=False).impl != "parallel"
    text = dispatch.explain("linear_attention", **facts, length=64, platform="cpu")
    assert "runs 'parallel'" in text and "273 features" in text
    assert "benchmarks/RESULTS.md#" in text


def test_decays_keep_the_features(monkeypatch):
    """The closed form has no decays: with one, ``impl="parallel"`` (and ``"auto"``) is the
    features through linear attention's forms."""
    def refuse(*args, **kwargs):
        raise AssertionError("the closed form ran")

    monkeypatch.setattr(featured, "taylor_parallel", refuse)
    q, k, v, _ = _inputs(2, 32, 2)
    mask = jnp.ones((2, 32), bool)
    g = jnp.full((2, 32, 2), -0.1)
    for impl in ("auto", "parallel"):
        out = featured_linear_attention(q, k, v, mask, feature_map="taylor", log_decay=g,
                                        scale=0.25, impl=impl)
        assert out.shape == v.shape
    with pytest.raises(AssertionError, match="closed form ran"):
        featured_linear_attention(q, k, v, mask, feature_map="taylor", scale=0.25,
                                  impl="parallel")


def test_lowered_for_a_tpu_the_tpu_branch_is_the_features_kernel():
    q, k, v, _ = _inputs(2, 64, 2, jnp.bfloat16)
    fn = _op("auto", jnp.ones((2, 64), bool))

    def lowered(platform):
        return jax.jit(fn).trace(q, k, v).lower(lowering_platforms=(platform,)).as_text()

    assert "tpu_custom_call" in lowered("tpu")
    assert "tpu_custom_call" not in lowered("cpu")
