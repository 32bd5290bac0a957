"""The training loop: jit steps over the data mesh, periodic validation, checkpoints, metrics.

    for step s = 1..optim.steps:   batch(seed, s) -> train step (AdamW groups, clipping)
        every log_every:           metrics.jsonl / TensorBoard; NaN guard (the bar: every step)
        every eval_every:          validation; the best params are checkpointed
        every checkpoint_every:    params, optimizer state and step are checkpointed
    at the end:                    test split; the test split at the best-validation
                                   checkpoint too where that is an earlier step; summary.json
    past max_minutes (if set):     the step it finishes is the last one (evaluated, saved)
    on SIGINT / SIGTERM:           the step under way is finished and saved, then the run stops

The batch and the dropout key of step s are functions of (seed, s), so a run resumed from its
checkpoint at step k repeats steps k+1.. exactly as an uninterrupted run does. A checkpoint
saved on a signal between two train records also carries the metrics of the steps since the
last record (``meta["pending"]``), so the resumed run writes the same records as well. The
run holds the lock of its directory throughout (``runner.lock``); resuming, nothing in the
directory changes until the newest checkpoint that reads back whole is restored
(``runner.resume``).

The NaN guard: train metrics stay on the device between log steps; the guard then checks every
step's loss and gradient norm and stops at the first non-finite one. Before each evaluation or
checkpoint it checks the parameters, then the validation loss, so every checkpoint written
holds finite values only.

Out of memory: XLA's ``RESOURCE_EXHAUSTED`` while compiling or running a step (or evaluating)
stops the run with ``memory.OutOfMemory``, whose message names the phase, ``optim.batch_size``,
``optim.accumulate`` and the compiled step's size; XLA's error is its ``__cause__``.

Over several processes (``seqzoo.runner.distributed``) every process runs this loop on its rows
of each batch; process 0 alone holds the lock, writes ``config.toml``, the metrics, the resume
record and the summary, logs and draws the bars; all of them save and restore the checkpoints.
A stop one process decides alone (a signal, ``max_minutes``) is agreed at the next log step,
so that all stop after the same step.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seqzoo.config import ExperimentConfig
from seqzoo.data.progress import Progress, progress_output
from seqzoo.runner.build import Built, build, param_count
from seqzoo.runner.checkpoint import LATEST, Checkpoints, Restored, abstract, set_aside
from seqzoo.runner.data import BatchSampler
from seqzoo.runner.distributed import agree, barrier, is_main
from seqzoo.runner.init_from import Initial, load_initial, write_init
from seqzoo.runner.integrity import nonfinite_leaves
from seqzoo.runner.lock import RunLock
from seqzoo.runner.memory import is_out_of_memory, out_of_memory
from seqzoo.runner.metrics import MetricsLog, NoMetrics
from seqzoo.runner.optim import make_optimizer
from seqzoo.runner.progress import completed, eval_bar
from seqzoo.runner.resume import RESUMES_FILE, record_resume, resume_changes
from seqzoo.runner.rundir import check_run_dir, start_run_dir, write_summary
from seqzoo.runner.sharding import describe_devices, process_rows, put_batch
from seqzoo.runner.signals import RunInterrupted, StopSignals
from seqzoo.runner.steps import eval_step_fn, evaluate, init_opt_state, train_step_fn

CHECKED = ("loss", "grad_norm")  # a non-finite value stops the run
AVERAGED = ("loss", "accuracy", "grad_norm")  # per train record, over its steps
PENDING = "pending"  # meta key of a checkpoint saved on a signal: the steps not yet recorded


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient norm or parameter stopped the run."""


def _restore(run_dir: Path, params: Any, opt_state: Any) -> Restored:
    """The newest checkpoint of ``run_dir`` that reads back whole (read only: on failure the
    folder is as it was)."""
    reader = Checkpoints(run_dir, read_only=True)
    try:
        if reader.latest_step() is None:
            raise FileNotFoundError(
                f"nothing to resume: no checkpoint in {run_dir / LATEST}; start the run again "
                f"with --overwrite"
            )
        return reader.restore(params, opt_state)
    finally:
        reader.close()


