"""H3 (seqzoo.layers.h3) against a float64 numpy rebuild of the official ``H3.forward``.

The rebuild follows HazyResearch/H3 ``src/models/ssm/h3.py`` literally: q, k, v linears, the shift
SSM kernel as the FFT correlation of its B and C (``SSKernelShift``), the bilinear S4D-Lin kernel
on ``k v^T`` per head, ``mul_sum`` with q, the ``(d h)`` output order and the output linear.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqzoo
from seqzoo.layers.h3 import shift_kernel
from seqzoo.ops.s4 import s4d_init

D_MODEL, N, LENGTH = 4, 4, 10


def setup_layer(seed=0, length=LENGTH, **options):
    mixer = seqzoo.get_mixer("h3", d_model=D_MODEL, **{"d_state": N, **options})
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, length, D_MODEL))
    params = mixer.init(jax.random.PRNGKey(seed + 1), x)
    return mixer, params, x


def np_params(params):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])


def causal_conv_np(u, k):
    """y[..., t] = sum_{j <= t} k[..., t - j] u[..., j] on the last axis (k zero past its end)."""
    length = u.shape[-1]
    k = np.concatenate([k, np.zeros(k.shape[:-1] + (max(0, length - k.shape[-1]),))], -1)
    out = np.zeros(np.broadcast_shapes(u.shape, k[..., :length].shape))
    for t in range(length):
        out[..., t] = np.sum(k[..., t::-1][..., : t + 1] * u[..., : t + 1], axis=-1)
    return out


def ssm_kernel_np(p, length, disc="bilinear"):
    k = p["kernel"]
    dt = np.exp(k["log_dt"])[:, None]
    a = -np.exp(k["log_A_real"]) - 1j * k["A_imag"]
    b = k["B"][..., 0] + 1j * k["B"][..., 1]
    c = k["C"][0, ..., 0] + 1j * k["C"][0, ..., 1]
    dta = dt * a
    if disc == "bilinear":
        abar, bbar = (1 + dta / 2) / (1 - dta / 2), dt / (1 - dta / 2) * b
    else:
        abar, bbar = np.exp(dta), np.expm1(dta) / a * b
    return 2 * np.einsum("hn,hnl->hl", c * bbar, abar[..., None] ** np.arange(length)).real


def official_h3(params, x, head_dim, disc="bilinear", return_parts=False):
    p = np_params(params)
    u = np.asarray(x, np.float64)
    b, length, d = u.shape
    heads = d // head_dim

    def linear(name, a):
        return a @ p[name]["kernel"] + p[name]["bias"]

    q, k, v = (np.moveaxis(linear(n, u), 1, -1) for n in ("q_proj", "k_proj", "v_proj"))  # b d l
    # SSKernelShift.forward: irfft(conj(rfft(B)) * rfft(C))[:N], zero padded to L
    bf = np.fft.rfft(p["shift_B"], n=2 * N)
    cf = np.fft.rfft(p["shift_C"], n=2 * N)
    k_shift_kernel = np.fft.irfft(bf.conj() * cf, n=2 * N)[..., :N]
    k = causal_conv_np(k, k_shift_kernel) + p["shift_D"][:, None] * k
    kv = k.reshape(b, heads, head_dim, 1, length) * v.reshape(b, heads, 1, head_dim, length)
    kernel = ssm_kernel_np(p, length, disc)  # (H, L)
    y = causal_conv_np(kv, kernel[:, None, None]) + kv * p["D"][:, None, None, None]
    out = np.einsum("bhal,bhacl->bchl", q.reshape(b, heads, head_dim, length), y)  # b d2 h l
    out = np.moveaxis(out.reshape(b, d, length), -1, 1)  # (d h) order
    result = out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
    if return_parts:
        return result, q, k, kernel, p["D"]
    return result


def assert_close(a, b, tol, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


@pytest.mark.parametrize("head_dim, disc", [(1, "bilinear"), (2, "bilinear"), (1, "zoh")])
def test_matches_official_forward(head_dim, disc):
    mixer, params, x = setup_layer(head_dim=head_dim, disc=disc)
    ref = official_h3(params, x, head_dim, disc)
    assert_close(mixer.apply(params, x), ref, 1e-5, "fast")
    assert_close(mixer.apply(params, x, method="dense"), ref, 1e-5, "dense")


def test_matrix_is_q_toeplitz_kshift():
    """head_dim 1: M[h] = diag(q_h) (T(K_h) + D_h I) diag(k~_h)."""
    mixer, params, x = setup_layer(head_dim=1)
    _, q, k, kernel, d = official_h3(params, x, 1, return_parts=True)
    m = np.asarray(mixer.apply(params, x, method="matrix"), np.float64)
    lag = np.arange(LENGTH)[:, None] - np.arange(LENGTH)[None, :]
    t = np.where(lag >= 0, kernel[:, np.clip(lag, 0, None)], 0.0)
    t = t + d[:, None, None] * np.eye(LENGTH)
    ref = q[:, :, :, None] * t[None] * k[:, :, None, :]
    assert_close(m, ref, 1e-5, "M")


def test_step_equals_fast_head_dim_1():
    mixer, params, x = setup_layer(head_dim=1, disc="zoh")
    mask = jnp.ones(x.shape[:2], bool).at[0, 3].set(False).at[1, 7:].set(False)
    state = mixer.apply(params, 2, method="init_state")
    _, ys = jax.lax.scan(
        lambda s, xs: mixer.apply(params, s, *xs, method="step"),
        state,
        (jnp.moveaxis(x, 1, 0), mask.T),
    )
    assert_close(jnp.moveaxis(ys, 0, 1), mixer.apply(params, x, mask), 2e-5, "step")


def test_inits():
    mixer, params, _ = setup_layer(head_dim=2)
    p = np_params(params)
    np.testing.assert_array_equal(p["shift_B"], np.eye(N)[:1].repeat(D_MODEL, 0))  # e_0
    assert np.abs(p["shift_C"]).max() <= 1 / np.sqrt(N) and p["shift_C"].std() > 0.1
    # with B = e_0 the shift kernel is C itself
    np.testing.assert_allclose(shift_kernel(p["shift_B"], p["shift_C"]), p["shift_C"], rtol=1e-6)
    assert p["D"].shape == (D_MODEL // 2,) and p["shift_D"].shape == (D_MODEL,)
    kernel = p["kernel"]
    a_ref, _ = s4d_init("lin", N)
    np.testing.assert_allclose(-np.exp(kernel["log_A_real"]), a_ref.real[None].repeat(2, 0))
    np.testing.assert_allclose(-kernel["A_imag"], a_ref.imag[None].repeat(2, 0), atol=1e-6)
    assert np.all((kernel["log_dt"] >= np.log(1e-3)) & (kernel["log_dt"] <= np.log(0.1)))
    assert mixer.info.data_dependent and mixer.info.causal


def test_shift_kernel_with_learned_b():
    rng = np.random.default_rng(0)
    b, c = rng.normal(size=(3, N)), rng.normal(size=(3, N))
    ref = np.fft.irfft(np.fft.rfft(b, 2 * N).conj() * np.fft.rfft(c, 2 * N), 2 * N)[:, :N]
    np.testing.assert_allclose(shift_kernel(jnp.asarray(b), jnp.asarray(c)), ref, atol=1e-5)


@pytest.mark.parametrize(
    "options, match",
    [({"head_dim": 3}, "head_dim"), ({"d_state": 3}, "d_state"), ({"disc": "euler"}, "disc")],
)
def test_bad_config(options, match):
    with pytest.raises(ValueError, match=match):
        setup_layer(length=3, **options)
