"""Linear-attention mixers: Katharopoulos et al., Based, RetNet, GLA (and decay variants).

    q, k, v = x W_q, x W_k, x W_v            per head: q, k (L, dk), v (L, dv)
    S_t = exp(g_t) * S_{t-1} + phi(k_t) v_t^T
    o_t = scale * phi(q_t) S_t   [/ (phi(q_t) z_t + eps) when normalised]

The matrix of head ``h`` is ``M[i, j] = scale * sum_d phi(q_i)_d phi(k_j)_d exp(G_id - G_jd)`` for
``j <= i`` (G the cumulative log decay), divided by its row sums when ``normalize`` is set: a
semiseparable matrix (low rank ``dk`` below the diagonal; with a decay, a masked one).

The feature map runs inside the op (``seqzoo.ops.linear_attention.featured``): the layer passes q
and k, so Based's widened features are not kept for the backward pass but recomputed there.

Padding: ``phi(k)`` and ``v`` are zero and the decay is 1 (``g = 0``) at padded positions, so a
padded token neither writes to nor decays the state, in every path.

Dtypes (as fla's layers): the op takes ``phi(q)``, ``phi(k)`` and ``v`` in the projections'
compute dtype (bf16 in a bf16 model, so that ``impl="auto"`` can take the bf16 kernels; the feature
maps compute in f32), log decays in f32; the op accumulates in f32, and the normaliser's ratio
is taken in f32.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import RMSNorm, dense
from seqzoo.ops.dispatch import canonical
from seqzoo.ops.feature_maps import feature_size
from seqzoo.ops.linear_attention import linear_attention_step
from seqzoo.ops.linear_attention.featured import featured_linear_attention, features
from seqzoo.ops.segments import segment_runs

Array = jax.Array
DECAYS = (None, "retnet", "alibi", "simple_gla", "gla")


def retnet_log_decay(heads: int) -> Array:
    """RetNet's fixed per-head decay ``gamma_h = 1 - 2^(-5 - h)``, as ``log gamma: (heads,)``."""
    return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(heads, dtype=jnp.float32))))


