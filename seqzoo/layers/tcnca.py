"""TCNCA (Terzic et al., 2023, "TCNCA: Temporal Convolution Network with Chunked Attention for
Scalable Sequence Processing"): Mega's gated chunked attention with its EMA replaced by a TCN.

Mega's layer (``facebookresearch/mega`` ``MovingAverageGatedAttention``), on
``x: (batch, length, d)``, with the moving average ``EMA`` swapped for a dilated causal TCN:

    v  = silu(x W_v + b_v)                               (L, hdim)   the values
    mx = TCN(x)                                          (L, d)      [Mega: silu(EMA(x) + omega x)]
    u, zr, hx = split(mx W_mx + b_mx, [d, zdim + hdim, d])
    u = sigmoid(u);   z, r = split(silu(zr), [zdim, hdim])
    q = z (.) gamma_0 + beta_0,   k = z (.) gamma_1 + beta_1                 (zdim) shared z
    h  = P v,   P = causal softmax(q k^T / sqrt(zdim) + relative bias) within chunks of C
    H  = silu(hx + (h (.) r) W_h + b_h)
    y  = u (.) (H - x)

Mega's layer returns ``x + u (H - x)``; seqzoo's residual block adds ``x`` itself, so the mixer
returns the update ``u (H - x)`` (with pre-norm blocks Mega's residual is the un-normalised input
and the mixer's ``x`` the normalised one; the gate is otherwise the same).

The TCN (depth D, kernel K, dilation base f): ``h_0 = x`` and for block ``i = 0 .. D - 1``

    h_{i+1} = h_i + gelu(conv_i(h_i)),    conv_i a causal convolution of kernel K, dilation f^i

(``seqzoo.ops.conv.dilated``; depthwise by default, as the per-channel EMA it replaces), receptive
field ``1 + (K - 1)(f^D - 1)/(f - 1)`` positions, cost O(L D K d): no FFT, the point of the paper.
Neither official TCNCA code nor the paper's full text was available when this was written: from
its abstract, a dilated-convolution TCN replaces Mega's linear recurrence (O(L) instead of the FFT's
O(L log L)) and Mega's chunked attention stays. The block internals (residual, exact-erf GELU,
depthwise, no norm), exponential dilations f^i and the default (D, K, f) = (4, 4, 4) are seqzoo's
reading, to be checked against the paper. ``P`` is Mega's softmax chunked attention with
the ``simple`` relative positional bias (one learned scalar per offset, ``2 C - 1`` of them).

Matrix view: one head, values ``v`` (head_dim hdim), ``M = P``: block diagonal with causal softmax
blocks (data dependent, ``sparse``). Everything else (the TCN, gates, q, k) is computed from the
input position by position or causally and enters ``M`` or the output stage.

Chunks start at each row's first valid token: chunk ``c`` holds positions ``s + [c C, (c + 1) C)``
with ``s`` the row's first valid position (Mega and TCNCA cut the sequence from its first token
into chunks of C; their inputs are right padded, so there ``s = 0``). The parallel paths move each
row left by ``s``, run the chunked attention and move the result back.

Recurrent mode: per block, a buffer of its last ``(K - 1) f^i`` inputs; a cache of the current
chunk's keys and values (cleared when a chunk starts) and the position, counted from the first
valid token: until it comes, a padded token leaves the whole state as it was.

Padding: x is zero at padded positions and so is every TCN block's output there (a pad is a zero
at every level of the TCN, and the step pushes zeros into the buffers); padded keys are excluded
from the attention and ``v`` is zero there. Leading pads are therefore invisible: left or right
padding gives exactly the shorter sequence's outputs (the ``bi:tcnca`` backward copy reads right
padding as left padding). A hole, a pad between valid tokens, counts as a position (chunks,
relative offsets and dilations count it, and the TCN reads a zero there): it keeps the chunk grid
of the unpadded sequence, so it differs from removing that token.

Parameters (Mega init, ``init_std`` 0.02): ``v_proj``, ``mx_proj``, ``h_proj`` ~ N(0, std), biases
0; ``gamma (2, zdim)`` ~ N(0, std), ``beta (2, zdim)`` = 0; ``rel_pos_bias (2 C - 1,)`` ~ N(0,
std); TCN ``conv_i_kernel (K, d)`` and ``conv_i_bias (d,)`` ~ U(+-1/sqrt(fan_in)) (torch Conv1d).
Left out: Mega's dropouts, its non-causal (LRA) variant and the rotary / element attention options.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, keep_where, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense
from seqzoo.ops.attention.chunked import (
    chunked_attention_init_cache,
    chunked_attention_matrix,
    chunked_attention_step,
    chunked_causal_attention,
)
from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv import conv_buffer, dilated_causal_conv, dilated_conv_step

Array = jax.Array


def shift_rows(a: Array, shift: Array, axis: int = 1) -> Array:
    """``a: (batch, ...)`` moved along ``axis`` by ``shift: (batch,)`` int steps per row (negative:
    towards position 0), zeros (False) where nothing moves in: ``out[b, t] = a[b, t - shift[b]]``.
    """
    length = a.shape[axis]
    shape = [1] * a.ndim
    shape[0], shape[axis] = a.shape[0], length
    source = (jnp.arange(length)[None, :] - shift[:, None]).reshape(shape)
    inside = (source >= 0) & (source < length)
    moved = jnp.take_along_axis(a, jnp.clip(source, 0, length - 1), axis=axis)
    return jnp.where(inside, moved, jnp.zeros((), a.dtype))


def first_valid(mask: Array) -> Array:
    """The first valid position of each row of ``mask: (batch, length)``: ``(batch,)`` int32 (0
    for a row without any)."""
    return jnp.argmax(mask, axis=1).astype(jnp.int32)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@register_mixer(
    "tcnca",
    test_config={
        "zdim": 4,
        "hdim": 8,
        "chunk_size": 4,
        "tcn_depth": 2,
        "tcn_kernel_size": 3,
        "tcn_dilation": 2,
        "init_std": 0.3,
    },
)
class TCNCA(MatrixMixer):
    """TCNCA's layer; ``x: (batch, length, d_model)``, causal.

    Attributes:
      zdim: shared query/key width (Mega's ``z_dim``; default 128).
      hdim: value width (Mega's ``hidden_dim``; None: 2 d_model).
      chunk_size: attention chunk C (positive; Mega's -1, no chunking, is not offered).
      tcn_depth, tcn_kernel_size, tcn_dilation: D, K, f of the TCN (block i dilates by f^i).
      tcn_depthwise: per-channel convolutions (True) or full ``d -> d`` ones.
      init_std: std of Mega's normal init (0.02).
    """

    zdim: int = 128
    hdim: int | None = None
    chunk_size: int = 128
    tcn_depth: int = 4
    tcn_kernel_size: int = 4
    tcn_dilation: int = 4
    tcn_depthwise: bool = True
    init_std: float = 0.02

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="sparse",
        cost="O(L C (zdim + hdim) + L D K d)",
        paper="Terzic et al. 2023, TCNCA: Temporal Convolution Network with Chunked Attention",
    )

    def setup(self):
        for name in ("zdim", "chunk_size", "tcn_depth", "tcn_kernel_size", "tcn_dilation"):
            check_positive_int(getattr(self, name), name)
        if self.hdim is not None:
            check_positive_int(self.hdim, "hdim")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std!r}")
        d = self.d_model
        self.h_dim = self.hdim or 2 * d
        normal = nn.initializers.normal(self.init_std)

        def linear(width, name):
            return dense(width, name, use_bias=True, dtype=self.dtype, kernel_init=normal)

        self.v_proj = linear(self.h_dim, "v_proj")
        self.mx_proj = linear(2 * d + self.zdim + self.h_dim, "mx_proj")
        self.h_proj = linear(d, "h_proj")
        self.gamma = self.param("gamma", normal, (2, self.zdim), jnp.float32)
        self.beta = self.param("beta", nn.initializers.zeros, (2, self.zdim), jnp.float32)
        self.rel_pos_bias = self.param(
            "rel_pos_bias", normal, (2 * self.chunk_size - 1,), jnp.float32
        )
        k = self.tcn_kernel_size
        shape = (k, d) if self.tcn_depthwise else (k, d, d)
        bound = (k if self.tcn_depthwise else k * d) ** -0.5
        self.conv_kernels = [
            self.param(f"conv_{i}_kernel", _uniform(bound), shape, jnp.float32)
            for i in range(self.tcn_depth)
        ]
        self.conv_biases = [
            self.param(f"conv_{i}_bias", _uniform(bound), (d,), jnp.float32)
            for i in range(self.tcn_depth)
        ]

    def dilations(self) -> list[int]:
        return [self.tcn_dilation**i for i in range(self.tcn_depth)]

    # ---- pieces -----------------------------------------------------------------------------
    def _tcn(self, x: Array, mask: Array) -> Array:
        """The TCN on ``x: (b, L, d)``, every block's output zeroed at padded positions."""
        h = x.astype(jnp.float32)
        for w, b, f in zip(self.conv_kernels, self.conv_biases, self.dilations(), strict=True):
            h = zero_padded(
                h + jax.nn.gelu(dilated_causal_conv(h, w, b, dilation=f), approximate=False), mask
            )
        return h

    def _gates(self, mx: Array) -> dict[str, Array]:
        """From the TCN output ``mx: (..., d)``: u, r, hx and q, k (float32)."""
        d, z = self.d_model, self.zdim
        base = self.mx_proj(mx).astype(jnp.float32)
        u, zr, hx = jnp.split(base, [d, d + z + self.h_dim], axis=-1)
        zr = jax.nn.silu(zr)
        zz, r = zr[..., :z], zr[..., z:]
        q = zz * self.gamma[0] + self.beta[0]
        k = zz * self.gamma[1] + self.beta[1]
        return {"u": jax.nn.sigmoid(u), "r": r, "hx": hx, "q": q, "k": k}

    def mixer_inputs(self, x, mask):
        v = zero_padded(jax.nn.silu(self.v_proj(x).astype(jnp.float32)), mask)
        aux = self._gates(self._tcn(x, mask))
        aux["x"] = x.astype(jnp.float32)
        return MixerInputs(values=v[:, :, None, :], mask=mask, aux=aux)

    def _scale(self) -> float:
        return self.zdim**-0.5

    def _aligned(self, inputs: MixerInputs) -> tuple[Array, dict[str, Array]]:
        """Each row's first valid position ``s: (batch,)`` and q, k, v (values), mask moved left
        by ``s``, so that the op's chunks (from position 0) start at the first valid token."""
        start = first_valid(inputs.mask)
        a = inputs.aux
        parts = {"q": a["q"], "k": a["k"], "v": inputs.values[:, :, 0], "mask": inputs.mask}
        return start, {key: shift_rows(part, -start) for key, part in parts.items()}

    def mix_fast(self, inputs):
        start, a = self._aligned(inputs)
        o = chunked_causal_attention(
            a["q"],
            a["k"],
            a["v"],
            a["mask"],
            chunk_size=self.chunk_size,
            rel_bias=self.rel_pos_bias,
            scale=self._scale(),
        )
        return shift_rows(o, start)[:, :, None, :]

    def mix_matrix(self, inputs):
        start, a = self._aligned(inputs)
        p = chunked_attention_matrix(
            a["q"],
            a["k"],
            a["mask"],
            chunk_size=self.chunk_size,
            rel_bias=self.rel_pos_bias,
            scale=self._scale(),
        )
        return shift_rows(shift_rows(p, start, axis=1), start, axis=2)[:, None]

    def mixer_output(self, inputs, mixed):
        a = inputs.aux
        return self._output(mixed[:, :, 0], a, a["x"])

    def _output(self, h: Array, a: dict[str, Array], x: Array) -> Array:
        big_h = jax.nn.silu(a["hx"] + self.h_proj(h * a["r"]).astype(jnp.float32))
        return a["u"] * (big_h - x)

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        tcn = tuple(
            conv_buffer(batch, self.d_model, self.tcn_kernel_size, f) for f in self.dilations()
        )
        cache = chunked_attention_init_cache(batch, self.chunk_size, self.zdim, self.h_dim)
        return {"tcn": tcn, "attn": cache}

    def step_fn(self, state, x_t, mask_t):
        m = mask_t[:, None]
        h = x_t.astype(jnp.float32)  # zero at a padded token (base class)
        buffers = []
        for buf, w, b, f in zip(
            state["tcn"], self.conv_kernels, self.conv_biases, self.dilations(), strict=True
        ):
            buf, c = dilated_conv_step(buf, h, w, b, dilation=f)
            buffers.append(buf)
            h = jnp.where(m, h + jax.nn.gelu(c, approximate=False), 0.0)
        a = self._gates(h)
        v = jnp.where(m, jax.nn.silu(self.v_proj(x_t).astype(jnp.float32)), 0.0)
        cache, o = chunked_attention_step(
            state["attn"],
            a["q"],
            a["k"],
            v,
            mask_t,
            rel_bias=self.rel_pos_bias,
            scale=self._scale(),
        )
        y = self._output(o, a, x_t.astype(jnp.float32))
        # the chunk position counts from the first valid token: before it, the state is kept
        started = mask_t | (state["attn"]["t"] > 0)
        return keep_where(started, {"tcn": tuple(buffers), "attn": cache}, state), y
