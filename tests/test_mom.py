"""Mixture-of-Memories: a float64 token-by-token rebuild from the paper's equations (each
memory reads only its routed tokens, unselected memories untouched), routing, the packed
sequences the fast path runs on (their layout, and every gradient against the step-by-step
recurrence), official init. (Paths, padding, causality, segments, bf16: test_contract.py.)"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ssm_reference import f64, silu, softplus

import seqzoo
from seqzoo.layers.mom import XAVIER_GAIN, packing, route

D_MODEL = 8


def l2norm(x, eps=1e-6):
    return x / np.sqrt((x * x).sum(-1, keepdims=True) + eps)


def mom_reference(p, x, mask, h, dk, dv, num_memories, topk, shared):
    """Token by token, per batch row: route, then for each selected memory (and the shared one)
    push the token into that memory's own conv buffer and take one gated delta-rule step."""
    x, w_conv = f64(x), f64(p["conv_kernel"])
    size = w_conv.shape[0]
    slots = num_memories + int(shared)
    out = np.zeros(x.shape)
    for b in range(x.shape[0]):
        buffers = [np.zeros((size, w_conv.shape[1])) for _ in range(slots)]
        states = [np.zeros((h, dk, dv)) for _ in range(slots)]
        for t in range(x.shape[1]):
            if not mask[b, t]:
                continue
            xt = x[b, t]
            logits = xt @ f64(p["router"]["kernel"])
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            chosen = np.argsort(-probs)[:topk]
            weights = {int(m): probs[m] / probs[chosen].sum() for m in chosen}
            if shared:
                weights[num_memories] = 1.0
            o = np.zeros((h, dv))
            for m, weight in weights.items():
                row = np.concatenate([xt @ f64(p["q_proj"]["kernel"]),
                                      xt @ f64(p["k_proj"][m]), xt @ f64(p["v_proj"][m])])
                buffers[m] = np.concatenate([buffers[m][1:], row[None]])
                qkv = silu((buffers[m] * w_conv).sum(0))
                q, k, v = np.split(qkv, [h * dk, 2 * h * dk])
                q, k, v = l2norm(q.reshape(h, dk)), l2norm(k.reshape(h, dk)), v.reshape(h, dv)
                beta = 1.0 / (1.0 + np.exp(-(xt @ f64(p["b_proj"][m]))))
                a = np.exp(-np.exp(f64(p["A_log"]))
                           * softplus(xt @ f64(p["a_proj"][m]) + f64(p["dt_bias"])))
                s = states[m] * a[:, None, None]
                u = beta[:, None] * (v - np.einsum("hk,hkv->hv", k, s))
                states[m] = s + k[:, :, None] * u[:, None, :]
                o += weight * np.einsum("hk,hkv->hv", q * dk**-0.5, states[m])
            o = o / np.sqrt((o * o).mean(-1, keepdims=True) + 1e-5) * f64(p["o_norm"]["scale"])
            o = o * silu((xt @ f64(p["g_proj"]["kernel"])).reshape(h, dv))
            out[b, t] = o.reshape(-1) @ f64(p["o_proj"]["kernel"])
    return out


@functools.cache
def _run(items):
    mixer = seqzoo.get_mixer("mom", d_model=D_MODEL, chunk_size=4, **dict(items))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, D_MODEL))
    params = jax.jit(mixer.init)(jax.random.PRNGKey(1), x[:, :2])
    return mixer, params, x


def build(**kw):
    return _run(tuple(sorted(kw.items())))


CASES = [
    ({"num_heads": 2, "head_dim": 4, "num_memories": 3, "topk": 2}, 4, 4),
    ({"num_heads": 1, "head_dim": 4, "num_memories": 4, "topk": 1, "shared_mem": False}, 4, 4),
    ({"num_heads": 2, "num_memories": 2, "topk": 2, "expand_v": 1.5}, 2, 3),
]


