"""Run directories that never lose work (issue 21, items 1-7 and 9), in this process: atomic
files and torn lines, the run lock, checkpoints that are consistent snapshots and are checked
when read back (falling back to an older one), resumes that refuse to change the model and
change nothing on disk when they fail, the best checkpoint kept, run names inside ``runs/``,
and the NaN guard. The kill -9 harness is in ``test_runner_resume_kills.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import seqzoo.runner.loop as loop
from seqzoo.cli import TRAIN_HELP, main
from seqzoo.config import apply_overrides
from seqzoo.runner import TrainingDiverged, train
from seqzoo.runner.build import build
from seqzoo.runner.checkpoint import Checkpoints
from seqzoo.runner.experiments import load_experiment
from seqzoo.runner.files import TornLineWarning, append_line, read_jsonl, write_atomic
from seqzoo.runner.lock import LOCK_FILE, RunDirLocked, RunLock
from seqzoo.runner.metrics import read_metrics
from seqzoo.runner.optim import make_optimizer
from seqzoo.runner.resume import RESUMABLE
from seqzoo.runner.rundir import default_run_dir
from seqzoo.runner.steps import init_opt_state

# one worker runs this module (--dist loadgroup): its tests share module-scoped fixtures
pytestmark = pytest.mark.xdist_group("test_runner_durability")

QUIET = {"log": lambda _: None, "progress": False}
RUN = ["optim.steps=6", "checkpoint_every=2", "eval_every=2", "keep_checkpoints=3"]


def smoke(*overrides: str):
    return apply_overrides(load_experiment("smoke"), list(overrides))


def records(run_dir) -> list[dict]:
    """metrics.jsonl without its timing."""
    return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in read_metrics(run_dir)]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes (folders as b"<dir>")."""
    return {
        str(p.relative_to(folder)): b"<dir>" if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 6-step smoke run: checkpoints 2, 4, 6; best checkpoints; metrics."""
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    train(smoke(*RUN), run_dir, **QUIET)
    return run_dir


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A fresh copy of the finished run (a new path each time: orbax caches by path)."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


# ---- durable files ---------------------------------------------------------------------------
def test_write_atomic_keeps_the_old_file_whole_if_killed_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_atomic(path, "old\n")

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temporary and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    monkeypatch.undo()
    write_atomic(path, "new\n")  # the temporary left behind is simply overwritten
    assert path.read_text() == "new\n"


def test_a_torn_last_line_is_dropped_with_a_warning_naming_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "sp')
    with pytest.warns(TornLineWarning, match=r"metrics\.jsonl: dropped its last line 2"):
        assert read_metrics(tmp_path) == [{"step": 1, "split": "train"}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "sp\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is not a JSON record"):
        read_metrics(tmp_path)


def test_append_line_cuts_a_torn_tail_before_appending(tmp_path):
    path = tmp_path / "resumes.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"')
    with pytest.warns(TornLineWarning, match="resumes.jsonl"):
        append_line(path, '{"a": 3}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]


# ---- the run lock ----------------------------------------------------------------------------
def test_a_second_process_on_a_run_is_refused_with_the_owners_pid(copy, capsys):
    before = snapshot(copy)
    with RunLock(copy):
        assert main(["train", "--resume", "--run-dir", str(copy)]) == 2
        assert f"is in use by process {os.getpid()}" in capsys.readouterr().err
        with pytest.raises(RunDirLocked, match=f"process {os.getpid()}"):
            train(smoke(*RUN), copy, overwrite=True, **QUIET)
    assert snapshot(copy) == before  # the lock file went with its owner


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "command": "seqzoo train"}))
    lines = []
    with RunLock(tmp_path, lines.append):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert lines == [f"took over the lock of {tmp_path} left by process {pid} (seqzoo train), "
                     f"which is no longer running"]
    assert not (tmp_path / LOCK_FILE).exists()


# ---- run names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "a/../../x", "/tmp/x"])
def test_run_names_cannot_leave_the_runs_folder(name, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert main(["train", "smoke", f"name={name}"]) == 2
    assert "name must be a relative name" in capsys.readouterr().err
    assert snapshot(tmp_path) == {"a": b"<dir>", "a/b": b"<dir>"}
    with pytest.raises(ValueError, match="name must be a relative name"):
        default_run_dir("")
    assert default_run_dir("lra/listops_s4d").parent == Path("runs/lra")


# ---- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_meta_is_copied_when_the_save_starts(tmp_path):
    """Orbax writes in the background: changing the meta dict after ``save`` (as the trainer
    does at its next step) must not change the checkpoint."""
    checkpoints = Checkpoints(tmp_path)
    big = {"w": jnp.ones((2000, 2000))}  # slow enough to write that the change comes first
    meta = {"step": 6, "best_val_accuracy": 0.5, "best_step": 6}
    checkpoints.save(6, big, big, meta)
    meta["step"] = 7
    checkpoints.close()
    reader = Checkpoints(tmp_path, read_only=True)
    restored = reader.restore(big, big)
    reader.close()
    assert restored.items["meta"] == {"step": 6, "best_val_accuracy": 0.5, "best_step": 6}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 4])
    elif how == "zeroed":
        path.write_bytes(bytes(len(data)))
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "flipped":
        flipped = bytearray(data)
        flipped[len(data) // 8] ^= 0x10
        path.write_bytes(bytes(flipped))


def _plain_restore(step_dir: Path):
    """What orbax alone reads back from a checkpoint's params (None: it fails)."""
    try:
        return ocp.StandardCheckpointer().restore((step_dir / "params").absolute())
    except Exception:  # noqa: BLE001
        return None


@pytest.fixture(scope="module")
def likes():
    """Parameters and optimizer state shaped as the finished run's (to restore into)."""
    built = build(smoke(*RUN))
    params = built.init_params(jax.random.PRNGKey(0))
    return params, init_opt_state(built, make_optimizer(built.cfg.optim), params)


# orbax alone, failing to read a damaged checkpoint, leaves reads that report errors later
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncated", "zeroed", "emptied", "flipped"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_older_whole_one(
    finished, copy, likes, how
):
    newest = copy / "checkpoints" / "6"
    data = max((p for p in (newest / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)  # the arrays' data file
    _damage(data, how)
    good, read = _plain_restore(finished / "checkpoints" / "6"), _plain_restore(newest)
    pairs = zip(jax.tree.leaves(good), jax.tree.leaves(read or good), strict=True)
    assert read is None or not all(np.array_equal(a, b) for a, b in pairs)  # the damage is real
    reader = Checkpoints(copy, read_only=True)
    restored = reader.restore(*likes)
    reader.close()
    assert restored.step == 4 and restored.path == (copy / "checkpoints" / "4").absolute()
    [(path, reason)] = restored.skipped
    assert path == newest.absolute()
    assert "checksum mismatch" in reason or "unreadable" in reason


def test_a_checkpoint_naming_another_step_or_holding_nan_is_skipped(copy, likes):
    params, opt_state = likes
    meta = copy / "checkpoints" / "6" / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('"step": 6', '"step": 7'))
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    writer = Checkpoints(copy, keep=4)
    writer.save(8, nan, opt_state, {"step": 8, "best_val_accuracy": 0.0, "best_step": 2})
    writer.close()
    reader = Checkpoints(copy, read_only=True)
    restored = reader.restore(params, opt_state)
    reader.close()
    assert restored.step == 4
    reasons = [reason for _, reason in restored.skipped]
    assert reasons[0].startswith("non-finite values in ['params']")
    assert reasons[1] == "its meta names step 7, not 6"


def test_resume_falls_back_says_why_and_repeats_the_uninterrupted_run(finished, copy, capsys):
    """The newest checkpoint has a flipped byte; the resume takes the older one, moves the bad
    one aside, records both and the (run-length) override, and ends as the original run."""
    _damage(copy / "checkpoints" / "6" / "meta" / "metadata", "flipped")
    assert main(["train", "--resume", "--run-dir", str(copy), "max_minutes=60"]) == 0
    out = capsys.readouterr().out
    newest = (copy / "checkpoints" / "6").absolute()
    assert f"resuming from {(copy / 'checkpoints' / '4').absolute()} (step 4)" in out
    assert f"skipped the newer checkpoint {newest} (moved to " in out
    assert "changed on resume (recorded in resumes.jsonl): max_minutes 0.0 -> 60.0" in out
    assert records(copy) == records(finished)
    assert (copy / "skipped" / "checkpoints-6" / "meta").is_dir()
    [record] = read_jsonl(copy / "resumes.jsonl")
    assert record["step"] == 4 and record["checkpoint"] == "checkpoints/4"
    assert record["skipped"][0]["path"] == "checkpoints/6"
    assert record["skipped"][0]["moved_to"] == "skipped/checkpoints-6"
    assert record["changes"] == {"max_minutes": [0.0, 60.0]}
    assert "max_minutes = 60.0" in (copy / "config.toml").read_text()
    assert not list(copy.glob(".*.tmp")) and not (copy / LOCK_FILE).exists()


def test_a_resume_that_fails_changes_nothing_on_disk(finished, copy, capsys):
    """No checkpoint reads back whole; or one does, but metrics.jsonl is damaged mid-file."""
    for step in (2, 4, 6):
        _damage(copy / "checkpoints" / str(step) / "meta" / "metadata", "zeroed")
    before = snapshot(copy)
    assert main(["train", "--resume", "--run-dir", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint in {(copy / 'checkpoints').absolute()} reads back whole" in err
    for step in (6, 4, 2):
        assert f"checkpoints/{step}: unreadable (JSONDecodeError" in err
    assert snapshot(copy) == before

    shutil.rmtree(copy / "checkpoints" / "2")
    shutil.copytree(finished / "checkpoints" / "2", copy / "checkpoints" / "2")
    metrics = copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"split": "val"', '"split": "val', 1))
    before = snapshot(copy)
    assert main(["train", "--resume", "--run-dir", str(copy)]) == 2
    assert "metrics.jsonl line 3 is not a JSON record" in capsys.readouterr().err
    assert snapshot(copy) == before  # checkpoints 4 and 6 were not even set aside


def test_resume_refuses_model_overrides_naming_each_and_changes_nothing(copy, capsys):
    before = snapshot(copy)
    argv = ["train", "--resume", "--run-dir", str(copy), "model.d_model=32", "seed=5",
            "optim.steps=8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "these overrides would change them: seed 0 -> 5, model.d_model 16 -> 32." in err
    assert "optim.steps" not in err.split("A resume may change only")[0]  # allowed, not listed
    assert snapshot(copy) == before
    assert all(key in TRAIN_HELP for key in RESUMABLE if not key.startswith("mesh."))


def test_eval_falls_back_to_the_older_whole_checkpoint(finished, copy, capsys):
    _damage(copy / "checkpoints" / "6" / "meta" / "metadata", "truncated")
    assert main(["eval", str(copy), "--split", "val"]) == 0
    captured = capsys.readouterr()
    assert f"skipped the newer checkpoint {(copy / 'checkpoints' / '6').absolute()}" in captured.err
    val = [r for r in records(finished) if r["split"] == "val" and r["step"] == 4][0]
    assert f"val accuracy {val['accuracy']:.4f} (loss {val['loss']:.4f})" in captured.out
    assert "step 4" in captured.out


def test_the_best_checkpoint_of_every_kept_checkpoint_survives_a_kill_and_a_resume(
    tmp_path, monkeypatch
):
    """Item 5 (eval_every < checkpoint_every): every evaluation is a new best here; killed at
    step 6, the run resumes from checkpoint 4, whose best (step 4) must still exist."""
    evaluate, calls = loop.evaluate, []

    def improving(*args):
        calls.append(1)
        return {**evaluate(*args), "accuracy": len(calls) / 100}

    def killed_at_step_6(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return fetch(self, step)

    fetch = loop.BatchSampler.batch
    monkeypatch.setattr(loop, "evaluate", improving)
    monkeypatch.setattr(loop.BatchSampler, "batch", killed_at_step_6)
    cfg = smoke("optim.steps=8", "eval_every=1", "checkpoint_every=2", "keep_checkpoints=1")
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, **QUIET)
    assert sorted(int(p.name) for p in (run_dir / "best").iterdir()) == [4, 5]
    monkeypatch.setattr(loop.BatchSampler, "batch", fetch)
    summary = train(cfg, run_dir, resume=True, **QUIET)
    assert summary["best_step"] == 8
    assert sorted(int(p.name) for p in (run_dir / "best").iterdir()) == [8]


# ---- the NaN guard ---------------------------------------------------------------------------
def test_parameters_made_non_finite_are_never_saved_nor_called_good(tmp_path, monkeypatch):
    """The update of step 3 turns the parameters into NaN while its loss is finite."""
    make_step = loop.train_step_fn

    def poisoned(built, optimizer, key):
        step_fn = make_step(built, optimizer, key)

        @jax.jit
        def poisoned_step(params, opt_state, batch, step):
            params, opt_state, stats = step_fn(params, opt_state, batch, step)
            params = jax.tree.map(lambda x: jnp.where(step >= 3, jnp.nan, x), params)
            return params, opt_state, stats

        return poisoned_step

    monkeypatch.setattr(loop, "train_step_fn", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        train(smoke("optim.steps=6", "checkpoint_every=1", "eval_every=1"), run_dir, **QUIET)
    message = str(error.value)
    assert message.startswith("the update of step 3 made parameters non-finite (['params']")
    assert f"the last good checkpoint is step 2 in {(run_dir / 'checkpoints' / '2').absolute()}" \
        in message and "optim.lr" in message
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2"]
    assert {p.name for p in (run_dir / "best").iterdir()} <= {"1", "2"}


def test_a_non_finite_validation_loss_stops_the_run_naming_the_data(tmp_path, monkeypatch):
    real_build = loop.build

    def bad_val_label(cfg):
        built = real_build(cfg)
        built.data["val"]["targets"][0, -1] = 10**6  # a label outside the vocabulary
        return built

    monkeypatch.setattr(loop, "build", bad_val_label)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        train(smoke("checkpoint_every=1"), run_dir, **QUIET)
    message = str(error.value)
    assert message.startswith("non-finite loss on the val split at step 2 (nan) while the training")
    assert "check the val data" in message and "optim.lr" not in message
    assert "the last good checkpoint is step 1" in message
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["1"]
    assert not (run_dir / "best").exists() or not list((run_dir / "best").iterdir())


def test_a_non_finite_loss_before_any_update_blames_the_data_not_the_lr(tmp_path, monkeypatch):
    fetch = loop.BatchSampler.batch

    def bad_labels(self, step):
        batch = fetch(self, step)
        return {**batch, "targets": np.full_like(batch["targets"], 10**6)}

    monkeypatch.setattr(loop.BatchSampler, "batch", bad_labels)
    with pytest.raises(TrainingDiverged) as error:
        train(smoke(), tmp_path / "run", **QUIET)
    message = str(error.value)
    assert message.startswith("non-finite training loss at step 1 (loss nan")
    assert "with the initial parameters" in message and "the learning rate is not the cause" \
        in message and "check the data" in message and "optim.lr" not in message
    assert "no checkpoint had been written yet" in message


def test_restore_needs_a_checkpoint(tmp_path):
    reader = Checkpoints(tmp_path, read_only=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        reader.restore_params({"w": jnp.ones(2)})
    reader.close()
    assert not list(tmp_path.iterdir())  # read only: not even the folders were created
