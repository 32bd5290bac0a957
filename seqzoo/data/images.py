"""Images as pixel sequences: (n, h, w) uint8 images become (n, h * w) row-major sequences.

As in LRA, pixels are int32 tokens 0..255 (vocab 256) by default, or float32 in [0, 1] with
``normalize``. Image splits are cached as tokens and normalised after loading.
"""

import numpy as np

from seqzoo.data.dataset import Dataset, Split, make_split

PIXEL_LEVELS = 256


def image_split(images: np.ndarray, labels: np.ndarray,
                permutation: np.ndarray | None = None) -> Split:
    """A classification split of flattened images, optionally with a pixel permutation."""
    images = np.asarray(images)
    pixels = images.reshape(len(images), int(np.prod(images.shape[1:])))  # also for n = 0
    if permutation is not None:
        pixels = pixels[:, permutation]
    return make_split(pixels, labels)


def image_dataset(name: str, splits: dict[str, Split], num_classes: int,
                  normalize: bool) -> Dataset:
    """Wraps pixel-token splits; ``normalize`` turns inputs into float32 in [0, 1]."""
    if normalize:
        splits = {key: {**split, "inputs": split["inputs"].astype(np.float32) / 255.0}
                  for key, split in splits.items()}
    seq_len = next(iter(splits.values()))["inputs"].shape[1]
    return Dataset(name, splits, vocab_size=None if normalize else PIXEL_LEVELS,
                   num_classes=num_classes, seq_len=seq_len)


def size_text(shape: tuple[int, ...]) -> str:
    """An image size for messages: ``"28x28"`` (height x width) for shape (28, 28)."""
    return "x".join(map(str, shape))


def import_pillow():
    """PIL.Image and PIL.ImageDraw, or an ImportError that says how to get them."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as err:
        raise ImportError("this seqzoo data task needs Pillow: pip install pillow") from err
    return Image, ImageDraw
