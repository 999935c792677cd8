"""The digital phantom: its truth is self-consistent and its images look like a PET/CT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nstage.errors import UsageError
from nstage.geometry import mm_to_index
from nstage.phantom import PhantomSpec, ZoneGeometry, in_zone, make_phantom, write_phantom
from nstage.phantom.zones import is_intrapulmonary, is_mediastinal
from nstage.staging import n_category, station_side

# Two groups so that every station is exercised without crowding one mediastinum.
GROUP_A = ("1R", "2R", "3p", "4L", "5", "7", "8L", "9R", "10L", "12R", "14L")
GROUP_B = ("1L", "2L", "3a", "4R", "6", "8R", "9L", "10R", "11L", "13R", "11R")


@pytest.fixture(scope="module")
def phantom_a():
    return make_phantom(PhantomSpec(nodes=GROUP_A, primary_side="right", primary_lobe="lower",
                                    seed=11))


@pytest.fixture(scope="module")
def phantom_b():
    return make_phantom(PhantomSpec(
        nodes=GROUP_B, primary_side="left", primary_lobe="upper", seed=5,
        confounders=frozenset({"hilar-symmetric", "subthreshold-node", "brown-fat",
                               "distant-lesion", "hot-myocardium"})))


@pytest.fixture(params=["a", "b"])
def phantom(request, phantom_a, phantom_b):
    return phantom_a if request.param == "a" else phantom_b


def _index(img, xyz):
    return tuple(int(v) for v in np.round(mm_to_index(img, xyz)).astype(int))


def _node_mask(ph, node) -> np.ndarray:
    return ph.lesion_labels == node["label_value"]


def test_every_node_lies_in_its_station_zone_on_its_side(phantom):
    counting = [n["station"] for n in phantom.truth["nodes"] if n["counts"]]
    assert counting == list(phantom.spec.nodes)  # one node per request, in the order asked
    zg = ZoneGeometry.from_truth(phantom.truth)
    carina_x = phantom.truth["landmarks"]["carina_mm"][0]
    for node in phantom.truth["nodes"]:
        st = node["station"]
        assert in_zone(st, node["centroid_mm"], zg), f"{st} centroid outside its zone"
        assert node["side"] == station_side(st)
        x = node["centroid_mm"][0]
        if st.endswith("L") or st in ("5", "6"):
            assert x > carina_x, f"{st} is a left station but lies on the patient's right"
        elif st.endswith("R"):
            assert x < carina_x, f"{st} is a right station but lies on the patient's left"


def test_nodes_are_in_the_body_and_in_or_out_of_the_lung_as_their_station_says(phantom):
    anat = phantom.anatomy
    body = anat.extra_masks["body"]
    lung = anat.mask("lung")
    ct = sitk.GetArrayFromImage(phantom.ct)
    for node in phantom.truth["nodes"]:
        st = node["station"]
        kji = _index(phantom.ct, node["centroid_mm"])
        assert body[kji], f"{st} centroid outside the body"
        m = _node_mask(phantom, node)
        assert m.any()
        # soft tissue on CT (mean over the node, noise averages out)
        assert 0 < ct[m].mean() < 80, f"{st} node is not soft tissue on CT"
        shell = ndimage.binary_dilation(m, iterations=2) & ~m
        lung_frac = lung[shell].mean()
        if is_mediastinal(st):
            assert not lung[kji]
            # a node may abut the mediastinal pleura, but lung never wraps round it
            assert lung_frac < 0.6, f"mediastinal node {st} is surrounded by lung"
        elif is_intrapulmonary(st):
            assert lung_frac > 0.8, f"intrapulmonary node {st} is not inside the lung"
        else:
            # hilar: against the bronchus / mediastinal soft tissue, never wrapped by lung
            # (that would read as intrapulmonary 11-14)
            assert lung_frac < 0.6, f"hilar node {st} is surrounded by lung ({lung_frac:.0%})"


def test_nodes_sit_where_clinical_md_section_2_puts_their_station(phantom):
    """The CLINICAL.md section 2 borders that a station assigner reads off the anatomy."""
    lm = phantom.truth["landmarks"]
    zg = ZoneGeometry.from_truth(phantom.truth)
    carina_x, _, carina_z = lm["carina_mm"]
    for node in phantom.truth["nodes"]:
        st = node["station"]
        x, y, z = node["centroid_mm"]
        if st in ("3a", "3p", "4R", "4L", "2R", "2L"):
            assert carina_z < z < lm["manubrium_top_z_mm"], st
        if st == "4R":
            # the whole node above the carina (4R reaches down to about the carina)
            assert z - node["short_axis_mm"] / 2 > carina_z, node
        if st == "10R":
            # no azygos in the anatomy vocabulary: the 4R/10R border is the carina
            assert z < carina_z - 2.0, node
        if st == "7":
            assert lm["station7_bottom_z_mm"] < z < carina_z
            right, left = zg.bronchus_x_at("right", z), zg.bronchus_x_at("left", z)
            assert right < x < left, f"7 not between the main bronchi: {node}"
        if st.startswith("8"):
            # IASLC: 8R / 8L by the midline, not by the oesophagus
            off = x - carina_x
            assert (off <= -8.0) if st == "8R" else (off >= 8.0), node
            assert z < lm["station7_bottom_z_mm"]


def test_station7_bronchus_line_is_the_central_airway(phantom_a):
    """Just below the carina the right bronchus is close to the midline, not ~25 mm lateral
    (the right upper-lobe branch must not enter the station-7 limits)."""
    zg = ZoneGeometry.from_truth(phantom_a.truth)
    cx, _, cz = phantom_a.truth["landmarks"]["carina_mm"]
    assert -15.0 < zg.bronchus_x_at("right", cz - 5.0) - cx < 0.0
    # the left main bronchus is longer and more horizontal, but still the main bronchus
    assert 0.0 < zg.bronchus_x_at("left", cz - 5.0) - cx < 30.0


def test_expected_n_equals_the_rules_engine_on_the_truth(phantom):
    t = phantom.truth
    side = {"none": "unknown"}.get(t["spec"]["primary_side"], t["spec"]["primary_side"])
    stations = [n["station"] for n in t["nodes"] if n["counts"]]
    ns = n_category(side, stations)
    assert (t["n_stage"], t["n_stage_9th"]) == (ns.n_stage, ns.n_stage_9th)
    # confounders never count
    assert all(not n["counts"] for n in t["nodes"] if n["kind"] == "confounder")
    assert all(not c["counts"] for c in t["confounders"])


@pytest.mark.parametrize(("nodes", "side", "expected"), [
    (("10R", "11R"), "right", ("N1", "N1")),
    (("4L", "7"), "left", ("N2", "N2b")),
])
def test_expected_n_for_known_cases(nodes, side, expected):
    ph = make_phantom(PhantomSpec(nodes=nodes, primary_side=side, seed=2))
    assert (ph.truth["n_stage"], ph.truth["n_stage_9th"]) == expected


def test_primary_lies_in_the_requested_lobe(phantom):
    t = phantom.truth
    prim = t["primary"]
    lobe = f"lung_{prim['lobe']}_lobe_{prim['side']}"
    m = phantom.lesion_labels == 1
    shell = ndimage.binary_dilation(m, iterations=2) & ~m
    assert phantom.anatomy.mask(lobe)[shell].mean() > 0.9
    assert 8.0 <= prim["suv_max"] <= 15.0
    assert 20.0 <= prim["diameter_mm"] <= 40.0


def test_confounders_are_recorded_and_below_threshold(phantom_b):
    t = phantom_b.truth
    names = {c["name"] for c in t["confounders"]}
    assert names == {"hilar-symmetric", "subthreshold-node", "brown-fat", "distant-lesion",
                     "hot-myocardium"}
    conf_nodes = [n for n in t["nodes"] if n["kind"] == "confounder"]
    hilar = [n for n in conf_nodes if n["station"].startswith("10")]
    assert sorted(n["station"] for n in hilar) == ["10L", "10R"]
    for n in conf_nodes:
        assert n["suv_max_blurred"] < 2.5, n
    for n in hilar:
        assert 1.8 <= n["suv_max_blurred"] <= 2.5
    assert t["myocardium_suv"] >= 6.0
    # confounders do not change the expected N: 6, 4R (contralateral) make it N3
    assert (t["n_stage"], t["n_stage_9th"]) == ("N3", "N3")


def test_landmarks_are_in_anatomical_order(phantom):
    lm = phantom.truth["landmarks"]
    assert lm["trachea_top_z_mm"] > lm["manubrium_top_z_mm"] > lm["aortic_arch_top_z_mm"]
    assert lm["aortic_arch_top_z_mm"] > lm["aortic_arch_bottom_z_mm"]
    assert lm["aortic_arch_bottom_z_mm"] > lm["left_pulmonary_artery_top_z_mm"]
    assert lm["brachiocephalic_crossing_z_mm"] > lm["carina_z_mm"]
    assert lm["carina_z_mm"] > lm["station7_bottom_z_mm"] > lm["inferior_pulmonary_vein_z_mm"]
    # arch 2-5 cm above the carina
    assert 15.0 <= lm["aortic_arch_top_z_mm"] - lm["carina_z_mm"] <= 60.0


def test_ct_values_and_airway_are_what_a_threshold_segmenter_expects(phantom_a):
    ph = phantom_a
    ct = sitk.GetArrayFromImage(ph.ct).astype(float)
    anat = ph.anatomy
    assert ph.ct.GetPixelID() == sitk.sitkInt16
    assert np.allclose(ph.ct.GetDirection(), np.eye(3).ravel())
    lung = anat.mask("lung")
    assert -900 < ct[lung].mean() < -800
    for name, lo, hi in [("aorta", 25, 55), ("liver", 40, 70), ("heart", 25, 60)]:
        assert lo < ct[anat.mask(name)].mean() < hi, name
    # air below -900 HU inside the trachea, and the airway splits at the carina level
    air = ct < -900
    lm = ph.truth["landmarks"]
    carina = lm["carina_mm"]
    k_car, j_car, i_car = _index(ph.ct, carina)
    airway = anat.mask("airway") | anat.mask("trachea")
    lumen = air & airway
    _, n_above = ndimage.label(lumen[k_car + 2])
    _, n_at = ndimage.label(lumen[k_car])
    assert n_above == 1 and n_at >= 2
    # left main bronchus longer and more horizontal than the right one
    zl = np.nonzero(anat.mask("main_bronchus_left").any(axis=(1, 2)))[0]
    zr = np.nonzero(anat.mask("main_bronchus_right").any(axis=(1, 2)))[0]
    assert anat.volume_ml("main_bronchus_left") > anat.volume_ml("main_bronchus_right")
    assert len(zl) >= len(zr) - 1
    # bones are bright, the body is surrounded by air
    assert ct[anat.mask("vertebrae_T5")].mean() > 250
    assert ct[0, 0, 0] < -900


def test_pet_uptake_is_physiological_and_on_its_own_grid(phantom_a):
    ph = phantom_a
    pet, ct = ph.pet, ph.ct
    assert pet.GetPixelID() == sitk.sitkFloat32
    assert pet.GetSpacing() != ct.GetSpacing() and pet.GetOrigin() != ct.GetOrigin()
    assert pet.GetSize() != ct.GetSize()
    on_ct = sitk.GetArrayFromImage(sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0))
    anat = ph.anatomy
    aorta = ndimage.binary_erosion(anat.mask("aorta"), iterations=3)
    liver = ndimage.binary_erosion(anat.mask("liver"), iterations=4)
    lung = ndimage.binary_erosion(anat.mask("lung"), iterations=4)
    assert 1.4 < np.median(on_ct[aorta]) < 2.1
    assert 1.9 < np.median(on_ct[liver]) < 2.6
    assert np.median(on_ct[lung]) < 0.8
    for node in ph.truth["nodes"]:
        assert 4.0 <= node["suv_max"] <= 25.0
        # partial volume: the blurred maximum is below the activity, above the blood pool
        assert 1.8 < node["suv_max_blurred"] <= node["suv_max"] + 0.05
        if node["counts"]:
            # metastatic nodes are clearly avid after blur and partial volume
            assert node["suv_max_blurred"] >= 3.5, node


def test_same_seed_same_phantom_other_seed_other_phantom():
    spec = PhantomSpec(nodes=("4R",), seed=3)
    a, b = make_phantom(spec), make_phantom(spec)
    c = make_phantom(PhantomSpec(nodes=("4R",), seed=4, primary_side="none"))
    for img in ("ct", "pet"):
        assert np.array_equal(sitk.GetArrayFromImage(getattr(a, img)),
                              sitk.GetArrayFromImage(getattr(b, img)))
    ta = {k: v for k, v in a.truth.items() if k != "timings_s"}
    tb = {k: v for k, v in b.truth.items() if k != "timings_s"}
    assert ta == tb
    assert a.truth["nodes"][0]["centroid_mm"] != c.truth["nodes"][0]["centroid_mm"]


def test_files_are_written_in_grand_challenge_layout(tmp_path, phantom_a):
    paths = write_phantom(phantom_a, tmp_path / "case")
    root = tmp_path / "case"
    cts = list((root / "input" / "images" / "ct").glob("*.mha"))
    pets = list((root / "input" / "images" / "pet").glob("*.mha"))
    assert cts == [paths["ct"]] and pets == [paths["pet"]]
    manifest = json.loads((root / "input" / "inputs.json").read_text())
    by_slug = {e["interface"]["slug"]: e for e in manifest}
    assert set(by_slug) == {"ct", "pet"}
    assert by_slug["ct"]["interface"]["relative_path"] == "images/ct"
    assert by_slug["ct"]["image"]["name"] == cts[0].name
    assert by_slug["pet"]["image"]["name"] == pets[0].name
    ct = sitk.ReadImage(str(cts[0]))
    pet = sitk.ReadImage(str(pets[0]))
    assert ct.GetPixelID() == sitk.sitkInt16 and pet.GetPixelID() == sitk.sitkFloat32
    anat = sitk.ReadImage(str(root / "anatomy.mha"))
    assert anat.GetSize() == ct.GetSize() and np.allclose(anat.GetOrigin(), ct.GetOrigin())
    labels = json.loads((root / "labels.json").read_text())
    names = set(labels.values())
    for required in ("trachea", "main_bronchus_left", "main_bronchus_right", "aorta",
                     "pulmonary_artery", "esophagus", "heart", "sternum",
                     "brachiocephalic_vein_left", "superior_vena_cava", "vertebrae_T5",
                     "lung_upper_lobe_right", "lung_middle_lobe_right", "clavicula_left",
                     "rib_left_3", "thyroid_gland", "liver"):
        assert required in names, required
    values = set(np.unique(sitk.GetArrayFromImage(anat)).tolist()) - {0}
    assert values <= {int(v) for v in labels}
    truth = json.loads((root / "truth.json").read_text())
    assert truth["n_stage"] == phantom_a.truth["n_stage"]
    assert len(truth["nodes"]) == len(GROUP_A)
    # the name is deterministic for a seed
    again = write_phantom(phantom_a, tmp_path / "again")
    assert again["ct"].name == paths["ct"].name


def test_bad_spec_is_a_usage_error():
    with pytest.raises(UsageError):
        PhantomSpec(nodes=("4X",)).validated()
    with pytest.raises(UsageError):
        PhantomSpec(primary_side="left", primary_lobe="middle").validated()
    with pytest.raises(UsageError):
        PhantomSpec(confounders=frozenset({"sarcoid"})).validated()


def test_cli_bad_station_exits_2_and_writes_nothing(tmp_path, capsys):
    from nstage.cli import main

    out = tmp_path / "p"
    assert main(["phantom", str(out), "--nodes", "4R,99Q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "99Q" in err[0]
    assert not out.exists()


def test_cli_writes_a_phantom_with_preview(tmp_path, capsys):
    from nstage.cli import main

    out = tmp_path / "p"
    assert main(["phantom", str(out), "--nodes", "7", "--primary-side", "none", "--seed", "1",
                 "--preview"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["primary"] is None
    assert truth["n_stage"] == "N2"  # station 7 is N2 whatever the side
    assert (out / "preview.png").stat().st_size > 10_000
    assert "N2" in capsys.readouterr().out


@pytest.mark.slow
def test_whole_body_phantom_has_clinical_size_and_organs():
    ph = make_phantom(PhantomSpec(nodes=("4R",), extent="whole-body", seed=1,
                                  confounders=frozenset({"distant-lesion"})))
    nx, ny, nz = ph.ct.GetSize()
    assert (nx, ny) == (512, 512) and nz >= 500
    px, py, pz = ph.pet.GetSize()
    assert (px, py) == (200, 200) and pz >= 400
    for organ in ("brain", "liver", "kidney_left", "kidney_right", "urinary_bladder",
                  "femur_left", "trachea", "aorta"):
        assert ph.anatomy.has(organ), organ
    pet = sitk.GetArrayFromImage(sitk.Resample(ph.pet, ph.ct, sitk.Transform(),
                                               sitk.sitkLinear, 0.0))
    bladder = ndimage.binary_erosion(ph.anatomy.mask("urinary_bladder"), iterations=5)
    brain = ndimage.binary_erosion(ph.anatomy.mask("brain"), iterations=5)
    assert np.median(pet[bladder]) > 15.0 and 5.0 < np.median(pet[brain]) < 9.0
    distant = [c for c in ph.truth["confounders"] if c["name"] == "distant-lesion"]
    assert distant and "adrenal" in distant[0]["where"]
    zg = ZoneGeometry.from_truth(ph.truth)
    assert in_zone("4R", ph.truth["nodes"][0]["centroid_mm"], zg)
