"""Sequence parallelism: one sequence split over the devices of a mesh axis.

``with sequence_parallel("seq"):`` inside ``shard_map`` makes the ops with a sequence-parallel
path exchange what they need with the other shards (``context``). This package holds what those
paths are built from and imports no op: the switch (``context``), the collectives between shards
(``collectives``: halos, neighbours, flips, offsets), the carry of a linear recurrence's state
across shards (``carry``, LASP-2's prefix combine), the layout of a padded sequence (``layout``)
and the reductions of a model head (``pooling``). Each op's own sequence-parallel form sits
beside it, ``seqzoo/ops/<op>/sequence_parallel.py``:

* ``linear_attention`` (no, scalar or per-key decay), Mamba-2's ``ssd``, ``linear_recurrence``
  and Mamba's ``selective_scan``: each shard scans from a zero state, then one ``all_gather`` of
  (state, total decay) and a local correction;
* the ``delta_rule`` (DeltaNet, Gated DeltaNet): the same with ``dk x dk`` matrix transitions
  (``carry``'s ``matrix=True``), each shard's from one run of the op on widened values;
* Hydra's ``quasiseparable``: the same for both directions;
* softmax attention, causal or not: ring attention (``seqzoo.ops.attention.sequence_parallel``);
* short convolutions: a halo exchange (``seqzoo.ops.conv.sequence_parallel``); token positions
  (RoPE, learned positions) count the valid tokens of earlier shards; pooled heads reduce over
  shards (``pooling``).

Only the fast path (``__call__``) of a mixer is sequence parallel, and ``segment_ids`` are not
supported. The mixers whose fast path is covered say so in their ``MixerInfo``
(``sequence_parallel``); ``seqzoo.registry.mixers_with("sequence_parallel")`` lists them.
"""

from seqzoo.parallel.context import (
    num_shards,
    sequence_axis,
    sequence_parallel,
    shard_index,
    shard_map,
)
from seqzoo.parallel.layout import pad_to_shards, padded_length

__all__ = [
    "num_shards",
    "pad_to_shards",
    "padded_length",
    "sequence_axis",
    "sequence_parallel",
    "shard_index",
    "shard_map",
]
