"""Sequence parallelism on 8 fake CPU devices: every sharded op and model equals its unsharded run,
outputs and gradients, for lengths that do and do not divide over the shards.

Eight devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, but
the suite's JAX is already running on one CPU device (and the runner tests split their batches over
every device they see), so the checks run in one fresh interpreter: this file executed as a script.
Each check there compares, on a (data=2, seq=4) mesh,

* the outputs of ``shard_map(op)`` under ``sequence_parallel("seq")`` with the op on whole
  sequences (final states too, on every shard);
* the gradients of ``sum(outputs * cotangent)``: per-device partials, ``psum``-ed for the
  replicated arguments (see ``seqzoo.parallel.context``), against ``jax.grad`` of the whole.

Lengths that do not divide are padded at the end with zeros (no-op steps, ``mask=False``; see
``seqzoo.parallel.layout``) and the padded positions dropped. The scans run their quickest to
compile impl (the sharded paths wrap whichever impl they are given); the runner's tests train
with the layers' default chunked ones.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from seqzoo.models import SequenceModel
from seqzoo.ops.attention import dot_product_attention
from seqzoo.ops.attention.sequence_parallel import sharded_attention
from seqzoo.ops.attention.ulysses import communication_bytes
from seqzoo.ops.conv import causal_depthwise_conv, centered_depthwise_conv
from seqzoo.ops.delta_rule import delta_rule
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.ops.quasiseparable import quasiseparable
from seqzoo.ops.scan import linear_recurrence, selective_scan
from seqzoo.ops.ssd import ssd
from seqzoo.parallel import pad_to_shards, sequence_parallel, shard_map
from seqzoo.parallel.carry import carry_in, scan_carry_in
from seqzoo.parallel.context import sequence_axis
from seqzoo.registry import SEQUENCE_PARALLEL_MIXERS, mixer_entry, mixer_info, mixers_with

# one worker runs the module (--dist loadgroup): its tests share one fresh interpreter's run
pytestmark = pytest.mark.xdist_group("eight_cpu_devices_ops")
ROOT = Path(__file__).resolve().parents[1]
SHARDS, BATCH = 4, 4  # (data=2, seq=4): two rows per data shard
LENGTHS = {"even": 32, "uneven": 30}
TOL = dict(rtol=2e-4, atol=2e-5)
# parameter gradients sum over every token: up to ~400 in the lm model, whose float32 noise is
# ~5e-6 of a leaf's largest entry (every block alike), ~5e-4 absolute
MODEL_TOL = dict(rtol=1e-3, atol=1e-3)
OUT, FINAL = ("seq",), ("seq", "rows")  # output only; output and final state


# ---- the harness (runs in the worker) ----------------------------------------------------------
def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(2, SHARDS), ("data", "seq"))


def _dot(out, ct) -> jax.Array:
    pairs = zip(jax.tree.leaves(out), jax.tree.leaves(ct), strict=True)
    return sum(jnp.sum(o * c) for o, c in pairs)


def compare(fn, seq_args: dict, rep_args: dict, row_args=None, *, kinds=("seq",), tol=TOL,
            carry="all_gather"):
    """Check ``fn(**seq_args, **rep_args, **row_args)`` sharded against whole; raise on a mismatch.

    seq_args: ``(batch, length, ...)`` arrays split over (data, seq); rep_args: replicated
    (pytrees allowed); row_args: ``(batch, ...)`` split over data only (initial states).
    Gradients are taken with respect to every floating argument. fn returns one output or a
    tuple; ``kinds`` says for each whether it is ``"seq"`` ``(batch, length, ...)`` or ``"rows"``
    ``(batch, ...)``, which every seq shard must return whole (final states, pooled logits).
    ``tol``: ``assert_allclose``'s rtol and atol; ``carry``: how the sharded side carries
    linear recurrences' states (``seqzoo.parallel.carry``).
    """
    row_args = row_args or {}
    length = next(iter(seq_args.values())).shape[1]
    floating = {k for k, v in seq_args.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    fixed = {k: v for k, v in seq_args.items() if k not in floating}  # tokens, masks

    def call(seq, rep, rows, fixed):
        out = fn(**seq, **rep, **rows, **fixed)
        return out if isinstance(out, tuple) else (out,)

    args = ({k: seq_args[k] for k in floating}, rep_args, row_args)
    rng = np.random.default_rng(0)
    ct = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape, np.float32)),
        jax.eval_shape(call, *args, fixed),
    )

    @jax.jit
    def whole(args, fixed, ct):
        out, vjp = jax.vjp(lambda *a: call(*a, fixed), *args)
        return out, vjp(ct)

    want, want_grads = whole(args, fixed, ct)

    def per_device(seq, rep, rows, fixed, ct):
        def local_loss(seq, rep, rows):
            out = call(seq, rep, rows, fixed)
            # a "rows" output is on every seq shard: each counts 1/P of its term
            weights = [1.0 if kind == "seq" else 1.0 / SHARDS for kind in kinds]
            return sum(w * jnp.sum(o * c) for w, o, c in zip(weights, out, ct, strict=True)), out

        with sequence_parallel("seq", carry=carry):
            (_, out), grads = jax.value_and_grad(local_loss, (0, 1, 2), True)(seq, rep, rows)
        g_seq, g_rep, g_rows = grads  # per-device partials: sum those of shared arguments
        g_rep, g_rows = jax.lax.psum(g_rep, ("data", "seq")), jax.lax.psum(g_rows, "seq")
        out = tuple(o if kind == "seq" else o[:, None] for o, kind in zip(out, kinds, strict=True))
        return out, g_seq, g_rep, g_rows

    on_seq, on_rows = P("data", "seq"), P("data")
    ct_specs = tuple(on_seq if kind == "seq" else on_rows for kind in kinds)
    sharded = shard_map(
        per_device,
        _mesh(),
        in_specs=(on_seq, P(), on_rows, on_seq, ct_specs),
        out_specs=(on_seq, on_seq, P(), on_rows),
    )
    ct = tuple(pad_to_shards(c, SHARDS) if k == "seq" else c for c, k in zip(ct, kinds, strict=1))
    padded = jax.tree.map(lambda a: pad_to_shards(a, SHARDS), (args[0], fixed))
    got, *got_grads = jax.jit(sharded)(padded[0], rep_args, row_args, padded[1], ct)
    for o, w, kind in zip(got, want, kinds, strict=True):
        if kind == "seq":
            np.testing.assert_allclose(o[:, :length], w, **tol, err_msg="output")
        else:  # every seq shard holds the whole sequence's value
            for copy in np.moveaxis(np.asarray(o), 1, 0):
                np.testing.assert_allclose(copy, w, **tol, err_msg="replicated output")
    got_grads[0] = {k: g[:, :length] for k, g in got_grads[0].items()}

    def close(path, g, w):
        np.testing.assert_allclose(g, w, **tol, err_msg=f"gradient {jax.tree_util.keystr(path)}")

    jax.tree_util.tree_map_with_path(close, tuple(got_grads), want_grads)


def _normal(rng, *shape, shift=0.0, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape, np.float32) * scale + shift)


# ---- the checks ----------------------------------------------------------------------------------
def check_linear_attention(length, carry="all_gather"):
    """No decay, a scalar decay per head and one per key dimension (GLA), side by side."""
    rng = np.random.default_rng(1)
    b, h, dk, dv = BATCH, 2, 4, 6
    seq = {name: _normal(rng, b, length, h, dk) for name in ("q", "k")}
    seq["v"] = _normal(rng, b, length, h, dv)
    seq["scalar"] = -jnp.abs(_normal(rng, b, length, h, scale=0.3))
    seq["per_key"] = -jnp.abs(_normal(rng, b, length, h, dk, scale=0.3))
    rows = {"initial_state": _normal(rng, b, h, dk, dv)}
    even = length % SHARDS == 0  # a padded end changes the final state, not the outputs

    def fn(scalar, per_key, **a):
        runs = [
            linear_attention(**a, log_decay=g, return_final_state=even, impl="sequential")
            for g in (None, scalar, per_key)
        ]
        return jax.tree.map(lambda *r: jnp.concatenate(r, axis=-1), *runs)

    compare(fn, seq, {}, rows, kinds=FINAL if even else OUT, carry=carry)


def check_delta_rule(length, carry="all_gather"):
    """DeltaNet (no decay) and Gated DeltaNet side by side: matrix transitions carried across the
    shards. A zero-padded end is a no-op (b = 0, a = 1), so the final state is checked at every
    length."""
    rng = np.random.default_rng(10)
    b, h, dk, dv = BATCH, 2, 4, 3
    seq = {name: _normal(rng, b, length, h, dk) for name in ("q", "k")}
    seq["k"] = seq["k"] / jnp.linalg.norm(seq["k"], axis=-1, keepdims=True)
    seq["v"] = _normal(rng, b, length, h, dv)
    seq["beta"] = jax.nn.sigmoid(_normal(rng, b, length, h))
    seq["log_decay"] = -jnp.abs(_normal(rng, b, length, h, scale=0.3))
    rows = {"initial_state": _normal(rng, b, h, dk, dv)}

    def fn(log_decay, **a):
        runs = [delta_rule(**a, log_decay=g, return_final_state=True, impl="sequential")
                for g in (None, log_decay)]
        return jax.tree.map(lambda *r: jnp.concatenate(r, axis=-1), *runs)

    compare(fn, seq, {}, rows, kinds=FINAL, carry=carry)


def check_ssd(length, carry="all_gather"):
    rng = np.random.default_rng(2)
    b, h, p, g, n = BATCH, 4, 3, 2, 6
    seq = {
        "x": _normal(rng, b, length, h, p),
        "dt": _normal(rng, b, length, h, shift=-1.0),
        "B": _normal(rng, b, length, g, n),
        "C": _normal(rng, b, length, g, n),
        "z": _normal(rng, b, length, h, p),
    }
    rep = {
        "A": -jnp.exp(_normal(rng, h)),
        "D": _normal(rng, h),
        "dt_bias": _normal(rng, h),
    }
    rows = {"initial_state": _normal(rng, b, h, p, n)}
    even = length % SHARDS == 0

    def fn(**a):
        return ssd(**a, dt_softplus=True, return_final_state=even, impl="sequential")

    compare(fn, seq, rep, rows, kinds=FINAL if even else OUT, carry=carry)


def check_all_scan(length):
    """ZeCO's chunked All-Scan carry against LASP-2's all-gather one, forward and reversed, with
    an initial state: elementwise decays with chunks that divide each row's 36 state elements
    (4) and that do not (8, 5: zero-padded); matrix transitions (the delta rule's, ``(3, 3)`` on
    ``(3, 5)`` states) cut into column chunks that do not divide the 5 columns (2), one column
    each (8 -> 5) and reversed: the states, and the gradients of each shard's inputs."""
    rng = np.random.default_rng(9)
    b, h, n, m = BATCH, 3, 12, 5
    elementwise = (jax.nn.sigmoid(_normal(rng, b * SHARDS, h, 1)),
                   _normal(rng, b * SHARDS, h, n), _normal(rng, b, h, n))
    matrices = (_normal(rng, b * SHARDS, h, 3, 3, scale=0.5), _normal(rng, b * SHARDS, h, 3, m),
                _normal(rng, b, h, 3, m))
    mesh = Mesh(np.array(jax.devices()[:SHARDS]), ("seq",))
    for matrix, reverse, chunks in ((False, False, 4), (False, True, 8), (False, False, 5),
                                    (True, False, 2), (True, True, 8), (True, False, 5)):
        args = matrices if matrix else elementwise
        ct = tuple(_normal(rng, *args[1].shape) for _ in range(2))

        def both(decay, state, initial, ct, reverse=reverse, chunks=chunks, matrix=matrix):
            runs = (
                functools.partial(carry_in, axis="seq", reverse=reverse, matrix=matrix),
                functools.partial(scan_carry_in, axis="seq", reverse=reverse, chunks=chunks,
                                  matrix=matrix),
            )
            results = []
            for run in runs:
                out, pullback = jax.vjp(
                    lambda d, s, i, run=run: run(d, s, initial_state=i), decay, state, initial
                )
                g_decay, g_state, g_initial = pullback(ct)  # the initial state's: partials
                results.append((out, (g_decay, g_state, jax.lax.psum(g_initial, "seq"))))
            return tuple(results)

        shard = P("seq")
        got = jax.jit(shard_map(both, mesh, in_specs=(shard, shard, P(), (shard, shard)),
                                out_specs=(((shard, shard), (shard, shard, P())),) * 2))(*args, ct)
        gathered, scanned = (jax.tree_util.tree_flatten_with_path(r)[0] for r in got)
        for (path, w), (_, g) in zip(gathered, scanned, strict=True):
            where = (f"matrix={matrix} reverse={reverse} chunks={chunks} "
                     f"{jax.tree_util.keystr(path)}")
            np.testing.assert_allclose(g, w, **TOL, err_msg=where)


