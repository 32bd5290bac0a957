"""H3 (Fu et al., 2023, "Hungry Hungry Hippos"): shift SSM on keys, diagonal SSM on k v, times q.

Following the official ``HazyResearch/H3`` ``src/models/ssm/h3.py`` (x: (batch, length, d)):

    q, k, v = x W_q + b_q, x W_k + b_k, x W_v + b_v                       (d -> d each)
    k~ = shift_ssm(k) + D_k k            per channel: a causal FIR of length N (the shift SSM,
                                         state = shift register, kernel_l = sum_n B_n C_{n+l})
    per head h (H = d / head_dim heads, head_dim p; channel index h p + i):
    z_t = diag_ssm_h(k~_t v_t^T) + D_h k~_t v_t^T     (p x p, the S4D-Lin kernel, bilinear)
    o_t = q_t^T z_t                                   (p,)
    y = [o (ordered (p h) as the official 'b d h l -> b (d h) l')] W_o + b_o

Matrix view: values are v, heads H, head_dim p, and given q and k~ the layer is linear in v:

    M[h, i, j] = (sum_a q[i, h, a] k~[j, h, a]) (K_h[i - j] + D_h [i = j])   (j <= i)

i.e. linear attention with the SSM kernel's Toeplitz matrix as mask (for p = 1,
``diag(q) T_h diag(k~)``). It depends on x (data dependent) and is semiseparable.

Padding: k and v are zero at padded positions (q too), and so is k~ there, so a padded token
writes nothing into either SSM, in every path; both recurrent states still advance in ``step``
(the time index moves on, as in the convolutions), which is what the parallel paths compute.
Left or right padding gives the shorter sequence's outputs; a hole counts as a time step (for the
shift SSM and the diagonal SSM alike), by design.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs, zero_padded
from seqzoo.layers.catalog import register_mixer
from seqzoo.layers.common import dense
from seqzoo.layers.s4 import S4DKernel, check_ssm_options
from seqzoo.ops.conv import causal_conv, causal_toeplitz, fft_causal_conv
from seqzoo.ops.lean_grad import blockwise, size_budget

Array = jax.Array


def shift_init(key, shape, dtype=jnp.float32):
    """The shift SSM's B: e_0 in every channel (official ``SSKernel(mode='shift')``)."""
    del key
    return jnp.zeros(shape, dtype).at[..., 0].set(1.0)


