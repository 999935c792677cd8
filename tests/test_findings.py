"""Lesion measurements (known spheres) and classification (synthetic thorax)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import SimpleITK as sitk
from lesion_synth import Sphere, default_spheres, make_synthetic

from nstage.anatomy.base import Anatomy
from nstage.findings import Lesion, classify, label_lesions, measure
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


@pytest.fixture(scope="module")
def sorted_findings():
    spheres = default_spheres()
    spheres.update({
        "liver_met": Sphere((-50.0, 0.0, -66.0), 14.0, 9.0),
        "contra": Sphere((55.0, 10.0, 20.0), 18.0, 7.0),  # left lung, large: second primary
        "perihilar": Sphere((-30.0, -5.0, -12.0), 9.0, 6.0),  # right lung next to the bronchus
        "peripheral": Sphere((-60.0, 25.0, 30.0), 10.0, 6.0),  # right lung, far from hilum
        "bone": Sphere((0.0, 50.0, 20.0), 12.0, 7.0, hu=300.0),  # in the vertebra
    })
    syn = make_synthetic(spheres)
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    t0 = time.perf_counter()
    lesions = measure(lm, syn.ct, syn.pet, syn.anatomy)
    found = classify(lesions, syn.anatomy)
    return syn, lesions, found, time.perf_counter() - t0


def _at(syn, lesions, name, tol=4.0) -> Lesion:
    c = np.array(syn.spheres[name].centre)
    hits = [le for le in lesions if np.linalg.norm(np.array(le.centroid_mm) - c) <= tol]
    assert hits, f"{name} not found"
    return hits[0]


def test_primary_nodes_and_others(sorted_findings):
    syn, lesions, found, elapsed = sorted_findings
    assert elapsed < 5.0
    primary = _at(syn, lesions, "primary")
    assert found.primary is primary and primary.kind == "primary" and primary.side == "right"
    assert found.second_primary is _at(syn, lesions, "contra")
    assert found.second_primary.second_primary and found.second_primary.side == "left"
    n4r = _at(syn, lesions, "node_4r")
    assert n4r.kind == "node" and n4r.side == "right" and n4r.zone == "mediastinal"
    n7 = _at(syn, lesions, "node_7")
    assert n7.kind == "node" and n7.side == "midline"
    peri = _at(syn, lesions, "perihilar")
    assert peri.kind == "node" and peri.zone == "intrapulmonary"
    assert _at(syn, lesions, "peripheral").kind == "other"
    for name, word in (("liver_met", "liver"), ("bone", "skeletal")):
        le = _at(syn, lesions, name)
        assert le.kind == "other" and word in le.kind_reason
    assert {id(le) for le in found.nodes} == {id(n4r), id(n7), id(peri)}
    assert all(le.kind_reason for le in lesions)


def test_cervical_and_supraclavicular_levels():
    syn = make_synthetic({"primary": default_spheres()["primary"],
                          "neck": Sphere((-20.0, 0.0, 66.0), 10.0, 6.0)})
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    lesions = measure(lm, syn.ct, syn.pet, syn.anatomy)
    neck = _at(syn, lesions, "neck")
    classify(lesions, syn.anatomy)
    assert neck.kind == "node" and neck.zone == "supraclavicular"
    classify(lesions, syn.anatomy, thresholds={"classification": {"neck_above_apex_mm": 4.0}})
    assert neck.kind == "other" and "cervical" in neck.kind_reason


def test_primary_reaching_into_the_mediastinum_is_direct_extension():
    syn = make_synthetic({"primary": Sphere((-18.0, 10.0, 10.0), 26.0, 10.0)})
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    found = classify(measure(lm, syn.ct, syn.pet, syn.anatomy), syn.anatomy)
    assert found.primary is not None and found.primary.direct_extension
    ext = [n for n in found.nodes if n.direct_extension]
    assert len(ext) == 1 and ext[0].id == found.primary.id
    assert ext[0].centroid_mm[0] > found.primary.centroid_mm[0]  # towards the midline
    assert "direct extension" in ext[0].kind_reason


def test_symmetric_mild_hilar_nodes_are_flagged():
    syn = make_synthetic({"primary": default_spheres()["primary"]})

    def hilar(x: float, suv: float) -> Lesion:
        return Lesion(id=int(x), suv_max=suv, suv_peak=suv, suv_mean=suv, volume_ml=0.8,
                      tlg=suv, short_axis_mm=10.0, long_axis_mm=11.0, centroid_mm=(x, -5.0, -2.0),
                      max_point_mm=(x, -5.0, -2.0), inside={"body": 1.0},
                      distance_mm={"main_bronchus_left": 2.0, "body": 0.0},
                      zones={"hilar": 1.0, "nodal": 1.0})

    mild = [hilar(-35.0, 3.1), hilar(35.0, 3.3)]
    found = classify(mild, syn.anatomy)
    assert all(n.zone == "hilar" and n.symmetric_hilar for n in found.nodes)
    assert any("symmetric" in note for note in found.notes)
    hot = [hilar(-35.0, 3.1), hilar(35.0, 7.5)]
    assert not any(n.symmetric_hilar for n in classify(hot, syn.anatomy).nodes)


def test_no_lesions():
    syn = make_synthetic({})
    found = classify([], syn.anatomy)
    assert found.primary is None and not found.nodes and found.notes


def _mass(x: float, short_axis: float, lung_right: float, lung_left: float = 0.0,
          lung_inside: float = 0.0, tlg: float = 300.0) -> Lesion:
    """A lesion at z = +10 mm (between the synthetic lungs) with the given lung contact."""
    lung = max(lung_right, lung_left)
    return Lesion(id=int(abs(x) * 10 + short_axis), suv_max=10.0, suv_peak=9.0, suv_mean=6.0,
                  volume_ml=tlg / 6.0, tlg=tlg, short_axis_mm=short_axis,
                  long_axis_mm=short_axis * 1.3, centroid_mm=(x, 5.0, 10.0),
                  max_point_mm=(x, 5.0, 10.0),
                  inside={"body": 1.0, "lung": lung_inside, "lung_right": lung_inside},
                  surround={"body": 1.0, "lung": lung, "lung_right": lung_right,
                            "lung_left": lung_left},
                  distance_mm={"body": 0.0}, zones={"mediastinal": 0.8, "nodal": 0.8})


def test_central_tumour_against_one_lung_is_the_primary_when_no_lung_lesion():
    """A hilar / paramediastinal tumour displaces the aerated lung, so it sits where nodes sit
    (seen on real CTs A0001/A0002); without any lung lesion it is the primary, on its side."""
    syn = make_synthetic({})
    mass = _mass(-15.0, 42.0, lung_right=0.4)
    node = _mass(12.0, 12.0, lung_right=0.0, lung_left=0.1, tlg=8.0)
    found = classify([mass, node], syn.anatomy)
    assert found.primary is mass and mass.kind == "primary" and mass.side == "right"
    assert mass.zone == "central" and "lower confidence" in mass.kind_reason
    assert found.nodes == [node] and node.kind == "node"
    assert any("central primary" in n for n in found.notes)


@pytest.mark.parametrize("case", ["node-sized", "between both lungs", "no lung contact",
                                  "lung lesion present"])
def test_central_primary_rule_applies_only_to_large_masses_against_one_lung(case):
    syn = make_synthetic({})
    mass = {"node-sized": _mass(-15.0, 25.0, lung_right=0.4),
            "between both lungs": _mass(-2.0, 42.0, lung_right=0.3, lung_left=0.25),
            "no lung contact": _mass(-15.0, 42.0, lung_right=0.0),
            "lung lesion present": _mass(-15.0, 42.0, lung_right=0.4)}[case]
    lesions = [mass]
    if case == "lung lesion present":
        lesions.append(_mass(-45.0, 20.0, lung_right=0.9, lung_inside=0.9, tlg=50.0))
    found = classify(lesions, syn.anatomy)
    assert mass.kind == "node" and mass in found.nodes
    assert found.primary is not mass
