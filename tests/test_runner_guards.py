"""Runs that cannot go well stop early with a message that names the problem and the fix, and
leave no run directory behind (or, for a diverging run, its last good checkpoint)."""

from __future__ import annotations

import re

import jax
import pytest

from seqzoo.cli import main
from seqzoo.config import apply_overrides
from seqzoo.runner import train
from seqzoo.runner.build import build
from seqzoo.runner.experiments import load_experiment
from seqzoo.tasks import TASKS, Task


def smoke(*overrides: str):
    return apply_overrides(load_experiment("smoke"), list(overrides))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["optim.lr=1e30", "optim.warmup_steps=1", "optim.steps=8", "checkpoint_every=1"]
    assert main(["train", "smoke", *argv, "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    bad_step = int(re.search(r"non-finite training loss at step (\d+)", err).group(1))
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir())
    assert saved and max(saved) == bad_step - 1
    assert f"last good checkpoint is step {bad_step - 1}" in err and "optim.lr" in err
    assert not (run_dir / "summary.json").exists()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["model.mixer=toeplitz", "task.seq_len=160", "task.vocab_size=256",
             'model.mixer_options={"head_dim": 8}'],
            ValueError,
            "task.seq_len=160 exceeds max_length=128 of mixer 'toeplitz'.*model.mixer_options",
        ),
        (["model.max_length=8"], ValueError, "set model.max_length=16"),
        (
            ["task.name=induction_heads", "task.test_seq_len=64", "model.max_length=16"],
            ValueError,
            "task.test_seq_len=64 exceeds model.max_length=16",
        ),
        (
            ["model.mixer=toeplitz", "task.name=mqar", "task.test_seq_len=160",
             "task.vocab_size=256", 'model.mixer_options={"head_dim": 8}'],
            ValueError,
            "task.test_seq_len=160 exceeds max_length=128 of mixer 'toeplitz'",
        ),
        (["task.name=listops", "task.random_non_queries=false"], ValueError, "MQAR's option"),
        (["task.name=induction_heads", "task.context_repeats=2"], ValueError, "MQAR's option"),
        (["task.name=induction_heads", "task.num_queries=2"], ValueError, "MQAR's option"),
        (["task.name=listops", "task.repeat_scope=prompt"], ValueError, "MQAR's option"),
        (["task.name=listops", "task.normalize=true"], ValueError, "for the image tasks"),
        (['model.mixer_options={"bogus": 1}'], ValueError, "bogus"),
        (["model.dtype=float8"], ValueError, "model.dtype must be one of float32, bfloat16"),
        (["optim.steps=0"], ValueError, "optim.steps must be >= 1"),
    ],
)
def test_bad_configs_fail_before_anything_is_written(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        train(smoke(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fixed_length_bound_can_be_raised_through_mixer_options():
    cfg = smoke(
        "model.mixer=toeplitz",
        "task.seq_len=160",
        "task.vocab_size=256",
        'model.mixer_options={"max_length": 160, "head_dim": 8}',
    )
    assert build(cfg).params_shape  # traced abstractly, nothing computed


def test_batch_not_divisible_by_the_devices_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    with pytest.raises(ValueError, match=r"not divisible by the 8 devices.*batch_size=16"):
        train(smoke("optim.batch_size=12"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_dataset_directory_names_the_key(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "files", Task(TASKS["mqar"].build, "from files", "the files"))
    for data_dir in ("", str(tmp_path / "absent")):
        with pytest.raises(FileNotFoundError, match="task.data_dir=PATH"):
            train(smoke("task.name=files", f"task.data_dir={data_dir}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert build(smoke("task.name=files", f"task.data_dir={tmp_path}")).data


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(smoke(), tmp_path / "run", resume=True)


def test_bf16_compute_trains_with_float32_parameters(tmp_path):
    """Mixed precision: bf16 compute, f32 parameters and optimizer state; losses stay finite."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    summary = train(smoke("model.dtype=bfloat16", "model.mixer=gla"), tmp_path / "run", log=print)
    assert jnp.isfinite(summary["test_loss"])
    step_dirs = sorted((tmp_path / "run" / "checkpoints").iterdir())
    saved = ocp.PyTreeCheckpointer().metadata(step_dirs[-1] / "params").item_metadata.tree
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(
        saved, is_leaf=lambda x: hasattr(x, "dtype"))}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
