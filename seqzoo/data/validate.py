"""Checks on the data a task trains on, run before any compute: labels in the task's class
range, pixels in 0..255, token inputs in the vocabulary, every example with a valid position.
File readers use the per-array checks; ``seqzoo.tasks.build_task`` runs :func:`check_dataset`
on every task's result.

Errors are ``ValueError``s that name where the data came from (a file, or a task's split) and
the first bad record, counted from 0, with the allowed range.
"""

import math

import numpy as np

from seqzoo.data.dataset import IGNORE_INDEX, Dataset

PIXEL_MAX = 255


def first_bad(ok: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first False entry of boolean ``ok`` (row-major), or None."""
    bad = np.argwhere(~ok)
    return None if len(bad) == 0 else tuple(int(i) for i in bad[0])


def parse_label(text: str, num_classes: int, where: str) -> int:
    """The class id written as ``text`` (``"3"``; ``"3.0"`` is accepted too), which must be an
    integer in 0..num_classes-1; else a ValueError naming ``where`` (e.g. ``file:line``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value.is_integer() and 0 <= value < num_classes):
        raise ValueError(f"{where}: label {text.strip()!r} is not an integer in "
                         f"0..{num_classes - 1}")
    return int(value)


def check_labels(labels: np.ndarray, num_classes: int, source: str,
                 unit: str = "record") -> np.ndarray:
    """``labels`` (n,) as int32 when each is an integer in 0..num_classes-1; else a ValueError
    naming ``source`` and the first bad ``unit`` (counting from 0)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{source}: labels must be one per {unit} (a 1-D array), "
                         f"got shape {labels.shape}")
    ok = (labels >= 0) & (labels < num_classes) & (labels == np.floor(labels))
    index = first_bad(ok)
    if index is not None:
        count = int((~ok).sum())
        raise ValueError(f"{source}: {unit} {index[0]} (counting from 0) has label "
                         f"{labels[index].item()}; labels must be integers in "
                         f"0..{num_classes - 1} ({count} of {len(labels)} {unit}s are not)")
    return labels.astype(np.int32)


def check_pixels(images: np.ndarray, source: str,
                 axes: tuple[str, ...] = ("image", "row", "column")) -> np.ndarray:
    """``images`` as uint8 when every pixel is an integer in 0..255; else a ValueError naming
    ``source`` and the first bad pixel by ``axes`` (one name per axis of ``images``, e.g.
    image 3, row 5, column 7, counting from 0)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    ok = (images >= 0) & (images <= PIXEL_MAX) & (images == np.floor(images))
    index = first_bad(ok)
    if index is not None:
        at = ", ".join(f"{axis} {i}" for axis, i in zip(axes, index, strict=True))
        raise ValueError(f"{source}: pixel value {images[index].item()} at {at} (counting "
                         f"from 0); pixels must be integers in 0..{PIXEL_MAX}")
    return images.astype(np.uint8)


def check_dataset(data: Dataset, task: str) -> Dataset:
    """``data`` unchanged when every split of task ``task`` is usable for training: not empty;
    targets in 0..num_classes-1 (or IGNORE_INDEX for per-position targets); token inputs in
    0..vocab_size-1 and float inputs finite; every row with a valid position. Else a
    ValueError naming the task, split and row."""
    for name, split in data.splits.items():
        source = f"task {task!r}, split {name!r}"
        inputs, targets, mask = split["inputs"], split["targets"], split["mask"]
        if len(targets) == 0:
            raise ValueError(f"{source} has no examples")
        if targets.ndim == 1:
            check_labels(targets, data.num_classes, source, unit="row")
        else:
            ok = (targets == IGNORE_INDEX) | ((targets >= 0) & (targets < data.num_classes))
            _refuse(ok, targets, source, f"target, which must be in 0..{data.num_classes - 1} "
                                         f"or {IGNORE_INDEX} (no label)")
        if data.vocab_size is None:
            _refuse(np.isfinite(inputs), inputs, source, "input, which must be finite")
        elif inputs.min() < 0 or inputs.max() >= data.vocab_size:
            ok = (inputs >= 0) & (inputs < data.vocab_size)
            _refuse(ok, inputs, source, f"input token, which must be in "
                                        f"0..{data.vocab_size - 1} (vocab_size {data.vocab_size})")
        empty = first_bad(mask.any(axis=1))
        if empty is not None:
            raise ValueError(f"{source}: row {empty[0]} has no valid (unpadded) position")
    return data


def _refuse(ok: np.ndarray, values: np.ndarray, source: str, what: str) -> None:
    """A ValueError naming the first row and position where ``ok`` (n, l) is False."""
    index = first_bad(ok)
    if index is not None:
        raise ValueError(f"{source}: row {index[0]}, position {index[1]} holds "
                         f"{values[index].item()} as {what}")
