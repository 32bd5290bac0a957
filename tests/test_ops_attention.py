"""Softmax attention ops against a per-query softmax loop written from the definitions.

The reference lists each query's allowed keys one by one (positions counted over valid tokens;
causal p_j <= p_i; window p_i - p_j < w, or |p_i - p_j| < w bidirectional; sinks p_j < S), takes a
softmax over them and sums the values of the query head's kv head.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from seqzoo.ops import attention as ops
from seqzoo.ops import lean_grad

B, L, H, D = 2, 7, 4, 4
PATTERNS = [(None, 0), (3, 0), (2, 2)]  # (window, num_sinks)
OPTS = ("causal", "window", "num_sinks", "scale", "impl")
dot_product_attention = jax.jit(ops.dot_product_attention, static_argnames=OPTS)
attention_matrix = jax.jit(ops.attention_matrix, static_argnames=OPTS[:-1])


def reference_allowed(mask, length, *, causal, window=None, num_sinks=0):
    """The allowed pairs ``(b, l, l)``, listed query by query from the definitions."""
    valid = np.ones((B, length), bool) if mask is None else np.asarray(mask)
    allowed = np.zeros((len(valid), length, length), bool)
    for n in range(len(valid)):
        positions = np.cumsum(valid[n]) - 1
        for i in range(length):
            for j in range(length):
                pi, pj = positions[i], positions[j]
                if not (valid[n, i] and valid[n, j]) or (causal and pj > pi):
                    continue
                near = window is None or (pi - pj < window if causal else abs(pi - pj) < window)
                allowed[n, i, j] = near or pj < num_sinks
    return allowed


def reference_attention(q, k, v, allowed):
    """``(o: (b, l, h, d), P: (b, h, l, l))`` in float64, one softmax per (batch, query, head)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, l, h, d = q.shape
    group = h // k.shape[2]
    o, p = np.zeros(q.shape), np.zeros((b, h, l, l))
    for n, i, head in np.ndindex(b, l, h):
        keys = np.flatnonzero(allowed[n, i])
        if len(keys):
            s = k[n, keys, head // group] @ q[n, i, head] / np.sqrt(d)
            w = np.exp(s - s.max())
            p[n, head, i, keys] = w / w.sum()
            o[n, i, head] = p[n, head, i, keys] @ v[n, keys, head // group]
    return o, p


def qkv(seed, kv_heads=2, length=L):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (B, length, H, D))
    k = jax.random.normal(keys[1], (B, length, kv_heads, D))
    v = jax.random.normal(keys[2], (B, length, kv_heads, D))
    return q, k, v


def holes(length=L):
    """Row 0: a hole in the middle and at the start; row 1: right padding."""
    mask = np.ones((B, length), bool)
    mask[0, [0, 3]] = False
    mask[1, -2:] = False
    return jnp.asarray(mask)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("window,num_sinks", PATTERNS)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference(causal, window, num_sinks, masked):
    q, k, v = qkv(0)
    mask = holes() if masked else None
    opts = dict(causal=causal, window=window, num_sinks=num_sinks)
    o_ref, p_ref = reference_attention(q, k, v, reference_allowed(mask, L, **opts))
    o = ops.dot_product_attention(q, k, v, mask=mask, **opts)  # eager: cheaper than 12 compiles
    p = ops.attention_matrix(q, k, mask=mask, **opts)
    np.testing.assert_allclose(o, o_ref, atol=1e-5)
    np.testing.assert_allclose(p, p_ref, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_grouped_query_heads(kv_heads):
    q, k, v = qkv(1, kv_heads)
    mask = holes()
    allowed = reference_allowed(mask, L, causal=True, window=3)
    o_ref, _ = reference_attention(q, k, v, allowed)
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, causal=True, window=3, mask=mask), o_ref, atol=1e-5
    )
    # kv head g serves query heads g * group ... (g + 1) * group - 1, like repeat_kv
    o_rep = dot_product_attention(q, ops.repeat_kv(k, H), ops.repeat_kv(v, H), causal=True)
    np.testing.assert_allclose(dot_product_attention(q, k, v, causal=True), o_rep, atol=1e-6)


@pytest.mark.parametrize("causal,window,num_sinks", [(True, 3, 1), (False, 2, 0)])
def test_gradients_by_finite_differences(causal, window, num_sinks):
    """(The dense path's gradients equal these by the contract suite.)"""
    q, k, v = qkv(2, length=6)
    opts = dict(causal=causal, window=window, num_sinks=num_sinks, mask=holes(6))
    check_grads(partial(dot_product_attention, **opts), (q, k, v), 1, ["rev"], atol=1e-2, rtol=1e-2)


