"""The runner's test split at the best-validation checkpoint (``best_test_*`` in the summary,
the ``test_best`` record): the reading of papers that report test at the best validation, and of
runs whose last evaluation fell."""

from __future__ import annotations

import pytest

from seqzoo.config import ExperimentConfig, apply_overrides
from seqzoo.runner import loop, train
from seqzoo.runner.evaluate import evaluate_run
from seqzoo.runner.metrics import read_metrics

TINY = ["task.seq_len=16", "task.num_kv_pairs=2", "task.vocab_size=32", "task.num_val=64",
        "task.num_test=64", "optim.batch_size=16", "optim.steps=30", "eval_every=10"]


def test_test_at_the_best_validation_checkpoint(tmp_path, monkeypatch):
    """Validation scripted to peak at the first of three evaluations (step 10 of 30): the
    summary's best_test_* are the test split at step 10's checkpoint, as ``seqzoo eval --best``
    reads it, not the final test; a ``test_best`` record holds them."""
    scripted = iter([0.9, 0.5, 0.1])
    evaluate = loop._Trainer._evaluate

    def scripted_validation(self, name, params=None):
        result = evaluate(self, name, params)
        return {**result, "accuracy": next(scripted)} if name == "val" else result

    monkeypatch.setattr(loop._Trainer, "_evaluate", scripted_validation)
    run = tmp_path / "run"
    result = train(apply_overrides(ExperimentConfig(), TINY), run, log=lambda *_: None)

    assert (result["steps"], result["best_step"], result["best_test_step"]) == (30, 10, 10)
    direct = evaluate_run(run, best=True, progress=False)
    assert direct["step"] == 10
    assert result["best_test_accuracy"] == pytest.approx(direct["accuracy"], abs=1e-9)
    assert result["best_test_loss"] == pytest.approx(direct["loss"], rel=1e-5)
    assert result["best_test_loss"] != pytest.approx(result["test_loss"], rel=1e-3)
    (record,) = [r for r in read_metrics(run) if r["split"] == "test_best"]
    assert record["step"] == 30 and record["loss"] == pytest.approx(result["best_test_loss"])


def test_best_at_the_final_step_is_the_final_test(tmp_path):
    run = tmp_path / "run"
    result = train(apply_overrides(ExperimentConfig(), [*TINY, "optim.steps=10"]), run,
                   log=lambda *_: None)
    assert result["best_step"] == result["best_test_step"] == 10
    assert (result["best_test_accuracy"], result["best_test_loss"]) == (
        result["test_accuracy"], result["test_loss"])
    assert not [r for r in read_metrics(run) if r["split"] == "test_best"]
