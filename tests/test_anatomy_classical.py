"""Classical CT-only anatomy backend, thorax crop and ``nstage anatomy``: phantom truth and real CTs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_path
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from nstage.anatomy import segment
from nstage.anatomy.base import Anatomy
from nstage.anatomy.classical import segment_classical
from nstage.anatomy.crop import thorax_box
from nstage.errors import UsageError
from nstage.geometry import crop, mm_to_index, paste
from nstage.landmarks import find


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def phantom():
    from nstage.phantom import PhantomSpec, make_phantom

    return make_phantom(PhantomSpec())


@pytest.fixture(scope="module")
def classical_on_phantom(phantom):
    box = thorax_box(phantom.ct)
    anatomy = segment_classical(crop(phantom.ct, box))
    full = Anatomy(paste(phantom.ct, anatomy.labels, box), anatomy.names, phantom.ct, "classical")
    return box, anatomy, full


def test_thorax_box_covers_the_phantom_lungs(phantom, classical_on_phantom):
    box, _, _ = classical_on_phantom
    lungs = phantom.anatomy.mask("lung")
    inside = np.zeros_like(lungs)
    inside[box] = True
    assert lungs[~inside].sum() == 0


def test_thorax_box_without_lungs_is_the_whole_image():
    img = sitk.GetImageFromArray(np.full((20, 40, 40), 40, np.int16))
    assert thorax_box(img) == (slice(0, 20), slice(0, 40), slice(0, 40))


def test_lungs_match_phantom_truth_and_are_not_swapped(phantom, classical_on_phantom):
    _, _, full = classical_on_phantom
    truth = phantom.anatomy
    for side in ("left", "right"):
        assert dice(full.mask(f"lung_{side}"), truth.mask(f"lung_{side}")) > 0.9
    xl = np.nonzero(full.mask("lung_left"))[2].mean()
    xr = np.nonzero(full.mask("lung_right"))[2].mean()
    assert xl > xr  # +x (larger column) is the patient's left


def test_trachea_matches_phantom_truth(phantom, classical_on_phantom):
    _, _, full = classical_on_phantom
    truth = phantom.anatomy.mask("trachea")
    ks = np.nonzero(truth.any(axis=(1, 2)))[0]
    zone = np.zeros_like(truth)
    zone[ks[0]:ks[-1] + 1] = True  # the larynx above is not "trachea" in the truth
    assert dice(full.mask("trachea") & zone, truth) > 0.7
    assert full.has("main_bronchus_left") and full.has("main_bronchus_right")


def test_carina_within_5_mm_of_phantom_truth(phantom, classical_on_phantom):
    _, anatomy, _ = classical_on_phantom
    carina = find(anatomy).get("carina")
    assert carina is not None and carina.method == "measured"
    truth = np.array(phantom.truth["landmarks"]["carina_mm"])
    assert np.linalg.norm(np.array(carina.point_mm) - truth) <= 5.0


def test_other_structures_found_on_phantom(classical_on_phantom):
    _, anatomy, _ = classical_on_phantom
    for name in ("spine", "sternum", "mediastinum", "heart", "aorta", "body"):
        assert anatomy.has(name), name
    # The spine lies behind the trachea, the sternum in front of it.
    ys = {n: np.nonzero(anatomy.mask(n))[1].mean() for n in ("spine", "trachea", "sternum")}
    assert ys["sternum"] < ys["trachea"] < ys["spine"]


def test_bones_and_vessels_overlap_phantom_truth(phantom, classical_on_phantom):
    _, _, full = classical_on_phantom
    truth = phantom.anatomy
    # "spine" expands to TotalSegmentator's per-vertebra classes in the truth (GROUPS).
    for name, min_dice in (("spine", 0.6), ("sternum", 0.6), ("clavicula_left", 0.5),
                           ("clavicula_right", 0.5), ("aorta", 0.4), ("esophagus", 0.3)):
        assert dice(full.mask(name), truth.mask(name)) > min_dice, name
    heart = truth.mask("heart")
    assert (full.mask("heart") & heart).sum() >= 0.7 * heart.sum()


def test_segment_dispatch(phantom, monkeypatch, tmp_path):
    small = crop(phantom.ct, (slice(40, 80), slice(40, 220), slice(20, 236)))
    with pytest.raises(UsageError):
        segment(small, backend="magic")
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "none"))
    assert segment(small, backend="auto").backend == "classical"


# ----------------------------------------------------------------------------- real CTs

def _run(path):
    from nstage.commands.anatomy import read_ct

    ct, _ = read_ct(path)
    box = thorax_box(ct)
    work = crop(ct, box)
    anatomy = segment_classical(work)
    return ct, work, anatomy, find(anatomy)


def _sides_ok(anatomy):
    xl = np.nonzero(anatomy.mask("lung_left"))[2].mean()
    xr = np.nonzero(anatomy.mask("lung_right"))[2].mean()
    return xl > xr


def test_a0002_carina_lungs_and_tumour_boxes():
    import pydicom

    case = real_path("lung-pet-ct-dx-A0002")
    _, work, anatomy, lms = _run(case / "ct")
    carina = lms.get("carina")
    # The split of the airway shows on the slice at z=232 mm; the slice above (240) still
    # shows one trachea section: a reader puts the carina between them.
    assert carina is not None and 224.0 <= carina.z_mm <= 240.0
    assert _sides_ok(anatomy)
    left, right = anatomy.mask("lung_left"), anatomy.mask("lung_right")
    n = 0
    for xml in (case / "tumor-boxes").glob("*.xml"):
        ds = pydicom.dcmread(case / "ct" / xml.stem, stop_before_pixels=True) \
            if (case / "ct" / xml.stem).exists() else None
        if ds is None:
            matches = [f for f in (case / "ct").iterdir()
                       if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == xml.stem]
            if not matches:
                continue
            ds = pydicom.dcmread(matches[0], stop_before_pixels=True)
        bb = ET.parse(xml).getroot().find("object/bndbox")
        x0, y0, x1, y1 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        row, col = (float(v) for v in ds.PixelSpacing)
        centre = pos + np.array([0.5 * (x0 + x1) * col, 0.5 * (y0 + y1) * row, 0.0])
        k, j, i = (int(round(v)) for v in mm_to_index(work, centre))
        if not (0 <= k < left.shape[0]):
            continue
        # Hilar tumours sit on the lung's medial edge: the right lung's outline on that slice,
        # widened by 10 mm, must hold the box centre; the left lung's must not.
        r = int(round(10.0 / work.GetSpacing()[0]))
        region = ndi.binary_dilation(convex_hull_image(right[k]), iterations=r)
        assert region[j, i], f"tumour box {xml.name} not in the right lung region"
        assert not (left[k].any() and convex_hull_image(left[k])[j, i])
        n += 1
    assert n >= 3


def test_a0001_full_chest():
    _, work, anatomy, lms = _run(real_path("lung-pet-ct-dx-A0001", "ct.mha"))
    assert _sides_ok(anatomy)
    carina = lms.get("carina")
    assert carina is not None and carina.method == "measured"
    apex = min(lms.z("lung_apex_left"), lms.z("lung_apex_right"))
    dome = max(lms.z("diaphragm_left"), lms.z("diaphragm_right"))
    # The carina lies 4-10 cm below the apices, well above the diaphragm, near the midline.
    assert 40.0 <= apex - carina.z_mm <= 110.0 and carina.z_mm > dome + 30.0
    body_x = np.nonzero(anatomy.mask("body").any(axis=(0, 1)))[0]
    mid = 0.5 * (body_x[0] + body_x[-1])
    ci = mm_to_index(work, carina.point_mm)[2]
    assert abs(ci - mid) * work.GetSpacing()[0] < 30.0
    for v in lms.lung_volume_ml.values():
        assert 1500.0 < v < 5000.0


def test_contrast_crop_carina_and_aorta():
    _, work, anatomy, lms = _run(real_path("totalsegmentator-crops",
                                           "mediastinum-contrast-ct-1.5mm.nii.gz"))
    carina = lms.get("carina")
    # Trachea one section at z=729 mm, two main bronchi at z=720 mm (looked at slice by slice).
    assert carina is not None and 715.0 <= carina.z_mm <= 730.0
    assert _sides_ok(anatomy)
    assert anatomy.has("aorta")


def test_heart_crop_lungs_not_swapped():
    _, _, anatomy, _ = _run(real_path("totalsegmentator-crops", "heart-contrast-ct-1.5mm.nii.gz"))
    assert anatomy.has("lung_left") and anatomy.has("lung_right")
    assert _sides_ok(anatomy)


def test_inlet_trachea_on_thin_slices():
    _, work, anatomy, lms = _run(real_path("nsclc-radiogenomics-R01-005", "chest-ct-inlet"))
    tr = anatomy.mask("trachea")
    assert tr.any(axis=(1, 2)).sum() >= tr.shape[0] - 1  # in (almost) every 1 mm slice
    assert lms.trachea
    level = lms.trachea[0]
    assert level.right_border_x_mm < level.centre_x_mm < level.left_border_x_mm
    width = level.left_border_x_mm - level.right_border_x_mm
    assert 10.0 < width < 30.0  # an adult trachea is ~15-25 mm wide
    assert lms.get("carina") is None  # the trachea runs out of the slab: no carina in view


# ----------------------------------------------------------------------------- command

def test_anatomy_command_writes_outputs_on_the_input_grid(phantom, tmp_path):
    from nstage.cli import main

    ct_path = tmp_path / "ct.mha"
    # A flipped direction: outputs must come back on this exact grid.
    flipped = sitk.Flip(phantom.ct, [True, False, False])
    sitk.WriteImage(flipped, str(ct_path))
    out = tmp_path / "out"
    assert main(["anatomy", "--ct", str(ct_path), "--out", str(out),
                 "--backend", "classical"]) == 0
    lab = sitk.ReadImage(str(out / "anatomy.mha"))
    assert lab.GetSize() == flipped.GetSize()
    assert np.allclose(lab.GetDirection(), flipped.GetDirection())
    assert np.allclose(lab.GetOrigin(), flipped.GetOrigin())
    names = json.loads((out / "labels.json").read_text())
    lms = json.loads((out / "landmarks.json").read_text())
    assert "lung_left" in names.values() and "trachea" in names.values()
    truth = np.array(phantom.truth["landmarks"]["carina_mm"])
    assert np.linalg.norm(np.array(lms["carina_mm"]) - truth) <= 5.0
    assert lms["lung_volume_ml"]["left"] > 1000 and lms["lung_volume_ml"]["right"] > 1000
    assert all({"method", "source", "z_mm"} <= set(v) for v in lms["landmarks"].values())
    # The left lung in the written file is on the patient's left (+x) in physical space.
    arr = sitk.GetArrayFromImage(lab)
    inv = {n: int(v) for v, n in names.items()}
    idx = np.argwhere(arr == inv["lung_left"])[:2000, ::-1].astype(float)
    pts = np.array([lab.TransformContinuousIndexToPhysicalPoint(p) for p in idx])
    assert pts[:, 0].mean() > lms["carina_mm"][0]


def test_anatomy_command_unreadable_input(tmp_path, capsys):
    from nstage.cli import main

    bad = tmp_path / "ct.mha"
    bad.write_text("not an image")
    assert main(["anatomy", "--ct", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "ct.mha" in capsys.readouterr().err
    assert not (tmp_path / "o" / "anatomy.mha").exists()
