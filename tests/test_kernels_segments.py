"""The chunked kernels on a sequence cut into parallel segments (``segments=``, issue 24).

Pallas interpret mode on CPU: outputs, final states and every gradient (initial state and decays
included) with segments against the kernel without them and the XLA op, each leaf apart (the
split form ``pallas_split`` too); odd lengths; bf16 against the float32 op; causality; bad
counts; lowering for a GPU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqzoo.kernels import launch
from seqzoo.kernels.chunked_pass import chunked_pass
from seqzoo.kernels.chunked_segments import propose_segments, segmented
from seqzoo.ops.linear_attention import linear_attention, pallas_gpu, pallas_gpu_split
from seqzoo.ops.linear_attention.pallas_gpu import auto_segments
from seqzoo.ops.ssd import ssd
from tests.test_kernels_bf16_gradients import TOL, TOL_STEP
from tests.test_kernels_chunked import normal, relative_errors, value_and_grads

F32_TOL = 1e-5
SHAPES = {None: None, "head": (1, 100, 2), "key": (1, 100, 2, 16)}


def inputs(decay, t=100, seed=0, initial=True, strength=0.05):
    """q, k, v (1, t, 2 heads, 16), log decays <= 0 of the kind ``decay`` (``strength`` times
    -softplus(normal): the default keeps states from earlier segments visible), S_0 or None."""
    rng = np.random.default_rng(seed)
    q, k, v = (normal(rng, 1, t, 2, 16) for _ in range(3))
    shape = SHAPES[decay] and (1, t, *SHAPES[decay][2:])
    g = None if shape is None else -strength * jax.nn.softplus(normal(rng, *shape))
    s0 = normal(rng, 1, 2, 16, 16) if initial else None
    cot = (normal(rng, 1, t, 2, 16), normal(rng, 1, 2, 16, 16))
    return (q, k, v, g, s0), cot


def attention(impl, segments, q, k, v, g, s0):
    return linear_attention(q, k, v, log_decay=g, initial_state=s0, return_final_state=True,
                            chunk_size=16, impl=impl, segments=segments)


def assert_each_close(got, want, tol, tol_step=None):
    """Every leaf (output, final state, each gradient) apart below its tolerance."""
    errors = relative_errors(got, want)
    grads = errors[1]
    step = tol if tol_step is None else tol_step
    bad = {name: e for name, e in
           [("o", errors[0][0]), ("S_T", errors[0][1]), ("dq", grads[0]), ("dk", grads[1]),
            ("dv", grads[2]), ("dg", grads[3]), ("dS_0", grads[4])]
           if e is not None and not e < (step if name == "dg" else tol)}
    assert not bad, errors


def check_f32(decay, segments, initial, t=100, against=("pallas", "chunked"), strength=0.05,
              tol=F32_TOL, impl="pallas"):
    """``impl`` with segments against each implementation in ``against`` (no segments),
    float32."""
    args, cot = inputs(decay, t=t, initial=initial, strength=strength)
    got = value_and_grads(partial(attention, impl, segments), args, cot)
    for impl in against:
        assert_each_close(got, value_and_grads(partial(attention, impl, None), args, cot), tol)


def test_segments_equal_the_op():
    """Per-key decays, 3 segments of 34 steps (the last one padded), an initial state."""
    check_f32("key", 3, True, against=("sequential",))


@pytest.mark.parametrize("decay, segments", [("key", 3), ("head", 4), (None, 2)])
def test_split_with_segments_equals_the_op(monkeypatch, decay, segments):
    """``impl="pallas_split"`` (the inter-chunk kernel plus the intra-chunk scores) on
    segments, float32: output, final state and every gradient against the scan; the padded
    last segment (34 steps: two chunks of 16 and a padded one) included."""
    counts = []

    def counted(attention, count):
        counts.append(count)
        return segmented(attention, count)

    monkeypatch.setattr(pallas_gpu_split, "segmented", counted)
    check_f32(decay, segments, True, against=("sequential",), impl="pallas_split")
    assert counts and set(counts) == {segments}  # the launch really ran on segments


def test_split_segments_shorter_than_the_chunk():
    """Segments of 20 steps with ``chunk_size=64``: the launch's chunk is a segment's (32), for
    the inter-chunk kernel and the intra-chunk terms alike; float32 against the scan."""
    args, cot = inputs("key", t=80)

    def run(impl, segments, q, k, v, g, s0):
        return linear_attention(q, k, v, log_decay=g, initial_state=s0, return_final_state=True,
                                chunk_size=64, impl=impl, segments=segments)

    assert_each_close(value_and_grads(partial(run, "pallas_split", 4), args, cot),
                      value_and_grads(partial(run, "sequential", None), args, cot), F32_TOL)


def test_split_with_segments_bf16_against_the_f32_op():
    """bf16 per-key decays: the split's scores and their VJP by the kernels
    (``pallas_gpu_intra.MEASURED``) inside each segment, each gradient apart."""
    check_bf16("key", 3, impl="pallas_split")


@pytest.mark.slow
@pytest.mark.parametrize("initial", [True, False], ids=["S0", "noS0"])
@pytest.mark.parametrize("segments", [2, 3, 4])
@pytest.mark.parametrize("decay", [None, "head", "key"])
def test_segments_every_case(decay, segments, initial):
    check_f32(decay, segments, initial, t=101)


@pytest.mark.slow
@pytest.mark.parametrize("decay", ["head", "key"])
def test_strong_decays_are_finite_and_exact(decay):
    """Log decays of about -20 per step: no inf or NaN, gradients included. The decays'
    gradient of every chunked form (XLA's, the kernel's) is ~1e-5 from the scan's there, so
    the tolerance is ``tests/test_kernels_chunked.py``'s strong-decay one."""
    check_f32(decay, 3, True, against=("sequential",), strength=20.0, tol=1e-4)


