"""S4 and S4D layers (seqzoo.layers.s4) against float64 numpy rebuilds of the official code.

The contract suite checks fast == dense == step for the registered test configs. Here: the inits
(state-spaces/s4 ``SSMKernelDiag`` / ``SSMKernelDPLR`` / ``FFTConv``), the kernels against their
definition K_l = C Abar^l Bbar, the layer output against the official forward
(conv + D u, GELU, Linear + GLU), the bidirectional kernels, the options, and the config errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import seqzoo
from seqzoo.ops.s4 import nplr, s4d_init

D_MODEL, N, LENGTH = 4, 6, 11


def build(name, **options):
    return seqzoo.get_mixer(name, d_model=D_MODEL, **{"d_state": N, **options})


def setup_layer(name, seed=0, length=LENGTH, **options):
    mixer = build(name, **options)
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, length, D_MODEL))
    params = mixer.init(jax.random.PRNGKey(seed + 1), x)
    return mixer, params, x


def kernel_of(mixer, params, length):
    return np.asarray(mixer.apply(params, length, method=lambda m, n: m.kernel(n)), np.float64)


def cplx(a):
    a = np.asarray(a, np.float64)
    return a[..., 0] + 1j * a[..., 1]


def ssm_params(params):
    """dt (H,), A or Lambda (H, n), B (H, n), C (c, H, n), P (r, H, n) or None, in float64."""
    k = params["params"]["kernel"]
    dt = np.exp(np.asarray(k["log_dt"], np.float64))
    a = -np.maximum(np.exp(np.asarray(k["log_A_real"], np.float64)), 1e-4) - 1j * np.asarray(
        k["A_imag"], np.float64
    )
    p = cplx(k["P"]) if "P" in k else None
    return dt, a, cplx(k["B"]), cplx(k["C"]), p


def diag_kernel_np(dt, a, b, c, length, disc="zoh"):
    dta = dt[:, None] * a
    if disc == "zoh":
        abar, bbar = np.exp(dta), np.expm1(dta) / a * b
    else:
        abar, bbar = (1 + dta / 2) / (1 - dta / 2), dt[:, None] / (1 - dta / 2) * b
    powers = abar[..., None] ** np.arange(length)
    return 2 * np.einsum("chn,hnl->chl", c * bbar, powers).real


def dplr_kernel_np(dt, lam, p, b, c, length):
    """K_l = C_f Abar^l Bbar over the full conjugate system, bilinear, by dense powers."""
    out = []
    for h in range(len(dt)):
        lam_f = np.concatenate([lam[h], lam[h].conj()])
        p_f = np.concatenate([p[:, h], p[:, h].conj()], axis=-1)  # (r, N)
        a = np.diag(lam_f) - p_f.T @ p_f.conj()
        eye = np.eye(len(lam_f))
        inv = np.linalg.inv(eye - dt[h] / 2 * a)
        b_f = np.concatenate([b[h], b[h].conj()])
        abar, bbar = inv @ (eye + dt[h] / 2 * a), inv @ (dt[h] * b_f)
        c_f = np.concatenate([c[:, h], c[:, h].conj()], axis=-1)  # (channels, N)
        ks, state = [], bbar
        for _ in range(length):
            ks.append(c_f @ state)
            state = abar @ state
        out.append(np.stack(ks, -1).real)
    return np.stack(out, 1)  # (channels, H, L)


def official_forward(params, x, k, kb=None):
    """FFTConv (conv + D u, GELU) then S4Block's Linear + GLU, float64."""
    prm = params["params"]
    u = np.asarray(x, np.float64)  # (b, l, H)
    length = u.shape[1]
    lag = np.arange(length)[:, None] - np.arange(length)[None, :]
    toeplitz = np.where(lag >= 0, k[..., np.clip(lag, 0, None)], 0.0)  # (c, H, L, L)
    if kb is not None:
        toeplitz = toeplitz + np.where(-lag - 1 >= 0, kb[..., np.clip(-lag - 1, 0, None)], 0.0)
    y = np.einsum("chij,bjh->bich", toeplitz, u)
    y = y + u[:, :, None, :] * np.asarray(prm["D"], np.float64)
    y = y.reshape(y.shape[:2] + (-1,))  # (c h)
    y = 0.5 * y * (1 + erf(y / math.sqrt(2)))  # exact GELU
    w, bias = (np.asarray(prm["out_proj"][n], np.float64) for n in ("kernel", "bias"))
    z = y @ w + bias
    a, g = np.split(z, 2, axis=-1)
    return a / (1 + np.exp(-g))