def symmetric_uniform(bound: float):
    """U(-bound, bound): torch's Conv1d / Linear init, bound = 1 / sqrt(fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def shift_kernel(B: Array, C: Array) -> Array:
    """The shift SSM's kernel k_l = sum_n B_n C_{n+l}, l < N (official ``SSKernelShift``).

    B, C: (d, N) real. Returns (d, N): with B = e_0 the kernel is C itself.
    """
    n = B.shape[-1]
    c_pad = jnp.concatenate([C, jnp.zeros_like(C)], axis=-1)  # C_m = 0 for m >= N
    hankel = c_pad[:, np.arange(n)[:, None] + np.arange(n)[None, :]]  # (d, n, l): C_{n+l}
    return jnp.einsum("hn,hnl->hl", B, hankel, precision="highest")


def h3_mix(q: Array, k: Array, v: Array, kernel: Array, D: Array) -> Array:
    """The diagonal SSM on the outer products, read by q (plain autodiff):

        z_t = sum_{j <= t} K_h[t - j] k~_j v_j^T + D_h k~_t v_t^T,     o_t = q_t^T z_t

    q, k (= k~), v: ``(b, l, H, p)`` float32; kernel ``K: (H, l)``; D ``(H,)``. Returns
    ``o: (b, l, H, p)``; computed by FFT on the ``(b, H, p, p, l)`` outer products."""
    kv = k[..., :, None] * v[..., None, :]  # (b, l, H, p, p)
    kv_t = jnp.moveaxis(kv, 1, -1)  # (b, H, p, p, l)
    z = fft_causal_conv(kv_t, kernel[:, None, None, :]) + D[:, None, None, None] * kv_t
    return jnp.einsum("blha,blhac->blhc", q, jnp.moveaxis(z, -1, 1), precision="highest")


def _outer_spectrum_per_row(rows) -> int:  # the (H, p, p) outer products' 2l-point spectrum
    _, length, heads, p = rows[0].shape
    return 4 * length * heads * p * p


# ``h3_mix`` as a ``lean_grad.blockwise`` function of the batch rows, forwards and backwards:
# autodiff keeps the outer products and their spectrum (head_dim x, then 4 head_dim x, the
# input's size) for every layer; here they exist for one block of rows at a time and the backward
# pass keeps only q, k~, v, the kernel and D. Blocks are sized by bytes: one block's spectrum is
# at most q, k~ and v's size (so its transients stay a fraction of the layer's activations at
# any batch and length; with a fixed number of blocks, 16 rows of associative_recall_h3's
# (32, 8 heads, 8, 8) outer products were as large as the small model's activations).
_lean_h3_mix = blockwise(lambda rows, shared: h3_mix(*rows, *shared), forward=True,
                         row_elements=_outer_spectrum_per_row, block_elements=size_budget)


@register_mixer("h3", test_config={"d_state": 4, "head_dim": 2})
class H3(MatrixMixer):
    """The H3 layer.

    Attributes:
      d_state: N, the state size of both SSMs (the shift SSM's FIR length; default 64).
      head_dim: p; heads H = d_model / p (default 1: per-channel, the official default).
      ssm_init: the diagonal SSM's A init (``lin``: S4D-Lin, the official ``diag-lin``).
      disc: its discretisation (``bilinear``, the official H3 default; or ``zoh``).
      dt_min, dt_max: its log-uniform dt init range.

    Parameters: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (with bias); ``shift_B (d, N)``
    (e_0), ``shift_C (d, N)`` ~ U(+-1/sqrt(N)) (torch Conv1d init), ``shift_D (d,)`` ~ N(0, 1);
    ``kernel`` (an ``S4DKernel`` with H heads); ``D (H,)`` ~ N(0, 1).
    """

    d_state: int = 64
    head_dim: int = 1
    ssm_init: str = "lin"
    disc: str = "bilinear"
    dt_min: float = 1e-3
    dt_max: float = 0.1

    info: ClassVar[MixerInfo] = MixerInfo(
        causal=True,
        data_dependent=True,
        structure="semiseparable",
        cost="O(B L log L d head_dim + H N L)",
        paper="Fu et al. 2023, Hungry Hungry Hippos",
    )

    def setup(self):
        if not isinstance(self.head_dim, int) or self.head_dim < 1 or self.d_model % self.head_dim:
            raise ValueError(
                f"head_dim must be a positive int dividing d_model={self.d_model}, "
                f"got {self.head_dim!r}"
            )
        check_ssm_options(self.d_state, self.dt_min, self.dt_max)
        d, n = self.d_model, self.d_state
        self.heads = d // self.head_dim
        self.q_proj = dense(d, "q_proj", use_bias=True, dtype=self.dtype)
        self.k_proj = dense(d, "k_proj", use_bias=True, dtype=self.dtype)
        self.v_proj = dense(d, "v_proj", use_bias=True, dtype=self.dtype)
        self.out_proj = dense(d, "out_proj", use_bias=True, dtype=self.dtype)
        self.kernel = S4DKernel(
            H=self.heads,
            d_state=n,
            channels=1,
            ssm_init=self.ssm_init,
            disc=self.disc,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            name="kernel",
        )
        self.shift_B = self.param("shift_B", shift_init, (d, n), jnp.float32)
        self.shift_C = self.param("shift_C", symmetric_uniform(1 / np.sqrt(n)), (d, n), jnp.float32)
        self.shift_D = self.param("shift_D", jax.nn.initializers.normal(1.0), (d,), jnp.float32)
        self.D = self.param("D", jax.nn.initializers.normal(1.0), (self.heads,), jnp.float32)

    # ---- pieces -----------------------------------------------------------------------------
    def _heads(self, a: Array) -> Array:
        return a.reshape(a.shape[:-1] + (self.heads, self.head_dim))

    def _qkv(self, x: Array, mask: Array) -> tuple[Array, Array, Array]:
        """Projections in float32, zero at padded positions; (..., d) each."""
        m = mask[..., None]
        return tuple(
            jnp.where(m, proj(x).astype(jnp.float32), 0.0)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )

    def mixer_inputs(self, x, mask):
        q, k, v = self._qkv(x, mask)
        k_shift = causal_conv(k, shift_kernel(self.shift_B, self.shift_C), self.shift_D)
        k_shift = zero_padded(k_shift, mask)
        aux = {
            "q": self._heads(q),
            "k": self._heads(k_shift),
            "kernel": self.kernel(x.shape[1])[0],  # (H, L)
        }
        return MixerInputs(values=self._heads(v), mask=mask, aux=aux)

    def mix_fast(self, inputs):
        q, k, kernel = inputs.aux["q"], inputs.aux["k"], inputs.aux["kernel"]
        v = inputs.values.astype(jnp.float32)
        return _lean_h3_mix((q, k, v), (kernel, self.D))

    def mix_matrix(self, inputs):
        q, k, kernel = inputs.aux["q"], inputs.aux["k"], inputs.aux["kernel"]
        length = q.shape[1]
        t = causal_toeplitz(kernel, length) + self.D[:, None, None] * jnp.eye(length)
        qk = jnp.einsum("biha,bjha->bhij", q, k, precision="highest")
        return qk * t[None]

    def mixer_output(self, inputs, mixed):
        return self._output(mixed)

    def _output(self, o: Array) -> Array:
        """(..., H, p) -> (..., d): channels ordered (p h) as the official, then out_proj."""
        o = jnp.swapaxes(o, -1, -2)
        return self.out_proj(o.reshape(o.shape[:-2] + (self.d_model,)))

    # ---- recurrent path ---------------------------------------------------------------------
    def init_state(self, batch: int):
        shift = jnp.zeros((batch, self.d_model, self.d_state), jnp.float32)
        ssm = jnp.zeros(
            (batch, self.heads, self.head_dim, self.head_dim, self.d_state // 2), jnp.complex64
        )
        return shift, ssm

    def step_fn(self, state, x_t, mask_t):
        shift, ssm = state
        q, k, v = self._qkv(x_t, mask_t)
        # shift SSM: the register moves one step, then takes B k_t
        shift = jnp.concatenate([jnp.zeros_like(shift[..., :1]), shift[..., :-1]], axis=-1)
        shift = shift + self.shift_B * k[..., None]
        k_shift = jnp.einsum("hn,bhn->bh", self.shift_C, shift, precision="highest")
        k_shift = jnp.where(mask_t[:, None], k_shift + self.shift_D * k, 0.0)
        kv = self._heads(k_shift)[..., :, None] * self._heads(v)[..., None, :]  # (b, H, p, p)
        abar, bbar, C = self.kernel.discrete()  # (H, n), (H, n), (1, H, n)
        ssm = abar[:, None, None] * ssm + bbar[:, None, None] * kv[..., None]
        z = 2 * jnp.einsum("hn,bhacn->bhac", C[0], ssm, precision="highest").real
        z = z + self.D[:, None, None] * kv
        o = jnp.einsum("bha,bhac->bhc", self._heads(q), z, precision="highest")
        return (shift, ssm), self._output(o)
