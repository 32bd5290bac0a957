"""Pathfinder (Linsley et al. 2018; Kim et al. 2020) at LRA's 32 / 64 / 128 settings.

Re-implements the ``drewlinsley/pathfinder`` generator (``snakes2.py`` / ``snakes.py``) with
the per-resolution parameters listed in LRA's ``lra_benchmarks/data/pathfinder.py``. An
image holds two target contours ("snakes") made of short anti-aliased line segments
("paddles") whose first paddles start ``seed_distance`` apart, then short distractor
snakes; each new paddle continues the previous one at an angle favouring continuity and
keeps a margin from what is drawn already. Two disc markers are drawn: at the start of one
target snake, and at the end of the same snake (label 1) or of the other one (label 0).
Difficulties set the target snake length in paddles (as in ``snakes2_wrapper.py``):
``curv_baseline`` 6, ``curv_contour_length_9`` 9, ``curv_contour_length_14`` 14; distractor
snakes have length // 3 paddles and number ``distractor_budget // (length // 3)``.
Images are 8-bit grayscale scaled so the brightest pixel is 255 (as ``scipy.misc.imsave``
wrote them), flattened row-major to sequences of ``resolution ** 2`` pixels. Labels are
exactly balanced within each chunk of 64 images. Splits ``train`` / ``val`` / ``test``
default to LRA's 80 / 10 / 10 % of 200k images.

Target snakes are drawn by rejection (about 40 tries per 32 px image at 14 paddles), so the
painter is written for per-try cost: a canvas keeps the mask and its dilation up to date,
single pixels are read as Python floats, weights are summed in numpy's order and numpy's
PCG64 draws are replayed in Python. It makes the same draws in the same order as a plain
numpy version, so a seed gives the same images (pinned in the tests), at about 4 CPU-ms per
32 px image.
"""

import bisect
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from seqzoo.data.cache import (
    DEFAULT_CACHE_DIR,
    CacheDir,
    cached_arrays,
    compact_split,
    restore_split,
)
from seqzoo.data.dataset import Dataset
from seqzoo.data.images import image_dataset, image_split, import_pillow
from seqzoo.data.parallel import chunk_rng, default_workers, map_chunks
from seqzoo.data.pcg64_draws import replayed
from seqzoo.data.progress import Progress


@dataclass(frozen=True)
class PathfinderConfig:
    """Generator parameters (names follow ``snakes2_wrapper.py``'s ``Args``)."""

    resolution: int
    padding: int
    paddle_length: int
    paddle_thickness: float
    paddle_margins: tuple[int, ...]
    marker_radius: float
    seed_distance: int
    continuity: float
    antialias_scale: int
    snake_contrasts: tuple[float, ...]
    paddle_contrasts: tuple[float, ...]
    distractor_budget: int
    max_distractor_retrial: int = 4
    max_paddle_retrial: int = 2


# LRA's settings (docstrings of Pathfinder32/64/128 in lra_benchmarks/data/pathfinder.py);
# unset values keep the Args defaults (paddle_length 5, paddle_contrast_list [1.]).
LRA_CONFIGS = {
    32: PathfinderConfig(32, padding=1, paddle_length=2, paddle_thickness=0.5,
                         paddle_margins=(1,), marker_radius=1.5, seed_distance=7,
                         continuity=1.0, antialias_scale=2, snake_contrasts=(2.0,),
                         paddle_contrasts=(0.75,), distractor_budget=20),
    64: PathfinderConfig(64, padding=1, paddle_length=5, paddle_thickness=1.0,
                         paddle_margins=(1,), marker_radius=2.5, seed_distance=12,
                         continuity=1.8, antialias_scale=2, snake_contrasts=(0.8,),
                         paddle_contrasts=(1.0,), distractor_budget=22),
    128: PathfinderConfig(128, padding=1, paddle_length=5, paddle_thickness=1.5,
                          paddle_margins=(2, 3), marker_radius=3.0, seed_distance=20,
                          continuity=1.8, antialias_scale=2, snake_contrasts=(0.9,),
                          paddle_contrasts=(1.0,), distractor_budget=35),
}
DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
_CHUNK = 64
_MAX_TARGET_TRIALS = 100_000
_OVERLAP = 1.8  # a paddle is refused where mask + its mask reaches this (snakes2's 1.8)


