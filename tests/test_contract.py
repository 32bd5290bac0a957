"""The matrix-mixer contract, checked for every registered mixer (no per-mixer code here).

For each mixer, and the ``bi:`` wrapper of each causal one: fast == dense (M v) == recurrent step,
outputs and gradients; causality; padding (values at pads never matter, right padding gives the
shorter sequence, and left padding too for causal mixers); jit / vmap / grad; bf16; odd lengths;
clear errors on bad input (integer inputs included).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tpu_checks import rel_l2

import seqzoo
from seqzoo.layers.base import keep_where
from seqzoo.registry import mixer_entry

D_MODEL = 8
BATCH = 2
PLAIN = seqzoo.list_mixers()
BIDIRECTIONAL_WRAPPED = [f"bi:{n}" for n in PLAIN if seqzoo.mixer_info(n).causal]
NAMES = PLAIN + BIDIRECTIONAL_WRAPPED


@functools.cache
def build(name: str):
    entry = mixer_entry(name.removeprefix("bi:"))
    return seqzoo.get_mixer(name, d_model=D_MODEL, **entry.test_config)


def info(name: str):
    mixer = build(name)
    return mixer.info


# The bi: wrapper is one code path (flips and a sum around two copies of its inner mixer, whose own
# row checks every gradient, packed sequences and the left padding the wrapper relies on): its
# gradients, jit / vmap / grad and packed sequences run by default for a few inner mixers, one of
# each kind of state (KV cache, conv + selective scan, chunked SSD, matrix transitions, routed
# memories, a nonlinear RNN, an LTI convolution); for the others with -m slow. Every wrapper's
# outputs, padding and errors stay in the default suite.
BI_DEFAULT = {"bi:attention", "bi:mamba", "bi:mamba2", "bi:delta_net", "bi:mom", "bi:lstm", "bi:s4"}
assert BI_DEFAULT <= set(BIDIRECTIONAL_WRAPPED), BI_DEFAULT - set(BIDIRECTIONAL_WRAPPED)


def rows(names, slow=frozenset()):
    """``names`` as pytest params, each in its mixer's xdist group: under ``--dist loadgroup``
    (pyproject's addopts) one worker runs a mixer's whole row, so the jitted functions cached
    below compile once (spread over the workers, each worker compiled them again); those in
    ``slow`` marked slow."""
    return [pytest.param(n, marks=[pytest.mark.xdist_group(n)] + [pytest.mark.slow] * (n in slow))
            for n in names]


def bi_default_only(names):
    """rows(names), the bi: wrappers outside BI_DEFAULT marked slow."""
    return rows(names, slow=set(BIDIRECTIONAL_WRAPPED) - BI_DEFAULT)


def with_matrix(names):
    return [n for n in names if info(n).has_matrix]


def causal(names):
    return [n for n in names if info(n).causal]


def inputs(length: int, seed: int = 0, holes: bool = True):
    """x: (BATCH, length, D_MODEL) and a mask with right padding and, if asked, a hole."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (BATCH, length, D_MODEL))
    mask = np.ones((BATCH, length), bool)
    if length > 3:
        mask[1, -(length // 3) :] = False  # right padding
        if holes:
            mask[0, length // 2] = False  # a hole in the middle
    return x, jnp.asarray(mask)


@functools.cache
def _jitted_init(mixer):
    return jax.jit(mixer.init)


def init(mixer, x):
    """Parameters for inputs shaped like x. Flax's init runs the forward pass: jitted, one compile
    per shape (eagerly, op by op, about 4x that on a new shape)."""
    return _jitted_init(mixer)(jax.random.PRNGKey(42), x)


def run_steps(mixer, params, x, mask, starts=None):
    """The recurrent path under lax.scan: (BATCH, length, D) -> (BATCH, length, D); with
    ``starts`` (BATCH, length) bool, the state is reset to ``init_state`` where it is True."""
    init_state = mixer.apply(params, x.shape[0], method="init_state")
    starts = jnp.zeros(mask.shape, bool) if starts is None else starts

    def body(s, xs):
        x_t, m_t, start = xs
        return mixer.apply(params, keep_where(start, init_state, s), x_t, m_t, method="step")

    _, ys = jax.lax.scan(body, init_state, (jnp.moveaxis(x, 1, 0), mask.T, starts.T))
    return jnp.moveaxis(ys, 0, 1)


@functools.cache
def paths(name):
    """The paths a mixer offers, each a jitted function (params, x, mask) -> y.

    Cached per mixer so that every test reuses the compiled functions (shapes permitting).
    """
    mixer = build(name)
    out = {"fast": lambda p, x, mask: mixer.apply(p, x, mask)}
    if info(name).has_matrix:
        out["dense"] = lambda p, x, mask: mixer.apply(p, x, mask, method="dense")
    if info(name).causal:
        out["step"] = functools.partial(run_steps, mixer)
    return {k: jax.jit(f) for k, f in out.items()}


@functools.cache
def matrix_of(name):
    """Jitted ``(params, x, mask) -> M: (BATCH, heads, length, length)``."""
    mixer = build(name)
    return jax.jit(lambda p, x, mask: mixer.apply(p, x, mask, method="matrix"))


@functools.cache
def path_grads(name):
    """Jitted gradients (params, x, mask, cotangent) -> (d params, d x) of every path."""

    def grad_of(f):
        return jax.jit(jax.grad(lambda p, x, mask, cot: jnp.sum(f(p, x, mask) * cot), (0, 1)))

    return {k: grad_of(f) for k, f in paths(name).items()}


def assert_close(a, b, tol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} * {scale:.3g}"


# odd lengths for the mixers themselves (13: the length the other tests compile for, 3 chunks and
# a part where test_config sets chunk_size or block_size 4; 130: past the defaults' chunks); the
# wrappers at 13
PATH_CASES = [(n, length) for n in PLAIN for length in (1, 13, 130)]
PATH_CASES += [(n, 13) for n in BIDIRECTIONAL_WRAPPED]
PATH_CASES = [pytest.param(*case, marks=pytest.mark.xdist_group(case[0])) for case in PATH_CASES]


@pytest.mark.parametrize("name,length", PATH_CASES)
def test_paths_agree(name, length):
    mixer = build(name)
    x, mask = inputs(length)
    params = init(mixer, x)
    outs = {k: f(params, x, mask) for k, f in paths(name).items()}
    for k, y in outs.items():
        assert y.shape == x.shape, k
        assert_close(y, outs["fast"], 2e-5, f"{name}: {k} vs fast")
    assert float(jnp.abs(outs["fast"]).max()) > 0, "output is identically zero"


@pytest.mark.parametrize("name", bi_default_only(NAMES))
def test_gradients_agree(name):
    mixer = build(name)
    x, mask = inputs(13, seed=1)
    params = init(mixer, x)
    cot = jax.random.normal(jax.random.PRNGKey(7), x.shape)
    grads = {k: g(params, x, mask, cot) for k, g in path_grads(name).items()}
    ref_leaves = jax.tree_util.tree_leaves(grads["fast"])
    assert any(float(jnp.abs(g).max()) > 0 for g in ref_leaves), "all gradients are zero"
    for k, g in grads.items():
        for a, b in zip(jax.tree_util.tree_leaves(g), ref_leaves, strict=True):
            assert np.all(np.isfinite(np.asarray(a))), f"{name}: {k} gradient not finite"
            assert_close(a, b, 1e-4, f"{name}: {k} gradient vs fast")


@pytest.mark.parametrize("name", rows(causal(NAMES)))
def test_causality(name):
    mixer = build(name)
    x, _ = inputs(13, seed=2)
    ones = jnp.ones(x.shape[:2], bool)
    params = init(mixer, x)
    t = 5
    x2 = x.at[:, t + 1 :].add(jax.random.normal(jax.random.PRNGKey(3), x[:, t + 1 :].shape))
    fast = paths(name)["fast"]
    y1, y2 = fast(params, x, ones), fast(params, x2, ones)
    assert_close(y2[:, : t + 1], y1[:, : t + 1], 1e-6, f"{name}: future leaked into the past")
    assert float(jnp.abs(y2[:, t + 1 :] - y1[:, t + 1 :]).max()) > 1e-4, "future has no effect"
    if info(name).has_matrix:
        m = matrix_of(name)(params, x, ones)
        assert float(jnp.abs(jnp.triu(m, k=1)).max()) == 0.0, f"{name}: M is not lower triangular"


@pytest.mark.parametrize("name", rows(NAMES))
def test_padding_invariance(name):
    mixer = build(name)
    x, mask = inputs(13, seed=4)
    params = init(mixer, x)
    garbage = jax.random.normal(jax.random.PRNGKey(5), x.shape) * 10
    x_garbage = jnp.where(mask[..., None], x, garbage)
    for k, f in paths(name).items():
        y, y_garbage = f(params, x, mask), f(params, x_garbage, mask)
        valid = np.asarray(mask)
        assert_close(
            np.asarray(y_garbage)[valid], np.asarray(y)[valid], 1e-5, f"{name}: {k} pads leak"
        )
        assert float(jnp.abs(jnp.where(mask[..., None], 0.0, y)).max()) == 0.0, (
            f"{name}: {k} output at padded positions is not zero"
        )


@pytest.mark.parametrize("name", rows(NAMES))
def test_padding_equals_shorter_sequence(name):
    """Right padding (5 pads of any values) gives exactly the 8 valid tokens' outputs; for causal
    mixers left padding does too (leading pads are no-ops: ``bi:`` relies on it)."""
    mixer = build(name)
    x, _ = inputs(13, seed=6)
    params = init(mixer, x)
    fast = paths(name)["fast"]
    short = x[:, :8]
    y_short = fast(params, short, jnp.ones((BATCH, 8), bool))
    pads = 10 * jax.random.normal(jax.random.PRNGKey(7), (BATCH, 5, D_MODEL))
    right = jnp.arange(13) < 8
    y = fast(params, jnp.concatenate([short, pads], 1), jnp.broadcast_to(right, (BATCH, 13)))
    assert_close(y[:, :8], y_short, 1e-5, f"{name}: right padding")
    if info(name).causal:
        left = jnp.arange(13) >= 5
        y = fast(params, jnp.concatenate([pads, short], 1), jnp.broadcast_to(left, (BATCH, 13)))
        assert_close(y[:, 5:], y_short, 1e-5, f"{name}: left padding")


@pytest.mark.parametrize("name", bi_default_only(NAMES))
def test_jit_vmap_grad(name):
    mixer = build(name)
    x, mask = inputs(13, seed=8)
    params = init(mixer, x)
    y = mixer.apply(params, x, mask)  # eager: the contract's one run op by op
    assert_close(paths(name)["fast"](params, x, mask), y, 1e-5, f"{name}: jit")
    # vmap over an outer axis: each slice is a batch of one
    y_vmap = jax.jit(jax.vmap(lambda xx, mm: mixer.apply(params, xx[None], mm[None])[0]))(x, mask)
    assert_close(y_vmap, y, 1e-5, f"{name}: vmap")
    # d sum(y^2) / d params: the cotangent 2 y through the gradient test's compiled function
    g, _ = path_grads(name)["fast"](params, x, mask, 2 * y)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(g))


# the wrappers' bf16 runs add a tenth to the suite and nothing dtype-specific beyond their inner
# mixers' (flips and a sum): slow
BF16_CASES = rows(NAMES, slow=set(BIDIRECTIONAL_WRAPPED))


@pytest.mark.parametrize("name", BF16_CASES)
def test_bf16_inputs(name):
    """bf16 inputs, ``dtype=None`` (f32 parameters, so flax projects in f32): finite forward
    (within 5e-2 of f32, relative to scale) and finite backward. bf16 compute:
    ``test_bf16_compute``."""
    mixer = build(name)
    x, mask = inputs(13, seed=9)
    params = init(mixer, x)
    fast = paths(name)["fast"]
    y32 = fast(params, x, mask)
    y16 = fast(params, x.astype(jnp.bfloat16), mask)
    assert y16.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(y16.astype(jnp.float32))))
    assert_close(y16.astype(jnp.float32), y32, 5e-2, f"{name}: bf16 vs f32")
    cot = jnp.ones(x.shape, jnp.bfloat16)
    g_params, g_x = path_grads(name)["fast"](params, x.astype(jnp.bfloat16), mask, cot)
    assert g_x.dtype == jnp.bfloat16
    for g in [g_x, *jax.tree_util.tree_leaves(g_params)]:
        assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))), f"{name}: bf16 backward"


