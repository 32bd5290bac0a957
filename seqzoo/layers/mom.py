"""Mixture-of-Memories (MoM; Du et al. 2025), as fla's ``fla/layers/mom.py`` with the
``gated_deltanet`` memory (the official ``MomConfig`` defaults: 4 memories, top-2, a shared one):

    p_t     = softmax(x_t W_r)                   router over E memories
    T_t     = top-k of p_t,  w_t^m = p_t^m / sum_{n in T_t} p_t^n   (m in T_t; 0 elsewhere)
    memory m reads only its own tokens {t : m in T_t}, in order (the shared memory: every token):
      q, k, v = silu(conv(x W_q)), silu(conv(x W_k^m)), silu(conv(x W_v^m))   conv over m's tokens
      q, k    = q / ||q||, k / ||k||;  b = sigmoid(x W_b^m);  a = exp(-exp(A_log) softplus(x W_a^m
                + dt_bias))
      S^m_t   = a_t (I - b_t k_t k_t^T) S^m_{t-1} + b_t k_t v_t^T,   o^m_t = S^m_t^T q_t / sqrt(dk)
      S^m_t   = S^m_{t-1} for a token not routed to m (its update is skipped, not decayed)
    o_t = sum_{m in T_t} w_t^m o^m_t  (+ o^shared_t)
    y   = RMSNorm(o_t) * silu(x_t W_g) per head, then W_o

``W_q``, the conv weights, ``A_log`` and ``dt_bias`` are shared by the memories; ``W_k, W_v,
W_b, W_a`` are each memory's own (``single_kv_proj=False``). Each memory's conv runs over the
tokens routed to it (its own buffer in ``step``), as fla's compacted sequences do.

Init as the official layer's ``_initialize_weights``: every projection (router included) Xavier
uniform with gain ``2^-2.5``, no biases; convs torch's ``Conv1d`` default; ``A_log = log U(0,
16)``, ``dt_bias`` Mamba-2's; norm weights 1.

Matrix view: memory ``m`` is a Gated DeltaNet head on the tokens routed to it, ``M^m[i, j] =
w_i^m q_i^T A_i ... A_{j+1} b_j k_j / sqrt(dk)`` (products over tokens routed to ``m``), with
its own values ``v^m``. The mixer stacks the memories as heads: values ``(batch, length, (E +
shared) H, dv)``, ``M: (batch, (E + shared) H, length, length)``; the output stage sums them.

Packed sequences (the fast path, as fla's varlen MoM): per batch row, a stable sort of the
(memory, token) assignments by memory (``packing``) lays each memory's routed tokens one memory
after another in one sequence of static length ``(topk + shared) L``, with a segment per memory
(and per ``segment_ids`` run), so the conv and the delta rule restart at each; the outputs go
back in place (``inverse``) and are weighed by the router.

Cost: the conv and the delta rule run on ``(topk + 1) L`` positions a row (fla's ``transform``:
each memory's tokens as a sequence of about ``topk L / E``, plus the shared memory's ``L``: as
many positions), not ``E + 1`` sequences of ``L``; the per-memory maps are one batched matmul
of every token through every memory (``(E + 1) L`` rows of ``x W^m``, a transient: only the
packed rows are kept). The training step keeps ``topk + 1`` copies of the conv's and the delta
rule's inputs a token, which ``seqzoo.runner.memory.routed_widths`` counts: mqar_mom (64 x 64
x 64, 2 layers) compiles to 0.09 GiB, 1.7x its activation estimate (0.22 GiB, 9.2x, when every
memory ran over every token).

Padding: a pad is routed nowhere (no memory reads it, the shared one included); left, right
padding and holes give the outputs of the sequence without the pads. With ``segment_ids`` a
memory's conv and state reset where its tokens' segment changes.

Left out: the load-balancing auxiliary loss (``aux_loss_scale``; a training loss, not part of
the mixer's output), ``capacity`` (fla does not drop tokens either) and ``single_kv_proj``.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MixerInfo, MixerInputs
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import RMSNorm, dense, l2_normalize, split_heads
from seqzoo.layers.ssm import (
    DeltaRuleMixer,
    compiled_delta_rule,
    conv_params,
    conv_stage,
    step_size,
)
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import conv_init_buffer, conv_step
from seqzoo.ops.delta_rule import delta_rule_matrix, delta_rule_step
from seqzoo.ops.segments import segment_runs

Array = jax.Array
_F32 = jnp.float32
XAVIER_GAIN = 2.0**-2.5  # fla's MomAttention._initialize_weights


def xavier_uniform(gain: float = XAVIER_GAIN, batch_axis: tuple[int, ...] = ()):
    """torch's ``xavier_uniform_``: ``U(+-gain sqrt(6 / (fan_in + fan_out)))`` on ``(..., in,
    out)`` kernels, one independent matrix per ``batch_axis`` entry."""
    return nn.initializers.variance_scaling(
        gain**2, "fan_avg", "uniform", in_axis=-2, out_axis=-1, batch_axis=batch_axis
    )


def route(logits: Array, mask: Array, topk: int) -> tuple[Array, Array]:
    """Top-k routing: ``logits: (..., E)``, ``mask: (...)`` -> ``(routed (..., E) bool,
    weights (..., E) f32)``, the softmax probabilities of the ``topk`` best memories renormalised
    to sum to 1 (0 elsewhere and at pads)."""
    probs = jax.nn.softmax(logits.astype(_F32), axis=-1)
    top, index = jax.lax.top_k(probs, topk)
    top = top / jnp.sum(top, axis=-1, keepdims=True)
    one_hot = jax.nn.one_hot(index, logits.shape[-1], dtype=_F32)  # (..., topk, E)
    weights = jnp.einsum("...k,...ke->...e", top, one_hot) * mask[..., None]
    routed = (jnp.sum(one_hot, axis=-2) > 0) & mask[..., None]
    return routed, weights


def packing(routed: Array, copies: int) -> tuple[Array, Array]:
    """Every memory's tokens one memory after another, per batch row: ``routed: (b, n, L)``
    bool, at most ``copies`` memories a token -> ``(order, inverse)``. ``order: (b, copies L)``
    lists the packed sequence's (memory, token) entries as flat indices ``m L + t``: memory 0's
    tokens in order, then memory 1's, ..., then unrouted entries (padding, never read).
    ``inverse: (b, n L)`` is each entry's place in it, ``copies L`` (none) where not routed."""
    flat = routed.reshape(routed.shape[0], -1)
    size = copies * routed.shape[-1]
    order = jnp.argsort(~flat, axis=-1, stable=True)
    inverse = jnp.where(flat, jnp.argsort(order, axis=-1), size)
    return order[:, :size], inverse