def alibi_slopes(heads: int) -> Array:
    """ALiBi slopes (Press et al., 2022), used as decays ``exp(-slope)`` by Lightning Attention-2.

    For a power of two ``n``: ``2^(-8 i / n)``, i = 1..n; otherwise the slopes of the closest
    smaller power of two followed by every other slope of the next one, as the official code.
    """

    def power_of_two(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    p = 2 ** int(math.floor(math.log2(heads)))
    slopes = power_of_two(p)
    if p < heads:
        slopes += power_of_two(2 * p)[0::2][: heads - p]
    return jnp.asarray(slopes, jnp.float32)


def _info(paper: str, cost: str = "O(L C dk + L dk dv)") -> MixerInfo:
    """The metadata every linear-attention variant shares: causal, data dependent,
    semiseparable, sequence parallel; chunked cost with chunk ``C``."""
    return MixerInfo(
        causal=True,
        data_dependent=True,
        structure="semiseparable",
        cost=cost,
        paper=paper,
        segments=True,
        sequence_parallel=True,
    )


@register_mixer("linear_attention", test_config={"num_heads": 2, "chunk_size": 4})
class LinearAttention(MatrixMixer):
    """Causal (gated) linear attention; ``x: (batch, length, d_model)``.

    Attributes:
      num_heads: number of heads ``H``.
      key_dim: per-head ``dk`` before the feature map (default ``d_model // H``).
      value_dim: per-head ``dv`` (default ``d_model // H``).
      feature_map: ``identity | elu | relu | taylor`` (see ``seqzoo.ops.feature_maps``).
      normalize: divide by ``phi(q_t) z_t + eps``, ``z_t`` the (decayed) sum of ``phi(k)``.
      decay: None; ``retnet`` (fixed ``1 - 2^(-5-h)``); ``alibi`` (fixed ``exp(-slope_h)``,
        Lightning Attention-2); ``simple_gla`` (data dependent per head,
        ``logsigmoid(x w_h) / gate_logit_normalizer``); ``gla`` (data dependent per key dim through
        a rank-``gate_low_rank`` projection, Yang et al. 2024).
      output_gate: multiply by ``swish(x W_g)`` before the output projection (RetNet, GLA).
      head_norm: RMS-normalise each head's output (GLA; RetNet's group norm).
      chunk_size / impl / precision: passed to ``seqzoo.ops.linear_attention`` (precision: of
        the GPU kernel's float32 matmuls, ``"highest" | "tf32x3" | "tf32"``; None: the
        ``jax.default_matmul_precision`` context's, else "tf32x3").
    """

    num_heads: int = 4
    key_dim: int | None = None
    value_dim: int | None = None
    feature_map: str = "elu"
    normalize: bool = True
    decay: str | None = None
    output_gate: bool = False
    head_norm: bool = False
    gate_logit_normalizer: float = 16.0
    gate_low_rank: int = 16
    eps: float = 1e-6
    chunk_size: int = 64
    impl: str = "auto"
    precision: str | None = None

    info: ClassVar[MixerInfo] = _info("Katharopoulos et al. 2020, Transformers are RNNs")
    # Whether the features phi(q), phi(k) are kept for the backward pass (the mixer's inputs hold
    # them). Here not: the op computes them inside its lean region (featured_linear_attention),
    # and a widening map's features (Based's) are recomputed there, a block of rows at a time.
    keeps_features: ClassVar[bool] = False

    def setup(self):
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        self.op_impl = canonical("linear_attention", self.impl)
        if self.d_model % self.num_heads and (self.key_dim is None or self.value_dim is None):
            raise ValueError(
                f"num_heads={self.num_heads} must divide d_model={self.d_model} "
                "unless key_dim and value_dim are given"
            )
        h = self.num_heads
        self.dk = self.key_dim or self.d_model // h
        self.dv = self.value_dim or self.d_model // h
        self.df = feature_size(self.feature_map, self.dk)
        self.q_proj = dense(h * self.dk, "q_proj", dtype=self.dtype)
        self.k_proj = dense(h * self.dk, "k_proj", dtype=self.dtype)
        self.v_proj = dense(h * self.dv, "v_proj", dtype=self.dtype)
        self.o_proj = dense(self.d_model, "o_proj", dtype=self.dtype)
        if self.decay == "simple_gla":
            self.g_proj = dense(h, "g_proj", use_bias=True, dtype=self.dtype)
        elif self.decay == "gla":
            self.g_proj = nn.Sequential(
                [
                    dense(self.gate_low_rank, "g_proj_down", dtype=self.dtype),
                    dense(h * self.df, "g_proj_up", use_bias=True, dtype=self.dtype),
                ]
            )
        if self.output_gate:
            self.gate_proj = dense(h * self.dv, "gate_proj", dtype=self.dtype)
        if self.head_norm:
            self.norm = RMSNorm()

    # ---- pieces -----------------------------------------------------------------------------
    def _project(self, x: Array, mask: Array) -> dict[str, Array]:
        """q and k (before the feature map), values and log decays for ``x: (..., d_model)``,
        ``mask: x.shape[:-1]``."""
        h = self.num_heads

        def heads(a):
            return a.reshape(a.shape[:-1] + (h, a.shape[-1] // h))

        q, k = (heads(proj(x)) for proj in (self.q_proj, self.k_proj))
        out = {"q": q, "k": k, "v": heads(self.v_proj(x))}
        g = self._log_decay(x)
        if g is not None:
            m = mask[..., None] if g.ndim == mask.ndim + 1 else mask[..., None, None]
            out["g"] = jnp.where(m, g, 0.0)
        if self.output_gate:
            out["gate"] = self.gate_proj(x)
        return out

    def _features(self, q: Array, k: Array, mask: Array) -> tuple[Array, Array]:
        """``phi(q)``, ``phi(k)`` (zero where ``mask: q.shape[:-2]`` is False)."""
        return features(self.feature_map, q, k, mask)

    def _log_decay(self, x: Array) -> Array | None:
        lead = x.shape[:-1]
        if self.decay is None:
            return None
        if self.decay == "retnet":
            return jnp.broadcast_to(retnet_log_decay(self.num_heads), lead + (self.num_heads,))
        if self.decay == "alibi":
            return jnp.broadcast_to(-alibi_slopes(self.num_heads), lead + (self.num_heads,))
        logits = self.g_proj(x).astype(jnp.float32)
        if self.decay == "gla":
            logits = logits.reshape(lead + (self.num_heads, self.df))
        return jax.nn.log_sigmoid(logits) / self.gate_logit_normalizer

    def _values(self, v: Array) -> Array:
        """With ``normalize``, a column of ones rides along with ``v`` to carry ``phi(q) z``."""
        if not self.normalize:
            return v
        return jnp.concatenate([v, jnp.ones_like(v[..., :1])], -1)

    def _normalized(self, o: Array) -> Array:
        """``o`` over its last column ``phi(q) z`` (with ``normalize``), in f32."""
        if not self.normalize:
            return o
        o = o.astype(jnp.float32)
        return o[..., :-1] / (o[..., -1:] + self.eps)

    def mixer_inputs(self, x, mask, segment_ids=None):
        p = self._project(x, mask)
        v = zero_padded(p.pop("v"), mask)
        return MixerInputs(values=v, mask=mask, aux=p | {"segment_ids": segment_ids})

    def mix_fast(self, inputs):
        a = inputs.aux
        o = featured_linear_attention(
            a["q"],
            a["k"],
            self._values(inputs.values),
            inputs.mask,
            feature_map=self.feature_map,
            log_decay=a.get("g"),
            scale=self.dk**-0.5,
            chunk_size=self.chunk_size,
            segment_ids=a["segment_ids"],
            impl=self.op_impl,
            precision=self.precision,
        )
        return self._normalized(o)

    def mix_matrix(self, inputs):
        a = inputs.aux
        q, k = self._features(a["q"], a["k"], inputs.mask)
        length = q.shape[1]
        causal = jnp.tril(jnp.ones((length, length), bool))[None]
        if a["segment_ids"] is not None:  # no mixing across segments
            runs = segment_runs(a["segment_ids"])
            causal = causal & (runs[:, :, None] == runs[:, None, :])
        if "g" in a:
            g = a["g"] if a["g"].ndim == 4 else a["g"][..., None]
            cum = jnp.cumsum(g, axis=1)  # (b, l, h, d)
            diff = cum[:, :, None] - cum[:, None, :]  # (b, i, j, h, d)
            decay = jnp.exp(jnp.where(causal[..., None, None], diff, -jnp.inf))
            m = jnp.einsum("bihd,bjhd,bijhd->bhij", q, k, decay, precision="highest",
                           preferred_element_type=jnp.float32)
        else:
            m = jnp.einsum("bihd,bjhd->bhij", q, k, precision="highest",
                           preferred_element_type=jnp.float32) * causal[:, None]
        m = m * self.dk**-0.5
        if self.normalize:
            m = m / (jnp.sum(m, axis=-1, keepdims=True) + self.eps)
        return m

    def mixer_output(self, inputs, mixed):
        return self._output(mixed, inputs.aux.get("gate"))

    def _output(self, o: Array, gate: Array | None) -> Array:
        """``o: (..., heads, dv)`` -> ``(..., d_model)``: head norm, swish gate, projection."""
        if self.head_norm:
            o = self.norm(o)
        o = o.reshape(o.shape[:-2] + (-1,))
        if self.output_gate:
            o = o * jax.nn.swish(gate.astype(jnp.float32))
        return self.o_proj(o.astype(gate.dtype if gate is not None else jnp.float32))

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        dv = self.dv + int(self.normalize)
        return jnp.zeros((batch, self.num_heads, self.df, dv), jnp.float32)

    def step_fn(self, state, x_t, mask_t):
        p = self._project(x_t, mask_t)
        q, k = self._features(p["q"], p["k"], mask_t)
        v = jnp.where(mask_t[:, None, None], p["v"], 0.0)
        state, o = linear_attention_step(state, q, k, self._values(v), p.get("g"),
                                         scale=self.dk**-0.5)
        return state, self._output(self._normalized(o), p.get("gate"))


@register_mixer("based", test_config={"num_heads": 2, "key_dim": 4, "chunk_size": 4})
class Based(LinearAttention):
    """Based's linear attention (Arora et al., 2024): the 2nd-order Taylor feature map on
    ``key_dim``-sized (feature_dim 16 in the paper) projections of q and k, normalised."""

    key_dim: int | None = 16
    feature_map: str = "taylor"
    normalize: bool = True

    info: ClassVar[MixerInfo] = _info(
        "Arora et al. 2024, Simple linear attention language models (Based)",
        cost="O(L C f^2 + L f^2 dv)",
    )


@register_mixer("retnet", test_config={"num_heads": 2, "chunk_size": 4})
class RetNet(LinearAttention):
    """Retention (Sun et al., 2023): fixed per-head decay ``1 - 2^(-5-h)``, swish output gate and
    per-head normalisation; no feature map, no normaliser. (xPos rotation is left out.)"""

    feature_map: str = "identity"
    normalize: bool = False
    decay: str | None = "retnet"
    output_gate: bool = True
    head_norm: bool = True

    info: ClassVar[MixerInfo] = _info("Sun et al. 2023, Retentive Network")


@register_mixer("gla", test_config={"num_heads": 2, "chunk_size": 4, "gate_low_rank": 4})
class GLA(LinearAttention):
    """Gated linear attention (Yang et al., 2024): data-dependent per-key decay
    ``logsigmoid(x W_down W_up + b) / 16``, swish output gate, per-head RMSNorm."""

    feature_map: str = "identity"
    normalize: bool = False
    decay: str | None = "gla"
    output_gate: bool = True
    head_norm: bool = True

    info: ClassVar[MixerInfo] = _info("Yang et al. 2024, Gated Linear Attention Transformers")
