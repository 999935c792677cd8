"""What each lesion is (nstage.placement): primary, node, second lung lesion, part, other.

Expectations are written by hand from the rules (placement module docstring, CLINICAL.md 1-2),
never computed by the code under test.
"""

from __future__ import annotations

import dataclasses

import pytest
from hand_chest import chest, measured
from lesion_synth import Sphere, default_spheres, make_synthetic

from nstage.findings import Lesion, measure
from nstage.landmarks import find
from nstage.lesions.suv import segment_suv
from nstage.pipeline import RunOptions, stage_study
from nstage.placement import place
from nstage.stations import assign
from nstage.study import ImageGeometry, Study, StudyMeta


def _lesion(id_: int, centre, *, short: float, volume: float, suv_max: float, suv_mean: float,
            inside=None, surround=None, distance=None, zones=None, contiguous=()) -> Lesion:
    return Lesion(id=id_, suv_max=suv_max, suv_peak=0.85 * suv_max, suv_mean=suv_mean,
                  volume_ml=volume, tlg=suv_mean * volume, short_axis_mm=short,
                  long_axis_mm=short * 1.2, centroid_mm=centre, max_point_mm=centre,
                  inside={"body": 1.0, **(inside or {})}, surround={"body": 1.0, **(surround or {})},
                  distance_mm={"body": 0.0, **(distance or {})}, zones=dict(zones or {}),
                  core_hu=40.0, contiguous_with=tuple(contiguous))


# --------------------------------------------------------------------------- synthetic chest


@pytest.fixture(scope="module")
def synthetic_placements():
    spheres = default_spheres()
    spheres.update({
        "liver_met": Sphere((-50.0, 0.0, -66.0), 14.0, 9.0),
        "contra": Sphere((55.0, 10.0, 20.0), 18.0, 7.0),  # left lung, smaller than the primary
        "perihilar": Sphere((-30.0, -5.0, -12.0), 9.0, 6.0),  # right lung next to the bronchus
        "peripheral": Sphere((-60.0, 25.0, 30.0), 10.0, 6.0),  # right lung, far from hilum
        "bone": Sphere((0.0, 50.0, 20.0), 12.0, 7.0, hu=300.0),  # in the vertebra
    })
    syn = make_synthetic(spheres)
    lesions = measure(segment_suv(syn.ct, syn.pet, syn.anatomy), syn.ct, syn.pet, syn.anatomy)
    landmarks = find(syn.anatomy)
    return syn, lesions, landmarks, place(lesions, landmarks)


def _at(syn, placements, name, tol=4.0):
    import numpy as np

    c = np.array(syn.spheres[name].centre)
    hits = [p for p in placements.all()
            if np.linalg.norm(np.array(p.lesion.centroid_mm) - c) <= tol]
    assert hits, f"{name} not found"
    return hits[0]


# (sphere, kind, side, station or relation, why) -- by hand from the rules.
SYNTHETIC_TABLE = [
    ("primary", "primary", "right", None,
     "the largest-TLG lesion inside the right lung (rule 3)"),
    ("contra", "lung_lesion", "left", "other lung",
     "left lung, TLG about 1/5 of the primary's (< 1/primary_dominance_ratio): M1a or second "
     "primary, the primary's side stands (rule 4)"),
    ("peripheral", "lung_lesion", "right", "same lobe",
     "right lung far from the hilar structures; the synthetic lung is one upper lobe (rule 4)"),
    ("perihilar", "node", "right", "10R",
     "9 mm, 5 mm from the right main bronchus: intrapulmonary node rule; beside the bronchus "
     "below the carina and the azygos level: hilar 10R (Rusch 2009)"),
    ("node_7", "node", "midline", "7",
     "x=0 between the main bronchi, 12 mm below the carina, above station 7's bottom (carina "
     "- 35 mm): subcarinal"),
    ("node_4r", "node", "right", "1R",
     "this chest has no sternum and low apices (58 mm): manubrium top = apex - 30 = 28 mm, so "
     "a node at 40 mm right of the midline is above it: station 1R (low cervical)"),
    ("liver_met", "other", "right", None, "inside the liver: not a node"),
    ("bone", "other", None, None, "inside the vertebra: skeletal"),
]


@pytest.mark.parametrize(("name", "kind", "side", "where", "why"), SYNTHETIC_TABLE,
                         ids=[row[0] for row in SYNTHETIC_TABLE])
def test_synthetic_chest_placements(synthetic_placements, name, kind, side, where, why):
    syn, _, _, placed = synthetic_placements
    p = _at(syn, placed, name)
    assert p.kind == kind, p.reason
    if side is not None:
        assert p.side == side, p.reason
    if kind == "node":
        assert p.station.station == where, p.station.reason
    if kind == "lung_lesion":
        assert p.relation == where and not p.second_primary, p.reason
    assert p.reason and "\n" not in p.reason


