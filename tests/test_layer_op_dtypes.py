"""A bf16 layer hands its chunked op bf16 inputs (x, B, C; q, k, v), so that ``impl="auto"``
takes the bf16 Pallas kernels on a GPU; an f32 layer hands f32 ones (the XLA path there).

Each op reports its facts to ``seqzoo.ops.dispatch.on_platform``; a spy there records them while
the layer is traced (``jax.eval_shape``, after ``jax.clear_caches``, so that no cached trace of
the op skips it), and ``resolve`` then decides on those facts for a GPU."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import pytest
from tpu_checks import rel_l2

import seqzoo
from seqzoo.ops import dispatch

H200 = 232_448  # opt-in shared memory per block (compute capability 9.0), as test_ops_dispatch
OPS = ("ssd", "quasiseparable", "linear_attention")
# mixer -> (options, its op, what auto runs on a GPU for bf16 facts)
LAYERS = {
    "mamba2": (dict(d_state=16, headdim=16, chunk_size=16), "ssd", "pallas"),
    "hydra": (dict(d_state=16, headdim=16, chunk_size=16), "quasiseparable", "pallas"),
    "linear_attention": (dict(num_heads=2, chunk_size=16), "linear_attention", "pallas"),
    "retnet": (dict(num_heads=2, chunk_size=16), "linear_attention", "pallas"),
    "gla": (dict(num_heads=2, chunk_size=16, gate_low_rank=4), "linear_attention", "chunked"),
}
# the delta rule's mixers: the chunked form's matmul operands are its q, k, v (no on_platform
# facts: the spy records what reaches ``seqzoo.ops.delta_rule.xla.chunked``)
DELTA_LAYERS = {
    "delta_net": dict(num_heads=2, chunk_size=16),
    "gated_deltanet": dict(num_heads=2, head_dim=8, chunk_size=16),
    "mom": dict(num_heads=2, head_dim=8, num_memories=3, topk=2, chunk_size=16),
}


def facts_reaching_the_op(monkeypatch, name: str, dtype) -> list[tuple[str, dict]]:
    """``(op, facts)`` of every op call of mixer ``name`` built with compute ``dtype`` on an
    input of that dtype."""
    calls = []

    def spy(op, impl, run, *args, **facts):
        calls.append((op, facts))
        return dispatch.on_platform(op, impl, run, *args, **facts)

    for op in OPS:
        monkeypatch.setattr(importlib.import_module(f"seqzoo.ops.{op}"), "on_platform", spy)
    options, _, _ = LAYERS[name]
    mixer = seqzoo.get_mixer(name, d_model=32, dtype=dtype, **options)
    x = jax.ShapeDtypeStruct((1, 24, 32), dtype)
    params = jax.eval_shape(mixer.init, jax.random.PRNGKey(1), x)
    jax.clear_caches()  # a cached trace of a jitted op (the layers' ``compiled``) skips the spy
    calls.clear()
    jax.eval_shape(mixer.apply, params, x)
    return calls


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_bf16_layer_hands_its_op_bf16_inputs(monkeypatch, name):
    _, op, on_gpu = LAYERS[name]
    calls = facts_reaching_the_op(monkeypatch, name, jnp.bfloat16)
    assert [c[0] for c in calls] == [op]
    facts = calls[0][1]
    assert all(jnp.dtype(d) == jnp.bfloat16 for d in facts["dtypes"]), facts["dtypes"]
    chosen = dispatch.resolve(op, "auto", **facts, platform="gpu", shared_memory=H200)
    assert chosen.impl == on_gpu, chosen.why


@pytest.mark.parametrize("name", ["mamba2", "linear_attention"])
def test_an_f32_layer_keeps_f32_inputs(monkeypatch, name):
    _, op, _ = LAYERS[name]
    (got, facts), = facts_reaching_the_op(monkeypatch, name, jnp.float32)
    assert got == op and all(jnp.dtype(d) == jnp.float32 for d in facts["dtypes"])
    chosen = dispatch.resolve(op, "auto", **facts, platform="gpu", shared_memory=H200)
    assert chosen.impl == "chunked" and "float32" in chosen.why


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mamba2", "hydra", "linear_attention", "gla"])
def test_a_bf16_layer_stays_close_to_the_f32_layer(name):
    """Same parameters: bf16 compute (bf16 projections, bf16 op inputs and outputs, f32
    accumulation) against f32 compute, the output and every gradient (at (2, 512, 256):
    4e-3 .. 1.3e-2, most of it the bf16 projections'; the same before the op took bf16)."""
    options, _, _ = LAYERS[name]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 256, 64))
    cot = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    f32 = seqzoo.get_mixer(name, d_model=64, **options)
    params = f32.init(jax.random.PRNGKey(2), x)

    def output_and_grads(mixer, x):
        def loss(p, x):
            y = mixer.apply(p, x)
            return jnp.sum(y.astype(jnp.float32) * cot), y
        (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
        return [y, *jax.tree.leaves(grads)]

    want = output_and_grads(f32, x)
    got = output_and_grads(f32.clone(dtype=jnp.bfloat16), x.astype(jnp.bfloat16))
    errors = [rel_l2(g, w) for g, w in zip(got, want, strict=True)]
    assert max(errors) < 3e-2, errors


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("name", sorted(DELTA_LAYERS))
def test_a_delta_rule_layer_hands_the_chunked_form_its_dtype(monkeypatch, name, dtype):
    delta_xla = importlib.import_module("seqzoo.ops.delta_rule.xla")
    chunked, seen = delta_xla.chunked, []

    def spy(q, k, v, *rest):
        seen.append((q.dtype, k.dtype, v.dtype))
        return chunked(q, k, v, *rest)

    monkeypatch.setattr(delta_xla, "chunked", spy)
    mixer = seqzoo.get_mixer(name, d_model=32, dtype=dtype, **DELTA_LAYERS[name])
    x = jax.ShapeDtypeStruct((1, 24, 32), dtype)
    params = jax.eval_shape(mixer.init, jax.random.PRNGKey(1), x)
    jax.clear_caches()
    seen.clear()
    jax.eval_shape(mixer.apply, params, x)
    assert seen and all(jnp.dtype(d) == jnp.dtype(dtype) for call in seen for d in call), seen
