"""IASLC station and side of each node from the anatomical frame (pure geometry).

Rules follow the IASLC lymph-node map (Rusch et al., J Thorac Oncol 2009;4:568) as
translated into segmentation landmarks in ``../shared/docs/CLINICAL.md`` section 2.
Everything here is pure: a node's centroid (mm LPS: +x patient LEFT, +y POSTERIOR,
+z SUPERIOR), its contact measurements (:attr:`Lesion.inside`, :attr:`Lesion.distance_mm`,
:attr:`Lesion.surround`, :attr:`Lesion.zones`) and the :class:`~nstage.landmarks.Landmarks`
go in; a :class:`StationAssignment` comes out. Every position comes from the landmarks
(measured, or approximated by :func:`nstage.landmarks.complete`); every distance from
``resources/thresholds.json`` section ``stations``.

How a node is placed, in order (the first rule that claims it decides):

1. Not regional (``station=None``): above the trachea top (cricoid proxy, cervical); below
   the diaphragm dome away from the lung bases (abdominal); lateral, not in the lung and not
   between the lungs (axillary / chest wall / pleura).
2. Intrapulmonary (11-14): inside the (hole-filled) lung or rimmed by it, outside the hilar
   zone around the main bronchus; 11 / 12 / 13 / 14 by distance from the bronchus's end.
3. Station 1: between the manubrium top and the trachea top; side by the tracheal midline.
4. Above the carina: 6 (left of the left tracheal border at arch levels, lateral to or in
   front of the arch), 5 (left-lateral between arch bottom and left PA top), 3a
   (prevascular), 3p (retrotracheal), then the paratracheal stations split by the LEFT
   tracheal border: 2R / 4R / 10R by the brachiocephalic crossing and the azygos lower
   border, 2L / 4L / 10L by the arch top and the left PA top.
5. Below the carina: 7 between the main bronchi down to ``station7_bottom``; beside a main
   bronchus 4R / 4L while above the station 10 upper border, else 10; lower down 8 next to
   the oesophagus, 9 away from it below the inferior pulmonary vein, 10 near the hilum. Below
   the diaphragm dome, uptake away from both the oesophagus and the lung is not regional:
   station 9 lies within the pulmonary ligament, which is attached to the lung.

Uncertainty: each boundary that decided the station has a soft zone (``boundary_soft_mm``,
or ``approximated_soft_mm`` when its landmark was approximated or the contact it rests on
was not measured). A node at distance ``d`` inside it lies across that boundary with
probability ``q = 0.5 (1 - d / soft)`` (0.5 on the boundary), in the station on the other
side (:attr:`StationAssignment.alternatives`); :attr:`StationAssignment.confidence` is the
probability of the station itself. Staging sums over these alternatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import cache, lru_cache
from typing import Literal

import numpy as np

from nstage import landmarks as lm
from nstage.findings import Lesion
from nstage.geometry import Point
from nstage.landmarks import Landmarks, TracheaLevel
from nstage.thresholds import resolve

Side = Literal["left", "right", "midline"]

# Hilar vessels of IASLC station 10 (proximal pulmonary veins and main pulmonary artery).
HILAR_VESSELS = ("pulmonary_artery", "pulmonary_vein")
# A lesion mostly inside one of these is uptake of (or a metastasis in) that organ, not a node.
ORGANS_NOT_NODES = ("liver", "spleen", "kidney_left", "kidney_right", "adrenal_gland_left",
                    "adrenal_gland_right", "stomach", "pancreas", "gallbladder", "small_bowel",
                    "duodenum", "colon", "urinary_bladder", "brain", "thyroid_gland", "heart",
                    "myocardium", "spinal_cord")
# Bone classes ("spine": the classical backend labels the whole vertebral column so).
BONE_PREFIXES = ("vertebrae_", "spine", "rib_", "sternum", "clavicula", "scapula", "humerus",
                 "hip_", "sacrum", "femur", "skull", "costal_cartilages")
_LUNG_PARTS = {
    "left": ("lung_left", "lung_upper_lobe_left", "lung_lower_lobe_left"),
    "right": ("lung_right", "lung_upper_lobe_right", "lung_middle_lobe_right",
              "lung_lower_lobe_right"),
}
# An alternative "station" meaning: the rules after the one that decided (see assign).
_NEXT = "next rule"


@dataclass(frozen=True)
class Alternative:
    """A station the node may lie in instead, across one boundary.

    Attributes
    ----------
    station : str or None
        IASLC code, or None for "not a regional node".
    probability : float
        0-1.
    boundary : str
        The boundary crossed, e.g. ``"4R/10R"``.
    distance_mm : float
        How far inside the decided station the node lies from that boundary.
    """

    station: str | None
    probability: float
    boundary: str
    distance_mm: float


@dataclass(frozen=True)
class StationAssignment:
    """Where a node lies on the IASLC map.

    Attributes
    ----------
    station : str or None
        IASLC code (``"1R"``, ``"3a"``, ``"4L"``, ``"7"``, ``"10R"``, ...), or None when the
        node lies outside the regional stations (then it is an "other lesion").
    side : {"left", "right", "midline"}
        Side of the patient.
    confidence : float
        Probability (0-1) that the node lies in ``station`` rather than in one of the
        ``alternatives``.
    reason : str
        One line naming the landmarks used and whether any was approximated.
    landmarks_used : tuple of str
    approximated : bool
        A deciding landmark was approximated.
    alternatives : tuple of Alternative
        Stations across the boundaries the node is close to, with their probabilities
        (``confidence + sum(alternative probabilities) == 1``).
    """

    station: str | None
    side: Literal["left", "right", "midline"]
    confidence: float
    reason: str
    landmarks_used: tuple[str, ...] = field(default_factory=tuple)
    approximated: bool = False
    alternatives: tuple[Alternative, ...] = ()

    def distribution(self) -> dict[str | None, float]:
        """``{station: probability}`` over the station and its alternatives (sums to 1)."""
        out: dict[str | None, float] = {self.station: self.confidence}
        for alt in self.alternatives:
            out[alt.station] = out.get(alt.station, 0.0) + alt.probability
        return out


@dataclass(frozen=True)
class StationSettings:
    """The ``stations`` section of ``resources/thresholds.json`` (units and sources there).

    Build it with :func:`station_settings`; the numbers are never written here.
    """

    boundary_soft_mm: float
    approximated_soft_mm: float
    prevascular_min_mm: float
    sternum_contact_mm: float
    retrotracheal_min_mm: float
    retrotracheal_lateral_mm: float
    ligamentum_offset_mm: float
    para_aortic_offset_mm: float
    para_aortic_anterior_mm: float
    subaortic_anterior_max_mm: float
    hilar_beyond_mm: float
    hilar_radius_mm: float
    hilar_vessel_contact_mm: float
    intrapulmonary_lateral_mm: float
    outside_lateral_mm: float
    lung_contact_mm: float
    intrapulmonary_min_inside: float
    intrapulmonary_min_surround: float
    interlobar_max_mm: float
    lobar_max_mm: float
    segmental_max_mm: float
    subcarinal_max_half_width_mm: float
    bone_min_fraction: float
    bronchus_radius_mm: float
    esophagus_contact_mm: float
    paraesophageal_max_mm: float
    station1_lateral_max_mm: float
    abdominal_lung_gap_mm: float
    abdominal_organ_min_inside: float


def station_settings(thresholds: dict | None = None, **changes: float) -> StationSettings:
    """:class:`StationSettings` from the thresholds (packaged defaults when None).

    Parameters
    ----------
    thresholds : dict, optional
        :func:`nstage.thresholds.load_thresholds` values or partial overrides.
    **changes
        Single values to override, e.g. ``ligamentum_offset_mm=30.0``.
    """
    if thresholds is None and not changes:
        return _default_settings()
    values = resolve(thresholds)["stations"]
    names = {f.name for f in fields(StationSettings)}
    unknown = set(changes) - names
    if unknown:
        raise TypeError(f"unknown station settings: {', '.join(sorted(unknown))}")
    return StationSettings(**{k: float(changes.get(k, values[k])) for k in names})


@lru_cache(maxsize=1)
def _default_settings() -> StationSettings:
    values = resolve(None)["stations"]
    return StationSettings(**{f.name: float(values[f.name]) for f in fields(StationSettings)})


# --------------------------------------------------------------------------- the frame


@dataclass(frozen=True)
class _Ref:
    """A landmark level/point as used by the rules, with how it was obtained."""

    name: str
    words: str
    z: float
    approximated: bool = False
    how: str = ""
    point: Point | None = None

    def describe(self) -> str:
        text = f"{self.words} z={self.z:+.0f}"
        if self.approximated:
            text += f" (approximated{': ' + self.how if self.how else ''})"
        return text


_WORDS = {
    lm.CARINA: "carina", lm.TRACHEA_TOP: "trachea top", lm.MANUBRIUM_TOP: "manubrium top",
    lm.BRACHIOCEPHALIC_CROSSING: "brachiocephalic crossing",
    lm.AORTIC_ARCH_TOP: "aortic arch top", lm.AORTIC_ARCH_BOTTOM: "aortic arch bottom",
    lm.LEFT_PA_TOP: "left PA top", lm.AZYGOS_BOTTOM: "azygos lower border",
    lm.STATION7_BOTTOM: "station 7 bottom", lm.INFERIOR_PULMONARY_VEIN: "inferior pulmonary vein",
    lm.DIAPHRAGM_LEFT: "left diaphragm", lm.DIAPHRAGM_RIGHT: "right diaphragm",
    lm.HILUM_LEFT: "left hilum", lm.HILUM_RIGHT: "right hilum",
}


def _ref(landmarks: Landmarks, name: str) -> _Ref | None:
    item = landmarks.get(name)
    if item is None:
        return None
    how = item.source if item.approximated else ""
    return _Ref(name, _WORDS[name], float(item.z_mm), item.approximated, how, item.point_mm)


@dataclass(frozen=True)
class _Frame:
    """The landmarks as the rules read them (all present, from :mod:`nstage.landmarks`)."""

    carina: _Ref
    carina_xyz: Point
    trachea: tuple[TracheaLevel, ...]
    trachea_top: _Ref | None
    manubrium: _Ref | None
    crossing: _Ref
    arch_top: _Ref
    arch_bottom: _Ref
    left_pa: _Ref
    azygos: _Ref
    station7_bottom: _Ref
    ipv: _Ref
    diaphragm: dict[str, _Ref]
    hilum: dict[str, _Ref]
    bronchus: dict[str, np.ndarray]  # (n, 3) polyline carina -> main bronchus -> hilum
    main_bronchus: dict[str, np.ndarray]  # (n, 3) polyline carina -> main bronchus only
    landmarks: Landmarks


def _needs_completion(landmarks: Landmarks) -> bool:
    carina = landmarks.get(lm.CARINA)
    if carina is None or carina.point_mm is None or not landmarks.trachea:
        return bool(landmarks.trachea) or carina is not None
    return any(name not in landmarks.points for name in lm.RULE_LANDMARKS)


def _resolve(landmarks: Landmarks) -> _Frame | None:
    """The frame the rules read; None when there is neither a carina nor a trachea.

    Landmarks from :func:`nstage.landmarks.find` are complete already; hand-built ones are
    completed by :func:`nstage.landmarks.complete` (packaged distances), never here.
    """
    if _needs_completion(landmarks):
        landmarks = lm.complete(landmarks)
    carina = _ref(landmarks, lm.CARINA)
    if carina is None or carina.point is None:
        return None
    cxyz: Point = tuple(float(v) for v in carina.point)  # type: ignore[assignment]
    trachea = tuple(sorted(landmarks.trachea, key=lambda t: -t.z_mm))
    diaphragm = {side: ref for side, name in (("left", lm.DIAPHRAGM_LEFT),
                                               ("right", lm.DIAPHRAGM_RIGHT))
                 if (ref := _ref(landmarks, name)) is not None}
    hilum: dict[str, _Ref] = {}
    bronchus: dict[str, np.ndarray] = {}
    main: dict[str, np.ndarray] = {}
    for side, name in (("left", lm.HILUM_LEFT), ("right", lm.HILUM_RIGHT)):
        # Only the part below the carina: a bronchus label may reach up beside the trachea.
        pts = [tuple(map(float, p)) for p in landmarks.bronchi.get(side, [])
               if float(p[2]) <= cxyz[2]]
        ref = _ref(landmarks, name)
        hilum[side] = ref
        line = [cxyz, *pts]
        main[side] = np.asarray(line if len(line) > 1 else [cxyz, ref.point], dtype=float)
        if math.dist(line[-1], ref.point) > 1.0:
            line.append(tuple(map(float, ref.point)))
        bronchus[side] = np.asarray(line, dtype=float)
    return _Frame(carina, cxyz, trachea, _ref(landmarks, lm.TRACHEA_TOP),
                  _ref(landmarks, lm.MANUBRIUM_TOP), _ref(landmarks, lm.BRACHIOCEPHALIC_CROSSING),
                  _ref(landmarks, lm.AORTIC_ARCH_TOP), _ref(landmarks, lm.AORTIC_ARCH_BOTTOM),
                  _ref(landmarks, lm.LEFT_PA_TOP), _ref(landmarks, lm.AZYGOS_BOTTOM),
                  _ref(landmarks, lm.STATION7_BOTTOM),
                  _ref(landmarks, lm.INFERIOR_PULMONARY_VEIN), diaphragm, hilum, bronchus,
                  main, landmarks)


# --------------------------------------------------------------------------- geometry helpers


def trachea_level(landmarks: Landmarks, z_mm: float) -> TracheaLevel | None:
    """Trachea cross-section used for a node at level ``z_mm`` (mm).

    Below the carina the lowest (carina) level is used; above the most cranial level, that one.
    """
    return landmarks.trachea_at(z_mm)


def side_by_midline(x_mm: float, landmarks: Landmarks, z_mm: float) -> Side:
    """Side of a node by the patient's midline (stations 1, 8, 9, 10-14).

    ``x_mm`` larger than the midline (:meth:`Landmarks.midline_x`) is the patient's left.
    """
    return "left" if x_mm > landmarks.midline_x(z_mm) else "right"


def side_by_left_border(x_mm: float, landmarks: Landmarks, z_mm: float) -> Side:
    """Side of a paratracheal node (stations 2 and 4) by the LEFT lateral tracheal border.

    IASLC 2009: the 2R/2L and 4R/4L boundary is the left lateral wall of the trachea, so a
    pretracheal node just left of the midline is still right-sided.
    """
    level = trachea_level(landmarks, z_mm)
    if level is None:
        return side_by_midline(x_mm, landmarks, z_mm)
    return "left" if x_mm > level.left_border_x_mm else "right"


def bronchus_at(line: np.ndarray, z_mm: float) -> tuple[float, float]:
    """(x, y) mm of a main-bronchus centreline polyline (carina outwards) at level ``z_mm``.

    Above the carina this is the carina; below the last point, the last point.
    """
    order = np.argsort(line[:, 2])
    zs = line[order, 2]
    return (float(np.interp(z_mm, zs, line[order, 0])),
            float(np.interp(z_mm, zs, line[order, 1])))


def bronchus_x_at(line: np.ndarray, z_mm: float) -> float:
    """x (mm) of a main-bronchus centreline polyline at level ``z_mm`` (see :func:`bronchus_at`)."""
    return bronchus_at(line, z_mm)[0]


def distance_to_polyline(point: Point, line: np.ndarray) -> float:
    """Smallest 3-D distance (mm) from ``point`` to a polyline of (n, 3) points."""
    p = np.asarray(point, dtype=float)
    if len(line) == 1:
        return float(np.linalg.norm(p - line[0]))
    a, b = line[:-1], line[1:]
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=1), 1e-9)
    t = np.clip(((p - a) * ab).sum(axis=1) / denom, 0.0, 1.0)
    return float(np.linalg.norm(a + t[:, None] * ab - p, axis=1).min())


# --------------------------------------------------------------------------- node measurements


@dataclass(frozen=True)
class _Contacts:
    """What the lesion's contact measurements say (None where not measured)."""

    measured: bool
    lung_inside: dict[str, float]
    lung_surround: float  # fraction of a thin shell around the node lying in lung
    mediastinal: float  # fraction of the node between the two lungs (0 when not measured)
    hilar_zone: float  # fraction in findings' hilar zone (near bronchi / pulmonary vessels)
    hilar_vessel_distance: float | None  # to the pulmonary artery / veins; None: not listed
    lung_distance: float | None  # None: not measured; inf: farther than the search radius
    esophagus_distance: float | None
    sternum_distance: float | None
    organ_inside: tuple[str, float]  # the organ (ORGANS_NOT_NODES) holding most of the node
    bone: float  # fraction inside or wrapped by bone, whichever is larger


