"""The ``seqzoo`` command: list, config, train, eval, materialize, bench, plot
(``seqzoo CMD --help``)."""

from __future__ import annotations

import argparse
import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

from seqzoo.config import apply_overrides, check_values
from seqzoo.config_help import key_listing

TRAIN_HELP = f"""\
Train an experiment: EXPERIMENT is a name from `seqzoo list` (default: the built-in default,
MQAR with a 2-layer attention model) or the path of a TOML config, e.g. a run's config.toml.
Any config field can be changed with section.key=value overrides, e.g.
`seqzoo train induction_heads_attention optim.steps=400 model.d_model=64`
(dict fields take JSON: model.mixer_options='{{"num_heads": 4}}'). The keys, by section:
{key_listing()}
`seqzoo config show EXPERIMENT [overrides]` prints the resolved config: every key with its
type, default, allowed values and where its value comes from.
The run writes to --run-dir (default runs/<experiment>-<timestamp>): config.toml, metrics.jsonl,
TensorBoard events, checkpoints/, best/ and summary.json. `seqzoo train --resume --run-dir DIR`
continues it from its newest checkpoint that reads back whole; overrides may then change only
how long and how often it runs (optim.steps, max_minutes, eval_every, log_every,
checkpoint_every, keep_checkpoints, description, mesh.*) and optim.accumulate, and are recorded
in resumes.jsonl. `--init-from RUN_DIR` starts a new run (step 0, a fresh optimizer state, its
own schedule) from the model variables of another run's latest checkpoint (with --init-best: its
best-validation one), e.g. a harder task from a model trained on an easier one; the model must
have the same variables, and the source is recorded in the new run's init.json.
Out of memory? Lower optim.batch_size, or keep it and set optim.accumulate=N: each batch runs
as N microbatches with the same gradient, in less memory.
Ctrl-C (SIGINT) or SIGTERM stops the run after the step under way, saving a checkpoint of that
step, so --resume continues exactly where it stopped (a second signal stops at once).
Many processes (one per host, or several on one): start the same command in each with
--coordinator HOST:PORT --num-processes N --process-id I, or under `srun` (SLURM) or on every
host of a TPU slice, where they find each other by themselves; the mesh spans all their
devices, each reads its part of every batch, and process 0 writes the run's files (README:
"Many hosts")."""


def _list(args) -> int:
    from seqzoo.registry import list_mixers, mixer_info
    from seqzoo.runner.experiments import experiment_names, load_experiment
    from seqzoo.tasks import TASKS

    print(f"{'mixer':24s} {'causal':7s} {'data-dep':9s} {'structure':15s} {'cost':22s} paper")
    for name in list_mixers():
        i = mixer_info(name)
        print(
            f"{name:24s} {str(i.causal):7s} {str(i.data_dependent):9s} {i.structure:15s} "
            f"{i.cost:22s} {i.paper}"
        )
    print(f"\n{'task':24s} description")
    for name, task in sorted(TASKS.items()):
        print(f"{name:24s} {task.description}")
    print(f"\n{'experiment':26s} {'task':20s} {'mixer':20s} description")
    for name in experiment_names():
        try:
            cfg = load_experiment(name)
        except ValueError as e:
            print(f"{name:26s} (invalid: {e})")
            continue
        print(f"{name:26s} {cfg.task.name:20s} {cfg.model.mixer:20s} {cfg.description}")
    return 0


def _split_train_args(items: list[str]) -> tuple[str | None, list[str]]:
    """``[EXPERIMENT] [overrides...]``: the first item may be an experiment (it has no ``=``)."""
    experiment = items[0] if items and "=" not in items[0] else None
    overrides = items[1:] if experiment else items
    strays = [o for o in overrides if "=" not in o]
    if strays:
        raise ValueError(f"expected section.key=value overrides after the experiment, got {strays}")
    return experiment, overrides