def check_linear_recurrence(length, reverse=False):
    """Forward, or reversed (even lengths only: a zero-padded end is no identity step there)."""
    rng = np.random.default_rng(3)
    b, h, p = BATCH, 3, 2
    seq = {
        "a": jax.nn.sigmoid(_normal(rng, b, length, h, 1)),
        "b": _normal(rng, b, length, h, p),
    }
    rows = {"initial_state": _normal(rng, b, h, p)}
    even = length % SHARDS == 0

    def fn(**a):
        return linear_recurrence(**a, reverse=reverse, return_final_state=even, impl="sequential")

    compare(fn, seq, {}, rows, kinds=FINAL if even else OUT)


def check_selective_scan(length):
    rng = np.random.default_rng(4)
    b, d, g, n = BATCH, 6, 2, 3
    seq = {
        "u": _normal(rng, b, length, d),
        "delta": _normal(rng, b, length, d, shift=-1.0),
        "B": _normal(rng, b, length, g, n),
        "C": _normal(rng, b, length, g, n),
        "z": _normal(rng, b, length, d),
    }
    rep = {
        "A": -jnp.exp(_normal(rng, d, n)),
        "D": _normal(rng, d),
        "delta_bias": _normal(rng, d),
    }
    rows = {"initial_state": _normal(rng, b, d, n)}
    even = length % SHARDS == 0

    def fn(**a):
        return selective_scan(**a, delta_softplus=True, return_final_state=even, impl="sequential")

    compare(fn, seq, rep, rows, kinds=FINAL if even else OUT)