@pytest.mark.parametrize("kw,dk,dv", CASES, ids=["E3-top2-shared", "E4-top1", "E2-top2-ev1.5"])
def test_matches_paper_equations(kw, dk, dv):
    mixer, params, x = build(**kw)
    mask = np.ones(x.shape[:2], bool)
    mask[1, 7:] = False
    mask[0, 4] = False  # a hole: routed nowhere
    p = params["params"]
    want = mom_reference(p, x, mask, kw["num_heads"], dk, dv, kw["num_memories"], kw["topk"],
                         kw.get("shared_mem", True))
    for path in ("__call__", "dense"):
        y = jax.jit(functools.partial(mixer.apply, method=path))(params, x, jnp.asarray(mask))
        np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-4, atol=1e-6)


def test_routing_top_k_renormalised():
    logits = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 6))
    mask = jnp.ones((2, 5), bool).at[1, 2].set(False)
    routed, weights = route(logits, mask, 3)
    assert routed.shape == weights.shape == (2, 5, 6)
    np.testing.assert_array_equal(np.asarray(routed.sum(-1)), np.where(mask, 3, 0))
    np.testing.assert_allclose(np.asarray(weights.sum(-1)), np.where(mask, 1.0, 0.0), rtol=1e-6)
    best = np.argsort(-np.asarray(logits), axis=-1)[..., :3]
    assert np.all(np.take_along_axis(np.asarray(routed), best, -1)[np.asarray(mask)])
    assert np.all((np.asarray(weights) > 0) == np.asarray(routed))


def test_the_router_learns_only_with_more_than_one_memory_per_token():
    """The router reaches the output only through ``route``'s weights (the routed set is
    discrete): with one memory per token the renormalised weight is 1 whatever the logits, so
    their gradient is zero up to float rounding of ``p / p`` (as in fla's layer; documented on
    ``topk``); with two it is not."""
    logits = jax.random.normal(jax.random.PRNGKey(7), (3, 5, 4))
    mask = jnp.ones((3, 5), bool)
    cot = jax.random.normal(jax.random.PRNGKey(8), (3, 5, 4))

    def grad(topk):
        return jax.grad(lambda z: jnp.sum(route(z, mask, topk)[1] * cot))(logits)

    assert float(jnp.abs(grad(1)).max()) < 1e-6
    assert float(jnp.abs(grad(2)).max()) > 1e-2


def test_memories_are_used_and_distinct():
    """Changing one memory's keys changes exactly the outputs of the tokens routed to it."""
    kw = CASES[0][0]
    mixer, params, x = build(**kw)
    apply = jax.jit(mixer.apply)
    y = apply(params, x)
    routed, _ = mixer.apply(params, x, jnp.ones(x.shape[:2], bool), method="_route")
    assert routed.shape == (4,) + x.shape[:2] and bool(routed[-1].all())  # shared: every token
    m = int(np.argmin(np.asarray(routed[:3].sum((1, 2)))))  # the least used routed memory
    p = jax.tree_util.tree_map(lambda a: a, params)
    p["params"]["k_proj"] = p["params"]["k_proj"].at[m].multiply(-3.0)
    changed = np.abs(np.asarray(apply(p, x) - y)).max(-1) > 1e-7
    assert routed[m].any()
    np.testing.assert_array_equal(changed, np.asarray(routed[m]))


def test_packing_lists_each_memorys_tokens_then_the_unrouted():
    """Memory 0 has token 0, memory 1 tokens 1 and 2, the shared memory 2 tokens 0-2 (token 3
    is a pad): the packed row is their flat indices ``m L + t`` memory by memory, then unrouted
    entries; ``inverse`` gives each routed entry's place and ``copies L = 8`` to the others."""
    routed = np.zeros((1, 3, 4), bool)
    routed[0, 0, 0] = True
    routed[0, 1, 1:3] = True
    routed[0, 2, :3] = True
    order, inverse = packing(jnp.asarray(routed), copies=2)
    np.testing.assert_array_equal(np.asarray(order[0, :6]), [0, 5, 6, 8, 9, 10])
    assert order.shape == (1, 8) and not routed.reshape(-1)[np.asarray(order[0, 6:])].any()
    want = np.full(12, 8)
    want[[0, 5, 6, 8, 9, 10]] = np.arange(6)
    np.testing.assert_array_equal(np.asarray(inverse[0]), want)


