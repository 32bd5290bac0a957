"""Based's recall against state size on MQAR (Arora et al. 2024, figure 2 / 3's trade-off), in
two presets; each point's recurrent state is measured from the mixers' own ``init_state``
(Based's ``H (1 + f + f^2) (dv + 1)``, the window's KV ring buffer, the convs' buffers), not
from a formula.

``--preset recipe`` (the default): the full recipe (``experiments/mqar_based_recipe.toml``) over
a grid of sliding windows and Taylor feature dimensions, on the default MQAR (length 64, 8 pairs,
vocab 128). Every point's state holds those 8 pairs: on the H100 at 12000 steps all of them
reached 84-99%, so this grid shows how soon each point leaves the plateau, not a trade-off.

``--preset fig2``: the paper's own setup for the figure (``experiments/mqar_based_fig2.toml``),
over d_model x feature_dim. Source: HazyResearch/zoology,
``zoology/experiments/paper_configs/arxiv24_based_figure2/configs.py`` at commit d88d6f5 (the
same sweep is ``zoology/experiments/arxiv24_based_figure1/configs.py`` at eac8015f, the commit
HazyResearch/based pins as its ``synthetic`` submodule; based's README points there for its
figure 2). There: a 2-layer model, BaseConv (kernel 3) then Based (Taylor map, feature_dim
8 / 16 / 24, 1 head, value width d_model), no MLP, d_model 48 / 64 / 128; vocab 8192; training
on a mix of MQAR segments (length/pairs 64/4 (100k examples), 128/8, 256/16, 256/32, 256/64
(20k each)), testing on 64/4, 64/8, 64/16, 128/32, 256/64, 512/128, 1024/256 (1k each, the
mean accuracy is the figure's y); batch 256 (test 32); AdamW, weight decay 0.1, cosine per
epoch over 32 epochs (~22.5k steps), early stop at 99%; lr swept over logspace(-3, -1.5, 4)
and the best run kept per (state size, model); the state (x) counts Based's
``d_model (1 + f + f (f + 1) / 2) + (1 + f + f (f + 1) / 2)`` (the symmetric half of the
Taylor map). The figure's sliding-window attention is a separate model (BaseConv then
sliding-window attention, d_model 128, windows 8 to 1024), not part of Based there.

What differs here, and why: our MQAR trains on one (length, pairs) segment, no mixture, so we
train and test on the paper's hardest training segment, length 256 with 64 pairs, where the
points' states differ in how many pairs they can hold (the paper's y averages seven test
segments, three easier and three longer than any it trains on); one lr, 3.16e-3 (the
sweep's second point; four times the runs do not fit the device time), not the best of four;
6000 steps (what one 9-minute H100 call with 3 such runs can plausibly do: ``mqar_based_d64``,
the same shape, did 4473 steps in 493 s with 7 other runs on the GPU), not 22.5k, with warmup
then a per-step cosine; our BaseConv projects its input (``expand_proj`` 2: conv and gate each
d_model wide) where Zoology's convolves the input itself; no embedding dropout; the
state is our mixers' full ``f^2`` Taylor state (what ``init_state`` allocates), so the x
values are larger than the paper's for the same point. The figure's sliding-window model is
here too (``--swa-windows``, the ``based_fig2_swa`` group): BaseConv then 1-head attention over
the last w tokens, no RoPE, at d_model 128, for the windows below our length (8 to 128) where
the paper goes to 1024 (Zoology's ``SlidingAttn`` sees w + 1 keys, itself included, ours w).

    python experiments/based_tradeoff.py --out experiments/results  # from the repo root
    python experiments/based_tradeoff.py --out /tmp/x --windows 8 --feature-dims 4 -- optim.steps=3
    python experiments/based_tradeoff.py --out OUT --from-runs /tmp/seqzoo-repro/runs
    python experiments/based_tradeoff.py --out OUT --preset fig2 --from-runs /tmp/seqzoo-repro/runs
    python experiments/based_tradeoff.py --reachable 8 16 32 64 128

The recipe grid also trains as the ``based_tradeoff`` group of ``experiments/repro/run.py``
(its runs at once on one GPU; continued across calls with ``--save-state`` /
``--resume-from``, up to 5 runs a call by ``--only``), the fig2 grid as the groups
``based_fig2_d48``, ``based_fig2_d64``, ``based_fig2_d128`` and ``based_fig2_swa``;
``--from-runs DIR`` then trains
nothing and takes the points from the finished runs of the preset's experiment in DIR
(run.py's ``--work``/runs, or its unpacked ``runs.tar.gz``).

Writes ``based_tradeoff.json`` (``based_fig2.json`` for fig2; one record per point: model,
window, d_model, feature_dim, state floats per sequence, test accuracy, run directory) and
``based_tradeoff.png`` / ``based_fig2.png`` (accuracy against state, one line per window, or
per model and d_model). Arguments after ``--`` are config overrides for every point trained here.
The sliding-window points also record, and the figure draws dotted, the share of the test
queries whose key-value pair lies within the window's reach (``reachable_queries``: its
accuracy's upper bound); ``--reachable W ...`` prints that share for the fig2 task alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's seqzoo, installed or not

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import seqzoo  # noqa: E402
from seqzoo.config import apply_overrides  # noqa: E402
from seqzoo.data.dataset import IGNORE_INDEX  # noqa: E402
from seqzoo.models.sequence_model import layer_mixers, mixer_options  # noqa: E402
from seqzoo.runner import train  # noqa: E402
from seqzoo.runner.experiments import load_experiment  # noqa: E402
from seqzoo.runner.rundir import SUMMARY_FILE, read_summary, run_config  # noqa: E402
from seqzoo.tasks import build_task  # noqa: E402

RECIPE = "mqar_based_recipe"
FIG2 = "mqar_based_fig2"  # the paper's figure-2 setup (module docstring)
PRESETS = {  # preset -> (experiment, what each line of the figure holds fixed, output stem)
    "recipe": (RECIPE, "window", "based_tradeoff"),
    "fig2": (FIG2, "d_model", "based_fig2"),
}
FIG2_SWA = ("base_conv,attention", 128)  # the figure's sliding-window model: layers, d_model


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


def reachable_queries(inputs: np.ndarray, targets: np.ndarray, windows,
                      kernel_size: int = 3) -> dict[int, float]:
    """For each window ``w`` in ``windows``, the fraction of MQAR's scored queries that a short
    convolution of ``kernel_size`` taps followed by attention over the last ``w`` tokens can
    answer at all: the upper bound of a window-``w`` model's accuracy (above chance).

    ``inputs`` / ``targets`` are (n, l) rows of :func:`seqzoo.data.synthetic.mqar` (-100: not
    scored). A query at position q (token ``inputs[q]`` = key k) is scored with its value v =
    ``targets[q]``. The attention at q reads only positions p in [q - w + 1, q] (the mask's
    ``q - p < w``), and what position p carries is the conv's field, tokens [p - K + 1, p]
    (the residual stream adds token p itself, already in the field). To match k and return v
    some p in the window must hold both the key token at j - 1 and the value token at j of an
    earlier occurrence of the pair (``inputs[j - 1] == k``, ``inputs[j] == v``, j < q): p in
    [j, j + K - 2]. So the query is reachable iff its latest such j has q - j <= w + K - 3;
    with K = 3, iff the value token lies within the last w + 1 positions. In MQAR's layout the
    query sits at an even position and the value at an odd one, so for even w this is the
    value within the last w positions, the key within the last w + 1. Queries with no earlier
    (key, value) occurrence are never reachable. ``kernel_size`` must be >= 2 (with one tap no
    position holds a key and its value together).
    """
    if kernel_size < 2:  # one tap: no position holds a key and its value together
        raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
    rows, query = np.nonzero(targets != IGNORE_INDEX)
    x = inputs[rows]  # (scored, l): each scored query's row
    key, value = x[np.arange(len(rows)), query], targets[rows, query]
    j = np.arange(1, inputs.shape[1], dtype=np.int32)  # a value's position; its key at j - 1
    pair = (x[:, 1:] == value[:, None]) & (x[:, :-1] == key[:, None]) & (j < query[:, None])
    latest = np.where(pair, j, -1).max(axis=1, initial=-1)  # -1: no earlier pair
    distance = np.where(latest >= 0, query - latest, np.iinfo(np.int64).max)
    if not len(distance):
        raise ValueError("no scored query in targets")
    return {w: float(np.mean(distance <= w + kernel_size - 3)) for w in windows}


def fig2_reachable(task_cfg, windows, kernel_size: int = 3) -> dict[int, float]:
    """:func:`reachable_queries` on the test split of MQAR config ``task_cfg`` (generated by
    the task itself, as training tests on it; only the test split is built)."""
    data = build_task(dataclasses.replace(task_cfg, num_train=1, num_val=0))["test"]
    return reachable_queries(data["inputs"], data["targets"], windows, kernel_size)


def point_override(window: int, feature_dim: int) -> str:
    """The recipe's ``model.mixer_options`` with the attention's ``window`` and Based's
    ``feature_dim`` (its ``key_dim``): the override of one point of the grid (also the
    ``based_tradeoff`` group of experiments/repro/run.py)."""
    options = json.loads(json.dumps(load_experiment(RECIPE).model.mixer_options))
    options["attention"]["window"] = window
    options["based"]["key_dim"] = feature_dim
    return f"model.mixer_options={json.dumps(options)}"


def fig2_overrides(d_model: int, feature_dim: int) -> tuple[str, str]:
    """The overrides of one point of the fig2 grid: ``model.d_model`` and the config's
    ``model.mixer_options`` with Based's ``feature_dim`` (its ``key_dim``; also the
    ``based_fig2_*`` groups of experiments/repro/run.py)."""
    options = json.loads(json.dumps(load_experiment(FIG2).model.mixer_options))
    options["based"]["key_dim"] = feature_dim
    return f"model.d_model={d_model}", f"model.mixer_options={json.dumps(options)}"


def _config(experiment: str, point_overrides, name: str, overrides: list[str]):
    """``experiment`` at one point of a grid (``point_overrides``), named ``name``, with the
    command line's ``overrides`` on top."""
    return apply_overrides(load_experiment(experiment),
                           [*point_overrides, f"name={name}", *overrides])


