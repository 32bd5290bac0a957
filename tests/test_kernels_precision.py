"""The float32 matmul precision of the chunked Triton kernel (``seqzoo.kernels.matmul_precision``).

In interpret mode (this CPU) every precision computes IEEE float32, so "tf32" must match the XLA
op as closely as the default does (outputs and every gradient); lowered for a GPU, every
``tt.dot`` of every pass (forward, dq, dv, dk) carries the requested Triton input precision,
bf16 inputs are untouched, and bad values are refused by every op.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpu_lowering import dot_precisions, triton_modules
from test_kernels_chunked import (
    F32_TOL,
    assert_close,
    attention,
    attention_inputs,
    normal,
    ssd_inputs,
    value_and_grads,
)

from seqzoo.kernels import launch
from seqzoo.kernels.matmul_precision import resolve_precision
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.ssd import ssd
from seqzoo.registry import get_mixer


def pallas(precision, q, k, v, g, s0):
    return linear_attention(q, k, v, log_decay=g, initial_state=s0, return_final_state=True,
                            chunk_size=16, impl="pallas", precision=precision)


def test_tf32_runs_exactly_in_interpret_mode():
    """Interpret mode computes IEEE whatever the precision ("highest": test_kernels_chunked; the
    lowering tests below tell the precisions apart). Scalar decays: split dq / dk passes."""
    args, rng = attention_inputs("head", jnp.float32, t=21, seed=6)
    cot = (normal(rng, 2, 21, 2, 16), normal(rng, 2, 2, 16, 16))
    got = value_and_grads(partial(pallas, "tf32"), args, cot)
    assert_close(got, value_and_grads(partial(attention, "chunked"), args, cot), F32_TOL)


def test_a_bad_precision_is_refused_by_every_op():
    inputs, _ = ssd_inputs(length=8)
    x, dt, A, B, C = (inputs[n] for n in ("x", "dt", "A", "B", "C"))
    calls = [lambda p: linear_attention(x, x, x, impl="pallas", precision=p),
             lambda p: ssd(x, dt, A, B, C, impl="chunked", precision=p),
             lambda p: quasiseparable(x, dt, dt, A, B, C, B, C, precision=p)]
    for call in calls:
        with pytest.raises(ValueError, match=r"precision must be one of \('highest', "
                                             r"'tf32x3', 'tf32'\) or None, got 'float32'"):
            call("float32")


def test_none_follows_default_matmul_precision():
    assert resolve_precision(None) == "highest"  # tests/conftest.py sets "highest"
    unset = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", None)
    try:
        assert resolve_precision(None) == "tf32x3"  # no context: the kernel's own default
    finally:
        jax.config.update("jax_default_matmul_precision", unset)
    expected = {"float32": "highest", "highest": "highest", "tensorfloat32": "tf32",
                "bfloat16": "tf32", "TF32_TF32_F32_X3": "tf32x3", "BF16_BF16_F32_X9": "highest"}
    for context, precision in expected.items():
        with jax.default_matmul_precision(context):
            assert resolve_precision(None) == precision, context
            assert resolve_precision("tf32x3") == "tf32x3"  # an explicit one wins


def _grad_modules(precision, dtype=jnp.float32, decay=True, context=None):
    """The Triton modules of linear attention's forward and backward passes, lowered for CUDA
    (scalar decays: the dq and dk passes split their float32 intermediates)."""
    rng = np.random.default_rng(8)
    q = jnp.asarray(rng.standard_normal((1, 32, 2, 16), np.float32)).astype(dtype)
    g = -jax.nn.softplus(jnp.asarray(rng.standard_normal((1, 32, 2), np.float32)))

    def loss(q, k, v, g):
        o = linear_attention(q, k, v, log_decay=g if decay else None, chunk_size=16,
                             impl="pallas", precision=precision)
        return jnp.sum(o.astype(jnp.float32))

    with jax.default_matmul_precision(context):
        return triton_modules(jax.grad(loss, (0, 1, 2, 3)), q, q, q, g)


@pytest.mark.parametrize("precision, forward_dv, dq_dk", [
    ("highest", "ieee", ("ieee",)),
    ("tf32x3", "tf32x3", ("tf32x3",)),
    ("tf32", "tf32", ("tf32", "tf32x3")),  # scores q k^T at tf32, split matmuls at tf32x3
])
def test_every_pass_lowers_with_its_input_precision(monkeypatch, precision, forward_dv, dq_dk):
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    forward, dq, dv, dk = (dot_precisions(m) for m in _grad_modules(precision))
    assert forward and dq and dv and dk
    assert set(forward) == set(dv) == {forward_dv}
    assert set(dq) == set(dk) == set(dq_dk)


def test_context_reaches_the_lowering_and_bf16_is_untouched(monkeypatch):
    """No decay: no split matmuls, so every pass at tf32."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    in_context = _grad_modules(None, decay=False, context="tensorfloat32")
    assert len(in_context) == 4
    assert {p for m in in_context for p in dot_precisions(m)} == {"tf32"}
    bf16 = [_grad_modules(p, dtype=jnp.bfloat16) for p in ("highest", "tf32")]
    assert len(bf16[0]) == 4 and bf16[0] == bf16[1]


