"""SUV lesion backend on synthetic PET/CT with known spheres (tests/lesion_synth.py)."""

from __future__ import annotations

import math
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


def _lesion_centres(syn, lm) -> list[np.ndarray]:
    """Centroids (mm) of the lesions as the pipeline labels them (split at SUV saddles)."""
    from nstage.findings import label_lesions
    from nstage.geometry import spacing_zyx
    from nstage.thresholds import resolve

    m = resolve(None)["measurement"]
    lab, n = label_lesions(lm.mask, sitk.GetArrayFromImage(syn.pet), spacing_zyx(syn.ct),
                          m["split_saddle_fraction"], m["min_piece_ml"])
    return [index_to_mm(syn.ct, np.argwhere(lab == i).mean(axis=0)) for i in range(1, n + 1)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_node_hidden_on_the_primarys_flank_is_its_own_lesion(seed):
    """A 12 mm node (activity 4.6) whose edge lies 3 mm above a 26 mm primary (activity 10),
    PET of 6.5 mm FWHM on 4 mm voxels with 10% noise: at PET resolution the node is a shoulder
    on the primary's falling edge (blurred SUV about 3.2-3.6 against 10-11 in the primary), no
    maximum of its own, and the primary's 41% outline stops below it. It must still be found
    as a lesion of its own (a hilar node beside a central tumour is N1, not the tumour), and
    the same PET without the node must hold the primary alone: the flank search finds no
    focus in the primary's own blur or in the noise."""
    primary = Sphere((-45.0, 0.0, 10.0), 26.0, 10.0)
    node_centre = (-45.0, 0.0, 10.0 + 13.0 + 3.0 + 6.0)
    syn = make_synthetic({"primary": primary, "node": Sphere(node_centre, 12.0, 4.6)},
                         noise_sd=0.1, seed=seed)
    lm = segment_suv(syn.ct, syn.pet, syn.anatomy)
    centres = _lesion_centres(syn, lm)
    assert len(centres) == 2, (centres, lm.notes)
    assert min(np.linalg.norm(c - np.array(node_centre)) for c in centres) <= 3.0
    assert any("on the flank of a hotter lesion" in n for n in lm.notes), lm.notes

    alone = make_synthetic({"primary": primary}, noise_sd=0.1, seed=seed)
    lm = segment_suv(alone.ct, alone.pet, alone.anatomy)
    assert len(_lesion_centres(alone, lm)) == 1
    assert not any("flank" in n for n in lm.notes), lm.notes


def test_native_pet_maximum_is_read_where_the_ct_grid_misses_it():
    """A PET on its own 4 mm grid with one hot voxel (SUV 3.0) and a CT grid of 5 mm slices
    whose voxel centres straddle it: the CT-grid sample misses the maximum, the native reading
    finds it within the sphere and not beyond it, wherever the two grids' origins lie."""
    from nstage.lesions.suv import native_ball_max, native_points_at_least

    pet = sitk.Image((20, 20, 20), sitk.sitkFloat32)
    pet.SetSpacing((4.0, 4.0, 4.0))
    pet.SetOrigin((-40.0, -40.0, -40.0))
    pet[10, 10, 10] = 3.0  # x = y = z = 0 mm
    ct = sitk.Image((64, 64, 16), sitk.sitkInt16)
    ct.SetSpacing((1.25, 1.25, 5.0))
    ct.SetOrigin((-40.0, -40.0, -37.5))  # slices at z = ..., -2.5, +2.5, ...: none at 0
    on_ct = sitk.GetArrayFromImage(sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear))
    assert on_ct.max() < 2.5
    centre = np.rint(np.array(ct.TransformPhysicalPointToContinuousIndex((0.0, 0.0, 2.5))[::-1]))
    far = np.rint(np.array(ct.TransformPhysicalPointToContinuousIndex((0.0, 10.0, 2.5))[::-1]))
    got = native_ball_max(pet, ct, np.array([centre, far], dtype=int), 6.2)
    assert got[0] == pytest.approx(3.0) and got[1] == pytest.approx(0.0)
    pts = native_points_at_least(pet, ct, 2.5)
    assert len(pts) == 1
    assert np.allclose(index_to_mm(ct, pts[0].astype(float)), (0.0, 0.0, 2.5), atol=2.5)


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