def check_bf16(decay, segments, reference="chunked", impl="pallas"):
    """bf16 inputs with segments (``impl``) against the float32 op on the same values, as the
    kernels' bf16 test (``tests/test_kernels_bf16_gradients.py``'s tolerances)."""
    (q, k, v, g, s0), cot = inputs(decay, t=100, seed=1)
    low = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    got = value_and_grads(partial(attention, impl, segments), (*low, g, s0), cot)
    want = value_and_grads(partial(attention, reference, None),
                           (*(a.astype(jnp.float32) for a in low), g, s0), cot)
    assert got[0][0].dtype == jnp.bfloat16
    assert_each_close(got, want, TOL, TOL_STEP)


def test_bf16_against_the_f32_op():
    check_bf16("head", 4, "sequential")


@pytest.mark.slow
@pytest.mark.parametrize("decay, segments", [(None, 2), ("key", 3), ("head", 3)])
def test_bf16_every_decay(decay, segments):
    check_bf16(decay, segments)


@pytest.mark.parametrize("decay", [None, "key"])
def test_bf16_segments_round_gradients_once(monkeypatch, decay):
    """bf16 dq, dk, dv with segments as close to the float32 op as the kernel's without them
    (within 1.15x each): the launch's gradients stay float32 until the correction's float32
    ones join them, each rounded once. (Rounded apart, as before, dq came out 1.2x-1.4x the
    kernel's error.) Every pass still reads bf16 inputs."""
    read = set()

    def recorded(q, k, v, *args, **kwargs):
        read.update(x.dtype for x in (q, k, v))
        return chunked_pass(q, k, v, *args, **kwargs)

    monkeypatch.setattr(pallas_gpu, "chunked_pass", recorded)
    (q, k, v, g, s0), cot = inputs(decay, t=100, seed=1)
    low = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    want = value_and_grads(partial(attention, "chunked", None),
                           (*(a.astype(jnp.float32) for a in low), g, s0), cot)
    errors = {}
    for segments in (None, 3):
        _, grads = relative_errors(
            value_and_grads(partial(attention, "pallas", segments), (*low, g, s0), cot), want)
        errors[segments] = dict(dq=grads[0], dk=grads[1], dv=grads[2])
    worse = {name: (errors[3][name], e) for name, e in errors[None].items()
             if not errors[3][name] <= 1.15 * e}
    assert not worse, errors
    assert read == {jnp.dtype(jnp.bfloat16)}


def test_causal_across_segments():
    """Perturbing steps >= 60 (segments of 25: inside the third) leaves o_{<60} unchanged."""
    (q, k, v, g, s0), _ = inputs("key")
    run = jax.jit(lambda *a: attention("pallas", 4, *a)[0])
    o = run(q, k, v, g, s0)
    bump = jnp.zeros_like(v).at[:, 60:].set(5.0)
    o2 = run(q + bump, k - bump, v + bump, g.at[:, 60:].add(-1.0), s0)
    np.testing.assert_array_equal(np.asarray(o[:, :60]), np.asarray(o2[:, :60]))
    assert not np.allclose(o[:, 60:], o2[:, 60:])


@pytest.mark.parametrize("segments, impl, match", [
    (0, "pallas", "positive int"), (2.0, "pallas", "positive int"), (True, "pallas", "positive"),
    (101, "pallas", "exceeds the sequence length 100"), (2, "chunked", "impl='chunked'"),
    (2, "parallel", "impl='parallel'"),
])
def test_bad_segments_say_why(segments, impl, match):
    (q, k, v, *_), _ = inputs(None, initial=False)
    with pytest.raises(ValueError, match=match):
        linear_attention(q, k, v, impl=impl, segments=segments)