def check_quasiseparable(length):
    rng = np.random.default_rng(5)
    b, h, p, g, n = BATCH, 4, 3, 2, 5
    seq = {"x": _normal(rng, b, length, h, p), "D": _normal(rng, b, length, h)}
    for name in ("dt_fwd", "dt_bwd"):
        seq[name] = _normal(rng, b, length, h, shift=-1.0)
    for name in ("B_fwd", "C_fwd", "B_bwd", "C_bwd"):
        seq[name] = _normal(rng, b, length, g, n)
    rep = {"A": -jnp.exp(_normal(rng, h)), "dt_bias": _normal(rng, h)}

    def fn(**a):
        return quasiseparable(**a, dt_softplus=True, impl="sequential")

    compare(fn, seq, rep)


def check_attention(length, causal, block_size=None, scheme="ring", heads=(4, 2), packed=False):
    """The op sharded against whole; with ``block_size``, the sharded side calls the ring with
    tiles of that many keys (fewer than a shard's, and not dividing it). ``scheme``: the
    sequence-parallel attention; ``heads``: query and kv heads (grouped-query attention);
    ``packed``: with ``segment_ids`` too (Ulysses only)."""
    rng = np.random.default_rng(6)
    (h, kv), b, d = heads, BATCH, 4
    mask = np.ones((b, length), bool)
    mask[0, 3] = mask[1, 9:14] = mask[2, :20] = False  # holes, and a row empty on early shards
    seq = {
        "q": _normal(rng, b, length, h, d),
        "k": _normal(rng, b, length, kv, d),
        "v": _normal(rng, b, length, kv, d),
        "mask": jnp.asarray(mask),
    }
    if packed:  # segments that cross the shards' borders
        seq["segment_ids"] = jnp.asarray(np.cumsum(rng.random((b, length)) < 0.15, axis=1))
    # causal also with a sliding window and sinks: global positions decide the pattern
    patterns = [{}, {"window": 5, "num_sinks": 2}] if causal else [{}]

    def fn(**a):
        attend = dot_product_attention
        if block_size and sequence_axis(None):
            attend = functools.partial(sharded_attention, axis="seq", block_size=block_size)
        with contextlib.ExitStack() as context:
            if sequence_axis(None):
                context.enter_context(sequence_parallel("seq", attention=scheme))
            outs = [attend(**a, causal=causal, **pattern) for pattern in patterns]
        return jnp.concatenate(outs, axis=-1)

    compare(fn, seq, {})


