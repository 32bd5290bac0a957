"""Package-level promises: public ops are functions, and the README documents every mixer."""

from __future__ import annotations

import pathlib
import re

import seqzoo
import seqzoo.ops

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_public_ops_are_functions():
    for name in seqzoo.ops.__all__:
        assert callable(getattr(seqzoo.ops, name)), name
    for name, family in [("linear_attention", "linear_attention"), ("selective_scan", "scan"),
                         ("ssd", "ssd"), ("quasiseparable", "quasiseparable")]:
        assert getattr(seqzoo.ops, name).__module__ == f"seqzoo.ops.{family}"


def test_readme_mixer_table_lists_every_registered_mixer():
    table = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"`([a-z0-9_]+)`", " ".join(row.split("|")[1] for row in table)))
    missing = sorted(set(seqzoo.list_mixers()) - documented)
    assert not missing, f"README's mixer table lacks {missing}"
