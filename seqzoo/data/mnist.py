"""Sequential and permuted (Fashion-)MNIST from the released IDX files.

Each 28 x 28 image becomes a sequence of 784 pixels in row-major order (sMNIST), or in a
fixed order given by ``np.random.default_rng(permutation_seed).permutation(784)``
(psMNIST). Inputs are int32 pixel tokens 0..255 (vocab 256) or, with ``normalize``, float32
in [0, 1]; targets (n,) int32 in 0..9. Splits: ``train`` (the first 1 - val_fraction of
the released training set), ``val`` (the rest, as LRA's ``train[90%:]``) and ``test``.
Fashion-MNIST ships in Debian's ``dataset-fashion-mnist`` under
``/usr/share/datasets/fashion-mnist``.
"""

import os
from pathlib import Path

import numpy as np

from seqzoo.data.dataset import Dataset
from seqzoo.data.files import find, read_bytes
from seqzoo.data.images import image_dataset, image_split, size_text
from seqzoo.data.validate import check_labels, check_pixels

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NUM_CLASSES = 10
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (optionally gzipped), e.g. (60000, 28, 28) uint8; a file
    that is not IDX, or whose data does not fill the shape its header gives, is a ValueError
    naming it."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    dtype, end = np.dtype(_IDX_DTYPES[data[2]]), 4 + 4 * data[3]
    if len(data) < end:
        raise ValueError(f"{path} is truncated inside its header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data[4:end], ">u4"))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - end != expected:
        raise ValueError(f"{path} holds {len(data) - end} bytes of data, but its header says "
                         f"{shape} of {dtype} ({expected} bytes): the file is truncated or "
                         f"damaged")
    return np.frombuffer(data, dtype, offset=end).reshape(shape)


def read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, h, w) uint8 and labels (n,) int32 in 0..9 from a pair of IDX files; wrong
    shapes, counts, pixel values or labels are ValueErrors naming the file and record."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"{images_path} holds an array of shape {images.shape}; images must "
                         f"be (count >= 1, height, width)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path} holds labels of shape {labels.shape}, but "
                         f"{images_path} holds {len(images)} images: expected ({len(images)},)")
    return (check_pixels(images, str(images_path)),
            check_labels(labels, NUM_CLASSES, str(labels_path)))


def load_mnist(
    data_dir: str | os.PathLike,
    permuted: bool = False,
    permutation_seed: int = 0,
    val_fraction: float = 0.1,
    normalize: bool = False,
    name: str = "mnist",
) -> Dataset:
    """(Permuted) sequential MNIST-format data from the four IDX files in ``data_dir``
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally ``.gz``). Training and test images must share
    one size; labels must be in 0..9 and pixels in 0..255."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    directory = Path(data_dir).expanduser()
    expected = [f"{f}[.gz]" for pair in IDX_FILES.values() for f in pair]
    paths = {split: [find(directory, f, f"{name} IDX file {f}", expected) for f in pair]
             for split, pair in IDX_FILES.items()}
    (train_x, train_y), (test_x, test_y) = (read_idx_split(*paths[s]) for s in ("train", "test"))
    if test_x.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"{paths['test'][0]} holds {size_text(test_x.shape[1:])} images but "
                         f"{paths['train'][0]} holds {size_text(train_x.shape[1:])} images; "
                         f"training and test images must have one size")
    pixels = train_x[0].size
    permutation = np.random.default_rng(permutation_seed).permutation(pixels) if permuted else None
    num_train = len(train_x) - round(val_fraction * len(train_x))
    splits = {"train": image_split(train_x[:num_train], train_y[:num_train], permutation)}
    if num_train < len(train_x):
        splits["val"] = image_split(train_x[num_train:], train_y[num_train:], permutation)
    splits["test"] = image_split(test_x, test_y, permutation)
    return image_dataset(f"p{name}" if permuted else name, splits, NUM_CLASSES, normalize)


def load_fashion_mnist(data_dir: str | os.PathLike = FASHION_MNIST_DIR, **kwargs) -> Dataset:
    """(Permuted) sequential Fashion-MNIST; same files and arguments as :func:`load_mnist`."""
    return load_mnist(data_dir, name="fashion_mnist", **kwargs)