def _collective_bytes(hlo: str) -> dict[str, int]:
    """``{collective: bytes of its operands}`` of one device's compiled program (HLO text):
    all-to-all, all-gather, collective-permute, all-reduce."""
    sizes = {}  # instruction name -> bytes of its (array) result
    for name, dtype, dims in re.findall(r"%(\S+) = (\w+)\[([\d,]*)\]", hlo):
        count = int(np.prod([int(n) for n in dims.split(",") if n]))
        bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))  # f32, bf16, s32 ...
        sizes[name] = count * bits // 8
    found = {}
    pattern = r" (all-to-all|all-gather|collective-permute|all-reduce)(?:-start)?\(([^)]*)\)"
    for kind, operands in re.findall(pattern, hlo):
        names = re.findall(r"%([\w.\-]+)", operands)
        found[kind] = found.get(kind, 0) + sum(sizes[n] for n in names)
    return found


def check_ulysses_bytes(length):
    """The collectives' bytes in Ulysses attention's compiled programs (forward, and forward with
    backward) equal ``communication_bytes``, and stay the same for ``length / SHARDS`` tokens
    per device on 2 and 8 devices; ring attention's forward grows with the devices."""
    b, h, d, local = 2, 8, 4, length // SHARDS
    seen = {}
    for shards in (2, 8):
        mesh = Mesh(np.array(jax.devices()[:shards]).reshape(1, shards), ("data", "seq"))
        shape = (b, local * shards, h, d)
        q = jax.ShapeDtypeStruct(shape, jnp.float32)
        mask = jax.ShapeDtypeStruct(shape[:2], jnp.bool_)
        for scheme, backward in (("ulysses", False), ("ulysses", True), ("ring", False)):

            def local_attention(q, k, v, mask, scheme=scheme):
                with sequence_parallel("seq", attention=scheme):
                    return dot_product_attention(q, k, v, causal=True, mask=mask)

            fwd = shard_map(local_attention, mesh, in_specs=(P("data", "seq"),) * 4,
                            out_specs=P("data", "seq"))

            def both(q, k, v, mask, fwd=fwd):  # the output, and the gradients it backpropagates
                out, pullback = jax.vjp(lambda q, k, v: fwd(q, k, v, mask), q, k, v)
                return out, pullback(out)

            hlo = jax.jit(both if backward else fwd).lower(q, q, q, mask).compile().as_text()
            seen[scheme, shards, backward] = got = sum(_collective_bytes(hlo).values())
            if scheme == "ulysses":
                want = communication_bytes(b, local, h, h, d, jnp.float32, shards,
                                           backward=backward)
                assert got == want, (shards, backward, got, want)
    assert seen["ulysses", 2, False] == seen["ulysses", 8, False], seen
    assert seen["ulysses", 2, True] == seen["ulysses", 8, True], seen
    assert seen["ring", 2, False] < seen["ring", 8, False], seen