@pytest.mark.slow  # about 5 s of compiling per mixer
@pytest.mark.parametrize("name", rows(PLAIN))
def test_bf16_compute(name):
    """``dtype=bf16`` (bf16 projections, as in a bf16 model) against the float32 mixer with the
    same parameters: the output within 3e-2 and each gradient (the input's and every
    parameter's, apart) within 6e-2 relative L2 at length 13. Measured on 2026-12-05: outputs
    1.9e-3 to 1.6e-2, gradients up to 4.3e-2 (tcnca's relative position bias), most below 2e-2."""
    cfg = mixer_entry(name).test_config
    mixers = {t: seqzoo.get_mixer(name, d_model=D_MODEL, dtype=t, **cfg)
              for t in (jnp.float32, jnp.bfloat16)}
    x, mask = inputs(13, seed=9)
    params = init(mixers[jnp.float32], x)
    cot = jax.random.normal(jax.random.PRNGKey(3), x.shape)

    def value_and_grads(mixer, x):
        def loss(p, x):
            return jnp.sum(mixer.apply(p, x, mask).astype(jnp.float32) * cot)

        return jax.jit(lambda p, x: (mixer.apply(p, x, mask), jax.grad(loss, (0, 1))(p, x)))(
            params, x)

    y32, (gp32, gx32) = value_and_grads(mixers[jnp.float32], x)
    y16, (gp16, gx16) = value_and_grads(mixers[jnp.bfloat16], x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel_l2(y16, y32) <= 3e-2, f"{name}: output {rel_l2(y16, y32):.2e}"
    assert rel_l2(gx16, gx32) <= 6e-2, f"{name}: d x {rel_l2(gx16, gx32):.2e}"
    leaves16 = jax.tree_util.tree_flatten_with_path(gp16)[0]
    for (path, g16), g32 in zip(leaves16, jax.tree_util.tree_leaves(gp32), strict=True):
        assert g16.dtype == jnp.float32, f"{name}: {jax.tree_util.keystr(path)} not float32"
        err = rel_l2(g16, g32)
        assert err <= 6e-2, f"{name}: d {jax.tree_util.keystr(path)} {err:.2e}"


@pytest.mark.parametrize("name", rows(NAMES))
def test_bad_input(name):
    mixer = build(name)
    x, mask = inputs(13)
    params = init(mixer, x)
    with pytest.raises(ValueError, match="rank"):
        mixer.apply(params, x[0])
    with pytest.raises(ValueError, match="d_model"):
        mixer.apply(params, jnp.zeros((BATCH, 13, D_MODEL + 1)))
    with pytest.raises(ValueError, match="mask"):
        mixer.apply(params, x, mask[:, :-1])
    bound = info(name).max_length_attr
    if bound is not None:
        too_long = mixer.length_limit() + 1
        with pytest.raises(ValueError, match=bound):
            mixer.apply(params, jnp.zeros((BATCH, too_long, D_MODEL)))
    refused = f"mixer '{re.escape(name)}' needs floating inputs, got x of dtype %s.*embed"
    for dtype in (jnp.int32, bool):
        with pytest.raises(TypeError, match=refused % jnp.dtype(dtype).name):
            mixer.apply(params, jnp.ones((BATCH, 13, D_MODEL), dtype))
    if info(name).causal:
        state = mixer.apply(params, BATCH, method="init_state")
        with pytest.raises(ValueError, match="x_t"):
            mixer.apply(params, state, x, method="step")
        with pytest.raises(TypeError, match=(refused % "int32").replace(" x ", " x_t ")):
            mixer.apply(params, state, jnp.ones((BATCH, D_MODEL), jnp.int32), method="step")
    else:
        with pytest.raises(NotImplementedError, match="not causal"):
            mixer.apply(params, BATCH, method="init_state")


@pytest.mark.parametrize("name", rows(with_matrix(NAMES)))
def test_matrix_shape_and_structure_name(name):
    mixer = build(name)
    x, mask = inputs(13)
    params = init(mixer, x)
    m = matrix_of(name)(params, x, mask)
    assert m.ndim == 4 and m.shape[0] == BATCH and m.shape[2:] == (13, 13)
    # padded columns carry no weight
    assert float(jnp.abs(jnp.where(mask[:, None, None, :], 0.0, m)).max()) == 0.0


def test_registry_metadata_and_errors():
    from seqzoo.layers.base import STRUCTURES

    assert len(seqzoo.list_mixers()) >= 4
    for name in seqzoo.list_mixers():
        i = seqzoo.mixer_info(name)
        assert i.structure in STRUCTURES and i.cost and i.paper
    with pytest.raises(ValueError, match="registered mixers"):
        seqzoo.get_mixer("no_such_mixer", d_model=8)
    with pytest.raises(ValueError, match="unknown option"):
        seqzoo.get_mixer("linear_attention", d_model=8, not_an_option=1)


def segmented(names):
    return [n for n in names if info(n).segments]


SEGMENTS = np.array(
    [[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3]]
)


@pytest.mark.parametrize("name", bi_default_only(segmented(NAMES)))
def test_segment_ids_reset_at_segment_starts(name):
    """Packed sequences: each segment's output equals that segment run alone; dense agrees, and
    the recurrent path with its state reset at segment starts agrees.

    A segment "alone" is its tokens at the start of a row of the same length 13, the rest padding
    (right padding gives the shorter sequence: ``test_padding_equals_shorter_sequence``), run
    through the cached jitted fast path two rows at a time: no compile per segment length."""
    mixer = build(name)
    x, mask = inputs(13, seed=11, holes=False)
    seg = jnp.asarray(SEGMENTS)
    params = init(mixer, x)
    y = jax.jit(lambda p, x, mask, seg: mixer.apply(p, x, mask, seg))(params, x, mask, seg)
    pieces = [(b, np.nonzero(SEGMENTS[b] == s)[0]) for b in range(BATCH)
              for s in np.unique(SEGMENTS[b])]
    fast = paths(name)["fast"]
    for first in range(0, len(pieces), BATCH):
        group = pieces[first : first + BATCH]
        group += [group[-1]] * (BATCH - len(group))  # a full batch: the compiled shape
        alone_x = np.zeros(x.shape, np.float32)
        alone_mask = np.zeros(mask.shape, bool)
        for row, (b, idx) in enumerate(group):
            alone_x[row, : len(idx)] = x[b, idx]
            alone_mask[row, : len(idx)] = mask[b, idx]
        alone = fast(params, jnp.asarray(alone_x), jnp.asarray(alone_mask))
        for row, (b, idx) in enumerate(group):
            assert_close(y[b, idx], alone[row, : len(idx)], 2e-5,
                         f"{name}: segment {SEGMENTS[b, idx[0]]} of row {b}")
    if info(name).has_matrix:
        dense = jax.jit(lambda p, x, mask, seg: mixer.apply(p, x, mask, seg, method="dense"))
        assert_close(dense(params, x, mask, seg), y, 2e-5, f"{name} dense")
    if info(name).causal:
        starts = jnp.asarray(np.diff(SEGMENTS, axis=1, prepend=-1) != 0)

        steps_with_resets = jax.jit(functools.partial(run_steps, mixer))
        assert_close(steps_with_resets(params, x, mask, starts), y, 2e-5,
                     f"{name}: step with resets")


@pytest.mark.parametrize("name", rows([n for n in NAMES if not info(n).segments][:1]))
def test_segment_ids_refused_where_unsupported(name):
    mixer = build(name)
    x, mask = inputs(5)
    params = init(mixer, x)
    with pytest.raises(ValueError, match="segment_ids"):
        mixer.apply(params, x, mask, jnp.zeros((BATCH, 5), jnp.int32))