def test_unlabelled_liver_uptake_is_not_a_lesion():
    """Anatomy without a liver (as from the classical backend): the phantom's liver (SUV about
    2.5-3 after noise) crosses the 2.5 seed threshold, but it is organ-sized and barely above
    it (and no seed stands out from its plateau), so it is diffuse organ uptake, not a lesion.
    With both rules switched off it would be reported, which is what the test guards
    against."""
    from nstage.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(nodes=(), primary_side="right", seed=5))
    anatomy = ph.anatomy
    liver = anatomy.mask("liver")
    assert liver.sum() > 0, "phantom thorax should include the upper liver"
    labels = anatomy.labels.copy()
    labels[liver] = 0  # the backend found no liver
    anatomy.labels = labels
    pet = ph.pet
    pet_on_ct = sitk.Resample(pet, ph.ct, sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
    lm = segment_suv(ph.ct, pet_on_ct, anatomy)
    assert not (lm.mask & liver).any()
    off = segment_suv(ph.ct, pet_on_ct, anatomy,
                      thresholds={"detection": {"diffuse_min_volume_ml": 1e9,
                                                "plateau_min_volume_ml": 1e9}})
    assert (off.mask & liver).any()
    assert any("diffuse organ uptake" in n for n in lm.notes)


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


# --------------------------------------------------------------------------- phantoms

phantom = pytest.importorskip("nstage.phantom")

PHANTOM_CASES = {
    "4R+7 right, all confounders": dict(nodes=("4R", "7"), primary_side="right", seed=0,
                                        confounders=frozenset(phantom.CONFOUNDERS)),
    "10L+9L left, all confounders": dict(nodes=("10L", "9L"), primary_side="left", seed=8,
                                         confounders=frozenset(phantom.CONFOUNDERS)),
    "2R+4L left, myocardium": dict(nodes=("2R", "4L"), primary_side="left", seed=2,
                                   confounders=frozenset({"hot-myocardium", "brown-fat"})),
}


def _noise_sd(suv: float) -> float:
    # The phantom's PET noise model (nstage/phantom/pet.py): sd = 0.09 sqrt(2.2 SUV).
    return 0.09 * math.sqrt(2.2 * max(suv, 0.02))


@pytest.fixture(scope="module", params=list(PHANTOM_CASES), ids=list(PHANTOM_CASES))
def phantom_run(request):
    from nstage.findings import measure
    from nstage.geometry import resample_to
    from nstage.landmarks import find
    from nstage.placement import place

    ph = phantom.make_phantom(phantom.PhantomSpec(**PHANTOM_CASES[request.param]))
    pet = resample_to(ph.pet, ph.ct, pixel_type=sitk.sitkFloat32)
    lm = segment_suv(ph.ct, pet, ph.anatomy)
    labels, lesions = measure(lm, ph.ct, pet, ph.anatomy, return_labels=True, pet_native=ph.pet)
    found = place(lesions, find(ph.anatomy))
    return ph, lm, labels, lesions, found


def _nearest(lesions, point, tol=10.0):
    p = np.asarray(point)
    best = min(lesions, key=lambda le: np.linalg.norm(np.asarray(le.centroid_mm) - p),
               default=None)
    if best is None or np.linalg.norm(np.asarray(best.centroid_mm) - p) > tol:
        return None
    return best


def _native_max_in_truth(ph, label_value: int) -> float:
    """Max of the (noisy) PET on its own grid over voxels centred in the true lesion."""
    from nstage.geometry import mm_to_index

    where = np.argwhere(ph.lesion_labels == label_value)
    corners = index_to_mm(ph.ct, np.array([where.min(axis=0), where.max(axis=0)]))
    pk = mm_to_index(ph.pet, corners)
    lo = np.maximum(np.floor(pk.min(axis=0)).astype(int) - 1, 0)
    hi = np.ceil(pk.max(axis=0)).astype(int) + 2
    arr = sitk.GetArrayFromImage(ph.pet)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    kji = np.stack(np.meshgrid(*[np.arange(a, a + n) for a, n in zip(lo, arr.shape, strict=True)],
                               indexing="ij"), axis=-1).reshape(-1, 3)
    idx = np.rint(mm_to_index(ph.ct, index_to_mm(ph.pet, kji))).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(ph.lesion_labels.shape)), axis=1)
    inside = np.zeros(len(idx), dtype=bool)
    inside[ok] = ph.lesion_labels[tuple(idx[ok].T)] == label_value
    return float(arr.reshape(-1)[inside].max())


