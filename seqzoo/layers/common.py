"""Small building blocks shared by the mixers: head reshapes, RMS and L2 norms, projections."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.ops.lean_grad import blockwise, rms_norm

Array = jax.Array


def split_heads(x: Array, heads: int) -> Array:
    """``(batch, length, heads * dim) -> (batch, length, heads, dim)``."""
    return x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))


def merge_heads(x: Array) -> Array:
    """``(batch, length, heads, dim) -> (batch, length, heads * dim)``."""
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def rms_normalize(x: Array, eps: float) -> Array:
    """``x / sqrt(mean(x^2) + eps)`` over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    """``x / sqrt(sum(x^2) + eps)`` over the last axis, in float32 (fla's ``l2norm``)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, 2019) over the last axis, optionally gated: the one RMSNorm of
    the mixers, and the official ``RMSNormGated`` (``mamba_ssm.ops.triton.layernorm_gated``).

        y = w * x / rms(x)                                   __call__(x)
        y = w * norm(x * silu(z))                            __call__(x, z)   (Mamba-2)
        y = w * norm(x) * silu(z)                            norm_before_gate (Hydra, DeltaNet)

    The RMS statistics per group of ``group_size`` channels (None: all of them), in float32;
    ``scale (d,)`` initialised to 1. Output in ``x``'s dtype.
    """

    eps: float = 1e-5
    group_size: int | None = None
    norm_before_gate: bool = False

    @nn.compact
    def __call__(self, x: Array, z: Array | None = None) -> Array:
        d = x.shape[-1]
        w = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        if z is None and (self.group_size or d) == d:  # backward keeps x only (ops.lean_grad)
            return rms_norm(x, w, self.eps)
        norm = _lean_rms_norm(self.eps, self.group_size or d, self.norm_before_gate)
        return norm((x, z), w).astype(x.dtype)


@functools.cache
def _lean_rms_norm(eps: float, size: int, norm_before_gate: bool):
    """``RMSNorm`` with groups or a gate as a ``lean_grad.blockwise`` function of the rows
    ``(x, z)``: its backward pass keeps x and z (autodiff would keep the gate, the product and
    the normalised values too)."""

    def fn(rows, w):
        x, z = rows
        h = x.astype(jnp.float32)
        gate = None if z is None else jax.nn.silu(z.astype(jnp.float32))
        if gate is not None and not norm_before_gate:
            h = h * gate
        h = rms_normalize(h.reshape(h.shape[:-1] + (h.shape[-1] // size, size)), eps)
        h = h.reshape(x.shape) * w
        if gate is not None and norm_before_gate:
            h = h * gate
        return h

    return blockwise(fn)


def dense(features: int, name: str, *, use_bias: bool = False, dtype: Any = None, **kw) -> nn.Dense:
    """A ``nn.Dense`` with float32 parameters and ``dtype`` compute."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name, **kw
    )


def resolve_head_dim(width: int, head_dim: int | None, option: str, default: int,
                     width_name: str) -> int:
    """The channels per head when ``width`` channels (named ``width_name``) split into heads:
    option ``option`` = ``head_dim`` when set, else the paper's ``default``, or ``width``
    itself (one head) when that is narrower, where the default would fit no head at all.

    Raises ValueError naming ``option`` and sizes that work unless it divides ``width``."""
    size = min(default, width) if head_dim is None else head_dim
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{option} must be a positive int, got {size!r}")
    if width % size:
        fits = [d for d in range(min(default, width), 0, -1) if width % d == 0][:3]
        given = "" if head_dim is not None else " (the default)"
        raise ValueError(
            f"{option}={size}{given} must divide {width_name} = {width}; set {option} to a "
            f"divisor of {width}, e.g. {' or '.join(map(str, fits))}"
        )
    return size