def _interrupted(run_dir: Path) -> str:
    """What a Ctrl-C outside the training steps (no checkpoint saved for it) leaves to resume."""
    folder = run_dir / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    if not steps:
        return "interrupted before any checkpoint was saved"
    return (
        f"interrupted; `seqzoo train --resume --run-dir {run_dir}` continues from its newest "
        f"checkpoint (step {max(steps)})"
    )


def _train(args) -> int:
    from seqzoo.runner.distributed import initialize, is_main

    initialize(args.coordinator, args.num_processes, args.process_id)  # before JAX's devices
    from seqzoo.runner import OutOfMemory, RunInterrupted, TrainingDiverged, train
    from seqzoo.runner.experiments import DEFAULT, load_experiment
    from seqzoo.runner.rundir import default_run_dir, run_config

    experiment, overrides = _split_train_args(args.args)
    if args.resume:
        if args.run_dir is None or experiment:
            raise ValueError("--resume takes the run's own config: give --run-dir RUN_DIR only")
        base = run_config(args.run_dir)
    else:
        base = load_experiment(experiment or DEFAULT)
    cfg = apply_overrides(base, overrides)
    run_dir = args.run_dir or default_run_dir(cfg.name)
    try:
        result = train(
            cfg,
            run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            init_from=args.init_from,
            init_best=args.init_best,
            progress=False if args.no_progress else None,
        )
    except (TrainingDiverged, OutOfMemory) as e:
        print(f"seqzoo: stopped: {e}", file=sys.stderr)
        return 1
    except RunInterrupted as e:
        print(
            f"seqzoo: stopped by {e.signal_name} after step {e.step}, saved in {e.checkpoint}; "
            f"`seqzoo train --resume --run-dir {run_dir}` continues from step {e.step}",
            file=sys.stderr,
        )
        return 128 + e.signal_number
    except KeyboardInterrupt:
        print(f"\nseqzoo: {_interrupted(Path(run_dir))}", file=sys.stderr)
        return 130
    if not is_main():
        return 0
    print(
        f"final test accuracy {result['test_accuracy']:.3f} (loss {result['test_loss']:.4f}) "
        f"after {result['steps']} steps in {result['seconds']:.0f}s "
        f"({result['tokens_per_second']:,.0f} tok/s); best val accuracy "
        f"{result['best_val_accuracy']:.3f} at step {result['best_step']} (test there "
        f"{result['best_test_accuracy']:.3f}); "
        f"{result['params']:,} parameters; run {run_dir}"
    )
    return 0


def _eval(args) -> int:
    from seqzoo.runner import evaluate_run

    note = functools.partial(print, file=sys.stderr)  # which checkpoints were passed over
    result = evaluate_run(
        args.run_dir,
        split=args.split,
        best=args.best,
        overrides=args.overrides,
        log=note,
        progress=False if args.no_progress else None,
    )
    which = "best" if args.best else "latest"
    changed = f" with {' '.join(args.overrides)}" if args.overrides else ""
    print(
        f"{args.split} accuracy {result['accuracy']:.4f} (loss {result['loss']:.4f}) "
        f"of the {which} checkpoint, step {result['step']}{changed}"
    )
    return 0


def _config_show(args) -> int:
    from seqzoo.config_help import show_config
    from seqzoo.runner.experiments import DEFAULT, load_experiment

    name, overrides = _split_train_args(args.args)
    experiment = load_experiment(name or DEFAULT)
    cfg = apply_overrides(experiment, overrides)
    check_values(cfg)
    title = f"seqzoo config show {' '.join([name or DEFAULT, *overrides])}"
    print(show_config(cfg, experiment, overrides, title), end="")
    return 0


def _materialize(args) -> int:
    from seqzoo.runner.materialize import mixer_matrix
    from seqzoo.runner.plot import plot_matrix

    options = json.loads(args.options)
    matrices = mixer_matrix(
        args.mixer, args.length, d_model=args.d_model, options=options, seed=args.seed
    )
    if not 0 <= args.head < len(matrices):
        raise ValueError(f"--head must be in [0, {len(matrices)}) for {args.mixer!r}")
    title = f"{args.mixer}: M of head {args.head}, length {args.length}"
    print(plot_matrix(matrices[args.head], args.out, title))
    return 0