def _contacts(lesion: Lesion) -> _Contacts:
    inside, dist = lesion.inside, lesion.distance_mm
    keys = set(inside) | set(dist)
    # findings.measure always reports the body and lungs; a bare Lesion (tests, other callers)
    # carries neither, and then contact cannot be used.
    measured = "body" in keys or any(k.startswith("lung") for k in keys)
    # A backend gives either whole lungs or lobes; take whichever covers more of the node.
    lung_inside = {side: max(inside.get(names[0], 0.0),
                             sum(inside.get(n, 0.0) for n in names[1:]))
                   for side, names in _LUNG_PARTS.items()}
    lung_inside["any"] = max(inside.get("lung", 0.0), lung_inside["left"], lung_inside["right"])
    lung_d = [v for k, v in dist.items() if k.startswith("lung")]
    if lung_inside["any"] > 0:
        lung_d.append(0.0)
    lung_distance = min(lung_d) if lung_d else (math.inf if measured else None)
    eso = dist.get("esophagus", 0.0 if inside.get("esophagus") else None)
    if eso is None and measured:
        eso = math.inf
    sternum = dist.get("sternum", math.inf if measured else None)
    shell = lesion.surround
    surround = max([shell.get("lung", 0.0)]
                   + [max(shell.get(names[0], 0.0), sum(shell.get(n, 0.0) for n in names[1:]))
                      for names in _LUNG_PARTS.values()])
    vessels = [dist[n] for n in HILAR_VESSELS if n in dist]
    organ = max(((n, inside.get(n, 0.0)) for n in ORGANS_NOT_NODES), key=lambda t: t[1])
    # A lytic lesion replaces the bone the mask was made from: wrapped by bone counts too.
    # (Classes and their groups may both be listed: a fraction of at most 1.)
    bone = min(1.0, max(sum(v for n, v in inside.items() if n.startswith(BONE_PREFIXES)),
                        sum(v for n, v in shell.items() if n.startswith(BONE_PREFIXES))))
    return _Contacts(measured, lung_inside, surround, lesion.zones.get("mediastinal", 0.0),
                     lesion.zones.get("hilar", 0.0), min(vessels) if vessels else None,
                     lung_distance, eso, sternum, organ, bone)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class _Margin:
    """A boundary near the decision: the station across it, the label, the distance (mm)
    and the landmark defining it (when it may be approximated)."""

    across: str | None
    label: str
    mm: float
    ref: _Ref | None = None


