"""The confounder matrix on real chest CTs with a realistic synthetic PET.

CTs: Lung-PET-CT-Dx A0001 (left upper-lobe primary), NSCLC-Radiomics LUNG1-002 (right
lower-lobe primary, planning contours of the tumour and the heart) and Lung-PET-CT-Dx A0002
(the DICOM series, 8 mm slices: right hilar primary in the annotators' tumour boxes), from
../shared/data/real. Where every uptake was placed, and why, is written in
tests/realistic_cases.py (read on rendered axial slices). PET: nstage.phantom.pet.REALISTIC.
Staged with the embedded defaults.

Expected stages by hand (CLINICAL.md 1): no node -> N0 whatever the physiological uptake;
left primary + 4R (contralateral mediastinal) -> N3; any station-1 node -> N3; right primary
+ 4R (ipsilateral mediastinal, one station) -> N2, 9th N2a; right primary + 7 (subcarinal:
N2 whichever side, one station) -> N2, 9th N2a; right primary + 7 + 4L (4L: left of the left
tracheal border, below the arch top, above the left pulmonary artery, so a left station:
contralateral mediastinal) -> N3 (the highest over the nodes), 9th N3.
"""

from __future__ import annotations

import pytest
from conftest import real_path
from realistic_cases import RealCase, counted, describe, near, real_scene, real_staged

from nstage.schema import validate_result

pytestmark = pytest.mark.slow

# Confounder -> structures under which its uptake must be listed (None: the granulomatous
# hila, which must be reported as a reactive pair of negative node candidates).
LISTED_AS = {"hot-myocardium": {"heart", "myocardium (shape)"}, "brown-fat": {"brown fat"},
             "oesophagus": {"oesophagus"}, "marrow": {"bone marrow"},
             "granulomatous-hila": None}


# The confounders each CT carries. A0002 has no granulomatous hila: its primary is the right
# hilum, so the right half of the pair lies in the tumour's uptake and only a single left hilar
# node would be seen, which the rules count as N3 (see tests/realistic_cases.py).
CONFOUNDERS = {"A0001": tuple(LISTED_AS), "LUNG1-002": tuple(LISTED_AS),
               "A0002": ("hot-myocardium", "brown-fat", "oesophagus", "marrow")}
# Primary side by hand: A0001 left upper lobe; LUNG1-002 right lower lobe (GTV-1); A0002 the
# annotators' boxes at x -103..-22 (right of the midline x = -13).
SIDES = {"A0001": "left", "LUNG1-002": "right", "A0002": "right"}
# How far a found node's centroid may lie from where it was placed (mm): on A0002's 8 mm
# slices a node covers two slices and its centroid's z falls anywhere between them.
NODE_TOLERANCE_MM = {"A0001": 6.0, "LUNG1-002": 6.0, "A0002": 8.0}


def _params():
    out = []
    for ct, side in SIDES.items():
        out.append(pytest.param(ct, side, None, id=f"{ct}-baseline"))
        for conf in CONFOUNDERS[ct]:
            out.append(pytest.param(ct, side, conf, id=f"{ct}-{conf}"))
    return out


@pytest.mark.parametrize(("ct", "side", "confounder"), _params())
def test_each_confounder_alone_leaves_n0_on_a_real_ct(real_data, ct, side, confounder):
    confs = () if confounder is None else (confounder,)
    syn, r = real_staged(RealCase(ct, confs), real_path)
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N0", "N0", []), msg
    assert r["primary_tumor"] is not None and r["primary_tumor"]["side"] == side, msg
    validate_result(r)
    if confounder is None:
        return
    if LISTED_AS[confounder] is not None:
        listed = {s["structure"] for s in r["suppressed_uptake"]}
        assert listed & LISTED_AS[confounder], msg
    else:
        for les in syn.lesions:
            found = near(r["negative_node_candidates"], les["centre_mm"], 8.0)
            assert found and "symmetric" in found[0]["reason"], msg


def _reactive_pair(syn, r: dict, tol_mm: float) -> list[dict]:
    """Assert N0 with each placed granulomatous node listed (within ``tol_mm``) as a negative
    candidate of a symmetric reactive pair; return those candidates in placing order."""
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N0", "N0", []), msg
    out = []
    for les in syn.lesions:
        found = near(r["negative_node_candidates"], les["centre_mm"], tol_mm)
        assert found and "symmetric" in found[0]["reason"], msg
        out.append(found[0])
    validate_result(r)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 9])
def test_granulomatous_hila_beside_the_primary_are_read_as_a_reactive_pair(real_data, seed):
    """LUNG1-002: 12 mm hilar nodes of activity 4.6 on both sides (blurred SUVmax about 3-4).
    The right one sits 4 mm above the right lower-lobe tumour's top (GTV-1, SUV 10), on its
    flank: no maximum of its own at PET resolution. Judged as a pair (CLINICAL.md 3: hilar
    nodes are often symmetrically avid; both below 4, within 1.5x of each other), both are
    reactive: N0. Without the right one found, the left one alone (soft tissue, p about 0.7)
    would be a contralateral hilar node: N3. Seed 9: the left node's hottest voxel reads 4.19
    (same node, other seeds 2.9-3.9; noise SD at SUV 4 is 0.24): within the noise of the 4.0
    cut-off, so still mild and one of the pair."""
    syn, r = real_staged(RealCase("LUNG1-002", ("granulomatous-hila",), (), seed), real_path)
    found = _reactive_pair(syn, r, 6.0)
    assert [f["station"] for f in found] == [les["name"] for les in syn.lesions], describe(r)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 8])
