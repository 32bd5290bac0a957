"""The Legendre Memory Unit's linear memory, stepped or as one convolution.

The LMU memory (Voelker et al., 2019) is the LTI system theta m'(t) = A m(t) + B u(t) whose
state holds the Legendre coefficients of the window u(t - theta .. t). Discretised with unit
step it is m_t = Abar m_{t-1} + Bbar u_t, so from m_{-1} = 0 it equals the causal convolution
m_t = sum_{j <= t} H_{t-j} u_j with the impulse response H_t = Abar^t Bbar, evaluated by FFT
("Parallelizing Legendre Memory Unit Training", Chilkuri & Eliasmith, 2021). Conventions as
``nengo/keras-lmu`` (``LMUCell._gen_AB``, ``_cont2discrete_zoh``, ``LMUFeedforward``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from seqzoo.ops.checks import check_positive_int
from seqzoo.ops.conv.fft import fft_causal_conv
from seqzoo.ops.s4.hippo import hippo

Array = jax.Array
DISCRETISATIONS = ("zoh", "euler")


def lmu_transition(order: int, theta: float | Array) -> tuple[Array, Array]:
    """Continuous (A, B) of the LMU with window theta (Voelker et al. 2019, eq. 2):

        A_ij = (2i + 1) / theta * (-1 if i < j else (-1)^(i-j+1)),  B_i = (2i + 1) (-1)^i / theta.

    order: state size (static int); theta: window length in steps (> 0; may be traced, e.g. a
    trainable theta). Returns A: (order, order), B: (order,) float32.
    """
    if isinstance(theta, int | float) and theta <= 0:
        raise ValueError(f"theta must be positive, got {theta!r}")
    a, b = hippo("lmu", order)
    inv_theta = 1 / jnp.asarray(theta, jnp.float32)
    return jnp.asarray(a, jnp.float32) * inv_theta, jnp.asarray(b, jnp.float32) * inv_theta


def lmu_discretize(A: Array, B: Array, *, method: str = "zoh") -> tuple[Array, Array]:
    """Unit-step discretisation (Abar, Bbar) of m' = A m + B u, as keras-lmu's ``discretizer``:

    - ``zoh``: exp([[A, B], [0, 0]]) = [[Abar, Bbar], [0, 1]], i.e. Abar = e^A,
      Bbar = int_0^1 e^{A s} ds B (scipy's ``cont2discrete(..., method="zoh", dt=1)``).
    - ``euler``: Abar = I + A, Bbar = B (keras-lmu advises theta > 4 order for this one).

    A: (order, order), B: (order,). Computed in float32; returns (order, order), (order,) in
    A's dtype.
    """
    if method not in DISCRETISATIONS:
        raise ValueError(f"method must be one of {DISCRETISATIONS}, got {method!r}")
    order = jnp.shape(A)[0] if jnp.ndim(A) == 2 else -1
    if jnp.shape(A) != (order, order):
        raise ValueError(f"A must be square (order, order), got shape {jnp.shape(A)}")
    if jnp.shape(B) != (order,):
        raise ValueError(f"B must be (order,)=({order},), got shape {jnp.shape(B)}")
    dtype = jnp.result_type(A)
    a32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
    if method == "euler":
        abar, bbar = jnp.eye(order, dtype=jnp.float32) + a32, b32
    else:
        augmented = jnp.zeros((order + 1, order + 1), jnp.float32)
        augmented = augmented.at[:order, :order].set(a32).at[:order, order].set(b32)
        exp_augmented = jsl.expm(augmented)
        abar, bbar = exp_augmented[:order, :order], exp_augmented[:order, order]
    return abar.astype(dtype), bbar.astype(dtype)


def lmu_impulse_response(Abar: Array, Bbar: Array, L: int) -> Array:
    """H_t = Abar^t Bbar for t = 0 .. L-1: the memory's response to a unit impulse at t = 0.

    Built by doubling, [H_{0..m-1}; Abar^m H_{0..m-1}], in ceil(log2 L) matrix products.
    Abar: (order, order), Bbar: (order,), L: static int. Returns H: (L, order) in Abar's dtype.
    """
    order = jnp.shape(Abar)[0] if jnp.ndim(Abar) == 2 else -1
    if jnp.shape(Abar) != (order, order):
        raise ValueError(f"Abar must be square (order, order), got shape {jnp.shape(Abar)}")
    if jnp.shape(Bbar) != (order,):
        raise ValueError(f"Bbar must be (order,)=({order},), got shape {jnp.shape(Bbar)}")
    check_positive_int(L, "L")
    power = jnp.asarray(Abar, jnp.float32)  # Abar^m, m = len(h)
    h = jnp.asarray(Bbar, jnp.float32)[None]
    while h.shape[0] < L:
        h = jnp.concatenate([h, h @ power.T], axis=0)
        power = power @ power
    return h[:L].astype(jnp.result_type(Abar))


def lmu_memory_parallel(u: Array, H: Array) -> Array:
    """m_t = sum_{j <= t} H_{t-j} u_j for every input dimension (Chilkuri & Eliasmith, eq. 6).

    Equals the recurrence m_t = Abar m_{t-1} + Bbar u_t from m_{-1} = 0 when H is
    ``lmu_impulse_response(Abar, Bbar, L)``; a shorter H truncates the response.

    u: (batch, length, memory_d); H: (k_len, order).
    Computed in float32 by FFT; returns m: (batch, length, memory_d, order) in u's dtype.
    """
    if jnp.ndim(u) != 3:
        raise ValueError(f"u must be (batch, length, memory_d), got shape {jnp.shape(u)}")
    if jnp.ndim(H) != 2 or jnp.shape(H)[0] < 1:
        raise ValueError(f"H must be (k_len, order), got shape {jnp.shape(H)}")
    u = jnp.asarray(u)
    u_t = jnp.moveaxis(u, 1, -1)[..., None, :]  # (batch, memory_d, 1, length)
    m = fft_causal_conv(u_t, jnp.transpose(H))  # (batch, memory_d, order, length)
    return jnp.moveaxis(m, -1, 1).astype(u.dtype)
