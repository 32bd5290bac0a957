"""Test-wide settings.

* float32 matmuls at full precision, so that the tight f32 tolerances of the path-equality tests
  also hold on GPUs (where the default f32 matmul uses TF32);
* most XLA optimisations off: the suite compiles thousands of small programs and runs each once,
  so compile time dominates (about 30% of the suite's CPU time saved on 2 cores);
* compiled programs freed when a test process nears Linux's memory-map limit.
"""

import itertools
import sys

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_disable_most_optimizations", True)


def memory_maps() -> tuple[int, int] | None:
    """(mappings this process holds, the kernel's ``vm.max_map_count``); None off Linux."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f), limit
    except OSError:
        return None


_tests_run = itertools.count()


@pytest.fixture(autouse=True)
def free_compiled_programs_near_the_map_limit():
    """Drop every compiled program when the process nears Linux's ``vm.max_map_count``.

    One test process compiles thousands of small programs (every path of every mixer, at several
    shapes and dtypes), each holding a few memory mappings; past the limit (65530 by default)
    XLA's compiler segfaults and the worker dies. Freeing them costs recompiles, so only near
    the limit; looked at every 8th test (reading the maps takes a few ms).
    """
    if next(_tests_run) % 8 == 0:
        counts = memory_maps()
        if counts is not None and counts[0] > 0.6 * counts[1]:
            jax.clear_caches()


@pytest.fixture
def each_task_built_once(monkeypatch):
    """The runner's ``build`` generates the data of one task config once in the test: tests that
    build many experiments sharing a config (ListOps at length 2000: ~1 s each) reuse it."""
    from seqzoo import tasks
    from seqzoo.runner.build import build

    built = {}

    def build_task_once(task):
        if repr(task) not in built:
            built[repr(task)] = tasks.build_task(task)
        return built[repr(task)]

    monkeypatch.setattr(sys.modules[build.__module__], "build_task", build_task_once)
