"""HiPPO matrices entry by entry from the papers, their NPLR factors, and the S4D inits."""

import math

import numpy as np
import pytest

from seqzoo.ops.s4 import hippo, nplr, rank_correction, s4d_init


def legs_by_entries(n):
    """HiPPO-LegS, S4 paper eq. (2)."""
    a, b = np.zeros((n, n)), np.zeros(n)
    for i in range(n):
        b[i] = math.sqrt(2 * i + 1)
        for k in range(n):
            if i > k:
                a[i, k] = -math.sqrt((2 * i + 1) * (2 * k + 1))
            elif i == k:
                a[i, k] = -(i + 1)
    return a, b


def legt_by_entries(n):
    """HiPPO-LegT (HiPPO paper, App. D.1) with theta = 2 (s4's halved LegT)."""
    a, b = np.zeros((n, n)), np.zeros(n)
    for i in range(n):
        b[i] = math.sqrt(2 * i + 1) / 2
        for k in range(n):
            sign = 1.0 if k <= i else (-1.0) ** (i - k)
            a[i, k] = -math.sqrt((2 * i + 1) * (2 * k + 1)) * sign / 2
    return a, b


def lmu_by_entries(n):
    """Voelker et al. (2019) eq. (2) with theta = 1."""
    a, b = np.zeros((n, n)), np.zeros(n)
    for i in range(n):
        b[i] = (2 * i + 1) * (-1.0) ** i
        for j in range(n):
            a[i, j] = (2 * i + 1) * (-1.0 if i < j else (-1.0) ** (i - j + 1))
    return a, b


