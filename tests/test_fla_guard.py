"""``benchmarks/kernel_cases/fla_guard.py``: a variant wrapped by ``unguarded`` sees fla's Triton
check as passed during its call, and the check is restored afterwards, after an error too (a
stand-in ``fla.ops.common.chunk_o`` module: fla needs a GPU)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from kernel_cases.fla_guard import unguarded  # noqa: E402


@pytest.fixture
def chunk_o(monkeypatch):
    module = types.ModuleType("fla.ops.common.chunk_o")
    module.TRITON_ABOVE_3_7_1 = False
    parents = {name: types.ModuleType(name) for name in ("fla", "fla.ops", "fla.ops.common")}
    parents["fla"].ops = parents["fla.ops"]
    parents["fla.ops"].common = parents["fla.ops.common"]
    parents["fla.ops.common"].chunk_o = module
    for name, mod in {**parents, "fla.ops.common.chunk_o": module}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return module


def test_the_check_passes_within_the_call_only(chunk_o):
    seen = []
    run = unguarded(lambda: seen.append(chunk_o.TRITON_ABOVE_3_7_1) or "out")
    assert not chunk_o.TRITON_ABOVE_3_7_1
    assert run() == "out" and seen == [True]
    assert chunk_o.TRITON_ABOVE_3_7_1 is False


def test_the_check_is_restored_after_an_error(chunk_o):
    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        unguarded(fails)()
    assert chunk_o.TRITON_ABOVE_3_7_1 is False
