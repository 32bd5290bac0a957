"""The S4D convolution kernel of a diagonal SSM: a Vandermonde product (Gu et al., 2022b).

The state matrix A = diag(A_1 .. A_N) is stored as one of each conjugate pair (N/2 entries),
so the kernel of the real system is K_l = sum over both halves = 2 Re(sum_n C_n Bbar_n
Abar_n^l), as ``state-spaces/s4`` (``SSMKernelDiag.forward`` and ``models/s4/s4d.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqzoo.ops.checks import check_positive_int, check_stable

Array = jax.Array
DISCRETISATIONS = ("zoh", "bilinear")


def check_ssm_args(dt: Array, A: Array, B: Array, C: Array, L: int, a_name: str = "A") -> None:
    """Raise ValueError unless dt: (H,), A, B: (H, N/2), C: (channels, H, N/2) and L >= 1."""
    if jnp.ndim(dt) != 1:
        raise ValueError(f"dt must be (H,), got shape {jnp.shape(dt)}")
    h = jnp.shape(dt)[0]
    if jnp.ndim(A) != 2 or jnp.shape(A)[0] != h:
        raise ValueError(f"{a_name} must be (H, N/2) with H={h}, got shape {jnp.shape(A)}")
    if jnp.shape(B) != jnp.shape(A):
        raise ValueError(f"B must be (H, N/2)={jnp.shape(A)}, got shape {jnp.shape(B)}")
    if jnp.ndim(C) != 3 or jnp.shape(C)[1:] != jnp.shape(A):
        raise ValueError(
            f"C must be (channels, H, N/2) with (H, N/2)={jnp.shape(A)}, got shape {jnp.shape(C)}"
        )
    check_positive_int(L, "L")
    check_stable(a_name, A)


def kernel_dtype(dt: Array) -> jnp.dtype:
    """The dtype a kernel is returned in: dt's floating dtype (float32 for integer dt)."""
    dtype = jnp.result_type(dt)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def s4d_kernel(dt: Array, A: Array, B: Array, C: Array, L: int, *, disc: str = "zoh") -> Array:
    """K_l = 2 Re(sum_n C_n Bbar_n Abar_n^l), l = 0 .. L-1 (S4D paper, eq. 6-7).

    Discretisation with step dt (per channel h):
    - ``zoh``:      Abar = exp(dt A),                       Bbar = (exp(dt A) - 1) / A * B
    - ``bilinear``: Abar = (1 + dt A / 2) / (1 - dt A / 2), Bbar = dt / (1 - dt A / 2) * B

    dt: (H,) positive step sizes.
    A: (H, N/2) complex diagonal (one of each conjugate pair; Re A < 0).
    B: (H, N/2) complex.
    C: (channels, H, N/2) complex.
    L: kernel length (static int).

    Computed in complex64; returns K: (channels, H, L) in dt's dtype.
    """
    check_ssm_args(dt, A, B, C, L)
    if disc not in DISCRETISATIONS:
        raise ValueError(f"disc must be one of {DISCRETISATIONS}, got {disc!r}")
    out_dtype = kernel_dtype(dt)
    dt = jnp.asarray(dt, jnp.float32)[:, None]
    A, B, C = (jnp.asarray(x).astype(jnp.complex64) for x in (A, B, C))
    dtA = dt * A
    if disc == "zoh":
        log_abar = dtA
        bbar = jnp.expm1(dtA) / A * B
    else:
        log_abar = jnp.log((1 + dtA / 2) / (1 - dtA / 2))
        bbar = dt / (1 - dtA / 2) * B
    powers = jnp.exp(log_abar[..., None] * jnp.arange(L, dtype=jnp.float32))  # (H, N/2, L)
    k = jnp.einsum("chn,hnl->chl", C * bbar, powers)
    return (2 * k.real).astype(out_dtype)