@dataclass
class _Decision:
    station: str | None
    side: Side
    clauses: list[str]
    refs: list[_Ref]
    margins: list[_Margin] = field(default_factory=list)
    unmeasured: bool = False
    extra_used: tuple[str, ...] = ()


def _letter(side: Side) -> str:
    return "L" if side == "left" else "R"


def _lateral_side(x: float, mid: float) -> Literal["left", "right"]:
    return "left" if x > mid else "right"


def _away(distance_mm: float) -> str:
    if math.isfinite(distance_mm):
        return f"{distance_mm:.0f} mm away"
    return "none within the search radius"


def _crossing_probability(margin_mm: float, soft_mm: float) -> float:
    """Probability of lying across a boundary: 0.5 on it, 0 at ``soft_mm`` inside or more."""
    if soft_mm <= 0:
        return 0.0
    return 0.5 * (1.0 - min(1.0, max(0.0, margin_mm) / soft_mm))


def _finish(d: _Decision, s: StationSettings, next_station) -> StationAssignment:
    """Probabilities over the station and its alternatives, and the one-line reason."""
    approximated = [r for r in d.refs if r.approximated]
    parts = list(d.clauses)
    scored = []
    for m in d.margins:
        approx = m.ref is not None and m.ref.approximated
        soft = s.approximated_soft_mm if (approx or d.unmeasured) else s.boundary_soft_mm
        across = next_station() if m.across == _NEXT else m.across
        scored.append((m, soft, approx, across, _crossing_probability(m.mm, soft)))
    keep = 1.0
    for *_, q in scored:
        keep *= 1.0 - q
    weights = []
    for i, (m, _, _, across, q) in enumerate(scored):
        if q <= 0.0 or across == d.station:
            continue
        others = math.prod(1.0 - t[-1] for j, t in enumerate(scored) if j != i)
        weights.append((m, across, q * others))
    total = keep + sum(w for *_, w in weights)
    alternatives = tuple(Alternative(across, round(w / total, 4), m.label,
                                     round(max(m.mm, 0.0), 1))
                         for m, across, w in sorted(weights, key=lambda t: -t[2]))
    confidence = round(1.0 - sum(a.probability for a in alternatives), 4)
    for m, _soft, approx, across, q in scored:
        if q > 0.0 and across != d.station:
            name = across or "not regional"
            parts.append(f"{max(m.mm, 0.0):.0f} mm from the {'approximated ' if approx else ''}"
                         f"{m.label} boundary (P {name} {q / total:.2f})")
    if d.refs:
        parts.append("landmarks: " + ", ".join(r.describe() for r in d.refs))
    if approximated:
        parts.append("approximated: " + ", ".join(r.words for r in approximated))
    else:
        parts.append("all landmarks measured")
    if d.unmeasured:
        parts.append("lung/oesophagus contact not measured")
    code = d.station if d.station is not None else "not regional"
    names: list[str] = []
    for n in (*[r.name for r in d.refs], *d.extra_used):
        if n not in names:
            names.append(n)
    return StationAssignment(
        station=d.station, side=d.side, confidence=confidence,
        reason=f"{code} ({d.side}): " + "; ".join(parts),
        landmarks_used=tuple(names), approximated=bool(approximated),
        alternatives=alternatives)


