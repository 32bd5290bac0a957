"""Based's recall against state size on MQAR (Arora et al. 2024, figure 2 / 3's trade-off): the
full recipe (``experiments/mqar_based_recipe.toml``) over a grid of sliding windows and Taylor
feature dimensions; each point's recurrent state is measured from the mixers' own
``init_state`` (Based's ``H (1 + f + f^2) (dv + 1)``, the window's KV ring buffer, the convs'
buffers), not from a formula.

    python experiments/based_tradeoff.py --out experiments/results  # from the repo root
    python experiments/based_tradeoff.py --out /tmp/x --windows 8 --feature-dims 4 -- optim.steps=3

Writes ``based_tradeoff.json`` (one record per point: window, feature_dim, state floats per
sequence, test accuracy, run directory) and ``based_tradeoff.png`` (accuracy against state, one
line per window). Arguments after ``--`` are config overrides for every point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's seqzoo, installed or not

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import seqzoo  # noqa: E402
from seqzoo.config import apply_overrides  # noqa: E402
from seqzoo.models.sequence_model import layer_mixers, mixer_options  # noqa: E402
from seqzoo.runner import train  # noqa: E402
from seqzoo.runner.experiments import load_experiment  # noqa: E402

RECIPE = "mqar_based_recipe"


def state_floats(model_cfg) -> int:
    """Floats of recurrent state per sequence, summed over the layers' mixers (abstractly)."""
    total = 0
    for name in layer_mixers(model_cfg.mixer.split(","), model_cfg.n_layers, False):
        mixer = seqzoo.get_mixer(name, d_model=model_cfg.d_model,
                                 **mixer_options(model_cfg.mixer_options, name))
        x = jnp.zeros((1, 2, model_cfg.d_model))
        params = jax.eval_shape(mixer.init, jax.random.PRNGKey(0), x)
        state = jax.eval_shape(lambda p, m=mixer: m.apply(p, 1, method="init_state"), params)
        total += sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(state))
    return total


def point(window: int, feature_dim: int, overrides: list[str]):
    cfg = load_experiment(RECIPE)
    options = json.loads(json.dumps(cfg.model.mixer_options))
    options["attention"]["window"] = window
    options["based"]["key_dim"] = feature_dim
    return apply_overrides(cfg, [f"model.mixer_options={json.dumps(options)}",
                                 f"name=based_tradeoff/w{window}_f{feature_dim}", *overrides])


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for window in sorted({r["window"] for r in records}):
        rows = sorted((r for r in records if r["window"] == window), key=lambda r: r["state"])
        ax.plot([r["state"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-",
                label=f"window {window}")
        for r in rows:
            ax.annotate(f"f={r['feature_dim']}", (r["state"], 100 * r["test_accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("recurrent state (floats per sequence)")
    ax.set_ylabel("MQAR test accuracy (%)")
    ax.set_title("Based recipe: recall vs state size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--windows", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--feature-dims", type=int, nargs="+", default=[4, 8, 16])
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for window in args.windows:
        for f in args.feature_dims:
            cfg = point(window, f, overrides)
            summary = train(cfg, Path("runs") / cfg.name, overwrite=True, progress=False)
            records.append({"window": window, "feature_dim": f, "state": state_floats(cfg.model),
                            "test_accuracy": summary["test_accuracy"],
                            "run": str(Path("runs") / cfg.name)})
            print(json.dumps(records[-1]), flush=True)
    (args.out / "based_tradeoff.json").write_text(json.dumps(records, indent=1) + "\n")
    plot(records, args.out / "based_tradeoff.png")


if __name__ == "__main__":
    main()
