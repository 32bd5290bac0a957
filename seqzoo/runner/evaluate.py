"""Evaluate a finished (or interrupted) run from its directory: the config it saved, its latest
(or best) checkpoint that reads back whole, one split of its task, or of the task with some of
its settings changed (``task.KEY=VALUE``: another difficulty, length or seed; a transfer test).
Nothing in the run directory is written, so a run can be evaluated while it trains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax

from seqzoo.config import ExperimentConfig, apply_overrides
from seqzoo.data.progress import progress_output
from seqzoo.runner.build import build
from seqzoo.runner.checkpoint import read_params
from seqzoo.runner.memory import abstract_build
from seqzoo.runner.progress import eval_bar
from seqzoo.runner.rundir import run_config
from seqzoo.runner.steps import eval_step_fn, evaluate


def with_task_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with ``task.KEY=VALUE`` overrides applied. Only the task may change, and only
    where the model keeps its parameters (the checkpoint fixes them): a new vocabulary, class
    count or length past a position table is refused before any data is made."""
    outside = [item for item in overrides if not item.startswith("task.")]
    if outside:
        raise ValueError(f"eval changes only the task (task.KEY=VALUE), not {outside}: the "
                         f"checkpoint fixes the model and the rest of the run")
    changed = apply_overrides(cfg, list(overrides))
    before, after = (jax.tree.map(lambda a: (a.shape, a.dtype), abstract_build(c).params_shape)
                     for c in (cfg, changed))
    if before != after:
        raise ValueError(f"{list(overrides)} change the model's parameters (its vocabulary, "
                         f"classes or inputs follow the task): the checkpoint cannot be "
                         f"evaluated on that task")
    return changed


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    best: bool = False,
    overrides: Sequence[str] = (),
    log=print,
    progress: bool | None = None,
) -> dict:
    """``{"step", "loss", "accuracy"}`` of the run's latest (``best``: best validation)
    checkpoint on ``split``; with the final checkpoint this is the run's final test result.
    ``overrides``: ``task.KEY=VALUE`` settings changed for this evaluation
    (``with_task_overrides``); a generated task then makes every split of the changed task
    (``task.num_train=64`` keeps that short; the test split's data moves with it). A newer
    checkpoint that does not read back whole is passed over: ``log`` gets a line naming it
    and the reason. ``progress``: as for ``seqzoo.runner.train`` (the data, if it is
    generated, and the evaluation)."""
    cfg = run_config(run_dir)
    if overrides:
        cfg = with_task_overrides(cfg, overrides)
    with progress_output(progress):
        built = build(cfg)
        restored = read_params(run_dir, built.params_shape, best)
        for path, reason in restored.skipped:
            log(f"skipped the newer checkpoint {path}: {reason}")
        data = built.data[split]
        with eval_bar(data, built.cfg.optim.batch_size, split) as bar:
            result = evaluate(eval_step_fn(built), restored.items["params"], data, built, bar)
    return {"step": restored.step, **result}
