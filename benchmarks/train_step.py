"""Time the runner's training step (forward, backward, AdamW update) of experiment configs.

    python benchmarks/train_step.py repro/listops_hydra repro/pathfinder_s4d \\
        [--variant 'model.mixer_options={"impl": "chunked"}'] [--steps 20] [--repeats 5]

Each config (a name under experiments/, as ``seqzoo train`` takes it) is built as the runner
builds it, with only enough generated data for the timed batches; then, for the config as
written and once per ``--variant`` (overrides separated by ``;``, applied on top), the jitted
train step is compiled and run ``--steps`` times back to back, ``--repeats`` times. One markdown
table: per config and variant, the median ms per step, the compile seconds, and the steps that
fit in 7.25 minutes (a repro run's training time in an 8-minute call). The batches are real
ones from the task, so padding and masks are as in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from seqzoo.config import apply_overrides
from seqzoo.runner.build import build
from seqzoo.runner.data import BatchSampler
from seqzoo.runner.experiments import load_experiment
from seqzoo.runner.optim import make_optimizer
from seqzoo.runner.sharding import put_batch
from seqzoo.runner.steps import init_opt_state, train_step_fn

BUDGET_S = 7.25 * 60


def time_config(name: str, overrides: list[str], steps: int, repeats: int) -> tuple[float, float]:
    """(median ms per step, compile s) of ``name`` with ``overrides``."""
    cfg = load_experiment(name)
    examples = cfg.optim.batch_size * steps
    cfg = apply_overrides(
        cfg, [f"task.num_train={examples}", "task.num_val=8", "task.num_test=8", *overrides]
    )
    built = build(cfg)
    optimizer = make_optimizer(cfg.optim)
    key = jax.random.PRNGKey(0)
    params = built.init_params(key)
    opt_state = init_opt_state(built, optimizer, params)
    sampler = BatchSampler(built.data["train"], cfg.optim.batch_size, cfg.seed)
    batches = [put_batch(sampler.batch(step), built.mesh) for step in range(1, steps + 1)]
    start = time.perf_counter()
    step_fn = train_step_fn(built, optimizer, key).lower(params, opt_state, batches[0], 1).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats + 1):  # the first repeat warms up
        start = time.perf_counter()
        for step, batch in enumerate(batches, 1):
            params, opt_state, stats = step_fn(params, opt_state, batch, step)
        jax.block_until_ready(stats)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times[1:]), compile_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument(
        "--variant", action="append", default=[], help="overrides separated by ';' (repeatable)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(
        f"# {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    variants = [[]] + [[o.strip() for o in v.split(";") if o.strip()] for v in args.variant]
    rows = []
    for name in args.configs:
        for overrides in variants:
            ms, compile_s = time_config(name, overrides, args.steps, args.repeats)
            label = " ".join(overrides) or "(as written)"
            rows.append(
                f"| {name} | `{label}` | {ms:.2f} | {compile_s:.1f} | "
                f"{int(BUDGET_S * 1e3 / ms):,} |"
            )
            print(rows[-1], flush=True)
    print("\n| config | variant | ms / step | compile s | steps in 7.25 min |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
