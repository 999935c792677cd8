"""The realistic PET model: `nstage phantom --realistic`, `--confounders`, and the synthetic PET
for real CTs (nstage.phantom.realct). What a test PET must look like (HELPERS: own coarser
grid, 6-7 mm resolution, count noise, physiological uptake)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.cli import main as cli_main
from nstage.errors import UsageError
from nstage.geometry import mm_to_index
from nstage.phantom import PhantomSpec, make_phantom
from nstage.phantom.pet import REALISTIC
from nstage.phantom.realct import Focal, Region, ellipsoid_mask, realistic_pet


@pytest.fixture(scope="module")
def realistic_phantom():
    return make_phantom(PhantomSpec(nodes=("4R",), primary_side="right", primary_lobe="lower",
                                    seed=3, realistic=True))


def _interior(ph, name: str, depth_mm: float) -> np.ndarray:
    """PET-grid voxels whose centre lies ``depth_mm`` inside the anatomy mask ``name``."""
    mask = ph.anatomy.mask(name)
    sp = ph.ct.GetSpacing()[::-1]
    deep = ndi.distance_transform_edt(mask, sampling=sp) >= depth_mm
    pet = ph.pet
    k, j, i = np.indices(sitk.GetArrayViewFromImage(pet).shape)
    origin, spacing = np.array(pet.GetOrigin()), np.array(pet.GetSpacing())
    xyz = origin + np.stack([i, j, k], -1) * spacing
    idx = np.rint(mm_to_index(ph.ct, xyz.reshape(-1, 3))).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(mask.shape)), axis=1)
    inside = np.zeros(len(idx), bool)
    inside[ok] = deep[tuple(idx[ok].T)]
    return inside.reshape(k.shape)


def test_realistic_pet_has_its_own_coarser_grid(realistic_phantom):
    ph = realistic_phantom
    pet, ct = ph.pet, ph.ct
    assert pet.GetSpacing() == pytest.approx((4.07, 4.07, 4.0))
    # Its own origin and spacing: along every axis, few PET voxel centres fall on a CT voxel
    # centre (an aligned grid would put all of them there).
    for axis in range(3):
        centres = pet.GetOrigin()[axis] + pet.GetSpacing()[axis] * np.arange(pet.GetSize()[axis])
        pos = (centres - ct.GetOrigin()[axis]) / ct.GetSpacing()[axis]
        assert np.mean(np.abs(pos - np.round(pos)) < 0.05) < 0.2, axis
    assert ph.truth["pet"]["realistic"] is True
    assert ph.truth["pet"]["fwhm_mm"] == pytest.approx(6.5)


def test_realistic_liver_blood_and_noise_levels(realistic_phantom):
    """Liver SUV about 2 with a per-voxel CoV of 10-15 %, blood pool about 1.6 (PERCIST
    reference ranges; EARL liver CoV < 15 %), measured on the PET's own grid."""
    ph = realistic_phantom
    arr = sitk.GetArrayFromImage(ph.pet)
    liver = arr[_interior(ph, "liver", 15.0)]
    aorta = arr[_interior(ph, "aorta", 6.0)]
    assert liver.size > 100 and aorta.size > 20
    assert liver.mean() == pytest.approx(2.0, abs=0.15)
    assert 0.10 <= liver.std() / liver.mean() <= 0.15
    assert aorta.mean() == pytest.approx(1.6, abs=0.15)


def test_noise_variance_grows_with_the_activity():
    """Poisson-like: noise variance proportional to the SUV (ratio of variances within 30 %
    of the ratio of the activities, for a cold and a warm uniform region)."""
    ct = sitk.Image([120, 120, 60], sitk.sitkInt16)
    ct.SetSpacing((1.5, 1.5, 3.0))
    ct += 40
    regions = [Region("cold", ellipsoid_mask(ct, (50, 90, 90), (35, 35, 60)), 0.5),
               Region("warm", ellipsoid_mask(ct, (130, 90, 90), (35, 35, 60)), 4.0)]
    syn = realistic_pet(ct, regions=regions, seed=7)
    noise = sitk.GetArrayFromImage(syn.pet) - sitk.GetArrayFromImage(syn.clean)
    var = {}
    for name, centre in (("cold", (50, 90, 90)), ("warm", (130, 90, 90))):
        inner = ellipsoid_mask(syn.pet, centre, (20, 20, 40))
        var[name] = float(noise[inner].var())
    assert var["warm"] / var["cold"] == pytest.approx(4.0 / 0.5, rel=0.3)


