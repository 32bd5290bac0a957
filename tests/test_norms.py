"""Batch norm (``norm="batch"``, S4's): masked statistics equal a direct computation, padding
changes nothing, running averages are used in eval and decoding, and the runner updates them
outside the optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.config import apply_overrides
from seqzoo.models import SequenceModel
from seqzoo.models.norms import MaskedBatchNorm, make_norm
from seqzoo.runner.build import build, param_count
from seqzoo.runner.data import BatchSampler
from seqzoo.runner.experiments import load_experiment
from seqzoo.runner.model import model_inputs
from seqzoo.runner.optim import make_optimizer
from seqzoo.runner.sharding import put_batch
from seqzoo.runner.steps import init_opt_state, train_step_fn
from seqzoo.runner.variables import model_state, trainable

VOCAB = 13


def features(batch=3, length=7, dim=5, seed=0):
    x = 2.0 + 3.0 * jax.random.normal(jax.random.PRNGKey(seed), (batch, length, dim))
    mask = jnp.ones((batch, length), bool).at[0, 5:].set(False).at[2, 1].set(False)
    return x, mask


def test_masked_batch_norm_equals_direct_statistics():
    x, mask = features()
    bn = MaskedBatchNorm()
    variables = jax.jit(bn.init)(jax.random.PRNGKey(0), x, mask)
    y, updates = jax.jit(lambda v: bn.apply(v, x, mask, False, mutable=["batch_stats"]))(variables)
    valid = np.asarray(x)[np.asarray(mask)]  # (valid positions, dim)
    mean, var = valid.mean(0), valid.var(0)
    want = (np.asarray(x) - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(np.asarray(y)[np.asarray(mask)], want[np.asarray(mask)], atol=1e-5)
    stats = updates["batch_stats"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-5)
    # deterministic: the running averages, whatever the batch
    y_eval = jax.jit(lambda v: bn.apply(v, x[:1], mask[:1], True))({**variables, **updates})
    want_eval = (np.asarray(x[:1]) - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5)
    np.testing.assert_allclose(y_eval, want_eval, atol=1e-5)


def test_batch_norm_keeps_the_input_dtype():
    x, mask = features()
    bn = MaskedBatchNorm()
    variables = bn.init(jax.random.PRNGKey(0), x, mask)
    y, _ = bn.apply(variables, x.astype(jnp.bfloat16), mask, False, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32


def test_unknown_norm_lists_the_choices():
    with pytest.raises(ValueError, match=r"norm must be one of \('rms', 'layer', 'batch'\)"):
        make_norm("group", "n")


def classifier():
    return SequenceModel(
        d_model=8,
        n_layers=2,
        mixer="s4d",
        vocab_size=VOCAB,
        num_classes=3,
        norm="batch",
        mixer_config={"d_state": 4},
    )


@pytest.mark.parametrize("deterministic", [False, True])
def test_padding_changes_neither_outputs_nor_statistics(deterministic):
    model = classifier()
    toks = jax.random.randint(jax.random.PRNGKey(1), (3, 9), 0, VOCAB)
    mask = jnp.ones((3, 9), bool).at[0, 6:].set(False).at[1, 3:].set(False)
    other = jnp.where(mask, toks, (toks + 5) % VOCAB)  # different tokens at the padding only
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), toks, mask)  # eagerly, op by op: ~3x

    @jax.jit
    def run(t):
        return model.apply(variables, t, mask, deterministic=deterministic, mutable=["batch_stats"])

    (logits, stats), (logits2, stats2) = run(toks), run(other)
    np.testing.assert_allclose(logits2, logits, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), stats, stats2)
    if not deterministic:  # the statistics moved from their initial values
        moved = jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a - b))),
            stats["batch_stats"],
            variables["batch_stats"],
        )
        assert max(jax.tree.leaves(moved)) > 1e-3


def test_lm_decoding_with_batch_norm_equals_the_eval_forward():
    model = SequenceModel(
        d_model=16,
        n_layers=2,
        mixer="gla",
        vocab_size=VOCAB,
        head="lm",
        norm="batch",
        mixer_config={"num_heads": 2, "chunk_size": 4},
    )
    toks = jax.random.randint(jax.random.PRNGKey(2), (2, 8), 0, VOCAB)
    mask = jnp.ones((2, 8), bool).at[1, 6:].set(False)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), toks, mask)
    _, state = jax.jit(
        lambda v: model.apply(v, toks, mask, deterministic=False, mutable=["batch_stats"])
    )(variables)
    variables = {**variables, **state}  # running averages away from their (0, 1) start
    logits = jax.jit(model.apply)(variables, toks, mask)

    @jax.jit
    def decode(variables):
        def body(s, inp):
            return model.apply(variables, s, *inp, method="step")

        state = model.apply(variables, 2, method="init_state")
        return jax.lax.scan(body, state, (toks.T, mask.T))[1]

    stepped = decode(variables)
    valid = np.asarray(mask)
    np.testing.assert_allclose(
        np.moveaxis(np.asarray(stepped), 0, 1)[valid], np.asarray(logits)[valid], atol=2e-5
    )


def test_gradients_flow_through_batch_norm():
    model = classifier()
    toks = jax.random.randint(jax.random.PRNGKey(3), (4, 9), 0, VOCAB)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), toks)

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, toks, deterministic=False, mutable=["batch_stats"]
        )
        return jnp.sum(logits[:, 0])

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for name in ("norm_mix", "norm_mlp"):
        g = grads["block_0"][name]["bn"]
        assert set(g) == {"scale", "bias"} and float(jnp.abs(g["scale"]).sum()) > 0


def smoke(*overrides):
    return apply_overrides(load_experiment("smoke"), ["model.norm=batch", *overrides])


def test_train_step_takes_running_averages_from_the_forward_and_trains_only_params():
    cfg = smoke("model.mlp=glu")
    built = build(cfg)
    optimizer = make_optimizer(cfg.optim)
    key = jax.random.PRNGKey(0)
    variables = built.init_params(key)
    opt_state = init_opt_state(built, optimizer, variables)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
    assert paths and not any("batch_stats" in p for p in paths)
    assert built.num_params == param_count(trainable(variables)) == param_count(variables)
    batch = put_batch(
        BatchSampler(built.data["train"], cfg.optim.batch_size, cfg.seed).batch(1), built.mesh
    )
    _, want = jax.jit(
        lambda v: built.model.apply(
            v, model_inputs(batch), batch["mask"], deterministic=False, mutable=["batch_stats"]
        )
    )(variables)
    before = jax.tree.map(np.array, variables)  # a copy: the step donates the buffers
    step_fn = train_step_fn(built, optimizer, key)
    new, opt_state, _ = step_fn(variables, opt_state, batch, 1)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        model_state(new),
        dict(want),
    )
    new, _, _ = step_fn(new, opt_state, batch, 2)  # the warmup's first update has lr 0
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != b)), trainable(new), trainable(before)
    )
    assert any(jax.tree.leaves(changed))


def test_batch_norm_run_trains_evaluates_and_resumes(tmp_path):
    from seqzoo.runner import train

    run = tmp_path / "run"
    summary = train(smoke("optim.steps=2", "checkpoint_every=1"), run, log=lambda _: None)
    assert np.isfinite(summary["test_loss"])
    resumed = train(
        smoke("optim.steps=4", "checkpoint_every=1"), run, resume=True, log=lambda _: None
    )
    assert resumed["steps"] == 4 and np.isfinite(resumed["test_loss"])


def test_batch_norm_is_refused_with_sequence_parallel(tmp_path, monkeypatch):
    from seqzoo.runner import train

    monkeypatch.setattr(jax, "device_count", lambda: 8)
    with pytest.raises(ValueError, match="model.norm='batch'.*mesh.seq=1"):
        train(smoke("mesh.data=4", "mesh.seq=2"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
