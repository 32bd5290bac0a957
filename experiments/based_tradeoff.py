"""Based's recall against state size on MQAR (Arora et al. 2024, figure 2 / 3's trade-off): the
full recipe (``experiments/mqar_based_recipe.toml``) over a grid of sliding windows and Taylor
feature dimensions; each point's recurrent state is measured from the mixers' own
``init_state`` (Based's ``H (1 + f + f^2) (dv + 1)``, the window's KV ring buffer, the convs'
buffers), not from a formula.

    python experiments/based_tradeoff.py --out experiments/results  # from the repo root
    python experiments/based_tradeoff.py --out /tmp/x --windows 8 --feature-dims 4 -- optim.steps=3
    python experiments/based_tradeoff.py --out OUT --from-runs /tmp/seqzoo-repro/runs

The grid also trains as the ``based_tradeoff`` group of ``experiments/repro/run.py`` (its runs
at once on one GPU; continued across calls with ``--save-state`` / ``--resume-from``, up to 5
runs a call by ``--only``); ``--from-runs DIR`` then trains nothing and takes the points from
the finished runs of the recipe in DIR (run.py's ``--work``/runs, or its unpacked
``runs.tar.gz``).

Writes ``based_tradeoff.json`` (one record per point: window, feature_dim, state floats per
sequence, test accuracy, run directory) and ``based_tradeoff.png`` (accuracy against state, one
line per window). Arguments after ``--`` are config overrides for every point trained here.
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
from seqzoo.runner.rundir import SUMMARY_FILE, read_summary, run_config  # noqa: E402

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


def point_override(window: int, feature_dim: int) -> str:
    """The recipe's ``model.mixer_options`` with the attention's ``window`` and Based's
    ``feature_dim`` (its ``key_dim``): the override of one point of the grid (also the
    ``based_tradeoff`` group of experiments/repro/run.py)."""
    options = json.loads(json.dumps(load_experiment(RECIPE).model.mixer_options))
    options["attention"]["window"] = window
    options["based"]["key_dim"] = feature_dim
    return f"model.mixer_options={json.dumps(options)}"


def point(window: int, feature_dim: int, overrides: list[str]):
    return apply_overrides(load_experiment(RECIPE), [
        point_override(window, feature_dim), f"name=based_tradeoff/w{window}_f{feature_dim}",
        *overrides])


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


def record(cfg, summary: dict, run_dir: Path) -> dict:
    """One point: the run's window, feature_dim, state floats per sequence and test accuracy."""
    options = cfg.model.mixer_options
    return {"window": options["attention"]["window"], "feature_dim": options["based"]["key_dim"],
            "state": state_floats(cfg.model), "test_accuracy": summary["test_accuracy"],
            "run": str(run_dir)}


def trained(cfg) -> tuple:
    """``cfg``, its summary and its run directory, ``runs/<name>``, once trained."""
    run_dir = Path("runs") / cfg.name
    return cfg, train(cfg, run_dir, overwrite=True, progress=False), run_dir


def finished_runs(folder: Path) -> list[Path]:
    """The run directories in ``folder`` of the recipe's model that have a summary."""
    layers = load_experiment(RECIPE).model.mixer
    return [d for d in sorted(folder.iterdir()) if (d / SUMMARY_FILE).is_file()
            and run_config(d).model.mixer == layers]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--windows", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--feature-dims", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--from-runs", type=Path, metavar="DIR",
                   help="train nothing: the points are DIR's finished runs of the recipe")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.from_runs and overrides:
        p.error("--from-runs trains nothing: overrides after -- do not apply")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_runs:
        points = ((run_config(d), read_summary(d), d) for d in finished_runs(args.from_runs))
    else:
        points = (trained(point(w, f, overrides)) for w in args.windows for f in args.feature_dims)
    records = []
    for cfg, summary, run_dir in points:
        records.append(record(cfg, summary, run_dir))
        print(json.dumps(records[-1]), flush=True)
    if not records:
        p.error(f"no finished run of {RECIPE} in {args.from_runs}")
    records.sort(key=lambda r: (r["window"], r["feature_dim"]))
    (args.out / "based_tradeoff.json").write_text(json.dumps(records, indent=1) + "\n")
    plot(records, args.out / "based_tradeoff.png")


if __name__ == "__main__":
    main()
