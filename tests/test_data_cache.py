"""The on-disk split cache: a damaged cache file is rebuilt with a warning naming it, and a
cache file holding pickled objects is never unpickled."""

import numpy as np
import pytest

from seqzoo.data.cache import cache_file_name, cached_splits
from seqzoo.data.dataset import make_split
from tests.test_data_cifar10 import _Payload


def _builder(calls: list):
    def build():
        calls.append(1)
        return {"train": make_split(np.arange(6).reshape(2, 3), np.array([0, 1]))}

    return build


def test_round_trip_builds_once(tmp_path):
    calls = []
    first = cached_splits("toy", {"n": 2}, _builder(calls), tmp_path)
    again = cached_splits("toy", {"n": 2}, _builder(calls), tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(again["train"]["inputs"], first["train"]["inputs"])


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty", "not_npz"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, damage):
    calls = []
    cached_splits("toy", {"n": 2}, _builder(calls), tmp_path)
    path = tmp_path / cache_file_name("toy", {"n": 2})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_byte":  # inside the stored inputs: the zip CRC no longer matches
        data[data.index(b"\x93NUMPY") + 130] ^= 0xFF
    elif damage == "empty":
        data = b""
    else:
        data = b"plain text"
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"{path} does not read back"):
        splits = cached_splits("toy", {"n": 2}, _builder(calls), tmp_path)
    assert len(calls) == 2
    np.testing.assert_array_equal(splits["train"]["inputs"], np.arange(6).reshape(2, 3))
    assert len(cached_splits("toy", {"n": 2}, _builder(calls), tmp_path)) == 1  # rewritten
    assert len(calls) == 2


def test_pickled_objects_in_a_cache_file_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / cache_file_name("toy", {"n": 2})
    np.savez(path, **{"train.inputs": np.array([_Payload(marker)], dtype=object),
                      "train.targets": np.array([0])})
    with pytest.warns(UserWarning, match="does not read back"):
        cached_splits("toy", {"n": 2}, _builder([]), tmp_path)
    assert not marker.exists()
