"""The jit-compiled train and eval steps over the ``(data, seq)`` mesh, and split evaluation.

train step:  (variables, opt_state, batch, step)
             -> (variables, opt_state, {loss, accuracy, grad_norm, lr (of the main group)})
             AdamW updates the trainable variables; batch norm's running averages come from
             the forward pass; dropout key = fold_in(dropout_key, step): a function of
             (seed, step) only
eval step:   (variables, batch) -> summed token_stats (model in deterministic mode)

Both take batches placed by ``sharding.put_batch``; ``seqzoo.runner.gradients`` runs the model on
the whole batch or, with ``mesh.seq > 1``, per device on sequence shards.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def _schemes(built: Built) -> dict[str, str]:
    """How the sequence-parallel ops exchange their shards: ``mesh.attention``, ``mesh.carry``."""
    return {"attention": built.cfg.mesh.attention, "carry": built.cfg.mesh.carry}


def train_step_fn(built: Built, optimizer: optax.GradientTransformation, dropout_key: jax.Array):
    """The jitted train step (parameters and optimizer state are donated)."""
    lr = schedule(built.cfg.optim, built.cfg.optim.lr)
    grads_fn = stats_and_grads(
        stats_fn(built.model, False), built.mesh, *_layout(built), **_schemes(built)
    )

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

    def step_fn(params, batch):
        return stats(params, batch, None)

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
