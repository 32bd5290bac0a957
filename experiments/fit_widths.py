"""Fit the width of every model to its task's Transformer parameter count (LRA's rule: within
10%) and write the numbers into the experiment files.

    python -m experiments.fit_widths                 # from the repository root: rewrite in place
    python -m experiments.fit_widths --dry-run       # print the table, change nothing
    python -m experiments.fit_widths pathfinder      # only the tasks named
    python -m experiments.fit_widths --folder experiments/repro

For each ``<task>_<model>.toml`` of the folder (default ``experiments/lra``) beside a
``<task>_transformer.toml`` (tasks: ListOps, Pathfinder and the LRA file tasks), the new
``d_model`` is the width whose parameter count is nearest the Transformer's (by ratio) among the
multiples of 8 (of 2 below 64, for the small budgets); depth and every other value stay as
written. Rewritten: the ``d_model`` line, the comment's "d_model = D ... N parameters, R x the
Transformer config", the description's "(N.NNM params, R.RR x transformer)", and in each
Transformer file its own count. Counts come from the model the runner builds (``build_model``)
for a one-row stand-in of the task's data, so nothing is read or generated; a width a mixer
refuses (ValueError) is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from pathlib import Path

import jax
import numpy as np

from seqzoo.config import ExperimentConfig, load_config
from seqzoo.data import Dataset, listops
from seqzoo.data.images import PIXEL_LEVELS
from seqzoo.data.lra_files import BYTE_VOCAB
from seqzoo.runner.build import param_count
from seqzoo.runner.model import build_model, model_inputs

FOLDER = Path(__file__).resolve().parent / "lra"
TRANSFORMER = "transformer"
WIDTHS = [*range(2, 64, 2), *range(64, 8192, 8)]  # the candidate d_model values, increasing
LIMIT = 0.1  # LRA: within 10% of the Transformer
LENGTH = 16  # of the stand-in row; no LRA model's parameter count depends on it
TASK_SHAPES = {  # (vocab, classes) of each LRA task's data, as its generator or loader builds it
    "listops": (len(listops.VOCAB), listops.NUM_CLASSES),
    "pathfinder": (PIXEL_LEVELS, 2),
    "lra_imdb": (BYTE_VOCAB, 2),
    "lra_retrieval": (BYTE_VOCAB, 2),
    "lra_cifar10": (PIXEL_LEVELS, 10),
}


def count_params(cfg: ExperimentConfig) -> int | None:
    """Parameters of ``cfg``'s model on its task's data; None if a mixer refuses the width."""
    vocab, classes = TASK_SHAPES[cfg.task.name]
    row = {
        "inputs": np.ones((1, LENGTH), np.int32),
        "targets": np.zeros((1,), np.int32),
        "mask": np.ones((1, LENGTH), bool),
    }
    data = Dataset(cfg.task.name, {"train": row}, vocab, classes, LENGTH)
    try:
        model = build_model(cfg, data)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), model_inputs(row), row["mask"])
    except ValueError:
        return None
    return param_count(shapes)


def with_width(cfg: ExperimentConfig, d_model: int) -> ExperimentConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=d_model))


def fit_width(cfg: ExperimentConfig, target: int) -> tuple[int, int]:
    """``(d_model, params)``: the accepted width in ``WIDTHS`` nearest ``target`` by ratio.

    The count grows with the width, so a bisection over ``WIDTHS`` finds the first accepted
    width whose count reaches ``target``; the answer is that one or the accepted width below."""
    counts: dict[int, int | None] = {}

    def params(i: int) -> int | None:
        if i not in counts:
            counts[i] = count_params(with_width(cfg, WIDTHS[i]))
        return counts[i]

    def accepted(i: int, direction: int) -> int | None:
        """The index of the first accepted width from ``i`` on, going up (1) or down (-1)."""
        indices = range(i, len(WIDTHS)) if direction > 0 else range(i, -1, -1)
        return next((j for j in indices if params(j) is not None), None)

    def reaches(i: int) -> bool:
        j = accepted(i, 1)
        if j is None:
            raise ValueError(f"{cfg.model.mixer} accepts no d_model >= {WIDTHS[i]}")
        return params(j) >= target

    low, high = -1, len(WIDTHS) - 1  # low == -1 or not reaches(low); reaches(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    above = accepted(high, 1)
    below = accepted(above - 1, -1) if above > 0 else None
    best = min(
        (i for i in (above, below) if i is not None),
        key=lambda i: abs(math.log(params(i) / target)),
    )
    return WIDTHS[best], params(best)


def _sub(pattern: str, new: str, text: str, path: Path) -> str:
    text, n = re.subn(pattern, new, text, count=1, flags=re.MULTILINE)
    if n != 1:
        raise ValueError(f"{path}: no match for {pattern!r}; write that line as the others are")
    return text


def rewrite_model(path: Path, d_model: int, params: int, ratio: float) -> None:
    text = path.read_text()
    text = _sub(r"^d_model = \d+$", f"d_model = {d_model}", text, path)
    text = _sub(r"# d_model = \d+", f"# d_model = {d_model}", text, path)
    text = _sub(
        r"[\d,]+ parameters, [\d.]+ x the Transformer config",
        f"{params:,} parameters, {ratio:.3f} x the Transformer config",
        text,
        path,
    )
    text = _sub(
        r"\([\d.]+M params, [\d.]+ x transformer\)",
        f"({params / 1e6:.2f}M params, {ratio:.2f} x transformer)",
        text,
        path,
    )
    path.write_text(text)


def rewrite_transformer(path: Path, params: int) -> None:
    text = path.read_text()
    text = _sub(r"parameter count \([\d,]+\)", f"parameter count ({params:,})", text, path)
    text = _sub(r"\([\d.]+M params\)", f"({params / 1e6:.2f}M params)", text, path)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", help="file prefixes, e.g. listops (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the table only")
    parser.add_argument("--folder", type=Path, default=FOLDER, help=f"default {FOLDER}")
    args = parser.parse_args()
    for ref_path in sorted(args.folder.glob(f"*_{TRANSFORMER}.toml")):
        task = ref_path.stem.removesuffix(f"_{TRANSFORMER}")
        if args.tasks and task not in args.tasks:
            continue
        target = count_params(load_config(ref_path))
        print(f"{ref_path.name:34s} {'':>6s} {target:>12,d}")
        if not args.dry_run:
            rewrite_transformer(ref_path, target)
        for path in sorted(args.folder.glob(f"{task}_*.toml")):
            if path == ref_path:
                continue
            d_model, params = fit_width(load_config(path), target)
            ratio = params / target
            flag = "" if abs(ratio - 1) <= LIMIT else "  OUTSIDE THE 10% RULE"
            print(f"{path.name:34s} {d_model:6d} {params:12,d} {ratio:6.3f}{flag}")
            if not args.dry_run:
                rewrite_model(path, d_model, params, ratio)


if __name__ == "__main__":
    main()
