"""Compiled memory of every experiment's train and eval step, against a written estimate.

    python benchmarks/memory_configs.py [NAME_GLOB ...] [--markdown] [--no-eval]
    seqzoo bench memory_configs 'lra/listops_*'

For each experiment (``seqzoo list``; glob patterns select some, e.g. ``'lra/listops_*'``), at
its own batch size and length and without reading or generating any data
(``seqzoo.runner.memory.abstract_build``), the train step (and the eval step) is lowered and
compiled on abstract arguments and XLA's ``memory_analysis`` read: nothing runs and nothing is
allocated, so configs far larger than the machine are measured too. Columns:

    factor      float32 values a layer keeps per position, in units of d_model:
                1 + sum over the layer's weight matrices (in, out) of (in + out) / d_model
    estimate    the written estimate (seqzoo.runner.memory.activation_estimate):
                n_layers x (batch / accumulate) x length x d_model x 4 bytes x factor
                + (per-position labels) the logits and their probabilities
                + 16 bytes x params (parameters, gradients, AdamW's two moments)
    autodiff    what JAX's autodiff keeps for the backward pass (the VJP's residuals, traced)
    train       the compiled train step: arguments + temporaries + outputs (donated outputs
                counted once), the bytes the step needs at once
    ratio       train / estimate; ``!`` outside [1/2, 2] without a stated reason (REASONS, given
                in the note column)
    eval        the compiled eval step (one batch, no gradients)

The sizes are those of the backend the script runs on (the CPU's, by default: its fusion and
scheduling decide the temporaries; a GPU compiles to other numbers). Exit status 1 when a ratio
is outside [1/2, 2] without a stated reason, or a config fails to compile.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time

import jax

from seqzoo.runner.experiments import experiment_names, load_experiment
from seqzoo.runner.memory import (
    GIB,
    abstract_build,
    activation_estimate,
    activation_factor,
    residual_bytes,
    step_memory,
)

# config name (glob) -> why its ratio lies outside [1/2, 2]: what the mixer's core keeps for the
# backward pass beyond the estimate (which assumes the core recomputes its intermediates, as
# seqzoo.ops.lean_grad does: blockwise for S4/S4D, attention, RAT, H3, Based's feature map with
# its linear attention and the SSM layers' conv stage, gate and norm, and chunked scans for the
# selective scan, SSD / Hydra, the chunked linear attention and the delta rule).
REASONS: dict[str, str] = {
}


def reason(name: str) -> str:
    return next((why for pattern, why in REASONS.items() if fnmatch.fnmatch(name, pattern)), "")


def measure(name: str, eval_step: bool) -> dict:
    cfg = load_experiment(name)
    built = abstract_build(cfg)
    start = time.perf_counter()
    memory = step_memory(built, eval_step=eval_step)
    return {
        "name": name,
        "mixer": cfg.model.mixer,
        "shape": f"{cfg.optim.batch_size}x{built.data.seq_len}x{cfg.model.d_model}"
                 f"x{cfg.model.n_layers}",
        "params": built.num_params,
        "factor": activation_factor(built),
        "estimate": activation_estimate(built),
        "autodiff": residual_bytes(built),
        "train": memory["train"]["peak"],
        "eval": memory["eval"]["peak"] if eval_step else None,
        "seconds": time.perf_counter() - start,
    }


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="experiment name globs (default: all)")
    parser.add_argument("--markdown", action="store_true", help="a markdown table")
    parser.add_argument("--no-eval", action="store_true", help="only the train step")
    args = parser.parse_args(argv)
    names = [n for n in experiment_names() if n != "default"]
    if args.patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.patterns)]
    print(f"jax {jax.__version__}, {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"{time.strftime('%Y-%m-%d')}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
          file=sys.stderr)
    header = ["config", "mixer", "B x L x D x layers", "params", "factor", "estimate GiB",
              "autodiff GiB", "train GiB", "ratio"]
    header += ["eval GiB", "note"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("  ".join(header))
    failures = 0
    for name in names:
        try:
            r = measure(name, not args.no_eval)
        except Exception as e:  # noqa: BLE001 - one bad config does not stop the table
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
            failures += 1
            continue
        ratio = r["train"] / r["estimate"]
        why = reason(name)
        off = not 0.5 <= ratio <= 2.0
        failures += off and not why
        cells = [name, r["mixer"], r["shape"], f"{r['params']:,}", f"{r['factor']:.1f}",
                 gib(r["estimate"]), gib(r["autodiff"]), gib(r["train"]),
                 f"{ratio:.2f}" + ("!" if off and not why else "")]
        cells += [gib(r["eval"]), why if off else ""]
        sep = " | " if args.markdown else "  "
        line = sep.join(cells)
        print(f"| {line} |" if args.markdown else line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
