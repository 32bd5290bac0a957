"""Every config key for people, generated from ``seqzoo.config`` so that it cannot go stale:
the resolved config that ``seqzoo config show`` prints and the key list of
``seqzoo train --help``.

``show_config`` writes TOML that ``seqzoo train FILE.toml`` reads back unchanged: the top-level
keys, then one table per section headed by the section's docstring; each key's comment gives
its type, its default, the values it allows, and where a value other than the default comes
from (``experiment`` or ``override``).
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from typing import Any

from seqzoo.config import ExperimentConfig, toml_value, type_name
from seqzoo.domains import ANY, domain_of


def _sections(config: Any) -> list[tuple[str, Any]]:
    """``[("", config), ("task", config.task), ...]``: the top level, then each section."""
    subs = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)]
    return [("", config)] + [(name, sub) for name, sub in subs if dataclasses.is_dataclass(sub)]


def _keys(section: Any) -> list[dataclasses.Field]:
    """The fields of ``section`` that hold values (not sections)."""
    fields = dataclasses.fields(section)
    return [f for f in fields if not dataclasses.is_dataclass(getattr(section, f.name))]


def key_listing(width: int = 92) -> str:
    """One wrapped line per section: ``optim: lr ssm_lr weight_decay ...``."""
    lines = []
    for name, section in _sections(ExperimentConfig()):
        keys = " ".join(f.name for f in _keys(section))
        lines.append(textwrap.fill(
            f"{name or '(top level)'}: {keys}", width, initial_indent="  ",
            subsequent_indent="      ",
        ))
    return "\n".join(lines)


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _origin(key: str, default: Any, base: Any, overridden: set[str]) -> str:
    """``override``, ``experiment`` (``base``, its value there, is not the default) or
    nothing."""
    if key in overridden:
        return "override"
    return "experiment" if base != default else ""


def show_config(
    cfg: ExperimentConfig, experiment: ExperimentConfig, overrides: list[str], title: str
) -> str:
    """``cfg`` (``experiment`` with ``overrides`` applied) as annotated TOML (see the module
    docstring); ``title``: the first comment line."""
    overridden = {item.split("=", 1)[0] for item in overrides}
    lines = _comment(
        f"{title}\nEvery key, as TOML (`seqzoo train FILE.toml` reads it back): type; default; "
        f"allowed values;\nwhere a value other than the default comes from."
    )
    defaults = dict(_sections(ExperimentConfig()))
    bases = dict(_sections(experiment))
    for name, section in _sections(cfg):
        doc = _comment(inspect.cleandoc(type(section).__doc__ or ""))
        lines += ["", f"[{name}]", *doc] if name else ["", *doc]
        types = typing.get_type_hints(type(section))
        rows = []
        for field in _keys(section):
            key = f"{name}.{field.name}" if name else field.name
            value, default = getattr(section, field.name), getattr(defaults[name], field.name)
            origin = _origin(key, default, getattr(bases[name], field.name), overridden)
            domain = domain_of(field)
            notes = [type_name(types[field.name]), f"default {toml_value(default)}"]
            notes += [str(domain)] if domain is not ANY else []
            notes += [origin] if origin else []
            rows.append((f"{field.name} = {toml_value(value)}", "; ".join(notes)))
        column = max(len(text) for text, _ in rows)
        lines += [f"{text:{column}s}  # {notes}" for text, notes in rows]
    return "\n".join(lines) + "\n"
