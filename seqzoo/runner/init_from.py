"""Start a new run from another run's model variables (``seqzoo train ... --init-from RUN_DIR
[--init-best]``): a curriculum, say, that trains a hard task from a model trained on an easier
one.

The new run is a new run in every other respect: it starts at step 0 with a fresh optimizer
state, its own schedule, seed and batches. Only its variables (the parameters and the other
collections, such as batch norm's statistics) are the source's, from the source's newest
checkpoint that reads back whole (``best``: its best-validation checkpoint). They are restored
with the new model's abstract variables, so they are placed as a fresh ``init`` places them
(``mesh.params``). The source's variable tree, built from its ``config.toml``, must match the
new model's leaf for leaf, in shape and dtype; the error names the first difference.

The new run records its source in ``RUN_DIR/init.json``: ``{"run_dir"`` (absolute),
``"checkpoint"`` (``"latest"`` or ``"best"``), ``"step"``, ``"path"`` (the checkpoint folder
read)``}``. A resumed run restores its own checkpoint and never reads the source again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax

from seqzoo.runner.build import Built
from seqzoo.runner.checkpoint import read_params
from seqzoo.runner.files import write_atomic
from seqzoo.runner.memory import abstract_build
from seqzoo.runner.rundir import run_config

INIT_FILE = "init.json"


@dataclasses.dataclass
class Initial:
    """The variables a run starts from, and the record of where they came from (``INIT_FILE``)."""

    variables: Any
    record: dict


def _leaves(tree: Any) -> dict[str, tuple]:
    """``{path: (shape, dtype)}`` of the leaves of a tree of arrays or shapes, in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in flat}


def first_difference(source: Any, target: Any) -> str | None:
    """How the variable tree ``source`` first differs from ``target`` (None: the same paths,
    shapes and dtypes): a path only one of them has, or a leaf of another shape or dtype."""
    old, new = _leaves(source), _leaves(target)
    for path in [*new, *(p for p in old if p not in new)]:
        if path not in old:
            return f"{path} (shape {new[path][0]}) is not among the source's variables"
        if path not in new:
            return f"the source's {path} (shape {old[path][0]}) is not in the new model"
        if old[path] != new[path]:
            (s, sd), (t, td) = old[path], new[path]
            return f"{path} is {sd}{list(s)} in the source, {td}{list(t)} in the new model"
    return None


def load_initial(run_dir: str | Path, built: Built, best: bool = False) -> Initial:
    """The variables of ``run_dir``'s latest (``best``: best-validation) checkpoint, placed for
    ``built``'s model; ``ValueError`` naming the first difference if the source's variable tree
    is not the new model's, ``FileNotFoundError`` if ``run_dir`` is not a run or has no such
    checkpoint. Nothing in ``run_dir`` is written."""
    run_dir = Path(run_dir).absolute()
    source = run_config(run_dir)  # the source's model, here on this run's devices and batch
    source = dataclasses.replace(source, mesh=built.cfg.mesh, optim=built.cfg.optim)
    difference = first_difference(abstract_build(source).params_shape, built.params_shape)
    if difference:
        raise ValueError(f"--init-from {run_dir}: its model's variables do not fit this run's "
                         f"model: {difference}")
    which = "best" if best else "latest"
    try:
        restored = read_params(run_dir, built.params_shape, best)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--init-from {run_dir}: no {which} checkpoint to start from "
                                f"({e})") from None
    record = {"run_dir": str(run_dir), "checkpoint": which, "step": restored.step,
              "path": str(restored.path)}
    return Initial(restored.items["params"], record)


def write_init(run_dir: str | Path, initial: Initial) -> None:
    """Record where ``run_dir``'s run started from, as ``INIT_FILE``."""
    write_atomic(Path(run_dir) / INIT_FILE, json.dumps(initial.record, indent=2) + "\n")

