"""Time ``benchmarks/kernels.py`` cases at several git revisions in one call, interleaved.

    python benchmarks/compare_revisions.py prepare c56934d cb95c32 HEAD [--into .peers/revisions]
    python benchmarks/compare_revisions.py run [--into DIR] [--rounds 2] [--worktree] \\
        -- --only selective_scan --match "selective_scan fwd B4" --variants =pallas --no-baseline

``prepare`` (where git is: this workstation) writes each revision's tracked files into
``DIR/<rev>`` (``git archive``; a branch's slashes made underscores; notebooks and experiment
results left out) and the order in ``DIR/ORDER``; carry ``DIR`` to the GPU machine. ``run``
(there) runs kernels.py with the arguments after ``--`` in each revision's folder, in ``ORDER``
(and the working tree itself, named ``worktree``, last, with ``--worktree``), ``--rounds``
times round-robin, so that a drift of the machine's clocks over the call reaches every
revision alike. It prints each run's timing lines as they come, then one markdown table: a row
per case and variant, a column per revision, the median over rounds (each round's time is
kernels.py's own median), with the rounds' spread. A timing that one revision lacks (a variant
it does not have, a run that failed or timed out after ``--timeout`` seconds) is left blank.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path("benchmarks/kernels.py")
LEFT_OUT = ("notebooks", "experiments/results")  # large and never imported by a benchmark
WORKTREE = "worktree"
# kernels.py's line per variant: "  <kernel> | <shape> | <variant>: <ms> ms, err <error>"
TIMING = re.compile(r"^\s+(?P<kernel>[^|]+?) \| (?P<shape>[^|]+?) \| (?P<variant>.+): "
                    r"(?P<ms>[0-9.]+) ms, err")


def prepare(revisions: list[str], into: Path) -> None:
    """Each revision's tracked files in ``into/<rev>`` (replaced if there), the order in
    ``into/ORDER``."""
    into.mkdir(parents=True, exist_ok=True)
    names = [folder_name(rev) for rev in revisions]
    for rev, name in zip(revisions, names, strict=True):
        folder = into / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "--", ".",
             *(f":(exclude){path}" for path in LEFT_OUT)],
            check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (into / "ORDER").write_text("\n".join(names) + "\n")


def folder_name(rev: str) -> str:
    """The folder of revision ``rev`` (a branch's slashes made underscores)."""
    return rev.replace("/", "_")


def timings(output: str) -> dict[tuple[str, str, str], float]:
    """``{(kernel, shape, variant): ms}`` from kernels.py's output."""
    found = {}
    for line in output.splitlines():
        m = TIMING.match(line)
        if m:
            found[(m["kernel"], m["shape"], m["variant"])] = float(m["ms"])
    return found


def run_once(folder: Path, script: Path, args: list[str], timeout: float) -> str:
    """kernels.py's stdout (and stderr's tail on failure) in ``folder``, with ``folder`` on
    PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run([sys.executable, str(script), *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        return out + f"\n(timed out after {timeout:.0f} s)"
    return done.stdout + ("" if done.returncode == 0 else done.stderr[-2000:])


def table(results: dict[str, list[dict]], names: list[str]) -> str:
    """The markdown table of ``results`` (revision -> one timings dict per round)."""
    keys = list(dict.fromkeys(k for name in names for found in results[name] for k in found))
    lines = ["| case | variant | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for kernel, shape, variant in keys:
        cells = []
        for name in names:
            times = [found[(kernel, shape, variant)] for found in results[name]
                     if (kernel, shape, variant) in found]
            cells.append("" if not times else f"{statistics.median(times):.3f}" + (
                f" ({min(times):.3f}-{max(times):.3f})" if len(times) > 1 else ""))
        lines.append(f"| {kernel} {shape} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(into: Path, rounds: int, worktree: bool, args: list[str], timeout: float,
        script: Path = SCRIPT) -> str:
    """Every revision's timings, ``rounds`` times round-robin; returns (and prints) the table."""
    names = (into / "ORDER").read_text().split() if (into / "ORDER").exists() else []
    folders = {name: into / name for name in names}
    if worktree:
        names.append(WORKTREE)
        folders[WORKTREE] = ROOT
    if not names:
        raise SystemExit(f"nothing to run: no {into / 'ORDER'} (run `prepare` first) and no "
                         "--worktree")
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(1, rounds + 1):
        for name in names:
            output = run_once(folders[name], script, args, timeout)
            found = timings(output)
            results[name].append(found)
            print(f"[{name}, round {round_}] " + ("; ".join(
                f"{v}: {ms:.3f} ms" for (_, _, v), ms in found.items()) or output[-500:]),
                flush=True)
    text = table(results, names)
    print(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write revisions' files to --into")
    p.add_argument("revisions", nargs="+")
    p.add_argument("--into", type=Path, default=ROOT / ".peers" / "revisions")
    r = sub.add_parser("run", help="time kernels.py in each prepared revision")
    r.add_argument("--into", type=Path, default=ROOT / ".peers" / "revisions")
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--worktree", action="store_true", help="also the working tree, last")
    r.add_argument("--timeout", type=float, default=300, help="seconds a kernels.py run")
    r.add_argument("kernel_args", nargs=argparse.REMAINDER, help="-- then kernels.py's")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.revisions, args.into)
        return 0
    kernel_args = args.kernel_args[1:] if args.kernel_args[:1] == ["--"] else args.kernel_args
    run(args.into, args.rounds, args.worktree, kernel_args, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
