"""``benchmarks/kernel_harness.py``: a forward+backward variant runs the forward pass, even where
the backward pass does not read its output (XLA would drop it), and returns the gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernel_harness  # noqa: E402


@jax.custom_vjp
def _sine_with_a_blind_backward(x):
    """sin(x) forward; a backward that keeps only x and never reads sin(x) (as Based's fused
    kernel keeps q, k, v), so a gradient alone makes the forward dead code."""
    return jnp.sin(x)


_sine_with_a_blind_backward.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


def test_forward_runs_and_gradients_come_back():
    x, ct = jnp.linspace(0.0, 1.0, 8), jnp.linspace(1.0, 2.0, 8)
    step = jax.jit(kernel_harness.forward_and_gradients(_sine_with_a_blind_backward, (0,)))
    assert " sine(" in step.lower(ct, x).compile().as_text()
    # the same gradient without the loss as an output loses the forward: what the harness avoids
    alone = jax.jit(jax.grad(lambda x, ct: jnp.sum(_sine_with_a_blind_backward(x) * ct)))
    assert " sine(" not in alone.lower(x, ct).compile().as_text()

    (dx,) = kernel_harness.jax_gradients(_sine_with_a_blind_backward, (x,), ct)()
    np.testing.assert_allclose(dx, ct * jnp.cos(x), rtol=1e-6)
    (dy,) = kernel_harness.jax_gradients(lambda x, y: x * y, (x, 2.0 * x), ct, argnums=(1,))()
    np.testing.assert_allclose(dy, ct * x, rtol=1e-6)