def point(window: int, feature_dim: int, overrides: list[str]):
    return _config(RECIPE, [point_override(window, feature_dim)],
                   f"based_tradeoff/w{window}_f{feature_dim}", overrides)


def fig2_swa_overrides(window: int) -> tuple[str, str, str]:
    """The overrides that make the fig2 config the figure's sliding-window attention model at
    ``window``: BaseConv then 1-head attention over the last ``window`` tokens, no RoPE (Zoology's
    has no positions but the conv's), d_model 128 (also the ``based_fig2_swa`` group of
    experiments/repro/run.py)."""
    layers, d_model = FIG2_SWA
    options = {"base_conv": load_experiment(FIG2).model.mixer_options["base_conv"],
               "attention": {"num_heads": 1, "window": window, "rope": False}}
    return (f"model.d_model={d_model}", f"model.mixer={layers}",
            f"model.mixer_options={json.dumps(options)}")


def fig2_point(d_model: int, feature_dim: int, overrides: list[str]):
    return _config(FIG2, fig2_overrides(d_model, feature_dim),
                   f"based_fig2/d{d_model}_f{feature_dim}", overrides)


def fig2_swa_point(window: int, overrides: list[str]):
    return _config(FIG2, fig2_swa_overrides(window), f"based_fig2/swa_w{window}", overrides)


