"""The registry: every layer module is found (not listed), and capabilities are queried from
``MixerInfo`` (``mixers_with``), not from hand-kept lists."""

from __future__ import annotations

import ast
import pathlib

import pytest

import seqzoo.layers
from seqzoo.layers.base import MixerInfo
from seqzoo.registry import SEQUENCE_PARALLEL_MIXERS, list_mixers, mixer_info, mixers_with

LAYERS = pathlib.Path(seqzoo.layers.__file__).parent


def _registered_in_source() -> set[str]:
    """The names passed to ``register_mixer(...)`` anywhere under seqzoo/layers, read with ast."""
    names = set()
    for path in LAYERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_mixer"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def test_every_layer_file_is_discovered():
    found = _registered_in_source()
    assert len(found) >= 30
    assert found == set(list_mixers())


def test_the_layers_package_lists_no_module():
    tree = ast.parse((LAYERS / "__init__.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names if n.module == "seqzoo.layers"}
    assert not imported, f"seqzoo/layers/__init__.py lists modules {sorted(imported)}"


def test_capabilities_come_from_mixer_info():
    for name in list_mixers():
        info = mixer_info(name)
        assert ("step" in info.capabilities) == info.causal, name
        assert ("matrix" in info.capabilities) == info.has_matrix, name
        assert ("segment_ids" in info.capabilities) == info.segments, name
        assert ("sequence_parallel" in info.capabilities) == info.sequence_parallel, name
    assert set(mixers_with("step", "segment_ids")) == {
        n for n in list_mixers() if mixer_info(n).causal and mixer_info(n).segments}
    assert mixers_with() == list_mixers()


def test_sequence_parallel_mixers_are_a_registry_query():
    assert SEQUENCE_PARALLEL_MIXERS == frozenset(mixers_with("sequence_parallel"))
    assert {"mamba", "mamba2", "hydra", "attention", "gla"} <= SEQUENCE_PARALLEL_MIXERS
    assert "s4" not in SEQUENCE_PARALLEL_MIXERS


def test_unknown_capability_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown capabilities.*sequence_parallel"):
        mixers_with("segments")
    assert MixerInfo.CAPABILITIES == ("matrix", "segment_ids", "sequence_parallel", "step")
