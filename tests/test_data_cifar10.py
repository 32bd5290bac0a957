"""CIFAR-10 from its binary release on tiny files written in that layout; the pickled Python
release is refused without being unpickled; no pickle anywhere in the package."""

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import seqzoo
from seqzoo.data.cifar10 import BINARY_DIR, RECORD_BYTES, TEST_FILE, TRAIN_FILES, read_batch
from seqzoo.data.lra_files import load_lra_cifar10


def write_cifar10_binary(root: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Writes ``{file name: (images (n, 3, 32, 32) uint8, labels (n,))}`` under
    ``root/cifar-10-batches-bin`` as the binary release does (label byte, then R, G, B planes)."""
    folder = root / BINARY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in batches.items():
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                                  np.asarray(images, np.uint8).reshape(len(labels), -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    return folder


def uniform_batches(count: int) -> dict[str, tuple]:
    """Every batch file, file i holding ``count`` images of pixel value 20 i and labels
    (i + j) % 10."""
    return {name: (np.full((count, 3, 32, 32), 20 * i, np.uint8),
                   np.array([(i + j) % 10 for j in range(count)]))
            for i, name in enumerate((*TRAIN_FILES, TEST_FILE))}


def test_binary_release_layout(tmp_path):
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        images = rng.integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
        images[0] = 0
        images[0, 0] = 255  # the first image of each file is pure red
        batches[name] = (images, [i % 10, (i + 1) % 10])
    write_cifar10_binary(tmp_path, batches)

    images, labels = read_batch(tmp_path / BINARY_DIR / "data_batch_2.bin")
    np.testing.assert_array_equal(images, batches["data_batch_2.bin"][0])
    assert labels.tolist() == [1, 2] and labels.dtype == np.int32

    data = load_lra_cifar10(tmp_path, val_fraction=0.2)
    assert {k: v["inputs"].shape for k, v in data.splits.items()} == {
        "train": (8, 1024), "val": (2, 1024), "test": (2, 1024)}
    assert (data["train"]["inputs"][0] == int(0.2989 * 255.5)).all()  # TF rgb_to_grayscale
    rgb = batches["data_batch_1.bin"][0][1].astype(np.float32) / 255
    gray = np.floor((0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]) * 255.5)
    np.testing.assert_allclose(data["train"]["inputs"][1], gray.reshape(-1), atol=1)
    np.testing.assert_array_equal(data["val"]["targets"], [4, 5])
    np.testing.assert_array_equal(data["test"]["targets"], [5, 6])


class _Payload:
    """Unpickling this creates the file ``path`` (stands in for any code a pickle may run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("layout", ["python_release", "pickle_named_bin", "data_dir_is_py"])
def test_pickles_are_refused_and_never_unpickled(tmp_path, layout):
    marker = tmp_path / "pwned"
    crafted = pickle.dumps(_Payload(marker))
    pickle.loads(crafted)  # the payload works: unpickling it creates the marker
    assert marker.exists()
    marker.unlink()

    data_dir = tmp_path / "data"
    if layout == "python_release":
        folder, names = data_dir / "cifar-10-batches-py", ["data_batch_1", "test_batch"]
    elif layout == "pickle_named_bin":
        folder, names = data_dir / BINARY_DIR, [*TRAIN_FILES, TEST_FILE]
    else:
        folder = data_dir = tmp_path / "cifar-10-batches-py"
        names = ["data_batch_1", "test_batch"]
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(crafted)
    with pytest.raises(FileNotFoundError, match="Python release, which is pickled") as err:
        load_lra_cifar10(data_dir)
    assert "cifar-10-binary.tar.gz" in str(err.value)
    assert f"{BINARY_DIR}/data_batch_1.bin" in str(err.value)
    assert not marker.exists()


def _record(label: int) -> bytes:
    """One binary record: ``label``, then 3072 pixel bytes."""
    return bytes([label]) + (np.arange(RECORD_BYTES - 1) % 256).astype(np.uint8).tobytes()


@pytest.mark.parametrize("name, content, message", [
    pytest.param("data_batch_3.bin", b"", "is empty", id="empty"),
    pytest.param("data_batch_3.bin", _record(3) + _record(4)[:-5],
                 rf"1 whole records .* {RECORD_BYTES - 5} bytes of record 1", id="truncated"),
    pytest.param("data_batch_3.bin", _record(3) + _record(10),
                 r"record 1 \(counting from 0\) has label 10", id="label_10"),
    pytest.param("data_batch_3.bin.gz", gzip.compress(_record(3))[:-9],
                 "not a readable gzip file", id="truncated_gzip"),
])
def test_bad_binary_batches_name_the_file_and_record(tmp_path, name, content, message):
    write_cifar10_binary(tmp_path, uniform_batches(1))
    (tmp_path / BINARY_DIR / "data_batch_3.bin").unlink()
    (tmp_path / BINARY_DIR / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_lra_cifar10(tmp_path)
    assert str(tmp_path / BINARY_DIR / name) in str(err.value)


def test_no_pickle_anywhere_in_the_package():
    """Nothing in seqzoo imports pickle-like loaders or lets numpy unpickle."""
    forbidden = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|"
                           r"shelve|joblib)\b|allow_pickle\s*=\s*True|pickle\.loads?\(", re.M)
    root = Path(seqzoo.__file__).parent
    offenders = [str(path.relative_to(root)) for path in sorted(root.rglob("*.py"))
                 if forbidden.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
