"""Compile the variants of benchmark cases in parallel before they are timed.

XLA (and the Triton compiler inside it) compiles outside Python's GIL, so a thread pool turns a
benchmark run's dozens of compilations, which otherwise dominate its time, into a few rounds.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

from kernel_harness import Case


def _compile(variant: functools.partial):
    try:
        return variant.func.lower(*variant.args, **variant.keywords).compile()
    except Exception:  # left to the harness, which reports a failing variant and goes on
        return None


def precompile(cases: list[Case], workers: int = 8) -> list[Case]:
    """Replace every variant that is ``functools.partial(jitted_fn, *args)`` by the compiled
    executable on the same arguments, compiling all of them ``workers`` at a time."""
    jobs = [(case, name, v) for case in cases for name, v in case.variants.items()
            if isinstance(v, functools.partial) and hasattr(v.func, "lower")]
    with ThreadPoolExecutor(workers) as pool:
        executables = list(pool.map(_compile, [v for _, _, v in jobs]))
    for (case, name, v), exe in zip(jobs, executables, strict=True):
        if exe is not None:
            case.variants[name] = functools.partial(exe, *v.args, **v.keywords)
    return cases
