"""Vessel and vertebra landmarks from TotalSegmentator-style classes on synthetic masks whose
levels are known by construction (1 mm voxels, origin 0: slice k lies at z = k mm)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nstage.anatomy.base import Anatomy
from nstage.landmarks import (
    BRACHIOCEPHALIC_CROSSING,
    SVC_TOP,
    VERTEBRA_PREFIX,
    arch_levels,
    find,
    source_backend,
)

SHAPE = (100, 80, 60)  # z, y, x
SP = (1.0, 1.0, 1.0)


def _grid():
    zz, yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]].astype(float)
    return zz, yy, xx


def candy_cane() -> np.ndarray:
    """An aortic arch: a half torus in the y-z plane at x=30 (centre y=40, z=50, radius 20 mm,
    tube radius 6 mm) on an ascending (y=20) and a descending (y=60) tube below z=50.

    By construction the top is z = 50 + 20 + 6 = 76. The hole under the arch has radius
    20 - 6 = 14, so the arch is one section down to z = 64 (at 64 its inner edge touches y=40)
    and two sections (ascending and descending) from z = 63 down.
    """
    zz, yy, xx = _grid()
    ring = (np.sqrt((yy - 40) ** 2 + (zz - 50) ** 2) - 20) ** 2 + (xx - 30) ** 2 <= 36
    limbs = (((yy - 20) ** 2 + (xx - 30) ** 2 <= 36) & (zz >= 10)) | \
            ((yy - 60) ** 2 + (xx - 30) ** 2 <= 36)
    return (ring & (zz >= 50)) | (limbs & (zz < 50))


def test_arch_levels_of_a_candy_cane():
    assert arch_levels(candy_cane(), SP) == (76, 63)


def test_arch_levels_ignore_specks_and_a_notch():
    aorta = candy_cane()
    aorta[90, 40, 30] = True  # an isolated speck above the arch: not its top
    aorta[70, 10, 10] = True  # a speck beside the arch: not a second section
    aorta[66:68, 40, :] = False  # a slit through the arch that closes again below
    assert aorta[66, 35, 30] and aorta[66, 45, 30] and aorta[65, 40, 30]
    assert arch_levels(aorta, SP) == (76, 63)


def test_arch_levels_when_the_image_cuts_the_arch():
    aorta = candy_cane()
    # Top slice of the image at z=70: the arch's top is not in view (the caller sees
    # top_k == last slice), its bottom still is.
    assert arch_levels(aorta[:71], SP) == (70, 63)
    # Image ending at z=60, below the arch: two sections already at the top slice.
    assert arch_levels(aorta[:61], SP) == (60, None)


def _anatomy(masks: dict[str, np.ndarray], backend="totalsegmentator") -> Anatomy:
    labels = np.zeros(SHAPE, np.uint8)
    names = {}
    for v, (name, m) in enumerate(masks.items(), start=1):
        labels[m] = v
        names[v] = name
    ref = sitk.GetImageFromArray(np.zeros(SHAPE, np.int16))
    return Anatomy(labels, names, ref, backend)


def _mediastinum() -> dict[str, np.ndarray]:
    """Trachea (x 25..35, y 40..50) from z=99 down to z=40 (its lowest level is the carina for
    a TotalSegmentator-style anatomy without bronchi), a left brachiocephalic vein running from
    the left (x=55) across in front of the trachea (y 30..35) to the right at z 70..74, a
    superior vena cava on the right (x 10..16, y 30..38) from z=66 down, vertebrae T3 (z 60..99,
    cut by the top of the image) and T4 (z 30..49, centre 39.5)."""
    zz, yy, xx = _grid()
    box = lambda z, y, x: ((zz >= z[0]) & (zz <= z[1]) & (yy >= y[0]) & (yy <= y[1])  # noqa: E731
                           & (xx >= x[0]) & (xx <= x[1]))
    return {
        "trachea": box((40, 99), (40, 50), (25, 35)),
        "brachiocephalic_vein_left": box((70, 74), (30, 35), (10, 55)),
        "superior_vena_cava": box((30, 66), (30, 38), (10, 16)),
        "vertebrae_T3": box((60, 99), (60, 75), (25, 35)),
        "vertebrae_T4": box((30, 49), (60, 75), (25, 35)),
    }


def test_brachiocephalic_crossing_svc_top_and_vertebrae_measured():
    anatomy = _anatomy(_mediastinum())
    lms = find(anatomy)
    crossing = lms.get(BRACHIOCEPHALIC_CROSSING)
    # Lowest level of the vein within the trachea's x range (25..35): z=70.
    assert crossing.method == "measured" and crossing.z_mm == pytest.approx(70.0)
    assert lms.get(SVC_TOP).method == "measured" and lms.z(SVC_TOP) == pytest.approx(66.0)
    t4 = lms.get(VERTEBRA_PREFIX + "T4")
    assert t4.method == "measured" and t4.z_mm == pytest.approx(39.5)
    assert t4.point_mm == pytest.approx((30.0, 67.5, 39.5))
    assert lms.get(VERTEBRA_PREFIX + "T3") is None  # cut by the image: centre unknown
    assert source_backend(BRACHIOCEPHALIC_CROSSING, crossing, anatomy) == "totalsegmentator"


def test_crossing_approximated_from_the_svc_top_without_the_vein():
    masks = _mediastinum()
    del masks["brachiocephalic_vein_left"]
    anatomy = _anatomy(masks)
    crossing = find(anatomy).get(BRACHIOCEPHALIC_CROSSING)
    assert crossing.method == "approximated" and crossing.z_mm == pytest.approx(66.0)
    assert "superior vena cava" in crossing.source
    assert source_backend(BRACHIOCEPHALIC_CROSSING, crossing, anatomy) is None