def test_every_lesion_is_placed_once_and_the_side_is_kept(synthetic_placements):
    _, lesions, _, placed = synthetic_placements
    ids = [p.id for p in placed.all()]
    assert sorted(ids) == sorted(le.id for le in lesions)  # each lesion exactly once
    assert placed.primary_side == "right" and placed.second_primary is None


def test_node_station_is_the_one_stations_gives(synthetic_placements):
    """One decision: the station placement reports is what stations.assign says for the same
    lesion and frame (no second rule set anywhere)."""
    _, _, landmarks, placed = synthetic_placements
    for p in placed.nodes:
        direct = assign(p.lesion, landmarks)
        assert (p.station.station, p.station.side, p.station.confidence) == (
            direct.station, direct.side, direct.confidence)


# --------------------------------------------------------------------------- issue 15 cases


def _contralateral_case():
    """Issue 15: a right hilar primary (SUVmax 12, 44 mm) with a 4R node and a 15 mm
    left-lung nodule, on the hand-built chest (carina at the origin)."""
    hilar_primary = _lesion(1, (-38.0, 5.0, -12.0), short=44.0, volume=30.0, suv_max=12.0,
                            suv_mean=7.0, surround={"lung": 0.45, "lung_right": 0.45},
                            zones={"hilar": 0.7, "nodal": 0.7})
    node_4r = dataclasses.replace(measured(-16.0, 0.0, 20.0, lung=6.0), id=2, suv_max=6.0,
                                  short_axis_mm=12.0)
    nodule = _lesion(3, (70.0, 5.0, -20.0), short=15.0, volume=1.8, suv_max=4.5, suv_mean=3.0,
                     inside={"lung": 0.95, "lung_left": 0.95}, zones={"lung_filled": 1.0})
    return [hilar_primary, node_4r, nodule]


def test_a_clear_primary_keeps_its_side_against_a_contralateral_nodule():
    placed = place(_contralateral_case(), chest())
    # Central mass TLG 210 g >= 3 x the nodule's 5.4 g: it is the primary (rule 3), on the
    # right; the nodule is a second lung lesion in the other lung, not a second primary
    # (210 >= 2 x 5.4); the 4R node stays a node.
    assert placed.primary.id == 1 and placed.primary.side == "right"
    assert placed.primary.zone == "central"
    assert [(p.id, p.relation, p.second_primary) for p in placed.lung_lesions] == [
        (3, "other lung", False)]
    assert [(p.id, p.station.station) for p in placed.nodes] == [(2, "4R")]
    assert placed.primary_side == "right"


@pytest.mark.parametrize(("left_tlg", "ambiguous"), [(60.0, True), (45.0, False)])
def test_only_a_comparable_tumour_in_the_other_lung_makes_the_side_ambiguous(left_tlg,
                                                                             ambiguous):
    """Right-lung primary TLG 100 g; a left-lung tumour of 60 g is within a factor 2
    (primary_dominance_ratio): possible second primary, side unknown. At 45 g the right
    tumour dominates (100 >= 2 x 45): the left one is M1a / second primary, side right."""
    right = _lesion(1, (-60.0, 5.0, 0.0), short=30.0, volume=12.5, suv_max=12.0, suv_mean=8.0,
                    inside={"lung": 0.95, "lung_right": 0.95}, zones={"lung_filled": 1.0})
    left = _lesion(2, (60.0, 5.0, 0.0), short=28.0, volume=left_tlg / 6.0, suv_max=9.0,
                   suv_mean=6.0, inside={"lung": 0.95, "lung_left": 0.95},
                   zones={"lung_filled": 1.0})
    placed = place([right, left], chest())
    assert placed.primary.id == 1
    assert (placed.second_primary is not None) == ambiguous
    assert placed.primary_side == ("unknown" if ambiguous else "right")


def test_central_mass_is_the_primary_when_no_lung_lesion():
    mass = _lesion(1, (-25.0, 5.0, 10.0), short=42.0, volume=50.0, suv_max=10.0, suv_mean=6.0,
                   surround={"lung": 0.4, "lung_right": 0.4}, zones={"mediastinal": 0.8})
    node = dataclasses.replace(measured(20.0, 5.0, -10.0, lung=8.0), id=2)
    placed = place([mass, node], chest())
    assert placed.primary.id == 1 and placed.primary.side == "right"
    assert "lower confidence" in placed.primary.reason
    assert [p.id for p in placed.nodes] == [2]