def test_point_spread_function_is_6_to_7_mm_fwhm():
    """A 1 mm hot point in a cold background: the noise-free PET's second moment along each
    axis gives the resolution (FWHM = 2.355 sigma), 6.5 mm plus the sampling, 6-7.5 mm."""
    ct = sitk.Image([100, 100, 100], sitk.sitkInt16)
    ct.SetSpacing((1.0, 1.0, 1.0))
    ct += 40
    syn = realistic_pet(ct, lesions=[Focal.sphere("point", (50.3, 49.6, 50.2), 1.5, 1000.0)],
                        tissue_suv={"soft_tissue": 0.0}, seed=0)
    clean = sitk.GetArrayFromImage(syn.clean).astype(float)
    k, j, i = np.indices(clean.shape)
    xyz = (np.array(syn.clean.GetOrigin())
           + np.stack([i, j, k], -1) * np.array(syn.clean.GetSpacing()))
    w = clean / clean.sum()
    centre = (xyz * w[..., None]).sum(axis=(0, 1, 2))
    for axis in range(3):
        sigma = np.sqrt(((xyz[..., axis] - centre[axis]) ** 2 * w).sum())
        assert 6.0 <= 2.355 * sigma <= 7.5, (axis, 2.355 * sigma)


def test_realistic_pet_for_a_real_ct(real_data):
    """A0001 with a placed node: own grid, noise, node soft tissue on the CT, truth SUVmax."""
    from conftest import real_path
    from realistic_cases import real_scene

    ct, base, _, nodes = real_scene("A0001", real_path)
    syn = realistic_pet(ct, regions=base, lesions=[nodes["4R"]], seed=2)
    assert syn.pet.GetSpacing() == pytest.approx(REALISTIC.voxel_mm)
    assert syn.pet.GetSize() != ct.GetSize()
    node = syn.lesions[0]
    # 12 mm node, activity 9: the PSF keeps about 2/3 of it (recovery of a 6 mm radius sphere).
    assert 5.0 < node["suv_max_blurred"] < 7.5
    ball = ellipsoid_mask(ct, nodes["4R"].centre_mm, (5, 5, 5))
    before = sitk.GetArrayFromImage(ct)[ball]
    after = sitk.GetArrayFromImage(syn.ct)[ball]
    fat = (before > -200) & (before < 20)
    assert fat.sum() > 20 and np.all(after[fat] == 35)  # fat became soft tissue (a node) ...
    assert np.array_equal(after[before < -950], before[before < -950])  # ... the airway stays
    liver = sitk.GetArrayFromImage(syn.pet)[ellipsoid_mask(syn.pet, (-80, 120, -410),
                                                           (20, 20, 20))]
    assert 0.08 <= liver.std() / liver.mean() <= 0.17


# ---------------------------------------------------------------------------- the CLI

def test_cli_realistic_phantom_with_physiological_confounders(tmp_path, capsys):
    out = tmp_path / "ph"
    rc = cli_main(["phantom", str(out), "--realistic", "--nodes", "7", "--seed", "2",
                   "--confounders", "myocardium,oesophagus,thymus,marrow,granulomatous-hila"])
    assert rc == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["spec"]["realistic"] is True
    names = {c["name"] for c in truth["confounders"]}
    assert names == {"hot-myocardium", "oesophagus", "thymus", "marrow", "granulomatous-hila"}
    for c in truth["confounders"]:
        if c["name"] in ("oesophagus", "thymus", "marrow"):
            # mild physiological uptake: above the 2.5 convention, below 4
            assert 2.5 <= c["suv_max_blurred"] <= 4.0, c
    hila = [n for n in truth["nodes"] if n.get("confounder") == "granulomatous-hila"]
    assert sorted(n["station"] for n in hila) == ["10L", "10R"]
    assert all(2.7 <= n["suv_max_blurred"] <= 3.4 and not n["counts"] for n in hila)
    assert 6.0 <= truth["myocardium_suv"] <= 9.0
    pet = sitk.ReadImage(str(next((out / "input" / "images" / "pet").glob("*.mha"))))
    assert pet.GetSpacing() == pytest.approx((4.07, 4.07, 4.0))
    assert "realistic PET" in capsys.readouterr().out


def test_cli_unknown_confounder_exits_2(tmp_path, capsys):
    assert cli_main(["phantom", str(tmp_path / "x"), "--confounders", "thymus,spleen"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown confounder 'spleen'" in err[0]
    assert not (tmp_path / "x").exists()


def test_spec_refuses_bad_node_settings():
    with pytest.raises(UsageError):
        PhantomSpec(node_suv_max=0.1).validated()
    with pytest.raises(UsageError):
        PhantomSpec(node_short_axis_mm=2.0).validated()


def test_default_phantom_is_unchanged_by_the_realistic_option():
    """The historical phantom (every existing test is tuned to it) stays as it was."""
    ph = make_phantom(PhantomSpec(nodes=("4R",), seed=3))
    assert ph.pet.GetSpacing() == (4.0, 4.0, 4.0)
    assert ph.truth["blood_pool_suv"] == 1.7 and ph.truth["liver_suv"] == 2.2
    assert ph.truth["pet"]["realistic"] is False and ph.truth["pet_fwhm_mm"] == 7.0