def check_short_conv(length):
    rng = np.random.default_rng(7)
    seq = {"x": _normal(rng, BATCH, length, 5)}
    for conv in (causal_depthwise_conv, centered_depthwise_conv):
        rep = {"w": _normal(rng, 3, 5), "b": _normal(rng, 5)}
        compare(conv, seq, rep)


# Every mixer whose MixerInfo says sequence_parallel, from the registry: small (its test_config),
# and the scans (semiseparable, quasiseparable) at their quick-to-compile sequential impl (the
# sharded ops are impl-agnostic).
SCANS = ("semiseparable", "quasiseparable")
MIXER_CONFIG = {
    name: mixer_entry(name).test_config
    | ({"impl": "sequential"} if mixer_info(name).structure in SCANS else {})
    for name in sorted(SEQUENCE_PARALLEL_MIXERS)
}
CAUSAL = mixers_with("sequence_parallel", "step")
MODELS = {  # between them, every sequence-parallel mixer, each once
    # causal: convs, scans, RoPE in attention, learned positions
    "lm": dict(mixer=tuple(CAUSAL[0::2]), max_length=32),
    # bidirectional wrappers of the other causal ones (global flips), the non-causal mixers,
    # last-token pooling over shards
    "classify": dict(
        mixer=tuple(CAUSAL[1::2]) + tuple(sorted(SEQUENCE_PARALLEL_MIXERS - set(CAUSAL))),
        bidirectional=True, num_classes=3, pooling="last",
    ),
}


