"""``softplus`` inside seqzoo's Pallas GPU kernels without libdevice's ``log1pf``.

    softplus(x) = max(x, 0) + log1p(e),     e = exp(-|x|) in (0, 1]
    sigmoid(x)  = softplus'(x) = (1 if x >= 0 else e) / (1 + e)

``log1p`` on ``[0, 1]`` is a degree-9 polynomial, ``e q(e)`` evaluated by Horner's rule
(nine FMAs and a multiply), where ``q`` is the least-squares Chebyshev fit of ``log1p(e) / e``
on ``[0, 1]`` (its coefficients rounded to float32): relative error below 2e-7 in float32,
about libdevice's ``log1pf`` (tested against float64). libdevice's ``log1pf`` (a range
reduction, a polynomial and special cases: about 40 instructions) is what Pallas' Triton
lowering calls for ``jnp.log1p``. ``e`` comes from ``approx_exp.exp`` (one ``ex2.approx``
where ``approx``). The same code runs interpreted on a CPU (the polynomial is plain
arithmetic), so its accuracy is tested there. float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.kernels import approx_exp

Array = jax.Array

# log1p(e) / e on [0, 1]: least-squares Chebyshev fit of degree 9, as power-series coefficients
# (constant term first), rounded to float32.
_LOG1P_OVER_E = (1.0, -0.4999985098838806, 0.3332909941673279, -0.24947808682918549,
                 0.19651491940021515, -0.1525145173072815, 0.10533228516578674,
                 -0.056435029953718185, 0.019649166613817215, -0.0032140363473445177)


def log1p_unit(e: Array) -> Array:
    """``log1p(e)`` for ``e`` in ``[0, 1]`` (float32; outside that interval: no bound)."""
    q = jnp.full_like(e, _LOG1P_OVER_E[-1])
    for c in _LOG1P_OVER_E[-2::-1]:
        q = q * e + c
    return q * e


def softplus(x: Array, approx: bool = True, *, grad: bool = False):
    """``softplus(x) = log(1 + exp(x))`` elementwise, float32; with ``grad`` also its
    derivative ``sigmoid(x)`` (sharing ``exp(-|x|)``): ``(softplus, sigmoid)``."""
    e = approx_exp.exp(-jnp.abs(x), approx)
    value = jnp.maximum(x, 0.0) + log1p_unit(e)
    if not grad:
        return value
    return value, jnp.where(x >= 0, 1.0, e) / (1.0 + e)
