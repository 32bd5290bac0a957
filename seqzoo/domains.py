"""The values a config field may take: each field of ``seqzoo.config`` declares one domain with
``setting(default, domain)``, and ``seqzoo.config.check_values`` checks them all.

    Range(1)                        an int or float >= 1 (``AT_LEAST_1``); floats must be finite
    Range(0, 1, open_high=True)     [0, 1) (``FRACTION``)
    OneOf("module:NAME")            a member of a collection (a dict: one of its keys)
    Registered("module:lookup")     a name ``lookup`` accepts (it raises ``ValueError`` listing
                                    the known ones); with ``separator``, several joined by it
    RELATIVE_NAME                   a relative '/'-separated name, no empty, '.' or '..' part
    ANY                             any value of the field's type

``str(domain)`` says what it allows, in words (``seqzoo config show`` prints it).

``OneOf`` and ``Registered`` name their collection or function as ``"module:attribute"``,
imported when a value is checked, so that the config module imports no other part of seqzoo
(the names live with the code that uses them: norms, tasks, the mixer registry ...).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from typing import Any


def _resolve(ref: str) -> Any:
    """The object ``"package.module:attribute"`` names."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (None: unbounded), ends excluded where ``open_*``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{self.low}, {self.high}{right}"

    def error(self, key: str, value: Any) -> str | None:
        return None if self.allows(value) else f"{key} must be {self}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """A member of the collection ``"module:NAME"`` (a dict: one of its keys)."""

    ref: str

    def choices(self) -> list:
        found = _resolve(self.ref)
        return list(found.keys() if isinstance(found, Mapping) else found)

    def __str__(self) -> str:
        return f"one of {', '.join(map(str, self.choices()))}"

    def error(self, key: str, value: Any) -> str | None:
        return None if value in self.choices() else f"{key} must be {self}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class Registered:
    """A name the function ``"module:lookup"`` accepts; it raises ``ValueError`` for an unknown
    name, listing the known ones. With ``separator``, each of the names joined by it."""

    ref: str
    separator: str | None = None

    def __str__(self) -> str:
        several = f", or several joined by {self.separator!r}" if self.separator else ""
        return f"a name `seqzoo list` shows{several}"

    def error(self, key: str, value: str) -> str | None:
        lookup = _resolve(self.ref)
        for name in value.split(self.separator) if self.separator else [value]:
            try:
                lookup(name)
            except ValueError as e:
                return f"{key}: {e}"
        return None


@dataclasses.dataclass(frozen=True)
class RelativeName:
    """A relative name of '/'-separated parts, none of them empty, '.' or '..' (so that a
    folder named after it stays inside its parent), without backslashes or NUL."""

    def allows(self, value: str) -> bool:
        parts = value.split("/")
        return not ({"", ".", ".."} & set(parts)) and not {"\\", "\0"} & set(value)

    def __str__(self) -> str:
        return "a relative name: '/'-separated parts, none empty, '.' or '..'"

    def error(self, key: str, value: str) -> str | None:
        if self.allows(value):
            return None
        return (
            f"{key} must be a relative name of '/'-separated parts, none empty, '.' or '..' "
            f"(it names a folder under runs/), got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class AnyValue:
    """Any value of the field's type (the type itself is checked by ``check_values``)."""

    def error(self, key: str, value: Any) -> str | None:
        return None

    def __str__(self) -> str:
        return "any"


ANY = AnyValue()
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
ABOVE_0 = Range(0, open_low=True)
FRACTION = Range(0, 1, open_high=True)  # [0, 1)
SEED = Range(0, 2**32, open_high=True)  # a JAX PRNG key holds 32 bits: larger seeds would wrap
RELATIVE_NAME = RelativeName()


def setting(default: Any, domain: Any, *, factory: bool = False):
    """A dataclass field whose values lie in ``domain``, with ``default`` (with ``factory``: a
    function making the default, for mutable values, which are left out of the config's hash
    so that frozen configs stay hashable; equality still compares them)."""
    if factory:
        return dataclasses.field(default_factory=default, hash=False, metadata={"domain": domain})
    return dataclasses.field(default=default, metadata={"domain": domain})


def domain_of(field: dataclasses.Field) -> Any:
    """The domain ``field`` was declared with (``setting``)."""
    if "domain" not in field.metadata:
        raise TypeError(f"config field {field.name!r} has no domain: declare it with setting()")
    return field.metadata["domain"]