def _bench(args) -> int:
    from seqzoo.runner.experiments import SOURCE_ROOT

    folder = SOURCE_ROOT / "benchmarks"
    scripts = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not scripts:
        print(
            f"seqzoo: no benchmarks found: {folder} holds no scripts (benchmarks live in the "
            f"source checkout; install it with `pip install -e .`)",
            file=sys.stderr,
        )
        return 1
    if args.name is None:
        for script in scripts:
            doc = ast.get_docstring(ast.parse(script.read_text())) or ""
            print(f"{script.stem:28s} {doc.splitlines()[0] if doc else ''}")
        return 0
    script = folder / f"{args.name}.py"
    if not script.is_file():
        names = ", ".join(s.stem for s in scripts)
        raise ValueError(f"unknown benchmark {args.name!r}; available: {names}")
    return subprocess.run([sys.executable, str(script), *args.args]).returncode


def _plot(args) -> int:
    from seqzoo.runner.plot import plot_runs

    print(plot_runs(args.run_dirs, args.out))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqzoo", description="Train and inspect seqzoo sequence models (seqzoo CMD --help)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list mixers, tasks and experiments with their metadata")
    p.set_defaults(run=_list)

    p = sub.add_parser(
        "config", help="show an experiment's resolved config (seqzoo config show EXPERIMENT)"
    )
    config = p.add_subparsers(dest="action", required=True)
    p = config.add_parser(
        "show",
        help="print the resolved config: every key, its type, default and allowed values",
        description=(
            "Print the config EXPERIMENT (a name from `seqzoo list`, default: the default "
            "experiment; or a .toml path) with the section.key=value overrides applied, as "
            "TOML: every key with its type, default, allowed values and where its value comes "
            "from (the experiment or an override). Values are checked as `seqzoo train` checks "
            "them, without building data or a model."
        ),
    )
    p.add_argument("args", nargs="*", metavar="[EXPERIMENT] section.key=value")
    p.set_defaults(run=_config_show)

    p = sub.add_parser(
        "train",
        help="train an experiment (default: MQAR with a 2-layer attention model, CPU-sized)",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="[EXPERIMENT] section.key=value")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<name>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue --run-dir from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    p.add_argument("--init-from", type=Path, metavar="RUN_DIR",
                   help="a new run starting from the model variables of RUN_DIR's checkpoint")
    p.add_argument("--init-best", action="store_true",
                   help="--init-from the best-validation checkpoint (default: the latest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-process run: address of process 0's coordinator")
    p.add_argument("--num-processes", type=int, help="multi-process run: how many processes")
    p.add_argument("--process-id", type=int, help="multi-process run: this process, 0..N-1")
    p.set_defaults(run=_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on its task")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="task.KEY=VALUE",
                   help="evaluate on the task with these settings changed (e.g. "
                        "task.difficulty=curv_contour_length_14 task.num_train=64)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="default test")
    p.add_argument("--best", action="store_true", help="the best-validation checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(run=_eval)

    p = sub.add_parser(
        "materialize", help="save a PNG heatmap of a mixer's matrix M for a random input"
    )
    p.add_argument("mixer", metavar="MIXER", help="registry name (see seqzoo list)")
    p.add_argument("--length", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--out", type=Path, default=Path("m.png"), help="output PNG (default m.png)")
    p.add_argument("--d-model", type=int, default=16, help="model width (default 16)")
    p.add_argument("--options", default="{}", help="mixer options as JSON")
    p.add_argument("--head", type=int, default=0, help="which head's M (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of parameters and input")
    p.set_defaults(run=_materialize)

    p = sub.add_parser(
        "bench", help="list the scripts in benchmarks/, or run one: seqzoo bench NAME [ARGS]"
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="benchmark script (without .py)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(run=_bench)

    p = sub.add_parser("plot", help="learning curves of one or more runs, as a PNG")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="default curves.png")
    p.set_defaults(run=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"seqzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
