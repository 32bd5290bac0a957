"""Pathfinder generator: labels vs. connectivity of the marked paths, pixels, balance, seeds."""

import numpy as np
import pytest

pytest.importorskip("PIL")

from seqzoo.data.pathfinder import (  # noqa: E402
    LRA_CONFIGS,
    _painter,
    generate_pathfinder,
    render_scene,
)

SCALE = 4  # the test rasterises the paths on a 4x finer grid


def _rasterise(paths, size):
    """Draws each path as a polyline through its paddle ends (own DDA, 4x resolution)."""
    canvas = np.zeros((size * SCALE, size * SCALE), bool)
    for path in paths:
        points = (np.array(path, float) + 0.5) * SCALE
        for a, b in zip(points[:-1], points[1:], strict=True):
            steps = int(np.abs(b - a).max()) * 2 + 2
            for t in np.linspace(0, 1, steps):
                y, x = (a + t * (b - a)).astype(int)
                canvas[y, x] = True
    return canvas


def _flood(stroke, start):
    """Pixels of ``stroke`` 8-connected to ``start`` (the stroke pixel nearest to it)."""
    on = np.argwhere(stroke)
    seed = on[np.argmin(((on - start) ** 2).sum(axis=1))]
    reached = np.zeros_like(stroke)
    reached[tuple(seed)] = True
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        grown &= stroke
        if (grown == reached).all():
            return reached
        reached = grown


def _touch(a, b):
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return (grown & b).any()


@pytest.mark.parametrize("resolution,num_paddles,count", [(32, 6, 40), (32, 14, 12), (128, 6, 6)])
def test_label_is_connectivity_of_the_two_markers(resolution, num_paddles, count):
    """Positive: the markers' path component (flood fill over the test's own rasterisation
    of the target paths) joins them. Negative: it does not, unless the two target paths
    touch: as in the original generator, a snake's newest paddle is not yet in the mask
    the other snake is checked against (and the second seed paddle is not checked), so
    target snakes may cross; that stays a minority of images."""
    rng = np.random.default_rng(resolution + num_paddles)
    touching = 0
    for i in range(count):
        label = i % 2
        scene = render_scene(rng, LRA_CONFIGS[resolution], num_paddles, label)
        first, second = (_rasterise([path], resolution) for path in scene.paths)
        origin, terminal = ((np.array(m) + 0.5) * SCALE for m in scene.markers)
        on = np.argwhere(_flood(first | second, origin))
        connected = ((on - terminal) ** 2).sum(axis=1).min() <= 2 * SCALE ** 2
        crossing = _touch(first, second)
        touching += crossing
        assert connected == bool(label) or (crossing and not label)
        for y, x in scene.markers:  # the markers are drawn where the scene says
            assert scene.image[y, x] >= 100
        assert len(scene.paths[0]) == len(scene.paths[1]) == 2 * num_paddles
    assert touching <= count // 4


def test_images_labels_and_splits(tmp_path):
    kwargs = dict(resolution=32, difficulty="curv_baseline", num_train=96, num_val=16,
                  num_test=16, seed=3, progress=False)
    one = generate_pathfinder(workers=1, cache_dir=None, **kwargs)
    two = generate_pathfinder(workers=2, cache_dir=tmp_path, **kwargs)
    cached = generate_pathfinder(workers=1, cache_dir=tmp_path, normalize=True, **kwargs)
    assert one.vocab_size == 256 and one.num_classes == 2 and one.seq_len == 1024
    for split, n in (("train", 96), ("val", 16), ("test", 16)):
        for field in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(one[split][field], two[split][field])
        inputs = one[split]["inputs"]
        assert inputs.shape == (n, 1024) and inputs.dtype == np.int32
        assert (inputs.min(axis=1) == 0).all() and (inputs.max(axis=1) == 255).all()
        assert ((inputs == 0).mean(axis=1) > 0.5).all()  # mostly dark background
        assert one[split]["mask"].all()
        np.testing.assert_allclose(cached[split]["inputs"], inputs / 255.0, atol=1e-6)
    labels = np.concatenate([one[s]["targets"] for s in ("train", "val", "test")])
    assert set(labels.tolist()) == {0, 1} and labels.sum() == 64  # each chunk of 64 balanced
    assert cached.vocab_size is None and cached["train"]["inputs"].dtype == np.float32