def take_rows(a: Array, index: Array) -> Array:
    """``a: (b, n, ...)`` at ``index: (b, m)`` along axis 1 -> ``(b, m, ...)``; 0 where
    ``index >= n``."""
    index = index.reshape(index.shape + (1,) * (a.ndim - 2))
    return jnp.take_along_axis(a, index, axis=1, mode="fill", fill_value=0)


@register_mixer(
    "mom",
    test_config={"num_heads": 2, "head_dim": 4, "num_memories": 3, "topk": 2, "chunk_size": 4},
)
class MoM(DeltaRuleMixer):
    """Mixture-of-Memories mixer; ``x: (batch, length, d_model)`` (module docstring).

    Attributes:
      num_heads: heads ``H`` (4). head_dim: key width ``dk`` (None: ``expand_k d_model / H``).
      expand_k: ``H dk / d_model`` when ``head_dim`` is None (0.5: fla's 4 x 256 at 2048).
      expand_v: value width over ``dk`` (1, ``MomConfig``'s).
      num_memories: routed memories ``E`` (4). topk: memories per token (2). With ``topk``
        1 the router gets no gradient (the renormalised weight of the one chosen memory is 1,
        whatever the logits, up to rounding; the official layer does the same): it stays at
        its init.
      shared_mem: a memory every token writes to and reads from, weight 1 (True).
      use_gate: output gate ``silu(x W_g)`` after the per-head RMSNorm (True).
      conv_size (4), conv_bias (False), norm_eps (1e-5), A_init_range ((0, 16)), dt_min,
      dt_max, dt_init_floor: as ``GatedDeltaNet``'s. chunk_size / impl: ``seqzoo.ops.delta_rule``.
    """

    expand_k: float = 0.5
    num_memories: int = 4
    topk: int = 2
    shared_mem: bool = True
    use_gate: bool = True

    MEMORY_MAPS: ClassVar[tuple[str, ...]] = ("k_proj", "v_proj", "b_proj", "a_proj")  # W^m

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="semiseparable",
        cost="O((topk + 1) L (C^2 + C dk + dk dv))",
        paper="Du et al. 2025, MoM: Linear Sequence Modeling with Mixture-of-Memories",
        segments=True,
    )

    def setup(self):
        for name in ("num_memories", "topk"):
            check_positive_int(getattr(self, name), name)
        if self.topk > self.num_memories:
            raise ValueError(f"topk={self.topk} exceeds num_memories={self.num_memories}")
        self.delta_setup(gated=True)
        h = self.num_heads
        self.slots = self.num_memories + int(self.shared_mem)

        def proj(features, name):
            return dense(features, name, dtype=self.dtype, kernel_init=xavier_uniform())

        def per_memory(features, name):  # (slots, d_model, features): memory m's W^m
            return self.param(name, xavier_uniform(batch_axis=(0,)),
                              (self.slots, self.d_model, features), _F32)

        self.router = proj(self.num_memories, "router")
        self.q_proj = proj(h * self.dk, "q_proj")
        widths = (h * self.dk, h * self.dv, h, h)
        self.k_proj, self.v_proj, self.b_proj, self.a_proj = (
            per_memory(w, name) for w, name in zip(widths, self.MEMORY_MAPS, strict=True))
        self.conv_kernel, self.conv_bias_param = conv_params(
            self, self.conv_size, h * (2 * self.dk + self.dv), self.conv_bias
        )
        self.A_log, self.dt_bias = self.decay_params()
        if self.use_gate:
            self.g_proj = proj(h * self.dv, "g_proj")
        self.o_norm = RMSNorm(eps=self.norm_eps, norm_before_gate=True)
        self.o_proj = proj(self.d_model, "o_proj")

    # ---- pieces (a memory axis ``slots`` for the per-memory quantities) -----------------------
    def _route(self, x: Array, mask: Array) -> tuple[Array, Array]:
        """``(routed, weights)``, each ``(slots, ...)`` (the shared memory last: every token,
        weight 1)."""
        routed, weights = route(self.router(x), mask, self.topk)
        if self.shared_mem:
            routed = jnp.concatenate([routed, mask[..., None]], axis=-1)
            weights = jnp.concatenate([weights, mask[..., None].astype(_F32)], axis=-1)
        return jnp.moveaxis(routed, -1, 0), jnp.moveaxis(weights, -1, 0)

    def _memory_projections(self, x: Array) -> tuple[Array, Array]:
        """``x: (b, ..., d_model)`` -> each memory's ``x [W_k^m, W_v^m]: (b, slots, ..., H (dk
        + dv))`` and ``x [W_b^m, W_a^m]: (b, slots, ..., 2 H)`` (one batched matmul over the
        memories: every token through every memory's maps, so no per-memory weight is
        gathered; a transient, only the packed rows are kept)."""
        dtype = self.dtype or jnp.result_type(x.dtype, _F32)  # as ``nn.Dense``'s

        def mm(w):
            return jnp.einsum("b...d,ndf->bn...f", x.astype(dtype), w.astype(dtype))

        return (jnp.concatenate([mm(self.k_proj), mm(self.v_proj)], axis=-1),
                jnp.concatenate([mm(self.b_proj), mm(self.a_proj)], axis=-1))

    def _heads(self, qkv: Array, ba: Array, mask: Array) -> dict[str, Array]:
        """Conv output and gate inputs -> L2-normalised q, k, values, ``beta`` and ``log_decay``
        (both 0 where ``mask`` is False: a no-op for the state)."""
        h, key_width = self.num_heads, self.num_heads * self.dk
        q, k, v = jnp.split(qkv, [key_width, 2 * key_width], axis=-1)
        b, a = jnp.split(ba, 2, axis=-1)
        return {
            "q": l2_normalize(split_heads(q, h)).astype(qkv.dtype),  # bf16 layer: bf16 operands
            "k": l2_normalize(split_heads(k, h)).astype(qkv.dtype),
            "v": split_heads(v, h),
            "beta": jnp.where(mask[..., None], jax.nn.sigmoid(b.astype(_F32)), 0.0),
            "log_decay": -jnp.exp(self.A_log) * step_size(a, self.dt_bias, mask),
        }

    def mixer_inputs(self, x, mask, segment_ids=None):
        """The packed sequences: per batch row, each memory's routed tokens (the shared
        memory's: every valid token) one memory after another, ``(batch, (topk + shared) L,
        ...)``, with a segment per memory (per memory and ``segment_ids`` run) so that the conv
        and the delta rule restart at each."""
        routed, weights = (jnp.moveaxis(a, 0, 1) for a in self._route(x, mask))  # (b, n, l)
        b, n, length = routed.shape
        order, inverse = packing(routed, self.topk + int(self.shared_mem))
        token, valid = order % length, take_rows(routed.reshape(b, -1), order)
        segments = order // length  # each memory its own segment (runs: t's within it)
        if segment_ids is not None:
            segments = segments * length + take_rows(segment_runs(segment_ids), token)
        kv, ba = (take_rows(a.reshape((b, n * length, -1)), order)
                  for a in self._memory_projections(x))
        qkv = jnp.concatenate([take_rows(self.q_proj(x), token), kv], axis=-1)
        qkv = conv_stage(qkv, valid, self.conv_kernel, self.conv_bias_param, segments,
                         left=self.conv_size - 1)
        heads = self._heads(qkv, ba, valid)
        aux = heads | {"segments": segments, "inverse": inverse, "weights": weights}
        if self.use_gate:
            aux["gate"] = split_heads(self.g_proj(x), self.num_heads)
        values = self._unpack(heads["v"], inverse)  # in place, 0 where not routed
        return MixerInputs(values=values, mask=mask, aux=aux)

    def _unpack(self, packed: Array, inverse: Array, weights: Array | None = None) -> Array:
        """Packed ``(b, P, H, dv)`` -> in place, the memories as heads ``(b, l, n H, dv)`` (0
        where a memory has not the token), times ``weights: (b, n, l)`` if given."""
        b, n, length = inverse.shape[0], self.slots, inverse.shape[1] // self.slots
        a = take_rows(packed, inverse).reshape((b, n, length) + packed.shape[2:])
        if weights is not None:
            a = a * weights[..., None, None]
        h, dv = packed.shape[2:]
        return jnp.moveaxis(a, 1, 2).reshape(b, length, n * h, dv)

    def mix_fast(self, inputs):
        a = inputs.aux
        o = compiled_delta_rule(
            a["q"], a["k"], a["v"], a["beta"], a["log_decay"], scale=self.dk**-0.5,
            segment_ids=a["segments"], chunk_size=self.chunk_size, impl=self.impl,
        )
        return self._unpack(o, a["inverse"], a["weights"])

    def mix_matrix(self, inputs):
        a = inputs.aux
        m = delta_rule_matrix(
            a["q"], a["k"], a["beta"], a["log_decay"], scale=self.dk**-0.5,
            segment_ids=a["segments"],
        )  # (b, H, P, P) on the packed sequences
        b, n, length = a["weights"].shape
        inv = a["inverse"].reshape(b, n, 1, length)  # each memory's rows and columns, in place
        m = jnp.take_along_axis(m[:, None], inv[..., None], axis=3, mode="fill", fill_value=0)
        m = jnp.take_along_axis(m, inv[..., None, :], axis=4, mode="fill", fill_value=0)
        m = m * a["weights"][:, :, None, :, None]
        return m.reshape(b, n * self.num_heads, length, length)

    def mixer_output(self, inputs, mixed):
        b, length, _, dv = mixed.shape
        o = mixed.reshape(b, length, self.slots, self.num_heads, dv).sum(axis=2)
        return self._output(o, inputs.aux.get("gate"))

    # ---- recurrent path: every memory's conv buffer and state, ``(batch, slots, ...)`` ----------
    def init_state(self, batch: int):
        channels = self.num_heads * (2 * self.dk + self.dv)
        conv = conv_init_buffer(batch * self.slots, channels, self.conv_size)
        return {
            "conv": conv.reshape((batch, self.slots) + conv.shape[1:]),
            "S": jnp.zeros((batch, self.slots, self.num_heads, self.dk, self.dv), _F32),
        }

    def step_fn(self, state, x_t, mask_t):
        routed, weights = (a.T for a in self._route(x_t, mask_t))  # (b, n)
        b, n = routed.shape

        def flat(a):  # (b, n, ...) -> (b n, ...)
            return a.reshape((b * n,) + a.shape[2:])

        kv, ba = (flat(a) for a in self._memory_projections(x_t))
        q = jnp.repeat(self.q_proj(x_t), n, axis=0)
        qkv = jnp.concatenate([q, kv], axis=-1)
        used = flat(routed)
        qkv = jnp.where(used[:, None], qkv, jnp.zeros((), qkv.dtype))
        conv, qkv = conv_step(flat(state["conv"]), qkv, self.conv_kernel, self.conv_bias_param)
        heads = self._heads(jax.nn.silu(qkv), ba, used)  # b = 0, a = 1 where not routed
        s, o = delta_rule_step(flat(state["S"]), heads["q"], heads["k"], heads["v"],
                               heads["beta"], heads["log_decay"], scale=self.dk**-0.5)
        new = {  # a memory the token is not routed to keeps its buffer and state
            "conv": jnp.where(routed[..., None, None], conv.reshape(state["conv"].shape),
                              state["conv"]),
            "S": jnp.where(routed[..., None, None, None], s.reshape(state["S"].shape),
                           state["S"]),
        }
        o = (o.reshape((b, n) + o.shape[1:]) * weights[..., None, None]).sum(axis=1)
        gate = split_heads(self.g_proj(x_t), self.num_heads) if self.use_gate else None
        return new, self._output(o, gate)
