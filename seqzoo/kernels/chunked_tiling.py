"""Tilings of the chunked kernel that fit a GPU's shared memory.

Triton stages the tiles a program of ``chunked_pass`` reads per chunk (q, k, decays, v) in
shared memory, ``num_stages`` buffers deep. What forward+backward asks for, over its four
launches, fitted to the compiler's own numbers on an H200 (jax 0.11.2, bf16; the "requested N"
of its "Shared memory size limit exceeded" errors, ``benchmarks/chunked_tiling.py``):

    per-dimension decays (GLA):  num_stages * chunk * (23 w + 7 block_v)  bytes
    scalar or no decay:          num_stages * chunk * (10 w + 3 block_v)  bytes

with ``w = max(dk, dv)`` after padding to powers of two (the passes swap the key and value
widths; the dq and dk passes read the value width whole, at its power of two, even where the
forward and dv passes tile it unpadded: ``padded_value_width``). The first is
exact on its three failing points (chunk 64, stages 2: 434176 bytes at w 128 / block 64, 405504
at block 32, 246016 at w 64) and puts the largest tilings that compiled at 217088; the second
meets the one failure seen (Based's w 256, chunk 64, block 64, stages 2: 352256) and keeps the
measured kernels (w <= 128) below the limit. Float32 operands (``itemsize`` 4) ask for more: the
fit times ``247296 / 217088``, the one float32 failure seen (per-key decays, w 128, chunk 32,
block 64, stages 2 on an H100, 2026-12-06: 247296 bytes where bf16 needs 217088); the float32
kernels without per-key decays compiled at their tuned tiling (w 128), which this keeps below
the limit. ``DEVICE_LIMITS`` holds the opt-in shared memory
per block of each compute capability (CUDA's programming guide); ``resolve_tiling`` takes the
first of ``CANDIDATES`` (fastest measured first) that fits.
"""

from __future__ import annotations

import jax

from seqzoo.kernels.chunked_pass import TUNED, TUNED_PER_DIMENSION, Tiling

# The split's inter-chunk pass (per-key decays, no intra-chunk terms), from the H100 sweep at
# (8, 2048, 4) (benchmarks/RESULTS.md): the fastest forward+backward at key width 128 and value
# width 256, and within 9% of the fastest at 128 (two stages there; 28% slower at 256)
INTER_PER_DIMENSION = Tiling(block_v=32, num_stages=1)
# Its forward launch alone (``pallas_gpu.forward_launch``), bf16: the fastest forward of the same
# sweep at widths 128 and 128:256 and of the op at fla's widths in two calls (benchmarks/RESULTS.md,
# "Separate forward and backward launches"); two stages slow its backward passes
INTER_FORWARD = Tiling(num_stages=2)

# Compute capability -> the most dynamic shared memory one block may opt into (bytes).
DEVICE_LIMITS = {
    "8.0": 166_912,  # A100
    "8.6": 101_376,
    "8.9": 101_376,
    "9.0": 232_448,  # H100, H200
    "10.0": 232_448,
}
# bytes per (stage, chunk row) per unit of width w and of block_v: the fit above, and for
# ``"inter_per_dimension"`` (the inter-chunk-only pass with per-key decays, what
# ``impl="pallas_split"`` launches) the H100's verdicts of 2026-12-07
# (``benchmarks/chunked_tiling.py --decay key --inter --widths 128,128:256``): every tiling of
# chunk 32 or 64, value block 32 or 64 and 1 or 2 stages compiled at w 128 and w 256 (the
# largest: chunk 64, block 64, 2 stages at w 256), and chunk 64, block 64, 3 stages at w 128
# asked for 238592 bytes (``benchmarks/gla_phases.py``). (4, 12) predicts all of them, that
# failure at 245760; the earlier guess (14, 3) refused chunk 64 at w 256, whose pass runs
# 2.4x faster than chunk 32's (benchmarks/RESULTS.md)
_PER_ROW = {"per_dimension": (23, 7), "whole": (10, 3), "inter_per_dimension": (4, 12)}
_FLOAT32 = (247_296, 217_088)  # float32 operands: the fit times this ratio (see above)

