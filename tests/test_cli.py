"""The ``seqzoo`` command through its entry point: every subcommand, on one smoke run (4 steps
of a tiny MQAR model), which resumed and 8-device runs must also reproduce."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

import seqzoo
from seqzoo.cli import main
from seqzoo.runner.data import BatchSampler

# one worker runs this module (--dist loadgroup): its tests share module-scoped fixtures
pytestmark = pytest.mark.xdist_group("test_cli")

# XLA_FLAGS must be set before jax is imported, hence a fresh interpreter.
EIGHT_DEVICES = """
import sys
import jax
assert jax.local_device_count() == 8, jax.devices()
from seqzoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def records(run_dir) -> list[dict]:
    """metrics.jsonl without its timing."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_second"} for x in lines]


@pytest.fixture(scope="module", autouse=True)
def shared_compilations(tmp_path_factory):
    """The runs here compile the same steps: JAX's persistent cache shares them (this module
    only; the settings are restored after it)."""
    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 4-step run made by ``seqzoo train smoke``."""
    path = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["train", "smoke", "--run-dir", str(path)]) == 0
    return path


def test_train_writes_a_complete_run_dir(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "metrics.jsonl", "summary.json", "checkpoints", "best"} <= names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    splits = [json.loads(line)["split"] for line in (run_dir / "metrics.jsonl").open()]
    assert splits.count("val") == 2 and splits[-1] in ("test", "test_best")
    assert [s for s in splits if s != "test_best"][-1] == "test"


def test_eval_reproduces_the_final_test_accuracy(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {summary['test_accuracy']:.4f} (loss {summary['test_loss']:.4f})" in out
    assert "step 4" in out


def test_eval_on_a_changed_task_equals_a_run_whose_config_names_it(run_dir, tmp_path, capsys):
    """``seqzoo eval RUN task.seed=1``: the checkpoint on another draw of the task, as if the
    run's own config said so (a copy of the run with that config.toml)."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    config = copy / "config.toml"
    text = config.read_text()
    assert "\nseed = 0\n" in text.split("[task]")[1]
    task = text.split("[task]")[1].replace("\nseed = 0\n", "\nseed = 1\n", 1)
    config.write_text(text.split("[task]")[0] + "[task]" + task)
    capsys.readouterr()
    assert main(["eval", str(copy)]) == 0
    expected = capsys.readouterr().out.split(" of the")[0]
    assert main(["eval", str(run_dir), "task.seed=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(expected) and out.rstrip().endswith("with task.seed=1")
    assert main(["eval", str(run_dir)]) == 0  # the run's own task: a different draw
    assert not capsys.readouterr().out.startswith(expected)


@pytest.mark.parametrize("override, message", [
    ("model.d_model=8", "eval changes only the task"),
    ("optim.batch_size=8", "eval changes only the task"),
    ("task.vocab_size=64", "change the model's parameters"),
])
def test_eval_refuses_changes_the_checkpoint_cannot_follow(run_dir, capsys, override, message):
    assert main(["eval", str(run_dir), override]) != 0
    assert message in capsys.readouterr().err


def kill_at_step_4(monkeypatch) -> None:
    """Make a run stop as on Ctrl-C when it fetches step 4's batch: after step 3 was logged,
    past the checkpoint of step 2 (``monkeypatch.undo()`` lets the resume run)."""
    fetch = BatchSampler.batch

    def killed_at_step_4(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return fetch(self, step)

    monkeypatch.setattr(BatchSampler, "batch", killed_at_step_4)


def test_resume_after_a_kill_repeats_the_straight_run(run_dir, tmp_path, monkeypatch, capsys):
    kill_at_step_4(monkeypatch)
    resumed = tmp_path / "resumed"
    assert main(["train", "smoke", "--run-dir", str(resumed)]) == 130
    assert f"seqzoo train --resume --run-dir {resumed}" in capsys.readouterr().err
    monkeypatch.undo()
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["2"]
    assert records(resumed)[-1]["step"] == 3

    assert main(["train", "--resume", "--run-dir", str(resumed)]) == 0
    assert "resuming after step 2" in capsys.readouterr().out
    assert records(resumed) == records(run_dir)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["test_loss"] == json.loads((run_dir / "summary.json").read_text())["test_loss"]


def test_eight_devices_train_like_one(run_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # conftest's
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    argv = ["train", "smoke", "--run-dir", str(tmp_path / "eight"), "--no-progress"]
    out = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, *argv], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "8 cpu device(s)" in out.stdout
    one, eight = records(run_dir), records(tmp_path / "eight")
    assert [r["split"] for r in eight] == [r["split"] for r in one]
    np.testing.assert_allclose([r["loss"] for r in eight], [r["loss"] for r in one], rtol=2e-5)


def test_plot_writes_a_png(run_dir, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["plot", str(run_dir), str(run_dir), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_existing_run_dir_is_never_overwritten(run_dir, capsys):
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["train", "smoke", "--run-dir", str(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["train", "smoke", "--run-dir", str(tmp_path), "--overwrite"]) == 2
    assert "not deleting" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").exists()


def test_materialize_writes_a_png(tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["materialize", "toeplitz", "--length", "16", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.read_bytes().startswith(b"\x89PNG")


def test_list_names_mixers_tasks_and_experiments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*seqzoo.list_mixers(), "mqar", "induction_heads", "default", "smoke"]:
        assert name in out
    assert "invalid" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "optim.nope=1"], "optim.nope"),
        (["train", "optim.steps=many"], "optim.steps expects int"),
        (["train", "model.mixer=nonexistent"], "registered mixers: "),
        (["train", "task.name=nonexistent"], "known tasks: associative_recall"),
        (["train", "no_such_experiment"], "known experiments: default"),
        (["train", "default", "stray"], "section.key=value"),
        (["train", "--resume"], "--run-dir"),
        (["materialize", "nonexistent"], "registered mixers"),
        (["eval", "/nonexistent/run"], "not a seqzoo run directory"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bench_lists_scripts_or_says_where_they_go(capsys, tmp_path, monkeypatch):
    import seqzoo.runner.experiments as experiments

    monkeypatch.setattr(experiments, "SOURCE_ROOT", tmp_path)
    assert main(["bench"]) == 1
    assert "no benchmarks found" in capsys.readouterr().err
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "hello.py").write_text('"""Says hello."""\nprint("hello")\n')
    assert main(["bench"]) == 0 and "Says hello." in capsys.readouterr().out
    assert main(["bench", "hello"]) == 0


@pytest.mark.parametrize("command", ["list", "train", "eval", "materialize", "bench", "plot"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: seqzoo" in capsys.readouterr().out


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "seqzoo.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("list", "train", "eval", "materialize", "bench", "plot"):
        assert command in out.stdout
