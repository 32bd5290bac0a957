"""The inter-chunk forward as a states pass and a chunk-parallel output pass
(``seqzoo.kernels.chunked_states``): the walk's entering states against a dense reference, the
two passes against the one walk of ``chunked_pass(intra=False)``, the split on it against the
XLA op; Pallas in interpret mode on CPU, lowered for a GPU too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_kernels_chunked_split import rel

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_pass import Tiling, chunked_pass
from seqzoo.kernels.chunked_states import states_then_outputs
from seqzoo.kernels.chunked_vjp import _chunk_cumsum
from seqzoo.ops.linear_attention import pallas_gpu_split

TILING = Tiling(chunk=32, block_v=32, num_stages=1)


def inputs(dtype, t=96, h=2, dk=32, dv=64, seed=0):
    """q, k (1, 2, t, h, dk), v (1, 2, t, h, dv) in ``dtype``; per-key log decays g <= 0 and
    S_0 (1, 2, h, dk, dv) float32."""
    rng = np.random.default_rng(seed)

    def normal(*shape, dt=jnp.float32):
        return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dt)

    q, k, v = normal(1, 2, t, h, dk, dt=dtype), normal(1, 2, t, h, dk, dt=dtype), normal(
        1, 2, t, h, dv, dt=dtype)
    g = -jax.nn.softplus(normal(1, 2, t, h, dk))
    return q, k, v, g, normal(1, 2, h, dk, dv)


def test_the_walk_writes_the_state_entering_each_chunk():
    """``chunked_pass(outputs=False, boundaries=True)``: no output, and boundary n is
    ``exp(G_{nC}) S_0 + sum_{j < nC} (k_j * exp(G_{nC} - G_j)) v_j^T`` (G over the whole
    sequence), in the boundary dtype asked for; the final state as the output pass's."""
    q, k, v, g, s0 = inputs(jnp.float32)
    c, n, dk = TILING.chunk, q.shape[2] // TILING.chunk, q.shape[-1]
    out, final, entering = chunked_pass(q, k, v, _chunk_cumsum(g, c), None, None, s0, scale=1.0,
                                        reverse=(False,), decay="key", tiling=TILING,
                                        intra=False, outputs=False, boundaries=True)
    assert out is None and entering.dtype == jnp.float32
    full = jnp.cumsum(g, axis=2)
    for m in range(n + 1):
        at = full[:, :, m * c - 1] if m else jnp.zeros_like(full[:, :, 0])  # (1, 2, h, dk)
        keys = k[:, :, :m * c] * jnp.exp(at[:, :, None] - full[:, :, :m * c])
        want = jnp.exp(at)[..., None] * s0 + jnp.einsum("dbthk,dbthv->dbhkv", keys,
                                                        v[:, :, :m * c])
        got = final if m == n else entering[:, :, m * dk:(m + 1) * dk].transpose(0, 1, 3, 2, 4)
        assert rel(got, want) < 1e-5, m


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("dk, block_k", [(32, 16), (128, 64), (16, 64)],
                         ids=["two-key-blocks", "gla-width", "one-key-block"])
@pytest.mark.parametrize("initial", [True, False], ids=["s0", "zero-s0"])
def test_states_then_outputs_equal_the_one_walk(dtype, dk, block_k, initial):
    """The two passes against ``chunked_pass(intra=False)``'s one walk: ``out`` (float32) and
    the final state to 1e-5 relative L2 (bf16: the same bf16 operands and float32
    accumulation, so only the summation order differs)."""
    q, k, v, g, s0 = inputs(dtype, t=64 if dk == 128 else 96, dk=dk)
    cum = _chunk_cumsum(g, TILING.chunk)
    common = dict(scale=0.3, reverse=(False,), decay="key", tiling=TILING, intra=False,
                  out_dtype=jnp.float32)
    s0 = s0 if initial else None
    want = chunked_pass(q, k, v, cum, None, None, s0, **common)
    got = states_then_outputs(q, k, v, cum, None, None, s0, block_k=block_k, **common)
    assert got[0].dtype == jnp.float32 and got[0].shape == want[0].shape
    assert rel(got[0], want[0]) < 1e-5 and rel(got[1], want[1]) < 1e-5


def test_states_then_outputs_refuses_what_it_does_not_compute():
    q, k, v, g, s0 = inputs(jnp.float32)
    common = dict(scale=0.3, reverse=(False,), tiling=TILING)
    with pytest.raises(ValueError, match="per-key decays"):
        states_then_outputs(q, k, v, g[..., 0], None, None, s0, decay="scalar", intra=False,
                            **common)
    with pytest.raises(ValueError, match="per-key decays"):
        states_then_outputs(q, k, v, g, None, None, s0, decay="key", intra=True, **common)
    with pytest.raises(ValueError, match="per-key decays"):
        pallas_gpu_split.linear_attention_kernel(q[0], k[0], v[0], g[0, ..., 0], scale=0.3,
                                                 states_forward=True)


def test_split_on_the_states_forward_lowers_for_a_gpu(monkeypatch):
    """Forward and gradient of the split with ``states_forward`` lower with the Triton kernels
    for CUDA on this CPU machine: the states-only walk and the output kernel forward (two key
    blocks of 64 at width 128), the usual backward passes."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    x = jnp.ones((1, 128, 2, 128), jnp.bfloat16)
    g = -jnp.ones((1, 128, 2, 128), jnp.float32)

    def forward(q, k, v, g):
        return pallas_gpu_split.linear_attention_kernel(q, k, v, g, scale=0.1,
                                                        states_forward=True)[0]

    def grads(*args):
        return jax.grad(lambda *a: forward(*a).astype(jnp.float32).sum(), (0, 1, 2, 3))(*args)

    for fn, kernels in ((forward, ["chunked_pass_key_inter_states", "chunked_states_outputs"]),
                        (grads, ["chunked_pass_key_inter_states", "chunked_states_outputs",
                                 "chunked_pass_value_inter"])):
        text = jax.jit(fn).trace(x, x, x, g).lower(lowering_platforms=("cuda",)).as_text()
        assert all(name in text for name in kernels)
