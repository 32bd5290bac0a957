"""fla 0.6.0's Hopper guard (fla #640), lifted for timing.

fla refuses its gated ``chunk_bwd_dqkwg`` (in the backward pass of Gated DeltaNet's
``chunk_gated_delta_rule`` and of ``chunk_simple_gla``, a decay per head) on Hopper GPUs with
Triton >= 3.4.0 and < 3.7.1, whose compiler gets that kernel wrong there. A variant wrapped by
``unguarded`` (named with ``LABEL``) runs it past the check, for its time; its error column
against ours says how wrong it is. (``chunk_gla``'s backward has kernels of its own and runs.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

LABEL = "#640 guard off"


@contextlib.contextmanager
def without_fla_hopper_guard():
    """fla's Triton version check for its gated backward, set as if Triton were >= 3.7.1."""
    from fla.ops.common import chunk_o
    saved = chunk_o.TRITON_ABOVE_3_7_1
    chunk_o.TRITON_ABOVE_3_7_1 = True
    try:
        yield
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = saved


def unguarded(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` (a torch variant: forward and, within it, backward) with the guard lifted."""
    def run():
        with without_fla_hopper_guard():  # the check is in the backward pass
            return call()
    return run
