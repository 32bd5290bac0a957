"""SequenceModel and ResidualBlock: decoding equals the parallel forward, pooling ignores padding,
hybrids and bidirectional wrapping, and the Flax NNX bridge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqzoo
from seqzoo.models import SequenceModel

VOCAB = 11


def tokens(batch=2, length=9, seed=0):
    toks = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, VOCAB)
    mask = jnp.ones((batch, length), bool).at[0, 4].set(False).at[1, 7:].set(False)
    return toks, mask


def hybrid_lm(**kw):
    return SequenceModel(
        d_model=16,
        n_layers=3,
        mixer=("gla", "linear_attention"),
        mixer_config={
            "gla": {"num_heads": 2, "chunk_size": 4},
            "linear_attention": {"num_heads": 2},
        },
        vocab_size=VOCAB,
        head="lm",
        max_length=16,
        **kw,
    )


def test_lm_decoding_equals_parallel_forward():
    model = hybrid_lm()
    toks, mask = tokens()
    params = jax.jit(model.init)(jax.random.PRNGKey(1), toks)  # jitted: eagerly, op by op, ~3x
    logits = jax.jit(model.apply)(params, toks, mask)
    state = model.apply(params, toks.shape[0], method="init_state")

    def body(s, inp):
        return model.apply(params, s, *inp, method="step")

    _, stepped = jax.lax.scan(body, state, (toks.T, mask.T))
    stepped = jnp.moveaxis(stepped, 0, 1)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(stepped)[valid], np.asarray(logits)[valid], atol=2e-5)
    assert model.layer_mixers() == ["gla", "linear_attention", "gla"]


def test_lm_head_computes_in_the_model_dtype_and_returns_float32():
    """bf16 compute reaches the lm head's matmul (a third of a small LM's FLOPs); its logits
    come back float32, and a float32 model's head stays float32."""
    toks, mask = tokens()
    for dtype, want in ((jnp.bfloat16, jnp.bfloat16), (None, jnp.float32)):
        model = SequenceModel(16, 1, "linear_attention", vocab_size=VOCAB, head="lm", dtype=dtype)
        params = jax.eval_shape(model.init, jax.random.PRNGKey(1), toks)
        closed = jax.make_jaxpr(model.apply)(params, toks, mask)
        head = [e for e in closed.jaxpr.eqns if e.primitive.name == "dot_general"][-1]
        assert [v.aval.dtype for v in head.invars] == [want, want]
        assert head.outvars[0].aval.shape[-1] == VOCAB
        assert closed.out_avals[0].dtype == jnp.float32


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classifier_ignores_padding(pooling):
    model = SequenceModel(
        d_model=16,
        n_layers=2,
        mixer="linear_attention",
        mixer_config={"num_heads": 2},
        vocab_size=VOCAB,
        num_classes=3,
        pooling=pooling,
        bidirectional=True,
    )
    toks, mask = tokens()
    params = jax.jit(model.init)(jax.random.PRNGKey(1), toks)
    noisy = jnp.where(mask, toks, (toks + 5) % VOCAB)
    apply = jax.jit(model.apply)
    a, b = apply(params, toks, mask), apply(params, noisy, mask)
    assert a.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert model.layer_mixers() == ["bi:linear_attention"] * 2


def test_bidirectional_model_sees_the_future():
    model = SequenceModel(
        d_model=16,
        n_layers=1,
        mixer="gla",
        mixer_config={"num_heads": 2, "chunk_size": 4},
        vocab_size=VOCAB,
        head="none",
        bidirectional=True,
    )
    toks, _ = tokens(batch=1)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), toks)
    apply = jax.jit(model.apply)
    h1 = apply(params, toks)
    h2 = apply(params, toks.at[0, -1].set((toks[0, -1] + 1) % VOCAB))
    assert float(jnp.abs(h1[0, 0] - h2[0, 0]).max()) > 1e-5


def test_model_bad_input():
    model = hybrid_lm()
    toks, mask = tokens()
    params = jax.jit(model.init)(jax.random.PRNGKey(1), toks)
    with pytest.raises(ValueError, match="token ids"):
        model.apply(params, jnp.zeros((2, 9, 3)))
    with pytest.raises(ValueError, match="max_length"):
        model.apply(params, jnp.zeros((2, 17), jnp.int32))
    with pytest.raises(ValueError, match="mask"):
        model.apply(params, toks, mask[:, :3])
    with pytest.raises(ValueError, match="num_classes"):
        SequenceModel(d_model=8, n_layers=1, mixer="gla", vocab_size=5).init(
            jax.random.PRNGKey(0), toks
        )


@pytest.mark.parametrize("name", ["gla", "based"])
def test_nnx_bridge_matches_linen(name):
    """A Flax NNX user wraps a seqzoo layer with nnx.bridge.ToNNX: same outputs and gradients."""
    config = seqzoo.registry.mixer_entry(name).test_config
    mixer = seqzoo.get_mixer(name, d_model=8, **config)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 8))
    module = nnx.bridge.ToNNX(mixer, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(module, x)
    params = {"params": nnx.to_pure_dict(nnx.state(module, nnx.Param))}
    # both sides jitted, as a user trains (eagerly, every op dispatched alone: ~5 s a side)
    nnx_y = nnx.jit(lambda m, x: m(x))(module, x)
    linen_y = jax.jit(mixer.apply)(params, x)
    np.testing.assert_allclose(np.asarray(nnx_y), np.asarray(linen_y), atol=1e-6)

    def nnx_loss(m):
        return jnp.sum(m(x) ** 2)

    grads = nnx.to_pure_dict(nnx.jit(nnx.grad(nnx_loss))(module))
    linen_grads = jax.jit(jax.grad(lambda p: jnp.sum(mixer.apply(p, x) ** 2)))(params)["params"]
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(linen_grads), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
