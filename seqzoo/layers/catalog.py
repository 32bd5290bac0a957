"""The catalog every mixer adds itself to: ``@register_mixer("name", test_config={...})``.

Layer modules register here (this module imports no layer); importing ``seqzoo.layers`` imports
every module of that package (found, not listed: a new mixer is one new file), and
``seqzoo.registry`` is where the rest of seqzoo looks mixers up. ``test_config`` is the small
configuration (besides ``d_model``) the contract suite and the notebooks build a mixer with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from seqzoo.layers.base import MixerInfo

_MIXERS: dict[str, MixerEntry] = {}


@dataclasses.dataclass(frozen=True)
class MixerEntry:
    name: str
    cls: type
    test_config: dict[str, Any]


def register_mixer(name: str, *, test_config: dict[str, Any] | None = None) -> Callable:
    """Class decorator adding a ``MatrixMixer`` subclass to the registry under ``name`` (also
    stored as ``cls.registry_name``, the name its error messages use)."""

    def add(cls: type) -> type:
        if name in _MIXERS:
            raise ValueError(f"a mixer named {name!r} is already registered")
        _MIXERS[name] = MixerEntry(name, cls, dict(test_config or {}))
        cls.registry_name = name
        return cls

    return add


def list_mixers() -> list[str]:
    """Names of every registered mixer, sorted."""
    return sorted(_MIXERS)


def mixer_entry(name: str) -> MixerEntry:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    if name not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; registered mixers: {', '.join(sorted(_MIXERS))}")
    return _MIXERS[name]


def mixer_info(name: str):
    """The ``MixerInfo`` (causal, data dependent, structure, cost, paper) of mixer ``name``."""
    return mixer_entry(name).cls.info


def mixers_with(*capabilities: str) -> list[str]:
    """Names of the registered mixers having every one of ``capabilities`` (names of
    ``MixerInfo.CAPABILITIES``: ``"matrix"``, ``"segment_ids"``, ``"sequence_parallel"``,
    ``"step"``), sorted."""
    unknown = sorted(set(capabilities) - set(MixerInfo.CAPABILITIES))
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; valid: {list(MixerInfo.CAPABILITIES)}")
    wanted = set(capabilities)
    return sorted(n for n, e in _MIXERS.items() if wanted <= e.cls.info.capabilities)


def build_mixer(name: str, /, **config: Any):
    """Build the registered mixer ``name`` with ``config`` (``d_model`` required), naming any
    unknown option."""
    cls = mixer_entry(name).cls
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent"}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for mixer {name!r}; valid: {sorted(fields)}")
    if "d_model" not in config:
        raise ValueError("get_mixer needs d_model")
    return cls(**config)