def _left_code(z: float, f: _Frame) -> str:
    """Left paratracheal station at level z (2L / 4L / 10L)."""
    if z > f.arch_top.z:
        return "2L"
    return "4L" if z >= f.left_pa.z else "10L"


def _right_code(z: float, f: _Frame) -> str:
    """Right paratracheal station at level z (2R / 4R / 10R)."""
    if z > f.crossing.z:
        return "2R"
    return "4R" if z >= f.azygos.z else "10R"


def _not_a_node(p: Point, f: _Frame, c: _Contacts, mid: float,
                s: StationSettings) -> _Decision | None:
    """Inside (or wrapped by) bone, or inside a solid organ: not a lymph node at all."""
    side = _lateral_side(p[0], mid)
    if c.bone >= s.bone_min_fraction:
        return _Decision(None, side, [f"skeletal: {c.bone:.0%} inside or surrounded by bone "
                                      "(possible M1), not a node"], [])
    name, share = c.organ_inside
    if share >= s.abdominal_organ_min_inside:
        return _Decision(None, side, [f"inside the {name} ({share:.0%}): not a regional node"],
                         [])
    return None


def _non_regional(p: Point, f: _Frame, c: _Contacts, mid: float,
                  s: StationSettings) -> _Decision | None:
    """Cervical above station 1, abdominal, or axillary / chest wall (not N)."""
    x, y, z = p
    side = _lateral_side(x, mid)
    if f.trachea_top is not None and z > f.trachea_top.z:
        return _Decision(None, side, ["cervical: above the trachea top (cricoid proxy), "
                                      "above station 1"], [f.trachea_top],
                         [_Margin(_NEXT, "cervical/1", z - f.trachea_top.z, f.trachea_top)])
    dia = f.diaphragm.get(side)
    if dia is not None and z < dia.z:
        below = [f"abdominal: {dia.z - z:.0f} mm below the {side} diaphragm dome"]
        margin = _Margin(_NEXT, "diaphragm", dia.z - z, dia)
        if c.lung_distance is None:
            return _Decision(None, side, below, [dia], [margin], unmeasured=True)
        if c.lung_distance > s.abdominal_lung_gap_mm:
            return _Decision(None, side, [*below, "away from the lung bases"], [dia], [margin])
    in_chest = f.manubrium is None or z <= f.manubrium.z  # above it: station 1 or neck
    off_mid = abs(x - mid)
    walls = f.landmarks.lung_walls_at(z)
    beyond = walls is not None and (x < walls[0] or x > walls[1])
    if (in_chest and c.lung_distance is not None
            and c.lung_inside["any"] < s.intrapulmonary_min_inside
            and c.lung_surround < s.intrapulmonary_min_surround
            and c.mediastinal < 0.5 and (off_mid > s.outside_lateral_mm or beyond)):
        # Lateral and not in the (hole-filled) lung: chest wall, pleura or axilla.
        contact = ("touching it from outside" if c.lung_distance <= s.lung_contact_mm
                   else _away(c.lung_distance))
        where = "lateral to the lungs at its level" if beyond else \
            f"{off_mid:.0f} mm {side} of the midline"
        margin = (min(x - walls[1], walls[0] - x) if beyond and walls is not None
                  else off_mid - s.outside_lateral_mm)
        return _Decision(None, side, [
            f"axillary/chest wall: {where}, outside the lung ({contact}) and not between the "
            "lungs"], [], [_Margin(_NEXT, "chest-wall/mediastinum", margin)],
            extra_used=("trachea_centre",))
    return None