def test_ssd_and_quasiseparable_pass_it_to_every_pass(monkeypatch):
    """Mamba-2 forward and backward at tf32x3, Hydra's two-direction forward at tf32."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    inputs, _ = ssd_inputs(length=32, seed=7)
    x, dt, A, B, C = (inputs[n] for n in ("x", "dt", "A", "B", "C"))

    def mamba2(x, dt, B, C):
        return jnp.sum(ssd(x, dt, A, B, C, chunk_size=16, impl="pallas", precision="tf32x3"))

    ssd_modules = triton_modules(jax.grad(mamba2, (0, 1, 2, 3)), x, dt, B, C)
    assert len(ssd_modules) == 4
    assert {p for m in ssd_modules for p in dot_precisions(m)} == {"tf32x3"}
    hydra = partial(quasiseparable, chunk_size=16, impl="pallas", precision="tf32")
    hydra_modules = triton_modules(hydra, x, dt, dt, A, B, C, C, B)
    assert len(hydra_modules) == 1 and set(dot_precisions(hydra_modules[0])) == {"tf32"}


def test_pallas_split_passes_it_to_its_inter_chunk_passes(monkeypatch):
    """Per-key decays, forward and backward: four inter-chunk passes at tf32x3 (the intra-chunk
    scores are XLA's, IEEE), and the chunk-local sums' kernel (no product)."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    (q, k, v, g, _), _ = attention_inputs("key", jnp.float32, t=32, seed=10)

    def loss(q, k, v, g):
        return jnp.sum(linear_attention(q, k, v, log_decay=g, chunk_size=16,
                                        impl="pallas_split", precision="tf32x3"))

    modules = triton_modules(jax.grad(loss, (0, 1, 2, 3)), q, k, v, g)
    passes = [m for m in modules if "chunk_cumsum" not in m]
    assert len(modules) == 5 and len(passes) == 4
    assert all(dot_precisions(m) for m in passes)
    assert {p for m in modules for p in dot_precisions(m)} == {"tf32x3"}


def test_xla_forms_are_ieee_whatever_the_context():
    """The like-for-like row of benchmarks/kernel_cases/chunked_float32.py: the chunked XLA
    paths lower the same under "tensorfloat32" as under no context, every dot at HIGHEST."""
    (q, k, v, g, _), _ = attention_inputs("head", jnp.float32, t=32, seed=9)
    inputs, _ = ssd_inputs(length=32, seed=9)
    x, dt, A, B, C = (inputs[n] for n in ("x", "dt", "A", "B", "C"))
    ops = [(lambda q, k, v, g: linear_attention(q, k, v, log_decay=g, chunk_size=16,
                                                impl="chunked"), (q, k, v, g)),
           (lambda x, dt, B, C: ssd(x, dt, A, B, C, chunk_size=16, impl="chunked"),
            (x, dt, B, C))]
    for fn, args in ops:
        texts = []
        for context in (None, "tensorfloat32"):
            with jax.default_matmul_precision(context):
                texts.append(jax.jit(fn).trace(*args).lower().as_text())
        assert texts[0] == texts[1]
        dots = texts[0].count("stablehlo.dot_general")
        assert dots and texts[0].count("precision = [HIGHEST, HIGHEST]") == dots


@pytest.mark.parametrize("mixer", ["mamba2", "hydra", "gla"])
def test_layers_pass_it_to_the_kernel(monkeypatch, mixer):
    options = dict(impl="pallas", precision="tf32")
    layer = get_mixer(mixer, d_model=32, num_heads=2, **options) if mixer == "gla" \
        else get_mixer(mixer, d_model=32, **options)
    # initialised (interpreted) at another length: the ops the layers jit would otherwise reuse
    # that trace instead of building the compiled kernels
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), jnp.ones((1, 16, 32)))
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    modules = triton_modules(layer.apply, params, jnp.ones((1, 32, 32), jnp.float32))
    assert modules and {p for m in modules for p in dot_precisions(m)} == {"tf32"}
