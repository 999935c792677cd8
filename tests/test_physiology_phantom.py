"""Physiological uptake on the realistic phantom: each confounder alone leaves the stage
unchanged, and with true nodes the nodes are kept (issue "Staging that survives real PET").

Phantoms: `nstage phantom --realistic --confounders ...` (nstage.phantom.pet.REALISTIC PET),
staged with the embedded defaults (classical anatomy, SUV lesions). Expected stages are
written by hand (CLINICAL.md 1): no node -> N0; right primary with 4R and 7 -> N2 (two N2
stations: 9th N2b); left primary with 4R (contralateral mediastinal) -> N3; left primary with
10L (ipsilateral hilar) -> N1.
"""

from __future__ import annotations

import pytest
from realistic_cases import ALL_PHYSIOLOGY, counted, describe, near, phantom_staged

from nstage.phantom import PhantomSpec, make_phantom

# Confounder -> structure(s) under which its uptake must be listed in suppressed_uptake.
LISTED_AS = {
    "hot-myocardium": {"heart", "myocardium (shape)"},
    "brown-fat": {"brown fat"},
    "oesophagus": {"oesophagus"},
    "thymus": {"thymus"},
    "marrow": {"bone marrow"},
}
# (primary side, lobe, seed): phantoms whose primary lies in the lung, clear of the
# mediastinum (a primary bulging into the mediastinum is "direct extension" today, which is
# the decision layer's issue, not this one's).
BASES = [("right", "lower", 1, False), ("right", "lower", 2, True), ("right", "lower", 3, True),
         ("left", "upper", 5, True)]


def _alone_params():
    out = []
    for side, lobe, seed, slow in BASES:
        for conf in (*sorted(LISTED_AS), "granulomatous-hila"):
            marks = [pytest.mark.slow] if slow else []
            out.append(pytest.param(side, lobe, seed, conf, marks=marks,
                                    id=f"{side}-{lobe}-seed{seed}-{conf}"))
    return out


@pytest.mark.parametrize(("side", "lobe", "seed", "confounder"), _alone_params())
def test_each_confounder_alone_leaves_n0(side, lobe, seed, confounder):
    ph, r = phantom_staged(PhantomSpec(primary_side=side, primary_lobe=lobe, seed=seed,
                                       realistic=True, confounders=frozenset({confounder})))
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N0", "N0", []), msg
    assert r["primary_tumor"] is not None and r["primary_tumor"]["side"] == side, msg
    if confounder in LISTED_AS:
        listed = {s["structure"] for s in r["suppressed_uptake"]}
        if confounder in _clearly_hot(ph):
            assert listed & LISTED_AS[confounder], msg
    else:
        # Granulomatous hila: both nodes (SUVmax about 3) reported, read as a reactive pair.
        hila = [n for n in ph.truth["nodes"] if n.get("confounder") == "granulomatous-hila"]
        for node in hila:
            found = near(r["negative_node_candidates"], node["centroid_mm"], 8.0)
            assert found and "symmetric" in found[0]["reason"], msg


# (side, lobe, seed): all confounders, no node. Seeds 6 and 9 (right lower): the left
# granulomatous node (blurred SUVmax about 2.7-3.0, SUVpeak 1.9-2.2) is joined to the spine's
# marrow and to the oesophageal uptake by warm tissue round the hot heart; as a "continuation"
# of either it was suppressed, its right twin left alone and counted (10R ipsilateral: N1).
# Marrow lies in bone and the oesophagus in front of the spine, not in the hilum: the pair is
# found and read as reactive, N0.
ALL_WITHOUT_NODES = [("right", "lower", 1), ("right", "lower", 6), ("right", "lower", 9),
                     ("left", "upper", 1)]


@pytest.mark.parametrize(("side", "lobe", "seed"), ALL_WITHOUT_NODES,
                         ids=[f"{s}-{lo}-seed{n}" for s, lo, n in ALL_WITHOUT_NODES])
