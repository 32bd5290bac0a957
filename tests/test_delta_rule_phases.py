"""``benchmarks/delta_rule_phases.py`` (issue 27's profile of the chunked delta rule) runs its
parts on a tiny shape, and each part computes what the op does: the parts' forward equals the op's
output, and the backward part's gradients equal the training variant's."""

from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import delta_rule_phases  # noqa: E402


def test_every_part_runs_and_the_forward_and_backward_parts_are_the_op():
    """Gated (the decay's parts too); ``main`` below runs DeltaNet."""
    parts = delta_rule_phases.phases(delta_rule_phases.QUICK_SHAPE, True, 32)
    assert {"parts (pass 1)", "inverse (in pass 1)", "output (pass 3)", "forward",
            "backward (chunked_core_vjp)", "fwd+bwd (training)"} <= set(parts)
    assert sum(name.startswith("states (pass 2)") for name in parts) == 2
    outputs = {name: fn() for name, fn in parts.items()}
    t = delta_rule_phases.QUICK_SHAPE[1]
    o, _ = outputs["forward"]
    d_rows, _ = outputs["backward (chunked_core_vjp)"]
    trained = outputs["fwd+bwd (training)"]
    assert o.shape[1] >= t
    for got, want in zip(d_rows[:4], trained[:4], strict=True):  # dq, dk, dv, dbeta
        np.testing.assert_allclose(np.asarray(got[:, :t], jnp.float32),
                                   np.asarray(want, jnp.float32), rtol=2e-2, atol=2e-2)


def test_main_prints_a_row_per_part(capsys):
    timed = delta_rule_phases.main(["--quick"])
    printed = capsys.readouterr().out
    assert len(timed) == 8 and all(ms > 0 for _, ms in timed)
    assert all(f"| {name} |" in printed for name, _ in timed)
