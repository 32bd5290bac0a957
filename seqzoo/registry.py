"""The one registry of sequence mixers: tests, CLI, benchmarks and notebooks iterate over it.

A mixer registers itself with ``@register_mixer("name", test_config={...})``; ``test_config`` is
the small configuration (besides ``d_model``) the contract suite and the notebooks build it with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

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


def _entries() -> dict[str, MixerEntry]:
    import seqzoo.layers  # noqa: F401  (importing the layers fills the registry)

    return _MIXERS


def list_mixers() -> list[str]:
    """Names of every registered mixer, sorted."""
    return sorted(_entries())


def mixer_entry(name: str) -> MixerEntry:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    entries = _entries()
    if name not in entries:
        raise ValueError(f"unknown mixer {name!r}; registered mixers: {', '.join(sorted(entries))}")
    return entries[name]


def mixer_info(name: str):
    """The ``MixerInfo`` (causal, data dependent, structure, cost, paper) of mixer ``name``."""
    return mixer_entry(name).cls.info


def get_mixer(name: str, /, **config: Any):
    """Build the mixer ``name`` with ``config`` (``d_model`` is required; ``name=`` in ``config``
    is the Flax module name).

    A leading ``"bi:"`` wraps a causal mixer in ``Bidirectional`` (forward plus flipped backward
    copy), e.g. ``get_mixer("bi:mamba", d_model=64)``.
    """
    if name.startswith("bi:"):
        from seqzoo.layers.bidirectional import Bidirectional

        inner = name[3:]
        if not mixer_info(inner).causal:
            raise ValueError(f"'bi:' wraps causal mixers only; {inner!r} is already bidirectional")
        d_model, module_name = config.pop("d_model", None), config.pop("name", None)
        if d_model is None:
            raise ValueError("get_mixer needs d_model")
        return Bidirectional(
            d_model=d_model, mixer=inner, config=tuple(sorted(config.items())), name=module_name
        )
    cls = mixer_entry(name).cls
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent"}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for mixer {name!r}; valid: {sorted(fields)}")
    if "d_model" not in config:
        raise ValueError("get_mixer needs d_model")
    return cls(**config)
