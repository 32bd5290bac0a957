"""Every op with a TPU kernel, and layers built on them, called with their defaults on a CPU
machine: lowered for a TPU, forward and gradient contain the Mosaic kernels
(``tpu_custom_call``); lowered for the CPU, none (``seqzoo.ops.dispatch.on_platform``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import seqzoo.ops as ops
from seqzoo.registry import get_mixer

B, L, H, P, N = 2, 64, 2, 16, 8
X = jnp.full((B, L, H, P), 0.1, jnp.bfloat16)
DT, A = jnp.zeros((B, L, H)), -jnp.ones((H,))
BC = jnp.full((B, L, 1, N), 0.1, jnp.bfloat16)
U = jnp.full((B, L, P), 0.1)
QA = jnp.ones((B, 256, H, 128), jnp.bfloat16)
HOLES = jnp.arange(256)[None].repeat(B, 0) % 5 != 2

CASES = {  # op: (function with defaults, arguments), (forward, gradient) kernel launches
    "linear_attention": ((lambda q, k, v: ops.linear_attention(q, k, v), (X, X, X)), (1, 4)),
    "ssd": ((lambda x, dt, b, c: ops.ssd(x, dt, A, b, c, dt_softplus=True), (X, DT, BC, BC)),
            (1, 4)),
    "quasiseparable": ((lambda x, dt, b, c: ops.quasiseparable(x, dt, dt, A, b, c, b, c),
                        (X, DT, BC, BC)), (1, 4)),
    "linear_recurrence": ((lambda a, b: ops.linear_recurrence(a, b), (U * 9, U)), (1, 2)),
    "selective_scan": ((lambda u, d, b, c: ops.selective_scan(u, d, -jnp.ones((P, N)), b, c),
                        (U, U, U[..., :N], U[..., :N])), (1, 2)),
    "attention": ((lambda q, k, v: ops.dot_product_attention(q, k, v, causal=True),
                   (QA, QA, QA)), (1, 3)),
    "attention, float32, holes, window": (
        (lambda q, k, v: ops.dot_product_attention(q, k, v, window=32, mask=HOLES),
         tuple(t.astype(jnp.float32) for t in (QA, QA, QA))), (1, 3)),
}


def _loss(f):
    def loss(*args):
        return jnp.sum(f(*args).astype(jnp.float32))
    return loss


def _mosaic_calls(f, args, platform):
    text = jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    return text.count("tpu_custom_call")


@pytest.mark.parametrize("name", list(CASES))
def test_defaults_lower_to_mosaic_kernels_for_a_tpu(name):
    (f, args), (forward, gradient) = CASES[name]
    grad = jax.grad(_loss(f), tuple(range(len(args))))
    assert _mosaic_calls(f, args, "tpu") == forward
    assert _mosaic_calls(grad, args, "tpu") == gradient
    assert _mosaic_calls(grad, args, "cpu") == 0
    jax.block_until_ready(jax.jit(grad)(*args))  # and it runs here, on the XLA forms


@pytest.mark.parametrize("mixer", ["mamba2", "hydra", "gla", "mamba", "attention"])
def test_layers_lower_to_mosaic_kernels_for_a_tpu(mixer):
    layer = get_mixer(mixer, d_model=32, num_heads=2) if mixer in ("gla", "attention") \
        else get_mixer(mixer, d_model=32)
    x = jnp.ones((1, 128, 32), jnp.bfloat16)
    params = layer.init(jax.random.PRNGKey(0), x)

    def loss(params, x):
        return jnp.sum(layer.apply(params, x).astype(jnp.float32))

    assert _mosaic_calls(jax.grad(loss), (params, x), "tpu") >= 2