def _hilar_geometry(p: Point, f: _Frame, side: str) -> tuple[float, float, float]:
    """Where a point lies relative to one main bronchus (mm).

    Returns ``(along, d_end, d_bronchus)``: how far beyond the bronchus's distal end (the
    hilum landmark) the point lies along the carina-to-end axis (negative: before the end),
    its distance to that end, and its distance to the bronchus centreline.
    """
    carina = np.asarray(f.carina_xyz, dtype=float)
    end = np.asarray(f.hilum[side].point, dtype=float)
    axis = end - carina
    norm = float(np.linalg.norm(axis))
    q = np.asarray(p, dtype=float)
    along = float((q - end) @ (axis / norm)) if norm > 0 else 0.0
    return along, float(np.linalg.norm(q - end)), distance_to_polyline(p, f.bronchus[side])


def _station10_top(f: _Frame, side: str) -> _Ref:
    """Upper border of station 10: azygos lower border (right), left PA top (left)."""
    return f.azygos if side == "right" else f.left_pa


def _intrapulmonary(p: Point, f: _Frame, c: _Contacts, mid: float,
                    s: StationSettings) -> _Decision | None:
    """Stations 11-14: in the lung beyond the hilar zone (only the side matters for N).

    The hilar zone (station 10) hugs the main bronchus below the station 10 upper border and
    ends ``hilar_beyond_mm`` past the bronchus's distal end, where the interlobar nodes (11,
    between the lobar bronchi origins) begin.
    """
    x, y, z = p
    if c.lung_inside["left"] != c.lung_inside["right"] and c.lung_inside["any"] > 0:
        side: Literal["left", "right"] = (
            "left" if c.lung_inside["left"] > c.lung_inside["right"] else "right")
    else:
        side = _lateral_side(x, mid)
    hil = f.hilum[side]
    top = _station10_top(f, side)
    along, d_end, d_bronchus = _hilar_geometry(p, f, side)
    # How far outside the hilar zone (negative: inside it).
    out_of_hilum = max(along - s.hilar_beyond_mm, d_bronchus - s.hilar_radius_mm, z - top.z)
    inside = c.lung_inside["any"] >= s.intrapulmonary_min_inside
    # A node in a groove of the mediastinal pleura can be mostly rimmed by lung; it is still
    # mediastinal when it lies between the two lungs, hilar when by the hilar structures.
    embedded = (c.lung_surround >= s.intrapulmonary_min_surround and c.mediastinal < 0.5
                and c.hilar_zone < 0.5)
    unmeasured = c.lung_distance is None
    refs = [hil]
    if (inside or embedded) and out_of_hilum > 0:
        why = (f"inside the {side} lung ({c.lung_inside['any']:.0%} of the node)" if inside
               else f"surrounded by the {side} lung ({c.lung_surround:.0%} of its rim)")
        margin = out_of_hilum
        if z - top.z >= max(along - s.hilar_beyond_mm, d_bronchus - s.hilar_radius_mm):
            refs.append(top)
    elif (unmeasured and (f.manubrium is None or z <= f.manubrium.z)
          and along > s.hilar_beyond_mm and abs(x - mid) >= s.intrapulmonary_lateral_mm):
        # Geometry alone: far lateral and beyond the main bronchus is lung in any chest.
        why = f"{abs(x - mid):.0f} mm from the midline beyond the {side} main bronchus"
        margin = min(along - s.hilar_beyond_mm, abs(x - mid) - s.intrapulmonary_lateral_mm)
    else:
        return None
    if d_end <= s.interlobar_max_mm:
        code = "11"
    elif d_end <= s.lobar_max_mm:
        code = "12"
    elif d_end <= s.segmental_max_mm:
        code = "13"
    else:
        code = "14"
    return _Decision(f"{code}{_letter(side)}", side, [
        f"intrapulmonary: {why}, {d_end:.0f} mm from the end of the main bronchus "
        "(11-14 split by that distance only)"], refs,
        [_Margin(_NEXT, "10/11", margin, hil)], unmeasured=unmeasured,
        extra_used=(f"main_bronchus_{side}",))


def _station1(p: Point, f: _Frame, c: _Contacts, mid: float,
              s: StationSettings) -> _Decision | None:
    """Station 1: below the cricoid (trachea top), above the manubrium; side by the midline."""
    x, y, z = p
    if f.manubrium is None or z <= f.manubrium.z:
        return None
    side = _lateral_side(x, mid)
    refs = [f.manubrium] + ([f.trachea_top] if f.trachea_top is not None else [])
    letter = _letter(side)
    if abs(x - mid) > s.station1_lateral_max_mm:
        return _Decision(None, side, [f"lateral neck/shoulder: {abs(x - mid):.0f} mm from the "
                                      "tracheal midline, above the manubrium"], refs,
                         [_Margin(f"1{letter}", "1/lateral",
                                  abs(x - mid) - s.station1_lateral_max_mm)],
                         extra_used=("trachea_centre",))
    t = trachea_level(f.landmarks, f.manubrium.z)
    below = "2L" if t is not None and x > t.left_border_x_mm else "2R"
    margins = [_Margin(below, "1/2", z - f.manubrium.z, f.manubrium),
               _Margin(f"1{'R' if letter == 'L' else 'L'}", "1R/1L (midline)", abs(x - mid))]
    if f.trachea_top is not None:
        margins.append(_Margin(None, "1/cervical", f.trachea_top.z - z, f.trachea_top))
    return _Decision(f"1{letter}", side, [
        f"low cervical/supraclavicular: above the manubrium top, below the trachea top; "
        f"{side} of the tracheal midline (x={mid:+.0f})"], refs, margins,
        extra_used=("trachea_centre",))