def test_ssd_with_segments_matches_the_scan():
    """Mamba-2 (groups, key scale dt, D, initial and final state) with 3 segments."""
    rng = np.random.default_rng(3)
    b, t, h, p, n = 1, 45, 4, 16, 16
    args = (normal(rng, b, t, h, p), normal(rng, b, t, h) - 1.0, -0.1 * jnp.exp(normal(rng, h)),
            normal(rng, b, t, 2, n), normal(rng, b, t, 2, n), normal(rng, b, h, p, n))

    def run(impl, segments, x, dt, A, B, C, s0):
        return ssd(x, dt, A, B, C, D=jnp.ones((h,)), initial_state=s0, dt_softplus=True,
                   chunk_size=16, return_final_state=True, impl=impl, segments=segments)

    cot = (normal(rng, b, t, h, p), normal(rng, b, h, p, n))
    got = value_and_grads(partial(run, "pallas", 3), args, cot)
    want = value_and_grads(partial(run, "sequential", None), args, cot)
    errors = jax.tree.leaves(relative_errors(got, want))
    assert max(errors) < F32_TOL, errors


TRITON_CALL, MOSAIC_CALL = "custom_call @__gpu$xla.gpu.triton", "tpu_custom_call"


def launches_with_segments(impl, decay, platform, call) -> tuple[int, int]:
    """How many kernel calls ``impl`` on 4 segments lowers to for ``platform``, bf16 inputs with
    ``decay``: (forward, forward and gradient)."""
    (q, k, v, g, s0), _ = inputs(decay, initial=True)
    low = [a.astype(jnp.bfloat16) for a in (q, k, v)]

    def loss(q, k, v, g, s0):
        o, s = attention(impl, 4, q, k, v, g, s0)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    def launches(f):
        lowered = jax.jit(f).trace(*low, g, s0).lower(lowering_platforms=(platform,))
        return lowered.as_text().count(call)

    return launches(loss), launches(jax.grad(loss, range(5)))


@pytest.mark.parametrize("platform, call", [("cuda", TRITON_CALL), ("tpu", MOSAIC_CALL)])
def test_lowers_for_a_gpu_and_a_tpu_on_this_machine(monkeypatch, platform, call):
    """Forward and gradient with segments lower for CUDA (the kernels as Triton calls, as a GPU
    would build them, not interpreted) and for a TPU (Mosaic) here: one launch forward, three
    more backward."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    assert launches_with_segments("pallas", "head", platform, call) == (1, 4)


def test_the_split_with_segments_lowers_for_a_gpu(monkeypatch):
    """bf16 per-key decays, ``impl="pallas_split"`` on 4 segments, lowered for CUDA: the
    chunk-local sums', the inter-chunk, the scores' and the ``A v`` kernels forward; the
    gradient (the loss's value unused: no ``A v``) adds the three passes and the scores' VJP
    kernel."""
    monkeypatch.setattr(launch, "kernels_compiled", lambda: True)
    assert launches_with_segments("pallas_split", "key", "cuda", TRITON_CALL) == (4, 7)


def test_proposed_segments():
    """At most two programs per SM, each segment >= 4 chunks, 1 where the SMs are unknown."""
    assert propose_segments(2, 4, 32768, 1, sm_count=132) == 32  # 8 programs -> 256 <= 264
    assert propose_segments(1, 2, 65536, 2, sm_count=132) == 64  # 4 -> 256
    assert propose_segments(2, 4, 32768, 1, sm_count=None) == 1
    assert propose_segments(4, 64, 4096, 2, sm_count=132) == 1  # 512 programs already
    assert propose_segments(2, 4, 1024, 1, sm_count=132) == 4  # capped: 4 chunks of 64 each


def test_auto_segments_only_where_a_launch_would_leave_most_of_the_gpu_idle():
    assert auto_segments(2, 4, 32768, 64, sm_count=132) == 32  # measured best: 3.8x no segments
    assert auto_segments(1, 2, 65536, 128, sm_count=132) == 64  # two value blocks of 64
    assert auto_segments(4, 16, 2048, 128, sm_count=132) is None  # 128 programs: 2 proposed
    assert auto_segments(8, 8, 1024, 64, sm_count=132) is None  # capped at 4 segments
    assert auto_segments(2, 4, 32768, 64, sm_count=None) is None  # no GPU


def test_auto_hands_its_segments_to_the_gpu_kernel_and_an_explicit_count_wins(monkeypatch):
    """``impl="auto"`` on a (faked) GPU: the kernel is called with ``auto_segments``' count; an
    explicit ``segments`` and an explicit ``impl="pallas"`` are passed as given."""
    seen = []

    def kernel(q, k, v, log_decay, *, segments=None, **_):
        seen.append(segments)
        b, _, h, dk = q.shape
        return jnp.zeros_like(v), jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)

    monkeypatch.setattr(pallas_gpu, "linear_attention_kernel", kernel)
    monkeypatch.setattr(pallas_gpu, "device_sm_count", lambda: 132)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q = jnp.zeros((2, 4096, 4, 64), jnp.bfloat16)
    for impl, segments in (("auto", None), ("pallas", None), ("auto", 2)):
        linear_attention(q, q, q, impl=impl, segments=segments, chunk_size=64)
    assert seen == [16, None, 2]  # 8 programs: 16 segments of 4 chunks (the cap)