def _pick(rng: np.random.Generator, options: tuple):
    """``options[rng.integers(len(options))]``; with one option numpy's ``integers(0, 1)``
    returns 0 without drawing, so the call is skipped and the stream is the same."""
    return options[0] if len(options) == 1 else options[rng.integers(len(options))]


def _numpy_sum(values: list[float]) -> float:
    """``np.sum`` of float64 ``values``, in numpy's order, so it is equal bit for bit:
    0 + the pairwise sum (below 8 terms one by one; up to 128 terms 8 running sums
    ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) then the rest one by one; longer
    halves split at a multiple of 8)."""
    n = len(values)
    if n > 128:
        half = n // 2 - (n // 2) % 8
        return _numpy_sum(values[:half]) + _numpy_sum(values[half:])
    if n < 8:
        total = 0.0
        for value in values:
            total += value
        return total
    r0, r1, r2, r3, r4, r5, r6, r7 = values[:8]
    stop = n - n % 8
    for i in range(8, stop, 8):
        r0 += values[i]
        r1 += values[i + 1]
        r2 += values[i + 2]
        r3 += values[i + 3]
        r4 += values[i + 4]
        r5 += values[i + 5]
        r6 += values[i + 6]
        r7 += values[i + 7]
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for value in values[stop:]:
        total += value
    return 0.0 + total


def _translate(coord, theta: float, dist: float) -> tuple[int, int]:
    return (math.ceil(coord[0] + dist * math.sin(theta)),
            math.ceil(coord[1] + dist * math.cos(theta)))


def _flip(theta: float) -> float:
    return theta + math.pi if theta < 0 else theta - math.pi


def _disc(radius: float) -> list[tuple[int, int]]:
    """The (dy, dx) with dy^2 + dx^2 <= radius^2, row by row."""
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if dx ** 2 + dy ** 2 <= radius ** 2]


def _dilate(image: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Grey dilation (max; OR for booleans): out[q] = max over (dy, dx) in ``offsets`` of
    image[q + (dy, dx)], zero off the image (cv2.dilate with the kernel's pixels)."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    h, w = image.shape
    padded = np.zeros((h + 2 * pad, w + 2 * pad), image.dtype)
    padded[pad:pad + h, pad:pad + w] = image
    (dy, dx), *rest = offsets
    out = padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w].copy()
    for dy, dx in rest:
        np.maximum(out, padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w], out=out)
    return out


def _clip(patch: np.ndarray, top: int, left: int, shape) -> tuple[np.ndarray, int, int]:
    """The part of ``patch`` (..., h, w; top-left pixel at ``top``, ``left``) on an image of
    ``shape`` (its last two sizes), with its top-left pixel."""
    rows, cols = max(0, -top), max(0, -left)
    return (patch[..., rows:max(rows, shape[-2] - top), cols:max(cols, shape[-1] - left)],
            top + rows, left + cols)


