"""Checks shared by the Mosaic-TPU kernel tests: every output and gradient compared on its own,
relative L2 errors for bf16 (``rel_l2``, also the contract's and the layers' bf16 tests'), and
lowering for TPU on a CPU machine."""

import jax
import jax.numpy as jnp
import numpy as np


def rel_l2(got, want) -> float:
    """||got - want|| / ||want|| in float64 (complex as is)."""
    got, want = np.asarray(got).astype(np.complex128), np.asarray(want).astype(np.complex128)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def assert_each_close(got: dict, want: dict, **tol) -> None:
    """Every entry of ``got`` against ``want`` (same keys), each with its own message."""
    assert got.keys() == want.keys()
    for name in got:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), **tol,
                                   err_msg=name)


def assert_each_rel_l2(got: dict, want: dict, tol: float) -> None:
    """Every entry's relative L2 error below ``tol``; the message lists them all."""
    assert got.keys() == want.keys()
    errors = {name: rel_l2(got[name], want[name]) for name in got}
    assert all(np.isfinite(e) and e < tol for e in errors.values()), errors


def value_and_grads(fn, inputs: dict, cotangents: tuple):
    """(outputs as {"out", "final_state"}, gradients of sum(outputs * cotangents) w.r.t. every
    input as {name: gradient}); fn(**inputs) -> (out, final state)."""
    def loss(kwargs):
        outs = fn(**kwargs)
        total = sum(jnp.sum(o.astype(c.dtype) * c) for o, c in zip(outs, cotangents, strict=True))
        return jnp.real(total), outs

    (_, (out, last)), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return {"out": out, "final_state": last}, grads


def tpu_kernel_launches(fn, *args) -> int:
    """How many Mosaic kernels ``tpu_custom_call`` the TPU lowering of fn(*args) holds (lowered
    on this machine, whatever its backend)."""
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    return text.count("tpu_custom_call")
