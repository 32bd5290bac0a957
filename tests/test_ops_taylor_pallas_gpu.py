"""Based's closed form as one fused Pallas GPU kernel (``pallas_gpu_taylor``), in interpret mode
here: the output and each gradient against the XLA closed form (``taylor_parallel``) in float32
and bf16, with padding, holes and packed segments, causality, the Triton lowering for a GPU, and
where ``impl="pallas"`` reaches it, and ``"auto"`` for 16-bit inputs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpu_lowering import dot_precisions, triton_modules

from seqzoo.kernels import launch
from seqzoo.ops import dispatch
from seqzoo.ops.linear_attention import featured
from seqzoo.ops.linear_attention.featured import featured_linear_attention
from seqzoo.ops.linear_attention.pallas_gpu_taylor import taylor_pallas_gpu
from seqzoo.ops.linear_attention.taylor_parallel import taylor_parallel

D, DV, SCALE = 16, 17, 0.7
NAMES = ("o", "dq", "dk", "dv")


def _inputs(b, t, h, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k = (jax.random.normal(key, (b, t, h, D)) for key in keys[:2])
    v, do = (jax.random.normal(key, (b, t, h, DV)) for key in keys[2:])
    return q, k, v, do


def _packing(b, t, packing):
    """``(mask, segment_ids)``: all live; left padding on one row and holes on another; or
    packed segments (every 13 positions, offset per row) with left padding on the first row."""
    mask = jnp.ones((b, t), bool)
    if packing == "plain":
        return mask, None
    mask = mask.at[0, :7].set(False)
    if packing == "padding":
        return mask.at[1, 11::5].set(False), None
    return mask, jnp.cumsum(jnp.arange(t)[None].repeat(b, 0) % 13 == 0, axis=1) \
        + jnp.arange(b)[:, None]


def _outputs_and_gradients(fn, args, do, mask, segments):
    o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask, segments, scale=SCALE), *args)
    return (o, *vjp(do.astype(o.dtype)))


def _rel(a, b):
    a, b = (np.asarray(x, np.float64) for x in (a, b))
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("shape", [(2, 40, 2), (2, 300, 2)], ids=["tiny", "realistic"])
@pytest.mark.parametrize("packing", ["plain", "padding", "segments"])
def test_float32_output_and_each_gradient_equal_the_xla_closed_form(shape, packing):
    """Lengths 40 and 300: one partial block, and four whole blocks of 64 and a partial one."""
    q, k, v, do = _inputs(*shape)
    mask, segments = _packing(shape[0], shape[1], packing)
    want = _outputs_and_gradients(taylor_parallel, (q, k, v), do, mask, segments)
    got = _outputs_and_gradients(taylor_pallas_gpu, (q, k, v), do, mask, segments)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert _rel(g, w) < 1e-5, name


def test_bf16_is_as_close_to_float32_as_the_xla_closed_form():
    """Each of the output and gradients in bf16 against the float32 XLA closed form, at a length
    that is not a multiple of the block, with packed segments: the kernel's error within 1.1x
    the XLA closed form's in bf16 (measured 1.00x to 1.01x; with every matmul's result and
    every running sum rounded to bf16, 1.13x to 1.23x). The kernel rounds ``p`` to bf16 where
    XLA does, so its ``o`` and ``dv`` are XLA's to 1e-3 (measured 0 and 1.2e-4; with ``s``
    rounded to bf16, 3.2e-3); its ``ds`` is rounded to bf16 for the matmuls of dq and dk."""
    b, t = 2, 300
    q, k, v, do = _inputs(b, t, 2, seed=1)
    mask, segments = _packing(b, t, "segments")
    exact = _outputs_and_gradients(taylor_parallel, (q, k, v), do, mask, segments)
    half_args = tuple(a.astype(jnp.bfloat16) for a in (q, k, v))
    do16 = do.astype(jnp.bfloat16)
    xla = _outputs_and_gradients(taylor_parallel, half_args, do16, mask, segments)
    ours = _outputs_and_gradients(taylor_pallas_gpu, half_args, do16, mask, segments)
    for name, x, o, e in zip(NAMES, xla, ours, exact, strict=True):
        assert o.dtype == jnp.bfloat16, name
        o, x = o.astype(jnp.float32), x.astype(jnp.float32)
        err, ref = _rel(o, e), _rel(x, e)
        assert err <= 1.1 * ref, (name, err, ref)
        if name in ("o", "dv"):
            assert _rel(o, x) < 1e-3, name


def test_the_kernel_is_causal():
    """Changing the last positions' q, k and v changes no earlier output, nor the gradients of
    earlier positions under a cotangent that is zero there."""
    q, k, v, do = _inputs(2, 100, 2)
    mask = jnp.ones((2, 100), bool)
    later = jax.random.normal(jax.random.key(9), (2, 30, 2, D))

    def run(q, k, v):
        return _outputs_and_gradients(taylor_pallas_gpu, (q, k, v), do.at[:, 70:].set(0.0), mask,
                                      None)

    first = run(q, k, v)
    second = run(q.at[:, 70:].set(later), k.at[:, 70:].set(-later), v.at[:, 70:].add(1.0))
    o, o2 = first[0], second[0]
    np.testing.assert_allclose(o[:, :70], o2[:, :70], rtol=1e-6, atol=1e-6)
    assert not np.allclose(o[:, 70:], o2[:, 70:])
    for name, g, g2 in zip(NAMES[1:], first[1:], second[1:], strict=True):
        np.testing.assert_allclose(g[:, :70], g2[:, :70], rtol=1e-6, atol=1e-6, err_msg=name)


def test_forward_and_backward_lower_to_triton_for_a_gpu(monkeypatch):
    """On this CPU, the three kernels lowered for CUDA (bf16, packed segments, T 100): the
    forward's two matmuls, the key pass's four and the query pass's three."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q, k, v, _ = (a.astype(jnp.bfloat16) for a in _inputs(1, 100, 2))
    mask, segments = _packing(1, 100, "segments")

    def loss(q, k, v):
        o = taylor_pallas_gpu(q, k, v, mask, segments, scale=SCALE)
        return jnp.sum(o.astype(jnp.float32))

    modules = triton_modules(jax.value_and_grad(loss, (0, 1, 2)), q, k, v)
    assert [m.count("tt.dot ") for m in modules] == [2, 4, 3]


