"""The jit-compiled train and eval steps over the ``(data, seq)`` mesh, and split evaluation.

train step:  (variables, opt_state, batch, step)
             -> (variables, opt_state, {loss, accuracy, grad_norm, lr (of the main group)})
             AdamW updates the trainable variables; batch norm's running averages come from
             the forward pass; dropout key = fold_in(dropout_key, step): a function of
             (seed, step) only
eval step:   (variables, batch) -> summed token_stats (model in deterministic mode)

Both take batches placed by ``sharding.put_batch``; ``seqzoo.runner.gradients`` runs the model on
the whole batch or, with ``mesh.seq > 1``, per device on sequence shards.

``optim.accumulate = A > 1`` (gradient accumulation): the batch's rows are split into A
microbatches (microbatch m holds rows m, m + A, m + 2A, ..., so each keeps its share of every
device's rows) and a ``lax.scan`` inside the jitted step runs them one after the other, keeping
one microbatch's activations at a time. Each microbatch's gradient is that of its summed
cross-entropy over the whole batch's count of labelled targets, so their sum is the full batch's
gradient of ``loss = sum ce / count`` (the same as A = 1 up to float rounding, whatever the
masks: a microbatch with fewer labels weighs less) and the summed stats give the full batch's
loss and accuracy. Dropout draws its masks per microbatch (``fold_in(key, m)``); batch norm
(``model.norm=batch``) normalises each microbatch with its own statistics and updates its
running averages once per microbatch, in order. The eval step sums its stats over the
microbatches the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqzoo.data import IGNORE_INDEX
from seqzoo.data.dataset import Split
from seqzoo.data.progress import Progress
from seqzoo.models import SequenceModel
from seqzoo.runner.build import Built
from seqzoo.runner.data import eval_batches
from seqzoo.runner.gradients import batch_stats, stats_and_grads
from seqzoo.runner.model import loss_and_accuracy, model_inputs, per_position, token_stats
from seqzoo.runner.optim import schedule
from seqzoo.runner.progress import completed
from seqzoo.runner.sharding import batch_shardings, process_rows, put_batch, replicated
from seqzoo.runner.variables import model_state, trainable


def global_norm(tree: Any) -> jax.Array:
    """sqrt of the sum of squares of every entry of ``tree`` (before clipping)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def stats_fn(model: SequenceModel, deterministic: bool):
    """``(variables, batch, key) -> (token_stats, model state)`` of the model on (a block of) a
    batch; the state (batch norm's running averages) is updated only when training."""

    def stats(variables, batch, key):
        rngs = None if deterministic else {"dropout": key}
        mutable = [] if deterministic else list(model_state(variables))
        logits, state = model.apply(
            variables,
            model_inputs(batch),
            batch["mask"],
            deterministic=deterministic,
            rngs=rngs,
            mutable=mutable,
        )
        return token_stats(logits, batch["targets"]), dict(state)

    return stats


def _layout(built: Built) -> tuple:
    """``(per_position, batch ndims)``: what the mesh functions need to know of a batch."""
    return per_position(built.data), {k: np.ndim(v) for k, v in built.sample.items()}