def plot(records: list[dict], path: Path, series: str = "window") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for line in sorted({(r["model"], r[series]) for r in records}):
        rows = sorted((r for r in records if (r["model"], r[series]) == line),
                      key=lambda r: r["state"])
        label = f"{series} {line[1]}" if series == "window" else f"{line[0]}, d_model {line[1]}"
        ax.plot([r["state"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-",
                label=label)
        if all("reachable_queries" in r for r in rows):  # the window's bound, its colour
            ax.plot([r["state"] for r in rows], [100 * r["reachable_queries"] for r in rows],
                    ":", color=ax.lines[-1].get_color(), label="its reachable queries (bound)")
        for r in rows:
            name = f"f={r['feature_dim']}" if r["feature_dim"] else f"w={r['window']}"
            ax.annotate(name, (r["state"], 100 * r["test_accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels at the decades only
    ax.set_xlabel("recurrent state (floats per sequence)")
    ax.set_ylabel("MQAR test accuracy (%)")
    ax.set_title(f"Based ({'recipe' if series == 'window' else 'fig. 2 setup'}): "
                 "recall vs state size")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(0, 0.32))  # clear of the points
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def record(cfg, summary: dict, run_dir: Path) -> dict:
    """One point: the run's model (``Based``, or ``sliding window`` for the fig2 preset's
    attention-only model), window (None without one), d_model, feature_dim (None without
    Based), state floats per sequence and test accuracy; the sliding-window model's points also
    hold ``reachable_queries``, the fraction of its test queries the window can reach at all
    (:func:`fig2_reachable`, over its BaseConv's kernel)."""
    options = cfg.model.mixer_options
    based = "based" in cfg.model.mixer.split(",")
    window = options.get("attention", {}).get("window")
    point = {"model": "Based" if based else "sliding window", "window": window,
             "d_model": cfg.model.d_model,
             "feature_dim": options["based"]["key_dim"] if based else None,
             "state": state_floats(cfg.model), "test_accuracy": summary["test_accuracy"],
             "run": str(run_dir)}
    if not based and window is not None and cfg.model.mixer == FIG2_SWA[0]:
        kernel = options.get("base_conv", {}).get("kernel_size", 3)
        point["reachable_queries"] = fig2_reachable(cfg.task, [window], kernel)[window]
    return point


def trained(cfg) -> tuple:
    """``cfg``, its summary and its run directory, ``runs/<name>``, once trained."""
    run_dir = Path("runs") / cfg.name
    return cfg, train(cfg, run_dir, overwrite=True, progress=False), run_dir


def finished_runs(folder: Path, experiment: str = RECIPE) -> list[Path]:
    """The run directories in ``folder`` that have a summary, of ``experiment``'s model (its
    layers) or, for the fig2 preset, also of its sliding-window model on the same MQAR."""
    cfg = load_experiment(experiment)
    layers = {cfg.model.mixer, *([FIG2_SWA[0]] if experiment == FIG2 else [])}

    def mqar(task) -> tuple:
        return (task.name, task.seq_len, task.num_kv_pairs, task.vocab_size)

    def ours(run_dir: Path) -> bool:
        run = run_config(run_dir)
        same_task = experiment != FIG2 or mqar(run.task) == mqar(cfg.task)
        return run.model.mixer in layers and same_task

    return [d for d in sorted(folder.iterdir()) if (d / SUMMARY_FILE).is_file() and ours(d)]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="where the json and png go (required but with "
                   "--reachable)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="recipe",
                   help="recipe: window x feature_dim of the 5-layer recipe on the default MQAR; "
                        "fig2: the paper's figure-2 setup, d_model x feature_dim")
    p.add_argument("--windows", type=int, nargs="+", default=[4, 8, 16, 32], help="recipe")
    p.add_argument("--d-models", type=int, nargs="+", default=[48, 64, 128], help="fig2")
    p.add_argument("--feature-dims", type=int, nargs="+",
                   help="default: 4 8 16 (recipe), 8 16 24 (fig2)")
    p.add_argument("--swa-windows", type=int, nargs="*", default=[],
                   help="fig2: also train the sliding-window model at these windows")
    p.add_argument("--from-runs", type=Path, metavar="DIR",
                   help="train nothing: the points are DIR's finished runs of the preset")
    p.add_argument("--reachable", type=int, nargs="+", metavar="W",
                   help="train nothing: print the fraction of the fig2 task's test queries that "
                        "attention over the last W tokens after BaseConv can reach, per W")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.reachable:
        cfg = apply_overrides(load_experiment(FIG2), overrides)  # e.g. task.seq_len=512
        kernel = cfg.model.mixer_options["base_conv"].get("kernel_size", 3)
        for window, share in fig2_reachable(cfg.task, args.reachable, kernel).items():
            print(json.dumps({"window": window, "reachable_queries": share}))
        return
    if args.out is None:
        p.error("--out is required")
    if args.from_runs and overrides:
        p.error("--from-runs trains nothing: overrides after -- do not apply")
    experiment, series, stem = PRESETS[args.preset]
    fig2 = args.preset == "fig2"
    feature_dims = args.feature_dims or ([8, 16, 24] if fig2 else [4, 8, 16])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_runs:
        points = ((run_config(d), read_summary(d), d)
                  for d in finished_runs(args.from_runs, experiment))
    elif fig2:
        points = itertools.chain(
            (trained(fig2_point(d, f, overrides)) for d in args.d_models for f in feature_dims),
            (trained(fig2_swa_point(w, overrides)) for w in args.swa_windows))
    else:
        points = (trained(point(w, f, overrides)) for w in args.windows for f in feature_dims)
    records = []
    for cfg, summary, run_dir in points:
        records.append(record(cfg, summary, run_dir))
        print(json.dumps(records[-1]), flush=True)
    if not records:
        p.error(f"no finished run of {experiment} in {args.from_runs}")
    records.sort(key=lambda r: (r["model"], r[series], r["feature_dim"] or 0, r["window"] or 0))
    (args.out / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")
    plot(records, args.out / f"{stem}.png", series)


if __name__ == "__main__":
    main()
