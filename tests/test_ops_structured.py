"""seqzoo.ops.structured against entry-by-entry numpy definitions (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.ops import structured as ops
from seqzoo.ops.conv.toeplitz import toeplitz_matrix, toeplitz_matvec

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def apply_np(m, v):
    """(b|1, h, i, j) x (b, j, h, p) -> (b, i, h, p)."""
    return np.einsum("bhij,bjhp->bihp", m.astype(np.float64), v.astype(np.float64))


@pytest.mark.parametrize("length", [1, 2, 5, 17])
def test_toeplitz_matrix_and_fft_matvec(length):
    kernel = rand(1, 3, 2 * length - 1)  # c[d] at L - 1 + d, batch 1 broadcasts
    m = np.asarray(toeplitz_matrix(kernel))
    for i in range(length):
        for j in range(length):
            assert m[0, :, i, j].tolist() == kernel[0, :, length - 1 + i - j].tolist()
    v = rand(2, length, 3, 4)
    close(toeplitz_matvec(kernel, v), apply_np(m, v))
    kernel2 = rand(2, 3, 2 * length - 1)  # one kernel per batch row
    close(toeplitz_matvec(kernel2, v), apply_np(np.asarray(toeplitz_matrix(kernel2)), v))


def test_low_rank_matrix_and_matvec():
    q, k, v = rand(2, 3, 7, 2), rand(2, 3, 7, 2), rand(2, 7, 3, 4)
    m = np.einsum("bhir,bhjr->bhij", q.astype(np.float64), k)
    close(ops.low_rank_matrix(q, k), m)
    close(ops.low_rank_matvec(q, k, v), apply_np(m, v))
    assert max(np.linalg.matrix_rank(m[b, h]) for b in range(2) for h in range(3)) <= 2


def test_cauchy_rows_entries():
    q, k = np.exp(rand(1, 2, 5, 3)), np.exp(rand(1, 2, 6, 3))
    rows = np.asarray(ops.cauchy_rows(q, k, 1e-8))
    for h in range(2):
        for i in range(5):
            for j in range(6):
                ref = np.sum(1.0 / (q[0, h, i].astype(np.float64) + k[0, h, j] + 1e-8))
                assert abs(rows[0, h, i, j] - ref) <= 1e-5 * abs(ref)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_vandermonde_rows_are_real_parts_of_powers(sign):
    length = 6
    q, k = rand(2, 2, 3, 2) / 4, rand(2, 2, length, 2) / 4
    which = np.array([4, 0, 5])
    rows = np.asarray(ops.vandermonde_rows(q, jnp.asarray(which), k, sign))
    zq = np.exp(2j * np.pi * q.astype(np.float64))  # nodes
    zk = np.exp(2j * np.pi * k.astype(np.float64))
    for b in range(2):
        for h in range(2):
            for a, i in enumerate(which):
                for j in range(length):
                    ref = np.sum((zq[b, h, a] ** j).real + sign * (zk[b, h, j] ** i).real)
                    assert abs(rows[b, h, a, j] - ref) <= 1e-5 * max(1.0, abs(ref))


def test_cosine_dft_matrix_and_fft_matvec():
    n, length = 300, 260  # i j up to 67k: the phase must be reduced exactly
    m = np.asarray(ops.cosine_dft_matrix(length, n))
    ref = np.fft.fft(np.eye(n)).real[:length, :length]
    close(m, ref, 2e-6)
    v = rand(2, length, 1, 3)
    close(ops.cosine_dft_matvec(v, n), apply_np(m[None, None], v), 1e-4)


def test_masked_softmax_rows():
    q, k = rand(2, 1, 4, 3), rand(2, 1, 5, 3)
    mask = np.array([[True, False, True, True, False], [False] * 5])
    rows = np.asarray(ops.masked_softmax_rows(q, k, jnp.asarray(mask), 0.5))
    s = 0.5 * np.einsum("hir,hjr->hij", q[0], k[0])[:, :, mask[0]]
    ref = np.exp(s - s.max(-1, keepdims=True))
    close(rows[0][..., mask[0]], ref / ref.sum(-1, keepdims=True))
    assert np.all(rows[0][..., ~mask[0]] == 0) and np.all(rows[1] == 0)  # no valid key: 0
    g = jax.grad(lambda qq: jnp.sum(ops.masked_softmax_rows(qq, k, jnp.asarray(mask), 0.5)))(q)
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("block_size", [1, 3, 7, 50])
def test_blocked_matvec_equals_full_product(block_size):
    length = 7
    q, k, v = jnp.asarray(rand(1, 2, length, 3)), rand(2, 2, length, 3), rand(2, length, 2, 4)

    def rows(qq):
        return lambda i: ops.cauchy_rows(jnp.exp(qq[:, :, i]), jnp.exp(k), 1e-8)

    full = np.asarray(rows(q)(jnp.arange(length)))
    close(ops.blocked_matvec(rows(q), v, block_size), apply_np(full, v))

    def loss_blocked(qq):
        return jnp.sum(ops.blocked_matvec(rows(qq), v, block_size) ** 2)

    def loss_full(qq):
        return jnp.sum(jnp.einsum("bhij,bjhp->bihp", rows(qq)(jnp.arange(length)), v) ** 2)

    close(jax.grad(loss_blocked)(q), np.asarray(jax.grad(loss_full)(q)), 1e-4)


def test_blocked_matvec_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        ops.blocked_matvec(lambda i: None, jnp.zeros((1, 3, 1, 1)), 0)