@pytest.mark.parametrize("precision, expected", [
    (None, "ieee"), ("highest", "ieee"), ("tf32x3", "tf32x3"), ("tf32", "tf32")])
def test_float32_matmuls_lower_at_their_precision(monkeypatch, precision, expected):
    """Float32 inputs: every matmul of the three kernels at the asked precision (None: the
    context's, "highest" under tests/conftest.py), also through ``featured_linear_attention``;
    bf16 inputs ignore it."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    q, k, v, _ = _inputs(1, 64, 2)
    mask = jnp.ones((1, 64), bool)

    def modules(q, k, v, precision):
        def loss(q, k, v):
            o = taylor_pallas_gpu(q, k, v, mask, scale=SCALE, precision=precision)
            return jnp.sum(o.astype(jnp.float32))
        return triton_modules(jax.value_and_grad(loss, (0, 1, 2)), q, k, v)

    found = [dot_precisions(m) for m in modules(q, k, v, precision)]
    assert [len(p) for p in found] == [2, 4, 3]
    assert {p for m in found for p in m} == {expected}
    half = (a.astype(jnp.bfloat16) for a in (q, k, v))
    assert {p for m in modules(*half, precision) for p in dot_precisions(m)} == {"ieee"}

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    through = triton_modules(functools.partial(
        featured_linear_attention, mask=mask, feature_map="taylor", scale=SCALE, impl="pallas",
        precision=precision), q, k, v)
    assert len(through) == 1 and set(dot_precisions(through[0])) == {expected}


def test_auto_takes_the_fused_kernel_on_a_gpu_but_not_at_ieee_float32():
    """``auto``: the fused kernel on a GPU at every length, packed segments included, for
    16-bit inputs and for float32 at a tensor-core precision (each measured faster than the XLA
    closed form, the features and fla); float32 at ``precision="highest"`` keeps the XLA closed
    form or the features (the kernel's IEEE matmuls are slower), reachable by name."""
    facts = dict(dims=(273, DV), dtypes=(jnp.bfloat16,) * 3, closed_form=True)

    def chosen(impl, **more):
        return dispatch.resolve("linear_attention", impl, **{**facts, **more}).impl

    for segment_ids in (False, True):  # packed segments keep the kernel
        for length in (64, 4096):
            for dtype in (jnp.bfloat16, jnp.float32):
                assert chosen("pallas", platform="gpu", length=length, dtypes=(dtype,) * 3,
                              segment_ids=segment_ids) == "pallas"
            assert chosen("auto", platform="gpu", length=length,
                          segment_ids=segment_ids) == "pallas"
            assert chosen("auto", platform="gpu", length=length, dtypes=(jnp.float32,) * 3,
                          segment_ids=segment_ids, precision="highest") != "pallas"
            for precision in ("tf32x3", "tf32"):
                assert chosen("auto", platform="gpu", length=length, dtypes=(jnp.float32,) * 3,
                              segment_ids=segment_ids, precision=precision) == "pallas"
                assert chosen("auto", platform="cpu", length=length, dtypes=(jnp.float32,) * 3,
                              segment_ids=segment_ids, precision=precision) != "pallas"
            assert chosen("auto", platform="gpu", length=length, segment_ids=segment_ids,
                          dtypes=(jnp.bfloat16, jnp.float32, jnp.float32),
                          precision="tf32x3") != "pallas"  # mixed: not timed
    text = dispatch.explain("linear_attention", **facts, length=64, platform="gpu")
    assert "runs 'pallas'" in text and "fused Pallas kernel" in text
    text = dispatch.explain("linear_attention", **{**facts, "dtypes": (jnp.float32,) * 3},
                            length=64, platform="gpu", precision="tf32x3")
    assert "runs 'pallas'" in text and "precision='tf32x3'" in text
    assert chosen("pallas", platform="cpu", length=64, segment_ids=True) == "chunked"
    assert chosen("pallas", platform="gpu", length=64, segment_ids=True,
                  closed_form=False) == "chunked"


def test_featured_pallas_on_a_gpu_runs_the_fused_kernel(monkeypatch):
    """``featured_linear_attention(impl="pallas")`` on a (faked) GPU calls the fused kernel,
    run here in interpret mode, with packed segments."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return taylor_pallas_gpu(*args, **kwargs)

    monkeypatch.setattr(featured, "taylor_pallas_gpu", spy)
    monkeypatch.setattr(launch, "kernels_compiled", lambda: False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q, k, v, _ = (a.astype(jnp.bfloat16) for a in _inputs(2, 40, 2))
    mask, segments = _packing(2, 40, "segments")

    got = featured_linear_attention(q, k, v, mask, feature_map="taylor", scale=SCALE,
                                    segment_ids=segments, impl="pallas")
    assert calls
    want = taylor_parallel(q, k, v, mask, segments, scale=SCALE)
    assert _rel(got.astype(jnp.float32), want.astype(jnp.float32)) < 1e-3
