"""HiPPO state matrices, their normal-plus-low-rank (NPLR) form, and the S4D diagonal inits.

HiPPO (Gu et al., 2020) defines the continuous-time memory x'(t) = A x(t) + B u(t) whose state
holds the coefficients of u's projection onto a basis (Legendre, Fourier) under a measure.
S4 (Gu et al., 2022, Thm. 1) writes every HiPPO matrix as A = V (Lambda - P P^*) V^* with V
unitary, and S4D (Gu et al., 2022b) keeps only a diagonal.

These are init-time constants, built in numpy float64 as ``state-spaces/s4``
(``src/models/hippo/hippo.py: transition, rank_correction, nplr`` and
``src/models/sequence/kernels/dplr.py: dplr``).
"""

from __future__ import annotations

import numpy as np

MEASURES = ("legs", "legt", "lmu", "fourier")
NPLR_MEASURES = ("legs", "legt", "fourier")
S4D_KINDS = ("lin", "inv", "real", "legs")
# The fewest rank-one terms that make A + P P^T normal, per measure.
_MIN_RANK = {"legs": 1, "legt": 2, "fourier": 1}


def _check_n(n: int, *, even: bool) -> None:
    if not isinstance(n, int | np.integer) or n < 1 or (even and n % 2):
        kind = "a positive even int" if even else "a positive int"
        raise ValueError(f"n must be {kind}, got {n!r}")


def _fourier_b(n: int) -> np.ndarray:
    """B_0 = 1, B_{2k} = sqrt 2 (k >= 1), B_{2k+1} = 0: the cosines' values at the window end."""
    b = np.zeros(n)
    b[0::2] = np.sqrt(2.0)
    b[0] = 1.0
    return b


