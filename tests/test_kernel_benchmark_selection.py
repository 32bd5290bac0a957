"""``benchmarks/kernels.py`` picks cases (``--match``) and variants (``--variants``) before
anything compiles: a GPU call that asks for one row must not pay for compiling the module's
others (on an H100 a module's every case compiled in parallel took the whole call); and each
picked case's variants, forward and forward+backward, compile in parallel before it is timed
(the gradient variants used to compile one after another as they first ran)."""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernels  # noqa: E402
from kernel_harness import Case, jax_gradients  # noqa: E402
from parallel_compile import precompile  # noqa: E402


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


def test_exact_names_and_no_baseline():
    """``=NAME`` keeps that variant only (not every name containing it); without the baseline
    the case has none to divide by, unless it is named."""
    got = kernels.picked(CASES, ["scan fwd B4"], ["=pallas"], baseline=False)
    assert [list(c.variants) for c in got] == [["pallas"]] and got[0].baseline is None
    got = kernels.picked(CASES, ["scan fwd B4"], ["=pallas", "w16"])
    assert list(got[0].variants) == ["pallas", "pallas w16", "fla x"]
    assert got[0].baseline == "fla x"
    got = kernels.picked(CASES, ["scan fwd B4"], ["fla"], baseline=False)
    assert got[0].baseline == "fla x"


def test_a_case_left_without_variants_is_dropped():
    case = _case("scan fwd", "B4", ["xla", "pallas"])  # no baseline
    assert kernels.picked([case], None, ["w64"]) == []


def test_only_the_picked_cases_compile_each_before_it_runs(monkeypatch):
    events = []
    module = types.SimpleNamespace(cases=lambda quick: CASES)
    monkeypatch.setattr(kernels, "case_modules", lambda only: [module, module])
    monkeypatch.setattr(kernels, "precompile", lambda cases: events.extend(
        ("compile", c.shape, tuple(c.variants)) for c in cases))
    monkeypatch.setattr(kernels, "run_case",
                        lambda case, **kw: events.append(("run", case.shape)) or [])
    assert kernels.main(["--match", "L80", "--variants", "pallas"]) == 0
    assert events == [("compile", "B1 L80", ("xla", "pallas")), ("run", "B1 L80")] * 2


def test_precompile_compiles_forward_and_gradient_variants():
    """Both kinds of JAX variant (``partial(jitted, *args)`` and ``jax_gradients``' ``JitCall``)
    become calls of compiled executables with the same results; torch-like callables stay."""
    x = jnp.linspace(-1.0, 1.0, 8)
    fwd = functools.partial(jax.jit(jnp.sin), x)
    grads = jax_gradients(jnp.sin, (x,), jnp.ones_like(x))
    other = lambda: x  # noqa: E731
    case = Case("sin", "8", {"fwd": fwd, "grads": grads, "other": other})
    want = {name: v() for name, v in case.variants.items()}
    precompile([case])
    assert not hasattr(case.variants["fwd"].func, "lower")  # an executable now
    assert not hasattr(case.variants["grads"].fn, "lower")
    assert case.variants["other"] is other
    for name, v in case.variants.items():
        np.testing.assert_allclose(np.asarray(jax.tree.leaves(v())[0]),
                                   np.asarray(jax.tree.leaves(want[name])[0]))
