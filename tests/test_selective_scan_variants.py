"""``benchmarks/selective_scan_variants.py`` (issue 24 item 4's forward formulations of Mamba-1's
selective scan): in Pallas interpret mode every variant (one or several threads per channel,
whole sequence or segments) equals the op's associative scan in float32 at a tiny ragged shape
(batch 2, a length no multiple of the steps per loop iteration nor of the segments, softplus, D,
gate); lowered for a GPU, each builds its Triton kernels (one launch, or two passes when
segmented); ``main`` prints a row per variant."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gpu_lowering import triton_modules

from seqzoo.kernels import launch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import selective_scan_variants as variants  # noqa: E402

SHAPE = (2, 37, 16, 4)  # batch, length, d, n
# Every kernel's code path (one channel per thread, H = 2 and 4 threads per channel, channels
# permuted or not, 2 and 3 segments: with 3 the middle one's state comes from the carry and with a
# zero state would miss by ~1e-1), libdevice's functions, bf16 B and C (float32 here).
CHECKED = [name for name in variants.variants(quick=True)
           if name.startswith(("per-n", "seg", "split"))]
LOWERED = ("split 4 w8 n1 u4 perm", "seg 2 split 4 w8 n1 u4 perm", "per-n w32 n1 u4",
           "seg 4 w32 n1 u4", "split 4 w8 n1 u4 perm libdevice", "split 4 w8 n1 u4 perm bf16bc",
           "split 4 w8 n1 u4")


@functools.cache
def float32_case():
    args = variants.inputs(SHAPE, dtype=jnp.float32, seed=3)
    return args, np.asarray(variants.reference(*args))


@pytest.mark.parametrize("name", CHECKED)
def test_each_variant_is_the_op_in_float32(name):
    args, want = float32_case()
    got = np.asarray(jax.jit(variants.variants(quick=True)[name])(*args))
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5, name


def test_each_variant_lowers_to_triton():
    """The full run's kernels (launches differ only in the grid and warps), at n = 4."""
    args = variants.inputs((1, 64, 128, 4), seed=1)
    every = variants.variants(quick=False)
    with mock.patch.object(launch, "kernels_compiled", lambda: True):
        for name in LOWERED:
            modules = triton_modules(every[name], *args)
            assert len(modules) == (2 if name.startswith("seg") else 1), name
            assert ("tt.reduce" in modules[-1]) == ("split" in name), name
            asm = "ex2.approx.ftz.f32" in modules[-1]
            assert asm == ("libdevice" not in name), name


def test_main_prints_a_row_per_variant(capsys):
    rows = variants.main(["--quick", "--only", "seg 3 split 4"])
    printed = capsys.readouterr().out
    names = [name for name, _, _ in rows]
    assert names[:2] == ["xla (associative, reference)", "pallas (library, impl=pallas)"]
    assert names[2:] == ["seg 3 split 4 w4 n1 u2 perm"]
    assert all(ms > 0 and error <= variants.RTOL for _, ms, error in rows)
    assert all(f"| {name} |" in printed for name in names)