def hippo(measure: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The HiPPO transition (A, B) of x' = A x + B u, as s4's ``transition(measure, n)``.

    With r_n = sqrt(2n + 1) and row n, column k:

    - ``legs`` (scaled Legendre, S4 eq. 2): A_nk = -r_n r_k (n > k), -(n + 1) (n = k), 0 (n < k);
      B_n = r_n.
    - ``legt`` (translated Legendre, window theta = 2, i.e. s4's halved LegT):
      A_nk = -1/2 r_n r_k (1 if n >= k else (-1)^(n-k)); B_n = r_n / 2.
    - ``lmu`` (LegT in the normalisation of Voelker et al. 2019, theta = 1):
      A_nk = (2n + 1) (-1 if n < k else (-1)^(n-k+1)); B_n = (2n + 1) (-1)^n.
    - ``fourier`` (FouT of "How to Train Your HiPPO", s4's ``fourier`` = ``fout``; n even):
      A = J - B B^T with J block diagonal, blocks [[0, -pi k], [pi k, 0]] on rows (2k, 2k+1);
      B_0 = 1, B_2k = sqrt 2, B_2k+1 = 0.

    Returns A: (n, n) float64 and B: (n,) float64 (s4 returns B as (n, 1)).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    _check_n(n, even=measure == "fourier")
    q = np.arange(n, dtype=np.float64)
    row, col = q[:, None], q[None, :]
    r = np.sqrt(2 * q + 1)
    if measure == "legs":
        a = -np.where(row > col, r[:, None] * r[None, :], np.diag(q + 1))
        b = r
    elif measure == "legt":
        sign = np.where(row >= col, 1.0, (-1.0) ** (row - col))
        a = -0.5 * r[:, None] * sign * r[None, :]
        b = 0.5 * r
    elif measure == "lmu":
        a = (2 * q + 1)[:, None] * np.where(row < col, -1.0, (-1.0) ** (row - col + 1))
        b = (2 * q + 1) * (-1.0) ** q
    else:
        k = np.arange(n // 2)
        j = np.zeros((n, n))
        j[2 * k + 1, 2 * k] = np.pi * k
        j[2 * k, 2 * k + 1] = -np.pi * k
        b = _fourier_b(n)
        a = j - np.outer(b, b)
    return a, b


def rank_correction(measure: str, n: int, rank: int = 1) -> np.ndarray:
    """P: (rank, n) float64 with A + P^T P = c I + skew (normal), as s4's ``rank_correction``.

    legs: P_n = sqrt(n + 1/2). legt (rank >= 2): P_0 = r_n / sqrt 2 on odd n, P_1 = r_n / sqrt 2
    on even n (r_n = sqrt(2n + 1)). fourier: P = B. Rows past the minimum rank are zero.
    """
    if measure not in NPLR_MEASURES:
        raise ValueError(f"measure must be one of {NPLR_MEASURES} for NPLR, got {measure!r}")
    _check_n(n, even=measure == "fourier")
    if not isinstance(rank, int) or rank < _MIN_RANK[measure]:
        raise ValueError(f"rank must be an int >= {_MIN_RANK[measure]} for {measure}, got {rank!r}")
    q = np.arange(n, dtype=np.float64)
    if measure == "legs":
        p = np.sqrt(q + 0.5)[None]
    elif measure == "legt":
        r = np.sqrt((2 * q + 1) / 2)
        odd = q % 2 == 1
        p = np.stack([np.where(odd, r, 0.0), np.where(odd, 0.0, r)])
    else:
        p = _fourier_b(n)[None]
    return np.concatenate([p, np.zeros((rank - p.shape[0], n))])


def nplr(
    measure: str, n: int, rank: int = 1, *, b_clip: float | None = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NPLR form of HiPPO (S4 Thm. 1): A = V_f (diag(Lambda_f) - P_f P_f^*) V_f^*, B = V_f B_f.

    The spectrum of the real A + P^T P = c I + K (K skew) comes in conjugate pairs; only the
    half with Im Lambda <= 0 is returned (as s4's ``nplr``). The full factors are
    Lambda_f = [Lambda, conj Lambda], P_f = [P, conj P], B_f = [B, conj B], V_f = [V, conj V].

    n: even state size; rank: rows of P (>= 2 for legt).
    b_clip: clip Im B to [-b_clip, b_clip] (s4's default 2.0; then B = V_f B_f only
        approximately); None keeps B exact.

    Returns Lambda: (n/2,) complex128, P: (rank, n/2), B: (n/2,), V: (n, n/2).
    """
    _check_n(n, even=True)
    a, b = hippo(measure, n)
    p = rank_correction(measure, n, rank)
    normal = a + p.T @ p
    skew = (normal - normal.T) / 2
    lam_im, v = np.linalg.eigh(-1j * skew)  # ascending, so the first half has Im Lambda <= 0
    lam = np.mean(np.diag(normal)) + 1j * lam_im[: n // 2]
    v = v[:, : n // 2]
    if abs(lam[-1]) < 1e-4:
        # A zero-eigenvalue pair, which only 'fourier' has: its first two basis functions
        # do not move, so (e_0 + i e_1) / sqrt 2 and its conjugate span the null space.
        v[:, -1] = 0.0
        v[0, -1], v[1, -1] = 2**-0.5, 1j * 2**-0.5
    b_half = v.conj().T @ b
    p_half = p @ v.conj()
    if b_clip is not None:
        b_half = b_half.real + 1j * np.clip(b_half.imag, -b_clip, b_clip)
    return lam, p_half, b_half, v


def s4d_init(
    kind: str, n: int, *, real_scale: float = 1.0, imag_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The S4D diagonal (A, B), one of each conjugate pair, as s4's ``dplr(init=kind)``.

    For k = 0 .. n/2 - 1 (S4D paper, Sec. 4), A_k = -real_scale a_k - i imag_scale w_k with

    - ``lin``:  a_k = 1/2,     w_k = pi k                             (S4D-Lin)
    - ``inv``:  a_k = 1/2,     w_k = n / pi (n / (2k + 1) - 1)         (S4D-Inv)
    - ``real``: a_k = k + 1,   w_k = 0                                (S4D-Real)
    - ``legs``: a_k = 1/2,     w_k = -Im Lambda_k of ``nplr('legs', n)`` (S4D-LegS)

    The official code stores the conjugate with Im A <= 0 (the paper writes +i w_k); the
    kernel 2 Re(sum_k C_k B_k Abar_k^l) is the same up to conjugating C, whose init
    (``complex_normal``) is conjugation-symmetric. B_k = 1, except for ``legs`` where B is the
    NPLR B of LegS (Im B clipped to [-2, 2]). Unlike s4, which ignores ``real_scale`` for
    ``real``, the scale applies to every kind.

    n: even state size. Returns A: (n/2,) complex128, B: (n/2,) complex128.
    """
    if kind not in S4D_KINDS:
        raise ValueError(f"kind must be one of {S4D_KINDS}, got {kind!r}")
    _check_n(n, even=True)
    k = np.arange(n // 2, dtype=np.float64)
    real = np.full(n // 2, 0.5)
    b = np.ones(n // 2, dtype=np.complex128)
    if kind == "lin":
        imag = np.pi * k
    elif kind == "inv":
        imag = n / np.pi * (n / (2 * k + 1) - 1)
    elif kind == "real":
        real, imag = k + 1, np.zeros(n // 2)
    else:
        lam, _, b, _ = nplr("legs", n)
        imag = -lam.imag
    return -real_scale * real - 1j * imag_scale * imag, b
