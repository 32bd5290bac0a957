"""The one impl vocabulary and the one resolver (``seqzoo.ops.dispatch``): every op with every
impl name (renamed ones included), and the policy table's decisions and reasons on faked
platforms, dtypes, widths and options."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqzoo.ops
from seqzoo.ops import dispatch
from seqzoo.ops.dispatch import IMPLS, POLICY, RENAMED, resolve

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"
H200 = 232_448  # opt-in shared memory per block, compute capability 9.0 (H100 and H200)
FACTS = {  # enough facts for every op's rules
    "linear_attention": dict(dims=(64, 64), dtypes=(jnp.bfloat16,)),
    "ssd": dict(dims=(64, 64), dtypes=(jnp.bfloat16,)),
    "quasiseparable": dict(dims=(64, 64), dtypes=(jnp.bfloat16,)),
    "linear_recurrence": {},
    "selective_scan": {},
    "attention": dict(dtype=jnp.bfloat16, head_dim=64, causal=True),
    "delta_rule": {},
}
RENAMED_NAMES = sorted({old for names in RENAMED.values() for old in names})


def test_every_op_has_facts_here():
    assert set(FACTS) == set(POLICY)


@pytest.mark.parametrize("op", sorted(POLICY))
@pytest.mark.parametrize("impl", list(IMPLS) + RENAMED_NAMES)
def test_every_op_with_every_impl_name(op, impl):
    supported = POLICY[op].supported
    assert set(supported) < set(IMPLS)
    renamed = RENAMED.get(op, {})
    if impl in renamed:
        with pytest.warns(DeprecationWarning, match=f"renamed '{renamed[impl]}'"):
            choice = resolve(op, impl, **FACTS[op])
        assert choice.impl == renamed[impl] and choice.why == "asked for"
    elif impl == "auto" or impl in supported:
        choice = resolve(op, impl, **FACTS[op])
        assert choice.impl in supported and choice.why
        if impl != "auto":
            assert choice.impl == impl and choice.why == "asked for"
    else:
        with pytest.raises(ValueError, match=re.escape(str(("auto", *supported)))):
            resolve(op, impl, **FACTS[op])


def test_unknown_op_lists_the_ops():
    with pytest.raises(ValueError, match="linear_attention"):
        resolve("conv", "auto")


def _tiny_inputs():
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    b, t, h, d, n = 1, 5, 2, 4, 3
    x, dt, B = normal(b, t, h, d), normal(b, t, h), normal(b, t, 1, n)
    A = -jnp.ones((h,))
    return {
        "linear_attention": (seqzoo.ops.linear_attention, (x, x, x), {}),
        "ssd": (seqzoo.ops.ssd, (x, dt, A, B, B), {}),
        "quasiseparable": (seqzoo.ops.quasiseparable, (x, dt, dt, A, B, B, B, B), {}),
        "linear_recurrence": (seqzoo.ops.linear_recurrence, (normal(b, t, d), normal(b, t, d)), {}),
        "selective_scan": (seqzoo.ops.selective_scan,
                           (normal(b, t, d), normal(b, t, d), -jnp.ones((d, n)), normal(b, t, n),
                            normal(b, t, n)), {}),
        "attention": (seqzoo.ops.dot_product_attention, (x, x, x), {}),
        "delta_rule": (seqzoo.ops.delta_rule, (x, x, x, jax.nn.sigmoid(dt)), {}),
    }


@pytest.mark.parametrize("op", sorted(POLICY))
def test_each_op_refuses_an_impl_it_lacks_and_lists_its_own(op):
    fn, args, kwargs = _tiny_inputs()[op]
    lacking = next(i for i in IMPLS if i not in POLICY[op].supported and i != "auto")
    with pytest.raises(ValueError, match=re.escape(str(("auto", *POLICY[op].supported)))):
        fn(*args, **kwargs, impl=lacking)


@pytest.mark.parametrize("op, old", [(op, old) for op, names in RENAMED.items() for old in names])
def test_renamed_impls_run_as_their_new_name_with_a_warning(op, old):
    fn, args, kwargs = _tiny_inputs()[op]
    with pytest.warns(DeprecationWarning):
        got = fn(*args, **kwargs, impl=old)
    np.testing.assert_allclose(got, fn(*args, **kwargs, impl=RENAMED[op][old]), rtol=1e-6)


def test_accepted_names_are_what_the_layers_check():
    assert seqzoo.ops.linear_attention.__module__ == "seqzoo.ops.linear_attention"
    from seqzoo.ops.linear_attention import IMPLS as LINEAR_ATTENTION_IMPLS

    assert LINEAR_ATTENTION_IMPLS == ("auto", "chunked", "parallel", "sequential", "pallas",
                                      "pallas_split", "chunk", "recurrent")


@pytest.mark.parametrize("op", ["linear_attention", "ssd", "quasiseparable"])
@pytest.mark.parametrize(
    "dtypes, dims, per_key, limit, expected, why",
    [
        ((jnp.bfloat16, jnp.bfloat16), (64, 64), False, H200, "pallas", "shared memory"),
        ((jnp.float16,), (128, 128), False, H200, "pallas", "shared memory"),
        ((jnp.bfloat16,), (153, 64), False, H200, "chunked", "measured up to 128"),  # Based
        ((jnp.bfloat16, jnp.float32), (64, 64), False, H200, "chunked", "float32"),
        ((jnp.float32,), (64, 64), False, H200, "chunked", "precision='highest'"),
        ((jnp.bfloat16,), (128, 128), False, 20_000, "chunked", "no tiling"),
    ],
)
def test_auto_on_a_gpu_takes_the_kernel_where_it_is_faster_and_fits(
    op, dtypes, dims, per_key, limit, expected, why
):
    facts = dict(dims=dims, dtypes=dtypes, per_key=per_key, platform="gpu", shared_memory=limit)
    chosen = resolve(op, "auto", **facts)
    assert chosen.impl == expected and why in chosen.why
    assert resolve(op, "chunked", **facts).impl == "chunked"


@pytest.mark.parametrize("op", ["linear_attention", "ssd", "quasiseparable"])
@pytest.mark.parametrize("precision", ["tf32x3", "tf32"])
def test_auto_on_a_gpu_takes_the_kernel_for_float32_on_tensor_cores(op, precision):
    facts = dict(dims=(128, 128), dtypes=(jnp.float32,), platform="gpu", shared_memory=H200,
                 precision=precision)
    chosen = resolve(op, "auto", **facts)
    assert chosen.impl == "pallas" and f"precision={precision!r}" in chosen.why
    assert chosen.measured.endswith("issue-24-item-3")
    ieee = resolve(op, "auto", **{**facts, "precision": "highest"})
    assert ieee.impl == "chunked" and ieee.measured == chosen.measured
    mixed = resolve(op, "auto", **{**facts, "dtypes": (jnp.bfloat16, jnp.float32)})
    assert mixed.impl == "chunked" and "mixed" in mixed.why


@pytest.mark.parametrize("precision", ["tf32x3", "tf32"])
def test_auto_takes_the_split_for_float32_per_key_decays_on_tensor_cores(precision):
    facts = dict(dims=(128, 128), dtypes=(jnp.float32,), platform="gpu", shared_memory=H200,
                 precision=precision, per_key=True)
    chosen = resolve("linear_attention", "auto", **facts)
    assert chosen.impl == "pallas_split" and "per-key" in chosen.why
    assert f"precision={precision!r}" in chosen.why and chosen.measured.endswith("issue-24-item-3")
    ieee = resolve("linear_attention", "auto", **{**facts, "precision": "highest"})
    assert ieee.impl == "chunked" and "precision='highest'" in ieee.why
    mixed = resolve("linear_attention", "auto", **{**facts, "dtypes": (jnp.bfloat16, jnp.float32)})
    assert mixed.impl == "chunked" and "mixed" in mixed.why
    wide = resolve("linear_attention", "auto", **{**facts, "dims": (256, 128)})
    assert wide.impl == "chunked" and "measured up to 128" in wide.why


def test_auto_on_a_gpu_takes_the_split_form_for_per_key_decays():
    facts = dict(dims=(64, 64), dtypes=(jnp.bfloat16,), per_key=True, platform="gpu",
                 shared_memory=H200)
    chosen = resolve("linear_attention", "auto", **facts)
    assert chosen.impl == "pallas_split" and "per-key" in chosen.why and chosen.measured
    assert resolve("linear_attention", "auto", **{**facts, "platform": "tpu"}).impl == "pallas"


def test_auto_takes_the_split_at_fla_gla_layer_widths_only():
    """dk 96, dv 192 (fla's GLA at d_model 768, 4 heads) pads to (128, 256): measured for the
    split; wider keys, float32, and the one-pass kernel's other cases keep XLA there."""
    facts = dict(dims=(96, 192), dtypes=(jnp.bfloat16,), per_key=True, platform="gpu",
                 shared_memory=H200)
    chosen = resolve("linear_attention", "auto", **facts)
    assert chosen.impl == "pallas_split" and "(96, 192)" in chosen.why
    assert chosen.measured == dispatch.E2E_THROUGHPUT
    for other in (dict(dims=(192, 192)), dict(dims=(96, 512)), dict(per_key=False),
                  dict(dtypes=(jnp.float32,), precision="tf32x3")):
        wide = resolve("linear_attention", "auto", **{**facts, **other})
        assert wide.impl == "chunked" and "measured up to 128" in wide.why, other
    assert resolve("linear_attention", "auto", **{**facts, "platform": "cpu"}).impl == "chunked"


@pytest.mark.parametrize("op", ["linear_attention", "ssd", "quasiseparable"])
def test_packed_sequences_take_the_chunked_path_even_when_pallas_is_asked(op):
    facts = dict(dims=(64, 64), dtypes=(jnp.bfloat16,), platform="gpu", shared_memory=H200)
    for impl in ("auto", "pallas"):
        chosen = resolve(op, impl, **facts, segment_ids=True)
        assert chosen.impl == "chunked" and "segment_ids" in chosen.why
    assert resolve(op, "sequential", **facts, segment_ids=True).impl == "sequential"
    assert resolve(op, "auto", **{**facts, "platform": "cpu"}).why == (
        "no Pallas kernel is wired for this platform"
    )


@pytest.mark.parametrize("op", ["linear_recurrence", "selective_scan"])
@pytest.mark.parametrize("platform, expected", [("gpu", "pallas"), ("cuda", "pallas"),
                                                ("cpu", "associative"), ("tpu", "pallas")])
def test_scans_take_a_kernel_on_a_gpu_or_a_tpu(op, platform, expected):
    chosen = resolve(op, "auto", platform=platform)
    assert chosen.impl == expected
    assert bool(chosen.measured) == (expected == "pallas")


def test_the_platform_defaults_to_jax_default_backend():
    assert resolve("selective_scan").impl == "associative"  # the test suite runs on CPU
    assert resolve("attention", dtype=jnp.bfloat16, head_dim=64).impl == "parallel"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_measured_reason_links_a_results_section():
    anchors = {_anchor(line.lstrip("#")) for line in RESULTS.read_text().splitlines()
               if line.startswith("#")}
    links = {rule.measured for policy in POLICY.values() for rule in policy.rules}
    links.discard("")
    assert links, "no rule links a measurement"
    for link in links:
        path, anchor = link.split("#")
        assert path == "benchmarks/RESULTS.md" and anchor in anchors, link


def test_no_timings_in_the_policy_reasons():
    for policy in POLICY.values():
        for rule in policy.rules:
            assert not re.search(r"\d\s*ms\b|\d+(\.\d+)?x\b", rule.why), rule.why


def test_explain_says_what_runs_why_and_where_it_was_measured():
    said = seqzoo.ops.explain("quasiseparable", dims=(64, 64), dtype=jnp.float32, platform="gpu",
                              shared_memory=H200)
    assert said.startswith("quasiseparable with impl='auto' runs 'chunked': float32")
    assert dispatch.FLOAT32_KERNEL in said  # the tests' matmul precision is "highest"
    assert "asked for" in seqzoo.ops.explain("attention", "cudnn")


@pytest.mark.parametrize("op", ["linear_attention", "ssd", "quasiseparable", "linear_recurrence",
                                "selective_scan"])
def test_a_tpu_takes_the_mosaic_kernels_but_not_for_packed_sequences(op):
    choice = resolve(op, "auto", platform="tpu", **FACTS[op])
    assert choice.impl == "pallas" and "predicted" in choice.why and choice.measured
    if "dims" in FACTS[op]:
        f32 = {**FACTS[op], "dtypes": (jnp.float32,), "per_key": True}
        assert resolve(op, "auto", platform="tpu", **f32).impl == "pallas"
        packed = resolve(op, "auto", platform="tpu", segment_ids=True, **FACTS[op])
        assert packed.impl == "chunked" and "segment_ids" in packed.why


def test_a_tpu_takes_splash_attention_except_with_sinks():
    facts = FACTS["attention"]
    assert resolve("attention", "auto", platform="tpu", **facts).impl == "splash"
    float32 = {**facts, "dtype": jnp.float32, "segment_ids": True}
    assert resolve("attention", "auto", platform="tpu", **float32).impl == "splash"
    sinks = resolve("attention", "auto", platform="tpu", window=8, num_sinks=2,
                    **{k: v for k, v in facts.items()})
    assert sinks.impl == "parallel" and "sink" in sinks.why
