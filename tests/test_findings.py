"""Lesion measurements on known spheres: SUVs, volumes, axes, contacts, saddle splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from lesion_synth import Sphere, make_synthetic

from nstage.anatomy.base import Anatomy
from nstage.findings import label_lesions, measure
from nstage.geometry import index_to_mm
from nstage.lesions.base import LesionMask
from nstage.lesions.suv import segment_suv

SPACING = (1.0, 1.0, 2.0)  # x, y, z mm
SIZE = (80, 80, 40)


def _image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin((-40.0, -40.0, -40.0))
    return img


def _coords():
    ref = _image(np.zeros(SIZE[::-1], dtype=np.float32))
    k, j, i = np.indices(SIZE[::-1], dtype=float)
    xyz = index_to_mm(ref, np.stack([k, j, i], axis=-1))
    return xyz[..., 0], xyz[..., 1], xyz[..., 2]


def _study(mask: np.ndarray, suv: np.ndarray, labels: np.ndarray | None = None,
           names: dict[int, str] | None = None):
    ct = _image(np.where(mask, 40, -100).astype(np.int16))
    pet = _image(suv.astype(np.float32))
    labels = np.zeros(mask.shape, dtype=np.uint8) if labels is None else labels
    body = np.ones(mask.shape, dtype=bool)
    anatomy = Anatomy(labels=labels, names=names or {}, reference=ct, backend="phantom-truth",
                      extra_masks={"body": body})
    return LesionMask(mask=mask, backend="suv"), ct, pet, anatomy


def test_uniform_sphere_measurements_are_exact():
    x, y, z = _coords()
    centre = (2.0, -3.0, 4.0)
    r = 15.0
    mask = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= r ** 2
    suv = np.where(mask, 5.0, 0.5)
    (les,) = measure(*_study(mask, suv))
    assert les.id == 1
    assert les.suv_max == pytest.approx(5.0)
    assert les.suv_mean == pytest.approx(5.0)
    assert les.suv_peak == pytest.approx(5.0)  # a 1 ml sphere fits inside
    assert les.volume_ml == pytest.approx(4 / 3 * math.pi * r ** 3 / 1000, rel=0.03)
    assert les.tlg == pytest.approx(les.suv_mean * les.volume_ml)
    assert les.short_axis_mm == pytest.approx(2 * r, abs=1.5)
    assert les.long_axis_mm == pytest.approx(2 * r, abs=1.5)
    assert np.allclose(les.centroid_mm, centre, atol=0.5)
    assert les.inside == {"body": 1.0}


def test_suv_peak_is_the_mean_of_a_1ml_sphere_on_an_anisotropic_grid():
    x, y, z = _coords()
    mask = (x ** 2 + y ** 2 + z ** 2) <= 12.0 ** 2
    suv = np.where(mask, 1.0, 0.0)
    spike = (20, 40, 40)  # array index at the centre (z, y, x)
    suv[spike] = 101.0
    (les,) = measure(*_study(mask, suv))
    # Voxels of this grid (1 x 1 x 2 mm) whose centres lie within the 1 ml sphere radius.
    rad = (3 * 1000 / (4 * math.pi)) ** (1 / 3)
    dz, dy, dx = np.mgrid[-4:5, -8:9, -8:9]
    n = int(((dz * 2.0) ** 2 + dy ** 2 + dx ** 2 <= rad ** 2).sum())
    assert les.suv_max == pytest.approx(101.0)
    assert les.suv_peak == pytest.approx((101.0 + (n - 1)) / n, rel=1e-6)
    assert np.allclose(les.max_point_mm, index_to_mm(_image(suv), spike))


def test_axes_of_an_axial_ellipse():
    x, y, z = _coords()
    mask = ((x / 10.0) ** 2 + (y / 5.0) ** 2 <= 1.0) & (np.abs(z) <= 4)
    (les,) = measure(*_study(mask, np.where(mask, 4.0, 0.0)))
    assert les.short_axis_mm == pytest.approx(10.0, abs=1.0)
    assert les.long_axis_mm == pytest.approx(20.0, abs=1.0)


def test_inside_and_distance_to_structures():
    x, y, z = _coords()
    mask = (np.abs(x) <= 5) & (np.abs(y) <= 5) & (np.abs(z) <= 4)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[(x >= 13) & (x <= 20)] = 1  # aorta 8 mm (voxel centres) to the patient's left
    labels[x <= -37] = 2  # far away: not listed
    labels[mask & (x <= 0)] = 3  # half of the lesion lies in the oesophagus
    names = {1: "aorta", 2: "rib_right_5", 3: "esophagus"}
    (les,) = measure(*_study(mask, np.where(mask, 4.0, 0.0), labels, names))
    assert les.distance_mm["aorta"] == pytest.approx(8.0, abs=0.01)
    assert "rib_right_5" not in les.distance_mm
    assert les.inside["esophagus"] == pytest.approx(6 / 11, abs=0.01)
    assert les.distance_mm["esophagus"] == 0.0
    assert "aorta" not in les.inside


def test_touching_lesions_are_split_at_the_suv_saddle():
    syn = make_synthetic({"primary": Sphere((-45.0, 0.0, 10.0), 26.0, 12.0),
                          "node": Sphere((-45.0, 0.0, -13.0), 12.0, 5.0)})
    suv = sitk.GetArrayFromImage(syn.pet)
    k, j, i = np.indices(suv.shape)
    xyz = index_to_mm(syn.ct, np.stack([k, j, i], axis=-1))
    near = np.linalg.norm(xyz - np.array([-45.0, 0.0, 0.0]), axis=-1) <= 30.0
    mask = (suv > 2.0) & near
    plain, n_plain = label_lesions(mask)
    assert n_plain == 1
    split, n = label_lesions(mask, suv, (2.0, 1.5, 1.5), 0.75, 0.2)
    assert n == 2
    les = measure(LesionMask(mask, "suv"), syn.ct, syn.pet, syn.anatomy)
    assert len(les) == 2
    assert les[0].contiguous_with == (2,) and les[1].contiguous_with == (1,)


def test_noisy_single_tumour_is_not_split():
    syn = make_synthetic({"primary": Sphere((-45.0, 0.0, 10.0), 30.0, 10.0)}, noise_sd=0.1)
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    assert len(measure(lm, syn.ct, syn.pet, syn.anatomy)) == 1
