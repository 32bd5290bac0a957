"""Which attention kernel runs, and the fused (flash) path through cuDNN.

``attention_impl`` is the one policy behind ``dot_product_attention(impl="auto")``: on a GPU,
cuDNN's flash attention (through ``jax.nn.dot_product_attention(implementation="cudnn")``,
memory linear in length) wherever it computes our semantics exactly, XLA's dense softmax
elsewhere, each with its reason:

    cuDNN takes:   bf16 / fp16 inputs, head dim <= 128 (<= 256 from Hopper on) and a multiple of 8,
                   causal or not, a causal sliding window, GQA, any padding mask
    XLA keeps:     float32 inputs (cuDNN has no float32 kernel), attention sinks, packed
                   segment_ids, a two-sided window (cuDNN's windows are causal), other backends

Padding: the valid tokens run first (``seqzoo.ops.valid_first``) and cuDNN gets each row's
length (``query_seq_lengths = key_value_seq_lengths = mask.sum(1)``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqzoo.kernels.launch import GPU_BACKENDS
from seqzoo.ops.valid_first import valid_first

Array = jax.Array
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)


def attention_impl(
    impl: str,
    dtype,
    head_dim: int,
    *,
    causal: bool,
    window: int | None = None,
    num_sinks: int = 0,
    segment_ids: bool = False,
    backend: str | None = None,
    compute_capability: str | None = None,
) -> tuple[str, str]:
    """``(implementation, why)`` that ``dot_product_attention`` runs for these options.

    impl: the op's ``impl`` (``auto | xla | cudnn``; an explicit choice is kept as given).
    dtype: the inputs' dtype; head_dim: ``d``; segment_ids: whether packed ids are given.
    backend, compute_capability: the platform and the GPU's capability (default: the first
    device's).
    """
    if impl != "auto":
        return impl, "asked for"
    backend = jax.default_backend() if backend is None else backend
    if backend not in GPU_BACKENDS:
        return "xla", f"no fused attention kernel is wired for {backend!r}"
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in FUSED_DTYPES]:
        return "xla", f"cuDNN flash attention has no {jnp.dtype(dtype).name} kernel"
    if compute_capability is None:
        compute_capability = getattr(jax.devices()[0], "compute_capability", "")
    try:  # NVIDIA's "major.minor"; ROCm names its chips otherwise and has no cuDNN
        major_minor = float(compute_capability)
    except ValueError:
        return "xla", f"cuDNN needs an NVIDIA GPU (compute capability {compute_capability!r})"
    limit = 256 if major_minor >= 9.0 else 128
    if head_dim % 8 or head_dim > limit:
        return "xla", f"cuDNN needs a head dim <= {limit} and a multiple of 8, got {head_dim}"
    if num_sinks:
        return "xla", "cuDNN has no attention sinks"
    if segment_ids:
        return "xla", "packed segment_ids: cuDNN's packed layout is not exposed by jax.nn"
    if window is not None and not causal:
        return "xla", "cuDNN's sliding windows are causal only"
    return "cudnn", "bf16/fp16 flash attention"


def fused_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    causal: bool,
    window: int | None,
    mask: Array | None,
    scale: float | None,
    implementation: str = "cudnn",
) -> Array:
    """``jax.nn.dot_product_attention`` with padding as sequence lengths (module docstring).

    q: ``(batch, length, heads, d)``; k, v: ``(batch, length, kv_heads, d)``; mask:
    ``(batch, length)`` bool or None. ``implementation`` is jax's (``"xla"`` runs this same
    wrapper off a GPU: the tests' path). Padded query rows of the output are 0.
    """
    sides = None if window is None else (window - 1, 0 if causal else window - 1)
    run = functools.partial(jax.nn.dot_product_attention, scale=scale, is_causal=causal,
                            local_window_size=sides, implementation=implementation)
    if mask is None:
        return run(q, k, v)

    def with_lengths(lengths, q, k, v):
        return run(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths)

    return valid_first(with_lengths, mask, q, k, v)
