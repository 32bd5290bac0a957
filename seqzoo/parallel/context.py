"""Which mesh axis, if any, the sequence is split over: the switch every sequence-parallel op reads.

Inside ``shard_map`` over a mesh with a sequence axis ``"seq"`` of ``P`` devices, shard ``i`` holds
positions ``[i L/P, (i + 1) L/P)`` of every sequence: ``x: (batch, length / P, ...)``. Code that
runs there opts in with

    with sequence_parallel("seq"):
        y = model.apply(params, x_local, mask_local)

and every op with a sequence-parallel path (``linear_attention``, ``ssd``, ``selective_scan``,
``linear_recurrence``, ``delta_rule``, ``quasiseparable``, ``dot_product_attention``,
``depthwise_conv`` and the token positions) then exchanges what it needs with the other
shards. An op's explicit ``seq_axis=`` argument wins over the context.
``sequence_parallel(None)`` switches it off again.
``sequence_parallel("seq", attention="ulysses")`` makes softmax attention trade its sequence
shards for head shards (DeepSpeed-Ulysses) instead of passing keys around the ring
(``ATTENTION_SCHEMES``; ``seqzoo.ops.attention``); ``carry="all_scan"`` makes the linear
recurrences (linear attention, SSD, the scans) pass their states along the shards in chunks
(ZeCO) instead of all-gathering them (``CARRY_SCHEMES``; ``seqzoo.parallel.carry``).
Each op's own ``sequence_parallel.py`` (``seqzoo/ops/<op>/``) holds its sequence-parallel form;
it runs the op's local core per shard, never the op again.

The switch is a ``jax.make_user_context`` value, not a plain ``contextvars`` one: JAX keys its jit
caches on it, so a function jitted once outside the context (``compiled_ssd`` in the layers) is
traced again inside it rather than silently reusing a single-device trace.

``shard_map`` runs with replication checks off (``check_vma=False``): the ops keep ``lax.scan``
carries that start from constants, which the checks reject inside a manual axis. Gradients are
then per-device partials: differentiate each device's share of the loss and ``psum`` the
gradients of replicated inputs (as ``seqzoo.runner.gradients`` does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import jax

ATTENTION_SCHEMES = ("ring", "ulysses")
CARRY_SCHEMES = ("all_gather", "all_scan")
_SEQUENCE_AXIS = jax.make_user_context(default_value=None)
_ATTENTION = jax.make_user_context(default_value="ring")
_CARRY = jax.make_user_context(default_value="all_gather")


@contextlib.contextmanager
def sequence_parallel(
    axis: str | None, attention: str = "ring", carry: str = "all_gather"
) -> Iterator[None]:
    """Within the block, ops split the sequence over mesh axis ``axis`` (None: not split),
    softmax attention exchanges it by ``attention`` (one of ``ATTENTION_SCHEMES``) and linear
    recurrences carry their states across it by ``carry`` (one of ``CARRY_SCHEMES``)."""
    if attention not in ATTENTION_SCHEMES:
        raise ValueError(f"attention must be one of {ATTENTION_SCHEMES}, got {attention!r}")
    if carry not in CARRY_SCHEMES:
        raise ValueError(f"carry must be one of {CARRY_SCHEMES}, got {carry!r}")
    with _SEQUENCE_AXIS(axis), _ATTENTION(attention), _CARRY(carry):
        yield


def carry_scheme() -> str:
    """How linear recurrences carry their states across shards in the active context:
    ``"all_gather"`` (LASP-2) or ``"all_scan"`` (ZeCO)."""
    return _CARRY.value


def attention_scheme() -> str:
    """How softmax attention is sequence parallel in the active context: ``"ring"`` or
    ``"ulysses"``."""
    return _ATTENTION.value


def sequence_axis(explicit: str | None = None) -> str | None:
    """The axis the sequence is split over: ``explicit`` if given, else the active context's."""
    return explicit if explicit is not None else _SEQUENCE_AXIS.value


def num_shards(axis: str) -> int:
    """``P``, the number of devices along ``axis`` (static)."""
    return jax.lax.axis_size(axis)


def shard_index(axis: str) -> jax.Array:
    """This device's index ``i`` along ``axis`` (traced int32)."""
    return jax.lax.axis_index(axis)


def shard_map(f: Callable, mesh: jax.sharding.Mesh, in_specs, out_specs) -> Callable:
    """``jax.shard_map`` without replication checks; see the module docstring."""
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