@pytest.mark.parametrize(("case", "why"), [
    ("node-sized", "25 mm short axis < 30 mm: a node, not a central tumour"),
    ("between both lungs", "touches both lungs about equally: mediastinal, not against one lung"),
    ("no lung contact", "does not touch a lung"),
    ("larger lung lesion", "lung lesion TLG 150 g: the mass (300 g) is not 3x larger"),
])
def test_central_primary_rule_applies_only_to_large_masses_against_one_lung(case, why):
    def mass(x, short, right, left=0.0):
        return _lesion(1, (x, 5.0, 10.0), short=short, volume=50.0, suv_max=10.0, suv_mean=6.0,
                       surround={"lung": max(right, left), "lung_right": right,
                                 "lung_left": left}, zones={"mediastinal": 0.8})

    m = {"node-sized": mass(-25.0, 25.0, 0.4), "between both lungs": mass(-2.0, 42.0, 0.3, 0.25),
         "no lung contact": mass(-25.0, 42.0, 0.0), "larger lung lesion": mass(-25.0, 42.0, 0.4)}
    lesions = [m[case]]
    if case == "larger lung lesion":
        lesions.append(_lesion(2, (-60.0, 5.0, 0.0), short=30.0, volume=25.0, suv_max=9.0,
                               suv_mean=6.0, inside={"lung": 0.9, "lung_right": 0.9},
                               zones={"lung_filled": 1.0}))
    placed = place(lesions, chest())
    assert placed.primary is None or placed.primary.id != 1, why
    assert 1 in [p.id for p in placed.nodes], why


def test_contiguous_piece_is_part_of_the_primary_unless_node_shaped():
    primary = _lesion(1, (-50.0, 5.0, 20.0), short=30.0, volume=15.0, suv_max=10.0,
                      suv_mean=6.0, inside={"lung": 0.9, "lung_right": 0.9},
                      zones={"lung_filled": 0.9}, contiguous=(2, 3))
    speck = _lesion(2, (-22.0, 2.0, 20.0), short=3.0, volume=0.05, suv_max=2.6, suv_mean=2.5,
                    zones={"mediastinal": 1.0}, contiguous=(1,))
    focus = dataclasses.replace(measured(-16.0, 0.0, 22.0, lung=1.0), id=3, short_axis_mm=12.0,
                                contiguous_with=(1,))
    placed = place([primary, speck, focus], chest())
    # 0.05 ml touching the primary: its uptake, not a node (T, not N).
    assert [p.id for p in placed.primary_parts] == [2]
    assert "not a separate node-shaped focus" in placed.primary_parts[0].reason
    # A 12 mm focus with its own maximum beside the trachea: a node, flagged contiguous.
    (node,) = placed.nodes
    assert node.id == 3 and node.station.station == "4R" and node.contiguous_with_primary


def test_primary_reaching_past_the_pleura_says_t_not_n():
    primary = _lesion(1, (-30.0, 5.0, 20.0), short=30.0, volume=15.0, suv_max=10.0,
                      suv_mean=6.0, inside={"lung": 0.8, "lung_right": 0.8},
                      zones={"lung_filled": 0.8})
    primary = dataclasses.replace(primary, extension_ml=1.4,
                                  extension_centroid_mm=(-14.0, 0.0, 20.0),
                                  extension_zone="mediastinal")
    placed = place([primary], chest())
    assert placed.nodes == () and "T, not N" in placed.primary.reason


def test_symmetric_mild_hilar_pair_is_flagged_even_touching_the_primary():
    primary = _lesion(1, (-60.0, 5.0, -20.0), short=25.0, volume=8.0, suv_max=9.0,
                      suv_mean=6.0, inside={"lung": 0.9, "lung_right": 0.9},
                      zones={"lung_filled": 0.9}, contiguous=(2,))

    def hilar(id_, x, suv, contiguous=()):
        return dataclasses.replace(measured(x, 6.0, -20.0, lung=0.0), id=id_, suv_max=suv,
                                   short_axis_mm=10.0, zones={"hilar": 1.0},
                                   contiguous_with=contiguous)

    mild = place([primary, hilar(2, -28.0, 3.1, (1,)), hilar(3, 45.0, 3.3)], chest())
    assert {p.station.station for p in mild.nodes} == {"10R", "10L"}
    assert all(p.symmetric_hilar for p in mild.nodes)
    hot = place([primary, hilar(2, -28.0, 3.1, (1,)), hilar(3, 45.0, 7.5)], chest())
    assert not any(p.symmetric_hilar for p in hot.nodes)
    # A hot left hilar node (SUVmax 4.6 >= 4.0: not "mild") beside a mild left + right pair
    # (3.0 / 3.1, ratio 1.03 <= 1.5): the pair is reactive, the hot node is judged alone.
    three = place([primary, hilar(2, -28.0, 3.1, (1,)), hilar(3, 45.0, 3.0),
                   hilar(4, 52.0, 4.6)], chest())
    flags = {p.id: p.symmetric_hilar for p in three.nodes}
    assert flags == {2: True, 3: True, 4: False}