def _above_carina(p: Point, f: _Frame, c: _Contacts, t: TracheaLevel,
                  s: StationSettings) -> _Decision:
    """Mediastinal stations above the carina: 6, 3a, 3p, 5, then 2/4/10 by the left border."""
    x, y, z = p
    border_ref = ([_Ref("trachea", "tracheal walls", z, True, "carina +/- typical half width")]
                  if t.approximated else [])
    lb = t.left_border_x_mm
    used = ("trachea_left_border",)
    dy_ant = t.anterior_y_mm - y
    dy_post = y - t.posterior_y_mm
    left_of_border = x > lb
    lateral_left = x - (lb + s.para_aortic_offset_mm)
    anterior_left = min(dy_ant - s.para_aortic_anterior_mm, x - lb)
    arch = [f.arch_top, f.arch_bottom]
    paratracheal = _left_code(z, f) if left_of_border else _right_code(z, f)

    # 6: anterior and lateral to the ascending aorta and arch (IASLC), i.e. left of the left
    # tracheal border at arch levels and either well lateral of it or well in front of it
    # (the arch itself fills the space just beside and in front of the trachea: 4L).
    if f.arch_bottom.z <= z <= f.arch_top.z and (lateral_left > 0 or anterior_left > 0):
        where = ("lateral to the arch" if lateral_left >= anterior_left
                 else f"{dy_ant:.0f} mm anterior to the trachea, in front of the arch")
        return _Decision("6", "left", [
            f"para-aortic: {x - lb:.0f} mm left of the left tracheal border at aortic arch "
            f"levels ({where})"], [*border_ref, *arch],
            [_Margin("4L", "6/4L", max(lateral_left, anterior_left)),
             _Margin("2L", "6/arch top", f.arch_top.z - z, f.arch_top),
             _Margin("5", "6/5", z - f.arch_bottom.z, f.arch_bottom)], extra_used=used)

    sternal = (c.sternum_distance is not None and c.sternum_distance <= s.sternum_contact_mm
               and dy_ant > 0)
    # 5 before 3a: the AP window lies anterolateral to the trachea, in front of its wall by
    # as much as the prevascular space; only the space behind the sternum is 3a there.
    lig = x - (lb + s.ligamentum_offset_mm)
    if (f.left_pa.z <= z < f.arch_bottom.z and lig > 0 and not sternal
            and dy_ant < s.subaortic_anterior_max_mm):
        margins = [_Margin("4L", "4L/5", lig),
                   _Margin("6", "5/6", f.arch_bottom.z - z, f.arch_bottom),
                   _Margin("10L", "5/10L", z - f.left_pa.z, f.left_pa)]
        if dy_ant > s.prevascular_min_mm:
            margins.append(_Margin("3a", "5/3a", s.subaortic_anterior_max_mm - dy_ant))
        return _Decision("5", "left", [
            f"subaortic (AP window): {x - lb:.0f} mm left of the left tracheal border, lateral "
            "to the ligamentum arteriosum line, between arch bottom and left PA top"],
            [*border_ref, f.arch_bottom, f.left_pa], margins, extra_used=used)

    if dy_ant >= s.prevascular_min_mm or sternal:
        why = (f"{c.sternum_distance:.0f} mm from the sternum" if sternal
               else f"{dy_ant:.0f} mm anterior to the trachea")
        margins = [] if sternal else [_Margin(paratracheal, "3a/pretracheal",
                                              dy_ant - s.prevascular_min_mm)]
        return _Decision("3a", "midline", [
            f"prevascular: {why}, in front of the great vessels, above the carina"],
            [*border_ref, f.carina], margins, extra_used=("trachea_anterior_wall",))

    within = t.right_border_x_mm - s.retrotracheal_lateral_mm <= x <= \
        lb + s.retrotracheal_lateral_mm
    if dy_post >= s.retrotracheal_min_mm and within:
        side_margin = min(x - (t.right_border_x_mm - s.retrotracheal_lateral_mm),
                          lb + s.retrotracheal_lateral_mm - x)
        return _Decision("3p", "midline", [
            f"retrotracheal: {dy_post:.0f} mm behind the trachea, above the carina"],
            [*border_ref, f.carina],
            [_Margin(paratracheal, "3p/paratracheal",
                     min(side_margin, dy_post - s.retrotracheal_min_mm))],
            extra_used=("trachea_posterior_wall",))

    other_side = _right_code(z, f) if left_of_border else _left_code(z, f)
    border = [_Margin(other_side, "R/L (left tracheal border)", abs(x - lb),
                      border_ref[0] if border_ref else None)]
    where = f"{abs(x - lb):.0f} mm {'left' if left_of_border else 'right'} of the left " \
            f"tracheal border (x={lb:+.0f})"
    if left_of_border:
        if z > f.arch_top.z:
            margins = [_Margin("4L", "2L/4L", z - f.arch_top.z, f.arch_top), *border]
            if f.manubrium is not None:
                margins.append(_Margin("1L", "1/2", f.manubrium.z - z, f.manubrium))
            return _Decision("2L", "left", [f"upper paratracheal: {where}, above the aortic "
                                            "arch top"], [*border_ref, f.arch_top], margins,
                             extra_used=used)
        if z >= f.left_pa.z:
            margins = [_Margin("10L", "4L/10L", z - f.left_pa.z, f.left_pa),
                       _Margin("2L", "2L/4L", f.arch_top.z - z, f.arch_top), *border]
            if f.left_pa.z <= z < f.arch_bottom.z:
                margins.append(_Margin("5", "4L/5", -lig))
            return _Decision("4L", "left", [f"lower paratracheal: {where}, below the aortic "
                                            "arch top, above the left PA top"],
                             [*border_ref, f.arch_top, f.left_pa], margins, extra_used=used)
        return _Decision("10L", "left", [f"hilar: {where}, below the left PA top (left "
                                         "tracheobronchial angle)"],
                         [*border_ref, f.left_pa, f.carina],
                         [_Margin("4L", "4L/10L", f.left_pa.z - z, f.left_pa), *border],
                         extra_used=used)
    if z > f.crossing.z:
        margins = [_Margin("4R", "2R/4R", z - f.crossing.z, f.crossing), *border]
        if f.manubrium is not None:
            margins.append(_Margin("1R", "1/2", f.manubrium.z - z, f.manubrium))
        return _Decision("2R", "right", [f"upper paratracheal: {where}, above the "
                                         "brachiocephalic crossing"],
                         [*border_ref, f.crossing], margins, extra_used=used)
    if z >= f.azygos.z:
        return _Decision("4R", "right", [f"lower paratracheal: {where}, below the "
                                         "brachiocephalic crossing, above the azygos lower "
                                         "border"], [*border_ref, f.crossing, f.azygos],
                         [_Margin("10R", "4R/10R", z - f.azygos.z, f.azygos),
                          _Margin("2R", "2R/4R", f.crossing.z - z, f.crossing), *border],
                         extra_used=used)
    return _Decision("10R", "right", [f"hilar: {where}, below the azygos lower border, above "
                                      "the carina (right tracheobronchial angle)"],
                     [*border_ref, f.azygos, f.carina],
                     [_Margin("4R", "4R/10R", f.azygos.z - z, f.azygos), *border],
                     extra_used=used)


