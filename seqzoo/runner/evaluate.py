"""Evaluate a finished (or interrupted) run from its directory: the config it saved, its latest
(or best) checkpoint that reads back whole, one split of its task. Nothing in the run directory
is written, so a run can be evaluated while it trains."""

from __future__ import annotations

from pathlib import Path

from seqzoo.data.progress import progress_output
from seqzoo.runner.build import build
from seqzoo.runner.checkpoint import Checkpoints
from seqzoo.runner.progress import eval_bar
from seqzoo.runner.rundir import run_config
from seqzoo.runner.steps import eval_step_fn, evaluate


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    best: bool = False,
    log=print,
    progress: bool | None = None,
) -> dict:
    """``{"step", "loss", "accuracy"}`` of the run's latest (``best``: best validation)
    checkpoint on ``split``; with the final checkpoint this is the run's final test result.
    A newer checkpoint that does not read back whole is passed over: ``log`` gets a line
    naming it and the reason. ``progress``: as for ``seqzoo.runner.train`` (the data, if it
    is generated, and the evaluation)."""
    with progress_output(progress):
        built = build(run_config(run_dir))
        checkpoints = Checkpoints(run_dir, read_only=True)
        try:
            restored = checkpoints.restore_params(built.params_shape, best=best)
        finally:
            checkpoints.close()
        for path, reason in restored.skipped:
            log(f"skipped the newer checkpoint {path}: {reason}")
        data = built.data[split]
        with eval_bar(data, built.cfg.optim.batch_size, split) as bar:
            result = evaluate(eval_step_fn(built), restored.items["params"], data, built, bar)
    return {"step": restored.step, **result}