def _paste_max(image: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """image = max(image, patch) where ``patch`` (top-left pixel at ``top``, ``left`` in the
    last two axes) lies on the image."""
    h, w = patch.shape[-2:]
    if not (0 <= top <= image.shape[-2] - h and 0 <= left <= image.shape[-1] - w):
        patch, top, left = _clip(patch, top, left, image.shape)
        h, w = patch.shape[-2:]
    view = image[..., top:top + h, left:left + w]
    np.maximum(view, patch, out=view)


def _in_bounds(coord, shape) -> bool:
    return 0 <= coord[0] < shape[0] and 0 <= coord[1] < shape[1]


class _Paddle(NamedTuple):
    """A paddle along ``theta``, around its anchor (its tail, the patch centre).

    ``line`` and ``mask`` cover the (2r + 1)^2 patch (r = the painter's radius). ``planes``
    (h, w, 2) holds the part of ``mask`` with its nonzero pixels, framed by a margin of
    zeros, and that part dilated by the margin disc (as a canvas does); its top-left pixel is
    ``offset`` from the anchor. ``solid`` lists (dy, dx, value) of the mask pixels that can
    reach the overlap threshold (mask values never exceed 1, so only those above 1.8 - 1)
    and ``solid_flat`` the same as (offset in the canvas's flat values, value)."""

    theta: float
    line: np.ndarray
    mask: np.ndarray
    offset: tuple[int, int]
    planes: np.ndarray
    solid: tuple[tuple[int, int, float], ...]
    solid_flat: tuple[tuple[int, float], ...]


class _Canvas:
    """What a scene's new paddles must keep clear of. ``planes`` (h + 2 f, w + 2 f, 2) holds
    the image (h, w) framed by ``frame`` = f pixels that no paddle on it reaches past: plane
    0 is the mask (the covered paddles' masks and the padding frame), plane 1 the mask
    dilated by the margin disc with zeros outside the image, kept in step paddle by paddle
    (interleaved, so a paddle updates both in one numpy call). ``values`` reads them flat,
    as Python floats (cheaper than numpy for single pixels)."""

    def __init__(self, planes: np.ndarray, frame: int):
        self.planes, self.frame = planes, frame
        self.values = memoryview(planes.reshape(-1))

    @property
    def mask(self) -> np.ndarray:
        """The mask on the image (h, w), a view."""
        f = self.frame
        return self.planes[f:-f, f:-f, 0]

    def copy(self) -> "_Canvas":
        return _Canvas(self.planes.copy(), self.frame)

    def cover(self, anchor, paddle: _Paddle) -> None:
        """Adds the paddle at ``anchor`` (at most the frame minus the paddle's reach off the
        image): both planes = max(plane, the paddle's). Where the image edge cuts the paddle
        this still dilates the mask on the image only: a pixel whose margin disc leaves the
        image has a padding pixel (mask 1, the maximum) in its disc, so it stays 1."""
        (dy, dx), (h, w, _) = paddle.offset, paddle.planes.shape
        top, left = anchor[0] + self.frame + dy, anchor[1] + self.frame + dx
        view = self.planes[top:top + h, left:left + w]
        np.maximum(view, paddle.planes, out=view)


class _Painter:
    """Draws paddles for one configuration and paddle margin; paddles depend only on the
    orientation, so they are memoised per orientation, and so are the continuity weights and
    the blank image's free seed tails. Candidate heads and overlap checks read single pixels
    of the canvas as Python floats and sum the weights in numpy's order, so every draw is the
    one numpy arrays would give."""

    def __init__(self, cfg: PathfinderConfig, margin: int):
        if cfg.padding < 1:
            raise ValueError(f"padding must be at least 1 (the canvas relies on a frame), got "
                             f"{cfg.padding}")
        self.cfg, self.margin = cfg, margin
        self.shape = (cfg.resolution, cfg.resolution)
        self.length = cfg.paddle_length
        self.radius = self.length + math.ceil(cfg.paddle_thickness) + margin
        self.big_disc = _disc(margin * cfg.antialias_scale)
        self.small_disc = _disc(margin)
        # a paddle's anchor lies at most length + 1 off the image (the second seed's tail)
        self.frame = self.length + 1 + self.radius + margin
        self.stride = 2 * (cfg.resolution + 2 * self.frame)  # canvas values per row
        self.origin = self.frame * (self.stride + 2)  # canvas offset of pixel (0, 0)
        step = self.length + margin
        angles = np.arange(0, 360, 360.0 / (2 * step * np.pi)) * np.pi / 180
        # candidate heads around an integer pivot: the circle's points truncated to pixels,
        # i.e. pivot + floor(offset) on the image, in (y, x) order, with their orientations
        ring = np.unique(np.floor(np.stack([step * np.sin(angles), step * np.cos(angles)],
                                           axis=1)).astype(int), axis=0)
        self.ring_angles = np.arctan2(ring[:, 0], ring[:, 1])
        self.ring_points = [(int(dy), int(dx)) for dy, dx in ring]
        self.ring_orientations = [float(a) for a in self.ring_angles]
        self.ring_flat = [dy * self.stride + 2 * dx for dy, dx in self.ring_points]
        self.ring_indices = list(range(len(self.ring_points)))
        self.ring_extent = int(np.abs(ring).max())
        self.Image, self.ImageDraw = import_pillow()
        self._paddles: dict[float, _Paddle] = {}
        self._structs: dict[float, list[tuple[int, int]]] = {}
        self._weights: dict[float, list[tuple[int, float]]] = {}
        self._seed_free: dict[tuple[float, int], np.ndarray] = {}
        mask = np.zeros(self.shape)
        p = cfg.padding
        mask[:p], mask[-p:], mask[:, :p], mask[:, -p:] = 1, 1, 1, 1
        self._blank = self.canvas(mask)
        # each candidate head's paddle points back to the pivot
        self.ring_paddles = [self.paddle(_flip(a)) for a in self.ring_orientations]

    def canvas(self, mask: np.ndarray) -> _Canvas:
        """A canvas holding ``mask`` (h, w), values in [0, 1] with a frame of 1s."""
        f, (h, w) = self.frame, self.shape
        planes = np.zeros((h + 2 * f, w + 2 * f, 2))
        planes[f:f + h, f:f + w] = np.stack([mask, _dilate(mask, self.small_disc)], axis=-1)
        return _Canvas(planes, f)

    def blank(self) -> _Canvas:
        """A new canvas holding only the padding frame."""
        return self._blank.copy()

    def _resize(self, big, size: int) -> np.ndarray:
        """A square Pillow image Lanczos-resized to ``size``, in [0, 1]."""
        return np.asarray(big.resize((size, size), self.Image.LANCZOS), np.float64) / 255.0

    def paddle(self, theta: float) -> _Paddle:
        """The paddle from the centre of a (2r+1)^2 patch along ``theta``: drawn at
        ``antialias_scale`` x and Lanczos-downsampled; the mask is the line dilated by the
        margin."""
        if theta not in self._paddles:
            aa, r, m = self.cfg.antialias_scale, self.radius, self.margin
            centre = r * aa
            head = _translate((centre, centre), theta, self.length * aa)
            canvas = self.Image.new("L", (2 * centre + 1, 2 * centre + 1), 0)
            self.ImageDraw.Draw(canvas).line([(centre, centre), (head[1], head[0])],
                                             fill=255,
                                             width=round(self.cfg.paddle_thickness * aa))
            line = self._resize(canvas, 2 * r + 1)
            mask = self._resize(self.Image.fromarray(_dilate(np.asarray(canvas), self.big_disc)),
                                2 * r + 1)
            ys, xs = np.nonzero(mask)
            core = np.pad(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], m)
            solid = tuple((int(y) - r, int(x) - r, float(mask[y, x]))
                          for y, x in np.argwhere(mask > _OVERLAP - 1.05))
            self._paddles[theta] = _Paddle(
                theta, line, mask, (int(ys.min()) - r - m, int(xs.min()) - r - m),
                np.stack([core, _dilate(core, self.small_disc)], axis=-1), solid,
                tuple((dy * self.stride + 2 * dx, value) for dy, dx, value in solid))
        return self._paddles[theta]

    def draw(self, image: np.ndarray, anchor, paddle: _Paddle, contrast: float) -> None:
        """image = max(image, contrast * line) for ``paddle`` at ``anchor``."""
        r = self.radius
        _paste_max(image, paddle.line * contrast, anchor[0] - r, anchor[1] - r)

    def _struct(self, theta: float) -> list[tuple[int, int]]:
        """Seed dilation kernel, as (dy, dx) from its centre: the full-valued mask of a paddle
        along ``theta`` whose head sits one pixel off the centre of a
        (2 (length + margin) + 1)^2 patch."""
        if theta not in self._structs:
            reach = self.length + self.margin
            struct = np.zeros((2 * reach + 1,) * 2)
            _paste_max(struct, self.paddle(theta).mask, reach + 1 - self.radius,
                       reach + 1 - self.radius)
            self._structs[theta] = (np.argwhere(struct >= 1.0) - reach).tolist()
        return self._structs[theta]

    def seed(self, rng, mask: np.ndarray, border: int, stop_with_availability: float | None,
             blank: bool = False):
        """A first paddle (tail, orientation, pivot) on free space, or None. ``blank`` says
        that ``mask`` is the empty image's (only its padding), whose free tails are memoised."""
        reach, width = self.length + self.margin, self.shape[1]
        for _ in range(self.cfg.max_paddle_retrial + 1):
            theta = int(rng.integers(-180, 180)) * math.pi / 180
            # np.mean(mask <= 0.3), as numpy computes it: the count over the size
            if (stop_with_availability is not None
                    and np.count_nonzero(mask <= 0.3) / mask.size < stop_with_availability):
                return None
            if blank:
                if (theta, border) not in self._seed_free:
                    self._seed_free[theta, border] = self._free_tails(mask, border, theta)
                free = self._seed_free[theta, border]
            else:
                free = self._free_tails(mask, border, theta)
            if len(free) == 0:
                return None
            tail = divmod(int(free[rng.integers(len(free))]), width)
            head = _translate(tail, theta, self.length)
            pivot = _translate(head, _flip(theta), reach)
            if _in_bounds(head, self.shape) and _in_bounds(pivot, self.shape):
                return tail, theta, pivot
        return None

    def _free_tails(self, mask: np.ndarray, border: int, theta: float) -> np.ndarray:
        """Flat indices (y * w + x, ascending) of the pixels where a paddle along ``theta``
        keeps clear of the mask (no pixel above 0.3 under its full-valued part, zero off the
        image) and of a ``border``-wide frame."""
        pad, (h, w) = self.length + self.margin, mask.shape
        busy = np.zeros((h + 2 * pad, w + 2 * pad), bool)
        inside = busy[pad:pad + h, pad:pad + w]
        np.greater(mask, 0.3, out=inside)
        inside[:border], inside[-border:], inside[:, :border], inside[:, -border:] = 1, 1, 1, 1
        reached = np.zeros((h, w), bool)
        for dy, dx in self._struct(theta):
            reached |= busy[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        return np.flatnonzero(~reached)

    def extend(self, rng, canvas: _Canvas, pivot, theta: float):
        """The next paddle of a snake, as (head, its orientation, new pivot, the paddle from
        the head along the flipped orientation), or None.

        Candidate heads lie on a circle of radius length + margin around the new pivot,
        weighted by cos(min(continuity * turn, pi / 2))^2 times the free space (1 - the mask
        dilated by the margin); a paddle whose mask would overlap the mask (sum >= 1.8) is
        re-drawn.
        """
        new_pivot = _translate(pivot, theta, self.length + 2 * self.margin)
        candidates = self._candidates(new_pivot, theta, canvas)
        if candidates is None:
            return None
        points, cmf = candidates
        for _ in range(self.cfg.max_paddle_retrial + 1):
            # numpy's argmax(cmf > r): the first point above r (cmf never decreases), else 0
            index = bisect.bisect_right(cmf, rng.random())
            point = points[index if index < len(cmf) else 0]
            dy, dx = self.ring_points[point]
            head = (new_pivot[0] + dy, new_pivot[1] + dx)
            paddle = self.ring_paddles[point]
            if self._fits(canvas.values, head, paddle):
                return head, self.ring_orientations[point], new_pivot, paddle
        return None

    def _fits(self, values: memoryview, head, paddle: _Paddle) -> bool:
        """Whether mask + the paddle's mask at ``head`` stays below the overlap threshold on
        the image."""
        y, x = head
        if self._clear(head, self.radius):
            base = self.origin + y * self.stride + 2 * x
            for flat, value in paddle.solid_flat:
                if values[base + flat] + value >= _OVERLAP:
                    return False
            return True
        (h, w), stride, origin = self.shape, self.stride, self.origin
        for dy, dx, value in paddle.solid:
            if (0 <= y + dy < h and 0 <= x + dx < w
                    and values[origin + (y + dy) * stride + 2 * (x + dx)] + value >= _OVERLAP):
                return False
        return True

    def _candidates(self, pivot, theta: float, canvas: _Canvas):
        """The ring points around ``pivot`` that are on the image, as (their indices into
        the ring, the cmf over them), or None."""
        values = canvas.values
        y, x = pivot
        base = self.origin + y * self.stride + 2 * x + 1  # the dilated mask
        if self._clear(pivot, self.ring_extent):
            points = self.ring_indices
            pmf = [(1 - values[base + flat]) * weight
                   for flat, weight in self._continuity(theta)]
        else:
            (h, w), ring = self.shape, self.ring_points
            points = [k for k, (dy, dx) in enumerate(ring) if 0 <= y + dy < h and 0 <= x + dx < w]
            if not points:
                return None
            weights = self._continuity(theta)
            pmf = [(1 - values[base + weights[k][0]]) * weights[k][1] for k in points]
        total = _numpy_sum(pmf)
        if total < 1e-4:
            return None
        cmf, cumulative = [], 0.0  # numpy's cumsum(pmf / total)
        for p in pmf:
            cumulative += p / total
            cmf.append(cumulative)
        return points, cmf

    def _clear(self, pivot, extent: int) -> bool:
        """Whether every pixel within ``extent`` (Chebyshev) of ``pivot`` is on the image."""
        return (extent <= pivot[0] < self.shape[0] - extent
                and extent <= pivot[1] < self.shape[1] - extent)

    def _continuity(self, theta: float) -> list[tuple[int, float]]:
        """(canvas offset, cos(min(continuity * turn, pi / 2))^2) for each ring point,
        turning from ``theta``."""
        if theta not in self._weights:
            turn = np.abs(self.ring_angles - theta)
            turn = np.minimum(np.minimum(turn, 2 * np.pi - turn) * self.cfg.continuity,
                              np.pi / 2)
            weights = (np.maximum(np.cos(turn), 0) ** 2).tolist()
            self._weights[theta] = list(zip(self.ring_flat, weights, strict=True))
        return self._weights[theta]


@functools.lru_cache(maxsize=4096)
def _marker(cfg: PathfinderConfig, centre: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """A disc of ``marker_radius`` around ``centre`` drawn at ``antialias_scale`` x and
    Lanczos-downsampled, as (patch, top, left): the image's pixels within ``reach`` of the
    centre (read-only); all others are 0. Resampling the crop gives the whole image's values:
    Lanczos reads 3 output pixels either way, a pixel's weights depend only on its place
    relative to the crop's edges, the crop keeps the image's own edges, the pixels near its
    other edges see only zeros in both, and both passes run in the same order."""
    aa, size = cfg.antialias_scale, cfg.resolution
    reach = math.ceil(cfg.marker_radius) + 8
    (cy, cx), image = centre, import_pillow()[0]
    top, left = max(cy - reach, 0), max(cx - reach, 0)
    bottom, right = max(min(cy + reach + 1, size), top), max(min(cx + reach + 1, size), left)
    if bottom == top or right == left:  # far off the image
        return np.zeros((0, 0)), 0, 0
    y, x = np.ogrid[(top - cy) * aa:(bottom - cy) * aa, (left - cx) * aa:(right - cx) * aa]
    big = np.where(x ** 2 + y ** 2 <= (cfg.marker_radius * aa) ** 2, 255, 0)
    # the horizontal pass, then the vertical one, as Pillow runs them on the square image
    # (it picks the order by shape, and would turn it round for some crops)
    narrow = image.fromarray(big.astype(np.uint8)).resize((right - left, big.shape[0]),
                                                          image.LANCZOS)
    small = narrow.resize((right - left, bottom - top), image.LANCZOS)
    patch = np.asarray(small, np.float64) / 255.0
    patch.flags.writeable = False
    return patch, top, left


@functools.lru_cache(maxsize=8)
def _painter(cfg: PathfinderConfig, margin: int) -> _Painter:
    return _Painter(cfg, margin)


def _path(paddles: list[tuple[tuple[int, int], _Paddle]], length: int) -> list[tuple[int, int]]:
    """The (y, x) ends of a snake's paddles (anchor, paddle), from the start tip: the seed
    paddle runs from its anchor, the later ones towards theirs."""
    (anchor, paddle), *rest = paddles
    path = [anchor, _translate(anchor, paddle.theta, length)]
    for anchor, paddle in rest:
        path += [_translate(anchor, paddle.theta, length), anchor]
    return path


def _two_snakes(rng, painter: _Painter, num_paddles: int):
    """The two target snakes: (image, canvas, paths), or None. A path lists the (y, x) ends
    of a snake's paddles in order, from the start tip to the end tip."""
    cfg = painter.cfg
    mu = list(cfg.snake_contrasts) * 2
    rng.shuffle(mu)
    canvas = painter.blank()
    first = painter.seed(rng, canvas.mask, border=2 * cfg.seed_distance,
                         stop_with_availability=None, blank=True)
    if first is None:
        return None
    contrasts = [[_pick(rng, cfg.paddle_contrasts) * mu[s]] for s in (0, 1)]
    tail1 = first[0]
    for _ in range(cfg.max_paddle_retrial + 1):
        theta = int(rng.integers(-180, 180)) * math.pi / 180
        angle = int(rng.integers(0, 360)) * math.pi / 180
        tail = (round(tail1[0] + cfg.seed_distance * math.sin(angle)),
                round(tail1[1] + cfg.seed_distance * math.cos(angle)))
        head = _translate(tail, theta, painter.length)
        pivot = _translate(head, _flip(theta), painter.length + painter.margin)
        if _in_bounds(head, painter.shape) and _in_bounds(pivot, painter.shape):
            break
    else:
        return None

    # (anchor, paddle) of each snake, drawn once both are complete
    paddles = [[(tail1, painter.paddle(first[1]))], [(tail, painter.paddle(theta))]]
    pivots, thetas = [first[2], pivot], [first[1], theta]
    for _ in range(num_paddles - 1):
        level = _pick(rng, cfg.paddle_contrasts)
        for s in (0, 1):
            step = painter.extend(rng, canvas, pivots[s], thetas[s])
            if step is None:
                return None
            head, thetas[s], pivots[s], paddle = step
            canvas.cover(*paddles[s][-1])
            paddles[s].append((head, paddle))
            contrasts[s].append(level * mu[s])
    # as in snakes2.two_snakes, only the second snake's last paddle joins the mask
    canvas.cover(*paddles[1][-1])
    image = np.zeros(painter.shape)
    for snake, levels in zip(paddles, contrasts, strict=True):
        for (anchor, paddle), level in zip(snake, levels, strict=True):
            painter.draw(image, anchor, paddle, level)
    return image, canvas, [_path(snake, painter.length) for snake in paddles]


def _distractor(rng, painter: _Painter, image: np.ndarray, canvas: _Canvas,
                num_paddles: int) -> _Canvas | None:
    """Draws one distractor snake on ``image`` (as snakes.make_snake) and returns the canvas
    with it, or None (image untouched) if it failed."""
    cfg = painter.cfg
    level = _pick(rng, cfg.snake_contrasts)
    seed = painter.seed(rng, canvas.mask, border=1, stop_with_availability=0.01)
    if seed is None:
        return None
    tail, theta, pivot = seed
    canvas = canvas.copy()
    paddles, levels = [(tail, painter.paddle(theta))], [level]
    for _ in range(num_paddles - 1):
        level = _pick(rng, cfg.snake_contrasts)
        step = painter.extend(rng, canvas, pivot, theta)
        if step is None:
            return None
        head, theta, pivot, paddle = step
        canvas.cover(*paddles[-1])
        paddles.append((head, paddle))
        levels.append(level)
    canvas.cover(*paddles[-1])
    for (anchor, paddle), level in zip(paddles, levels, strict=True):
        painter.draw(image, anchor, paddle, level)
    return canvas


class Scene(NamedTuple):
    """A rendered image with its two target paths (lists of (y, x) paddle ends, start to
    end) and its two marker centres."""

    image: np.ndarray
    paths: list[list[tuple[int, int]]]
    markers: tuple[tuple[int, int], tuple[int, int]]


def render_scene(rng: np.random.Generator, cfg: PathfinderConfig, num_paddles: int,
                 label: int) -> Scene:
    """One Pathfinder scene with the given label: a (resolution, resolution) uint8 image,
    the two target paths and the marker centres. Target snakes are re-drawn until both
    reach ``num_paddles`` paddles (at 64 px with 14 paddles this rarely succeeds). The
    draws are numpy's (replayed in Python for PCG64 generators, see ``pcg64_draws``)."""
    with replayed(rng) as draws:
        return _render_scene(draws, cfg, num_paddles, label)


def _render_scene(rng, cfg: PathfinderConfig, num_paddles: int, label: int) -> Scene:
    painter = _painter(cfg, _pick(rng, cfg.paddle_margins))
    for _ in range(_MAX_TARGET_TRIALS):
        snakes = _two_snakes(rng, painter, num_paddles)
        if snakes is not None:
            break
    else:
        raise RuntimeError(f"could not place two target snakes of {num_paddles} paddles in a "
                           f"{cfg.resolution}x{cfg.resolution} image in {_MAX_TARGET_TRIALS:,} "
                           f"trials")
    image, canvas, paths = snakes
    distractor_paddles = num_paddles // 3
    for _ in range(cfg.distractor_budget // distractor_paddles):
        for _ in range(cfg.max_distractor_retrial + 1):
            drawn = _distractor(rng, painter, image, canvas, distractor_paddles)
            if drawn is not None:
                canvas = drawn
                break
    origin = int(rng.integers(2))
    terminal = origin if label else 1 - origin
    markers = (paths[origin][0], paths[terminal][-1])
    for centre in markers:
        _paste_max(image, *_marker(cfg, centre))
    return Scene(np.round(image * (255.0 / image.max())).astype(np.uint8), paths, markers)


def _render_chunk(chunk: int, seed: int, cfg: PathfinderConfig, num_paddles: int):
    rng = chunk_rng(seed, chunk)
    labels = rng.permutation(np.arange(_CHUNK) % 2)
    images = np.stack([render_scene(rng, cfg, num_paddles, int(label)).image
                       for label in labels])
    return images, labels


def _render_images(render: Callable[[int], tuple[np.ndarray, np.ndarray]], resolution: int,
                   start: int, count: int, workers: int, desc: str,
                   progress: bool) -> dict[str, np.ndarray]:
    """The stored arrays of images ``start`` to ``start + count`` of the stream of chunks
    ``render(0)``, ``render(1)``, ... (``resolution`` x ``resolution`` images)."""
    first, stop = start // _CHUNK, -(-(start + count) // _CHUNK)
    images, labels = [np.zeros((0, resolution, resolution), np.uint8)], [np.zeros(0, int)]
    with Progress(count, desc, enabled=progress and count > 0) as bar:
        for chunk_images, chunk_labels in map_chunks(render, range(first, stop), workers):
            images.append(chunk_images)
            labels.append(chunk_labels)
            bar.update(len(chunk_labels))
    offset = start - first * _CHUNK
    part = slice(offset, offset + count)
    return compact_split(image_split(np.concatenate(images)[part], np.concatenate(labels)[part]))


def generate_pathfinder(
    resolution: int = 32,
    difficulty: str = "curv_contour_length_14",
    num_train: int = 160_000,
    num_val: int = 20_000,
    num_test: int = 20_000,
    seed: int = 0,
    normalize: bool = False,
    workers: int | None = None,
    cache_dir: CacheDir = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> Dataset:
    """Generates Pathfinder splits ``train`` / ``val`` / ``test`` (see the module docstring).

    Returns inputs (n, resolution ** 2): int32 pixel tokens 0..255 (vocab 256), or float32
    in [0, 1] with ``normalize``; targets (n,) int32 in {0, 1}; an all-True mask. Chunk i of
    64 images draws from ``[seed, i]``, so the result does not depend on ``workers``; train
    holds the first ``num_train`` images, val the next ``num_val``, test the next
    ``num_test``. Each split is cached in its own file, keyed by its place (start, count) and
    the settings, so changing ``num_val`` or ``num_test`` keeps train. Needs Pillow.
    """
    if resolution not in LRA_CONFIGS:
        raise ValueError(f"resolution must be one of {sorted(LRA_CONFIGS)}, got {resolution}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    cfg, num_paddles = LRA_CONFIGS[resolution], DIFFICULTIES[difficulty]
    render = functools.partial(_render_chunk, seed=seed, cfg=cfg, num_paddles=num_paddles)
    workers = default_workers() if workers is None else workers
    splits, start = {}, 0
    for name, size in {"train": num_train, "val": num_val, "test": num_test}.items():
        build = functools.partial(_render_images, render, resolution, start, size, workers,
                                  f"Pathfinder{resolution} {difficulty} {name}", progress)
        params = dict(split=name, start=start, n=size, res=resolution, diff=difficulty,
                      seed=seed)
        splits[name] = restore_split(cached_arrays("pathfinder", params, build,
                                                   cache_dir if size else None))
        start += size
    return image_dataset(f"pathfinder{resolution}_{difficulty}", splits, 2, normalize)