def _hilar(p: Point, f: _Frame, c: _Contacts, side: Literal["left", "right"], clause: str,
           margins: list[_Margin], s: StationSettings, extra_refs: list[_Ref]) -> _Decision:
    """Station 10: next to the main bronchus or the hilar vessels (IASLC: proximal pulmonary
    veins and main pulmonary artery)."""
    d = distance_to_polyline(p, f.bronchus[side])
    text = f"hilar: {clause}, {d:.0f} mm from the {side} main bronchus/hilum"
    margins = list(margins)
    vessel = c.hilar_vessel_distance
    if d > s.hilar_radius_mm:
        if vessel is not None and vessel <= s.hilar_vessel_contact_mm:
            text += f", {vessel:.0f} mm from the hilar vessels"
        else:
            # Beyond the usual hilar zone, the node may be interlobar (11): same side, and
            # N1/N3 alike, so only the code is in doubt.
            text += " (farther than usual for station 10)"
            margins.append(_Margin(f"11{_letter(side)}", "10/11", 0.0))
    return _Decision(f"10{_letter(side)}", side, [text], [f.hilum[side], *extra_refs],
                     margins, extra_used=(f"main_bronchus_{side}",))


def _above_hilar_level(p: Point, f: _Frame, side: Literal["left", "right"], lateral: float,
                       s: StationSettings) -> _Decision | None:
    """4R / 4L / 5 for a node beside a main bronchus below the carina but above the upper
    border of station 10 (azygos lower border on the right, left PA top on the left), which
    in some patients lies below the carina."""
    x, y, z = p
    if side == "right" and z >= f.azygos.z:
        return _Decision("4R", "right", [
            "lower paratracheal: beside the right main bronchus just below the carina, "
            "above the azygos lower border"], [f.carina, f.azygos],
            [_Margin("10R", "4R/10R", z - f.azygos.z, f.azygos),
             _Margin("7", "4R/7", lateral)])
    if side == "left" and z >= f.left_pa.z:
        border = f.trachea[-1].left_border_x_mm
        lig = x - (border + s.ligamentum_offset_mm)
        if lig > 0 and z < f.arch_bottom.z:
            return _Decision("5", "left", [
                "subaortic (AP window): lateral to the ligamentum arteriosum line below the "
                "carina, above the left PA top"], [f.carina, f.left_pa],
                [_Margin("4L", "4L/5", lig), _Margin("10L", "5/10L", z - f.left_pa.z, f.left_pa)])
        return _Decision("4L", "left", [
            "lower paratracheal: beside the left main bronchus just below the carina, above "
            "the left PA top"], [f.carina, f.left_pa],
            [_Margin("10L", "4L/10L", z - f.left_pa.z, f.left_pa), _Margin("7", "4L/7", lateral)])
    return None