def check_model(length, head):
    """A hybrid model of sequence-parallel mixers: its logits and parameter gradients."""
    options = MODELS[head]
    model = SequenceModel(d_model=16, n_layers=len(options["mixer"]), mixer_config=MIXER_CONFIG,
                          vocab_size=11, head=head, mlp="none", **options)
    rng = np.random.default_rng(8)
    mask = np.ones((BATCH, length), bool)
    mask[0, 20:] = mask[1, 5] = False
    seq = {"tokens": jnp.asarray(rng.integers(0, 11, (BATCH, length))), "mask": jnp.asarray(mask)}
    params = jax.jit(model.init)(jax.random.PRNGKey(0), seq["tokens"], seq["mask"])

    def fn(params, tokens, mask):
        return model.apply(params, tokens, mask)

    compare(fn, seq, {"params": params}, kinds=OUT if head == "lm" else ("rows",), tol=MODEL_TOL)


CHECKS = {  # name: (check, the lengths it runs at)
    "linear_attention": (check_linear_attention, ("even", "uneven")),
    "ssd": (check_ssd, ("even", "uneven")),
    "delta_rule": (check_delta_rule, ("even", "uneven")),
    "linear_recurrence": (check_linear_recurrence, ("even", "uneven")),
    "linear_recurrence-reverse": (
        functools.partial(check_linear_recurrence, reverse=True), ("even",)
    ),
    "selective_scan": (check_selective_scan, ("even", "uneven")),
    "quasiseparable": (check_quasiseparable, ("even", "uneven")),
    "ring_attention-causal": (functools.partial(check_attention, causal=True), ("even", "uneven")),
    "ring_attention-bidirectional": (
        functools.partial(check_attention, causal=False), ("even", "uneven")
    ),
    "ring_attention-tiled": (functools.partial(check_attention, causal=True, block_size=3),
                             ("uneven",)),
    # (the runner pads lengths for every scheme alike: the ring's uneven cases cover that)
    "ulysses_attention-causal": (
        functools.partial(check_attention, causal=True, scheme="ulysses"), ("even",)
    ),
    "ulysses_attention-gqa": (  # the kv heads split over the shards, not repeated
        functools.partial(check_attention, causal=True, scheme="ulysses", heads=(8, 4)), ("even",)
    ),
    "ulysses_attention-packed": (
        functools.partial(check_attention, causal=False, scheme="ulysses", packed=True),
        ("uneven",),
    ),
    "ulysses_bytes": (check_ulysses_bytes, ("even",)),
    "all_scan": (check_all_scan, ("even",)),
    "linear_attention-all_scan": (
        functools.partial(check_linear_attention, carry="all_scan"), ("even",)
    ),
    "ssd-all_scan": (functools.partial(check_ssd, carry="all_scan"), ("even",)),
    "delta_rule-all_scan": (functools.partial(check_delta_rule, carry="all_scan"), ("even",)),
    "short_conv": (check_short_conv, ("even", "uneven")),
    # the models pad like the ops (mask=False): their uneven runs would repeat the ops' checks
    "model-lm": (functools.partial(check_model, head="lm"), ("even",)),
    "model-classify": (functools.partial(check_model, head="classify"), ("even",)),
}
CASES = [f"{name}-{kind}" for name, (_, kinds) in CHECKS.items() for kind in kinds]
# -m slow only: an op's uneven length repeats its even case plus a zero-padded end, which
# linear_recurrence, delta_rule, quasiseparable (bidirectional) and the causal ring still check
# by default (the padding is the harness's, the same for every op)
SLOW_CASES = {
    "linear_attention-uneven", "ssd-uneven", "selective_scan-uneven",
    "ring_attention-bidirectional-uneven", "short_conv-uneven",
}
assert SLOW_CASES <= set(CASES), SLOW_CASES - set(CASES)


