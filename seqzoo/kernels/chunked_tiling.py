"""Tilings of the chunked kernel that fit a GPU's shared memory.

A program of ``chunked_pass`` keeps per chunk of ``C`` steps its q, k tiles ``(C, dk)``, its v
and output tiles ``(C, block_v)``, decays and the ``C x C`` scores on chip, and Triton stages
the operands of its matmuls, pipelined over ``num_stages`` buffers, in shared memory. The
estimate (bytes, per program):

    tiles  = C (2 dk + block_v) s + C x 4 [+ C dk 4 for per-dimension decays]
    stage  = C C s + dk block_v s                   (scores and state as matmul operands)
    total  = num_stages tiles + stage

(s: the matmul operand size, 2 for bf16). ``DEVICE_LIMITS`` holds the opt-in shared memory per
block of each compute capability (CUDA's programming guide).
"""

from __future__ import annotations

from seqzoo.kernels.chunked_pass import Tiling

# Compute capability -> the most dynamic shared memory one block may opt into (bytes).
DEVICE_LIMITS = {
    "8.0": 166_912,  # A100
    "8.6": 101_376,
    "8.9": 101_376,
    "9.0": 232_448,  # H100, H200
    "10.0": 232_448,
}


def shared_memory_bytes(tiling: Tiling, decay: str | None, dk: int, dv: int,
                        itemsize: int) -> int:
    """The estimate above for one program of a pass with these widths (after padding)."""
    c, s = tiling.chunk, itemsize
    bv = min(tiling.block_v, dv)
    tiles = c * (2 * dk + bv) * s + c * 4
    if decay in ("key", "value"):
        tiles += c * max(dk, bv) * 4
    stage = c * c * s + dk * bv * s
    return tiling.num_stages * tiles + stage
