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

import dataclasses

import jax
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


def on_tpu() -> bool:
    """True where the default backend is a TPU (kernels compile there)."""
    return jax.default_backend() == "tpu"


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
