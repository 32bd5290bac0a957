"""The run header names the devices a run uses: their count and platform, and their model where
that says more (a GPU's or TPU's name)."""

from types import SimpleNamespace

import jax
import numpy as np

from seqzoo.config import MeshConfig
from seqzoo.runner.sharding import describe_devices, make_mesh


def _mesh(*devices):
    return SimpleNamespace(devices=np.array([SimpleNamespace(platform=p, device_kind=k)
                                             for p, k in devices]))


def test_header_names_count_platform_and_the_model_of_accelerators():
    here = describe_devices(make_mesh(MeshConfig()))
    assert here.startswith(f"{jax.device_count()} {jax.default_backend()} device(s)")
    assert describe_devices(_mesh(("cpu", "cpu"))) == "1 cpu device(s)"
    h100 = ("gpu", "NVIDIA H100 80GB HBM3")
    assert describe_devices(_mesh(h100, h100)) == "2 gpu device(s) (NVIDIA H100 80GB HBM3)"
    assert describe_devices(_mesh(("tpu", "TPU v5 lite"))) == "1 tpu device(s) (TPU v5 lite)"
