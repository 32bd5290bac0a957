"""What every Mosaic-TPU kernel here shares: VMEM budgets by TPU generation, compiler
parameters, the interpret switch, tile heights and block choice.

VMEM per TensorCore (bytes), the scoped default Mosaic gives a kernel unless
``vmem_limit_bytes`` raises it, and the physical capacity:

    | generation | scoped default | capacity | sources                                    |
    |------------|----------------|----------|--------------------------------------------|
    | v4         | 16 MiB         | 16 MiB   | jax tpu_info (32 MiB in some write-ups)    |
    | v5e        | 16 MiB         | 128 MiB  | jax tpu_info                               |
    | v5p        | 16 MiB         | 64 MiB   | jax tpu_info (95 MiB in some write-ups)    |
    | v6e        | 32 MiB         | 128 MiB  | jax tpu_info; 32 MiB default: see below    |

Capacities: ``jax/_src/pallas/mosaic/tpu_info.py`` (jax 0.10.2; rendered as the table of
docs.jax.dev/en/latest/pallas/tpu/hardware.html). Scoped defaults: 16 MiB on v4/v5 and 32 MiB on
v6e as kernel authors report them (e.g. marin-community/marin's fused cross-entropy kernel,
"the default scoped VMEM limit (commonly 16MiB)", and a v6e training script, "the 32 MiB default
scoped VMEM limit"); no official table was found. Where sources disagree the smaller number is
used. Kernels here pick blocks whose working set (every double-buffered block plus scratch) fits
``BUDGET`` = 3/4 of the smallest scoped default, so they compile on every generation without
raising the limit; the last quarter is left to Mosaic's own scratch and spilled vector registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.experimental.pallas import tpu as pltpu

MiB = 1 << 20
# generation -> (scoped default, capacity), bytes per TensorCore; the table above.
VMEM = {
    "v4": (16 * MiB, 16 * MiB),
    "v5e": (16 * MiB, 128 * MiB),
    "v5p": (16 * MiB, 64 * MiB),
    "v6e": (32 * MiB, 128 * MiB),
}
BUDGET = 3 * min(scoped for scoped, _ in VMEM.values()) // 4
LANES = 128  # the last axis of a vector register
SUBLANES = 8  # its second-to-last axis, for 32-bit values

# Renamed TPUCompilerParams -> CompilerParams in jax 0.6; both spellings are served.
_CompilerParams = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams


def compiler_params(semantics: tuple[str, ...], working_set: int) -> object:
    """Mosaic parameters: the grid's dimension semantics ("parallel" / "arbitrary"), and a raised
    VMEM limit only when ``working_set`` (bytes) exceeds ``BUDGET`` (explicit block sizes)."""
    limit = None if working_set <= BUDGET else min(2 * working_set, 64 * MiB)
    return _CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)


def interpret_mode(interpret: bool | None) -> bool:
    """None -> interpret unless the default backend is a TPU."""
    return jax.default_backend() != "tpu" if interpret is None else interpret


def interpret_params(interpret: bool) -> object:
    """``pallas_call``'s ``interpret`` argument: TPU semantics simulated on the host, or False
    (compile with Mosaic)."""
    return pltpu.InterpretParams() if interpret else False


def tile_rows(*dtypes) -> int:
    """Rows of one (rows, 128) tile of every dtype given: 8 for 32-bit, 16 when any is 16-bit
    (bf16 packs two rows per sublane)."""
    return max(SUBLANES * 4 // np.dtype(d).itemsize for d in dtypes)


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def round_up(n: int, multiple: int) -> int:
    return cdiv(n, multiple) * multiple


def lane_block(width: int, cap: int, compatible: Callable[[int], bool] = lambda w: True) -> int:
    """Lanes per block along an axis of ``width``: the largest multiple of 128 up to ``cap`` (and
    up to ``width`` rounded up to 128) that is ``compatible``, or the whole axis when it is
    narrower than 128 lanes or nothing else is compatible."""
    if width <= LANES:
        return width
    top = min(cap, round_up(width, LANES))
    for w in range(top - top % LANES, 0, -LANES):
        if compatible(w):
            return w
    return width


def largest_fitting(candidates: Iterable[int], working_set: Callable[[int], int],
                    budget: int = BUDGET) -> int:
    """The largest candidate whose working set fits the budget; ValueError if none does."""
    options = sorted(set(candidates), reverse=True)
    for c in options:
        if working_set(c) <= budget:
            return c
    raise ValueError(f"no block of {options} fits the VMEM budget of {budget} bytes "
                     f"(smallest needs {working_set(options[-1])})")
