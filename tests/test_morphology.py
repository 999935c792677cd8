"""nstage.morphology and the seed search of the SUV backend: the fast paths give exactly what
the scipy formulations they replace give (the pipeline's answers must not depend on them)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull

from nstage.lesions.suv import _ball_footprint, ball_maxima
from nstage.morphology import (
    ball,
    bounding_box,
    closing,
    dilate,
    erode,
    fast_hull,
    fill_holes_axial,
    opening,
)


def _blobs(rng, shape, level=None):
    level = rng.uniform(0.35, 0.65) if level is None else level
    return ndi.gaussian_filter(rng.random(shape), 1.2) > level


def _disk(r):
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2) <= r * r


STRUCTURES = {
    "cross-3d": ndi.generate_binary_structure(3, 1),
    "cube": np.ones((3, 3, 3), dtype=bool),
    "disk1-inplane": _disk(1)[None],
    "disk4-inplane": _disk(4)[None],
    "ball-3x5x5": ball((2.0, 1.0, 1.0), 2.5),
    "z-line": np.ones((3, 1, 1), dtype=bool),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_dilate_erode_open_close_equal_scipy(name):
    structure = STRUCTURES[name]
    rng = np.random.default_rng(sorted(STRUCTURES).index(name))
    for _ in range(15):
        mask = _blobs(rng, tuple(rng.integers(1, 22, 3)))
        for ours, theirs in ((dilate, ndi.binary_dilation), (erode, ndi.binary_erosion),
                             (opening, ndi.binary_opening), (closing, ndi.binary_closing)):
            np.testing.assert_array_equal(ours(mask, structure), theirs(mask, structure=structure),
                                          err_msg=f"{ours.__name__} {mask.shape}")


def test_unsupported_structures_fall_back_to_scipy():
    rng = np.random.default_rng(7)
    mask = _blobs(rng, (12, 14, 16))
    lopsided = np.zeros((3, 3, 3), dtype=bool)
    lopsided[1, 1, 1:] = True  # not symmetric about the centre
    np.testing.assert_array_equal(dilate(mask, lopsided),
                                  ndi.binary_dilation(mask, structure=lopsided))
    np.testing.assert_array_equal(erode(mask, lopsided), ndi.binary_erosion(mask, structure=lopsided))


@pytest.mark.parametrize("spacing", [(2.5, 0.98, 0.98), (5.0, 4.0, 4.0), (1.0, 1.0, 1.0),
                                     (3.0, 0.9765625, 0.9765625)])
def test_dilating_by_a_ball_is_thresholding_the_distance_map(spacing):
    rng = np.random.default_rng(11)
    for _ in range(10):
        mask = _blobs(rng, tuple(rng.integers(4, 26, 3)), level=0.62)
        mask[tuple(s // 2 for s in mask.shape)] = True
        distance = ndi.distance_transform_edt(~mask, sampling=spacing)
        for radius in (5.0, 12.0, 6.2):
            np.testing.assert_array_equal(dilate(mask, ball(spacing, radius)), distance <= radius)


def test_ball_is_cached_and_read_only():
    b = ball((2.5, 1.0, 1.0), 5.0)
    assert b is ball((2.5, 1.0, 1.0), 5.0)
    assert b.shape == (5, 11, 11) and b[2, 5, 5] and not b[0, 5, 0]
    with pytest.raises(ValueError):
        b[0, 0, 0] = True


def test_fill_holes_axial_equals_per_slice_scipy():
    rng = np.random.default_rng(3)
    for _ in range(40):
        mask = _blobs(rng, tuple(rng.integers(1, 25, 3)))
        expected = np.stack([ndi.binary_fill_holes(s) for s in mask])
        np.testing.assert_array_equal(fill_holes_axial(mask), expected)
    ring = np.zeros((2, 7, 7), dtype=bool)
    ring[0, 1:6, 1:6] = True
    ring[0, 2:5, 2:5] = False  # a hole in slice 0; none across slices
    filled = fill_holes_axial(ring)
    assert filled[0, 3, 3] and not filled[1].any()
    assert fill_holes_axial(np.ones((2, 3, 3), bool)).all()


def _hull_reference(mask2d):
    """Pixels on the inner side of every facet of the hull of the mask's pixel centres."""
    pts = np.argwhere(mask2d).astype(float)
    out = mask2d.copy()
    try:
        eq = ConvexHull(pts).equations
    except Exception:
        return out
    rr, cc = np.mgrid[:mask2d.shape[0], :mask2d.shape[1]]
    inside = (eq[:, 0, None, None] * rr + eq[:, 1, None, None] * cc + eq[:, 2, None, None]
              <= 1e-6).all(axis=0)
    return out | inside


def test_fast_hull_is_the_filled_convex_hull():
    rng = np.random.default_rng(5)
    for i in range(300):
        h, w = rng.integers(1, 50, 2)
        mask = (rng.random((h, w)) > 0.97) if i % 5 == 0 else _blobs(rng, (h, w))
        np.testing.assert_array_equal(fast_hull(mask), _hull_reference(mask), err_msg=str(i))


def test_bounding_box_matches_find_objects():
    rng = np.random.default_rng(9)
    for _ in range(30):
        mask = rng.random(tuple(rng.integers(1, 15, 3))) > 0.9
        if mask.any():
            assert bounding_box(mask) == ndi.find_objects(mask.astype(np.uint8))[0]
    assert all(s.stop == s.start for s in bounding_box(np.zeros((3, 4, 5), bool)))


def test_seed_maxima_equal_the_full_maximum_filters():
    """ball_maxima (the SUV backend's seed search) against scipy on whole arrays, with ties
    and maxima at the array border (scipy's 'reflect' mode), for dense candidates (the 3x3x3
    pre-filter) and sparse ones (each tested against its ball directly)."""
    rng = np.random.default_rng(13)
    for i in range(40):
        shape = tuple(rng.integers(3, 30, 3))
        spacing = tuple(rng.choice([0.98, 2.0, 2.5, 4.0], 3))
        footprint = _ball_footprint(spacing, float(rng.choice([2.0, 4.0, 6.0])))
        values = ndi.gaussian_filter(rng.random(shape).astype(np.float32), 1.0)
        if i % 3 == 0:
            values = np.round(values * 20) / 20  # plateaus: equal neighbours
        other = rng.random(shape).astype(np.float32)
        candidate = rng.random(shape) > (0.3 if i % 2 else 0.99)
        peaks, other_max = ball_maxima(values, other, candidate, footprint)
        expected = np.argwhere(candidate
                               & (values == ndi.maximum_filter(values, footprint=footprint)))
        np.testing.assert_array_equal(peaks, expected)
        np.testing.assert_array_equal(
            other_max, ndi.maximum_filter(other, footprint=footprint)[tuple(expected.T)])
