"""``benchmarks/kernels.py`` picks cases (``--match``) and variants (``--variants``) before
anything compiles: a GPU call that asks for one row must not pay for compiling the module's
others (on an H100 a module's every case compiled in parallel took the whole call)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernels  # noqa: E402
from kernel_harness import Case  # noqa: E402


def _case(kernel, shape, names, baseline=None):
    return Case(kernel, shape, {n: (lambda n=n: n) for n in names}, baseline=baseline)


CASES = [
    _case("scan fwd", "B4 L2048", ["xla", "pallas", "pallas w16", "fla x"], baseline="fla x"),
    _case("scan fwd+bwd", "B4 L2048", ["xla", "pallas", "pallas w16"], baseline="xla"),
    _case("scan fwd+bwd", "B1 L80", ["xla", "pallas"], baseline="xla"),
]


def test_match_picks_cases_by_kernel_and_shape():
    got = kernels.picked(CASES, ["fwd+bwd | never", "scan fwd+bwd B4"], None)
    assert [(c.kernel, c.shape) for c in got] == [("scan fwd+bwd", "B4 L2048")]
    assert list(got[0].variants) == ["xla", "pallas", "pallas w16"]
    assert len(kernels.picked(CASES, None, None)) == 3


def test_variants_keep_the_baseline_and_the_first_kept_is_the_reference():
    got = kernels.picked(CASES, ["B4"], ["w16"])
    assert [list(c.variants) for c in got] == [["pallas w16", "fla x"], ["xla", "pallas w16"]]
    assert got[0].baseline == "fla x"
    assert list(CASES[0].variants) == ["xla", "pallas", "pallas w16", "fla x"]  # not mutated


def test_a_case_left_without_variants_is_dropped():
    case = _case("scan fwd", "B4", ["xla", "pallas"])  # no baseline
    assert kernels.picked([case], None, ["w64"]) == []


def test_only_the_picked_cases_compile_and_run(monkeypatch, capsys):
    compiled, ran = [], []
    eager = types.SimpleNamespace(cases=lambda quick: CASES)
    batched = types.SimpleNamespace(cases=lambda quick: CASES, PRECOMPILE=True)
    monkeypatch.setattr(kernels, "case_modules", lambda only: [eager, batched])
    monkeypatch.setattr(kernels, "precompile", lambda cases: compiled.append(
        [(c.shape, list(c.variants)) for c in cases]))
    monkeypatch.setattr(kernels, "run_case", lambda case, **kw: ran.append(case.shape) or [])
    assert kernels.main(["--match", "L80", "--variants", "pallas"]) == 0
    assert compiled == [[("B1 L80", ["xla", "pallas"])]]  # only the module that batches compiles
    assert ran == ["B1 L80", "B1 L80"]