def test_symmetric_hilar_cut_off_allows_for_the_pet_noise():
    """SUVmax < 4.0 (Hellwig 2007, ``symmetric_hilar_max_suv``) is read within one per-voxel
    noise SD (``symmetric_hilar_noise_sd``): with blood pool 1.5 and its noise SD 0.15, the SD
    at SUV 4 is 0.15 x sqrt(4 / 1.5) = 0.245, so nodes below 4.245 are mild. A right 3.1 with a
    left 4.1 (ratio 1.32 <= 1.5) is a reactive pair; the left at 4.6 is hotter than the noise
    explains and is judged alone; without a noise estimate the cut-off is the plain 4.0."""
    primary = _lesion(1, (-60.0, 5.0, -20.0), short=25.0, volume=8.0, suv_max=9.0,
                      suv_mean=6.0, inside={"lung": 0.9, "lung_right": 0.9},
                      zones={"lung_filled": 0.9})

    def hilar(id_, x, suv):
        return dataclasses.replace(measured(x, 6.0, -20.0, lung=0.0), id=id_, suv_max=suv,
                                   short_axis_mm=10.0, zones={"hilar": 1.0})

    noisy = {"blood_pool": 1.5, "noise_sd_blood_pool": 0.15}
    pair = [primary, hilar(2, -28.0, 3.1), hilar(3, 45.0, 4.1)]
    within = place(pair, chest(), reference_suv=noisy)
    assert [p.symmetric_hilar for p in within.nodes] == [True, True]
    assert any("below 4.24" in n for n in within.notes), within.notes
    exact = place(pair, chest())
    assert [p.symmetric_hilar for p in exact.nodes] == [False, False]
    hot = place([primary, hilar(2, -28.0, 3.1), hilar(3, 45.0, 4.6)], chest(),
                reference_suv=noisy)
    assert [p.symmetric_hilar for p in hot.nodes] == [False, False]


def test_no_lesions():
    placed = place([], chest())
    assert placed.primary is None and placed.nodes == () and placed.notes
    assert placed.primary_side == "unknown"


# --------------------------------------------------------------------------- through the pipeline


def _stage_synthetic(spheres, seed: int):
    syn = make_synthetic(spheres, noise_sd=0.1, seed=seed)
    study = Study(ct=syn.ct, pet=syn.pet, ct_geometry=ImageGeometry.of(syn.ct),
                  meta=StudyMeta(ct_source="synthetic", pet_source="synthetic",
                                 suv_source="synthetic SUV"))
    return stage_study(study, RunOptions(lesions="suv", report=False),
                       anatomy=syn.anatomy).result


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_primary_bulging_past_the_pleura_without_nodes_stays_n0(seed):
    """A 22 mm right-lung tumour whose medial edge lies 2-3 mm past the mediastinal pleura
    (lung wall at x=-13, tumour to x=-9): invasion or partial volume, T not N -> N0."""
    r = _stage_synthetic({"primary": Sphere((-20.0, 5.0, 25.0), 22.0, 9.0)}, seed)
    assert (r["n_stage"], r["n_stage_9th"]) == ("N0", "N0"), r["reasons"]
    assert r["nodes"] == [] and r["primary_tumor"]["side"] == "right"
    assert "T, not N" in r["primary_tumor"]["reason"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_contralateral_nodule_does_not_lose_the_n_stage(seed):
    """Issue 15's case on the synthetic chest: a 40 mm right perihilar primary (SUV 12), a 12 mm
    pretracheal 4R node (x=-3: right of the left tracheal border x=+9, in front of the trachea
    by 8 mm (< 25 mm: not prevascular), 15 mm above the carina, below the crossing; the
    synthetic lungs reach the trachea's sides, so a node beside it would lie in the lung) and
    a 15 mm left-lung nodule. By hand: the nodule is far smaller (TLG ratio >> 2), so the
    primary stays right; 4R is ipsilateral mediastinal -> N2, a single N2 station -> N2a.
    (Before: the nodule was a 'second primary', the side unknown, and 4R N2 vs N3 -> NX.)"""
    r = _stage_synthetic({"primary": Sphere((-32.0, 0.0, -10.0), 40.0, 12.0),
                          "node_4r": Sphere((-3.0, -22.0, 15.0), 12.0, 6.0),
                          "nodule": Sphere((55.0, 10.0, 20.0), 15.0, 5.0)}, seed)
    assert (r["n_stage"], r["n_stage_9th"]) == ("N2", "N2a"), r["reasons"]
    assert [n["station"] for n in r["nodes"]] == ["4R"]
    assert r["primary_tumor"]["side"] == "right" and r["primary_tumor"]["second_primary"] is None
    assert [(le["side"], le["relation"]) for le in r["lung_lesions"]] == [("left", "other lung")]
