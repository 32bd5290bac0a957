"""Sequence parallelism: one sequence split over the devices of a mesh axis.

``with sequence_parallel("seq"):`` inside ``shard_map`` makes the ops with a sequence-parallel
path exchange what they need with the other shards (``seqzoo.parallel.context``). The paths:

* ``linear_attention`` (no, scalar or per-key decay), Mamba-2's ``ssd``, ``linear_recurrence``
  and Mamba's ``selective_scan``: each shard scans from a zero state, then one ``all_gather`` of
  (state, total decay) and a local correction (``linear_attention``, ``ssd``, ``scan``,
  ``carry``);
* Hydra's ``quasiseparable``: the same for both directions (``quasiseparable``);
* softmax attention, causal or not: ring attention (``ring_attention``);
* short convolutions: a halo exchange (``conv``); token positions (RoPE, learned positions)
  count the valid tokens of earlier shards; pooled heads reduce over shards (``pooling``).

Only the fast path (``__call__``) of a mixer is sequence parallel, and ``segment_ids`` are not
supported. ``SEQUENCE_PARALLEL_MIXERS`` lists the mixers whose fast path is covered.
"""

from seqzoo.parallel.context import (
    num_shards,
    sequence_axis,
    sequence_parallel,
    shard_index,
    shard_map,
)
from seqzoo.parallel.layout import pad_to_shards, padded_length

SEQUENCE_PARALLEL_MIXERS = frozenset(
    {
        "attention",
        "bidirectional_attention",
        "linear_attention",
        "based",
        "retnet",
        "gla",
        "mamba",
        "mamba2",
        "hydra",
    }
)

__all__ = [
    "SEQUENCE_PARALLEL_MIXERS",
    "num_shards",
    "pad_to_shards",
    "padded_length",
    "sequence_axis",
    "sequence_parallel",
    "shard_index",
    "shard_map",
]
