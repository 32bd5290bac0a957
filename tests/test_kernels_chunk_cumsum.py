"""``seqzoo.kernels.chunk_cumsum``: the decays' chunk-local cumulative sum as a Pallas kernel.

Interpret mode on CPU against XLA's ``chunked_vjp._chunk_cumsum``; the split with it against
the XLA op in every gradient (the kernel counted); lowered for a GPU, one Triton scan; refusals.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from gpu_lowering import triton_modules

from seqzoo.kernels import chunk_cumsum as cumsum_module
from seqzoo.kernels import chunked_vjp, launch
from seqzoo.kernels.chunk_cumsum import chunk_cumsum
from seqzoo.ops.linear_attention import pallas_gpu
from tests.test_kernels_chunked_split import assert_kernel_matches_xla, rel


@pytest.mark.parametrize("chunk", [16, 64])
def test_equals_xla_cumsum(chunk):
    """(D, B, T, H, dk) = (2, 1, 128, 3, 32): every chunk's running sum, restarting at each."""
    rng = np.random.default_rng(0)
    g = -jnp.asarray(rng.exponential(size=(2, 1, 128, 3, 32)), jnp.float32)
    got = chunk_cumsum(g, chunk)
    assert got.dtype == jnp.float32
    assert rel(got, chunked_vjp._chunk_cumsum(g, chunk)) < 1e-6
    assert got[0, 0, chunk, 0, 0] == g[0, 0, chunk, 0, 0]  # restarts at the chunk's start


def test_split_with_the_cumsum_kernel_matches_the_xla_op_float32(monkeypatch):
    """``linear_attention_kernel(cumsum_kernel=True)``: o, S_T and every gradient apart equal
    ``impl="chunked"``'s (T = 77, chunks of 64, width 16), and the kernel really ran."""
    calls, kernel = [], cumsum_module.chunk_cumsum

    def counted(g, chunk):
        calls.append(g.shape)
        return kernel(g, chunk)

    monkeypatch.setattr(pallas_gpu, "chunk_cumsum", counted)
    assert_kernel_matches_xla(16, cumsum_kernel=True)
    assert calls


def test_lowers_to_one_scan(monkeypatch):
    """Lowered for a GPU at GLA's size (chunk 64, dk 128): one Triton module, one scan."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    g = jnp.zeros((1, 2, 128, 2, 128), jnp.float32)
    (module,) = triton_modules(lambda g: chunk_cumsum(g, 64), g)
    assert len(re.findall(r'"tt\.scan"\(', module)) == 1


@pytest.mark.parametrize("shape, dtype, chunk", [
    ((1, 1, 64, 2, 24), jnp.float32, 64),    # a width no tile takes
    ((1, 1, 64, 2, 32), jnp.bfloat16, 64),   # not float32
    ((1, 1, 80, 2, 32), jnp.float32, 64),    # T not a multiple of the chunk
])
def test_refuses_what_it_cannot_tile(shape, dtype, chunk):
    with pytest.raises(ValueError, match="chunk_cumsum takes"):
        chunk_cumsum(jnp.zeros(shape, dtype), chunk)
