"""Compile the variants of benchmark cases in parallel before they are timed.

XLA (and the Triton compiler inside it) compiles outside Python's GIL, so a thread pool turns a
benchmark run's dozens of compilations, which otherwise dominate its time, into a few rounds.
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor

from kernel_harness import Case, JitCall


def _compilable(variant) -> bool:
    """``functools.partial(jitted_fn, *args)`` (a forward variant) or a ``JitCall`` of a jitted
    function (``kernel_harness.jax_gradients``); not torch's variants, nor one compiled already."""
    fn = variant.func if isinstance(variant, functools.partial) else getattr(variant, "fn", None)
    return isinstance(variant, (functools.partial, JitCall)) and hasattr(fn, "lower")


def _compiled(variant):
    """The variant with its executable in place of its jitted function; None if it does not
    compile (left to the harness, which reports a failing variant and goes on)."""
    try:
        if isinstance(variant, JitCall):
            return dataclasses.replace(variant, fn=variant.fn.lower(*variant.args).compile())
        exe = variant.func.lower(*variant.args, **variant.keywords).compile()
        return functools.partial(exe, *variant.args, **variant.keywords)
    except Exception:
        return None


def precompile(cases: list[Case], workers: int = 8) -> list[Case]:
    """Replace every compilable variant (``_compilable``) by the same call of its compiled
    executable, compiling all of them ``workers`` at a time."""
    jobs = [(case, name, v) for case in cases for name, v in case.variants.items()
            if _compilable(v)]
    with ThreadPoolExecutor(workers) as pool:
        compiled = list(pool.map(_compiled, [v for _, _, v in jobs]))
    for (case, name, _), variant in zip(jobs, compiled, strict=True):
        if variant is not None:
            case.variants[name] = variant
    return cases