def test_rejects_unknown_settings():
    with pytest.raises(ValueError, match="resolution"):
        generate_pathfinder(resolution=48, cache_dir=None)
    with pytest.raises(ValueError, match="difficulty"):
        generate_pathfinder(difficulty="curv_contour_length_10", cache_dir=None)


@pytest.mark.parametrize("resolution,num_paddles", [(32, 14), (32, 6)])
def test_target_paths_are_drawn_in_the_image(resolution, num_paddles):
    """Every paddle end of both target paths lies on a drawn stroke of the rendered image
    (brightest pixel of its 3x3 neighbourhood >= 100 of 255), while most pixels of the image
    are not near one: the scene's paths, which decide the label, are the ones a model sees."""
    rng = np.random.default_rng(7)
    for label in (0, 1, 0, 1):
        scene = render_scene(rng, LRA_CONFIGS[resolution], num_paddles, label)
        padded = np.pad(scene.image, 1)
        near = np.max([padded[dy:dy + resolution, dx:dx + resolution]
                       for dy in range(3) for dx in range(3)], axis=0) >= 100
        ends = np.array([end for path in scene.paths for end in path])
        assert ((ends >= 0) & (ends < resolution)).all()
        assert near[ends[:, 0], ends[:, 1]].all()
        assert near.mean() < 0.7


def _dilated_reference(mask, margin):
    """The mask dilated by a disc of radius ``margin`` (grey dilation, image edges ignored)."""
    h, w = mask.shape
    out = mask.copy()
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            if dy * dy + dx * dx <= margin * margin:
                shifted = np.zeros_like(mask)
                shifted[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
                    mask[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
                out = np.maximum(out, shifted)
    return out


def _candidates_reference(painter, pivot, theta, dilated):
    """snakes.get_coords_cmf, written out: circle points of radius length + margin around
    the pivot truncated to pixels, weighted by continuity and by 1 - the dilated mask."""
    step, (h, w) = painter.length + painter.margin, dilated.shape
    angles = np.arange(0, 360, 360.0 / (2 * step * np.pi)) * np.pi / 180
    ys, xs = pivot[0] + step * np.sin(angles), pivot[1] + step * np.cos(angles)
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    if not keep.any():
        return None
    coords = np.unique(np.stack([ys[keep], xs[keep]], axis=1).astype(int), axis=0)
    orientations = np.arctan2(coords[:, 0] - pivot[0], coords[:, 1] - pivot[1])
    turn = np.abs(orientations - theta)
    turn = np.minimum(np.minimum(turn, 2 * np.pi - turn) * painter.cfg.continuity, np.pi / 2)
    pmf = (1 - dilated[coords[:, 0], coords[:, 1]]) * np.maximum(np.cos(turn), 0) ** 2
    if pmf.sum() < 1e-4:
        return None
    return coords, orientations, np.cumsum(pmf / pmf.sum())


@pytest.mark.parametrize("resolution", [32, 64])
def test_candidate_heads_match_a_reference(resolution):
    """The painter's candidate heads (precomputed ring, memoised weights, the canvas's
    dilated mask read pixel by pixel, sums in numpy's order) equal the reference's for pivots
    all over the image, border included."""
    cfg = LRA_CONFIGS[resolution]
    painter = _painter(cfg, cfg.paddle_margins[0])
    rng = np.random.default_rng(resolution)
    mask = np.where(rng.random((resolution, resolution)) < 0.2, rng.random((resolution,) * 2), 0)
    canvas = painter.canvas(mask)
    dilated = _dilated_reference(mask, painter.margin)
    step = max(1, resolution // 16)
    for y in range(-2, resolution + 2, step):
        for x in range(-2, resolution + 2, step):
            theta = float(rng.integers(-180, 180)) * np.pi / 180
            got = painter._candidates((y, x), theta, canvas)
            want = _candidates_reference(painter, (y, x), theta, dilated)
            assert (got is None) == (want is None), (y, x)
            if got is not None:
                points, cmf = got
                coords = [(y + painter.ring_points[k][0], x + painter.ring_points[k][1])
                          for k in points]
                np.testing.assert_array_equal(coords, want[0])
                np.testing.assert_array_equal([painter.ring_orientations[k] for k in points],
                                              want[1])
                np.testing.assert_array_equal(cmf, want[2])
