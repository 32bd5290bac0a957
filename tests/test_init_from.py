"""``seqzoo train ... --init-from RUN_DIR [--init-best]``: a new run that starts from another
run's model variables (``seqzoo.runner.init_from``), on smoke runs with batch norm (so that the
variables hold a collection besides the parameters)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from seqzoo.cli import main
from seqzoo.config import apply_overrides
from seqzoo.runner import loop, train
from seqzoo.runner.checkpoint import read_params
from seqzoo.runner.experiments import load_experiment
from seqzoo.runner.init_from import INIT_FILE
from tests.test_cli import EIGHT_DEVICES, kill_at_step_4, records

BATCH_NORM = ["model.norm=batch"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 4-step smoke run: latest checkpoint step 4, best (validation) step 2 (with
    seed 3: seeds 0-2 reach their best validation accuracy at step 4)."""
    path = tmp_path_factory.mktemp("runs") / "source"
    argv = ["train", "smoke", *BATCH_NORM, "seed=3", "--run-dir", str(path), "--no-progress"]
    assert main(argv) == 0
    assert json.loads((path / "summary.json").read_text())["best_step"] == 2
    return path


@pytest.fixture(scope="module")
def initialised(source, tmp_path_factory):
    """A finished 4-step smoke run started from ``source``."""
    path = tmp_path_factory.mktemp("runs") / "initialised"
    argv = ["train", "smoke", *BATCH_NORM, "--run-dir", str(path), "--init-from", str(source),
            "--no-progress"]
    assert main(argv) == 0
    return path


def _leaves(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


@pytest.mark.parametrize("best", [False, True])
def test_a_new_run_starts_from_the_sources_variables_and_a_fresh_optimizer(
    source, tmp_path, monkeypatch, best
):
    """Before its first update the run holds exactly the variables of the source's latest (or
    best) checkpoint, not the other one's, an optimizer at step 0, and says where they came
    from in init.json."""
    started = {}

    def no_training(self):  # what the loop would start from
        started.update(variables=self.params, opt_state=self.opt_state, step=self.meta["step"])

    monkeypatch.setattr(loop._Trainer, "fit", no_training)
    cfg = apply_overrides(load_experiment("smoke"), BATCH_NORM)
    train(cfg, tmp_path / "new", init_from=source, init_best=best, log=lambda _: None,
          progress=False)
    variables = _leaves(started["variables"])
    assert any(path.startswith("['batch_stats']") for path in variables)
    expected = _leaves(read_params(source, started["variables"], best).items["params"])
    other = _leaves(read_params(source, started["variables"], not best).items["params"])
    assert variables.keys() == expected.keys()
    assert all(np.array_equal(variables[p], expected[p]) for p in variables)
    assert not all(np.array_equal(variables[p], other[p]) for p in variables)
    counts = [int(leaf) for path, leaf in _leaves(started["opt_state"]).items()
              if path.endswith(".count")]
    assert counts and all(c == 0 for c in counts) and started["step"] == 0
    record = json.loads((tmp_path / "new" / INIT_FILE).read_text())
    step, folder = (2, "best") if best else (4, "checkpoints")
    assert record == {"run_dir": str(source.absolute()), "checkpoint": "best" if best else "latest",
                      "step": step, "path": str(source.absolute() / folder / str(step))}


def test_a_model_of_other_shapes_is_refused_naming_the_first_difference(source, tmp_path, capsys):
    new = tmp_path / "wider"
    argv = ["train", "smoke", *BATCH_NORM, "model.d_model=32", "--run-dir", str(new),
            "--init-from", str(source)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "do not fit this run's model" in err
    assert ("['batch_stats']['block_0']['norm_mix']['bn']['mean'] is float32[16] in the source, "
            "float32[32] in the new model") in err  # the first leaf, in tree order
    assert not new.exists()  # refused before the run directory was made


def test_a_source_without_a_checkpoint_is_refused(source, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(source / "config.toml", empty)
    for extra in ([], ["--init-best"]):
        argv = ["train", "smoke", *BATCH_NORM, "--run-dir", str(tmp_path / "new"),
                "--init-from", str(empty), *extra]
        assert main(argv) == 2
        which = "best" if extra else "latest"
        assert f"no {which} checkpoint to start from" in capsys.readouterr().err
    assert main(["train", "smoke", "--run-dir", str(tmp_path / "new"), "--init-best"]) == 2
    assert "--init-best takes the best checkpoint of --init-from" in capsys.readouterr().err


def test_a_resumed_run_continues_from_its_own_checkpoint(
    source, initialised, tmp_path, monkeypatch, capsys
):
    """Killed after its checkpoint of step 2 and resumed, a run initialised from ``source``
    writes the records of the same run uninterrupted: the resume restored the run's own step 2,
    not the source's variables; --resume refuses --init-from."""
    init = ["--init-from", str(source), "--no-progress"]
    kill_at_step_4(monkeypatch)
    resumed = tmp_path / "resumed"
    assert main(["train", "smoke", *BATCH_NORM, "--run-dir", str(resumed), *init]) == 130
    monkeypatch.undo()
    record = (resumed / INIT_FILE).read_text()
    assert main(["train", "--resume", "--run-dir", str(resumed), "--init-from", str(source)]) == 2
    assert "a resumed run continues from its own checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume", "--run-dir", str(resumed), "--no-progress"]) == 0
    assert "resuming after step 2" in capsys.readouterr().out
    assert records(resumed) == records(initialised)
    assert (resumed / INIT_FILE).read_text() == record


def test_eight_devices_start_from_the_source_like_one(source, initialised, tmp_path):
    """The source's variables (saved on one device) go through the placement of a fresh init:
    a run on 8 devices with its parameters sharded (FSDP) trains as the one-device run."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # conftest's
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    argv = ["train", "smoke", *BATCH_NORM, "mesh.params=fsdp", "--run-dir", str(tmp_path / "8"),
            "--init-from", str(source), "--no-progress"]
    out = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, *argv], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "8 cpu device(s)" in out.stdout and "initialised from" in out.stdout
    one, eight = records(initialised), records(tmp_path / "8")
    assert [r["split"] for r in eight] == [r["split"] for r in one]
    np.testing.assert_allclose([r["loss"] for r in eight], [r["loss"] for r in one], rtol=2e-5)
