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
"""

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


@dataclass
class _Patch:
    """A paddle's line (drawn at ``contrast``) and mask values on the image rows top..,
    columns left.."""

    top: int
    left: int
    line: np.ndarray
    mask: np.ndarray
    contrast: float = 1.0

    def region(self) -> tuple[slice, slice]:
        return (slice(self.top, self.top + self.line.shape[0]),
                slice(self.left, self.left + self.line.shape[1]))

    def draw(self, image: np.ndarray) -> None:
        """image = max(image, contrast * line) on the patch."""
        region = self.region()
        image[region] = np.maximum(image[region], self.line * self.contrast)

    def cover(self, mask: np.ndarray) -> None:
        """mask = max(mask, paddle mask) on the patch."""
        region = self.region()
        mask[region] = np.maximum(mask[region], self.mask)


def _translate(coord, theta: float, dist: float) -> tuple[int, int]:
    return (math.ceil(coord[0] + dist * math.sin(theta)),
            math.ceil(coord[1] + dist * math.cos(theta)))


def _flip(theta: float) -> float:
    return theta + math.pi if theta < 0 else theta - math.pi


def _disc(radius: float) -> np.ndarray:
    r = int(radius)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x ** 2 + y ** 2 <= radius ** 2


def _dilate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Grey dilation (max filter) by a boolean kernel anchored at its centre (cv2.dilate)."""
    offsets = np.argwhere(kernel) - np.array(kernel.shape) // 2
    if len(offsets) == 0:
        return np.zeros_like(image)
    pad = int(np.abs(offsets).max())
    padded = np.pad(image, pad)
    h, w = image.shape
    out = np.full_like(image, -np.inf if image.dtype.kind == "f" else 0)
    for dy, dx in offsets:
        np.maximum(out, padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w], out=out)
    return out


def _in_bounds(coord, shape) -> bool:
    return 0 <= coord[0] < shape[0] and 0 <= coord[1] < shape[1]