def test_lean_dense_gradients_equal_autodiff_over_several_row_blocks():
    """``xla.lean_dense`` (scores one block of rows at a time, recomputed backwards) against
    autodiff through ``xla.dense``: the output and the gradient of q, k and v separately, with
    padding, over 6 rows in blocks of one row (``BLOCK_ELEMENTS`` below one row's scores)."""
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    q = jax.random.normal(keys[0], (6, L, H, D))
    k, v = (jax.random.normal(key, (6, L, 2, D)) for key in keys[1:3])
    mask = jnp.arange(L)[None, :] < jnp.array([7, 5, 1, 7, 3, 6])[:, None]
    weights = jax.random.normal(keys[3], q.shape)
    opts = dict(causal=True, window=None, num_sinks=1, mask=mask, segment_ids=None, scale=None)

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, **opts)) * weights)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lean_grad, "BLOCK_ELEMENTS", 1)
        lean = partial(ops.xla.lean_dense)
        np.testing.assert_allclose(lean(q, k, v, **opts), ops.xla.dense(q, k, v, **opts),
                                   rtol=1e-6, atol=1e-6)
        got = jax.grad(loss(lean), (0, 1, 2))(q, k, v)
    want = jax.grad(loss(ops.xla.dense), (0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(want[1]))) > 1e-2  # gradients that can differ


def test_padded_rows_are_zero_without_nan():
    q, k, v = qkv(4)
    mask = holes().at[1].set(False)  # a fully padded sequence too
    o = dot_product_attention(q, k, v, causal=True, window=2, num_sinks=1, mask=mask)
    p = attention_matrix(q, k, causal=False, mask=mask)
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(p))
    assert float(jnp.abs(jnp.where(mask[..., None, None], 0.0, o)).max()) == 0.0
    row_sums = np.asarray(p.sum(-1))  # (b, h, l): 1 on valid queries, 0 on padded ones
    np.testing.assert_allclose(row_sums, np.broadcast_to(mask[:, None], row_sums.shape), atol=1e-6)
    grads = jax.grad(
        lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, mask=mask) ** 2)
        + jnp.sum(attention_matrix(q, k, causal=True, window=2, mask=mask) ** 2),
        argnums=(0, 1, 2),
    )(q, k, v)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_attention_mask_by_hand():
    pos = jnp.arange(6)
    allowed = ops.attention_mask(pos, pos, causal=True, window=2, num_sinks=1)
    expected = np.array(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 0, 1, 1, 0, 0],
            [1, 0, 0, 1, 1, 0],
            [1, 0, 0, 0, 1, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(allowed, expected)
    sym = ops.attention_mask(pos, pos, causal=False, window=2, num_sinks=1)
    i, j = np.indices((6, 6))
    np.testing.assert_array_equal(sym, (abs(i - j) < 2) | (j == 0))
    valid = jnp.array([True, False, True, True, True, True])
    masked = ops.attention_mask(pos, pos, causal=True, q_valid=valid, k_valid=valid)
    np.testing.assert_array_equal(masked, np.tril(np.ones((6, 6), bool)) & valid & valid[:, None])
    np.testing.assert_array_equal(ops.valid_positions(valid), [0, 0, 1, 2, 3, 4])


def test_bfloat16_close_to_float32():
    q, k, v = qkv(5)
    mask = holes()
    o32 = dot_product_attention(q, k, v, causal=True, window=3, mask=mask)
    lo = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    o16 = dot_product_attention(*lo, causal=True, window=3, mask=mask)
    assert o16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(o16, np.float32), o32, atol=5e-2)


def test_bad_input():
    q, k, v = qkv(6, kv_heads=3)
    with pytest.raises(ValueError, match="kv heads"):
        ops.dot_product_attention(q, k, v)
    q, k, v = qkv(6)
    for kwargs, name in [
        (dict(window=0), "window"),
        (dict(window=2.5), "window"),
        (dict(num_sinks=-1, window=2), "num_sinks"),
        (dict(num_sinks=2), "num_sinks"),
        (dict(impl="flash"), "impl"),
    ]:
        with pytest.raises(ValueError, match=name):
            ops.dot_product_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="window"):
        ops.attention_matrix(q, k, window=-1)
    with pytest.raises(ValueError, match="rank"):
        ops.dot_product_attention(q[0], k, v)


def test_segment_positions_restart_per_run_and_skip_padding():
    from seqzoo.ops.attention import segment_positions
    from seqzoo.ops.segments import segment_runs

    seg = jnp.array([[0, 0, 0, 1, 1, 0, 0]])
    mask = jnp.array([[True, False, True, True, True, True, False]])
    assert segment_runs(seg).tolist() == [[0, 0, 0, 1, 1, 2, 2]]
    # valid tokens before each position within its run (a repeated id is a new segment)
    assert segment_positions(mask, seg).tolist() == [[0, 1, 1, 0, 1, 0, 1]]