def microbatches(batch: dict[str, jax.Array], accumulate: int) -> dict[str, jax.Array]:
    """``(rows, ...)`` arrays as ``(accumulate, rows / accumulate, ...)``: microbatch m holds
    rows m, m + accumulate, ... (a reshape that keeps every row on its device)."""

    def split(x):
        rows = x.shape[0]
        return jnp.swapaxes(x.reshape((rows // accumulate, accumulate) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def labelled(batch: dict[str, jax.Array]) -> jax.Array:
    """The number of labelled targets of ``batch`` (the ``count`` of ``token_stats``)."""
    return jnp.sum(batch["targets"] != IGNORE_INDEX, dtype=jnp.float32)


def accumulated(grads_fn, accumulate: int):
    """``grads_fn`` (``gradients.stats_and_grads``) over ``accumulate`` microbatches in a
    ``lax.scan``: the same ``(stats, grads, state)`` as on the whole batch (see the module
    docstring)."""
    if accumulate == 1:
        return grads_fn

    def run(variables, batch, key):
        count = labelled(batch)
        weights, state = trainable(variables), model_state(variables)

        def micro(carry, xs):
            grads_sum, stats_sum, state = carry
            index, part = xs
            stats, grads, new_state = grads_fn(
                {**weights, **state}, part, jax.random.fold_in(key, index), count
            )
            carry = (
                jax.tree.map(jnp.add, grads_sum, grads),
                jax.tree.map(jnp.add, stats_sum, stats),
                {**state, **new_state},
            )
            return carry, None

        zeros = jax.tree.map(jnp.zeros_like, weights)
        no_stats = {k: jnp.zeros((), jnp.float32) for k in ("ce", "correct", "count")}
        xs = (jnp.arange(accumulate), microbatches(batch, accumulate))
        (grads, stats, new_state), _ = jax.lax.scan(micro, (zeros, no_stats, state), xs)
        return stats, grads, {k: new_state[k] for k in new_state if k in state}

    return run


def _schemes(built: Built) -> dict[str, str]:
    """How the sequence-parallel ops exchange their shards: ``mesh.attention``, ``mesh.carry``."""
    return {"attention": built.cfg.mesh.attention, "carry": built.cfg.mesh.carry}


def train_step_fn(built: Built, optimizer: optax.GradientTransformation, dropout_key: jax.Array):
    """The jitted train step (parameters and optimizer state are donated)."""
    lr = schedule(built.cfg.optim, built.cfg.optim.lr)
    grads_fn = stats_and_grads(
        stats_fn(built.model, False), built.mesh, *_layout(built), **_schemes(built)
    )
    grads_fn = accumulated(grads_fn, built.cfg.optim.accumulate)

    def step_fn(variables, opt_state, batch, step):
        stats, grads, state = grads_fn(variables, batch, jax.random.fold_in(dropout_key, step))
        loss, accuracy = loss_and_accuracy(stats)
        weights = trainable(variables)
        updates, opt_state = optimizer.update(grads, opt_state, weights)
        stats = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": global_norm(grads),
            "lr": lr(step - 1),  # the schedule counts updates from 0
        }
        return {**optax.apply_updates(weights, updates), **state}, opt_state, stats

    rep = replicated(built.mesh)
    params = built.shardings(built.params_shape)
    opt_state = built.shardings(opt_state_shape(built, optimizer))
    return jax.jit(
        step_fn,
        in_shardings=(params, opt_state, batch_shardings(built.sample, built.mesh), rep),
        out_shardings=(params, opt_state, rep),
        donate_argnums=(0, 1),
    )


def opt_state_shape(built: Built, optimizer: optax.GradientTransformation) -> Any:
    """The optimizer state's shapes: AdamW's moments of the trainable variables."""
    return jax.eval_shape(optimizer.init, trainable(built.params_shape))


def init_opt_state(built: Built, optimizer: optax.GradientTransformation, variables: Any) -> Any:
    """A fresh optimizer state for ``variables``, placed as ``mesh.params`` says."""
    shardings = built.shardings(opt_state_shape(built, optimizer))
    return jax.jit(optimizer.init, out_shardings=shardings)(trainable(variables))


def eval_step_fn(built: Built):
    """The jitted eval step: summed ``token_stats`` of one batch."""
    stats = batch_stats(stats_fn(built.model, True), built.mesh, *_layout(built), **_schemes(built))
    accumulate = built.cfg.optim.accumulate

    def step_fn(params, batch):
        if accumulate == 1:
            return stats(params, batch, None)

        def micro(total, part):
            return jax.tree.map(jnp.add, total, stats(params, part, None)), None

        zeros = {k: jnp.zeros((), jnp.float32) for k in ("ce", "correct", "count")}
        return jax.lax.scan(micro, zeros, microbatches(batch, accumulate))[0]

    in_shardings = (built.shardings(built.params_shape), batch_shardings(built.sample, built.mesh))
    return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=replicated(built.mesh))


def evaluate(
    eval_step, params: Any, split: Split, built: Built, bar: Progress | None = None
) -> dict[str, float]:
    """``{"loss", "accuracy"}`` over every labelled target of ``split``; ``bar`` advances by
    one as each batch completes."""
    size = built.cfg.optim.batch_size
    batches = eval_batches(split, size, process_rows(built.mesh, size))
    results = [eval_step(params, put_batch(b, built.mesh, size)) for b in batches]
    stats = jax.device_get(completed(results, bar))
    ce, correct, count = (float(np.sum([s[k] for s in stats])) for k in ("ce", "correct", "count"))
    return {"loss": ce / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
