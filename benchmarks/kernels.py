"""Check then time every Pallas kernel against its XLA path and outside baselines.

    python benchmarks/kernels.py [--only NAME[,NAME]] [--match TEXT] [--variants TEXT]
                                 [--no-baseline] [--quick] [--repeats 7] [--calls 10]
    seqzoo bench kernels [...]

Runs the cases of every module in benchmarks/kernel_cases/ (``--only`` picks modules by name,
``--match`` cases whose "kernel shape" contains one of the comma-separated TEXTs, e.g.
``"linear_attention key fwd B4"``; ``--variants`` the variants whose name contains one of its
comma-separated TEXTs or equals one written ``=NAME``, the first of them the reference the others
are checked against, plus the case's baseline unless ``--no-baseline``), compiles only what was
picked, each case's variants in parallel before they are timed (``parallel_compile.py``),
prints one line per variant as it goes, then a markdown table (the one quoted in
benchmarks/RESULTS.md). ``--quick`` uses small shapes: on a CPU it exercises
the kernels in Pallas interpret mode and checks their agreement; its times are no claim. Exit
status 1 if any variant disagrees with its reference beyond the case's tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import kernel_cases  # noqa: E402
from kernel_harness import Case, markdown, run_case  # noqa: E402
from parallel_compile import precompile  # noqa: E402


def case_modules(only: list[str] | None):
    names = sorted(m.name for m in pkgutil.iter_modules(kernel_cases.__path__))
    unknown = set(only or ()) - set(names)
    if unknown:
        raise SystemExit(f"unknown case modules {sorted(unknown)}; available: {names}")
    return [importlib.import_module(f"kernel_cases.{n}") for n in names if not only or n in only]


def _texts(arg: str | None) -> list[str] | None:
    return None if arg is None else arg.split(",")


def _named(name: str, texts: list[str]) -> bool:
    """Whether ``name`` contains one of ``texts``, or equals one written ``=NAME``."""
    return any(name == t[1:] if t.startswith("=") else t in name for t in texts)


def picked(cases: list[Case], match: list[str] | None, variants: list[str] | None,
           baseline: bool = True) -> list[Case]:
    """The cases whose "kernel shape" contains one of ``match``'s texts (every case when None),
    each cut to the variants ``variants`` names (``_named``; every variant when None; the first
    kept is the reference) plus its baseline unless ``baseline`` is False (then a baseline not
    named has no column to divide by); a case left without a variant is dropped."""
    out = []
    for case in cases:
        if match is not None and not any(t in f"{case.kernel} {case.shape}" for t in match):
            continue
        kept = {name: fn for name, fn in case.variants.items()
                if variants is None or (baseline and name == case.baseline)
                or _named(name, variants)}
        if kept:
            base = case.baseline if case.baseline in kept else None
            out.append(dataclasses.replace(case, variants=kept, baseline=base))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated case modules (default: all)")
    parser.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    parser.add_argument("--match", help="only cases whose 'kernel shape' contains one of these "
                        "comma-separated texts")
    parser.add_argument("--variants", help="only variants whose name contains one of these "
                        "comma-separated texts, or is one written =NAME (and each case's "
                        "baseline)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="with --variants: drop each case's baseline unless named (an "
                        "outside peer whose first call autotunes for minutes)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="back-to-back calls per timing")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"# {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    rows = []
    for module in case_modules(args.only.split(",") if args.only else None):
        for case in picked(module.cases(args.quick), _texts(args.match), _texts(args.variants),
                           baseline=not args.no_baseline):
            precompile([case])
            case_rows = run_case(case, repeats=args.repeats, calls=args.calls)
            for r in case_rows:
                print(f"  {r.kernel} | {r.shape} | {r.variant}: {r.ms:.3f} ms, err {r.error:.1e}",
                      flush=True)
            rows.extend(case_rows)
    print(markdown(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