CANDIDATES = {  # in order of preference; the first is what the kernel was tuned at
    "whole": (
        TUNED,
        Tiling(num_stages=1),
        Tiling(chunk=32, num_stages=1),
        Tiling(chunk=32, block_v=32, num_stages=1),
    ),
    "per_dimension": (
        TUNED_PER_DIMENSION,
        Tiling(chunk=32, num_stages=1, slice=16),
        Tiling(chunk=32, block_v=32, num_stages=1, slice=16),
        Tiling(chunk=16, block_v=32, num_stages=1, slice=16),
    ),
    "inter_per_dimension": (  # forward+backward on an H100 at (8, 2048, 4), 2026-12-07
        INTER_PER_DIMENSION,
        Tiling(num_stages=1),
        Tiling(chunk=32, block_v=32, num_stages=1),
    ),
}


def padded_width(d: int) -> int:
    """The smallest power of two >= max(d, 16): the key or value width the kernel runs at
    (Triton's matmuls take powers of two of at least 16)."""
    return max(16, 1 << (d - 1).bit_length())


def padded_value_width(dv: int, block_v: int) -> int:
    """The value width the kernel runs at with value blocks of ``block_v`` columns (a power of
    two >= 16): ``padded_width(dv)`` up to ``block_v`` (one block, clipped to the width), else
    the smallest multiple of ``block_v`` >= dv (192 stays 192 at block 64; 80 -> 96 at block 32,
    128 at block 64). Equal to ``padded_width(dv)`` for powers of two. Only the passes that tile
    the value width run at it: those contracting over it (the dq and dk passes) read it whole,
    at ``padded_width(dv)``, since Triton's arrays hold a power of two of elements."""
    width = padded_width(dv)
    return width if width <= block_v else -(-dv // block_v) * block_v


def kind_of(decay: str | None, intra: bool = True) -> str:
    """``"per_dimension"`` for per-key decays (sub-chunks), ``"inter_per_dimension"`` for them
    without the intra-chunk terms (``chunked_pass``'s ``intra=False``), ``"whole"`` otherwise."""
    if decay != "key":
        return "whole"
    return "per_dimension" if intra else "inter_per_dimension"


def shared_memory_bytes(tiling: Tiling, decay: str | None, dk: int, dv: int,
                        intra: bool = True, itemsize: int = 2) -> int:
    """The fit above for forward+backward at these (padded) key and value widths, for operands
    of ``itemsize`` bytes (2: bf16 / fp16; 4: float32)."""
    width, block = max(dk, dv), min(tiling.block_v, max(dk, dv))
    per_width, per_block = _PER_ROW[kind_of(decay, intra)]
    need = tiling.num_stages * tiling.chunk * (per_width * width + per_block * block)
    return need * _FLOAT32[0] // _FLOAT32[1] if itemsize >= 4 else need


def device_limit() -> int | None:
    """The first GPU's opt-in shared memory per block; None off a GPU (interpret mode has no
    limit) or for a compute capability not in ``DEVICE_LIMITS`` (then nothing is assumed)."""
    capability = getattr(jax.devices()[0], "compute_capability", None)
    return None if capability is None else DEVICE_LIMITS.get(capability)


def resolve_inter_forward(dk: int, dv: int, limit: int | None,
                          itemsize: int = 2) -> Tiling | None:
    """``INTER_FORWARD`` for the inter-chunk pass with per-key decays at these padded widths
    where it fits ``limit`` (always off a GPU: None), for 16-bit operands (measured there);
    None otherwise (the forward then runs at the backward passes' tiling)."""
    need = shared_memory_bytes(INTER_FORWARD, "key", dk, dv, intra=False, itemsize=itemsize)
    fits = limit is None or need <= limit
    return INTER_FORWARD if itemsize == 2 and fits else None


def resolve_tiling(decay: str | None, dk: int, dv: int, limit: int | None,
                   intra: bool = True, itemsize: int = 2) -> tuple[Tiling | None, str]:
    """``(tiling, why)``: the first candidate for this decay (and ``chunked_pass``'s ``intra``)
    that fits ``limit`` bytes with operands of ``itemsize`` bytes (the first one when ``limit``
    is None), or ``(None, why none does)``."""
    options = CANDIDATES[kind_of(decay, intra)]
    if limit is None:
        return options[0], "no shared-memory limit known (not a GPU)"
    for tiling in options:
        need = shared_memory_bytes(tiling, decay, dk, dv, intra, itemsize)
        if need <= limit:
            return tiling, f"needs about {need} of {limit} bytes of shared memory"
    least = min(shared_memory_bytes(t, decay, dk, dv, intra, itemsize) for t in options)
    return None, (f"no tiling of the chunked kernel fits {limit} bytes of shared memory at "
                  f"key / value widths {dk} / {dv} (the smallest needs about {least})")
