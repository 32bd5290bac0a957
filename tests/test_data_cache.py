"""The on-disk split cache: its place (``SEQZOO_CACHE``), compact masks, files readable as the
umask allows, a damaged cache file rebuilt with a warning naming it, a cache file holding pickled
objects never unpickled, and the generators' per-split files (a new val size keeps the train
file)."""

import os

import numpy as np
import pytest

from seqzoo.data import listops, pathfinder
from seqzoo.data.cache import (
    DEFAULT_CACHE_DIR,
    cache_file_name,
    cached_splits,
    compact_split,
    restore_split,
)
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


def test_default_cache_dir_is_seqzoo_cache_else_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "elsewhere"))
    cached_splits("toy", {"n": 2}, _builder([]), DEFAULT_CACHE_DIR)
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == [
        cache_file_name("toy", {"n": 2})]
    monkeypatch.setenv("SEQZOO_CACHE", "")  # empty: unset
    cached_splits("toy", {"n": 2}, _builder([]), DEFAULT_CACHE_DIR)
    assert (tmp_path / "home" / ".cache" / "seqzoo" / cache_file_name("toy", {"n": 2})).exists()


def test_cache_files_get_the_permissions_of_any_new_file(tmp_path):
    old = os.umask(0o027)
    try:
        cached_splits("toy", {"n": 2}, _builder([]), tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / cache_file_name("toy", {"n": 2})).stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("lengths", [[3, 1, 0], [3, 3, 3]])
def test_padding_masks_are_stored_as_lengths_and_others_whole(lengths):
    mask = np.arange(3) < np.array(lengths)[:, None]
    split = make_split(np.arange(9).reshape(3, 3), np.zeros(3), mask)
    stored = compact_split(split)
    assert "mask" not in stored and ("lengths" in stored) == (min(lengths) < 3)
    np.testing.assert_array_equal(restore_split(stored)["mask"], mask)
    holes = mask.copy()
    holes[0, 1] = False  # not a right-padding mask: kept whole
    stored = compact_split({**split, "mask": holes})
    assert "lengths" not in stored
    np.testing.assert_array_equal(restore_split(stored)["mask"], holes)


def _tiny_listops(cache_dir=DEFAULT_CACHE_DIR, **sizes):
    return listops.generate_listops(**sizes, min_length=4, max_length=16, seed=1, workers=1,
                                     cache_dir=cache_dir, progress=False)


def _tiny_pathfinder(cache_dir=DEFAULT_CACHE_DIR, **sizes):
    return pathfinder.generate_pathfinder(32, "curv_baseline", **sizes, seed=3, workers=1,
                                          cache_dir=cache_dir, progress=False)


@pytest.mark.parametrize("generate, module, chunk_fn, sizes", [
    (_tiny_listops, listops, "_generate_chunk", (300, 40, 30)),
    (_tiny_pathfinder, pathfinder, "_render_chunk", (20, 6, 4)),
], ids=["listops", "pathfinder"])
def test_a_new_val_size_keeps_the_train_file(tmp_path, monkeypatch, generate, module, chunk_fn,
                                             sizes):
    if module is pathfinder:
        pytest.importorskip("PIL")
        monkeypatch.setattr(pathfinder, "_CHUNK", 8)  # 8 images a chunk: 4 chunks of train
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path))  # the default cache_dir
    drawn = []  # chunks generated (workers=1 runs them in this process)
    chunk = getattr(module, chunk_fn)
    monkeypatch.setattr(module, chunk_fn, lambda i, **kw: drawn.append(i) or chunk(i, **kw))
    num_train, num_val, num_test = sizes
    generate(num_train=num_train, num_val=num_val, num_test=num_test)
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert len(files) == 3 and all("split=" in name for name in files)
    first = len(drawn)
    changed = generate(num_train=num_train, num_val=num_val + 3, num_test=num_test)
    train = next(name for name in files if "split=train" in name)
    assert (tmp_path / train).stat().st_mtime_ns == files[train]  # not written again
    assert len(list(tmp_path.iterdir())) == 5  # a new val and a new test file
    assert drawn[first:] and 0 not in drawn[first:]  # only val and test were generated
    fresh = generate(num_train=num_train, num_val=num_val + 3, num_test=num_test,
                     cache_dir=None)
    for split in ("train", "val", "test"):
        for field in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(changed[split][field], fresh[split][field])
    again = len(drawn)
    generate(num_train=num_train, num_val=num_val + 3, num_test=num_test)
    assert len(drawn) == again  # all read from the cache


def test_listops_splits_are_consecutive_parts_of_one_stream():
    joined = _tiny_listops(num_train=340, num_val=30, num_test=0, cache_dir=None)
    parts = _tiny_listops(num_train=300, num_val=40, num_test=30, cache_dir=None)
    np.testing.assert_array_equal(
        joined["train"]["inputs"], np.concatenate([parts["train"]["inputs"],
                                                   parts["val"]["inputs"]]))
    np.testing.assert_array_equal(joined["val"]["inputs"], parts["test"]["inputs"])
    assert len(joined["test"]["inputs"]) == 0