def fourier_by_entries(n):
    """FouT: frequency-k rotation blocks on (cos_k, sin_k) = rows (2k, 2k+1), minus B B^T."""
    j, b = np.zeros((n, n)), np.zeros(n)
    for k in range(n // 2):
        j[2 * k, 2 * k + 1], j[2 * k + 1, 2 * k] = -math.pi * k, math.pi * k
        b[2 * k] = 1.0 if k == 0 else math.sqrt(2)
    return j - np.outer(b, b), b


@pytest.mark.parametrize(
    ("measure", "n", "reference"),
    [
        ("legs", 7, legs_by_entries),
        ("legt", 7, legt_by_entries),
        ("lmu", 7, lmu_by_entries),
        ("fourier", 8, fourier_by_entries),
    ],
    ids=["legs", "legt", "lmu", "fourier"],
)
def test_hippo_matches_paper_entries(measure, n, reference):
    a, b = hippo(measure, n)
    a_ref, b_ref = reference(n)
    assert a.shape == (n, n) and b.shape == (n,) and a.dtype == np.float64
    np.testing.assert_allclose(a, a_ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(b, b_ref, rtol=1e-14, atol=1e-14)


def test_lmu_is_legt_at_half_the_window_in_another_basis():
    """S^-1 A_lmu S = 2 A_legt and S^-1 B_lmu = 2 B_legt with S = diag((-1)^n sqrt(2n+1))."""
    n = 9
    a_lmu, b_lmu = hippo("lmu", n)
    a_legt, b_legt = hippo("legt", n)
    s = (-1.0) ** np.arange(n) * np.sqrt(2 * np.arange(n) + 1)
    np.testing.assert_allclose(a_lmu * s[None, :] / s[:, None], 2 * a_legt, atol=1e-12)
    np.testing.assert_allclose(b_lmu / s, 2 * b_legt, atol=1e-12)


def full_factors(lam, p, b, v):
    """[x, conj x] versions of the half-spectrum NPLR factors."""
    return (
        np.concatenate([lam, lam.conj()]),
        np.concatenate([p, p.conj()], axis=-1),
        np.concatenate([b, b.conj()]),
        np.concatenate([v, v.conj()], axis=-1),
    )


@pytest.mark.parametrize(
    ("measure", "n", "rank"),
    [("legs", 8, 1), ("legs", 16, 2), ("legt", 8, 2), ("fourier", 8, 1), ("fourier", 16, 2)],
    ids=lambda x: str(x),
)
def test_nplr_reconstructs_hippo(measure, n, rank):
    lam, p, b, v = nplr(measure, n, rank, b_clip=None)
    assert lam.shape == (n // 2,) and p.shape == (rank, n // 2)
    assert b.shape == (n // 2,) and v.shape == (n, n // 2)
    assert np.all(lam.imag <= 1e-12)
    lam_f, p_f, b_f, v_f = full_factors(lam, p, b, v)
    np.testing.assert_allclose(v_f @ v_f.conj().T, np.eye(n), atol=1e-10)
    a, b_hippo = hippo(measure, n)
    a_rebuilt = v_f @ (np.diag(lam_f) - p_f.T @ p_f.conj()) @ v_f.conj().T
    np.testing.assert_allclose(a_rebuilt, a, atol=1e-10 * np.abs(a).max())
    np.testing.assert_allclose(v_f @ b_f, b_hippo, atol=1e-10)


def test_nplr_legs_diagonal_has_real_part_minus_half():
    lam, *_ = nplr("legs", 16)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-12)
    assert len(set(np.round(lam.imag, 6))) == 8  # no repeated frequencies


def test_nplr_b_clip_clips_only_the_imaginary_part():
    _, _, b_exact, _ = nplr("legs", 16, b_clip=None)
    _, _, b_clipped, _ = nplr("legs", 16, b_clip=2.0)
    assert np.abs(b_exact.imag).max() > 2.0  # the clip is active here
    np.testing.assert_allclose(b_clipped.real, b_exact.real)
    np.testing.assert_allclose(b_clipped.imag, np.clip(b_exact.imag, -2.0, 2.0))


def test_rank_correction_pads_with_zero_rows():
    p = rank_correction("legs", 6, rank=3)
    np.testing.assert_allclose(p[0], np.sqrt(np.arange(6) + 0.5))
    np.testing.assert_array_equal(p[1:], 0.0)


@pytest.mark.parametrize(
    ("kind", "expected_a"),
    [
        ("lin", lambda k, n: -0.5 - 1j * math.pi * k),
        ("inv", lambda k, n: -0.5 - 1j * n / math.pi * (n / (2 * k + 1) - 1)),
        ("real", lambda k, n: -(k + 1) + 0j),
    ],
    ids=["lin", "inv", "real"],
)
def test_s4d_init_closed_forms(kind, expected_a):
    n = 10
    a, b = s4d_init(kind, n)
    np.testing.assert_allclose(a, [expected_a(k, n) for k in range(n // 2)], rtol=1e-14)
    np.testing.assert_array_equal(b, np.ones(n // 2))


def test_s4d_init_legs_is_the_nplr_diagonal_and_b():
    lam, _, b_nplr, _ = nplr("legs", 12)
    a, b = s4d_init("legs", 12)
    np.testing.assert_allclose(a, lam, atol=1e-12)
    np.testing.assert_allclose(b, b_nplr)


@pytest.mark.parametrize("kind", ["lin", "inv", "real", "legs"])
def test_s4d_init_scales_real_and_imaginary_parts(kind):
    a, _ = s4d_init(kind, 8)
    a_scaled, _ = s4d_init(kind, 8, real_scale=3.0, imag_scale=0.25)
    np.testing.assert_allclose(a_scaled.real, 3.0 * a.real)
    np.testing.assert_allclose(a_scaled.imag, 0.25 * a.imag)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: hippo("legx", 4), "measure"),
        (lambda: hippo("legs", 0), "n"),
        (lambda: hippo("fourier", 5), "n"),
        (lambda: nplr("legs", 7), "n"),
        (lambda: nplr("lmu", 8), "measure"),
        (lambda: nplr("legt", 8, rank=1), "rank"),
        (lambda: s4d_init("diag", 8), "kind"),
        (lambda: s4d_init("lin", 9), "n"),
    ],
    ids=[
        "unknown-measure",
        "zero-n",
        "odd-n-fourier",
        "odd-n-nplr",
        "nplr-lmu",
        "legt-rank-1",
        "unknown-kind",
        "odd-n-s4d",
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
