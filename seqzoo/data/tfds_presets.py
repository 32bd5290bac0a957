"""Presets of the ``tfds`` task: which TFDS dataset it reads, which two of its features, which of
its splits, and how one example becomes a sequence. Plain numpy: nothing here needs
tensorflow-datasets (``seqzoo.data.tfds_source`` reads the data).

LRA's encodings (google-research/long-range-arena ``lra_benchmarks/*/input_pipeline.py``):

* ``lra_image`` (LRA Image): CIFAR-10, ``image`` (32, 32, 3) uint8 -> grayscale as
  ``tf.image.rgb_to_grayscale`` (:func:`seqzoo.data.images.rgb_to_grayscale`), read row by row:
  1024 pixel tokens of 256 values; splits ``train[:90%]`` / ``train[90%:]`` / ``test``.
* ``lra_text`` (LRA Text): IMDB reviews, ``text`` -> its UTF-8 bytes, id = byte + 1 (0 pads;
  tfds' ``ByteTextEncoder``, vocab 257), cut to ``task.seq_len`` (LRA's 4K task: 4000) and
  padded, with the mask False on padding; splits ``train`` / ``test`` (LRA validates on test).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from seqzoo.data.images import rgb_to_grayscale
from seqzoo.data.lra_files import BYTE_VOCAB, byte_tokens

SPLITS = ("train", "val", "test")  # the splits a task may have; train and test are required
KINDS = ("image", "text")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A TFDS dataset as a classification task.

    ``dataset``: its TFDS name (``name``, ``name/config`` or ``name:version``); ``inputs`` and
    ``label``: the feature names of the sequence's source and of the class label (a
    ``ClassLabel`` of ``num_classes``); ``kind``: ``image`` (pixels, see :func:`image_pixels`)
    or ``text`` (bytes, see :func:`text_ids`); ``splits``: each seqzoo split's TFDS split
    (slices allowed, e.g. ``train[:90%]``); ``pixels``: an image's pixel count (the sequence
    length, known before any data is read) for image presets, 0 for text.
    """

    dataset: str
    inputs: str
    label: str
    num_classes: int
    kind: str
    splits: dict[str, str]
    pixels: int = 0

    @property
    def vocab_size(self) -> int:
        """Token ids of this preset's inputs: 256 pixel levels, or 257 byte ids."""
        return 256 if self.kind == "image" else BYTE_VOCAB


PRESETS: dict[str, Preset] = {
    "lra_image": Preset(
        "cifar10", "image", "label", 10, "image",
        {"train": "train[:90%]", "val": "train[90%:]", "test": "test"}, pixels=32 * 32,
    ),
    "lra_text": Preset(
        "imdb_reviews", "text", "label", 2, "text", {"train": "train", "test": "test"},
    ),
}


def image_pixels(image: np.ndarray) -> np.ndarray:
    """(h, w) uint8 grayscale pixels of a TFDS image (h, w, c) uint8: RGB (c = 3) turned gray as
    TF's ``rgb_to_grayscale``, gray (c = 1) kept; the task reads them row-major, h * w tokens."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image of shape (height, width, 1 or 3), got "
                         f"{image.dtype} {image.shape}")
    return image[..., 0] if image.shape[-1] == 1 else rgb_to_grayscale(image)


def text_ids(text: bytes | str, max_length: int) -> np.ndarray:
    """Byte ids (byte + 1) of ``text``'s UTF-8 bytes, the first ``max_length`` of them
    (LRA truncates before padding)."""
    return byte_tokens(text)[:max_length]


def encoder(preset: Preset, max_length: int) -> Callable[[dict], tuple[np.ndarray, int]]:
    """The function from a decoded TFDS example (a dict of features) to ``(pixels (h, w) uint8
    or byte ids (at most max_length,), label)`` for ``preset``."""
    if preset.kind == "image":
        return lambda example: (image_pixels(example[preset.inputs]), int(example[preset.label]))
    return lambda example: (text_ids(example[preset.inputs], max_length),
                            int(example[preset.label]))


def resolve_splits(preset: Preset, splits: dict[str, str], key: str = "task.splits") -> dict:
    """The preset's splits with ``splits`` (seqzoo split -> TFDS split) over them; a ValueError
    naming ``key`` for a split other than train / val / test, a TFDS split that is not a
    non-empty string, or a missing train or test split (an empty string drops a split)."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"{key} names {unknown}; its keys are seqzoo's splits "
                         f"{', '.join(SPLITS)}, each mapped to a TFDS split like 'train[:90%]'")
    bad = {k: v for k, v in splits.items() if not isinstance(v, str)}
    if bad:
        raise ValueError(f"{key}: each TFDS split is a string like 'train[90%:]', got {bad}")
    resolved = {k: v for k, v in {**preset.splits, **splits}.items() if v}
    for needed in ("train", "test"):
        if needed not in resolved:
            raise ValueError(f"{key} leaves no {needed!r} split; map it to a TFDS split, e.g. "
                             f'{key}=\'{{"{needed}": "{needed}"}}\'')
    return {k: resolved[k] for k in SPLITS if k in resolved}