def assert_close(a, b, tol, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


# ---- inits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["s4d", "s4"])
def test_dt_log_uniform_and_c_complex_normal(name):
    mixer = seqzoo.get_mixer(name, d_model=256, d_state=4)
    params = mixer.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 256)))
    k = params["params"]["kernel"]
    log_dt = np.asarray(k["log_dt"])
    assert log_dt.shape == (256,)
    assert log_dt.min() >= math.log(1e-3) - 1e-6 and log_dt.max() <= math.log(0.1) + 1e-6
    # log-uniform: about a quarter in each quarter of [log 1e-3, log 0.1]
    counts = np.histogram(log_dt, bins=4, range=(math.log(1e-3), math.log(0.1)))[0]
    assert counts.min() > 35
    c = cplx(k["C"])
    assert c.shape == (1, 256, 2)
    assert abs(np.mean(np.abs(c) ** 2) - 1) < 0.15 and abs(np.mean(c)) < 0.1
    assert np.std(c.real) == pytest.approx(np.std(c.imag), rel=0.2)
    d = np.asarray(params["params"]["D"])
    assert d.shape == (1, 256) and 0.8 < d.std() < 1.2  # randn, as the official FFTConv


@pytest.mark.parametrize("kind", ["lin", "inv", "real", "legs"])
def test_s4d_a_b_init(kind):
    _, params, _ = setup_layer("s4d", ssm_init=kind)
    _, a, b, _, _ = ssm_params(params)
    a_ref, b_ref = s4d_init(kind, N)
    np.testing.assert_allclose(a, np.broadcast_to(a_ref, a.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b, np.broadcast_to(b_ref, b.shape), rtol=1e-6, atol=1e-6)
    if kind == "lin":  # S4D-Lin: A_k = -1/2 - i pi k, stored as log(1/2) and pi k
        k = params["params"]["kernel"]
        np.testing.assert_allclose(k["log_A_real"], np.log(0.5), rtol=1e-6)
        np.testing.assert_allclose(k["A_imag"][0], np.pi * np.arange(N // 2), rtol=1e-6)


def test_s4_legs_nplr_init_and_real_part_clamp():
    _, params, _ = setup_layer("s4")
    _, lam, b, _, p = ssm_params(params)
    lam_ref, p_ref, b_ref, _ = nplr("legs", N)
    np.testing.assert_allclose(lam, np.broadcast_to(lam_ref, lam.shape), atol=1e-5)
    np.testing.assert_allclose(p, np.broadcast_to(p_ref[:, None], p.shape), atol=1e-5)
    np.testing.assert_allclose(b, np.broadcast_to(b_ref, b.shape), atol=1e-5)
    assert np.all(lam.real == pytest.approx(-0.5))
    # FouT has Re Lambda = 0: clamped to -1e-4 as the official inv_transform
    _, params, _ = setup_layer("s4", ssm_init="fourier")
    _, lam, _, _, _ = ssm_params(params)
    assert np.all(lam.real <= -1e-4 * (1 - 1e-5))
    assert np.isclose(lam.real, -1e-4, rtol=1e-4).any()


# ---- kernels and outputs ---------------------------------------------------------------------
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_and_output_match_official(disc):
    mixer, params, x = setup_layer("s4d", disc=disc)
    k = kernel_of(mixer, params, LENGTH)
    dt, a, b, c, _ = ssm_params(params)
    assert_close(k, diag_kernel_np(dt, a, b, c, LENGTH, disc), 1e-5, "kernel")
    assert_close(mixer.apply(params, x), official_forward(params, x, k), 1e-5, "output")


@pytest.mark.parametrize("options", [{}, {"ssm_init": "legt", "rank": 2}])
def test_s4_kernel_is_c_abar_powers_bbar(options):
    """The parameter is the plain C: the layer's kernel (through C~) equals C Abar^l Bbar."""
    mixer, params, x = setup_layer("s4", length=24, **options)
    dt, lam, b, c, p = ssm_params(params)
    k = kernel_of(mixer, params, 24)
    assert_close(k, dplr_kernel_np(dt, lam, p, b, c, 24), 1e-4, "kernel")
    assert_close(mixer.apply(params, x), official_forward(params, x, k), 1e-5, "output")
    # a shorter call is the truncation (no length-dependent C~ leaks into the kernel)
    assert_close(kernel_of(mixer, params, 7), k[..., :7], 1e-4, "length 7 vs 24")


def run_steps(mixer, params, x, mask):
    state = mixer.apply(params, x.shape[0], method="init_state")
    _, ys = jax.lax.scan(
        lambda s, xs: mixer.apply(params, s, *xs, method="step"),
        state,
        (jnp.moveaxis(x, 1, 0), mask.T),
    )
    return jnp.moveaxis(ys, 0, 1)


@pytest.mark.parametrize(
    "name, options",
    [
        ("s4", {"ssm_init": "legt", "rank": 2, "channels": 2}),
        ("s4", {"ssm_init": "fourier"}),
        ("s4d", {"ssm_init": "inv", "disc": "bilinear", "channels": 2, "final_act": "id"}),
    ],
)
def test_step_equals_fast_for_options(name, options):
    mixer, params, x = setup_layer(name, **options)
    mask = jnp.ones(x.shape[:2], bool).at[0, 4].set(False).at[1, 8:].set(False)
    fast = mixer.apply(params, x, mask)
    assert_close(run_steps(mixer, params, x, mask), fast, 5e-5, "step")
    assert_close(mixer.apply(params, x, mask, method="dense"), fast, 2e-5, "dense")


@pytest.mark.parametrize("name", ["s4d_bidirectional", "s4_bidirectional"])
def test_bidirectional(name):
    mixer, params, x = setup_layer(name)
    assert not mixer.info.causal and mixer.info.structure == "quasiseparable"
    k = kernel_of(mixer, params, LENGTH)
    assert k.shape == (2, D_MODEL, LENGTH)  # (s c) with s = forward, backward
    assert_close(mixer.apply(params, x), official_forward(params, x, k[:1], k[1:]), 1e-5, name)
    m = np.asarray(mixer.apply(params, x, method="matrix"))[0]  # (H, L, L)
    d = np.asarray(params["params"]["D"])[0]
    np.testing.assert_allclose(m[:, 3, 3], k[0, :, 0] + d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m[:, 3, 4], k[1, :, 0], rtol=1e-5, atol=1e-6)  # kb_0: next token
    np.testing.assert_allclose(m[:, 3, 7], k[1, :, 3], rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match="not causal"):
        mixer.apply(params, None, x[:, 0], method="step")


def test_channels_and_final_act():
    mixer, params, x = setup_layer("s4d", channels=3)
    assert params["params"]["kernel"]["C"].shape == (3, D_MODEL, N // 2, 2)
    assert params["params"]["D"].shape == (3, D_MODEL)
    assert params["params"]["out_proj"]["kernel"].shape == (3 * D_MODEL, 2 * D_MODEL)
    assert mixer.apply(params, x, method="matrix").shape == (2, 3 * D_MODEL, LENGTH, LENGTH)
    assert mixer.apply(params, x).shape == x.shape
    mixer, params, x = setup_layer("s4d", final_act=None, activation="id")
    assert "out_proj" not in params["params"]
    k = kernel_of(mixer, params, LENGTH)[0]
    d = np.asarray(params["params"]["D"])[0]
    y = np.asarray(mixer.apply(params, x))
    ref = sum(k[:, j] * np.asarray(x)[:, 5 - j] for j in range(6)) + d * np.asarray(x)[:, 5]
    np.testing.assert_allclose(y[:, 5], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("s4d", {"d_state": 5}, "d_state"),
        ("s4", {"d_state": 0}, "d_state"),
        ("s4d", {"ssm_init": "legt"}, "ssm_init"),
        ("s4", {"ssm_init": "lin"}, "ssm_init"),
        ("s4", {"ssm_init": "legt", "rank": 1}, "rank"),
        ("s4d", {"disc": "euler"}, "disc"),
        ("s4d", {"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ("s4", {"activation": "softmax"}, "activation"),
        ("s4d", {"final_act": "relu"}, "final_act"),
        ("s4d", {"final_act": None, "channels": 2}, "channels"),
        ("s4d", {"channels": 0}, "channels"),
    ],
)
def test_bad_config(name, options, match):
    with pytest.raises(ValueError, match=match):
        setup_layer(name, length=3, **options)