def test_all_confounders_together_leave_n0(side, lobe, seed):
    """Hot myocardium, brown fat, oesophagus, thymus, marrow and granulomatous hila together,
    no node (CLINICAL.md 1: N0): both granulomatous nodes are found and read as a reactive
    pair."""
    ph, r = phantom_staged(PhantomSpec(primary_side=side, primary_lobe=lobe, seed=seed,
                                       realistic=True, confounders=ALL_PHYSIOLOGY))
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N0", "N0", []), msg
    assert r["primary_tumor"] is not None and r["primary_tumor"]["side"] == side, msg
    hila = [n for n in ph.truth["nodes"] if n.get("confounder") == "granulomatous-hila"]
    assert len(hila) == 2
    for node in hila:
        found = near(r["negative_node_candidates"], node["centroid_mm"], 8.0)
        assert found and "symmetric" in found[0]["reason"], msg


# The gastro-oesophageal junction (mild blob, SUVmax about 3.5, 4-8 ml, 15-20 mm below the
# left diaphragm dome and 4-9 mm from the lung) is uptake at the hiatus, not a node: below the
# dome only the pulmonary ligament's lowest part is thoracic, and station 9 lies within the
# ligament, against the lung (IASLC). Seeds 3 and 8 (right) and 4, 5 and 10 (left) grow such a
# blob apart from the recognised oesophageal uptake; it must stay out of the N stage.

# (nodes, side, lobe, seed, expected 8th, 9th, counted stations, xfail reason or None).
# Right primary + 4R + 7: two ipsilateral N2 stations -> N2, N2b. Left primary + 4R: right
# lower paratracheal is contralateral mediastinal -> N3. Left primary + 10L: ipsilateral
# hilar -> N1.
WITH_NODES = [
    (("4R", "7"), "right", "lower", 1, "N2", "N2b", ["4R", "7"], None),
    (("4R", "7"), "right", "lower", 2, "N2", "N2b", ["4R", "7"], None),
    (("4R", "7"), "right", "lower", 3, "N2", "N2b", ["4R", "7"], None),
    (("4R", "7"), "right", "lower", 8, "N2", "N2b", ["4R", "7"], None),
    (("4R",), "left", "upper", 7, "N3", "N3", ["4R"], None),
    (("4R",), "left", "upper", 8, "N3", "N3", ["4R"], None),
    # A noise bump at the liver dome beside the gastro-oesophageal junction (no liver mask in
    # the classical anatomy) is judged against the liver's own plateau, not the tissue beyond.
    (("4R",), "left", "lower", 6, "N3", "N3", ["4R"], None),
    # A true 10L node (SUVmax about 4.5) beside the granulomatous 10L + 10R pair (about 3):
    # the mild pair is reactive (placement: symmetric hilar pair), the true node is N1.
    (("10L",), "left", "upper", 4, "N1", "N1", ["10L"], None),
    (("4R",), "left", "lower", 5, "N3", "N3", ["4R"], None),
    (("4R",), "left", "lower", 10, "N3", "N3", ["4R"], None),
]


def _nodes_params():
    out = []
    for nodes, side, lobe, seed, n8, n9, stations, xfail in WITH_NODES:
        marks = [pytest.mark.slow] if seed != 1 else []
        if xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=xfail))
        out.append(pytest.param(nodes, side, lobe, seed, n8, n9, stations, marks=marks,
                                id=f"{side}-{'+'.join(nodes)}-seed{seed}-all-confounders"))
    return out


@pytest.mark.parametrize(("nodes", "side", "lobe", "seed", "n8", "n9", "stations"),
                         _nodes_params())
def test_true_nodes_are_kept_among_all_confounders(nodes, side, lobe, seed, n8, n9, stations):
    """Hot myocardium, brown fat, oesophagus, thymus, marrow and granulomatous hila together
    with true nodes: the stage is the nodes' stage and every confounder is listed."""
    ph, r = phantom_staged(PhantomSpec(nodes=nodes, primary_side=side, primary_lobe=lobe,
                                       seed=seed, realistic=True, confounders=ALL_PHYSIOLOGY))
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == (n8, n9, stations), msg
    for node in (n for n in ph.truth["nodes"] if n["counts"]):
        found = near(r["nodes"], node["centroid_mm"], 8.0)
        assert [n["station"] for n in found] == [node["station"]], msg
    listed = {s["structure"] for s in r["suppressed_uptake"]}
    for conf in _clearly_hot(ph):
        assert listed & LISTED_AS[conf], f"{conf} not listed\n{msg}"