@pytest.mark.slow
def test_phantom_primary_and_counted_nodes_found(phantom_run):
    from nstage.positivity import assess

    ph, lm, _, lesions, found = phantom_run
    truth = ph.truth["primary"]
    prim = _nearest(lesions, truth["centroid_mm"])
    assert prim is not None and found.primary.lesion is prim
    assert found.primary.side == truth["side"]
    node_ids = {p.id for p in found.nodes}
    for node in (n for n in ph.truth["nodes"] if n["counts"]):
        les = _nearest(lesions, node["centroid_mm"])
        assert les is not None and les.id in node_ids, f"{node['station']} not a node candidate"
        call = assess(les, lm.reference_suv)
        assert call.positive, f"{node['station']}: {call.reason}"
        # The measurement finds the hottest PET voxel of the node (on the PET's own grid) ...
        native = _native_max_in_truth(ph, node["label_value"])
        assert les.suv_max >= native * 0.95
        # ... which is the phantom's noise-free blurred SUVmax within 5% plus the noise of
        # the hottest voxel (2.5 SD of the phantom's noise model at that SUV).
        allow = 0.05 + 2.5 * _noise_sd(node["suv_max_blurred"]) / node["suv_max_blurred"]
        if not les.contiguous_with:  # a node touching the primary also holds its spill-out
            assert les.suv_max == pytest.approx(node["suv_max_blurred"], rel=allow)
            # The contour is 41% of the *measured* SUVmax (CLINICAL.md 3): when noise lifts the
            # hottest voxel above the true maximum, the level rises with it and the outline
            # tightens on the blurred edge, roughly in proportion (seed 0, 4R: SUVmax +14%,
            # short axis 17.6 vs 19.7 mm). Beyond 2 mm only that excess is tolerated.
            excess = max(0.0, les.suv_max / node["suv_max_blurred"] - 1.05)
            tol = 2.0 + node["short_axis_mm"] * excess
            assert les.short_axis_mm == pytest.approx(node["short_axis_mm"], abs=tol)


@pytest.mark.slow
def test_phantom_confounders_not_counted(phantom_run):
    from nstage.positivity import assess

    ph, lm, _, lesions, found = phantom_run
    counted = [np.asarray(n["centroid_mm"]) for n in ph.truth["nodes"] if n["counts"]]
    for p in found.nodes:
        if assess(p.lesion, lm.reference_suv, symmetric_hilar=p.symmetric_hilar).positive:
            d = min(np.linalg.norm(np.asarray(p.lesion.centroid_mm) - c) for c in counted)
            assert d <= 10.0, f"positive node candidate at {p.lesion.centroid_mm}: {p.reason}"
    # Hot myocardium is never part of a lesion.
    assert not (lm.mask & ph.anatomy.mask("heart")).any()
    for conf in ph.truth["confounders"]:
        if conf["name"] == "distant-lesion":
            les = _nearest(lesions, conf["centroid_mm"], tol=12.0)
            assert les is not None and les.id in {p.id for p in found.others}
        if conf["name"] == "brown-fat":
            for c in conf["centroids_mm"]:
                les = _nearest(lesions, c, tol=15.0)
                assert les is None or les.id in {p.id for p in found.others}
