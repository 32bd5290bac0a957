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
from seqzoo.layers import mom
from seqzoo.ops import dispatch

H200 = 232_448  # opt-in shared memory per block (compute capability 9.0), as test_ops_dispatch
OPS = ("ssd", "quasiseparable", "linear_attention")
# mixer -> (options, its op, what auto runs on a GPU for bf16 facts)
LAYERS = {
    "mamba2": (dict(d_state=16, headdim=16, chunk_size=16), "ssd", "pallas"),
    "hydra": (dict(d_state=16, headdim=16, chunk_size=16), "quasiseparable", "pallas"),
    "linear_attention": (dict(num_heads=2, chunk_size=16), "linear_attention", "pallas"),
    "retnet": (dict(num_heads=2, chunk_size=16), "linear_attention", "pallas"),
    "gla": (dict(num_heads=2, chunk_size=16, gate_low_rank=4), "linear_attention", "pallas_split"),
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


def bf16_and_f32_errors(name: str, options: dict, shape: tuple[int, int, int],
                        before=None) -> dict[str, float]:
    """Same parameters, mixer ``name`` with bf16 compute (bf16 projections, bf16 op inputs and
    outputs, f32 accumulation) against f32 compute on an input of ``shape`` ``(batch, length,
    d_model)``: the relative L2 error of the output (``"y"``), of the input's gradient
    (``"dx"``) and of each parameter's gradient (by its path), all under one cotangent.
    ``before(f32_mixer, params, x)``, if given, runs before both."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    cot = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    f32 = seqzoo.get_mixer(name, d_model=shape[-1], **options)
    params = f32.init(jax.random.PRNGKey(2), x)
    if before is not None:
        before(f32, params, x)

    def output_and_grads(mixer, x):
        def loss(p, x):
            y = mixer.apply(p, x)
            return jnp.sum(y.astype(jnp.float32) * cot), y
        (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
        named = jax.tree_util.tree_flatten_with_path(grads[0])[0]
        return {"y": y, "dx": grads[1]} | {jax.tree_util.keystr(k): g for k, g in named}

    want = output_and_grads(f32, x)
    got = output_and_grads(f32.clone(dtype=jnp.bfloat16), x.astype(jnp.bfloat16))
    return {k: rel_l2(got[k], want[k]) for k in want}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mamba2", "hydra", "linear_attention", "gla"])
def test_a_bf16_layer_stays_close_to_the_f32_layer(name):
    """The output and every gradient (at (2, 512, 256): 4e-3 .. 1.3e-2, most of it the bf16
    projections'; the same before the op took bf16)."""
    errors = bf16_and_f32_errors(name, LAYERS[name][0], (2, 256, 64))
    assert max(errors.values()) < 3e-2, errors


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


def router_logits(module, x):
    return module.router(x)


def mom_routes_as_f32(monkeypatch):
    """A ``before`` for ``bf16_and_f32_errors``: both MoM layers route every token to the
    memories the f32 layer picks. The f32 layer's top-k get a constant logit bonus (30, outside
    the gradient): the choice is then the same at bf16, and the weights (softmax over the chosen
    memories, renormalised) and their gradients are unchanged by a bonus common to the chosen."""
    route = mom.route

    def before(f32, params, x):
        logits = f32.apply(params, x, method=router_logits)
        chosen = jax.lax.top_k(logits, f32.topk)[1]
        bonus = 30.0 * jnp.sum(jax.nn.one_hot(chosen, logits.shape[-1]), axis=-2)
        monkeypatch.setattr(mom, "route", lambda z, mask, topk: route(z + bonus, mask, topk))

    return before


# (2, 256, 64), CPU, MoM's routing fixed at the f32 layer's (unfixed, its 0.13 .. 0.30 is
# test_bf16_mom_routing_differs_only_on_near_ties's few flips): the output and most gradients
# 1e-2 .. 1.6e-2; Gated DeltaNet's per-head decay parameters (A_log, dt_bias) 3.7e-2 (MoM's
# 1.7e-2): each gradient is a sum over every token of terms of both signs, |sum| 3-5 % of the
# sum of their sizes, which scales up the per-token error (1.4e-2 in d log_decay).
DELTA_BOUNDS = {"A_log": 5e-2, "dt_bias": 5e-2}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DELTA_LAYERS))
def test_a_bf16_delta_rule_layer_stays_close_to_the_f32_layer(monkeypatch, name):
    before = mom_routes_as_f32(monkeypatch) if name == "mom" else None
    errors = bf16_and_f32_errors(name, DELTA_LAYERS[name], (2, 256, 64), before)
    for key, error in errors.items():
        bound = next((b for p, b in DELTA_BOUNDS.items() if f"'{p}'" in key), 2e-2)
        assert error < bound, (key, errors)


def test_bf16_mom_routing_differs_only_on_near_ties():
    """The bf16 MoM picks the f32 layer's memories except where the f32 router's k-th and
    (k+1)-th probabilities nearly tie (bf16 rounding of x and of the logits; as fla, whose router
    runs in the model's dtype, the softmax and the top-k in float32). At (2, 256, 64): 3 of 512
    tokens differ, f32 gaps 3e-5 .. 5e-4 (median gap 5e-2); those 3 alone take the output's error
    from 1e-2 to 0.13 (each changes its memories' token sequences and so every later output).
    Over 8 other seeds 4 of 4096 differ; a float32 router on the bf16 x would leave 3."""
    options = DELTA_LAYERS["mom"]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 256, 64))
    f32 = seqzoo.get_mixer("mom", d_model=64, **options)
    params = f32.init(jax.random.PRNGKey(2), x, method=router_logits)  # the router's only
    mask = jnp.ones(x.shape[:2], bool)
    want, _ = mom.route(f32.apply(params, x, method=router_logits), mask, f32.topk)
    logits = f32.clone(dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16),
                                                 method=router_logits)
    assert logits.dtype == jnp.bfloat16
    got, _ = mom.route(logits, mask, f32.topk)
    differs = jnp.any(got != want, axis=-1)
    probs = jnp.sort(jax.nn.softmax(f32.apply(params, x, method=router_logits)), axis=-1)
    gap = probs[..., -f32.topk] - probs[..., -f32.topk - 1]
    assert jnp.mean(differs) < 0.02, jnp.mean(differs)
    assert jnp.all(gap[differs] < 1e-3), gap[differs]
