"""Where seqzoo's Pallas kernels run, and how they are launched.

Every kernel is written once for Pallas' Triton lowering (the GPU target reachable from both
jax 0.10 and 0.11) and runs in Pallas *interpret* mode on CPU, which is how the normal test suite
checks it against the pure-JAX op it must equal. ``impl="auto"`` on an op picks a kernel only
where it is compiled (a GPU; ``seqzoo.ops.dispatch`` holds the rules); elsewhere "auto" keeps
the XLA path.
"""

from __future__ import annotations

import warnings

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

GPU_BACKENDS = ("gpu", "cuda", "rocm")

# jax 0.11 warns at every lowering that the Triton backend is deprecated in favour of Mosaic GPU;
# kernels/README.md says why seqzoo still uses it. The warning fires when an enclosing jit lowers,
# outside any call here, so it is filtered for the process.
warnings.filterwarnings("ignore", message=".*Pallas Triton backend is deprecated.*")


def kernels_compiled() -> bool:
    """True where Pallas kernels are compiled (a GPU); False where they would be interpreted."""
    return jax.default_backend() in GPU_BACKENDS


def ptx_inlinable() -> bool:
    """True where kernels are compiled for an NVIDIA GPU (inline PTX assembles), not ROCm's."""
    return kernels_compiled() and "rocm" not in jax.devices()[0].client.platform_version.lower()


def pallas_call(kernel, *, num_warps: int = 4, num_stages: int = 1, **kwargs):
    """``pl.pallas_call`` compiled through Triton on a GPU, interpreted anywhere else.

    num_warps / num_stages: Triton's warps per program and software-pipelining depth (ignored in
    interpret mode). Other keyword arguments go to ``pl.pallas_call`` unchanged.
    """
    compiled = kernels_compiled()
    params = plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages) if compiled else None
    return pl.pallas_call(kernel, interpret=not compiled, compiler_params=params, **kwargs)
