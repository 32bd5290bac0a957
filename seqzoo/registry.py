"""The one registry of sequence mixers: tests, CLI, benchmarks and notebooks iterate over it.

A mixer registers itself with ``@register_mixer("name", test_config={...})``
(``seqzoo.layers.catalog``); importing this module imports every layer module, so every mixer is
here. ``mixers_with(*capabilities)`` finds them by what they can do
(``MixerInfo.capabilities``). ``test_config`` is the small configuration (besides ``d_model``)
the contract suite and the notebooks build it with.
"""

from __future__ import annotations

from typing import Any

import seqzoo.layers  # noqa: F401  (importing the layers fills the catalog)
from seqzoo.layers.bidirectional import Bidirectional
from seqzoo.layers.catalog import (
    MixerEntry,
    build_mixer,
    list_mixers,
    mixer_entry,
    mixer_info,
    mixers_with,
    register_mixer,
)

__all__ = ["SEQUENCE_PARALLEL_MIXERS", "MixerEntry", "get_mixer", "list_mixers", "mixer_entry",
           "mixer_info", "mixers_with", "register_mixer"]

# The mixers whose fast path runs sequence parallel (``MixerInfo.sequence_parallel``); it was
# ``seqzoo.parallel.SEQUENCE_PARALLEL_MIXERS``, a hand-kept list.
SEQUENCE_PARALLEL_MIXERS = frozenset(mixers_with("sequence_parallel"))


def get_mixer(name: str, /, **config: Any):
    """Build the mixer ``name`` with ``config`` (``d_model`` is required; ``name=`` in ``config``
    is the Flax module name).

    A leading ``"bi:"`` wraps a causal mixer in ``Bidirectional`` (forward plus flipped backward
    copy), e.g. ``get_mixer("bi:mamba", d_model=64)``.
    """
    if name.startswith("bi:"):
        inner = name[3:]
        if not mixer_info(inner).causal:
            raise ValueError(f"'bi:' wraps causal mixers only; {inner!r} is already bidirectional")
        d_model, module_name = config.pop("d_model", None), config.pop("name", None)
        if d_model is None:
            raise ValueError("get_mixer needs d_model")
        return Bidirectional(
            d_model=d_model, mixer=inner, config=tuple(sorted(config.items())), name=module_name
        )
    return build_mixer(name, **config)