class _Painter:
    """Draws paddles and markers for one configuration and paddle margin; paddle images
    depend only on the orientation, so they are memoised per orientation."""

    def __init__(self, cfg: PathfinderConfig, margin: int):
        self.cfg, self.margin = cfg, margin
        self.shape = (cfg.resolution, cfg.resolution)
        self.length = cfg.paddle_length
        self.radius = self.length + math.ceil(cfg.paddle_thickness) + margin
        self.big_kernel = _disc(margin * cfg.antialias_scale)
        self.small_offsets = np.argwhere(_disc(margin)) - margin
        step = self.length + margin
        angles = np.arange(0, 360, 360.0 / (2 * step * np.pi)) * np.pi / 180
        # candidate heads around an integer pivot: the circle's points truncated to pixels,
        # i.e. pivot + floor(offset) on the image, in (y, x) order, with their orientations
        ring = np.floor(np.stack([step * np.sin(angles), step * np.cos(angles)], axis=1))
        self.ring = np.unique(ring.astype(int), axis=0)
        self.ring_angles = np.arctan2(self.ring[:, 0], self.ring[:, 1])
        self.ring_points = [(int(dy), int(dx)) for dy, dx in self.ring]
        self.ring_orientations = [float(a) for a in self.ring_angles]
        self.ring_reach = self.ring[:, None, :] + self.small_offsets[None]  # (K, S, 2)
        self.ring_extent = int(np.abs(self.ring).max())
        self.reach_extent = int(np.abs(self.ring_reach).max())
        self.ring_reach_flat = self.ring_reach[..., 0] * cfg.resolution + self.ring_reach[..., 1]
        self.Image, self.ImageDraw = import_pillow()
        self._paddles: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._structs: dict[float, np.ndarray] = {}
        self._weights: dict[float, np.ndarray] = {}
        self._seed_free: dict[tuple[float, bytes], np.ndarray] = {}

    def _resize(self, big: np.ndarray, size: int) -> np.ndarray:
        image = self.Image.fromarray(big).resize((size, size), self.Image.LANCZOS)
        return np.asarray(image, np.float64) / 255.0

    def _unclipped(self, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """(line, mask) of a paddle from the centre of a (2r+1)^2 patch along ``theta``:
        drawn at ``antialias_scale`` x and Lanczos-downsampled; the mask is the line dilated
        by the margin."""
        if theta not in self._paddles:
            aa, r = self.cfg.antialias_scale, self.radius
            centre = r * aa
            head = _translate((centre, centre), theta, self.length * aa)
            canvas = self.Image.new("L", (2 * centre + 1, 2 * centre + 1), 0)
            self.ImageDraw.Draw(canvas).line([(centre, centre), (head[1], head[0])],
                                             fill=255,
                                             width=round(self.cfg.paddle_thickness * aa))
            line_big = np.asarray(canvas)
            self._paddles[theta] = (self._resize(line_big, 2 * r + 1),
                                    self._resize(_dilate(line_big, self.big_kernel), 2 * r + 1))
        return self._paddles[theta]

    def paddle(self, start, theta: float, contrast: float = 1.0, shape=None) -> _Patch:
        """The paddle from ``start`` along ``theta``, clipped to ``shape`` (the image)."""
        line, mask = self._unclipped(theta)
        h, w = shape or self.shape
        r = self.radius
        top, left = start[0] - r, start[1] - r
        rows = slice(max(0, -top), 2 * r + 1 - max(0, top + 2 * r - (h - 1)))
        cols = slice(max(0, -left), 2 * r + 1 - max(0, left + 2 * r - (w - 1)))
        return _Patch(max(top, 0), max(left, 0), line[rows, cols], mask[rows, cols], contrast)

    def _struct(self, theta: float) -> np.ndarray:
        """Seed dilation kernel: the full-valued mask of a paddle along ``theta`` whose head
        sits one pixel off the centre of a (2 (length + margin) + 1)^2 patch."""
        if theta not in self._structs:
            reach = self.length + self.margin
            shape = (2 * reach + 1,) * 2
            patch = self.paddle((reach + 1, reach + 1), theta, shape=shape)
            struct = np.zeros(shape)
            patch.cover(struct)
            self._structs[theta] = struct >= 1.0
        return self._structs[theta]

    def seed(self, rng, mask: np.ndarray, border: int, stop_with_availability: float | None,
             blank: bool = False):
        """A first paddle (tail, orientation, pivot) on free space, or None. ``blank`` says
        that ``mask`` is the empty image's (only its padding), whose free tails are memoised."""
        reach = self.length + self.margin
        for _ in range(self.cfg.max_paddle_retrial + 1):
            theta = int(rng.integers(-180, 180)) * math.pi / 180
            if stop_with_availability is not None and np.mean(mask <= 0.3) < stop_with_availability:
                return None
            if blank:
                if (theta, border) not in self._seed_free:
                    self._seed_free[theta, border] = self._free_tails(mask, border, theta)
                free = self._seed_free[theta, border]
            else:
                free = self._free_tails(mask, border, theta)
            if len(free) == 0:
                return None
            tail = tuple(int(v) for v in free[rng.integers(len(free))])
            head = _translate(tail, theta, self.length)
            pivot = _translate(head, _flip(theta), reach)
            if _in_bounds(head, self.shape) and _in_bounds(pivot, self.shape):
                return tail, theta, pivot
        return None

    def _free_tails(self, mask: np.ndarray, border: int, theta: float) -> np.ndarray:
        """(n, 2) pixels where a paddle along ``theta`` keeps clear of the mask and of a
        ``border``-wide frame."""
        lined = mask.copy()
        lined[:border], lined[-border:], lined[:, :border], lined[:, -border:] = 1, 1, 1, 1
        return np.argwhere(_dilate(lined, self._struct(theta)) <= 0.3)

    def extend(self, rng, mask: np.ndarray, pivot, theta: float, contrast: float):
        """The next paddle of a snake, as (patch, new pivot, new orientation, head), or None.

        Candidate heads lie on a circle of radius length + margin around the new pivot,
        weighted by cos(min(continuity * turn, pi / 2))^2 times the free space (1 - the mask
        dilated by the margin); a paddle whose mask would overlap the mask (sum >= 1.8) is
        re-drawn.
        """
        new_pivot = _translate(pivot, theta, self.length + 2 * self.margin)
        candidates = self._candidates(new_pivot, theta, mask)
        if candidates is None:
            return None
        points, cmf = candidates
        for _ in range(self.cfg.max_paddle_retrial + 1):
            index = int((cmf > rng.random()).argmax())  # first cmf - r > 0
            point = index if points is None else int(points[index])
            (dy, dx), orientation = self.ring_points[point], self.ring_orientations[point]
            head = (new_pivot[0] + dy, new_pivot[1] + dx)
            patch = self.paddle(head, _flip(orientation), contrast)
            if (mask[patch.region()] + patch.mask).max() < 1.8:
                return patch, new_pivot, orientation, head
        return None

    def _candidates(self, pivot, theta: float, mask: np.ndarray):
        """The ring points around ``pivot`` that are on the image, as (their indices into
        the ring, None for all, and the cmf over them), or None."""
        if self._clear(pivot, self.ring_extent):
            inside = slice(None)
        else:
            ys, xs = self.ring[:, 0] + pivot[0], self.ring[:, 1] + pivot[1]
            inside = (ys >= 0) & (ys < self.shape[0]) & (xs >= 0) & (xs < self.shape[1])
            if not inside.any():
                return None
        pmf = (1 - self._dilated_at(mask, pivot, inside)) * self._continuity(theta)[inside]
        total = pmf.sum()
        if total < 1e-4:
            return None
        points = None if isinstance(inside, slice) else np.flatnonzero(inside)
        return points, (pmf / total).cumsum()

    def _clear(self, pivot, extent: int) -> bool:
        """Whether every pixel within ``extent`` (Chebyshev) of ``pivot`` is on the image."""
        return (extent <= pivot[0] < self.shape[0] - extent
                and extent <= pivot[1] < self.shape[1] - extent)

    def _continuity(self, theta: float) -> np.ndarray:
        """cos(min(continuity * turn, pi / 2))^2 for each ring point, turning from ``theta``."""
        if theta not in self._weights:
            turn = np.abs(self.ring_angles - theta)
            turn = np.minimum(np.minimum(turn, 2 * np.pi - turn) * self.cfg.continuity,
                              np.pi / 2)
            self._weights[theta] = np.maximum(np.cos(turn), 0) ** 2
        return self._weights[theta]

    def _dilated_at(self, mask: np.ndarray, pivot, inside) -> np.ndarray:
        """The mask dilated by a disc of the margin radius, at the ring points ``inside``."""
        if self._clear(pivot, self.reach_extent):
            flat = pivot[0] * self.shape[1] + pivot[1]
            return mask.ravel().take(self.ring_reach_flat[inside] + flat).max(axis=1)
        reach = self.ring_reach[inside]
        ys, xs = reach[..., 0] + pivot[0], reach[..., 1] + pivot[1]
        valid = (ys >= 0) & (ys < self.shape[0]) & (xs >= 0) & (xs < self.shape[1])
        values = mask[np.where(valid, ys, 0), np.where(valid, xs, 0)]
        return np.where(valid, values, 0.0).max(axis=1)

    def marker(self, centre) -> np.ndarray:
        """A disc of ``marker_radius`` drawn at ``antialias_scale`` x, Lanczos-downsampled."""
        aa, (h, w) = self.cfg.antialias_scale, self.shape
        y, x = np.ogrid[-centre[0] * aa:(h - centre[0]) * aa, -centre[1] * aa:(w - centre[1]) * aa]
        big = np.where(x ** 2 + y ** 2 <= (self.cfg.marker_radius * aa) ** 2, 255, 0)
        small = self.Image.fromarray(big.astype(np.uint8)).resize((w, h), self.Image.LANCZOS)
        return np.asarray(small, np.float64) / 255.0


@functools.lru_cache(maxsize=8)
def _painter(cfg: PathfinderConfig, margin: int) -> _Painter:
    return _Painter(cfg, margin)


def _two_snakes(rng, painter: _Painter, num_paddles: int):
    """The two target snakes: (per-snake images, mask, paths), or None. A path lists the
    (y, x) ends of a snake's paddles in order, from the start tip to the end tip."""
    cfg = painter.cfg
    mu = list(cfg.snake_contrasts) * 2
    rng.shuffle(mu)
    mask = np.zeros(painter.shape)
    p = cfg.padding
    mask[:p], mask[-p:], mask[:, :p], mask[:, -p:] = 1, 1, 1, 1

    def contrast(snake):
        return cfg.paddle_contrasts[rng.integers(len(cfg.paddle_contrasts))] * mu[snake]

    first = painter.seed(rng, mask, border=2 * cfg.seed_distance, stop_with_availability=None,
                         blank=True)
    if first is None:
        return None
    seeds = [(first, painter.paddle(first[0], first[1], contrast(0)))]
    tail1, c2 = first[0], contrast(1)
    for _ in range(cfg.max_paddle_retrial + 1):
        theta = int(rng.integers(-180, 180)) * math.pi / 180
        angle = int(rng.integers(0, 360)) * math.pi / 180
        tail = (round(tail1[0] + cfg.seed_distance * math.sin(angle)),
                round(tail1[1] + cfg.seed_distance * math.cos(angle)))
        head = _translate(tail, theta, painter.length)
        pivot = _translate(head, _flip(theta), painter.length + painter.margin)
        if _in_bounds(head, painter.shape) and _in_bounds(pivot, painter.shape):
            seeds.append(((tail, theta, pivot), painter.paddle(tail, theta, c2)))
            break
    else:
        return None

    paths = [[tail, _translate(tail, theta, painter.length)] for (tail, theta, _), _ in seeds]
    pivots, thetas = [s[2] for s, _ in seeds], [s[1] for s, _ in seeds]
    patches = [[patch] for _, patch in seeds]  # drawn once both snakes are complete
    for _ in range(num_paddles - 1):
        level = cfg.paddle_contrasts[rng.integers(len(cfg.paddle_contrasts))]
        for s in (0, 1):
            step = painter.extend(rng, mask, pivots[s], thetas[s], level * mu[s])
            if step is None:
                return None
            patch, pivots[s], thetas[s], head = step
            paths[s] += [_translate(head, _flip(thetas[s]), painter.length), head]
            patches[s][-1].cover(mask)
            patches[s].append(patch)
    # as in snakes2.two_snakes, only the second snake's last paddle joins the mask
    patches[1][-1].cover(mask)
    images = [np.zeros(painter.shape), np.zeros(painter.shape)]
    for image, snake in zip(images, patches, strict=True):
        for patch in snake:
            patch.draw(image)
    return images, mask, paths


def _distractor(rng, painter: _Painter, image, mask, num_paddles: int) -> bool:
    """Adds one distractor snake in place (as snakes.make_snake); False if it failed."""
    cfg = painter.cfg

    def contrast():
        return cfg.snake_contrasts[rng.integers(len(cfg.snake_contrasts))]

    level = contrast()
    seed = painter.seed(rng, mask, border=1, stop_with_availability=0.01)
    if seed is None:
        return False
    tail, theta, pivot = seed
    new_image, new_mask = image.copy(), mask.copy()
    last = painter.paddle(tail, theta, level)
    last.draw(new_image)
    for _ in range(num_paddles - 1):
        step = painter.extend(rng, new_mask, pivot, theta, contrast())
        if step is None:
            return False
        patch, pivot, theta, _ = step
        patch.draw(new_image)
        last.cover(new_mask)
        last = patch
    last.cover(new_mask)
    image[...], mask[...] = new_image, new_mask
    return True


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
    reach ``num_paddles`` paddles (at 64 px with 14 paddles this rarely succeeds)."""
    margin = cfg.paddle_margins[rng.integers(len(cfg.paddle_margins))]
    painter = _painter(cfg, margin)
    for _ in range(_MAX_TARGET_TRIALS):
        snakes = _two_snakes(rng, painter, num_paddles)
        if snakes is not None:
            break
    else:
        raise RuntimeError(f"could not place two target snakes of {num_paddles} paddles in a "
                           f"{cfg.resolution}x{cfg.resolution} image in {_MAX_TARGET_TRIALS:,} "
                           f"trials")
    (first, second), mask, paths = snakes
    image = np.maximum(first, second)
    distractor_paddles = num_paddles // 3
    for _ in range(cfg.distractor_budget // distractor_paddles):
        for _ in range(cfg.max_distractor_retrial + 1):
            if _distractor(rng, painter, image, mask, distractor_paddles):
                break
    origin = int(rng.integers(2))
    terminal = origin if label else 1 - origin
    markers = (paths[origin][0], paths[terminal][-1])
    image = np.maximum(image, np.maximum(*map(painter.marker, markers)))
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
