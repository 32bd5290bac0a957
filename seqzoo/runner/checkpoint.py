"""Orbax checkpoints of a run: ``checkpoints/<step>`` (periodic and final: params, optimizer
state, and ``meta``, a JSON dict with the step and the best validation score so far; the last
``keep`` are kept) and ``best/<step>`` (params and ``meta`` of a step whose validation accuracy
was a new best).

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a killed
run leaves only whole checkpoints (and temporary directories, removed when a run reopens the
folder for writing). Files can still be damaged later: each ``meta`` is copied when the save
starts and carries ``checksums`` of itself and of each saved tree (``seqzoo.runner.integrity``).
Restoring takes the newest checkpoint that reads back whole: it restores, matches its
checksums, holds only finite values and names its own step; the newer ones passed over are
reported with the reason (``Restored.skipped``) and a resuming run moves them to ``skipped/``
(``set_aside``). Arrays are restored with the shardings of the abstract ``like`` trees given.

Kept best checkpoints: the newest, and for each kept periodic checkpoint of step s the best one
as of s (the one its meta names), so that whichever periodic checkpoint a run resumes from,
its best checkpoint is there.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from seqzoo.runner.integrity import array_checksum, json_checksum, nonfinite_leaves

LATEST, BEST, SKIPPED = "checkpoints", "best", "skipped"
CHECKSUMS = "checksums"  # the meta key holding the checksums of the checkpoint's items


class CheckpointError(ValueError):
    """No checkpoint of a run reads back whole."""


@dataclasses.dataclass
class Restored:
    """A checkpoint that read back whole: its step, folder and items (``params``, ``meta``
    without its checksums and, for a periodic checkpoint, ``opt_state``), and the newer
    checkpoints passed over as ``(folder, reason)``."""

    step: int
    path: Path
    items: dict[str, Any]
    skipped: list[tuple[Path, str]]


def _manager(directory: Path, keep: int | None, read_only: bool) -> ocp.CheckpointManager:
    """A manager of ``directory``; ``read_only``: one that creates, cleans and deletes nothing
    (orbax's own ``read_only`` option does the same but logs warnings)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        create=not read_only,
        cleanup_tmp_directories=not read_only,  # left by runs killed while saving
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree`` (what ``restore`` needs)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _sealed(meta: dict, trees: dict[str, Any]) -> dict:
    """A copy of ``meta`` (taken now) with the ``checksums`` of itself and of ``trees``."""
    meta = {k: v for k, v in json.loads(json.dumps(meta)).items() if k != CHECKSUMS}
    checksums = {name: array_checksum(tree) for name, tree in trees.items()}
    return {**meta, CHECKSUMS: {"meta": json_checksum(meta), **checksums}}


def _problem(step: int, items: dict[str, Any]) -> str | None:
    """Why the restored ``items`` of checkpoint ``step`` are not what was saved (None: they
    are). Checkpoints written before checksums existed are checked for the rest only."""
    meta = items["meta"]
    if not isinstance(meta, dict):
        return "its meta is not a JSON object"
    if meta.get("step") != step:
        return f"its meta names step {meta.get('step')!r}, not {step}"
    trees = {name: tree for name, tree in items.items() if name != "meta"}
    if CHECKSUMS in meta:
        content = {k: v for k, v in meta.items() if k != CHECKSUMS}
        checksums = meta[CHECKSUMS]
        actual = {"meta": json_checksum(content)}
        actual.update({name: array_checksum(tree) for name, tree in trees.items()})
        changed = [name for name, value in actual.items() if checksums.get(name) != value]
        if changed:
            return (
                f"its {' and '.join(changed)} differ from what was saved (checksum mismatch: "
                f"a file was cut short or altered after the save)"
            )
    bad = nonfinite_leaves(trees)
    if bad:
        return f"non-finite values in {', '.join(bad[:3])}"
    return None


def _abandoned_read(report) -> bool:
    """Whether an unraisable-exception report comes from orbax's reads of a checkpoint that
    failed to restore: the reads it left running end later, in a closed event loop."""
    if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == (
        "Event loop is closed"
    ):
        return True
    code = getattr(report.object, "cr_code", None)  # a coroutine collected with its error
    return code is not None and "orbax" in code.co_filename


def _quiet_abandoned_reads() -> None:
    """From now on, drop the late reports of ``_abandoned_read`` (once a restore has failed and
    said why, they are only noise: pages of tracebacks); other reports pass as before."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_abandoned_reads", False):
        return

    def hook(report) -> None:
        if not _abandoned_read(report):
            previous(report)

    hook.quiets_abandoned_reads = True
    sys.unraisablehook = hook


def _reason(error: Exception) -> str:
    """A one-line account of why orbax could not read a checkpoint."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" See full TensorStore details")[0] if lines else ""
    return f"unreadable ({type(error).__name__}: {text[:160]})"


def _restore_newest(manager: ocp.CheckpointManager, likes: dict[str, Any]) -> Restored:
    """The items ``likes`` (abstract trees, by name) and ``meta`` of the newest checkpoint of
    ``manager`` that reads back whole; ``CheckpointError`` listing every reason if none does."""
    directory = Path(manager.directory)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    args = {name: ocp.args.StandardRestore(abstract(like)) for name, like in likes.items()}
    skipped = []
    for step in steps:
        try:
            items = dict(
                manager.restore(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonRestore()))
            )
            problem = _problem(step, items)
        except Exception as e:  # noqa: BLE001 (any failure to read makes the checkpoint unusable)
            _quiet_abandoned_reads()
            problem = _reason(e)
        if problem is None:
            items["meta"] = {k: v for k, v in items["meta"].items() if k != CHECKSUMS}
            return Restored(step, directory / str(step), items, skipped)
        skipped.append((directory / str(step), problem))
    reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped)
    raise CheckpointError(f"no checkpoint in {directory} reads back whole: {reasons}")


