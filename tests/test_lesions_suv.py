"""SUV lesion backend on synthetic PET/CT with known spheres (tests/lesion_synth.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from lesion_synth import Sphere, blurred_max, default_spheres, make_synthetic
from scipy import ndimage as ndi

from nstage import lesions
from nstage.errors import GeometryError, ModelError, UsageError
from nstage.geometry import index_to_mm
from nstage.lesions.suv import segment_suv


def _components(mask: np.ndarray, ref: sitk.Image) -> list[tuple[np.ndarray, np.ndarray]]:
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    return [(index_to_mm(ref, np.argwhere(lab == c).mean(axis=0)), lab == c)
            for c in range(1, n + 1)]


def _found(syn, mask, name, tol_mm=3.0):
    centre = np.array(syn.spheres[name].centre)
    hits = [m for c, m in _components(mask, syn.ct) if np.linalg.norm(c - centre) <= tol_mm]
    return hits[0] if hits else None


@pytest.fixture(scope="module", params=[0.0, 0.1], ids=["noise-free", "noisy"])
def study(request):
    spheres = default_spheres()
    # A node 6 mm from the hot myocardium (about one PET FWHM; next to the heart).
    spheres["node_heart"] = Sphere((-20.0, 30.0, -45.0), 12.0, 6.0)
    syn = make_synthetic(spheres, noise_sd=request.param, myocardium_suv=8.0)
    return syn, segment_suv(syn.ct, syn.pet, syn.anatomy)


def test_every_sphere_found_with_its_suvmax(study):
    syn, lm = study
    suv = sitk.GetArrayFromImage(syn.pet)
    assert lm.backend == "suv"
    assert lm.mask.shape == syn.anatomy.labels.shape
    for name in syn.spheres:
        comp = _found(syn, lm.mask, name)
        assert comp is not None, f"{name} not found"
        assert suv[comp].max() == pytest.approx(blurred_max(syn, name), rel=0.05)
    assert len(_components(lm.mask, syn.ct)) == len(syn.spheres)


def test_hot_myocardium_is_suppressed_but_the_node_next_to_it_is_not(study):
    syn, lm = study
    heart = syn.anatomy.mask("heart")
    assert not (lm.mask & heart).any()
    # Spill-out of the myocardium (8 SUV, blurred) outside the heart is not a lesion: every
    # component is one of the spheres.
    centres = [c for c, _ in _components(lm.mask, syn.ct)]
    truth = np.array([s.centre for s in syn.spheres.values()])
    for c in centres:
        assert np.min(np.linalg.norm(truth - c, axis=1)) <= 3.0
    assert _found(syn, lm.mask, "node_heart") is not None


def test_reference_values_come_from_aorta_and_liver(study):
    syn, lm = study
    ref = lm.reference_suv
    assert ref["blood_pool"] == pytest.approx(1.8, rel=0.06)
    assert ref["liver"] == pytest.approx(2.2, rel=0.1)
    assert ref["threshold"] == pytest.approx(max(2.5, ref["blood_pool"]))
    assert ref["liver_threshold"] >= ref["threshold"]
    assert any("descending aorta" in n for n in lm.notes)


def test_floor_override_raises_the_threshold():
    syn = make_synthetic()
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy, thresholds={"detection": {"suv_floor": 7.0}})
    assert lm.reference_suv["threshold"] == 7.0
    comps = _components(lm.mask, syn.ct)
    assert len(comps) == 1
    assert _found(syn, lm.mask, "primary") is not None


def test_brown_fat_is_dropped():
    syn = make_synthetic(brown_fat=True)
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    assert len(_components(lm.mask, syn.ct)) == len(syn.spheres)
    assert any("brown fat" in n for n in lm.notes)


def test_blood_pool_falls_back_to_mediastinum_without_aorta():
    syn = make_synthetic()
    labels = syn.anatomy.labels.copy()
    labels[labels == 4] = 0  # no aorta
    syn.anatomy.labels = labels
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    assert any("mediastinal soft tissue" in n for n in lm.notes)
    assert 0.5 < lm.reference_suv["blood_pool"] < 2.5


def test_no_uptake_gives_an_empty_mask():
    syn = make_synthetic({})
    flat = sitk.GetArrayFromImage(syn.pet)
    flat = np.minimum(flat, 1.5)
    pet = sitk.GetImageFromArray(flat)
    pet.CopyInformation(syn.pet)
    lm = segment_suv(syn.ct, pet, syn.anatomy)
    assert not lm.mask.any()


def test_pet_on_another_grid_is_refused():
    syn = make_synthetic({})
    shrunk = sitk.Shrink(syn.pet, [2, 2, 2])
    with pytest.raises(GeometryError, match="working CT grid"):
        segment_suv(syn.ct, shrunk, syn.anatomy)


def test_dispatcher_picks_suv_without_a_model(tmp_path):
    syn = make_synthetic({"primary": default_spheres()["primary"]})
    lm = lesions.segment(syn.ct, syn.pet, syn.anatomy, backend="auto")
    assert lm.backend == "suv"
    assert lesions.segment(syn.ct, syn.pet, syn.anatomy, backend="suv").mask.any()
    with pytest.raises(UsageError):
        lesions.segment(syn.ct, syn.pet, syn.anatomy, backend="magic")
    with pytest.raises(ModelError):
        lesions.segment(syn.ct, syn.pet, syn.anatomy, backend="nnunet",
                        model_dir=tmp_path / "missing")


def test_core_import_does_not_need_torch():
    code = ("import sys, nstage.lesions, nstage.lesions.suv, nstage.findings, nstage.positivity;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
