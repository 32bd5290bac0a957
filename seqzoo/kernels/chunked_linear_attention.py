"""Deprecated alias, removed in the next release: the chunked linear-attention kernels moved to
``seqzoo.ops.linear_attention.pallas_gpu`` and their dispatch policy (``kernel_impl``,
``choose``) to ``seqzoo.ops.dispatch`` (``seqzoo.ops.resolve`` / ``seqzoo.ops.explain``)."""

from __future__ import annotations

import warnings

from seqzoo.ops.dispatch import MEASURED_WIDTH, resolve
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention, linear_attention_kernel

warnings.warn(
    "seqzoo.kernels.chunked_linear_attention is deprecated: use seqzoo.ops.resolve / "
    "seqzoo.ops.explain and seqzoo.ops.linear_attention.pallas_gpu",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["MEASURED_WIDTH", "choose", "gated_linear_attention", "kernel_impl",
           "linear_attention_kernel"]


def kernel_impl(impl: str, *, xla: str, dims: tuple[int, int], dtypes: tuple, segment_ids=None,
                per_key: bool = False) -> tuple[str, str]:
    """``seqzoo.ops.resolve("linear_attention", ...)`` as ``(implementation, why)``, the chunked
    XLA path named ``xla``."""
    choice = resolve("linear_attention", "chunked" if impl == xla else impl, dims=dims,
                     dtypes=dtypes, segment_ids=segment_ids, per_key=per_key)
    return (xla if choice.impl == "chunked" else choice.impl), choice.why


def choose(impl: str, **options) -> str:
    """The implementation of ``kernel_impl`` (same arguments), without the reason."""
    return kernel_impl(impl, **options)[0]
