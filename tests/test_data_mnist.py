"""Sequential / permuted MNIST from IDX files: tiny fixtures, plus the real Fashion-MNIST."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from seqzoo.data.mnist import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist, read_idx

IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B}


def _write_idx(path: Path, array: np.ndarray, compress: bool, dtype=np.uint8) -> None:
    """Writes ``array`` as an IDX file of ``dtype`` (uint8, int8 or >i2), gzipped with
    ``compress`` (under ``path`` + ``.gz``)."""
    dtype = np.dtype(dtype)
    header = bytes([0, 0, IDX_TYPES[dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + np.asarray(array).astype(dtype).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(10) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
              "t10k-labels-idx1-ubyte": np.array([3, 1, 4, 1])}
    for i, (name, array) in enumerate(arrays.items()):
        _write_idx(tmp_path / name, array, compress=i % 2 == 0)  # mix plain and .gz
    return tmp_path, arrays


def test_sequential_and_permuted(idx_dir):
    directory, arrays = idx_dir
    plain = load_mnist(directory, val_fraction=0.2)
    assert plain.name == "mnist" and plain.vocab_size == 256 and plain.seq_len == 784
    assert {k: v["inputs"].shape for k, v in plain.splits.items()} == {
        "train": (8, 784), "val": (2, 784), "test": (4, 784)}
    images = arrays["train-images-idx3-ubyte"]
    np.testing.assert_array_equal(plain["train"]["inputs"], images[:8].reshape(8, 784))
    np.testing.assert_array_equal(plain["val"]["targets"], [8, 9])
    np.testing.assert_array_equal(plain["test"]["targets"], [3, 1, 4, 1])
    assert plain["train"]["inputs"].dtype == np.int32 and plain["train"]["mask"].all()

    permuted = load_mnist(directory, permuted=True, permutation_seed=7, val_fraction=0.2)
    again = load_mnist(directory, permuted=True, permutation_seed=7, val_fraction=0.2)
    perm = np.random.default_rng(7).permutation(784)
    assert permuted.name == "pmnist" and sorted(perm) == list(range(784))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(permuted[split]["inputs"], plain[split]["inputs"][:, perm])
        np.testing.assert_array_equal(permuted[split]["inputs"], again[split]["inputs"])

    normalized = load_mnist(directory, val_fraction=0.0, normalize=True)
    assert set(normalized.splits) == {"train", "test"} and normalized.vocab_size is None
    assert normalized["train"]["inputs"].dtype == np.float32
    np.testing.assert_allclose(normalized["train"]["inputs"] * 255, images.reshape(10, 784))


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def _truncated_gzip(path: Path) -> None:
    data = gzip.compress(path.read_bytes())
    path.with_name(path.name + ".gz").write_bytes(data[: len(data) // 2])
    path.unlink()


BAD_FILES = {  # case: (file to replace, how, expected message)
    "images_1d": ("train-images-idx3-ubyte", lambda p: _write_idx(p, np.arange(10), False),
                  r"train-images-idx3-ubyte holds an array of shape \(10,\); images must be"),
    "test_14x14": ("t10k-images-idx3-ubyte",
                   lambda p: _write_idx(p, np.zeros((4, 14, 14)), False),
                   "t10k-images-idx3-ubyte holds 14x14 images but .*train-images-idx3-ubyte "
                   "holds 28x28"),
    "label_10": ("t10k-labels-idx1-ubyte", lambda p: _write_idx(p, np.array([3, 1, 10, 1]), False),
                 r"t10k-labels-idx1-ubyte: record 2 \(counting from 0\) has label 10; labels "
                 r"must be integers in 0..9"),
    "label_minus_1": ("train-labels-idx1-ubyte",
                      lambda p: _write_idx(p, np.arange(10) - 1, False, np.int8),
                      r"train-labels-idx1-ubyte: record 0 \(counting from 0\) has label -1"),
    "pixel_300": ("train-images-idx3-ubyte",
                  lambda p: _write_idx(p, np.full((10, 28, 28), 300), False, ">i2"),
                  r"train-images-idx3-ubyte: pixel value 300 at image 0, row 0, column 0"),
    "9_labels": ("train-labels-idx1-ubyte", lambda p: _write_idx(p, np.arange(9), False),
                 r"train-labels-idx1-ubyte holds labels of shape \(9,\), but .* holds 10 "
                 r"images"),
    "truncated_gzip": ("train-images-idx3-ubyte", _truncated_gzip,
                       "train-images-idx3-ubyte.gz is not a readable gzip file"),
    "fake_gzip": ("t10k-labels-idx1-ubyte", lambda p: p.rename(p.with_name(p.name + ".gz")),
                  "t10k-labels-idx1-ubyte.gz is not a readable gzip file"),
    "truncated": ("train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:-100]),
                  r"train-images-idx3-ubyte holds 7740 bytes of data, but its header says "
                  r"\(10, 28, 28\)"),
    "truncated_header": ("train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:9]),
                         "train-images-idx3-ubyte is truncated inside its header"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_idx_files_name_the_file_and_record(tmp_path, case):
    arrays = {"train-images-idx3-ubyte": np.zeros((10, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(10),
              "t10k-images-idx3-ubyte": np.zeros((4, 28, 28)),
              "t10k-labels-idx1-ubyte": np.array([3, 1, 4, 1])}
    for name, array in arrays.items():
        _write_idx(tmp_path / name, array, compress=False)
    name, damage, message = BAD_FILES[case]
    damage(tmp_path / name)
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path)


def test_missing_directory_names_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as err:
        load_mnist(tmp_path / "nowhere")
    assert "t10k-labels-idx1-ubyte" in str(err.value)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    data = load_fashion_mnist(permuted=True)
    assert {k: v["inputs"].shape for k, v in data.splits.items()} == {
        "train": (54000, 784), "val": (6000, 784), "test": (10000, 784)}
    for split in data.splits.values():
        assert split["inputs"].min() == 0 and split["inputs"].max() == 255
        assert np.bincount(split["targets"], minlength=10).min() > 0.08 * len(split["targets"])
