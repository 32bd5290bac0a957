"""Reading the released Pathfinder files: ``metadata/*.npy`` row lists and the PNG images they
name, with errors that name the file and row.

A metadata file is either text, one row per line (``imgs/0 sample_0.png 0 1 ...``), or a
numpy string array (rows, columns) with the same columns: image folder, file name, index,
label (0 or 1), ... Images are 8-bit grayscale PNGs; 16-bit or 32-bit ones are accepted when
every pixel is in 0..255.
"""

from pathlib import Path

import numpy as np

from seqzoo.data.files import text_lines
from seqzoo.data.images import import_pillow, size_text
from seqzoo.data.validate import check_pixels, parse_label

NUM_CLASSES = 2
_NUMPY_MAGIC = b"\x93NUMPY"
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # pixel values may exceed 255


def read_pathfinder_metadata(path: Path) -> list[tuple[str, str, int, str]]:
    """(image folder, file name, label, where) for each row of a metadata file, ``where``
    naming the file and row for later errors; a short row or a label other than 0 or 1 is a
    ValueError naming them."""
    with open(path, "rb") as handle:
        is_numpy = handle.read(len(_NUMPY_MAGIC)) == _NUMPY_MAGIC
    if is_numpy:
        rows = [(f"{path}: row {i} (counting from 0)", row)
                for i, row in enumerate(_numpy_rows(path))]
    else:
        rows = [(f"{path}:{number}", line.split()) for number, line in text_lines(path)]
    entries = []
    for where, row in rows:
        if not row:
            continue
        if len(row) < 4:
            raise ValueError(f"{where}: metadata row {row} has fewer than 4 columns "
                             f"(folder, file, index, label, ...)")
        entries.append((row[0], row[1], parse_label(row[3], NUM_CLASSES, where), where))
    return entries


def _numpy_rows(path: Path) -> list[list[str]]:
    """The rows of a numpy metadata file, as strings; never unpickles (object arrays are
    refused)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable numpy array of metadata rows ({err}); only "
                         f"plain string or number arrays are read, never pickled objects") from None
    if array.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {array.shape}; metadata must be "
                         f"(rows, columns)")
    return array.astype(str).tolist()


def read_pathfinder_image(path: Path, resolution: int, where: str) -> np.ndarray | None:
    """The (resolution, resolution) uint8 grayscale image at ``path``, listed by metadata row
    ``where``; None when the file is empty (LRA skips those). A missing or unreadable file, a
    wrong size or a pixel above 255 is an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{where} lists the image {path}, which does not exist")
    if path.stat().st_size == 0:
        return None
    Image, _ = import_pillow()
    try:
        with Image.open(path) as image:
            wide = image.mode in _WIDE_MODES
            pixels = np.asarray(image if wide else image.convert("L"))
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path} (listed by {where}) is not a readable image: {err}") from None
    if pixels.shape != (resolution, resolution):
        raise ValueError(f"{path} is {size_text(pixels.shape)} pixels (height x width); "
                         f"pathfinder{resolution} images are {resolution}x{resolution}")
    return check_pixels(pixels, str(path), axes=("row", "column"))
