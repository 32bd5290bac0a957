"""S4D (Vandermonde) and S4 (Cauchy + Woodbury) kernels against dense-matrix powers.

The reference builds the full conjugate system as dense float64 matrices, discretises it with
a matrix exponential (ZOH) or a matrix inverse (bilinear) and evaluates K_l = C Abar^l Bbar by
repeated products; gradients are checked against its central finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from seqzoo.ops.complex_params import complex_normal, from_real_pair, to_real_pair
from seqzoo.ops.s4 import cauchy, nplr, s4_dplr_c_tilde, s4_dplr_kernel, s4d_init, s4d_kernel

# Jitted once per shape: much faster than eager op-by-op dispatch, and how the layers call them.
s4d_jit = jax.jit(s4d_kernel, static_argnames=("L", "disc"))
dplr_jit = jax.jit(s4_dplr_kernel, static_argnames="L")
c_tilde_jit = jax.jit(s4_dplr_c_tilde, static_argnames="L")

# ---------------------------------------------------------------- float64 dense reference


def full(x):
    return np.concatenate([x, np.conj(x)], axis=-1)


def dense_state_matrix(lam, p=None):
    """diag(Lambda_f) - sum_r p_r p_r^* for one channel h; lam: (N/2,), p: (rank, N/2)."""
    a = np.diag(full(lam))
    if p is not None:
        for p_r in full(p):
            a = a - np.outer(p_r, p_r.conj())
    return a


def discretise(a, b, dt, disc):
    n = a.shape[0]
    if disc == "zoh":  # exp([[dt A, dt B], [0, 0]]) = [[Abar, Bbar], [0, 1]]
        augmented = np.zeros((n + 1, n + 1), complex)
        augmented[:n, :n], augmented[:n, n] = dt * a, dt * b
        e = scipy.linalg.expm(augmented)
        return e[:n, :n], e[:n, n]
    eye = np.eye(n)
    back = eye - dt / 2 * a
    return np.linalg.solve(back, eye + dt / 2 * a), np.linalg.solve(back, dt * b)


def kernel_by_powers(abar, bbar, c, length):
    out, x = [], bbar
    for _ in range(length):
        out.append(c @ x)
        x = abar @ x
    out = np.array(out)
    assert np.abs(out.imag).max() <= 1e-9 * max(1.0, np.abs(out).max())  # a real system
    return out.real


def reference_kernel(dt, lam, p, b, c, length, disc, c_is_tilde=False):
    """(channels, H, L) kernel of the dense system; p: (rank, H, N/2) or None."""
    k = np.zeros((c.shape[0], len(dt), length))
    for h in range(len(dt)):
        a = dense_state_matrix(lam[h], None if p is None else p[:, h])
        abar, bbar = discretise(a, full(b[h]), dt[h], disc)
        for ch in range(c.shape[0]):
            c_full = full(c[ch, h])
            if c_is_tilde:  # undo C~ = C (I - Abar^L)
                power = np.linalg.matrix_power(abar, length)
                c_full = np.linalg.solve((np.eye(len(c_full)) - power).T, c_full)
            k[ch, h] = kernel_by_powers(abar, bbar, c_full, length)
    return k


# ---------------------------------------------------------------- test data


def random_ssm(seed, h, half_n, channels, rank=None):
    """dt (H,), stable diagonal (H, N/2), P (rank, H, N/2) or None, B (H, N/2), C (ch, H, N/2)."""
    rng = np.random.default_rng(seed)

    def cplx(*shape):
        return rng.normal(size=shape) + 1j * rng.normal(size=shape)

    dt = np.exp(rng.uniform(np.log(0.01), np.log(0.5), size=h))
    lam = -rng.uniform(0.1, 1.0, (h, half_n)) + 1j * rng.normal(0, 3, (h, half_n))
    p = None if rank is None else 0.5 * cplx(rank, h, half_n)
    return dt, lam, p, cplx(h, half_n), cplx(channels, h, half_n)


def assert_kernel_close(k, k_ref, rtol=2e-5):
    assert k.shape == k_ref.shape
    np.testing.assert_allclose(np.asarray(k, np.float64), k_ref, atol=rtol * np.abs(k_ref).max())


def finite_difference_grad(loss, params, eps=1e-6):
    """Central differences of a float64 loss with respect to every entry of every array."""
    grads = {}
    for name, value in params.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            up, down = dict(params), dict(params)
            up[name], down[name] = value.copy(), value.copy()
            up[name][idx] += eps
            down[name][idx] -= eps
            g[idx] = (loss(up) - loss(down)) / (2 * eps)
        grads[name] = g
    return grads


def assert_grads_match(loss_jax, loss_ref, params):
    grads = jax.jit(jax.grad(loss_jax))({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
    expected = finite_difference_grad(loss_ref, params)
    for name in params:
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(grads[name], expected[name], atol=2e-4 * scale, err_msg=name)


# ---------------------------------------------------------------- S4D


@pytest.mark.parametrize("length", [1, 7, 130])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_matches_dense_powers(disc, length):
    dt, lam, _, b, c = random_ssm(0, h=3, half_n=4, channels=2)
    k = s4d_jit(dt, lam, b, c, length, disc=disc)
    assert k.dtype == jnp.float32
    assert_kernel_close(k, reference_kernel(dt, lam, None, b, c, length, disc))


@pytest.mark.parametrize("kind", ["lin", "inv", "real", "legs"])
def test_s4d_kernel_from_each_init(kind):
    a, b = s4d_init(kind, 16)
    dt, _, _, _, c = random_ssm(1, h=2, half_n=8, channels=1)
    lam, b = np.tile(a, (2, 1)), np.tile(b, (2, 1))
    k = s4d_jit(dt, lam, b, c, 33)
    assert_kernel_close(k, reference_kernel(dt, lam, None, b, c, 33, "zoh"))


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_gradients_match_finite_differences(disc):
    dt, lam, _, b, c = random_ssm(2, h=2, half_n=3, channels=2)
    length = 7
    weights = np.random.default_rng(3).normal(size=(2, 2, length))
    params = {
        "log_dt": np.log(dt),
        "A": to_real_pair(lam),
        "B": to_real_pair(b),
        "C": to_real_pair(c),
    }
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}

    def loss_jax(p):
        args = (from_real_pair(p[name]) for name in ("A", "B", "C"))
        return jnp.sum(weights * s4d_jit(jnp.exp(p["log_dt"]), *args, length, disc=disc))

    def loss_ref(p):
        lam_, b_, c_ = (p[name][..., 0] + 1j * p[name][..., 1] for name in ("A", "B", "C"))
        return np.sum(
            weights * reference_kernel(np.exp(p["log_dt"]), lam_, None, b_, c_, length, disc)
        )

    assert_grads_match(loss_jax, loss_ref, params)


def test_s4d_kernel_bfloat16_step_returns_bfloat16():
    dt, lam, _, b, c = random_ssm(4, h=2, half_n=4, channels=1)
    dt16 = jnp.asarray(dt, jnp.bfloat16)
    k = s4d_jit(dt16, lam, b, c, 7)
    assert k.dtype == jnp.bfloat16
    ref = reference_kernel(np.asarray(dt16, np.float64), lam, None, b, c, 7, "zoh")
    np.testing.assert_allclose(np.asarray(k, np.float64), ref, atol=1e-2 * np.abs(ref).max())


def test_s4d_kernel_vmaps_over_the_step_size():
    dt, lam, _, b, c = random_ssm(5, h=2, half_n=4, channels=1)
    over_scales = jax.jit(jax.vmap(lambda s: s4d_kernel(s * dt, lam, b, c, 9)))(
        jnp.array([1.0, 2.0])
    )
    np.testing.assert_allclose(over_scales[0], s4d_jit(dt, lam, b, c, 9), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(over_scales[1], s4d_jit(2 * dt, lam, b, c, 9), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Cauchy and S4 (DPLR)


def test_cauchy_matches_a_double_loop():
    rng = np.random.default_rng(6)
    v, w = rng.normal(size=(2, 5)) + 1j * rng.normal(size=(2, 5)), 1j * rng.normal(size=(2, 5))
    z = rng.normal(size=3) + 1j * rng.normal(size=3)
    expected = np.array(
        [[sum(v[b, n] / (z[l] - w[b, n]) for n in range(5)) for l in range(3)] for b in range(2)]
    )
    np.testing.assert_allclose(cauchy(v, z, w), expected, rtol=1e-5)


@pytest.mark.parametrize(("rank", "length"), [(1, 1), (1, 8), (1, 130), (2, 7)])
def test_s4_dplr_kernel_of_c_tilde_matches_dense_powers(rank, length):
    dt, lam, p, b, c_tilde = random_ssm(7, h=2, half_n=4, channels=2, rank=rank)
    k = dplr_jit(dt, lam, p, b, c_tilde, length)
    assert k.dtype == jnp.float32
    expected = reference_kernel(dt, lam, p, b, c_tilde, length, "bilinear", c_is_tilde=True)
    assert_kernel_close(k, expected)


@pytest.mark.parametrize("length", [1, 64])
@pytest.mark.parametrize(("measure", "rank"), [("legs", 1), ("legt", 2), ("fourier", 1)])
def test_s4_dplr_kernel_with_c_tilde_is_the_kernel_of_c(measure, rank, length):
    """HiPPO NPLR inits, C~ from s4_dplr_c_tilde: K_l = C Abar^l Bbar.

    LegT and FouT have Re Lambda = 0 (FouT even Lambda = 0), where the Cauchy/Woodbury form is
    ill-conditioned; as the official parameterisation (which clamps -Re Lambda >= 1e-4), Re
    Lambda is kept away from 0, here <= -1e-2.
    """
    lam, p, b, _ = nplr(measure, 8, rank)
    lam = np.minimum(lam.real, -1e-2) + 1j * lam.imag
    dt, _, _, _, c = random_ssm(8, h=2, half_n=4, channels=1)
    lam, b, p = np.tile(lam, (2, 1)), np.tile(b, (2, 1)), np.tile(p[:, None], (1, 2, 1))
    k = dplr_jit(dt, lam, p, b, c_tilde_jit(dt, lam, p, c, length), length)
    assert_kernel_close(k, reference_kernel(dt, lam, p, b, c, length, "bilinear"))


def test_s4_dplr_kernel_without_low_rank_term_is_the_bilinear_s4d_kernel():
    dt, lam, _, b, c = random_ssm(9, h=2, half_n=4, channels=2)
    p = np.zeros((1, 2, 4))
    k = dplr_jit(dt, lam, p, b, c_tilde_jit(dt, lam, p, c, 12), 12)
    np.testing.assert_allclose(k, s4d_jit(dt, lam, b, c, 12, disc="bilinear"), atol=1e-5)


@pytest.mark.parametrize("length", [6, 7])
def test_s4_dplr_kernel_gradients_match_finite_differences(length):
    dt, lam, p, b, c_tilde = random_ssm(10, h=2, half_n=3, channels=1, rank=1)
    weights = np.random.default_rng(11).normal(size=(1, 2, length))
    names = ("Lambda", "P", "B", "C")
    params = {"log_dt": np.log(dt)}
    params |= {
        n: np.asarray(to_real_pair(x), np.float64)
        for n, x in zip(names, (lam, p, b, c_tilde), strict=True)
    }

    def loss_jax(q):
        args = [from_real_pair(q[n]) for n in names]
        return jnp.sum(weights * dplr_jit(jnp.exp(q["log_dt"]), *args, length))

    def loss_ref(q):
        lam_, p_, b_, c_ = (q[n][..., 0] + 1j * q[n][..., 1] for n in names)
        k = reference_kernel(np.exp(q["log_dt"]), lam_, p_, b_, c_, length, "bilinear", True)
        return np.sum(weights * k)

    assert_grads_match(loss_jax, loss_ref, params)


def test_s4_dplr_kernel_bfloat16_step_returns_bfloat16():
    dt, lam, p, b, c = random_ssm(12, h=2, half_n=4, channels=1, rank=1)
    dt16 = jnp.asarray(dt, jnp.bfloat16)
    k = dplr_jit(dt16, lam, p, b, c, 9)
    assert k.dtype == jnp.bfloat16
    ref = reference_kernel(np.asarray(dt16, np.float64), lam, p, b, c, 9, "bilinear", True)
    np.testing.assert_allclose(np.asarray(k, np.float64), ref, atol=1e-2 * np.abs(ref).max())


# ---------------------------------------------------------------- complex parameters


def test_real_pairs_round_trip_complex_parameters():
    z = np.array([[1.5 - 2j, 0.25j], [-3.0 + 0j, 7 + 1e-3j]], np.complex64)
    x = to_real_pair(z)
    assert x.shape == (2, 2, 2) and x.dtype == jnp.float32
    np.testing.assert_array_equal(x[..., 0], z.real)
    np.testing.assert_array_equal(x[..., 1], z.imag)
    np.testing.assert_array_equal(from_real_pair(x), z)
    assert from_real_pair(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.complex64


def test_complex_normal_has_unit_variance_split_evenly():
    z = complex_normal(jax.random.key(0), (4, 50_000))
    assert z.shape == (4, 50_000) and z.dtype == jnp.complex64
    np.testing.assert_allclose([z.real.var(), z.imag.var()], [0.5, 0.5], rtol=0.02)
    np.testing.assert_allclose(np.mean(np.abs(z) ** 2), 1.0, rtol=0.02)


# ---------------------------------------------------------------- argument checks

_DT, _LAM, _P, _B, _C = random_ssm(13, h=2, half_n=4, channels=1, rank=1)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: s4d_kernel(_DT[:, None], _LAM, _B, _C, 4), "dt"),
        (lambda: s4d_kernel(_DT, _LAM[:1], _B, _C, 4), "A"),
        (lambda: s4d_kernel(_DT, _LAM, _B[:, :2], _C, 4), "B"),
        (lambda: s4d_kernel(_DT, _LAM, _B, _C[0], 4), "C"),
        (lambda: s4d_kernel(_DT, _LAM, _B, _C, 0), "L"),
        (lambda: s4d_kernel(_DT, _LAM, _B, _C, 4, disc="euler"), "disc"),
        (lambda: s4_dplr_kernel(_DT, _LAM, _P[0], _B, _C, 4), "P"),
        (lambda: s4_dplr_kernel(_DT, _LAM[:1], _P, _B, _C, 4), "Lambda"),
        (lambda: s4_dplr_c_tilde(_DT, _LAM, _P, _C, 2.5), "L"),
        (lambda: cauchy(_B, _DT, _LAM[:, :3]), "w"),
        (lambda: from_real_pair(_B.real), "x"),
        (lambda: from_real_pair(to_real_pair(_B) + 0j), "x"),
    ],
    ids=[
        "dt-2d",
        "A-wrong-H",
        "B-wrong-N",
        "C-no-channels",
        "L-zero",
        "disc-unknown",
        "P-no-rank-axis",
        "Lambda-wrong-H",
        "c-tilde-L-float",
        "cauchy-mismatch",
        "real-pair-no-pair-axis",
        "real-pair-complex",
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
