"""``seqzoo.kernels.softplus``: the polynomial ``log1p`` against float64, softplus and its
derivative against float64 in an interpreted kernel, and no libdevice ``log1pf`` left in the
selective scan's kernels lowered for a GPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from test_kernels_approx_exp import selective_scan_modules

from seqzoo.kernels import launch, softplus


def _relative(got, want):
    return np.abs(np.asarray(got, np.float64) - want) / np.abs(want)


def test_log1p_on_the_unit_interval():
    e = np.linspace(0.0, 1.0, 1 << 16, dtype=np.float32)[1:]
    e = np.concatenate([e, np.float32(2.0) ** -np.arange(1, 40, dtype=np.float32)])
    got = softplus.log1p_unit(jnp.asarray(e))
    assert _relative(got, np.log1p(e.astype(np.float64))).max() < 2.5e-7


def test_softplus_and_sigmoid_in_a_kernel():
    """Down to ``exp(-85)`` (below it, ``ex2.approx.ftz`` flushes ``e`` to zero on a GPU)."""
    x = np.linspace(-85.0, 85.0, 4096, dtype=np.float32).reshape(64, 64)

    def kernel(x_ref, value_ref, slope_ref):
        value_ref[...], slope_ref[...] = softplus.softplus(x_ref[...], grad=True)

    shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    value, slope = launch.pallas_call(kernel, out_shape=(shape, shape))(jnp.asarray(x))
    x64 = x.astype(np.float64)
    assert _relative(value, np.logaddexp(0.0, x64)).max() < 5e-7
    assert _relative(slope, 1.0 / (1.0 + np.exp(-x64))).max() < 5e-7

    def value_only(x_ref, o_ref):
        o_ref[...] = softplus.softplus(x_ref[...])

    only = launch.pallas_call(value_only, out_shape=shape)(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(only), np.asarray(value))


def test_selective_scan_calls_no_log1pf():
    for module in selective_scan_modules(approx=True):
        assert "log1p" not in module and "ex2.approx" in module
