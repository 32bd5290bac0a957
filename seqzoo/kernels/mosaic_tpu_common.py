"""What every Mosaic-TPU Pallas kernel of seqzoo shares: VMEM budgets, compiler parameters, and
the switch between compiling a kernel (on a TPU) and interpreting it (anywhere else).

VMEM per TensorCore and the default scoped VMEM limit (what one kernel may use unless it raises
``vmem_limit_bytes``), by generation:

    generation  scoped default  VMEM per core  MXU      HBM GB/s  bf16 TFLOP/s (chip)
    v4          16 MiB          16 MiB         128x128  1200      275
    v5e         16 MiB          128 MiB        128x128  819       197
    v5p         16 MiB          64 MiB         128x128  2765      459
    v6e         32 MiB          128 MiB        256x256  1640      918

Sources: VMEM per core and MXU shape from jax's own table (``jax/_src/pallas/mosaic/tpu_info.py``
of jax 0.10.2, rendered at https://docs.jax.dev/en/latest/pallas/tpu/hardware.html; v4 and v5p
have two TensorCores per chip, so 32 and 128 MiB per chip; jax's pipelining guide rounds v5p to
"96MB of VMEM"); the scoped defaults are XLA's ``--xla_tpu_scoped_vmem_limit_kib`` defaults, as
quoted by the compiler's own "Scoped allocation ... and limit 16.00M / 32.00M (v6e) exceeded
scoped vmem limit" errors; ``pltpu.CompilerParams(vmem_limit_bytes=...)`` raises a kernel's
limit (jax's CompilerParams docs). HBM bandwidth and peak bf16 from Google Cloud's TPU pages
(v5e: 819 GB/s, 197 TFLOP/s; v5p: 2765 GB/s, 459 TFLOP/s).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental.pallas import tpu as pltpu

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation's numbers (module docstring)."""

    name: str
    scoped_vmem: int  # bytes a kernel may use without raising vmem_limit_bytes
    vmem: int  # bytes of VMEM per TensorCore
    mxu: int  # the MXU's side (a chunk of this many rows fills it)
    hbm_bytes_per_s: float
    bf16_flops_per_s: float


GENERATIONS = {
    "v4": Generation("v4", 16 * MIB, 16 * MIB, 128, 1.2e12, 275e12),
    "v5e": Generation("v5e", 16 * MIB, 128 * MIB, 128, 819e9, 197e12),
    "v5p": Generation("v5p", 16 * MIB, 64 * MIB, 128, 2765e9, 459e12),
    "v6e": Generation("v6e", 32 * MIB, 128 * MIB, 256, 1640e9, 918e12),
}
# jax's device_kind strings -> generation (as jax's tpu_info reads them)
_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
          "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


_BUILDING_FOR_TPU = contextvars.ContextVar("building_for_tpu", default=False)


@contextlib.contextmanager
def building_for_tpu() -> Iterator[None]:
    """Inside, kernels are built to compile for a TPU whatever the default backend: the TPU branch
    of ``lax.platform_dependent`` (``seqzoo.ops.dispatch.on_platform``) is traced on any machine
    and lowered only for a TPU."""
    token = _BUILDING_FOR_TPU.set(True)
    try:
        yield
    finally:
        _BUILDING_FOR_TPU.reset(token)


def on_tpu() -> bool:
    """True where the default backend is a TPU or inside ``building_for_tpu`` (kernels compile
    there)."""
    return _BUILDING_FOR_TPU.get() or jax.default_backend() == "tpu"


def generation() -> Generation | None:
    """The first device's generation; None off a TPU or for a generation not in the table."""
    if not on_tpu():
        return None
    return GENERATIONS.get(_KINDS.get(jax.devices()[0].device_kind, ""))


def interpret_mode(interpret: bool | None):
    """``pallas_call``'s ``interpret`` argument: ``None`` compiles on a TPU and interprets with
    TPU semantics (VMEM, DMAs, grid order: ``pltpu.InterpretParams``) anywhere else."""
    if interpret is None:
        interpret = not on_tpu()
    if not interpret:
        return False
    params = getattr(pltpu, "InterpretParams", None)
    return params() if params is not None else True


def compiler_params(semantics: tuple[str, ...], vmem_limit_bytes: int | None = None):
    """Mosaic compiler parameters (``pltpu.CompilerParams``; ``TPUCompilerParams`` in jax
    before 0.7): the grid's dimension semantics ("parallel" / "arbitrary") and the VMEM limit."""
    cls = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
    return cls(dimension_semantics=semantics, vmem_limit_bytes=vmem_limit_bytes)


# --- tiles and blocks of the sequential-scan kernels (mosaic_tpu_recurrence, _selective_scan) --

LANES = 128  # the last axis of a vector register
SUBLANES = 8  # its second-to-last axis, for 32-bit values


def vmem_budget(gen: Generation | None = None) -> int:
    """What one grid step's working set may fill: 3/4 of the scoped VMEM default of ``gen`` (the
    current TPU's, else v5e's: 12 MiB on v4/v5e/v5p, 24 MiB on v6e); the rest is left to Mosaic's
    own scratch and spilled vector registers."""
    gen = gen or generation() or GENERATIONS["v5e"]
    return 3 * gen.scoped_vmem // 4


def vmem_limit(working_set: int) -> int | None:
    """``vmem_limit_bytes`` for a working set: None (the default) within ``vmem_budget``, else
    the working set and a quarter (explicit block sizes past the budget)."""
    return None if working_set <= vmem_budget() else working_set + working_set // 4


def tile_rows(*dtypes) -> int:
    """Rows of one (rows, 128) tile of every dtype given: 8 for 32-bit, 16 when one is 16-bit
    (bf16 packs two rows per sublane)."""
    return max(SUBLANES * 4 // np.dtype(d).itemsize for d in dtypes)


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def round_up(n: int, multiple: int) -> int:
    return cdiv(n, multiple) * multiple


def lane_block(width: int, cap: int, compatible: Callable[[int], bool] = lambda w: True) -> int:
    """Lanes per block along an axis of ``width``: the largest multiple of 128 up to ``cap`` (and
    up to ``width`` rounded up to 128) that is ``compatible``; the whole axis when it is at most
    128 wide or nothing is compatible."""
    if width <= LANES:
        return width
    top = min(cap, round_up(width, LANES))
    for w in range(top - top % LANES, 0, -LANES):
        if compatible(w):
            return w
    return width


def largest_fitting(candidates: Iterable[int], working_set: Callable[[int], int],
                    budget: int | None = None) -> int:
    """The largest candidate whose working set fits ``budget`` (default ``vmem_budget()``);
    ValueError if none does."""
    budget = vmem_budget() if budget is None else budget
    options = sorted(set(candidates), reverse=True)
    for c in options:
        if working_set(c) <= budget:
            return c
    raise ValueError(f"no block of {options} fits the VMEM budget of {budget} bytes "
                     f"(smallest needs {working_set(options[-1])})")