def test_granulomatous_hila_on_5_mm_ct_slices_are_read_as_a_reactive_pair(real_data, seed):
    """A0001 (5 mm CT slices, PET on its own 4 mm grid): 12 mm hilar nodes of activity 4.6 on
    both sides of a left upper-lobe primary, blurred native SUVmax 2.8-3.6. Resampled onto the
    coarser CT slices a node can lose about 15% of its maximum (seed 5: the right node's native
    2.88 reads 2.44, under the 2.5 threshold), so the seed test also reads the native PET, as
    the positivity rule does. Both found and judged as a pair (CLINICAL.md 3: both below 4,
    within 1.5x): reactive, N0. With the right one lost, the left one alone (11L, ipsilateral,
    SUVmax 3.4, p 0.7) would be counted: N1. Seed 8: the left node reads 4.06 (noise SD at
    SUV 4 is 0.23): within the noise of the 4.0 cut-off, still one of the pair; read
    against the plain 4.0 the right node (contralateral hilar) would be counted: N3."""
    syn, r = real_staged(RealCase("A0001", ("granulomatous-hila",), (), seed), real_path)
    _reactive_pair(syn, r, 8.0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_hilar_node_on_the_primarys_flank_is_found(real_data, seed):
    """LUNG1-002: a 10R node (12 mm, activity 6, blurred SUVmax about 4) at the bronchus
    intermedius, 4 mm above the top of the right lower-lobe tumour (GTV-1, SUV 10): a shoulder
    on the tumour's flank, not a maximum of its own. Station 10R (hilar, beside the bronchus
    intermedius) of a right primary: ipsilateral hilar, N1 in both editions (CLINICAL.md 1)."""
    syn, r = real_staged(RealCase("LUNG1-002", (), ("10R",), seed), real_path)
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N1", "N1", ["10R"]), msg
    _, _, _, nodes = real_scene("LUNG1-002", real_path)
    assert near(r["nodes"], nodes["10R"].centre_mm, NODE_TOLERANCE_MM["LUNG1-002"]), msg
    validate_result(r)


def test_brown_fat_on_both_sides_is_listed_as_a_symmetric_pair(real_data):
    _, r = real_staged(RealCase("A0001", ("brown-fat",)), real_path)
    fat = [s for s in r["suppressed_uptake"] if s["structure"] == "brown fat"]
    xs = [s["centroid_mm"][0] for s in fat]
    # Midline x = -10 on A0001 (trachea and spine): uptake on both sides, above the apices.
    assert min(xs) < -40 and max(xs) > 20, describe(r)
    assert all("supraclavicular" in s["reason"] for s in fat), describe(r)
    assert any("symmetric with uptake at" in s["reason"] for s in fat), describe(r)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_supraclavicular_node_inside_brown_fat_is_found(real_data, seed):
    """A 12 mm node (SUVmax about 5) in the left supraclavicular fat, inside brown fat of
    SUVmax 3.5-4.5 on both sides: the node is found as a node-sized lesion (station 1L, N3
    whatever the primary's side), the fat around it and on the other side is brown fat."""
    syn, r = real_staged(RealCase("A0001", ("brown-fat",), ("1L",), seed), real_path)
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N3", "N3", ["1L"]), msg
    _, _, _, nodes = real_scene("A0001", real_path)
    found = near(r["nodes"], nodes["1L"].centre_mm, 6.0)
    assert len(found) == 1 and found[0]["station"] == "1L", msg
    # The node's outline is the node (12 mm), not the brown fat round it.
    assert 7.0 <= found[0]["short_axis_mm"] <= 15.0 and found[0]["volume_ml"] < 2.0, msg
    assert sum(s["structure"] == "brown fat" for s in r["suppressed_uptake"]) >= 2, msg


# (ct, seed): every confounder the CT carries, no node placed. Seeds as chosen for a reason:
ALL_WITHOUT_NODES = [
    ("A0001", 1), ("LUNG1-002", 1), ("A0002", 1),
    # Seed 6: the left supraclavicular brown fat splits at a saddle into a fat lobule (core 54%
    # fat, suppressed) and a piece over the muscle and vessels between the lobules (13.5 ml,
    # SUVpeak 2.3, core 22% fat, short axis 40 mm) that failed the fat-core test and was
    # counted as a 1L node (N3). Grown together with the brown fat and no hotter than its fat
    # (SUV 2.5), it is that brown fat (CLINICAL.md 3: brown fat is a false-positive source).
    ("A0001", 6),
    # Seeds 8 and 9: one granulomatous node reads 4.06 / 4.19, within the PET noise of the
    # 4.0 cut-off of a reactive pair (the other side 3.05 / 3.43): N0, not N3.
    ("A0001", 8), ("LUNG1-002", 9),
]


@pytest.mark.parametrize(("ct", "seed"), ALL_WITHOUT_NODES,
                         ids=[f"{ct}-seed{seed}" for ct, seed in ALL_WITHOUT_NODES])
def test_all_confounders_together_leave_n0_on_a_real_ct(real_data, ct, seed):
    """Hot myocardium, brown fat, oesophagus, raised marrow and granulomatous hila (those the
    CT carries) together, no node: N0 (CLINICAL.md 1: no regional node metastasis), the
    primary on its side, and the brown fat listed with its reason."""
    syn, r = real_staged(RealCase(ct, CONFOUNDERS[ct], (), seed), real_path)
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N0", "N0", []), msg
    assert r["primary_tumor"] is not None and r["primary_tumor"]["side"] == SIDES[ct], msg
    assert any(s["structure"] == "brown fat" for s in r["suppressed_uptake"]), msg
    validate_result(r)


# (ct, seed, nodes, expected 8th, 9th, counted stations, xfail reason or None)
WITH_NODES = [
    ("A0001", 1, ("4R",), "N3", "N3", ["4R"], None),
    ("A0001", 2, ("4R",), "N3", "N3", ["4R"], None),
    # Seed 5: the right granulomatous twin reads 2.88 natively but 2.44 on the 5 mm CT slices;
    # it must still be found (seeds read the native PET) and pair with the 11L twin.
    ("A0001", 5, ("4R",), "N3", "N3", ["4R"], None),
    # Seed 6: a piece of the left brown fat over muscle (see ALL_WITHOUT_NODES) must not add
    # a 1L node beside the 4R.
    ("A0001", 6, ("4R",), "N3", "N3", ["4R"], None),
    ("LUNG1-002", 1, ("4R",), "N2", "N2a", ["4R"], None),
    ("LUNG1-002", 2, ("4R",), "N2", "N2a", ["4R"], None),
    # Seed 5: the oesophageal uptake grows into the vertebral marrow behind it; the merged
    # component is marrow, and its oesophageal part (SUVmax 4.3 at z 64) must be judged as
    # oesophagus, not kept as a 3p node standing out from the marrow.
    ("LUNG1-002", 5, ("4R",), "N2", "N2a", ["4R"], None),
    # Seed 9: the granulomatous pair within the noise of its 4.0 cut-off stays reactive; the
    # left one counted would make a right primary N3.
    ("LUNG1-002", 9, ("4R",), "N2", "N2a", ["4R"], None),
    ("A0002", 1, ("7",), "N2", "N2a", ["7"], None),
    ("A0002", 2, ("7",), "N2", "N2a", ["7"], None),
    # Seed 6: a short piece of the oesophageal uptake at z = 136-144, in front of the aorta
    # near the hiatus (0.12 ml of gas in its lumen on the CT), has no recognised oesophageal
    # uptake beside it; it was suppressed only as a "continuation" of the spine's marrow
    # through warm tissue. Marrow lies in bone; the gas in its lumen makes it oesophagus
    # (a node holds no gas), not an 8L node (N3).
    ("A0002", 6, ("7",), "N2", "N2a", ["7"], None),
    # Seed 1 puts the 4L node's smoothed maximum inside the classical aorta mask (node and blood
    # have one density without contrast); uptake at or above the seed threshold in a vessel
    # mask is not blood (lesions.suv), so the node still seeds and is found.
    ("A0002", 1, ("7", "4L"), "N3", "N3", ["4L", "7"], None),
    ("A0002", 2, ("7", "4L"), "N3", "N3", ["4L", "7"], None),
    ("A0002", 3, ("7", "4L"), "N3", "N3", ["4L", "7"], None),
]


@pytest.mark.parametrize(
    ("ct", "seed", "nodes", "n8", "n9", "stations"),
    [pytest.param(*case[:6], id=f"{case[0]}-{'+'.join(case[2])}-seed{case[1]}",
                  marks=[pytest.mark.xfail(strict=True, reason=case[6])] if case[6] else [])
     for case in WITH_NODES])
def test_true_nodes_are_kept_among_all_confounders_on_a_real_ct(real_data, ct, seed, nodes,
                                                                 n8, n9, stations):
    """Hot myocardium, brown fat, oesophagus, raised marrow and granulomatous hila (those the
    CT carries, :data:`CONFOUNDERS`) together with true nodes: each node is found where it
    was placed and the nodes set the stage."""
    syn, r = real_staged(RealCase(ct, CONFOUNDERS[ct], nodes, seed), real_path)
    msg = describe(r)
    _, _, _, placed = real_scene(ct, real_path)
    for name in nodes:
        assert near(r["nodes"], placed[name].centre_mm, NODE_TOLERANCE_MM[ct]), msg
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == (n8, n9, stations), msg
