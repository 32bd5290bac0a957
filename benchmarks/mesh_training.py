"""Training on a (data, seq) device mesh follows the single-device loss curve: issue 10's run.

    python benchmarks/mesh_training.py [--meshes 1x1 2x1 1x2 2x2] [--steps 200] [--seq-len 2048]

The same config (a Mamba-2 language model on MQAR, every step's batch the same on every mesh)
trains for ``--steps`` steps through the runner (``seqzoo.runner.train``) on each mesh
``DATAxSEQ`` that the local devices allow (``1x1`` is one device, no sharding; meshes needing
more devices are skipped and listed). One markdown table: per mesh, the steady time per step
(the median over the logged intervals after the first, which holds the compilation), tokens per
second, the final training loss, and the largest ``|loss - loss(1x1)|`` over all steps.

Float32 matmuls run at ``--precision`` (default ``highest``: no TF32 on the GPU, so the meshes
differ only in the order of the reductions and the gap measures that, not TF32 rounding).
With one accelerator or none, give JAX fake CPU devices first:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python benchmarks/mesh_training.py --seq-len 256 --d-model 64 --steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from seqzoo.config import ExperimentConfig, apply_overrides
from seqzoo.runner.loop import train
from seqzoo.runner.metrics import read_metrics


def config(args, data: int, seq: int) -> ExperimentConfig:
    """Mamba-2 on MQAR at ``--seq-len``: ``--layers`` layers of ``--d-model``, batch ``--batch``."""
    overrides = [
        "task.name=mqar", f"task.seq_len={args.seq_len}", "task.num_kv_pairs=64",
        "task.vocab_size=8192", f"task.num_train={args.batch * args.steps}", "task.num_val=16",
        "task.num_test=16", "model.mixer=mamba2", f"model.n_layers={args.layers}",
        f"model.d_model={args.d_model}",
        'model.mixer_options={"d_state": 64, "headdim": 64, "chunk_size": 64}',
        f"optim.steps={args.steps}", f"optim.batch_size={args.batch}", "optim.lr=3e-3",
        "optim.warmup_steps=20", "log_every=1", f"eval_every={10 * args.steps}",
        f"checkpoint_every={10 * args.steps}", f"mesh.data={data}", f"mesh.seq={seq}",
    ]  # fmt: skip
    return apply_overrides(ExperimentConfig(name="mesh_training"), overrides)


def run(cfg: ExperimentConfig, run_dir: Path) -> tuple[list[float], list[float]]:
    """Train; the per-step losses and the logged intervals' tokens per second."""
    train(cfg, run_dir, overwrite=True, log=lambda line: None, progress=False)
    records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    return [r["loss"] for r in records], [r["tokens_per_second"] for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", nargs="+", default=["1x1", "2x1", "1x2", "2x2", "2x4"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--precision", default="highest", choices=["default", "high", "highest"])
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", args.precision)
    meshes = [tuple(int(n) for n in m.split("x")) for m in args.meshes]
    if (1, 1) not in meshes:
        meshes.insert(0, (1, 1))
    fits = [m for m in meshes if m[0] * m[1] <= jax.device_count()]
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; skipped (too few devices): "
          f"{[f'{d}x{s}' for d, s in meshes if (d, s) not in fits] or 'none'}", flush=True)
    print("| mesh (data x seq) | ms / step | tokens / s | final loss | max abs loss gap to 1x1 |\n"
          "|---|---|---|---|---|", flush=True)
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for data, seq in fits:
            losses, speeds = run(config(args, data, seq), Path(tmp) / f"{data}x{seq}")
            reference = losses if reference is None else reference
            gap = float(np.max(np.abs(np.subtract(losses, reference))))
            tokens_per_second = float(np.median(speeds[1:]))
            ms = 1e3 * args.batch * args.seq_len / tokens_per_second
            print(f"| {data}x{seq} | {ms:.1f} | {tokens_per_second:,.0f} | {losses[-1]:.5f} | "
                  f"{gap:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