def _below_carina(p: Point, f: _Frame, c: _Contacts, mid: float,
                  s: StationSettings) -> _Decision:
    """Stations 7, 8, 9 and 10 below the carina."""
    x, y, z = p
    # Below the main bronchi the subcarinal space is bounded by the bronchus intermedius and
    # the left lower-lobe bronchus, which run nearly vertically: keep the last x, capped.
    # Behind a bronchus the subcarinal space reaches out to its lateral wall (the bronchi lie
    # in front of the oesophagus); beside or in front of it, the centreline is the limit.
    half = s.subcarinal_max_half_width_mm
    xr, yr = bronchus_at(f.main_bronchus["right"], z)
    xl, yl = bronchus_at(f.main_bronchus["left"], z)
    wall = s.bronchus_radius_mm
    xr = max(xr - (wall if y > yr + wall else 0.0), f.carina_xyz[0] - half)
    xl = min(xl + (wall if y > yl + wall else 0.0), f.carina_xyz[0] + half)
    side = _lateral_side(x, mid)
    letter = _letter(side)
    if z >= f.station7_bottom.z:
        if xr < x < xl:
            near = "right" if x - xr < xl - x else "left"
            lateral = _above_hilar_level(p, f, near, 0.0, s)
            beside = lateral.station if lateral is not None else f"10{_letter(near)}"
            lb = f.trachea[-1].left_border_x_mm
            return _Decision("7", "midline", [
                "subcarinal: below the carina, between the main bronchi "
                f"(x {xr:+.0f}..{xl:+.0f}), above the station 7 bottom"],
                [f.carina, f.station7_bottom],
                [_Margin(beside, "7/10", min(x - xr, xl - x)),
                 _Margin("4L" if x > lb else "4R", "7/4", f.carina.z - z, f.carina),
                 _Margin(f"8{letter}", "7/8", z - f.station7_bottom.z, f.station7_bottom)],
                extra_used=("main_bronchus_right", "main_bronchus_left"))
        lateral = xr - x if side == "right" else x - xl
        upper = _above_hilar_level(p, f, side, lateral, s)
        if upper is not None:
            return upper
        return _hilar(p, f, c, side, f"lateral of the {side} main bronchus below the carina",
                      [_Margin("7", "7/10", lateral)], s, [f.carina])

    dx = abs(x - mid)
    if c.esophagus_distance is not None:
        near_eso = c.esophagus_distance <= s.esophagus_contact_mm
        eso_margin = abs(s.esophagus_contact_mm - c.esophagus_distance)
        eso_words = (f"{c.esophagus_distance:.0f} mm from the oesophagus"
                     if math.isfinite(c.esophagus_distance)
                     else "no oesophagus within the search radius")
    else:
        near_eso = dx <= s.paraesophageal_max_mm
        eso_margin = abs(s.paraesophageal_max_mm - dx)
        eso_words = f"{dx:.0f} mm from the midline (oesophagus not measured)"
    unmeasured = c.esophagus_distance is None
    low_neighbour = f"9{letter}" if z < f.ipv.z else f"10{letter}"
    if near_eso:
        return _Decision(f"8{letter}", side, [
            f"paraesophageal: below the station 7 bottom, {eso_words}"],
            [f.station7_bottom],
            [_Margin("7", "7/8", f.station7_bottom.z - z, f.station7_bottom),
             _Margin(low_neighbour, "8/9" if z < f.ipv.z else "8/10", eso_margin)],
            unmeasured=unmeasured)
    if z < f.ipv.z:
        lung_ok = c.lung_distance is None or c.lung_distance <= s.lung_contact_mm
        margins = [_Margin(f"8{letter}", "8/9", eso_margin),
                   _Margin(f"10{letter}", "9/10", f.ipv.z - z, f.ipv)]
        text = (f"pulmonary ligament: below the inferior pulmonary vein, medial to the {side} "
                f"lower lobe, {eso_words}")
        dia = f.diaphragm.get(side)
        if not lung_ok and dia is not None and z < dia.z:
            # The ligament reaches below the dome only along the lung (into the posterior
            # recess); uptake there off the lung and the oesophagus lies at the hiatus or in
            # the upper abdomen (gastro-oesophageal junction, cardia, retrocrural space).
            return _Decision(None, side, [
                f"abdominal: {dia.z - z:.0f} mm below the {side} diaphragm dome, not touching "
                f"the lung ({_away(c.lung_distance)}), {eso_words}: outside the pulmonary "
                "ligament (station 9 lies within it, against the lung) and not paraesophageal"],
                [dia, f.ipv],
                [_Margin(f"9{letter}", "lung contact", c.lung_distance - s.lung_contact_mm),
                 _Margin(f"9{letter}", "diaphragm", dia.z - z, dia),
                 _Margin(f"8{letter}", "8/outside", eso_margin)],
                unmeasured=unmeasured)
        if not lung_ok:
            text += f" (not touching the lung: {_away(c.lung_distance)})"
            margins.append(_Margin(None, "9/outside", 0.0))
        return _Decision(f"9{letter}", side, [text], [f.ipv, f.station7_bottom],
                         margins, unmeasured=c.lung_distance is None)
    return _hilar(p, f, c, side, "below the station 7 bottom, above the inferior pulmonary "
                  "vein, away from the oesophagus",
                  [_Margin(f"8{letter}", "8/10", eso_margin),
                   _Margin(f"9{letter}", "9/10", z - f.ipv.z, f.ipv)],
                  s, [f.station7_bottom, f.ipv])


def _mediastinal(p: Point, f: _Frame, c: _Contacts, mid: float,
                 s: StationSettings) -> _Decision:
    """Stations 2-10 by the level relative to the carina (always claims the node)."""
    if p[2] >= f.carina.z:
        t = trachea_level(f.landmarks, p[2])
        return _above_carina(p, f, c, t, s)
    return _below_carina(p, f, c, mid, s)


_RULES = (_not_a_node, _non_regional, _intrapulmonary, _station1, _mediastinal)


def not_regional(lesion: Lesion, landmarks: Landmarks,
                 settings: StationSettings | None = None) -> StationAssignment | None:
    """The first two rules of :func:`assign` alone: why a lesion (even one in or at the
    lung) cannot be a regional node (bone, organ, cervical, abdominal, chest wall), or None.

    :mod:`nstage.placement` asks this of every lesion before it looks for the primary, so
    the decision "not regional" is made by these rules only.
    """
    s = settings or _default_settings()
    f = _resolve(landmarks)
    if f is None:
        return None
    p: Point = tuple(float(v) for v in lesion.centroid_mm)  # type: ignore[assignment]
    mid = f.landmarks.midline_x(p[2])
    c = _contacts(lesion)
    for rule in _RULES[:2]:
        decision = rule(p, f, c, mid, s)
        if decision is not None:
            return _finish(decision, s, lambda: None)
    return None


def assign(lesion: Lesion, landmarks: Landmarks,
           settings: StationSettings | None = None) -> StationAssignment:
    """IASLC station and side of one node (Rusch et al., J Thorac Oncol 2009;4:568).

    Parameters
    ----------
    lesion : Lesion
        Uses ``centroid_mm`` (mm LPS) and, when present, ``inside`` / ``distance_mm`` /
        ``surround`` / ``zones`` for the lungs (``lung``, ``lung_left``, ``lung_right`` or
        lobes), ``esophagus``, ``sternum``, ``body`` and the pulmonary vessels. Without them
        the rules use geometry alone and the soft zones widen where contact would have decided.
    landmarks : Landmarks
        The study's frame from :func:`nstage.landmarks.find` (complete); hand-built landmarks
        are completed by :func:`nstage.landmarks.complete` (and the reason says which
        positions were approximated).
    settings : StationSettings, optional
        :func:`station_settings` of the run's thresholds (default: packaged).

    Returns
    -------
    StationAssignment
        ``station=None`` for nodes outside the regional stations (cervical above station 1,
        abdominal, axillary/chest wall) or when there is neither a carina nor a trachea.
    """
    s = settings or _default_settings()
    f = _resolve(landmarks)
    p: Point = tuple(float(v) for v in lesion.centroid_mm)  # type: ignore[assignment]
    if f is None:
        return StationAssignment(None, "midline", 0.0,
                                 "not assigned: no carina or trachea among the landmarks")
    mid = f.landmarks.midline_x(p[2])
    c = _contacts(lesion)
    decisions = (rule(p, f, c, mid, s) for rule in _RULES)
    decision = next(d for d in decisions if d is not None)

    @cache
    def next_station() -> str | None:
        # The rules after the deciding one: what the node would be without that rule.
        later = next((d for d in decisions if d is not None), None)
        return None if later is None else later.station

    return _finish(decision, s, next_station)
