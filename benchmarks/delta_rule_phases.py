"""Where the chunked delta rule's time goes: its passes timed apart (issue 27).

    PYTHONPATH=. python benchmarks/delta_rule_phases.py [--gated] [--quick] [--shape B T H D]

``seqzoo.ops.delta_rule.xla.chunked`` at (4, 2048, 16, 128) bf16, chunk 64 (DeltaNet; ``--gated``
Gated DeltaNet), each part jitted alone on inputs already in device memory (the inputs of
``benchmarks/kernel_cases/delta_rule.py``):

- ``parts``: pass 1, everything of every chunk that does not depend on the state, batched
  (``chunked_form.chunk_inputs`` + ``chunk_parts``); ``inverse``: its UT transform alone
  (``unit_lower_inverse`` on the same ``A``);
- ``states``: pass 2, the scan over chunks carrying ``S``, at the default unroll and rolled;
- ``output``: pass 3, ``diag(gamma) Q S + scores D``;
- ``forward``: the three; ``backward``: ``chunked_vjp.chunked_core_vjp`` alone (it recomputes
  passes 1 and 2); ``fwd+bwd``: ``xla.chunked`` through its custom VJP, as a training step runs it
  (the loss returned with the gradients, so the forward runs).

A part's time beside ``fwd+bwd`` says what keeping it (memory) or fusing it (a kernel) could
save; sums differ from the whole by what XLA fuses across parts. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from kernel_cases.delta_rule import inputs
from kernel_harness import jax_gradients, median_ms

from seqzoo.ops.delta_rule import chunked_form, xla
from seqzoo.ops.delta_rule.chunked_vjp import chunked_core_vjp

SHAPE = (4, 2048, 16, 128)
QUICK_SHAPE = (1, 96, 2, 16)
CHUNK = 64


def phases(shape, gated: bool, chunk: int) -> dict:
    """Name -> a function of no arguments running that part once (jitted, inputs bound)."""
    q, k, v, beta, g, do = inputs(shape, gated)
    b, t, h, d = shape
    q = (q.astype(jnp.float32) * d**-0.5).astype(q.dtype)
    runs = jnp.zeros((b, t), jnp.int32)
    s0 = jnp.zeros((b, h, d, d), jnp.float32)
    rows = xla._padded(q, k, v, beta, g, s0, runs, chunk)
    dt = q.dtype

    def parts(rows):
        return chunked_form.chunk_parts(*chunked_form.chunk_inputs(rows, chunk))

    (qg, scores, u, w, kt, total), _ = jax.jit(parts)(rows)
    qc, kc, _, bc, decays = chunked_form.chunk_inputs(rows, chunk)
    strict = decays[0] * (1.0 - jnp.eye(chunk, dtype=jnp.float32))
    a = jax.jit(lambda k, b, s: b[..., :, None] * s * chunked_form.mm(
        "...rd,...id->...ri", k, k, dtype=dt))(kc, bc, strict)

    def states(unroll, s0, u, w, kt, total):
        with chunked_form.scan_unroll(unroll):
            return chunked_form.chunk_states(s0, u, w, kt, total, dt)

    chunks = u.shape[0]
    _, entering, dd = jax.jit(functools.partial(states, 1))(s0, u, w, kt, total)

    def output(qg, scores, entering, dd):
        o = chunked_form.mm("...rd,...dv->...rv", qg, entering, dtype=dt)
        return o + chunked_form.mm("...ri,...iv->...rv", scores, dd, dtype=dt)

    cotangents = (jnp.pad(do, ((0, 0), (0, rows[0].shape[1] - t), (0, 0), (0, 0))), s0)

    def op(q, k, v, beta, g=None):
        return xla.chunked(q, k, v, beta, g, s0, runs, chunk)[0]

    unroll = chunked_form.current_unroll(chunks)
    return {
        "parts (pass 1)": functools.partial(jax.jit(parts), rows),
        "inverse (in pass 1)": functools.partial(jax.jit(chunked_form.unit_lower_inverse), a),
        f"states (pass 2), unroll {unroll} (default)": functools.partial(
            jax.jit(functools.partial(states, unroll)), s0, u, w, kt, total),
        "states (pass 2), rolled": functools.partial(
            jax.jit(functools.partial(states, 1)), s0, u, w, kt, total),
        "output (pass 3)": functools.partial(jax.jit(output), qg, scores, entering, dd),
        "forward": functools.partial(jax.jit(functools.partial(xla._chunked_core, c=chunk)),
                                     rows, ()),
        "backward (chunked_core_vjp)": functools.partial(
            jax.jit(functools.partial(chunked_core_vjp, c=chunk)), rows, (), cotangents),
        "fwd+bwd (training)": jax_gradients(op, (q, k, v, beta) + ((g,) if gated else ()), do),
    }


def main(argv=None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gated", action="store_true", help="Gated DeltaNet (a decay)")
    parser.add_argument("--quick", action="store_true", help="a tiny shape, few repeats (CPU)")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("B", "T", "H", "D"))
    args = parser.parse_args(argv)
    shape = tuple(args.shape or (QUICK_SHAPE if args.quick else SHAPE))
    repeats, calls = (2, 2) if args.quick else (7, 10)
    timed = [(name, median_ms(fn, repeats=repeats, calls=calls))
             for name, fn in phases(shape, args.gated, CHUNK).items()]
    total = dict(timed)["fwd+bwd (training)"]
    device = jax.devices()[0]
    print(f"# {'Gated DeltaNet' if args.gated else 'DeltaNet'} {shape} bf16, chunk {CHUNK}, "
          f"{device.device_kind} ({device.platform}), jax {jax.__version__}")
    print("| part | ms | share of fwd+bwd |\n|---|---|---|")
    for name, ms in timed:
        print(f"| {name} | {ms:.3f} | {ms / total:.0%} |")
    return timed


if __name__ == "__main__":
    main()