def test_packed_path_runs_on_the_routed_tokens_only():
    """The conv stage and the delta rule see ``(batch, (topk + shared) L)`` rows (each memory
    over its own tokens), not ``(memories + shared) batch`` rows of the full length."""
    mixer, params, x = build(**CASES[0][0])  # 3 memories, top-2, shared: 3 copies of 11 tokens
    jaxpr = jax.make_jaxpr(mixer.apply)(params, x)
    shapes = {e.params["name"]: e.invars[0].aval.shape for e in jaxpr.eqns
              if e.primitive.name in ("pjit", "jit")}
    assert shapes["conv_stage"][:2] == shapes["delta_rule"][:2] == (2, 33), shapes


def _relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_packed_path_gradients_match_the_recurrence():
    """Fast (packed) path vs the token-by-token ``step`` recurrence (each memory's own state,
    unrouted memories untouched), left padding and a hole: EVERY gradient (each parameter's
    and the input's) separately, each relative to its own size."""
    mixer, params, x = build(**CASES[0][0])
    mask = np.ones(x.shape[:2], bool)
    mask[0, :3] = False  # left padding
    mask[1, 5] = False  # a hole
    mask = jnp.asarray(mask)
    cot = jax.random.normal(jax.random.PRNGKey(5), x.shape)

    def steps(p, x):
        state = mixer.apply(p, x.shape[0], method="init_state")
        body = functools.partial(mixer.apply, p, method="step")
        _, ys = jax.lax.scan(lambda s, a: body(s, *a), state, (jnp.moveaxis(x, 1, 0), mask.T))
        return jnp.moveaxis(ys, 0, 1)

    def fast(p, x):
        return mixer.apply(p, x, mask)

    def grads(f):
        loss = jax.value_and_grad(lambda p, x: jnp.sum(f(p, x) * cot), argnums=(0, 1))
        return jax.jit(loss)(params, x)

    (loss_fast, g_fast), (loss_step, g_step) = grads(fast), grads(steps)
    assert _relative_error(loss_fast, loss_step) < 1e-5
    leaves = jax.tree_util.tree_flatten_with_path(g_step)[0]
    for (path, want), got in zip(leaves, jax.tree_util.tree_leaves(g_fast), strict=True):
        assert float(jnp.abs(want).max()) > 0, jax.tree_util.keystr(path)
        err = _relative_error(got, want)
        assert err < 1e-4, (jax.tree_util.keystr(path), err)


def test_init_matches_official():
    mixer, params, _ = build(num_heads=2, head_dim=4, num_memories=3, topk=2)
    p = params["params"]
    assert p["k_proj"].shape == (4, D_MODEL, 8) and p["b_proj"].shape == (4, D_MODEL, 2)
    for a, fan_in, fan_out in [(p["router"]["kernel"], D_MODEL, 3), (p["k_proj"], D_MODEL, 8),
                               (p["o_proj"]["kernel"], 8, D_MODEL), (p["a_proj"], D_MODEL, 2)]:
        bound = XAVIER_GAIN * np.sqrt(6.0 / (fan_in + fan_out))
        assert 0.5 * bound < float(np.abs(f64(a)).max()) <= bound
    assert not np.allclose(p["k_proj"][0], p["k_proj"][1])  # independent memories
    A = np.exp(f64(p["A_log"]))
    assert A.min() > 0 and A.max() <= 16
    assert 1e-3 * (1 - 1e-4) <= softplus(f64(p["dt_bias"])).min()
    assert softplus(f64(p["dt_bias"])).max() <= 0.1 * (1 + 1e-4)


def test_official_default_widths():
    """MomConfig: 4 heads of 256 at d_model 2048, expand_v 1, 4 memories + a shared one."""
    mixer = seqzoo.get_mixer("mom", d_model=2048)
    shapes = jax.eval_shape(mixer.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 2048)))["params"]
    assert shapes["q_proj"]["kernel"].shape == (2048, 1024)
    assert shapes["v_proj"].shape == (5, 2048, 1024)
    assert shapes["router"]["kernel"].shape == (2048, 4)


@pytest.mark.parametrize("kw,match", [({"topk": 5}, "topk"), ({"num_memories": 0}, "num_memo"),
                                      ({"impl": "pallas"}, "impl")])
def test_config_errors(kw, match):
    mixer = seqzoo.get_mixer("mom", d_model=D_MODEL, **kw)
    with pytest.raises(ValueError, match=match):
        mixer.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, D_MODEL)))
