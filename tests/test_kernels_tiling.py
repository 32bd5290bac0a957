"""The chunked kernel's tilings fit the GPU's shared memory (``seqzoo.kernels.chunked_tiling``).

The model is checked against what the compiler said on an H200 (``benchmarks/chunked_tiling.py``
of 2026-12-05, bf16 forward+backward; the split's inter-chunk pass on an H100, 2026-12-07):
tilings that failed must be predicted not to fit, the ones that compiled must be predicted to
fit; then every resolved tiling fits its device.
"""

from __future__ import annotations

import pytest

from seqzoo.kernels.chunked_pass import Tiling
from seqzoo.kernels.chunked_tiling import (
    CANDIDATES,
    DEVICE_LIMITS,
    INTER_FORWARD,
    INTER_PER_DIMENSION,
    resolve_inter_forward,
    resolve_tiling,
    shared_memory_bytes,
)

H200 = DEVICE_LIMITS["9.0"]
# (decay, width, chunk, block_v, num_stages) -> the compiler's requested bytes, or "fits"
MEASURED = {
    ("key", 128, 64, 64, 2): 434_176,
    ("key", 128, 64, 32, 2): 405_504,
    ("key", 64, 64, 64, 2): 246_016,
    ("key", 128, 64, 64, 1): "fits",
    ("key", 128, 64, 32, 1): "fits",
    ("key", 128, 32, 64, 2): "fits",
    ("key", 128, 32, 32, 2): "fits",
    ("key", 64, 64, 32, 2): "fits",
    (None, 256, 64, 64, 2): 352_256,  # Based's padded feature map, 2026-11-23 (H100)
    (None, 128, 64, 64, 2): "fits",
    ("scalar", 128, 64, 64, 2): "fits",
}


# float32 operands on an H100, 2026-12-06 (benchmarks/kernel_cases/chunked_float32.py):
# (decay, width, chunk, block_v, num_stages) -> the compiler's requested bytes, or "fits"
MEASURED_FLOAT32 = {
    ("key", 128, 32, 64, 2): 247_296,
    (None, 128, 64, 64, 2): "fits",
    ("scalar", 128, 64, 64, 2): "fits",
}


# The inter-chunk pass alone (per-key decays, intra=False: impl="pallas_split"), bf16, on an H100,
# 2026-12-07 (benchmarks/chunked_tiling.py --decay key --inter --widths 128,128:256; the failure
# from benchmarks/gla_phases.py's 3-stage row): (max width, chunk, block_v, num_stages) -> the
# compiler's requested bytes, or "fits"
MEASURED_INTER = {
    **{(w, c, b, s): "fits" for w in (128, 256) for c in (64, 32) for b in (64, 32)
       for s in (1, 2)},
    (128, 64, 64, 3): 238_592,
}


@pytest.mark.parametrize("measured", MEASURED_INTER, ids=str)
def test_the_inter_chunk_model_agrees_with_the_compiler(measured):
    width, chunk, block_v, stages = measured
    tiling = Tiling(chunk=chunk, block_v=block_v, num_stages=stages)
    estimate = shared_memory_bytes(tiling, "key", 128, width, intra=False)
    assert_predicted(estimate, MEASURED_INTER[measured])


def test_the_split_takes_its_measured_launch_at_fla_widths():
    """Chunks of 64 at GLA's layer widths (key 96 -> 128, value 192 -> 256), not 32: the
    inter-chunk pass at chunk 32 ran 2.4x slower forward+backward on an H100."""
    for widths in ((128, 128), (128, 256)):
        tiling, _ = resolve_tiling("key", *widths, H200, intra=False)
        assert tiling == INTER_PER_DIMENSION and tiling.chunk == 64


def test_the_split_forward_takes_its_own_launch_where_it_fits():
    """The forward's launch (value blocks of 64, two stages: compiled at both widths on an
    H100) at fla's widths in bf16; not on an A100's shared memory at value width 256, nor for
    float32 operands (untimed there): then the forward runs at the backward's launch."""
    assert (INTER_FORWARD.chunk, INTER_FORWARD.block_v, INTER_FORWARD.num_stages) == (64, 64, 2)
    for widths in ((128, 128), (128, 256)):
        assert resolve_inter_forward(*widths, H200) == INTER_FORWARD
        assert resolve_inter_forward(*widths, H200, itemsize=4) is None
    assert resolve_inter_forward(128, 256, DEVICE_LIMITS["8.0"]) is None
    assert resolve_inter_forward(128, 256, None) == INTER_FORWARD  # interpret mode: no limit


@pytest.mark.parametrize("itemsize, measured",
                         [(2, m) for m in MEASURED] + [(4, m) for m in MEASURED_FLOAT32], ids=str)
def test_the_model_agrees_with_the_compiler(itemsize, measured):
    decay, width, chunk, block_v, stages = measured
    tiling = Tiling(chunk=chunk, block_v=block_v, num_stages=stages, slice=16)
    estimate = shared_memory_bytes(tiling, decay, width, width, itemsize=itemsize)
    assert_predicted(estimate, (MEASURED if itemsize == 2 else MEASURED_FLOAT32)[measured],
                     slack=0.99)


def assert_predicted(estimate, said, slack=1.0):
    """The model's ``estimate`` agrees with the compiler's verdict ``said`` on an H200 / H100:
    within the limit where it compiled ("fits"), else at least ``slack`` times the bytes it
    asked for (which exceed the limit)."""
    if said == "fits":
        assert estimate <= H200
    else:
        assert said > H200 and estimate >= slack * said


def test_float32_per_key_decays_take_a_smaller_tiling_than_bf16():
    assert shared_memory_bytes(CANDIDATES["per_dimension"][0], "key", 128, 128) <= H200
    bf16, _ = resolve_tiling("key", 128, 128, H200)
    f32, why = resolve_tiling("key", 128, 128, H200, itemsize=4)
    assert bf16 == CANDIDATES["per_dimension"][0] and f32 == CANDIDATES["per_dimension"][1]
    assert shared_memory_bytes(f32, "key", 128, 128, itemsize=4) <= H200 and "needs" in why
    assert resolve_tiling(None, 128, 128, H200, itemsize=4)[0] == CANDIDATES["whole"][0]


@pytest.mark.parametrize("capability", sorted(DEVICE_LIMITS))
@pytest.mark.parametrize("decay", [None, "scalar", "key"])
@pytest.mark.parametrize("dk, dv", [(16, 16), (64, 64), (128, 128), (256, 64), (64, 256)])
def test_resolved_tilings_fit_every_known_gpu(capability, decay, dk, dv):
    limit = DEVICE_LIMITS[capability]
    tiling, why = resolve_tiling(decay, dk, dv, limit)
    if tiling is None:  # only the widest per-key kernels on small GPUs
        assert decay == "key" and max(dk, dv) == 256 and "no tiling" in why
        return
    assert shared_memory_bytes(tiling, decay, dk, dv) <= limit
    kind = "per_dimension" if decay == "key" else "whole"
    assert tiling in CANDIDATES[kind]


def test_the_tuned_tilings_are_taken_where_they_fit():
    assert resolve_tiling("key", 128, 128, H200)[0] == CANDIDATES["per_dimension"][0]
    assert resolve_tiling(None, 128, 128, H200)[0] == CANDIDATES["whole"][0]
    assert resolve_tiling(None, 64, 64, None)[0] == CANDIDATES["whole"][0]  # not a GPU
