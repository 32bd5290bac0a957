"""The S4 convolution kernel of a DPLR SSM: Cauchy kernel + Woodbury at the roots of unity.

The state matrix A = diag(Lambda) - P P^* (S4 paper, Thm. 1) is stored as one of each
conjugate pair (N/2 entries; the full system is [x, conj x], see ``hippo.nplr``). With the
bilinear discretisation, the truncated generating function of the kernel is evaluated at the
L-th roots of unity with a Cauchy product and an inverse FFT gives the kernel (S4 paper,
Algorithm 1; ``state-spaces/s4`` ``SSMKernelDPLR.forward``). That generating function
carries the factor (I - Abar^L), which is folded once into C: the parameter is
C~ = C (I - Abar^L) (``s4_dplr_c_tilde``, s4's ``_setup_C``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqzoo.ops.s4.s4d import check_ssm_args, kernel_dtype

Array = jax.Array


def conj_pairs(x: Array) -> Array:
    """[x, conj x] along the last axis: (..., N/2) -> (..., N), the full conjugate system."""
    return jnp.concatenate([x, jnp.conj(x)], axis=-1)


def cauchy(v: Array, z: Array, w: Array) -> Array:
    """y_l = sum_n v_n / (z_l - w_n): the Cauchy matrix-vector product (S4 paper, Sec. 3.3).

    v: (..., N), w: (..., N) poles, z: (..., F) nodes; leading axes broadcast.
    Naive broadcast sum, O(N F) memory. Returns (..., F) complex64.
    """
    v, z, w = (jnp.asarray(x).astype(jnp.complex64) for x in (v, z, w))
    if v.shape[-1] != w.shape[-1]:
        raise ValueError(f"v and w must share the last axis N, got {v.shape} and {w.shape}")
    return jnp.sum(v[..., :, None] / (z[..., None, :] - w[..., :, None]), axis=-2)


def _bilinear_nodes(L: int) -> tuple[Array, Array]:
    """omega_k = exp(-2 pi i k / L), k = 0 .. L//2, and z_k = 2 (1 - omega_k) / (1 + omega_k).

    Built in float64 so that at omega = -1 (even L) 1 + omega is a tiny nonzero number rather
    than 0; both z and 2 / (1 + omega) then stay finite and their product stays exact.
    """
    omega = np.exp(-2j * np.pi * np.arange(L // 2 + 1) / L)
    z = 2 * (1 - omega) / (1 + omega)
    return jnp.asarray(omega, jnp.complex64), jnp.asarray(z, jnp.complex64)


def _check_p(P: Array, lam: Array) -> None:
    if jnp.ndim(P) != 3 or jnp.shape(P)[1:] != jnp.shape(lam):
        expected = jnp.shape(lam)
        raise ValueError(f"P must be (rank, H, N/2) with (H, N/2)={expected}, got {jnp.shape(P)}")


def s4_dplr_kernel(dt: Array, Lambda: Array, P: Array, B: Array, C: Array, L: int) -> Array:
    """K_l = C^T Abar^l Bbar, l < L, of A = diag(Lambda) - P P^*, from C~ (S4 Algorithm 1).

    With z = 2 (1 - omega) / (1 + omega) and the diagonal R = (z / dt - Lambda)^{-1}:

        Khat(omega) = 2 / (1 + omega) [C~^T R B - C~^T R P (1 + P^* R P)^{-1} P^* R B]

    summed over the full conjugate system, at omega_k = exp(-2 pi i k / L), k = 0 .. L//2;
    then K = irfft(Khat, L).
    Bbar = (I - dt/2 A)^{-1} dt B, Abar = (I - dt/2 A)^{-1} (I + dt/2 A) (bilinear).

    dt: (H,) positive step sizes.
    Lambda: (H, N/2) complex diagonal (Re < 0), P: (rank, H, N/2), B: (H, N/2) complex.
    C: (channels, H, N/2) complex: this is C~ = C (I - Abar^L) for the kernel of C
       (see ``s4_dplr_c_tilde``).
    L: kernel length (static int); the same L must be used for C~.

    Computed in complex64 with O(channels H N L) memory; returns K: (channels, H, L) in
    dt's dtype. The nodes z lie on the imaginary axis, so poles dt Lambda with Re ~ 0 (raw
    LegT / FouT inits) make the Woodbury form ill-conditioned in float32: keep -Re Lambda away
    from 0 (the official parameterisation clamps it at >= 1e-4).
    """
    check_ssm_args(dt, Lambda, B, C, L, a_name="Lambda")
    _check_p(P, Lambda)
    out_dtype = kernel_dtype(dt)
    dt = jnp.asarray(dt, jnp.float32)[:, None]
    lam, P, B, C = (jnp.asarray(x).astype(jnp.complex64) for x in (Lambda, P, B, C))
    channels, rank = C.shape[0], P.shape[0]
    omega, z = _bilinear_nodes(L)

    left = jnp.concatenate([B[None], P], axis=0)  # (1 + rank, H, N/2): B, P_i
    right = jnp.concatenate([C, jnp.conj(P)], axis=0)  # (channels + rank, H, N/2): C, P_j^*
    v = left[:, None] * right[None] * dt  # (1 + rank, channels + rank, H, N/2)
    r = cauchy(conj_pairs(v), z, conj_pairs(dt * lam))  # (1 + rank, channels + rank, H, F)

    c_r_b, q_r_b = r[0, :channels], r[0, channels:]  # (channels, H, F), (rank, H, F)
    c_r_p, q_r_p = r[1:, :channels], r[1:, channels:]  # (rank_i, channels, H, F), (i, j, H, F)
    # Woodbury: x = (I + Q^T R P)^{-1} Q^T R B, with (I + Q^T R P)_{ji} = delta_ji + q_r_p[i, j].
    system = jnp.eye(rank, dtype=jnp.complex64) + jnp.einsum("ijhf->hfji", q_r_p)
    x = jnp.linalg.solve(system, jnp.einsum("jhf->hfj", q_r_b)[..., None])[..., 0]  # (H, F, i)
    k_hat = (c_r_b - jnp.einsum("ichf,hfi->chf", c_r_p, x)) * (2 / (1 + omega))
    return jnp.fft.irfft(k_hat, n=L, axis=-1).astype(out_dtype)


def _dense_bilinear_transition(dt: Array, Lambda: Array, P: Array) -> Array:
    """Abar = (I - dt/2 A)^{-1} (I + dt/2 A), A = diag(Lambda_f) - P_f P_f^*: (H, N, N)."""
    lam_full, p_full = conj_pairs(Lambda), conj_pairs(P)  # (H, N), (rank, H, N)
    a = jax.vmap(jnp.diag)(lam_full) - jnp.einsum("rhn,rhm->hnm", p_full, jnp.conj(p_full))
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    half_step = (dt[:, None, None] / 2) * a
    return jnp.linalg.solve(eye - half_step, eye + half_step)


def s4_dplr_c_tilde(dt: Array, Lambda: Array, P: Array, C: Array, L: int) -> Array:
    """C~ = C (I - Abar^L) (row-vector C; S4 paper, Algorithm 1 / Lemma C.2).

    Applied once to the C parameter (as s4's ``_setup_C``), after which ``s4_dplr_kernel`` with
    C~ returns the kernel K_l = C^T Abar^l Bbar. Dense: O(H N^3 log L).

    dt: (H,), Lambda: (H, N/2), P: (rank, H, N/2), C: (channels, H, N/2) complex; L static int.
    Returns C~: (channels, H, N/2) complex64.
    """
    check_ssm_args(dt, Lambda, Lambda, C, L, a_name="Lambda")
    _check_p(P, Lambda)
    dt = jnp.asarray(dt, jnp.float32)
    lam, P, C = (jnp.asarray(x).astype(jnp.complex64) for x in (Lambda, P, C))
    abar_power = jnp.linalg.matrix_power(_dense_bilinear_transition(dt, lam, P), L)
    c_full = conj_pairs(C)
    c_tilde = c_full - jnp.einsum("chn,hnm->chm", c_full, abar_power)
    return c_tilde[..., : C.shape[-1]]
