"""End-to-end: the trainer learns the README's showcased tasks (MQAR, induction heads) far above
chance in a few hundred CPU steps, at toy sizes."""

from __future__ import annotations

from seqzoo.config import ExperimentConfig, apply_overrides
from seqzoo.runner import train
from seqzoo.runner.experiments import load_experiment


def test_attention_learns_mqar(tmp_path):
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            "task.seq_len=16",
            "task.num_kv_pairs=2",
            "task.vocab_size=32",
            "task.num_val=256",
            "task.num_test=256",
            "optim.steps=120",
            "eval_every=120",
        ],
    )
    result = train(cfg, tmp_path / "run", log=lambda *_: None)
    # chance: 0.5 answering with either value in the sequence, 0.57 answering the i-th query
    # with the i-th value (keys are queried roughly in order)
    assert result["test_accuracy"] > 0.7, result
    assert result["best_step"] == 120


def test_induction_heads_attention_learns(tmp_path):
    """The README's `seqzoo train induction_heads_attention optim.steps=400`, shorter."""
    overrides = ["task.seq_len=16", "task.num_val=128", "task.num_test=256", "optim.steps=150",
                 "optim.batch_size=32", "eval_every=150"]
    cfg = apply_overrides(load_experiment("induction_heads_attention"), overrides)
    result = train(cfg, tmp_path / "run", log=lambda *_: None)
    # chance: 1/14 guessing a data token, 0.21 answering with the commonest one in the row
    assert result["test_accuracy"] > 0.9, result
