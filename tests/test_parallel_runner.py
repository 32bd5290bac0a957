"""The runner with a sequence axis: training on a (data=2, seq=4) mesh of 8 fake CPU devices follows
the loss curve of the same run on one device; so does batch norm with the batch split over 8.

Like ``test_parallel_ops.py``, the runs happen in a fresh interpreter with 8 CPU devices (this
file executed as a script), which prints each run's per-step training losses as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_parallel_ops import eight_cpu_devices

from seqzoo.config import ExperimentConfig, apply_overrides

# one worker runs the module (--dist loadgroup): its tests share one fresh interpreter's run
pytestmark = pytest.mark.xdist_group("eight_cpu_devices_runner")
ONE_DEVICE = ["mesh.data=1", "mesh.seq=1"]
RUNS = {
    # the hybrid of issue 10 on MQAR: Mamba-2 (chunked SSD, causal conv) + causal ring attention
    "mqar-mamba2-attention": (
        [
            "task.seq_len=32", "task.num_kv_pairs=4", "task.vocab_size=64", "task.num_train=256",
            "model.mixer=mamba2,attention", "model.n_layers=2", "model.d_model=32",
            'model.mixer_options={"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8}, '
            '"attention": {"num_heads": 2}}',
            "optim.steps=16",
        ],
        ["mesh.data=2", "mesh.seq=4", "mesh.carry=all_scan"],  # ZeCO's carry of the SSD state
    ),
    # classification (pooled head), a length 4 does not divide (padded), learned positions,
    # Hydra and bidirectional Ulysses attention, FSDP parameters
    "listops-hydra-fsdp": (
        [
            "task.name=listops", "task.seq_len=62", "task.num_train=64", "model.max_length=62",
            "model.mixer=hydra,bidirectional_attention", "model.n_layers=2", "model.d_model=32",
            'model.mixer_options={"hydra": {"d_state": 8, "headdim": 8, "chunk_size": 8}, '
            '"bidirectional_attention": {"num_heads": 4}}',
            "optim.steps=6",
        ],
        ["mesh.data=2", "mesh.seq=4", "mesh.params=fsdp", "mesh.attention=ulysses"],
    ),
    # batch norm over a batch split into one row per device: its statistics are the batch's
    "listops-s4d-batchnorm": (
        [
            "task.name=listops", "task.seq_len=62", "task.num_train=64", "model.mixer=s4d",
            "model.bidirectional=true", "model.norm=batch", "model.n_layers=2",
            "model.d_model=16", 'model.mixer_options={"d_state": 4}', "optim.steps=6",
        ],
        ["mesh.data=8", "mesh.seq=1"],
    ),
}
COMMON = [
    "task.num_val=16", "task.num_test=16", "optim.batch_size=8", "optim.lr=3e-3",
    "optim.warmup_steps=2", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
]


def config(name: str, mesh: list[str]) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(name=name), COMMON + RUNS[name][0] + mesh)


def train_losses(cfg: ExperimentConfig, run_dir: str) -> list[float]:
    from seqzoo.runner.loop import train
    from seqzoo.runner.metrics import read_metrics

    train(cfg, run_dir, overwrite=True, log=lambda line: None, progress=False)
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def fsdp_is_sharded(cfg: ExperimentConfig) -> bool:
    """Some parameter is split over the 8 devices, each holding an eighth of it."""
    from seqzoo.runner.build import build

    params = build(cfg).init_params(jax.random.PRNGKey(0))
    return any(
        p.addressable_shards[0].data.size * 8 == p.size for p in jax.tree.leaves(params)
    )


@pytest.fixture(scope="module")
def curves(tmp_path_factory) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, str(tmp_path_factory.mktemp("runs"))],
        env=eight_cpu_devices(), capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", RUNS)
def test_sequence_parallel_training_follows_the_single_device_run(curves, name):
    one, sharded = curves[name]["one device"], curves[name]["sharded"]
    assert len(one) == len(sharded) == config(name, ONE_DEVICE).optim.steps
    np.testing.assert_allclose(sharded, one, rtol=1e-4)
    assert np.ptp(one) > 1e-2  # the parameters move: matching curves are not a no-op


def test_fsdp_shards_the_parameters(curves):
    assert curves["listops-hydra-fsdp"]["fsdp sharded"]


def test_mesh_config_appears_in_the_run_config():
    cfg = config("listops-hydra-fsdp", RUNS["listops-hydra-fsdp"][1])
    assert (cfg.mesh.data, cfg.mesh.seq, cfg.mesh.params, cfg.mesh.attention) == (
        2, 4, "fsdp", "ulysses"
    )


if __name__ == "__main__":
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    jax.config.update("jax_disable_most_optimizations", True)
    results = {}
    for name, (_, mesh) in RUNS.items():
        results[name] = {
            "one device": train_losses(config(name, ONE_DEVICE), f"{sys.argv[1]}/{name}-1"),
            "sharded": train_losses(config(name, mesh), f"{sys.argv[1]}/{name}-8"),
        }
    results["listops-hydra-fsdp"]["fsdp sharded"] = fsdp_is_sharded(
        config("listops-hydra-fsdp", RUNS["listops-hydra-fsdp"][1])
    )
    print(json.dumps(results))