def run_checks(cases: list[str]) -> dict[str, str]:
    """Each of ``cases``: ``"ok"`` or the error it raised."""
    results = {}
    for case in cases:
        name, kind = case.rsplit("-", 1)
        try:
            CHECKS[name][0](LENGTHS[kind])
            results[case] = "ok"
        except Exception as e:  # reported per case by the test below
            results[case] = f"{type(e).__name__}: {e}"
    return results


# ---- the tests (in the suite's interpreter) ------------------------------------------------------
def eight_cpu_devices() -> dict[str, str]:
    """The environment of a fresh interpreter with 8 CPU devices that imports this checkout."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def results(request) -> dict[str, str]:
    """The cases of the session's selected ``test_sharded_equals_unsharded`` items (``-m``,
    ``-k``), all run in one fresh interpreter."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.originalname == "test_sharded_equals_unsharded"
                and item.module.__name__ == __name__]
    done = subprocess.run(
        [sys.executable, __file__, *selected], env=eight_cpu_devices(), capture_output=True,
        text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW_CASES else []) for c in CASES]
)
def test_sharded_equals_unsharded(results, case):
    assert results[case] == "ok", results[case]


def test_the_models_cover_every_sequence_parallel_mixer():
    checked = [name for options in MODELS.values() for name in options["mixer"]]
    assert sorted(checked) == sorted(SEQUENCE_PARALLEL_MIXERS)
    assert {"mamba", "mamba2", "hydra", "attention", "linear_attention"} <= set(checked)


if __name__ == "__main__":
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    jax.config.update("jax_disable_most_optimizations", True)
    print(json.dumps(run_checks(sys.argv[1:] or CASES)))


@pytest.mark.parametrize("block_size", [0, -4, 2.5])
def test_ring_attention_rejects_a_bad_block_size(block_size):
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        sharded_attention(q, q, q, axis="seq", block_size=block_size)
