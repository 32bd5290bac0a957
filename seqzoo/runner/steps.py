"""The jit-compiled train and eval steps over the ``(data, seq)`` mesh, and split evaluation.

train step:  (params, opt_state, batch, step)
             -> (params, opt_state, {loss, accuracy, grad_norm, lr (of the main group)})
             dropout key = fold_in(dropout_key, step), so it depends on (seed, step) only
eval step:   (params, batch) -> summed token_stats (model in deterministic mode)

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
from seqzoo.models import SequenceModel
from seqzoo.runner.build import Built
from seqzoo.runner.data import eval_batches
from seqzoo.runner.gradients import batch_stats, stats_and_grads
from seqzoo.runner.model import loss_and_accuracy, model_inputs, per_position, token_stats
from seqzoo.runner.optim import schedule
from seqzoo.runner.sharding import batch_shardings, put_batch, replicated


def global_norm(tree: Any) -> jax.Array:
    """sqrt of the sum of squares of every entry of ``tree`` (before clipping)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def stats_fn(model: SequenceModel, deterministic: bool):
    """``(params, batch, key) -> token_stats`` of the model on (a block of) a batch."""

    def stats(params, batch, key):
        rngs = None if deterministic else {"dropout": key}
        logits = model.apply(
            params, model_inputs(batch), batch["mask"], deterministic=deterministic, rngs=rngs
        )
        return token_stats(logits, batch["targets"])

    return stats


def _layout(built: Built) -> tuple:
    """``(per_position, batch ndims)``: what the mesh functions need to know of a batch."""
    return per_position(built.data), {k: np.ndim(v) for k, v in built.sample.items()}


def train_step_fn(built: Built, optimizer: optax.GradientTransformation, dropout_key: jax.Array):
    """The jitted train step (parameters and optimizer state are donated)."""
    lr = schedule(built.cfg.optim, built.cfg.optim.lr)
    grads_fn = stats_and_grads(stats_fn(built.model, False), built.mesh, *_layout(built))

    def step_fn(params, opt_state, batch, step):
        stats, grads = grads_fn(params, batch, jax.random.fold_in(dropout_key, step))
        loss, accuracy = loss_and_accuracy(stats)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        stats = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": global_norm(grads),
            "lr": lr(step - 1),  # the schedule counts updates from 0
        }
        return optax.apply_updates(params, updates), opt_state, stats

    rep = replicated(built.mesh)
    params = built.shardings(built.params_shape)
    opt_state = built.shardings(jax.eval_shape(optimizer.init, built.params_shape))
    return jax.jit(
        step_fn,
        in_shardings=(params, opt_state, batch_shardings(built.sample, built.mesh), rep),
        out_shardings=(params, opt_state, rep),
        donate_argnums=(0, 1),
    )


def eval_step_fn(built: Built):
    """The jitted eval step: summed ``token_stats`` of one batch."""
    stats = batch_stats(stats_fn(built.model, True), built.mesh, *_layout(built))

    def step_fn(params, batch):
        return stats(params, batch, None)

    in_shardings = (built.shardings(built.params_shape), batch_shardings(built.sample, built.mesh))
    return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=replicated(built.mesh))


def evaluate(eval_step, params: Any, split: Split, built: Built) -> dict[str, float]:
    """``{"loss", "accuracy"}`` over every labelled target of ``split``."""
    batches = eval_batches(split, built.cfg.optim.batch_size)
    stats = jax.device_get([eval_step(params, put_batch(b, built.mesh)) for b in batches])
    ce, correct, count = (float(np.sum([s[k] for s in stats])) for k in ("ce", "correct", "count"))
    return {"loss": ce / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