def _clearly_hot(ph) -> list[str]:
    """Confounders whose uptake clearly reaches the 2.5 threshold, so it must be listed: hot
    myocardium (SUV 6-9) and brown fat (3.5-6) always; oesophagus, thymus and marrow when their
    noise-free blurred SUVmax is at least 2.8 (at 2.6-2.7 noise decides whether any voxel
    reaches 2.5)."""
    out = ["hot-myocardium", "brown-fat"]
    for c in ph.truth["confounders"]:
        if c["name"] in ("oesophagus", "thymus", "marrow") and c["suv_max_blurred"] >= 2.8:
            out.append(c["name"])
    return out


# Left primary with 4L, 5 and 6 nodes (issue "Staging that survives real PET"). Hand-written
# expectation (CLINICAL.md 1 and 2): 4L (left lower paratracheal), 5 (subaortic, lateral to the
# ligamentum arteriosum) and 6 (para-aortic, anterolateral to the arch) are all ipsilateral
# mediastinal stations for a left primary -> N2; three N2 stations -> 9th edition N2b. Stations
# 5 and 6 are left-sided by definition, so no right-sided station may ever be counted.
# With the granulomatous hila, the mildly avid 10L twin (SUV about 3) may be counted as N1 when
# its 10R partner is too faint to be seen (noise): the stage stays N2, so 10L is tolerated.
LEFT_456 = [(seed, frozenset()) for seed in (1, 2, 3)] \
    + [(seed, ALL_PHYSIOLOGY) for seed in (4, 5, 6)]


@pytest.mark.parametrize(("seed", "confounders"), [
    pytest.param(seed, confs, marks=[pytest.mark.slow] if seed != 1 else [],
                 id=f"seed{seed}-{'all-confounders' if confs else 'no-confounders'}")
    for seed, confs in LEFT_456])
def test_left_primary_with_4l_5_6_is_n2_and_never_right_sided(seed, confounders):
    ph, r = phantom_staged(PhantomSpec(nodes=("4L", "5", "6"), primary_side="left",
                                       primary_lobe="upper", seed=seed, realistic=True,
                                       confounders=confounders))
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"]) == ("N2", "N2b"), msg
    stations = set(counted(r))
    assert {"4L", "5", "6"} <= stations <= {"4L", "5", "6", "10L"}, msg
    assert not any(n["station"].endswith("R") for n in r["nodes"]), msg
    for node in ph.truth["nodes"]:
        if node["station"] in ("4L", "5", "6"):
            found = near(r["nodes"], node["centroid_mm"], 8.0)
            assert [n["station"] for n in found] == [node["station"]], msg


@pytest.mark.slow
def test_gastro_oesophageal_junction_along_a_segmented_oesophagus_is_oesophageal_uptake():
    """With anatomy whose oesophagus reaches the hiatus (the phantom's own labels, as
    TotalSegmentator's would), the junction blob of the right 4R + 7 seed 3 case is
    recognised where it lies, along the oesophagus mask, not merely kept out of N as
    abdominal: listed as oesophageal uptake; stage N2 / N2b (4R and 7 ipsilateral, by hand)."""
    from realistic_cases import DEFAULTS, study_of

    from nstage.pipeline import stage_study

    ph = make_phantom(PhantomSpec(nodes=("4R", "7"), primary_side="right",
                                  primary_lobe="lower", seed=3, realistic=True,
                                  confounders=ALL_PHYSIOLOGY))
    r = stage_study(study_of(ph.ct, ph.pet, "phantom"), DEFAULTS, anatomy=ph.anatomy).result
    msg = describe(r)
    assert (r["n_stage"], r["n_stage_9th"], counted(r)) == ("N2", "N2b", ["4R", "7"]), msg
    junction = ph.truth["zones"]["esophagus_mm"][-1]  # the centreline's end: the hiatus
    listed = near(r["suppressed_uptake"], junction, 12.0)
    assert [s["structure"] for s in listed] == ["oesophagus"], msg
