"""``benchmarks/train_throughput.py``: each architecture's JAX model has the parameter count of the
model the docstring names; its JAX side trains, tiny, on CPU (tokens/s above 0, a finite loss
that falls at lr 1e-3; the hybrid in the default suite, the others marked slow); the hybrid's
layer plan, the FLOP count, the peak lookup and the table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import train_throughput as tt  # noqa: E402

D, LENGTH, VOCAB = 32, 32, 64


def tiny(arch: str, layers: int = 2):
    return tt.parse_args(
        ["--layers", str(layers), "--d-model", str(D), "--seq-len", str(LENGTH), "--batch", "2",
         "--vocab", str(VOCAB), "--steps", "2", "--archs", arch, "--sides", "jax"]
    )


def layer_params(name: str, d: int) -> int:
    """Parameters of one block, counted from the mixers' definitions (independently of seqzoo):
    two RMSNorm scales, SwiGLU, and the mixer as the peers build it."""
    o = tt.mixer_options(d, LENGTH)[name]
    hidden = int(2 * 4 * d / 3)
    common = 2 * d + 3 * d * hidden
    if name == "attention":
        width = o["num_heads"] * o["head_dim"]
        return common + 4 * d * width
    if name == "mamba2":
        e, n = o["expand"] * d, o["d_state"]
        h = e // min(o["headdim"], e)
        conv = e + 2 * n
        return common + d * (2 * e + 2 * n + h) + 5 * conv + 3 * h + e + e * d
    h, dk, dv = o["num_heads"], o["key_dim"], o["value_dim"]
    gate = d * o["gate_low_rank"] + (o["gate_low_rank"] + 1) * h * dk
    return common + 2 * d * h * dk + 3 * d * h * dv + gate + dv


def embed_and_head(vocab: int, d: int) -> int:
    """Token embedding, final RMSNorm scale, lm head with its bias."""
    return vocab * d + d + d * vocab + vocab


@pytest.mark.parametrize("arch", ["attention", "mamba2", "gla", "hybrid"])
def test_model_size(arch):
    """seqzoo's model has the parameters of the model the docstring names (the torch peer's)."""
    import jax
    import jax.numpy as jnp

    args = tiny(arch, 3)
    shapes = jax.eval_shape(
        tt.jax_model(args, arch).init, jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32)
    )
    size = sum(x.size for x in jax.tree.leaves(shapes))
    assert size == embed_and_head(VOCAB, D) + sum(
        layer_params(n, D) for n in tt.layer_mixers(arch, 3)
    )


@pytest.mark.parametrize(
    "arch",
    ["hybrid", pytest.param("gla", marks=pytest.mark.slow),
     pytest.param("attention", marks=pytest.mark.slow),
     pytest.param("mamba2", marks=pytest.mark.slow)],
)
def test_jax_side_trains(arch):
    """A 2-layer model trains: tokens/s > 0, the loss finite and falling (the hybrid's 2 layers
    are mamba2 then attention)."""
    r = tt.run_jax(tiny(arch), arch)
    assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["compile_s"] > 0
    assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
    assert r["loss_last"] < r["loss_first"] - 0.3, (r["loss_first"], r["loss_last"])
    assert r["params"] == embed_and_head(VOCAB, D) + sum(
        layer_params(n, D) for n in tt.layer_mixers(arch, 2)
    )
    assert r["flops_per_token"] > 6 * (r["params"] - VOCAB * D)


def test_layer_plan_flops_and_table():
    assert tt.layer_mixers("hybrid", 2) == ["mamba2", "attention"]
    plan = tt.layer_mixers("hybrid", 12)
    assert [i for i, n in enumerate(plan) if n == "attention"] == [3, 9]
    assert tt.layer_mixers("gla", 3) == ["gla"] * 3
    with pytest.raises(ValueError, match="arch must be one of"):
        tt.layer_mixers("rwkv", 2)
    opts = tt.mixer_options(768, 2048)
    assert tt.sequence_flops("attention", opts["attention"], 768, 2048) == 6 * 2048 * 768
    # SSD at E = 1536, N = 128, Q = 256: 3 (Q (N + E) + 4 N E)
    assert tt.sequence_flops("mamba2", opts["mamba2"], 768, 2048) == 3 * (256 * 1664 + 786432)
    assert tt.peak_flops("NVIDIA H100 80GB HBM3", None) == 989.4e12
    assert tt.peak_flops("NVIDIA H200", None) == 989.4e12
    assert tt.peak_flops("NVIDIA H100 PCIe", None) is None
    assert tt.peak_flops("cpu", 100.0) == 100e12
    rows = [
        {"arch": "gla", "side": "jax", "params": 2e6, "tokens_per_s": 300.0, "mfu": 0.25,
         "step_ms": 1.0, "compile_s": 2.0},
        {"arch": "gla", "side": "torch", "params": 2e6, "tokens_per_s": 200.0, "mfu": None,
         "step_ms": 1.5, "compile_s": 3.0},
        {"arch": "mamba2", "side": "torch", "error": "ImportError: no fla"},
    ]
    lines = tt.markdown(rows).splitlines()
    assert lines[2] == "| gla | jax | 2.0M | 300 | 25.0% | 1.0 | 2.0 | 1.50x |"
    assert lines[3].startswith("| gla | torch | 2.0M | 200 | - |")
    assert "failed: ImportError: no fla" in lines[4]
    rows[0]["impl"] = "gla=pallas_split"
    assert tt.markdown(rows[:1]).splitlines()[2].startswith("| gla | jax (gla=pallas_split) |")


def test_jax_impl_reaches_the_mixer():
    """``--jax-impl gla=chunked`` sets the GLA layers' impl (the others keep "auto"); a pair
    that names no mixer is refused."""
    args = tiny("hybrid")
    assert args.jax_impl == {}
    args = tt.parse_args(["--jax-impl", "gla=chunked,mamba2=pallas", "--archs", "gla"])
    assert args.jax_impl == {"gla": "chunked", "mamba2": "pallas"}
    model = tt.jax_model(args, "gla")
    assert model.mixer_config["gla"]["impl"] == "chunked"
    assert "impl" not in tt.mixer_options(768, 2048)["gla"]
    for bad in ("gla", "rwkv=chunked"):
        with pytest.raises(SystemExit):
            tt.parse_args(["--jax-impl", bad])
