"""Images as pixel sequences: (n, h, w) uint8 images become (n, h * w) row-major sequences.

As in LRA, pixels are int32 tokens 0..255 (vocab 256) by default, or float32 in [0, 1] with
``normalize``. Image splits are cached as tokens and normalised after loading.
"""

import numpy as np

from seqzoo.data.dataset import Dataset, Split, make_split

PIXEL_LEVELS = 256
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # TF's rgb_to_grayscale (ITU-R 601, rounded)


def rgb_to_grayscale(rgb: np.ndarray, axis: int = -1) -> np.ndarray:
    """Grayscale uint8 pixels of uint8 RGB images, computed as TF's ``tf.image.rgb_to_grayscale``
    on uint8 input (LRA's Image task), in float32 step by step:

        x = rgb * (1 / 255)                               (convert_image_dtype to float)
        y = 0.2989 x_R + 0.5870 x_G + 0.1140 x_B          (tensordot with the weights)
        gray = trunc(y * 255.5)                           (convert_image_dtype back to uint8)

    ``rgb``: uint8 with 3 channels along ``axis`` (e.g. (n, 3, h, w) planes, axis 1, or (h, w, 3)
    pixels, axis -1); the result drops that axis."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[axis] != 3:
        raise ValueError(f"rgb_to_grayscale takes uint8 images with 3 channels on axis {axis}, "
                         f"got {rgb.dtype} of shape {rgb.shape}")
    x = np.moveaxis(rgb, axis, 0).astype(np.float32) * np.float32(1 / 255)
    r, g, b = (np.float32(w) * c for w, c in zip(GRAY_WEIGHTS, x, strict=True))
    return ((r + g + b) * np.float32(PIXEL_LEVELS - 0.5)).astype(np.uint8)


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
