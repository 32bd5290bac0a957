"""The training loop: jit steps over the data mesh, periodic validation, checkpoints, metrics.

    for step s = 1..optim.steps:   batch(seed, s) -> train step (AdamW groups, clipping)
        every log_every:           metrics.jsonl / TensorBoard / progress bar; NaN guard
        every eval_every:          validation; the best params are checkpointed
        every checkpoint_every:    params, optimizer state and step are checkpointed
    at the end:                    test split, summary.json
    past max_minutes (if set):     the step it finishes is the last one (evaluated, saved)

The batch and the dropout key of step s are functions of (seed, s), so a run resumed from its
checkpoint at step k repeats steps k+1.. exactly as an uninterrupted run does. Train metrics
stay on the device between log steps; the guard then checks every step's loss and gradient norm
and stops at the first non-finite one, before any checkpoint is written after it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seqzoo.config import ExperimentConfig
from seqzoo.runner.build import Built, build, param_count
from seqzoo.runner.checkpoint import LATEST, Checkpoints
from seqzoo.runner.data import BatchSampler
from seqzoo.runner.metrics import MetricsLog
from seqzoo.runner.optim import make_optimizer
from seqzoo.runner.progress import ProgressBar
from seqzoo.runner.rundir import prepare_run_dir, write_summary
from seqzoo.runner.sharding import put_batch
from seqzoo.runner.steps import eval_step_fn, evaluate, init_opt_state, train_step_fn

CHECKED = ("loss", "grad_norm")  # a non-finite value stops the run
AVERAGED = ("loss", "accuracy", "grad_norm")  # per train record, over its steps


class TrainingDiverged(RuntimeError):
    """A non-finite training loss or gradient norm stopped the run."""


class _Trainer:
    """One run in a prepared run directory: state, checkpoints, metrics, the loop."""

    def __init__(self, built: Built, run_dir: Path, resume: bool, log, progress, deadline=None):
        cfg = self.cfg = built.cfg
        self.deadline = deadline  # time.perf_counter() after which no new step starts
        self.built, self.log = built, log
        init_key, self.dropout_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
        self.optimizer = make_optimizer(cfg.optim)
        self.params = built.init_params(init_key)
        self.opt_state = init_opt_state(built, self.optimizer, self.params)
        self.checkpoints = Checkpoints(run_dir, cfg.keep_checkpoints)
        self.meta = {"step": 0, "best_val_accuracy": -1.0, "best_step": 0}
        if resume:
            if self.checkpoints.latest_step() is None:
                self.checkpoints.close()
                raise FileNotFoundError(f"nothing to resume: no checkpoint in {run_dir / LATEST}")
            self.params, self.opt_state, self.meta = self.checkpoints.restore(
                self.params, self.opt_state
            )
            self.checkpoints.discard_best_after(self.meta["step"])
        self.metrics = MetricsLog(run_dir, self.meta["step"])
        self.bar = ProgressBar(cfg.optim.steps, progress)
        self.eval_step = eval_step_fn(built)
        self.tokens_per_step = cfg.optim.batch_size * built.data.seq_len
        self.pending: list[tuple[int, dict]] = []
        self.train_seconds, self.tokens_trained = 0.0, 0

    # ---- train metrics -----------------------------------------------------------------------
    def _flush(self, step: int) -> dict[str, float]:
        """Fetch the metrics of the steps since the last flush, check them, write a record."""
        values = jax.device_get(self.pending)
        self.pending = []
        for s, v in values:
            if not all(np.isfinite(v[k]) for k in CHECKED):
                raise TrainingDiverged(self._diverged(s, v))
        seconds = time.perf_counter() - self.clock
        self.train_seconds += seconds
        self.tokens_trained += len(values) * self.tokens_per_step
        record = {k: float(np.mean([v[k] for _, v in values])) for k in AVERAGED}
        record["lr"] = float(values[-1][1]["lr"])
        record["tokens_per_second"] = len(values) * self.tokens_per_step / max(seconds, 1e-9)
        self.metrics.write(step, "train", record)
        self.bar.update(step, record["loss"], record["accuracy"], record["tokens_per_second"])
        return record

    def _diverged(self, step: int, v: dict) -> str:
        last = self.checkpoints.latest_step()
        kept = (
            f"the last good checkpoint is step {last} in {self.checkpoints.latest.directory}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        return (
            f"non-finite training loss at step {step} (loss {float(v['loss'])}, grad norm "
            f"{float(v['grad_norm'])}); the run stopped and {kept}. Try a lower optim.lr or "
            f"optim.grad_clip, model.dtype=float32, or check the data"
        )

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> None:
        """Steps ``meta["step"] + 1 .. optim.steps``."""
        cfg, built = self.cfg, self.built
        first = self.meta["step"] + 1
        if first > cfg.optim.steps:
            return
        sampler = BatchSampler(built.data["train"], cfg.optim.batch_size, cfg.seed)
        val_split = built.data["val"] if "val" in built.data.splits else built.data["test"]
        train_step = train_step_fn(built, self.optimizer, self.dropout_key)
        example = put_batch(sampler.batch(first), built.mesh)
        train_step = train_step.lower(self.params, self.opt_state, example, first).compile()
        started = self.clock = time.perf_counter()
        for step in range(first, cfg.optim.steps + 1):
            batch = put_batch(sampler.batch(step), built.mesh)
            self.params, self.opt_state, stats = train_step(
                self.params, self.opt_state, batch, step
            )
            self.pending.append((step, stats))
            last = step == cfg.optim.steps or self._out_of_time()
            evaluate_now = step % cfg.eval_every == 0 or last
            save_now = step % cfg.checkpoint_every == 0 or last
            if not (step % cfg.log_every == 0 or evaluate_now or save_now):
                continue
            record = self._flush(step)
            if evaluate_now:
                val = evaluate(self.eval_step, self.params, val_split, built)
                self.metrics.write(step, "val", val)
                self.bar.clear()
                self.log(_eval_line(step, record, val, time.perf_counter() - started))
                if val["accuracy"] > self.meta["best_val_accuracy"]:
                    self.meta.update(best_val_accuracy=val["accuracy"], best_step=step)
                    self.checkpoints.save_best(step, self.params, {"step": step, **val})
            if save_now:
                self.meta["step"] = step
                self.checkpoints.save(step, self.params, self.opt_state, self.meta)
            self.clock = time.perf_counter()  # evaluation and saving are not training time
            if last:
                break

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def test(self) -> dict[str, float]:
        """The final params on the test split (also written as the ``test`` record)."""
        result = evaluate(self.eval_step, self.params, self.built.data["test"], self.built)
        self.metrics.write(self.meta["step"], "test", result)
        return result

    def close(self) -> None:
        self.bar.clear()
        self.metrics.close()
        self.checkpoints.close()


def _eval_line(step: int, train: dict, val: dict, seconds: float) -> str:
    return (
        f"step {step:5d}  train loss {train['loss']:.4f} acc {train['accuracy']:.3f}  "
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.3f}  "
        f"{train['tokens_per_second']:,.0f} tok/s  ({seconds:.0f}s)"
    )


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its latest checkpoint with ``resume``).

    Everything is checked before ``run_dir`` is touched. ``log`` gets a header line and one
    line per evaluation; ``progress``: draw a progress bar on stderr (None: if it is a TTY).
    Returns the summary also written to ``summary.json``: ``test_accuracy``, ``test_loss``,
    ``best_val_accuracy``, ``best_step``, ``steps`` (the last one trained: fewer than
    ``optim.steps`` when ``max_minutes`` ran out), ``params``, ``seconds`` (wall),
    ``tokens_per_second`` (training steps of this session only). Raises ``TrainingDiverged``
    on a non-finite loss.
    """
    started = time.perf_counter()
    deadline = started + 60 * cfg.max_minutes if cfg.max_minutes > 0 else None
    built = build(cfg)
    run_dir = prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    trainer = _Trainer(built, run_dir, resume, log, progress, deadline)
    try:
        log(
            f"run {run_dir}: {cfg.task.name}, {param_count(trainer.params):,} parameters, "
            f"mixers {built.model.layer_mixers()}, {built.mesh.size} {jax.default_backend()} "
            f"device(s)" + (f", resuming after step {trainer.meta['step']}" if resume else "")
        )
        log(built.params_line())
        trainer.fit()
        test = trainer.test()
    finally:
        trainer.close()
    summary = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "best_val_accuracy": trainer.meta["best_val_accuracy"],
        "best_step": trainer.meta["best_step"],
        "steps": trainer.meta["step"],
        "params": param_count(trainer.params),
        "seconds": time.perf_counter() - started,
        "tokens_per_second": trainer.tokens_trained / max(trainer.train_seconds, 1e-9),
    }
    write_summary(run_dir, summary)
    return summary