class _Trainer:
    """One run in its locked run directory: state, checkpoints, metrics, the loop.

    ``changes``: None for a new run; resuming, the config changes from the run's config
    (``resume.resume_changes``), recorded once the restore succeeded (by process 0: the other
    processes get ``{}``). ``initial``: a new run's starting variables (``init_from``), if not
    freshly initialised ones.
    """

    def __init__(self, built: Built, run_dir: Path, changes, log, deadline=None,
                 initial: Initial | None = None):
        cfg = self.cfg = built.cfg
        self.deadline = deadline  # time.perf_counter() after which no new step starts
        self.built, self.log, self.run_dir = built, log, run_dir
        # the split that validates (picks the best checkpoint): the test split if there is no val
        self.val_name = "val" if "val" in built.data.splits else "test"
        init_key, self.dropout_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
        self.optimizer = make_optimizer(cfg.optim)
        # a new run from another run's variables (init_from) or freshly initialised ones
        self.params = initial.variables if initial else built.init_params(init_key)
        self.opt_state = init_opt_state(built, self.optimizer, self.params)
        self.meta = {"step": 0, "best_val_accuracy": -1.0, "best_step": 0}
        self.last_good: Path | None = None  # the newest checkpoint known to be finite
        restored = None
        if changes is not None:  # nothing on disk changes before this restore succeeded
            restored = _restore(run_dir, self.params, self.opt_state)
            self.params, self.opt_state, self.meta = (
                restored.items[k] for k in ("params", "opt_state", "meta")
            )
            self.last_good = restored.path
        self.main = is_main()  # process 0: writes the run directory's own files
        # first: fails on a damaged file
        self.metrics = MetricsLog(run_dir, self.meta["step"]) if self.main else NoMetrics()
        moved = set_aside(run_dir, restored.skipped) if restored and self.main else {}
        barrier("seqzoo:set_aside")  # before any process's orbax lists the checkpoints
        self.checkpoints = Checkpoints(run_dir, cfg.keep_checkpoints)
        self.checkpoints.discard_best_after(self.meta["step"])
        if restored is not None and self.main:
            record_resume(run_dir, cfg, restored, moved, changes)
            self._log_resume(restored, moved, changes)
        self.updated = self.meta["step"] > 0  # whether an update may have changed the params
        self.bar: Progress | None = None  # the training bar, while the loop runs
        self.signals = StopSignals()  # SIGINT and SIGTERM while the loop runs
        self.eval_step = eval_step_fn(built)
        self.tokens_per_step = cfg.optim.batch_size * built.data.seq_len
        self.pending: list[tuple[int, dict]] = []  # (step, metrics on the device) not recorded
        # ... and those a checkpoint saved on a signal carried over, with their training time
        self.carried, self.carried_seconds = _carried(self.meta.pop(PENDING, None))
        self.last_loss = float("nan")  # of the last step collected
        self.train_seconds, self.tokens_trained = 0.0, 0
        self.phase, self.compiled = "compiling the training step", None  # for out_of_memory

    def _log_resume(self, restored: Restored, moved: dict, changes: dict) -> None:
        self.log(f"resuming from {restored.path} (step {restored.step})")
        for path, reason in restored.skipped:
            where = f" (moved to {moved[path]})" if path in moved else ""
            self.log(f"skipped the newer checkpoint {path}{where}: {reason}")
        if changes:
            listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
            self.log(f"changed on resume (recorded in {RESUMES_FILE}): {listed}")
        if restored.step >= self.cfg.optim.steps:
            self.log(f"the run had reached step {restored.step} of optim.steps="
                     f"{self.cfg.optim.steps}: only its test split is evaluated again")

    # ---- train metrics -----------------------------------------------------------------------
    def _collect(self) -> list[tuple[int, dict]]:
        """The metrics of the steps since the last record (waited for in order, advancing the
        bar), checked by the NaN guard."""
        completed([stats for _, stats in self.pending], self.bar)
        values = self.carried + jax.device_get(self.pending)
        self.pending, self.carried = [], []
        for s, v in values:
            if not all(np.isfinite(v[k]) for k in CHECKED):
                raise TrainingDiverged(self._diverged(s, v))
            self.updated = self.updated or float(v["lr"]) != 0  # NaN counts as an update
        if values:
            self.last_loss = float(values[-1][1]["loss"])
        return values

    def _flush(self, step: int) -> dict[str, float]:
        """Collect the metrics of the steps since the last record and write their record."""
        values = self._collect()
        seconds = time.perf_counter() - self.clock
        self.train_seconds += seconds
        self.tokens_trained += len(values) * self.tokens_per_step
        record = {k: float(np.mean([v[k] for _, v in values])) for k in AVERAGED}
        record["lr"] = float(values[-1][1]["lr"])
        record["tokens_per_second"] = len(values) * self.tokens_per_step / max(seconds, 1e-9)
        self.metrics.write(step, "train", record)
        self.bar.update(0, note=(
            f"loss {record['loss']:.4f} acc {record['accuracy']:.3f} "
            f"{record['tokens_per_second']:,.0f} tok/s"
        ))
        return record

    def _kept(self) -> str:
        """Where the run can be resumed from: the newest checkpoint known to be finite."""
        if self.last_good is None:
            return "the run stopped; no checkpoint had been written yet"
        return (
            f"the run stopped and the last good checkpoint is step {self.last_good.name} in "
            f"{self.last_good}"
        )

    def _diverged(self, step: int, v: dict) -> str:
        what = (
            f"non-finite training loss at step {step} (loss {float(v['loss'])}, grad norm "
            f"{float(v['grad_norm'])})"
        )
        if not self.updated:
            return (
                f"{what}, computed with the initial parameters (no update had changed them), so "
                f"the learning rate is not the cause: check the data (labels outside the task's "
                f"classes, token ids or pixel values beyond the vocabulary) and the model "
                f"config (e.g. model.dtype=float32); {self._kept()}"
            )
        return (
            f"{what}; {self._kept()}. Try a lower optim.lr or optim.grad_clip, "
            f"model.dtype=float32, or check the data"
        )

    def _check_params(self, step: int) -> None:
        """Stop unless every parameter is finite (before they are evaluated or saved)."""
        bad = nonfinite_leaves(self.params)
        if bad:
            raise TrainingDiverged(
                f"the update of step {step} made parameters non-finite ({', '.join(bad[:3])}) "
                f"though the training loss was finite ({self.last_loss:.4g}); {self._kept()}. "
                f"Try a lower optim.lr or optim.grad_clip, or model.dtype=float32"
            )

    def _check_val(self, step: int, record: dict, val: dict, split: str) -> None:
        """Stop on a non-finite validation loss (with finite parameters: the data's fault)."""
        if not np.isfinite(val["loss"]):
            raise TrainingDiverged(
                f"non-finite loss on the {split} split at step {step} ({val['loss']}) while the "
                f"training loss ({record['loss']:.4g}) and the parameters are finite: check the "
                f"{split} data (labels outside the task's classes, token ids or pixel values "
                f"beyond the vocabulary); {self._kept()}"
            )

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> None:
        """Steps ``meta["step"] + 1 .. optim.steps``; after a SIGINT or SIGTERM (``self.signals``),
        the step under way is finished and saved, then ``RunInterrupted`` is raised."""
        cfg, built = self.cfg, self.built
        first = self.meta["step"] + 1
        if first > cfg.optim.steps:
            return
        size = cfg.optim.batch_size
        rows = process_rows(built.mesh, size)  # this process reads only these of each batch
        sampler = BatchSampler(built.data["train"], size, cfg.seed, rows)
        train_step = train_step_fn(built, self.optimizer, self.dropout_key)
        example = put_batch(sampler.batch(first), built.mesh, size)
        self.phase = "compiling the training step"
        train_step = self.compiled = train_step.lower(
            self.params, self.opt_state, example, first
        ).compile()
        self.bar = Progress(cfg.optim.steps, "train (steps)", start=first - 1, transient=True)
        started = time.perf_counter()
        self.clock = started - self.carried_seconds
        for step in range(first, cfg.optim.steps + 1):
            self.phase = "the training step"
            batch = put_batch(sampler.batch(step), built.mesh, size)
            self.params, self.opt_state, stats = train_step(
                self.params, self.opt_state, batch, step
            )
            self.pending.append((step, stats))
            out_of_time, received = self._stop_requests(step)
            last = step == cfg.optim.steps or out_of_time
            evaluate_now = step % cfg.eval_every == 0 or last
            save_now = step % cfg.checkpoint_every == 0 or last
            if step % cfg.log_every == 0 or evaluate_now or save_now:
                self._log_step(step, evaluate_now, save_now, started)
            if received is not None:
                self._stop(step, received)
            if last:
                break

    def _stop_requests(self, step: int) -> tuple[bool, signal.Signals | None]:
        """``(max_minutes spent, the signal received)`` after ``step``. Over several processes,
        agreed by all at log steps only (none elsewhere: the collective would wait for the
        steps under way); a process that received no signal stops on the others' as SIGTERM."""
        out_of_time, received = self._out_of_time(), self.signals.received
        if jax.process_count() == 1:
            return out_of_time, received
        if step % self.cfg.log_every:
            return False, None
        stop = agree(received is not None)
        return agree(out_of_time), (received or signal.SIGTERM) if stop else None

    def _log_step(
        self, step: int, evaluate_now: bool, save_now: bool, started: float
    ) -> None:
        """The train record of ``step``, and its evaluation and checkpoint where due."""
        record = self._flush(step)
        if evaluate_now or save_now:
            self._check_params(step)
        if evaluate_now:
            val = self._evaluate(self.val_name)
            self._check_val(step, record, val, self.val_name)
            self.metrics.write(step, "val", val)
            self.log(_eval_line(step, record, val, time.perf_counter() - started))
            if val["accuracy"] > self.meta["best_val_accuracy"]:
                self.meta.update(best_val_accuracy=val["accuracy"], best_step=step)
                self.checkpoints.save_best(step, self.params, {"step": step, **val})
        if save_now:
            self._save(step)
        self.clock = time.perf_counter()  # evaluation and saving are not training time

    def _evaluate(self, name: str, params: Any = None) -> dict[str, float]:
        """The current parameters (or ``params``) on split ``name``, with a bar."""
        split = self.built.data[name]
        self.phase = f"the eval step (the {name} split)"
        if self.bar is not None:
            self.bar.clear()
        with eval_bar(split, self.cfg.optim.batch_size, name) as bar:
            params = self.params if params is None else params
            return evaluate(self.eval_step, params, split, self.built, bar)

    def _save(self, step: int, pending: dict | None = None) -> None:
        """Start saving the checkpoint of ``step`` (with ``pending``: the steps not recorded)."""
        self.meta["step"] = step
        meta = self.meta if pending is None else {**self.meta, PENDING: pending}
        self.checkpoints.save(step, self.params, self.opt_state, meta)
        self.last_good = Path(self.checkpoints.latest.directory) / str(step)

    def _stop(self, step: int, received: signal.Signals) -> None:
        """Save ``step`` (unless it was just saved) with the metrics of its steps not yet
        recorded, then raise ``RunInterrupted``."""
        if self.meta["step"] != step:
            values = self._collect()
            self._check_params(step)
            seconds = time.perf_counter() - self.clock
            self._save(step, _pending(values, seconds) if values else None)
        raise RunInterrupted(received.name, int(received), step, self.last_good)

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def test(self) -> dict[str, float]:
        """The final params on the test split (also written as the ``test`` record)."""
        result = self._evaluate("test")
        self.metrics.write(self.meta["step"], "test", result)
        return result

    def test_best(self, final: dict[str, float]) -> dict[str, Any]:
        """The test split at the best-validation checkpoint, ``{"step", "loss", "accuracy"}``
        (``final``'s where that is the final step, or there is none), also written as the
        ``test_best`` record of the final step: the reading of papers that report test at the
        best validation (LRA's, S4's), and of runs whose last evaluation fell (batch norm's
        running statistics behind a fast-moving model)."""
        best = self.meta["best_step"]
        never = self.meta["best_val_accuracy"] < 0  # no validation yet: no best checkpoint
        if never or best == self.meta["step"] or self.val_name != "val":
            return {"step": self.meta["step"], **final}
        self.checkpoints.best.wait_until_finished()
        restored = self.checkpoints.restore_params(abstract(self.params), best=True)
        result = self._evaluate("test", restored.items["params"])
        self.metrics.write(self.meta["step"], "test_best", result)
        return {"step": restored.step, **result}

    def run(self, started: float) -> dict[str, Any]:
        """Train, test and close; the summary (``started``: ``time.perf_counter()`` when the
        run began)."""
        built = self.built
        try:
            self.log(
                f"run {self.run_dir}: {built.cfg.task.name}, {param_count(self.params):,} "
                f"parameters, mixers {built.model.layer_mixers()}, "
                f"{describe_devices(built.mesh)}"
                + (f", resuming after step {self.meta['step']}" if self.meta["step"] else "")
            )
            self.log(built.params_line())
            try:
                with self.signals:
                    self.fit()
                test = self.test()
                best_test = self.test_best(test)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                compiled = self.compiled if self.phase == "the training step" else None
                raise out_of_memory(self.cfg, self.phase, e, compiled) from e
        finally:
            self.close()
        return {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "best_val_accuracy": self.meta["best_val_accuracy"],
            "best_step": self.meta["best_step"],
            "best_test_accuracy": best_test["accuracy"],
            "best_test_loss": best_test["loss"],
            "best_test_step": best_test["step"],
            "steps": self.meta["step"],
            "params": param_count(self.params),
            "seconds": time.perf_counter() - started,
            "tokens_per_second": self.tokens_trained / max(self.train_seconds, 1e-9),
        }

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        self.checkpoints.close()


