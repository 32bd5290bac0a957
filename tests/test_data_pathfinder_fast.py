"""The fast Pathfinder painter against slow references: the same images as before it
(pinned digests), and each shortcut (canvas, overlap check, free tails, numpy-order sums,
cropped markers) against the computation it replaces."""

import hashlib

import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from seqzoo.data.pathfinder import (  # noqa: E402
    LRA_CONFIGS,
    _marker,
    _numpy_sum,
    _painter,
    _paste_max,
    _render_chunk,
)

# sha256 (first 16 hex digits) of images.tobytes() + labels.astype(int64).tobytes() of
# _render_chunk(chunk, seed, LRA_CONFIGS[resolution], paddles) for chunks 0..3, computed with
# the generator before the fast painter (main at d51c130, 13.7 ms per 32 px image).
PINNED = {
    (32, 14, 0): ["6197e8e0206c133a", "aab917a62df56305", "d05a06f837acc223", "ac625e322217e134"],
    (32, 14, 1): ["e459683ddd4e9baa", "7699c15d8b2931f0", "df8895487d078f3b", "17b89dced89af4f5"],
    (64, 6, 0): ["0e71db7a5f071890", "7f5d416555f5994b", "c75cd71f63deba27", "2f8a01acdd111708"],
    (64, 6, 1): ["9e4a98687df7f306", "dbac16e31ac56cb3", "6bf5154f879a4b3a", "5098be5ea4740dd5"],
    (128, 6, 0): ["22df3898f3b6248e", "83800750e58ecb01", "8fcc1630ce194c4b", "bc2364ca4bd62eff"],
    (128, 6, 1): ["c1048eec7bfabd1c", "2eeee63175628742", "422c743357aa2285", "3d0f995dcdb4b997"],
}


def _digest(chunk, seed, resolution, paddles):
    images, labels = _render_chunk(chunk, seed, LRA_CONFIGS[resolution], paddles)
    data = images.tobytes() + labels.astype(np.int64).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.mark.parametrize("case", [
    (32, 14, 0), (32, 14, 1), (64, 6, 0), (64, 6, 1),
    pytest.param((128, 6, 0), marks=pytest.mark.slow),
    pytest.param((128, 6, 1), marks=pytest.mark.slow),
], ids=lambda case: "px{}-paddles{}-seed{}".format(*case))
def test_images_and_labels_equal_the_previous_generator(case):
    resolution, paddles, seed = case
    assert [_digest(c, seed, resolution, paddles) for c in range(4)] == PINNED[case]


def _dilated(image, offsets, fill):
    """max over ``offsets`` of the image shifted by them, zero off the image (a reference)."""
    h, w = image.shape
    pad = max(abs(v) for offset in offsets for v in offset)
    padded = np.pad(image, pad)
    return np.max([padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
                   for dy, dx in offsets] + [np.full_like(image, fill)], axis=0)


def _disc_offsets(radius):
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]


def _placed(painter, anchor, array):
    """``array`` ((2r+1)^2, centred on ``anchor``) on an empty image, clipped."""
    out = np.zeros(painter.shape)
    r = painter.radius
    h, w = painter.shape
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            y, x = anchor[0] - r + i, anchor[1] - r + j
            if 0 <= y < h and 0 <= x < w:
                out[y, x] = array[i, j]
    return out


