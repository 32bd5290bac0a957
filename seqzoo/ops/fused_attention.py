"""Deprecated alias, removed in the next release: ``attention_impl`` is
``seqzoo.ops.attention_impl`` (``seqzoo.ops.resolve("attention", ...)``) and the cuDNN path
``seqzoo.ops.attention.cudnn``."""

from __future__ import annotations

import warnings

from seqzoo.ops.attention import attention_impl
from seqzoo.ops.attention.cudnn import fused_attention
from seqzoo.ops.dispatch import FUSED_DTYPES

warnings.warn(
    "seqzoo.ops.fused_attention is deprecated: use seqzoo.ops.attention_impl (or "
    "seqzoo.ops.resolve) and seqzoo.ops.attention.cudnn",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["FUSED_DTYPES", "attention_impl", "fused_attention"]
