"""What each lesion is: the primary, a regional node, a second lung lesion, or other (pure).

One function, :func:`place`, decides once for every measured :class:`~nstage.findings.Lesion`
of a study, from its measurements and the study's anatomical frame
(:class:`~nstage.landmarks.Landmarks`); every number comes from ``resources/thresholds.json``
(sections ``classification`` and ``stations``). Nothing here reads images or files.

Rules, in order:

1. Not regional (kind ``"other"``, possible M1 or physiological, never counted for N): inside
   or wrapped by bone, inside a solid organ, cervical above station 1, abdominal, or lateral
   to the lungs (:func:`nstage.stations.not_regional`: the same rules that place nodes).
2. Pulmonary: at least ``stations.intrapulmonary_min_inside`` in the (hole-filled) lung, or a
   surrounding shell at least ``stations.intrapulmonary_min_surround`` lung while not lying
   between the two lungs (the same numbers that make a node intrapulmonary).
3. The primary tumour, by evidence: the pulmonary lesion with the largest TLG (SUVmean x MTV:
   most avid and largest); a central or hilar mass (short axis at least
   ``central_primary_min_short_axis_mm``, against one lung, outside the aerated lung) is the
   primary instead when it has at least ``central_over_lung_tlg_ratio`` times that TLG, or
   when no lesion is pulmonary.
4. Other pulmonary lesions: an intrapulmonary node (stations 10-14) when small and along the
   bronchovascular bundle (``intrapulmonary_node_*``, ``hilar_node_*``); else a second lung
   lesion, reported with its relation to the primary (same lobe, other lobe, other lung: a
   T descriptor or M1a, not N). A lesion in the other lung makes the primary's side
   ambiguous (a possible second primary) only when the primary does not dominate it
   (TLG less than ``primary_dominance_ratio`` times larger): a clear primary keeps its side.
5. Every other lesion is a regional node candidate placed on the IASLC map
   (:func:`nstage.stations.assign`, with its alternatives); foci below ``node_min_volume_ml``
   are noise. A focus touching the primary (one FDG-avid region split at an SUV saddle) is
   a separate node only when node-shaped (short axis at most ``node_max_short_axis_mm``);
   otherwise it is part of the primary. The primary's own uptake beyond the pleura is
   part of the primary: invasion is T, not N.
6. Symmetric hilar uptake: station 10-11 candidates below
   ``positivity.symmetric_hilar_max_suv`` with a counterpart in the other hilum within
   ``symmetric_hilar_ratio`` of their SUVmax (whether or not one touches the primary) are
   flagged as a likely reactive pair; a hotter hilar node beside them is judged on its own.

Sides: +x is the patient's LEFT; a node's side is its station's, a lung lesion's its lung's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from nstage import stations
from nstage.findings import HILAR_STRUCTURES, Lesion
from nstage.landmarks import Landmarks
from nstage.stations import StationAssignment, StationSettings
from nstage.thresholds import resolve

Kind = Literal["primary", "primary_part", "node", "lung_lesion", "other"]
Side = Literal["left", "right", "midline"]


@dataclass(frozen=True)
class Placement:
    """What one lesion is, decided once by :func:`place`.

    Attributes
    ----------
    lesion : Lesion
        The measurements (read-only).
    kind : {"primary", "primary_part", "node", "lung_lesion", "other"}
        ``primary_part``: uptake contiguous with the primary that is not a separate node.
    side : {"left", "right", "midline"} or None
        Patient side.
    reason : str
        One line: why this kind (and, for nodes, the station's reason).
    zone : str or None
        ``"lung"``, ``"central"``, ``"intrapulmonary"``, ``"hilar"``, ``"mediastinal"``,
        ``"supraclavicular"`` or ``"outside"``.
    station : StationAssignment or None
        For regional node candidates (and for "other" lesions the map placed outside).
    relation : str or None
        For second lung lesions: ``"same lobe"``, ``"other lobe"``, ``"same lung"`` (lobes
        unknown) or ``"other lung"``.
    contiguous_with_primary : bool
        A node-shaped focus touching the primary (direct extension into a node).
    symmetric_hilar : bool
        One of a bilateral, similar, mildly avid hilar pair (likely reactive).
    second_primary : bool
        A lung lesion in the other lung comparable to the primary (side ambiguous).
    """

    lesion: Lesion
    kind: Kind
    side: Side | None
    reason: str
    zone: str | None = None
    station: StationAssignment | None = None
    relation: str | None = None
    contiguous_with_primary: bool = False
    symmetric_hilar: bool = False
    second_primary: bool = False

    @property
    def id(self) -> int:
        return self.lesion.id


@dataclass(frozen=True)
class Placements:
    """Every lesion of a study, each in exactly one list."""

    primary: Placement | None
    second_primary: Placement | None
    nodes: tuple[Placement, ...]
    lung_lesions: tuple[Placement, ...]
    primary_parts: tuple[Placement, ...]
    others: tuple[Placement, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def primary_side(self) -> Literal["left", "right", "unknown"]:
        """Side used for staging: unknown without a primary or with a comparable tumour in
        the other lung."""
        if self.primary is None or self.second_primary is not None:
            return "unknown"
        return self.primary.side if self.primary.side in ("left", "right") else "unknown"

    def all(self) -> list[Placement]:
        """Every placement, by lesion id."""
        items = [p for p in (self.primary, self.second_primary) if p is not None]
        items += [*self.nodes, *self.lung_lesions, *self.primary_parts, *self.others]
        return sorted(items, key=lambda p: p.id)


def _lobe(les: Lesion) -> str | None:
    """Lobe holding most of the lesion (``lung_upper_lobe_left`` -> ``upper_left``)."""
    lobes = {k: v for k, v in {**les.surround, **les.inside}.items()
             if k.startswith("lung_") and "lobe" in k}
    if not lobes:
        return None
    name = max(lobes, key=lambda k: les.inside.get(k, 0.0) * 10 + les.surround.get(k, 0.0))
    parts = name.split("_")  # lung_upper_lobe_left
    return f"{parts[1]}_{parts[3]}"


def _side_of_x(x: float, midline: float, tol: float = 5.0) -> Side:
    # +x is the patient's LEFT.
    if x > midline + tol:
        return "left"
    if x < midline - tol:
        return "right"
    return "midline"


def _hilar_distance(les: Lesion) -> float:
    ds = [d for n, d in les.distance_mm.items() if n in HILAR_STRUCTURES]
    return min(ds) if ds else math.inf


def _is_pulmonary(les: Lesion, s: StationSettings) -> bool:
    """In the lung, or embedded in it: the same fractions that make a node intrapulmonary."""
    return les.lung_fraction >= s.intrapulmonary_min_inside or (
        les.lung_rim_fraction >= s.intrapulmonary_min_surround
        and les.zones.get("mediastinal", 0.0) < 0.5)


def _central_side(les: Lesion, cth: dict) -> str | None:
    """The lung a central mass lies against (not wrapped by both), or None."""
    if les.short_axis_mm < cth["central_primary_min_short_axis_mm"]:
        return None
    left, right = les.surround.get("lung_left", 0.0), les.surround.get("lung_right", 0.0)
    if max(left, right) < cth["central_primary_lung_contact_min"]:
        return None
    if min(left, right) * 2.0 > max(left, right):
        return None
    return "left" if left > right else "right"


def _primary_of(pulmonary: list[Lesion], candidates: list[Lesion], landmarks: Landmarks,
                cth: dict) -> tuple[Lesion | None, str, str]:
    """The primary tumour, its side and the reason (see rule 3 of the module docstring)."""
    lung = max(pulmonary, key=lambda le: le.tlg, default=None)
    central = [le for le in candidates if _central_side(le, cth)]
    mass = max(central, key=lambda le: le.tlg, default=None)
    if mass is not None and (lung is None
                             or mass.tlg >= cth["central_over_lung_tlg_ratio"] * lung.tlg):
        side = _central_side(mass, cth)
        rival = ("no lesion inside the lung parenchyma" if lung is None else
                 f"{mass.tlg / max(lung.tlg, 1e-6):.0f} x the TLG of the largest lung lesion")
        return mass, side, (
            f"central tumour: a mass against the {side} lung outside the aerated lung "
            f"({mass.short_axis_mm:.0f} mm short axis, larger than a node usually is; TLG "
            f"{mass.tlg:.1f} g, SUVmax {mass.suv_max:.1f}, {mass.volume_ml:.1f} ml), {rival}; "
            "lower confidence: check that it is not a bulky node")
    if lung is None:
        return None, "unknown", ""
    x, _, z = lung.centroid_mm
    side = lung.lung_side or _side_of_x(x, landmarks.midline_x(z))
    return lung, side, (f"largest and most avid lung lesion (TLG {lung.tlg:.1f} g, SUVmax "
                        f"{lung.suv_max:.1f}, {lung.volume_ml:.1f} ml) in the {side} lung")


def _intrapulmonary_node(les: Lesion, cth: dict) -> str | None:
    """Why a small lung lesion along the bronchovascular bundle is a node (10-14), or None."""
    near = _hilar_distance(les)
    sa = les.short_axis_mm
    if ((sa <= cth["intrapulmonary_node_max_short_axis_mm"]
         and near <= cth["intrapulmonary_node_max_hilum_mm"])
            or (sa <= cth["hilar_node_max_short_axis_mm"]
                and near <= cth["hilar_node_max_distance_mm"])):
        return (f"node inside the lung contour (stations 10-14): {sa:.0f} mm short axis, "
                f"{near:.0f} mm from the bronchi/pulmonary vessels")
    return None


def _lung_relation(les: Lesion, side: str, primary: Lesion, primary_side: str) -> str:
    if side != primary_side:
        return "other lung"
    mine, theirs = _lobe(les), _lobe(primary)
    if mine is None or theirs is None:
        return "same lung"
    return "same lobe" if mine == theirs else "other lobe"


def _zone_of(station: str) -> str:
    number = int(station.rstrip("RLap"))
    if number == 1:
        return "supraclavicular"
    if number == 10:
        return "hilar"
    return "intrapulmonary" if number >= 11 else "mediastinal"


def place(lesions: list[Lesion], landmarks: Landmarks, thresholds: dict | None = None,
          settings: StationSettings | None = None,
          reference_suv: dict | None = None) -> Placements:
    """Decide what every lesion is (see the module docstring for the rules).

    Parameters
    ----------
    lesions : list of Lesion
        Measured lesions of one study (:func:`nstage.findings.measure`).
    landmarks : Landmarks
        The study's anatomical frame (:func:`nstage.landmarks.find`).
    thresholds : dict, optional
        Overrides of ``resources/thresholds.json``.
    settings : StationSettings, optional
        :func:`nstage.stations.station_settings` of the same thresholds.
    reference_suv : dict, optional
        ``LesionMask.reference_suv``: its ``blood_pool`` and ``noise_sd_blood_pool`` (SUV) give
        the PET noise for the symmetric-hilar cut-off; without them the cut-off is exact.

    Returns
    -------
    Placements
        Each lesion in exactly one list.
    """
    th = resolve(thresholds)
    cth, pth = th["classification"], th["positivity"]
    s = settings or stations.station_settings(thresholds)
    notes: list[str] = []
    others: list[Placement] = []
    pulmonary: list[Lesion] = []
    candidates: list[Lesion] = []
    for les in lesions:
        outside = stations.not_regional(les, landmarks, s)
        if outside is not None:
            others.append(Placement(les, "other", outside.side, outside.reason, "outside",
                                    outside))
        elif _is_pulmonary(les, s):
            pulmonary.append(les)
        else:
            candidates.append(les)

    primary_les, primary_side, why = _primary_of(pulmonary, candidates, landmarks, cth)
    primary = second = None
    lung_lesions: list[Placement] = []
    node_lesions: list[tuple[Lesion, str]] = [(le, "") for le in candidates
                                               if le is not primary_les]
    if primary_les is not None:
        zone = "lung" if primary_les in pulmonary else "central"
        why += _extension_words(primary_les, cth, notes)
        primary = Placement(primary_les, "primary", primary_side, why, zone)
        if zone == "central":
            notes.append(f"the mass against the {primary_side} lung "
                         f"({primary_les.short_axis_mm:.0f} mm) is taken for a central primary "
                         "tumour, lower confidence: check that it is not a bulky node")
        for les in sorted((le for le in pulmonary if le is not primary_les),
                          key=lambda le: -le.tlg):
            node_why = _intrapulmonary_node(les, cth)
            if node_why is not None:
                node_lesions.append((les, node_why))
                continue
            placed = _second_lung_lesion(les, primary_les, primary_side, second is None,
                                         landmarks, cth)
            if placed.second_primary:
                second = placed
                notes.append("a tumour of comparable size in the other lung: the side of the "
                             "primary is ambiguous (N computed for either side)")
            else:
                lung_lesions.append(placed)
    else:
        notes.append("no FDG-avid lesion in or next to the lungs: no primary tumour found")
        node_lesions += [(le, "lung lesion without a primary, placed as a node candidate")
                         for le in pulmonary]

    nodes, parts = [], []
    for les, why in node_lesions:
        placed = _node(les, why, primary_les, landmarks, s, cth)
        {"node": nodes, "primary_part": parts}.get(placed.kind, others).append(placed)
    nodes = _flag_symmetric_hilar(nodes, pth, notes, reference_suv)
    return Placements(primary, second, tuple(sorted(nodes, key=lambda p: p.id)),
                      tuple(lung_lesions), tuple(parts), tuple(sorted(others, key=lambda p: p.id)),
                      tuple(notes))


def _extension_words(primary: Lesion, cth: dict, notes: list[str]) -> str:
    """The reason's clause for a primary reaching past the pleura (T, not N)."""
    if primary.extension_ml < cth["direct_extension_min_ml"]:
        return ""
    zone = primary.extension_zone or "mediastinal"
    notes.append(f"the primary tumour extends into the {zone} zone: T descriptor, not N")
    return (f"; extends into the {zone} zone ({primary.extension_ml:.1f} ml outside the lung "
            "parenchyma): T, not N")


def _second_lung_lesion(les: Lesion, primary: Lesion, primary_side: str, may_be_second: bool,
                        landmarks: Landmarks, cth: dict) -> Placement:
    """A lung lesion that is neither the primary nor a node."""
    x, _, z = les.centroid_mm
    side = les.lung_side or _side_of_x(x, landmarks.midline_x(z))
    relation = _lung_relation(les, side, primary, primary_side)
    near = _hilar_distance(les)
    near_words = (f"{near:.0f} mm from the hilar structures" if math.isfinite(near)
                  else "away from the hilar structures")
    if (may_be_second and relation == "other lung"
            and les.volume_ml >= cth["second_primary_min_volume_ml"]
            and primary.tlg < cth["primary_dominance_ratio"] * les.tlg):
        return Placement(les, "lung_lesion", side, (
            f"separate tumour in the {side} lung of comparable size (TLG {les.tlg:.1f} g vs "
            f"{primary.tlg:.1f} g): possible second primary, side of the primary ambiguous"),
            "lung", relation=relation, second_primary=True)
    what = {"other lung": "M1a or a second primary", "same lobe": "T3 descriptor",
            "other lobe": "T4 descriptor", "same lung": "T3/T4 descriptor"}[relation]
    return Placement(les, "lung_lesion", side, (
        f"additional lung lesion, {relation} ({what}), not a node: {les.short_axis_mm:.0f} mm, "
        f"TLG {les.tlg:.1f} g, {near_words}"), "lung",
        relation=relation)


def _node(les: Lesion, why: str, primary: Lesion | None, landmarks: Landmarks,
          s: StationSettings, cth: dict) -> Placement:
    """A regional node candidate on the IASLC map, a piece of the primary, or other."""
    touches = primary is not None and (primary.id in les.contiguous_with
                                       or les.id in primary.contiguous_with)
    node_shaped = les.short_axis_mm <= cth["node_max_short_axis_mm"]
    big_enough = les.volume_ml >= cth["node_min_volume_ml"]
    if touches and not (node_shaped and big_enough):
        what = "too small" if not big_enough else f"{les.short_axis_mm:.0f} mm short axis"
        return Placement(les, "primary_part", None, (
            f"part of the primary tumour's uptake (contiguous, {what}: not a separate "
            "node-shaped focus); invasion is T, not N"), "central")
    if not big_enough:
        return Placement(les, "other", None, (
            f"{les.volume_ml:.2f} ml focus, below {cth['node_min_volume_ml']} ml: noise or "
            "partial volume, not a node"), None)
    assignment = stations.assign(les, landmarks, s)
    if assignment.station is None:
        return Placement(les, "other", assignment.side, assignment.reason, "outside",
                         assignment)
    reason = why or "regional node candidate outside the lung parenchyma"
    if touches:
        reason += ("; contiguous with the primary but a separate node-shaped focus (direct "
                   "extension into a node counts as nodal involvement)")
    return Placement(les, "node", assignment.side, reason, _zone_of(assignment.station),
                     assignment, contiguous_with_primary=touches)


def mild_hilar_limit(pth: dict, reference_suv: dict | None) -> float:
    """Highest SUVmax (SUV) still read as mildly avid for the symmetric-hilar rule.

    ``symmetric_hilar_max_suv`` plus ``symmetric_hilar_noise_sd`` per-voxel noise SDs at that
    level (the study's noise model: ``noise_sd_blood_pool`` scaled by sqrt(SUV / blood pool),
    as count noise scales); the cut-off alone where the noise is not known. An SUVmax is the
    hottest of a node's noisy voxels, so a mild node's reading lies above its uptake by about
    that noise; within it the node is not distinguishable from the cut-off.
    """
    cut = float(pth["symmetric_hilar_max_suv"])
    ref = reference_suv or {}
    sd, bp = ref.get("noise_sd_blood_pool"), ref.get("blood_pool")
    if not (sd and bp and sd > 0 and bp > 0):
        return cut
    return cut + float(pth["symmetric_hilar_noise_sd"]) * float(sd) * math.sqrt(cut / bp)


def _flag_symmetric_hilar(nodes: list[Placement], pth: dict, notes: list[str],
                          reference_suv: dict | None = None) -> list[Placement]:
    """Flag bilateral, similar, mildly avid hilar uptake (stations 10-11) as likely reactive.

    Each mild hilar node (SUVmax below ``symmetric_hilar_max_suv``, within the PET noise:
    :func:`mild_hilar_limit`) is flagged when the other hilum holds a mild node within
    ``symmetric_hilar_ratio`` of it: a hotter node on one side (a true metastasis beside a
    reactive pair) neither joins the pair nor hides it.
    """
    def hilar(p: Placement) -> bool:
        return int(p.station.station.rstrip("RLap")) in (10, 11)

    limit = mild_hilar_limit(pth, reference_suv)
    mild = {s: [p for p in nodes if hilar(p) and p.side == s and p.lesion.suv_max < limit]
            for s in ("left", "right")}
    ratio = float(pth["symmetric_hilar_ratio"])

    def similar(a: Placement, b: Placement) -> bool:
        hi, lo = sorted((a.lesion.suv_max, b.lesion.suv_max), reverse=True)
        return hi / max(lo, 1e-6) <= ratio

    pair = [p for s, o in (("left", "right"), ("right", "left"))
            for p in mild[s] if any(similar(p, q) for q in mild[o])]
    if not pair:
        return nodes
    sides = {s: max((p.lesion.suv_max for p in pair if p.side == s), default=0.0)
             for s in ("right", "left")}
    cut = float(pth["symmetric_hilar_max_suv"])
    within = (f"; mild: below {limit:.2f}, the cut-off {cut:.1f} plus the PET noise"
              if limit > cut else "")
    notes.append(f"symmetric mildly avid hilar uptake (SUVmax {sides['right']:.1f} right, "
                 f"{sides['left']:.1f} left{within}): read as reactive")
    ids = {p.id for p in pair}
    return [replace(p, symmetric_hilar=True) if p.id in ids else p for p in nodes]
