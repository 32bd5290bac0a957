"""Which tilings of the chunked kernel compile on this GPU, and how fast the ones that do run.

    python benchmarks/chunked_tiling.py [--decay key] [--widths 128,64,256:64] [--time B,T,H]
                                        [--inter]
    python benchmarks/chunked_tiling.py --resolved     # what resolve_tiling picks, checked

For every candidate ``Tiling`` (chunk, block_v, num_warps, num_stages, slice) and key:value
widths, compiles forward+backward of ``gated_linear_attention`` (bf16) at a small length and
prints ``fits`` or the shared memory the compiler asked for (the number in its "Shared memory
size limit exceeded" error) next to ``chunked_tiling.shared_memory_bytes``'s estimate; then
times every tiling that fits at ``--time`` (forward and forward+backward, ms); ``--inter``:
the pass without its intra-chunk terms (``intra=False``, what ``impl="pallas_split"``
launches). ``--resolved`` instead runs the tiling ``resolve_tiling`` picks for this GPU at
every decay and width from 16 to 256, and prints its relative error against the op's XLA path
(output and each gradient).
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

from seqzoo.kernels.chunked_pass import Tiling  # noqa: E402
from seqzoo.kernels.chunked_tiling import (  # noqa: E402
    device_limit,
    resolve_tiling,
    shared_memory_bytes,
)
from seqzoo.ops.linear_attention import linear_attention  # noqa: E402
from seqzoo.ops.linear_attention.pallas_gpu import gated_linear_attention  # noqa: E402


def inputs(b, t, h, widths, decay):
    dk, dv = widths
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(kk, (1, b, t, h, w), jnp.float32).astype(jnp.bfloat16)
               for kk, w in zip(keys[:3], (dk, dk, dv), strict=True))
    q = q * dk ** -0.5
    gshape = (1, b, t, h, dk) if decay == "key" else (1, b, t, h)
    g = None if decay is None else jax.nn.log_sigmoid(jax.random.normal(keys[3], gshape) + 3)
    return q, k, v, g


def functions(tiling, decay, intra=True):
    def fwd(q, k, v, g):
        return gated_linear_attention(q, k, v, g, scale=1.0, tiling=tiling, intra=intra)[0]

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
    """``fits``, or the compiler's requested shared memory, for one (width, tiling, decay,
    intra)."""
    widths, tiling, decay, intra = job
    try:
        grad = functions(tiling, decay, intra)[1]
        grad.lower(*inputs(1, 2 * tiling.chunk, 1, widths, decay)).compile()
        return "fits"
    except Exception as e:  # the compiler's own verdict is the measurement
        asked = re.search(r"requested (\d+)", str(e))
        return f"requested {asked.group(1)}" if asked else f"{type(e).__name__}: {str(e)[:200]}"


def parse_widths(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in (w.split(":") * 2)[:2]) for w in text.split(",")]


def check_resolved(decay) -> None:
    """The resolved tiling at every width: compiles, and agrees with the XLA op (bf16)."""
    for widths in parse_widths("16,32,64,128,256,256:64,64:256"):
        tiling, why = resolve_tiling(decay, *widths, device_limit())
        if tiling is None:
            print(f"widths {widths}: none ({why})", flush=True)
            continue
        q, k, v, g = inputs(2, 300, 2, widths, decay)
        args = (q[0], k[0], v[0]) + (() if decay is None else (g[0],))
        errs = []
        for impl in ("pallas", "chunked"):
            def loss(*a, impl=impl):
                o = linear_attention(*a[:3], log_decay=a[3] if len(a) > 3 else None, impl=impl)
                return jnp.sum(o.astype(jnp.float32) * jnp.cos(jnp.arange(o.shape[-1])))
            errs.append(jax.jit(jax.grad(loss, tuple(range(len(args)))))(*args))
        rel = [float(jnp.linalg.norm((a - b).astype(jnp.float32)) /
                     jnp.linalg.norm(b.astype(jnp.float32))) for a, b in zip(*errs, strict=True)]
        print(f"widths {widths}: {tiling} ({why}) | grads rel err "
              + " ".join(f"{e:.1e}" for e in rel), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decay", default="key", choices=["none", "scalar", "key"])
    parser.add_argument("--widths", default="128,64")
    parser.add_argument("--time", default="4,2048,16")
    parser.add_argument("--resolved", action="store_true")
    parser.add_argument("--inter", action="store_true", help="the inter-chunk pass alone")
    args = parser.parse_args(argv)
    decay, intra = (None if args.decay == "none" else args.decay), not args.inter
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, decay {decay}, "
          f"intra {intra}", flush=True)
    if args.resolved:
        check_resolved(decay)
        return
    jobs = [(w, tiling, decay, intra) for w in parse_widths(args.widths)
            for tiling in candidates()]
    with ThreadPoolExecutor(8) as pool:  # XLA compiles outside the GIL
        verdicts = list(pool.map(verdict, jobs))
    fitting = []
    for (widths, tiling, _, _), said in zip(jobs, verdicts, strict=True):
        estimate = shared_memory_bytes(tiling, decay, *widths, intra)
        print(f"widths {widths} {tiling} | estimate {estimate} | {said}", flush=True)
        if said == "fits":
            fitting.append((widths, tiling))
    if not args.time:
        return
    b, t, h = (int(x) for x in args.time.split(","))
    for widths, tiling in fitting:
        fwd, fb = functions(tiling, decay, intra)
        x = inputs(b, t, h, widths, decay)
        times = [median_ms(functools.partial(f, *x), repeats=3, calls=3) for f in (fwd, fb)]
        print(f"time widths {widths} {tiling} | fwd {times[0]:.3f} ms | fwd+bwd {times[1]:.3f} ms",
              flush=True)


if __name__ == "__main__":
    main()
