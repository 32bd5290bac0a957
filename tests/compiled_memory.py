"""The compiled size of a gradient, for the tests that a backward pass keeps little."""

from __future__ import annotations

import jax


def grad_temporaries(loss, *args) -> int:
    """Temporary bytes of ``jax.grad(loss)`` over all its arguments, compiled (with XLA's
    optimizations, which the test session turns off) on ``args`` (arrays or
    ``jax.ShapeDtypeStruct``: nothing runs)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        grad = jax.jit(jax.grad(loss, tuple(range(len(args)))))
        return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
