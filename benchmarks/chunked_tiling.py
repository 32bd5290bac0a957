"""Which tilings of the chunked kernel compile on this GPU, and how fast the ones that do run.

    python benchmarks/chunked_tiling.py [--decay key] [--widths 128,64] [--time B,T,H]

For every candidate ``Tiling`` (chunk, block_v, num_warps, num_stages, slice) and key/value
width, compiles forward+backward of ``gated_linear_attention`` (bf16) at a small length and
prints ``fits`` or the shared memory the compiler asked for (the number in its "Shared memory
size limit exceeded" error) next to ``chunked_tiling.shared_memory_bytes``'s estimate; then
times every tiling that fits at ``--time`` (forward and forward+backward, ms).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from kernel_harness import median_ms  # noqa: E402

from seqzoo.kernels.chunked_linear_attention import gated_linear_attention  # noqa: E402
from seqzoo.kernels.chunked_pass import Tiling  # noqa: E402
from seqzoo.kernels.chunked_tiling import shared_memory_bytes  # noqa: E402


def inputs(b, t, h, width, decay):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(kk, (1, b, t, h, width), jnp.float32).astype(jnp.bfloat16)
               for kk in keys[:3])
    gshape = (1, b, t, h, width) if decay == "key" else (1, b, t, h)
    g = None if decay is None else jax.nn.log_sigmoid(jax.random.normal(keys[3], gshape) + 3)
    return q, k, v, g


def functions(tiling, decay):
    def fwd(q, k, v, g):
        return gated_linear_attention(q, k, v, g, scale=0.1, tiling=tiling)[0]

    def loss(q, k, v, g):
        o = fwd(q, k, v, g).astype(jnp.float32)
        return jnp.sum(o * jnp.cos(jnp.arange(o.shape[-1])))

    argnums = (0, 1, 2) if decay is None else (0, 1, 2, 3)
    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums))


def candidates():
    """Chunk, value block and pipelining depth at 4 warps and 16-wide slices, then the other
    warp counts and slice widths at the default chunk and block."""
    for chunk, block_v, stages in itertools.product((64, 32), (64, 32), (1, 2)):
        yield Tiling(chunk=chunk, sub=16, block_v=block_v, num_warps=4, num_stages=stages,
                     slice=16)
    for warps, width in ((8, 16), (4, 32), (8, 32)):
        yield Tiling(num_warps=warps, num_stages=1, slice=width)


def verdict(job) -> str:
    """``fits``, or the compiler's requested shared memory, for one (width, tiling, decay)."""
    width, tiling, decay = job
    try:
        functions(tiling, decay)[1].lower(*inputs(1, 2 * tiling.chunk, 1, width, decay)).compile()
        return "fits"
    except Exception as e:  # the compiler's own verdict is the measurement
        asked = re.search(r"requested (\d+)", str(e))
        return f"requested {asked.group(1)}" if asked else f"{type(e).__name__}: {str(e)[:200]}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decay", default="key", choices=["none", "scalar", "key"])
    parser.add_argument("--widths", default="128,64")
    parser.add_argument("--time", default="4,2048,16")
    args = parser.parse_args(argv)
    decay = None if args.decay == "none" else args.decay
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, decay {decay}", flush=True)
    jobs = [(int(w), tiling, decay) for w in args.widths.split(",") for tiling in candidates()]
    with ThreadPoolExecutor(8) as pool:  # XLA compiles outside the GIL
        verdicts = list(pool.map(verdict, jobs))
    fitting = []
    for (width, tiling, _), said in zip(jobs, verdicts, strict=True):
        estimate = shared_memory_bytes(tiling, decay, width, width, 2)
        print(f"width {width} {tiling} | estimate {estimate} | {said}", flush=True)
        if said == "fits":
            fitting.append((width, tiling))
    b, t, h = (int(x) for x in args.time.split(","))
    for width, tiling in fitting:
        fwd, fb = functions(tiling, decay)
        x = inputs(b, t, h, width, decay)
        times = [median_ms(functools.partial(f, *x), repeats=3, calls=3) for f in (fwd, fb)]
        print(f"time width {width} {tiling} | fwd {times[0]:.3f} ms | fwd+bwd {times[1]:.3f} ms",
              flush=True)


if __name__ == "__main__":
    main()