class Checkpoints:
    """The periodic and best checkpoints under ``run_dir`` (``read_only``: for restoring only:
    nothing in the folder is created, changed or removed)."""

    def __init__(self, run_dir: str | Path, keep: int = 2, *, read_only: bool = False):
        self.run_dir, self.read_only = Path(run_dir), read_only
        self.latest = _manager(self.run_dir / LATEST, keep, read_only)
        self.best = _manager(self.run_dir / BEST, None, read_only)

    def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
        """Start saving the periodic checkpoint of ``step`` (``meta`` is copied now; orbax writes
        the arrays in the background)."""
        self._prune_best()
        trees = {"params": params, "opt_state": opt_state}
        args = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        meta = ocp.args.JsonSave(_sealed(meta, trees))
        self.latest.save(step, args=ocp.args.Composite(**args, meta=meta))

    def save_best(self, step: int, params: Any, meta: dict) -> None:
        """Start saving ``params`` of ``step`` as the best checkpoint so far."""
        meta = ocp.args.JsonSave(_sealed(meta, {"params": params}))
        self.best.save(
            step, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=meta)
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, params_like: Any, opt_state_like: Any) -> Restored:
        """The newest periodic checkpoint that reads back whole: ``params``, ``opt_state``,
        ``meta`` (see the module docstring)."""
        return _restore_newest(self.latest, {"params": params_like, "opt_state": opt_state_like})

    def restore_params(self, params_like: Any, best: bool = False) -> Restored:
        """``params`` and ``meta`` of the newest periodic (or best) checkpoint that reads back
        whole."""
        return _restore_newest(self.best if best else self.latest, {"params": params_like})

    def discard_best_after(self, step: int) -> None:
        """Drop best checkpoints newer than ``step`` (written after the one a run resumes from)."""
        for s in self.best.all_steps():
            if s > step:
                self.best.delete(s)

    def _prune_best(self) -> None:
        """Delete the best checkpoints no kept periodic checkpoint needs (see the module
        docstring), once the saves under way are complete."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        bests = sorted(self.best.all_steps())
        needed = best_needed(bests, self.latest.all_steps())
        for step in bests[:-1]:
            if step not in needed:
                self.best.delete(step)

    def close(self) -> None:
        """Wait for pending (asynchronous) saves, drop best checkpoints no longer needed, then
        release the managers."""
        if not self.read_only:
            self._prune_best()
        self.latest.close()
        self.best.close()


def best_needed(bests, steps) -> set[int]:
    """The best checkpoints (of steps ``bests``) that the periodic checkpoints of ``steps`` need:
    for each, the newest best at or before it (module docstring)."""
    return {max(earlier) for s in steps if (earlier := [b for b in bests if b <= s])}


def read_params(run_dir: str | Path, params_like: Any, best: bool = False) -> Restored:
    """``params`` and ``meta`` of ``run_dir``'s newest periodic (``best``: best-validation)
    checkpoint that reads back whole, placed as the shardings of ``params_like`` say; read only:
    nothing in ``run_dir`` changes, so a run can be read while it trains (``seqzoo eval``,
    ``--init-from``)."""
    reader = Checkpoints(run_dir, read_only=True)
    try:
        return reader.restore_params(params_like, best=best)
    finally:
        reader.close()


def set_aside(run_dir: str | Path, skipped: list[tuple[Path, str]]) -> dict[Path, Path]:
    """Move the checkpoint folders ``skipped`` (by a restore) to ``run_dir/skipped/``, out of
    the way of the run that resumes (it saves those steps again). Returns ``{old: new path}``."""
    moved = {}
    for path, _ in skipped:
        if not path.exists():
            continue
        target = Path(run_dir) / SKIPPED / f"{path.parent.name}-{path.name}"
        copies = 1
        while target.exists():
            copies += 1
            target = target.with_name(f"{path.parent.name}-{path.name}.{copies}")
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        moved[path] = target
    return moved
