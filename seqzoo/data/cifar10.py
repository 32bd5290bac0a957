"""CIFAR-10 from its binary release, ``cifar-10-binary.tar.gz``; the Python release is refused.

Extracted, the binary release is a folder ``cifar-10-batches-bin`` holding
``data_batch_1.bin`` .. ``data_batch_5.bin`` (10000 training images each) and
``test_batch.bin``. Each record is 3073 bytes: the label (0..9), then the 1024 red, 1024 green
and 1024 blue pixels of a 32 x 32 image, each plane row-major. The Python release
(``cifar-10-batches-py``) stores pickles, and unpickling a file runs whatever code it holds,
so seqzoo never reads it: it names the binary release to download instead.
"""

from pathlib import Path

import numpy as np

from seqzoo.data.files import find, read_bytes
from seqzoo.data.validate import check_labels

BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
NUM_CLASSES = 10
SIDE = 32
RECORD_BYTES = 1 + 3 * SIDE * SIDE
DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_PICKLE_PROTOCOL_OPCODE = 0x80  # first byte of a pickle of protocol 2 or later


def expected_files() -> list[str]:
    """The binary release's files, relative to the data directory."""
    return [f"{BINARY_DIR}/{name}" for name in (*TRAIN_FILES, TEST_FILE)]


def _python_release(found: Path) -> FileNotFoundError:
    """The error for the pickled Python release (or a pickle named like a binary batch)."""
    listing = "\n  ".join(expected_files())
    return FileNotFoundError(
        f"{found} is CIFAR-10's Python release, which is pickled; seqzoo does not unpickle "
        f"data files (unpickling runs any code a file holds). Download the binary release "
        f"{DOWNLOAD} instead and extract it in the data directory, which then holds:\n"
        f"  {listing}")


def batch_paths(directory: Path) -> tuple[list[Path], Path]:
    """The paths of the five training batches and the test batch under ``directory`` (each
    ``.bin`` or ``.bin.gz``); a FileNotFoundError naming the binary release's files when they
    are missing, saying so when the Python release is there instead."""

    def path(name: str) -> Path:
        try:
            return find(directory / BINARY_DIR, name, "CIFAR-10 binary batches",
                        [*TRAIN_FILES, TEST_FILE])
        except FileNotFoundError:
            for python in (directory / PYTHON_DIR, directory / "data_batch_1"):
                if python.exists():
                    raise _python_release(python) from None
            raise

    return [path(name) for name in TRAIN_FILES], path(TEST_FILE)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 (red, green, blue planes) and labels (n,) int32 in 0..9 of
    one binary batch file; an empty or truncated file, a label above 9 or a pickle is an
    error naming the file (and record, counting from 0)."""
    data = read_bytes(path)
    if data[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):  # no label byte is above 9
        raise _python_release(path)
    if not data:
        raise ValueError(f"{path} is empty; a CIFAR-10 binary batch holds records of "
                         f"{RECORD_BYTES} bytes")
    whole, extra = divmod(len(data), RECORD_BYTES)
    if extra:
        raise ValueError(f"{path} holds {len(data)} bytes: {whole} whole records of "
                         f"{RECORD_BYTES} bytes and {extra} bytes of record {whole} (counting "
                         f"from 0). A CIFAR-10 binary batch is whole records (label byte + "
                         f"3072 pixel bytes); the file is truncated or not a binary batch")
    records = np.frombuffer(data, np.uint8).reshape(whole, RECORD_BYTES)
    labels = check_labels(records[:, 0], NUM_CLASSES, str(path))
    return records[:, 1:].reshape(whole, 3, SIDE, SIDE), labels
