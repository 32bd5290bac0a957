"""``benchmarks/gla_phases.py`` (issue 24's profile of GLA's ``impl="pallas_split"``) times the
real parts: on a tiny shape (Pallas interpret mode on CPU) the inter-chunk kernel's output plus
the intra-chunk ``A v`` (fed by the timed scores, fed by the timed chunk-local cumsum) is the
whole op's output, and the intra terms as the split runs them are the scores' ``A v``."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gla_phases  # noqa: E402


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(got).all()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_the_timed_parts_add_up_to_the_op(dtype, tol):
    """float32: to float32's accuracy (interpret mode is IEEE); bf16: the inter-chunk output's
    own rounding to bf16 (the whole op rounds the sum once)."""
    b, t, h, d = shape = gla_phases.QUICK_SHAPE
    parts = gla_phases.jax_parts(shape, gla_phases.QUICK_CHUNK, dtype)
    assert set(gla_phases.SPLIT_PARTS) <= set(parts)
    assert {"intra terms (scores + A v)", "pallas_split (whole op)",
            "pallas (one pass, reference)", *gla_phases.SCORES_VARIANTS,
            *gla_phases.INTER_VARIANTS} <= set(parts)
    forward_only = {"chunk-local cumsum (Pallas kernel)"}  # a kernel with no VJP of its own
    assert all(set(modes) == ({"fwd"} if name in forward_only else {"fwd", "fwd+bwd"})
               for name, modes in parts.items())
    cum = parts["chunk-local cumsum"]["fwd"]()
    assert rel(parts["chunk-local cumsum (Pallas kernel)"]["fwd"](), cum) < 1e-6
    o_inter = parts["inter-chunk kernel (intra=False)"]["fwd"]()
    for name in [*gla_phases.INTER_VARIANTS, gla_phases.APPROX_INTER]:  # the same sums
        assert rel(parts[name]["fwd"](), o_inter) < tol, name
    o_intra = parts["intra A v"]["fwd"]()
    assert rel(parts["intra A v (Pallas kernel)"]["fwd"](), o_intra) < 1e-6
    whole = parts["pallas_split (whole op)"]["fwd"]()
    assert o_inter.shape == whole.shape == (b, t, h, d)
    assert o_intra.shape == (b, t // gla_phases.QUICK_CHUNK, gla_phases.QUICK_CHUNK, h, d)
    parts_sum = o_inter.astype(jnp.float32) + o_intra.reshape(b, t, h, d)
    assert rel(parts_sum, whole.astype(jnp.float32)) < tol
    # neither part alone is the op (GLA's decays / 16: both carry weight)
    assert min(rel(o_inter, whole.astype(jnp.float32)),
               rel(o_intra.reshape(b, t, h, d), whole.astype(jnp.float32))) > 0.1
    xla_scores = parts["intra scores A (XLA, per key)"]["fwd"]()
    for name in gla_phases.SCORES_VARIANTS:
        kernel_scores = parts[name]["fwd"]()
        assert rel(kernel_scores, xla_scores) < (1e-5 if dtype == jnp.float32 else 1e-3), name
    terms = parts["intra terms (scores + A v)"]["fwd"]()
    np.testing.assert_allclose(np.asarray(terms[0]), np.asarray(o_intra.reshape(b, t, h, d)),
                               rtol=1e-6, atol=1e-6)
    without = parts["pallas_split (whole op, XLA cumsum, XLA A v, libdevice exp)"]["fwd"]()
    assert rel(without.astype(jnp.float32), whole.astype(jnp.float32)) < 1e-6
    with_xla_scores = parts["pallas_split (whole op, XLA scores)"]["fwd"]()
    assert rel(with_xla_scores.astype(jnp.float32), whole.astype(jnp.float32)) < (
        1e-5 if dtype == jnp.float32 else 1e-2)
    if dtype == jnp.float32:
        one_pass = parts["pallas (one pass, reference)"]["fwd"]()
        assert rel(parts_sum, one_pass) < tol


def test_a_gradient_part_runs():
    parts = gla_phases.jax_parts(gla_phases.QUICK_SHAPE, gla_phases.QUICK_CHUNK)
    dq, dk, dcum = parts["intra scores A (XLA, per key)"]["fwd+bwd"]()
    assert dq.shape == dk.shape == dcum.shape and np.isfinite(np.asarray(dcum)).all()


@pytest.mark.slow
def test_main_prints_a_row_per_part(capsys):
    timed = gla_phases.main(["--quick"])
    printed = capsys.readouterr().out
    assert len(timed) == 9 + len(gla_phases.SCORES_VARIANTS) + len(gla_phases.INTER_VARIANTS)
    assert all(isinstance(ms, float) for row in timed.values() for ms in row.values())
    assert all(f"| {name} |" in printed for name in timed if not name.startswith("sum"))


@pytest.mark.parametrize("parts, called", [("all", ["ours", "fla"]), ("ours", ["ours"]),
                                           ("fla", ["fla"])])
def test_parts_picks_what_is_timed(monkeypatch, parts, called):
    """``--parts``: a GPU call short of time for both gets the JAX parts or fla's whole."""
    seen = []
    monkeypatch.setattr(gla_phases, "time_ours", lambda *a, **kw: seen.append("ours"))
    monkeypatch.setattr(gla_phases, "time_fla", lambda *a: seen.append("fla"))
    monkeypatch.setattr(gla_phases, "split_tiling", lambda *a: type("T", (), {"chunk": 64,
                                                                              "sub": 16}))
    gla_phases.main(["--parts", parts])
    assert seen == called


def test_rows_picks_the_parts_timed(monkeypatch):
    """``--rows``: only the named JAX parts compile and run (each row compiles apart)."""
    names = ["chunk-local cumsum", "intra scores A (XLA, per key)",
             "intra scores A (Pallas kernel, 8 warps)", "pallas_split (whole op)",
             "pallas (one pass, reference)"]
    monkeypatch.setattr(gla_phases, "jax_parts", lambda *a: {n: {} for n in names})
    timed_names = []
    monkeypatch.setattr(gla_phases, "time_parts",
                        lambda parts, *a: timed_names.extend(parts))
    gla_phases.time_ours((1, 64, 2, 16), 32, 1, 1, {}, rows=["scores A (", "whole op"])
    assert timed_names == names[1:4]
    timed_names.clear()
    gla_phases.time_ours((1, 64, 2, 16), 32, 1, 1, {})
    assert sorted(timed_names) == sorted(names)