def _pending(values: list[tuple[int, dict]], seconds: float) -> dict:
    """The metrics ``values`` of steps not yet recorded, as JSON for a checkpoint's meta:
    ``{"steps": [[step, {key: float}]], "dtypes": {key: dtype name}, "seconds"}``."""
    return {
        "steps": [[s, {k: float(x) for k, x in v.items()}] for s, v in values],
        "dtypes": {k: np.asarray(x).dtype.name for k, x in values[0][1].items()},
        "seconds": seconds,
    }


def _carried(pending: dict | None) -> tuple[list[tuple[int, dict]], float]:
    """The steps and training seconds of ``_pending`` JSON, in their dtypes again (so their
    averages round as in the uninterrupted run)."""
    if not pending:
        return [], 0.0
    types = {k: np.dtype(name).type for k, name in pending["dtypes"].items()}
    steps = [(s, {k: types[k](x) for k, x in v.items()}) for s, v in pending["steps"]]
    return steps, pending["seconds"]


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
    init_from: str | Path | None = None,
    init_best: bool = False,
    log=print,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resuming from its latest checkpoint with ``resume``; a new
    run starting from the variables of the run ``init_from``'s latest, ``init_best``: best,
    checkpoint, see ``runner.init_from``).

    Everything is checked before ``run_dir`` is touched; the run holds its lock throughout
    (``lock.RunDirLocked`` if another process has it). Resuming, ``cfg`` may differ from the
    run's config only in ``resume.RESUMABLE`` keys, and nothing on disk changes unless a
    checkpoint is restored. ``log`` gets a header line and one line per evaluation;
    ``progress``: whether data generation, training and evaluation show their progress on
    stderr (``seqzoo.data.progress``; None: as the caller's ``progress_output`` says, by
    default yes: a bar on a terminal, plain lines now and then elsewhere).
    Returns the summary also written to ``summary.json``: ``test_accuracy``, ``test_loss``,
    ``best_val_accuracy``, ``best_step``, ``best_test_accuracy`` / ``best_test_loss`` (the test
    split at the best-validation checkpoint of step ``best_test_step``; the final test where
    that is the final step or the task has no val split), ``steps`` (the last one trained:
    fewer than ``optim.steps`` when ``max_minutes`` ran out), ``params``, ``seconds`` (wall),
    ``tokens_per_second`` (training steps of this session only). Raises ``TrainingDiverged``
    on a non-finite loss, parameter or validation loss, ``RunInterrupted`` after SIGINT or
    SIGTERM (once the step under way is saved: resuming continues from it),
    ``memory.OutOfMemory`` when XLA runs out of memory compiling or running a step.
    Over several processes (``seqzoo.runner.distributed``) every process calls this with the
    same arguments; only process 0 logs, shows progress and writes the run directory's files.
    """
    started = time.perf_counter()
    deadline = started + 60 * cfg.max_minutes if cfg.max_minutes > 0 else None
    if init_from is not None and resume:
        raise ValueError("--init-from starts a new run; a resumed run continues from its own "
                         "checkpoint: drop --init-from")
    if init_best and init_from is None:
        raise ValueError("--init-best takes the best checkpoint of --init-from RUN_DIR: give it")
    if resume:  # refused overrides fail before the data is built (checked again under the lock)
        resume_changes(check_run_dir(run_dir, cfg, resume=True, overwrite=overwrite), cfg)
    main = is_main()
    log = log if main else _silent
    with progress_output(progress if main else False):
        built = build(cfg)
        run_dir = Path(run_dir)  # the source is read (and checked) before run_dir is touched
        initial = None if init_from is None else load_initial(init_from, built, init_best)
        with contextlib.ExitStack() as held:
            changes, failure = ({} if resume else None), None
            if main:
                try:
                    changes = _open_run_dir(run_dir, cfg, resume, overwrite, log, held, initial)
                except Exception as e:  # noqa: BLE001 (re-raised below, once all processes know)
                    failure = e
            if agree(failure is not None):
                raise failure or RuntimeError(
                    f"process 0 could not open the run directory {run_dir}: see its error"
                )
            summary = _Trainer(built, run_dir, changes, log, deadline, initial).run(started)
            if main:
                write_summary(run_dir, summary)
    return summary


def _silent(line: str) -> None:
    """The log of the processes other than 0."""


def _open_run_dir(
    run_dir: Path, cfg: ExperimentConfig, resume: bool, overwrite: bool, log, held,
    initial: Initial | None = None,
) -> dict | None:
    """Create (or check) ``run_dir``, take its lock (held until ``held`` closes) and start a new
    run there (recording its ``initial`` source, if any), or check a resume: the changes
    ``_Trainer`` takes (None for a new run)."""
    check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    held.enter_context(RunLock(run_dir, log))
    if resume:
        return resume_changes(run_dir, cfg)  # against the config as it is now
    start_run_dir(run_dir, cfg, overwrite=overwrite)
    if initial is not None:
        write_init(run_dir, initial)
        source = initial.record
        log(f"initialised from {source['path']} (the {source['checkpoint']} checkpoint of "
            f"{source['run_dir']}, step {source['step']})")
    return None
