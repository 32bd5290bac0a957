"""Token statistics, and their loss's gradients, of one batch over the ``(data, seq)`` mesh.

``stats_fn(variables, batch, key) -> (token_stats, model state)`` is the model on whatever part
of the batch it is given; the state is batch norm's running averages after this forward
(``seqzoo.runner.variables``), empty for other models. Gradients are taken of the trainable
variables only. With ``mesh.seq = 1`` it runs on the whole batch under ``jit`` (XLA splits
the rows over ``data``, so batch norm's statistics are the whole batch's). With
``mesh.seq > 1`` it runs per device inside ``shard_map`` under
``sequence_parallel("seq", **schemes)`` (``mesh.attention``: ring or Ulysses, ``mesh.carry``:
all-gather or All-Scan) on a ``(rows / data, length / seq)`` block; then

    stats    = psum of the blocks' stats                         (a pooled head's are per row:
                                                                  counted once, not per seq shard)
    gradient = psum over devices of d(ce_block / count) / dparams   count: the whole batch's

the per-device partials of ``loss = sum ce / count`` (``seqzoo.parallel.context`` on why
gradients are summed explicitly). The dropout key is folded with the device's position so the
shards draw different masks.

``count`` may be given: the loss is then ``sum ce / count`` with that count rather than the
batch's own, which is how a microbatch's gradient becomes its share of the whole batch's
(``optim.accumulate``, ``seqzoo.runner.steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from seqzoo.parallel import sequence_parallel, shard_map
from seqzoo.runner.model import loss_and_accuracy
from seqzoo.runner.sharding import AXES, array_spec
from seqzoo.runner.variables import model_state, trainable

StatsFn = Callable[[Any, dict, jax.Array | None], tuple[dict, dict]]


def _sequence_parallel(mesh: Mesh) -> bool:
    return mesh.shape["seq"] > 1


def _device_key(key: jax.Array | None) -> jax.Array | None:
    if key is None:
        return None
    for axis in AXES:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis))
    return key


def _per_device(fn: Callable, mesh: Mesh, batch_ndims: dict[str, int], scalars: int = 0
                ) -> Callable:
    """``fn(params, batch, key, *scalars)`` per device, parameters, key and ``scalars`` more
    arguments replicated, outputs too."""
    batch_specs = {k: array_spec(n) for k, n in batch_ndims.items()}
    specs = (PartitionSpec(), batch_specs, PartitionSpec()) + (PartitionSpec(),) * scalars
    return shard_map(fn, mesh, in_specs=specs, out_specs=PartitionSpec())


def _reduced_axes(per_position: bool) -> tuple[str, ...]:
    """Where a block's stats are partial sums: rows over ``data``, and positions over ``seq``
    when each position has its own target (a pooled head's are complete on every seq shard)."""
    return AXES if per_position else ("data",)


def batch_stats(
    stats_fn: StatsFn, mesh: Mesh, per_position: bool, batch_ndims: dict, **schemes: str
) -> Callable:
    """``(variables, batch, key) -> stats`` summed over the whole batch (``schemes``: of
    ``sequence_parallel``)."""
    if not _sequence_parallel(mesh):
        return lambda variables, batch, key: stats_fn(variables, batch, key)[0]

    def block(params, batch, key):
        with sequence_parallel("seq", **schemes):
            stats, _ = stats_fn(params, batch, _device_key(key))
        return jax.lax.psum(stats, _reduced_axes(per_position))

    return _per_device(block, mesh, batch_ndims)


def stats_and_grads(
    stats_fn: StatsFn, mesh: Mesh, per_position: bool, batch_ndims: dict, **schemes: str
) -> Callable:
    """``(variables, batch, key, count=None) -> (stats, d loss / d trainable(variables), model
    state)``, ``loss = sum ce / count``, ``count`` the batch's own unless given. With
    ``mesh.seq > 1`` the model has no state (``check_config``)."""
    if not _sequence_parallel(mesh):

        def whole(variables, batch, key, count=None):
            state = model_state(variables)

            def loss(p):
                stats, new_state = stats_fn({**p, **state}, batch, key)
                if count is None:
                    return loss_and_accuracy(stats)[0], (stats, new_state)
                return stats["ce"] / jnp.maximum(count, 1.0), (stats, new_state)

            (_, (stats, new_state)), grads = jax.value_and_grad(loss, has_aux=True)(
                trainable(variables)
            )
            return stats, grads, new_state

        return whole

    replicas = 1 if per_position else mesh.shape["seq"]  # copies of a pooled row's loss

    def block(params, batch, key, count):
        key = _device_key(key)

        def share(p):  # this block's part of the loss
            stats, _ = stats_fn(p, batch, key)
            total = jax.lax.psum(stats, _reduced_axes(per_position))
            denominator = jnp.where(count < 0, total["count"], count)
            return stats["ce"] / (replicas * jnp.maximum(denominator, 1.0)), total

        with sequence_parallel("seq", **schemes):
            (_, stats), grads = jax.value_and_grad(share, has_aux=True)(params)
        return stats, jax.lax.psum(grads, AXES), {}

    blocks = _per_device(block, mesh, batch_ndims, scalars=1)

    def sharded(variables, batch, key, count=None):
        count = jnp.float32(-1.0) if count is None else jnp.asarray(count, jnp.float32)
        return blocks(variables, batch, key, count)

    return sharded
