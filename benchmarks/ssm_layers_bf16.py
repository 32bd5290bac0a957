"""Large-shape bf16 check and timing of the state-space layers: forward and forward+backward.

    python benchmarks/ssm_layers_bf16.py [--shape 4x16384x256] [--mixers s4d,mamba,...]

For each mixer: build it with bf16 compute (float32 parameters, float32 scans), run a jitted
forward and a jitted forward+backward of sum(y^2) on random bf16 x of shape (batch, length, d),
check every output and gradient is finite, and time both (median of repeats, after a warm-up).
Prints a markdown table (the numbers in benchmarks/RESULTS.md come from it).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from kernel_harness import median_ms  # benchmarks/ is on sys.path when a script runs

import seqzoo

SSM_MIXERS = ("s4", "s4d", "h3", "lmu", "mamba", "mamba2", "hydra")
LAYER_OPTIONS = {"lmu": {"order": 64, "theta": 1024.0}}


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))) for a in jax.tree.leaves(tree))


def bench(name: str, batch: int, length: int, d_model: int) -> dict:
    mixer = seqzoo.get_mixer(
        name, d_model=d_model, dtype=jnp.bfloat16, **LAYER_OPTIONS.get(name, {})
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, d_model), jnp.bfloat16)
    params = jax.jit(mixer.init)(jax.random.PRNGKey(1), x[:, :16])
    forward = jax.jit(mixer.apply)
    grad = jax.jit(
        jax.grad(lambda p, xx: jnp.sum(mixer.apply(p, xx).astype(jnp.float32) ** 2), (0, 1))
    )
    finite = all_finite(forward(params, x)) and all_finite(grad(params, x))
    return {
        "mixer": name,
        "finite": finite,
        "forward_ms": median_ms(lambda: forward(params, x), repeats=10, calls=1),
        "fwd_bwd_ms": median_ms(lambda: grad(params, x), repeats=10, calls=1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="4x16384x256", help="batch x length x d_model")
    parser.add_argument("--mixers", default=",".join(SSM_MIXERS))
    args = parser.parse_args()
    batch, length, d_model = (int(s) for s in args.shape.split("x"))
    names = [n for n in args.mixers.split(",") if n in seqzoo.list_mixers()]
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, shape {args.shape} bf16")
    print("| mixer | finite fwd+bwd | forward ms | forward+backward ms |")
    print("|---|---|---|---|")
    for name in names:
        try:
            r = bench(name, batch, length, d_model)
            print(
                f"| {name} | {r['finite']} | {r['forward_ms']:.2f} | {r['fwd_bwd_ms']:.2f} |",
                flush=True,
            )
        except Exception as e:  # a failure of one mixer is reported, the others still run
            print(f"| {name} | error: {type(e).__name__}: {str(e)[:120]} | | |", flush=True)


if __name__ == "__main__":
    main()
