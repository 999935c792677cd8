"""Landmarks from the phantom truth, a TotalSegmentator-style anatomy and synthetic airways."""

from __future__ import annotations

import numpy as np
import pytest

from nstage.anatomy.base import Anatomy
from nstage.landmarks import (
    AORTIC_ARCH_TOP,
    AZYGOS_BOTTOM,
    CARINA,
    LUNG_APEX_LEFT,
    MANUBRIUM_TOP,
    airway_bifurcation,
    find,
)


@pytest.fixture(scope="module")
def phantom():
    from nstage.phantom import PhantomSpec, make_phantom

    return make_phantom(PhantomSpec())


def _truth_carina(phantom) -> np.ndarray:
    return np.array(phantom.truth["landmarks"]["carina_mm"])


def test_truth_anatomy_landmarks(phantom):
    lms = find(phantom.anatomy)
    carina = lms.get(CARINA)
    assert carina.method == "measured"
    assert np.linalg.norm(np.array(carina.point_mm) - _truth_carina(phantom)) <= 5.0
    # The aorta is segmented: the arch top is measured, above the carina.
    arch = lms.get(AORTIC_ARCH_TOP)
    assert arch.method == "measured" and arch.z_mm > carina.z_mm
    assert abs(arch.z_mm - phantom.truth["landmarks"]["aortic_arch_top_z_mm"]) <= 6.0
    # No azygos class anywhere: approximated, and the source says why.
    az = lms.get(AZYGOS_BOTTOM)
    assert az.approximated and "azygos" in az.source
    assert lms.get(MANUBRIUM_TOP).method == "measured"
    assert lms.z(LUNG_APEX_LEFT) > carina.z_mm
    assert lms.lung_volume_ml["left"] > 1000 and lms.lung_volume_ml["right"] > 1000
    # Trachea levels run from the top down to the carina; the left border is the larger x.
    zs = [t.z_mm for t in lms.trachea]
    assert zs == sorted(zs, reverse=True) and zs[-1] >= carina.z_mm - 1e-6
    for t in lms.trachea:
        assert t.right_border_x_mm < t.centre_x_mm < t.left_border_x_mm
    assert lms.bronchi["left"] and lms.bronchi["right"]
    assert np.mean([p[0] for p in lms.bronchi["left"]]) > carina.point_mm[0]
    assert lms.get("hilum_left").point_mm[0] > lms.get("hilum_right").point_mm[0]


def test_totalsegmentator_style_anatomy_uses_lowest_trachea_level(phantom):
    keep = {"trachea", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
            "lung_middle_lobe_right", "lung_lower_lobe_right"}
    truth = phantom.anatomy
    labels = truth.labels.copy()
    drop = [v for v, n in truth.names.items() if n not in keep]
    labels[np.isin(labels, drop)] = 0
    ts = Anatomy(labels, {v: n for v, n in truth.names.items() if n in keep}, truth.reference,
                 "totalsegmentator")
    lms = find(ts)
    carina = lms.get(CARINA)
    assert carina is not None and "lowest trachea level" in carina.source
    assert abs(carina.z_mm - _truth_carina(phantom)[2]) <= 10.0
    arch = lms.get(AORTIC_ARCH_TOP)
    # No aorta: bottom = carina + 15 mm, top = bottom + 22 mm (thresholds.json "landmarks").
    assert arch.approximated and arch.z_mm == pytest.approx(carina.z_mm + 15.0 + 22.0)
    assert lms.get("hilum_left").approximated
    assert lms.get(MANUBRIUM_TOP).approximated


def _y_airway(split_k: int = 12, nz: int = 30) -> np.ndarray:
    m = np.zeros((nz, 40, 60), bool)
    for k in range(nz):
        if k > split_k:
            m[k, 18:23, 28:33] = True
        else:
            off = 3 + (split_k - k)
            m[k, 18:23, 28 - off:31 - off] = True
            m[k, 18:23, 30 + off:33 + off] = True
    return m


def test_airway_bifurcation_finds_the_split_level():
    k, a, b = airway_bifurcation(_y_airway(), (2.5, 2.0, 2.0))
    assert k == 12
    xs = sorted([np.nonzero(a)[1].mean(), np.nonzero(b)[1].mean()])
    assert xs[0] < 30 < xs[1]


def test_airway_bifurcation_ignores_a_split_that_merges_again():
    # Two recesses side by side that merge lower down (like the larynx) are not a carina.
    m = _y_airway()
    m[22:26] = False
    m[22:26, 18:23, 20:24] = True
    m[22:26, 18:23, 36:40] = True
    m[21, 18:23, 20:40] = True
    k, _, _ = airway_bifurcation(m, (2.5, 2.0, 2.0), max_k=20)
    assert k == 12
    assert airway_bifurcation(m[13:], (2.5, 2.0, 2.0)) is None  # trachea only
