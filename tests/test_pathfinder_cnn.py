"""experiments/pathfinder_cnn.py, the check that generated Pathfinder images can be learnt by a
CNN: both models train through the script's own entry point, and the ResNet fits a few images."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments import pathfinder_cnn


def test_resnet18_has_cifar_resnet18s_parameter_count_and_two_logits():
    model = pathfinder_cnn.ResNet18()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)),
                                                  train=False))
    count = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert 11.1e6 < count < 11.2e6  # CIFAR ResNet-18 with one input channel and two classes
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 1)), train=False),
                            variables)
    assert logits.shape == (2, 2)


def test_the_script_trains_the_small_cnn_for_its_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path))
    epochs = pathfinder_cnn.main(["--model", "small", "--difficulty",
                                  "curv_baseline", "--train", "128", "--test", "64",
                                  "--epochs", "2", "--minutes", "10"])
    assert len(epochs) == 2  # --epochs stops it long before --minutes
    assert all(0.0 <= acc <= 1.0 for _, acc in epochs)


def test_the_resnet_memorises_a_few_images(tmp_path, monkeypatch):
    """256 images, 6 epochs of 2 batches: a model and loop that learn fit them (the training
    loss falls well below ln 2: 0.72 -> 0.02 on 2026-12-06); a broken update or batch-norm
    wiring would not."""
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path))
    epochs = pathfinder_cnn.main(["--model", "resnet", "--width", "8", "--difficulty",
                                  "curv_baseline", "--train", "256", "--test", "64",
                                  "--epochs", "6", "--minutes", "10"])
    assert epochs[-1][0] < 0.25, epochs