@pytest.mark.parametrize("resolution,margin", [(32, 1), (128, 3)])
def test_canvas_keeps_the_mask_and_its_dilation(resolution, margin):
    """Covering paddles anywhere (the image edge and a little beyond included) keeps plane 0
    equal to the max of the clipped paddle masks and the frame, and plane 1 equal to that
    mask dilated by the margin disc, as recomputed from scratch."""
    painter = _painter(LRA_CONFIGS[resolution], margin)
    rng = np.random.default_rng(resolution)
    canvas = painter.blank()
    want = canvas.mask.copy()
    reach = painter.length + 1
    assert want[0].all() and want[:, -1].all() and not want[5:-5, 5:-5].any()
    for _ in range(40):
        theta = int(rng.integers(-180, 180)) * np.pi / 180
        anchor = tuple(int(v) for v in rng.integers(-reach, resolution + reach, 2))
        paddle = painter.paddle(theta)
        canvas.cover(anchor, paddle)
        want = np.maximum(want, _placed(painter, anchor, paddle.mask))
        np.testing.assert_array_equal(canvas.mask, want)
        f = canvas.frame
        np.testing.assert_array_equal(canvas.planes[f:-f, f:-f, 1],
                                      _dilated(want, _disc_offsets(margin), 0.0))
    copy = canvas.copy()
    copy.cover((resolution // 2,) * 2, painter.paddle(0.0))
    np.testing.assert_array_equal(canvas.mask, want)  # copies are independent


@pytest.mark.parametrize("resolution", [32, 64])
def test_overlap_check_equals_the_whole_patch_sum(resolution):
    """_fits (only the paddle's pixels above 0.75, read one by one) equals snakes2's check,
    max(mask + paddle mask) < 1.8 over the whole clipped patch."""
    cfg = LRA_CONFIGS[resolution]
    painter = _painter(cfg, cfg.paddle_margins[0])
    rng = np.random.default_rng(1)
    mask = np.where(rng.random(painter.shape) < 0.3, rng.choice([0.6, 0.9, 1.0, 0.95],
                                                                painter.shape), 0.0)
    canvas = painter.canvas(mask)
    outcomes = set()
    for _ in range(400):
        head = tuple(int(v) for v in rng.integers(0, resolution, 2))
        paddle = painter.ring_paddles[int(rng.integers(len(painter.ring_paddles)))]
        placed = _placed(painter, head, paddle.mask)
        r = painter.radius
        region = (slice(max(head[0] - r, 0), head[0] + r + 1),
                  slice(max(head[1] - r, 0), head[1] + r + 1))
        want = (mask[region] + placed[region]).max() < 1.8
        assert painter._fits(canvas.values, head, paddle) == want, head
        outcomes.add(want)
    assert outcomes == {True, False}


def test_free_tails_equal_the_float_dilation():
    """Seed tails: pixels where the mask (framed by ``border`` 1s) dilated by the paddle's
    kernel, zero off the image, stays <= 0.3, as flat indices in row-major order."""
    cfg = LRA_CONFIGS[32]
    painter = _painter(cfg, 1)
    rng = np.random.default_rng(2)
    for border in (1, 4):
        mask = np.where(rng.random(painter.shape) < 0.1, rng.random(painter.shape), 0.0)
        for degrees in (-180, -37, 0, 90, 151):
            theta = degrees * np.pi / 180
            lined = mask.copy()
            lined[:border], lined[-border:], lined[:, :border], lined[:, -border:] = 1, 1, 1, 1
            free = _dilated(lined, painter._struct(theta), -np.inf) <= 0.3
            np.testing.assert_array_equal(painter._free_tails(mask, border, theta),
                                          np.flatnonzero(free))


def test_numpy_sum_is_numpy_bit_for_bit():
    rng = np.random.default_rng(3)
    for n in list(range(1, 40)) + [127, 128, 129, 200, 300]:
        for _ in range(20):
            values = rng.random(n) * 10.0 ** rng.integers(-30, 5, n)
            assert _numpy_sum(values.tolist()) == values.sum()
    assert _numpy_sum([]) == np.sum([])


def _marker_reference(cfg, centre):
    """The marker on the whole image (the generator's original drawing)."""
    aa, size, (cy, cx) = cfg.antialias_scale, cfg.resolution, centre
    y, x = np.ogrid[-cy * aa:(size - cy) * aa, -cx * aa:(size - cx) * aa]
    big = np.where(x ** 2 + y ** 2 <= (cfg.marker_radius * aa) ** 2, 255, 0).astype(np.uint8)
    return np.asarray(Image.fromarray(big).resize((size, size), Image.LANCZOS), np.float64) / 255


@pytest.mark.parametrize("resolution,step", [(32, 1), (64, 5), (128, 9)])
def test_cropped_markers_equal_whole_image_markers(resolution, step):
    """Markers resampled on a crop around the centre equal the whole image's, for centres
    all over the image and a few pixels off it (the second snake's tail can be there)."""
    cfg = LRA_CONFIGS[resolution]
    for y in range(-6, resolution + 6, step):
        for x in range(-6, resolution + 6, step):
            got = np.zeros((resolution, resolution))
            _paste_max(got, *_marker(cfg, (y, x)))
            np.testing.assert_array_equal(got, _marker_reference(cfg, (y, x)), err_msg=f"{y, x}")
