"""IASLC station and side of each node from landmarks (pure geometry).

Rules follow the IASLC lymph-node map (Rusch et al., J Thorac Oncol 2009;4:568) as
translated into segmentation landmarks in ``../shared/docs/CLINICAL.md`` section 2.
Everything here is pure: a node's centroid (mm LPS: +x patient LEFT, +y POSTERIOR,
+z SUPERIOR), its contact measurements (:attr:`Lesion.inside`, :attr:`Lesion.distance_mm`)
and the :class:`~nstage.landmarks.Landmarks` go in; a :class:`StationAssignment` comes out.

How a node is placed, in order:

1. Not regional (``station=None``): above the trachea top (cricoid proxy, cervical); inside an
   abdominal organ, or below the diaphragm dome away from the lung bases (abdominal); far
   lateral, not in the lung and not between the lungs (axillary / chest wall / pleura).
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
   the oesophagus, 9 away from it below the inferior pulmonary vein, 10 near the hilum.

Confidence starts at :attr:`StationSettings.base_confidence` and drops when a deciding
landmark was approximated, when contact with lung / oesophagus was not measured, and when the
node lies within :attr:`StationSettings.boundary_soft_mm` of the boundary that decided it; the
reason says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from nstage import landmarks as lm
from nstage.findings import Lesion
from nstage.geometry import Point
from nstage.landmarks import Landmarks, TracheaLevel

Side = Literal["left", "right", "midline"]

# Structures whose interior means the lesion is abdominal, not a thoracic node.
ABDOMINAL_ORGANS = (
    "liver", "spleen", "stomach", "pancreas", "kidney_left", "kidney_right",
    "adrenal_gland_left", "adrenal_gland_right", "gallbladder", "duodenum",
    "small_bowel", "colon", "urinary_bladder",
)
# Hilar vessels of IASLC station 10 (proximal pulmonary veins and main pulmonary artery).
HILAR_VESSELS = ("pulmonary_artery", "pulmonary_vein")
_LUNG_PARTS = {
    "left": ("lung_left", "lung_upper_lobe_left", "lung_lower_lobe_left"),
    "right": ("lung_right", "lung_upper_lobe_right", "lung_middle_lobe_right",
              "lung_lower_lobe_right"),
}


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
        0-1; lower near a boundary or when a landmark was approximated.
    reason : str
        One line naming the landmarks used and whether any was approximated.
    landmarks_used : tuple of str
    approximated : bool
    """

    station: str | None
    side: Literal["left", "right", "midline"]
    confidence: float
    reason: str
    landmarks_used: tuple[str, ...] = field(default_factory=tuple)
    approximated: bool = False


@dataclass(frozen=True)
class StationSettings:
    """Distances (mm) and factors of the practical station rules.

    Defaults are typical adult anatomy; each one is a judgement, not an IASLC number.

    Attributes
    ----------
    base_confidence : float
        Confidence of a node far from every boundary with measured landmarks.
    approximated_factor : float
        Multiplies the confidence when a deciding landmark was approximated.
    approximated_soft_mm : float
        Like ``boundary_soft_mm`` for a boundary set by an approximated landmark.
    unmeasured_factor : float
        Multiplies the confidence when lung / oesophagus contact was not measured.
    boundary_soft_mm : float
        Within this distance of the deciding boundary the confidence falls linearly to half.
    prevascular_min_mm : float
        A node at least this far anterior to the trachea's anterior wall is prevascular (3a):
        the great vessels fill the first ~2 cm in front of the trachea.
    sternum_contact_mm : float
        A node anterior to the trachea and this close to the sternum is prevascular (3a).
    retrotracheal_min_mm : float
        Posterior to the trachea's posterior wall by at least this much for 3p.
    retrotracheal_lateral_mm : float
        3p may stick out this far beyond either lateral tracheal wall (the oesophagus lies
        behind the trachea, slightly left).
    ligamentum_offset_mm : float
        The ligamentum arteriosum (4L medial / 5 lateral) is taken as a sagittal line this far
        left of the left tracheal border; CT does not show it.
    para_aortic_offset_mm : float
        At arch levels a node this far left of the left tracheal border is lateral to the arch (6).
    subaortic_anterior_max_mm : float
        Station 5 reaches at most this far anterior to the trachea's anterior wall (the
        pulmonary trunk and the prevascular space 3a lie in front of it).
    para_aortic_anterior_mm : float
        At arch levels a node left of the left tracheal border and this far anterior to the
        trachea is in front of the arch (6), not beside the trachea (4L).
    azygos_above_carina_mm : float
        Lower border of the azygos arch when no landmark gives it (TotalSegmentator has no
        azygos): this far above the carina, i.e. the top of the right main bronchus.
    left_pa_above_carina_mm : float
        Upper rim of the left pulmonary artery when missing.
    crossing_above_arch_mm : float
        Brachiocephalic-vein crossing when missing: this far above the arch top.
    arch_height_mm : float
        Arch top to arch bottom when one of them is missing.
    station7_depth_mm : float
        Carina to the lower border of the bronchus intermedius when ``station7_bottom`` is missing.
    ipv_below_station7_mm : float
        Station 7 bottom to the inferior pulmonary vein when the vein is missing.
    hilar_beyond_mm : float
        Station 10 ends this far past the distal end of the main bronchus (the hilum
        landmark); beyond it, in the lung, the interlobar station 11 begins.
    hilar_radius_mm : float
        Distance from the main-bronchus centreline within which a node is hilar (bronchus
        radius + hilar vessels + a node radius).
    intrapulmonary_lateral_mm : float
        Without lung measurements: a node this far from the midline and beyond the main
        bronchus end is taken as intrapulmonary.
    outside_lateral_mm : float
        A node not in the lung, not between the lungs and this far from the midline is
        outside the thoracic cavity (axillary / chest wall / pleura).
    lung_contact_mm : float
        Distance to the lung counted as touching it.
    intrapulmonary_min_inside : float
        Fraction of the node inside the lung mask that makes it intrapulmonary.
    intrapulmonary_min_surround : float
        Fraction of the shell around the node lying in lung (:attr:`Lesion.surround`) that
        makes it intrapulmonary (``findings.classify`` uses 0.6 too): a node at the pleura
        or carved out of an air-threshold lung mask.
    interlobar_max_mm, lobar_max_mm, segmental_max_mm : float
        Distance from the hilum point that separates 11 / 12 / 13 / 14 (only the side matters
        for N).
    subcarinal_max_half_width_mm : float
        Station 7 extends at most this far either side of the carina (the main-bronchus
        centrelines bound it closer to the carina).
    hilar_vessel_contact_mm : float
        A node this close to the pulmonary artery or veins is next to the hilar vessels (10)
        even when farther than ``hilar_radius_mm`` from the main bronchus.
    bronchus_radius_mm : float
        Main-bronchus outer radius: a node behind a bronchus is subcarinal (7) out to its
        lateral wall.
    esophagus_contact_mm : float
        Distance to the oesophagus counted as paraesophageal (8).
    paraesophageal_max_mm : float
        Without an oesophagus measurement: at most this far from the midline for 8.
    station1_lateral_max_mm : float
        Station 1 (supraclavicular) lateral limit from the tracheal midline.
    abdominal_lung_gap_mm : float
        Below the diaphragm, a node farther than this from the lung is abdominal.
    """

    base_confidence: float = 0.9
    approximated_factor: float = 0.9
    approximated_soft_mm: float = 25.0
    unmeasured_factor: float = 0.85
    boundary_soft_mm: float = 10.0
    prevascular_min_mm: float = 25.0
    sternum_contact_mm: float = 10.0
    retrotracheal_min_mm: float = 2.0
    retrotracheal_lateral_mm: float = 15.0
    ligamentum_offset_mm: float = 15.0
    para_aortic_offset_mm: float = 15.0
    para_aortic_anterior_mm: float = 20.0
    subaortic_anterior_max_mm: float = 45.0
    azygos_above_carina_mm: float = 0.0
    left_pa_above_carina_mm: float = 5.0
    crossing_above_arch_mm: float = 10.0
    arch_height_mm: float = 20.0
    station7_depth_mm: float = 30.0
    ipv_below_station7_mm: float = 15.0
    hilar_beyond_mm: float = 10.0
    hilar_radius_mm: float = 25.0
    intrapulmonary_lateral_mm: float = 60.0
    outside_lateral_mm: float = 80.0
    lung_contact_mm: float = 3.0
    intrapulmonary_min_inside: float = 0.5
    intrapulmonary_min_surround: float = 0.6
    interlobar_max_mm: float = 40.0
    lobar_max_mm: float = 55.0
    segmental_max_mm: float = 75.0
    subcarinal_max_half_width_mm: float = 25.0
    bronchus_radius_mm: float = 6.0
    esophagus_contact_mm: float = 15.0
    hilar_vessel_contact_mm: float = 8.0
    paraesophageal_max_mm: float = 25.0
    station1_lateral_max_mm: float = 100.0
    abdominal_lung_gap_mm: float = 15.0


# --------------------------------------------------------------------------- landmarks


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


def _ref(landmarks: Landmarks, name: str, words: str) -> _Ref | None:
    item = landmarks.get(name)
    if item is None:
        return None
    how = item.source if item.approximated else ""
    return _Ref(name, words, float(item.z_mm), item.approximated, how, item.point_mm)


def _derived(base: _Ref, name: str, words: str, dz: float, how: str) -> _Ref:
    return _Ref(name, words, base.z + dz, True, how)


@dataclass(frozen=True)
class _Frame:
    """Landmarks resolved once per study, with fallbacks (flagged as approximated)."""

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


def _resolve(landmarks: Landmarks, s: StationSettings) -> _Frame | None:
    """Resolve every landmark the rules need; None when there is no carina nor trachea."""
    trachea = tuple(sorted(landmarks.trachea, key=lambda t: -t.z_mm))
    carina = _ref(landmarks, lm.CARINA, "carina")
    if carina is not None and carina.point is not None:
        cxyz: Point = tuple(float(v) for v in carina.point)  # type: ignore[assignment]
    elif carina is not None and trachea:
        cxyz = (trachea[-1].centre_x_mm, trachea[-1].centre_y_mm, carina.z)
    elif carina is not None:
        cxyz = (0.0, 0.0, carina.z)
        carina = _Ref(lm.CARINA, "carina", carina.z, True, "level only, x=y=0")
    elif trachea:
        low = trachea[-1]
        cxyz = (low.centre_x_mm, low.centre_y_mm, low.z_mm)
        carina = _Ref(lm.CARINA, "carina", low.z_mm, True, "lowest trachea level")
    else:
        return None

    top = _ref(landmarks, lm.TRACHEA_TOP, "trachea top")
    if top is None and trachea:
        top = _Ref(lm.TRACHEA_TOP, "trachea top", trachea[0].z_mm)
    manubrium = _ref(landmarks, lm.MANUBRIUM_TOP, "manubrium top")
    if manubrium is None:
        clav = _ref(landmarks, lm.CLAVICLE_TOP, "clavicle top")
        if clav is not None:
            manubrium = _Ref(lm.CLAVICLE_TOP, "manubrium top", clav.z, True, "clavicle top")

    arch_top = _ref(landmarks, lm.AORTIC_ARCH_TOP, "aortic arch top")
    arch_bottom = _ref(landmarks, lm.AORTIC_ARCH_BOTTOM, "aortic arch bottom")
    crossing = _ref(landmarks, lm.BRACHIOCEPHALIC_CROSSING, "brachiocephalic crossing")
    if arch_top is None and arch_bottom is not None:
        arch_top = _derived(arch_bottom, lm.AORTIC_ARCH_TOP, "aortic arch top",
                            s.arch_height_mm, "arch bottom + typical arch height")
    if arch_top is None and crossing is not None:
        arch_top = _derived(crossing, lm.AORTIC_ARCH_TOP, "aortic arch top",
                            -s.crossing_above_arch_mm, "below the brachiocephalic crossing")
    if arch_top is None:
        arch_top = _derived(carina, lm.AORTIC_ARCH_TOP, "aortic arch top",
                            s.left_pa_above_carina_mm + 10.0 + s.arch_height_mm,
                            "typical height above the carina")
    if arch_bottom is None:
        arch_bottom = _derived(arch_top, lm.AORTIC_ARCH_BOTTOM, "aortic arch bottom",
                               -s.arch_height_mm, "arch top - typical arch height")
    if crossing is None:
        crossing = _derived(arch_top, lm.BRACHIOCEPHALIC_CROSSING, "brachiocephalic crossing",
                            s.crossing_above_arch_mm, "above the arch top")
    left_pa = _ref(landmarks, lm.LEFT_PA_TOP, "left PA top") or _derived(
        carina, lm.LEFT_PA_TOP, "left PA top", s.left_pa_above_carina_mm, "carina level")
    azygos = _ref(landmarks, lm.AZYGOS_BOTTOM, "azygos lower border") or _derived(
        carina, lm.AZYGOS_BOTTOM, "azygos lower border", s.azygos_above_carina_mm,
        "top of the right main bronchus")
    s7 = _ref(landmarks, lm.STATION7_BOTTOM, "station 7 bottom") or _derived(
        carina, lm.STATION7_BOTTOM, "station 7 bottom", -s.station7_depth_mm,
        "typical depth below the carina")
    ipv = _ref(landmarks, lm.INFERIOR_PULMONARY_VEIN, "inferior pulmonary vein") or _derived(
        s7, lm.INFERIOR_PULMONARY_VEIN, "inferior pulmonary vein", -s.ipv_below_station7_mm,
        "below station 7")

    diaphragm = {}
    for side, name in (("left", lm.DIAPHRAGM_LEFT), ("right", lm.DIAPHRAGM_RIGHT)):
        ref = _ref(landmarks, name, f"{side} diaphragm")
        if ref is not None:
            diaphragm[side] = ref
    for side, other in (("left", "right"), ("right", "left")):
        if side not in diaphragm and other in diaphragm:
            base = diaphragm[other]
            diaphragm[side] = _Ref(base.name, f"{side} diaphragm", base.z, True,
                                   f"{other} diaphragm")

    hilum: dict[str, _Ref] = {}
    bronchus: dict[str, np.ndarray] = {}
    main: dict[str, np.ndarray] = {}
    for side, name, sign in (("left", lm.HILUM_LEFT, 1.0), ("right", lm.HILUM_RIGHT, -1.0)):
        # Only the part below the carina: a bronchus label may reach up beside the trachea.
        pts = [tuple(map(float, p)) for p in landmarks.bronchi.get(side, [])
               if float(p[2]) <= cxyz[2]]
        ref = _ref(landmarks, name, f"{side} hilum")
        if ref is not None and ref.point is None:
            ref = None
        if ref is None:
            if pts:
                end = pts[-1]
                ref = _Ref(name, f"{side} hilum", end[2], True, "end of the main bronchus", end)
            else:
                guess = (cxyz[0] + sign * 45.0, cxyz[1], cxyz[2] - 20.0)
                ref = _Ref(name, f"{side} hilum", guess[2], True,
                           "typical offset from the carina", guess)
        hilum[side] = ref
        line = [cxyz, *pts]
        main[side] = np.asarray(line if len(line) > 1 else [cxyz, ref.point], dtype=float)
        if ref.point is not None and math.dist(line[-1], ref.point) > 1.0:
            line.append(tuple(map(float, ref.point)))
        bronchus[side] = np.asarray(line, dtype=float)

    return _Frame(carina, cxyz, trachea, top, manubrium, crossing, arch_top, arch_bottom,
                  left_pa, azygos, s7, ipv, diaphragm, hilum, bronchus, main)


# --------------------------------------------------------------------------- geometry helpers


def trachea_level(landmarks: Landmarks, z_mm: float) -> TracheaLevel | None:
    """Trachea cross-section used for a node at level ``z_mm`` (mm).

    Below the carina the lowest (carina) level is used; above the most cranial level, that one.
    """
    return landmarks.trachea_at(z_mm)


def side_by_midline(x_mm: float, landmarks: Landmarks, z_mm: float) -> Side:
    """Side of a node by the tracheal midline (stations 1, 8, 9, 10-14).

    ``x_mm`` larger than the trachea centre (or the carina below it) is the patient's left.
    """
    level = trachea_level(landmarks, z_mm)
    carina = landmarks.get(lm.CARINA)
    below = carina is not None and carina.point_mm is not None and z_mm < carina.z_mm
    if level is not None and not below:
        mid = level.centre_x_mm
    elif carina is not None and carina.point_mm is not None:
        mid = carina.point_mm[0]
    else:
        mid = 0.0
    return "left" if x_mm > mid else "right"


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
    abdominal_inside: tuple[str, float] | None


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
    organ = max(((n, inside.get(n, 0.0)) for n in ABDOMINAL_ORGANS), key=lambda t: t[1])
    # ``surround`` is newer than ``inside``; callers building a Lesion by hand may lack it.
    shell = getattr(lesion, "surround", None) or {}
    surround = max([shell.get("lung", 0.0)]
                   + [max(shell.get(names[0], 0.0), sum(shell.get(n, 0.0) for n in names[1:]))
                      for names in _LUNG_PARTS.values()])
    zones = getattr(lesion, "zones", None) or {}
    mediastinal, hilar = zones.get("mediastinal", 0.0), zones.get("hilar", 0.0)
    if lesion.direct_extension:
        # The part of the primary outside the lung parenchyma (``findings.classify``): its
        # contact fields are the whole tumour's, so only its position counts here.
        lung_inside = dict.fromkeys(lung_inside, 0.0)
        surround, lung_distance = 0.0, (0.0 if measured else None)
        zone = getattr(lesion, "extension_zone", None)
        mediastinal, hilar = float(zone == "mediastinal"), float(zone == "hilar")
    vessels = [dist[n] for n in HILAR_VESSELS if n in dist]
    return _Contacts(measured, lung_inside, surround, mediastinal, hilar,
                     min(vessels) if vessels else None, lung_distance, eso, sternum,
                     organ if organ[1] > 0 else None)


# --------------------------------------------------------------------------- decisions


@dataclass
class _Decision:
    station: str | None
    side: Side
    clauses: list[str]
    refs: list[_Ref]
    # (boundary label, mm from it, landmark defining it when it may be approximated)
    margins: list[tuple] = field(default_factory=list)
    unmeasured: bool = False
    extra_used: tuple[str, ...] = ()


def _boundary_factor(margin_mm: float, soft_mm: float) -> float:
    """1 far from a boundary, 0.5 on it (a coin toss), linear in between."""
    if soft_mm <= 0:
        return 1.0
    return 0.5 + 0.5 * min(1.0, max(0.0, margin_mm) / soft_mm)


def _finish(d: _Decision, s: StationSettings) -> StationAssignment:
    approximated = [r for r in d.refs if r.approximated]
    confidence = s.base_confidence
    if approximated:
        confidence *= s.approximated_factor
    if d.unmeasured:
        confidence *= s.unmeasured_factor
    parts = list(d.clauses)
    if d.margins:
        # An approximated boundary may be off by a centimetre or more: widen its soft zone.
        scored = []
        for label, margin, *ref in d.margins:
            approx = bool(ref) and ref[0] is not None and ref[0].approximated
            soft = s.approximated_soft_mm if approx else s.boundary_soft_mm
            scored.append((_boundary_factor(margin, soft), label, margin, soft, approx))
        factor, label, margin, soft, approx = min(scored)
        confidence *= factor
        if margin < soft:
            parts.append(f"{max(margin, 0.0):.0f} mm from the "
                         f"{'approximated ' if approx else ''}{label} boundary, lower confidence")
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
        station=d.station,
        side=d.side,
        confidence=round(float(confidence), 3),
        reason=f"{code} ({d.side}): " + "; ".join(parts),
        landmarks_used=tuple(names),
        approximated=bool(approximated),
    )


def _away(distance_mm: float) -> str:
    if math.isfinite(distance_mm):
        return f"{distance_mm:.0f} mm away"
    return "none within the search radius"


def _letter(side: Side) -> str:
    return "L" if side == "left" else "R"


def _lateral_side(x: float, mid: float) -> Literal["left", "right"]:
    return "left" if x > mid else "right"


def _non_regional(p: Point, f: _Frame, c: _Contacts, mid: float,
                  s: StationSettings) -> _Decision | None:
    """Cervical above station 1, abdominal, or axillary / chest wall (not N)."""
    x, y, z = p
    side = _lateral_side(x, mid)
    if f.trachea_top is not None and z > f.trachea_top.z:
        return _Decision(None, side, ["cervical: above the trachea top (cricoid proxy), "
                                      "above station 1"], [f.trachea_top],
                         [("cervical/1", z - f.trachea_top.z, f.trachea_top)])
    if c.abdominal_inside is not None and c.abdominal_inside[1] >= 0.5:
        return _Decision(None, side, [f"abdominal: inside the {c.abdominal_inside[0]}"], [])
    dia = f.diaphragm.get(side)
    if dia is not None and z < dia.z:
        below = [f"abdominal: {dia.z - z:.0f} mm below the {side} diaphragm dome"]
        if c.lung_distance is None:
            return _Decision(None, side, below, [dia], [("diaphragm", dia.z - z, dia)],
                             unmeasured=True)
        if c.lung_distance > s.abdominal_lung_gap_mm:
            return _Decision(None, side, [*below, "away from the lung bases"], [dia],
                             [("diaphragm", dia.z - z, dia)])
    in_chest = f.manubrium is None or z <= f.manubrium.z  # above it: station 1 or neck
    off_mid = abs(x - mid)
    if (in_chest and c.lung_distance is not None
            and c.lung_inside["any"] < s.intrapulmonary_min_inside
            and c.lung_surround < s.intrapulmonary_min_surround
            and c.mediastinal < 0.5 and off_mid > s.outside_lateral_mm):
        # Far lateral and not in the (hole-filled) lung: chest wall, pleura or axilla.
        contact = ("touching it from outside" if c.lung_distance <= s.lung_contact_mm
                   else _away(c.lung_distance))
        return _Decision(None, side, [
            f"axillary/chest wall: {off_mid:.0f} mm {side} of the midline, outside the lung "
            f"({contact}) and not between the lungs"], [],
            [("chest-wall/mediastinum", off_mid - s.outside_lateral_mm)],
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
        [("10/11", margin, hil)], unmeasured=unmeasured,
        extra_used=(f"main_bronchus_{side}",))


def _station1(p: Point, f: _Frame, c: _Contacts, mid: float,
              s: StationSettings) -> _Decision | None:
    """Station 1: below the cricoid (trachea top), above the manubrium; side by the midline."""
    x, y, z = p
    if f.manubrium is None or z <= f.manubrium.z:
        return None
    side = _lateral_side(x, mid)
    refs = [f.manubrium] + ([f.trachea_top] if f.trachea_top is not None else [])
    if abs(x - mid) > s.station1_lateral_max_mm:
        return _Decision(None, side, [f"lateral neck/shoulder: {abs(x - mid):.0f} mm from the "
                                      "tracheal midline, above the manubrium"], refs,
                         [("1/lateral", abs(x - mid) - s.station1_lateral_max_mm)],
                         extra_used=("trachea_centre",))
    margins = [("1/2", z - f.manubrium.z, f.manubrium)]
    if f.trachea_top is not None:
        margins.append(("1/cervical", f.trachea_top.z - z, f.trachea_top))
    return _Decision(f"1{_letter(side)}", side, [
        f"low cervical/supraclavicular: above the manubrium top, below the trachea top; "
        f"{side} of the tracheal midline (x={mid:+.0f})"], refs, margins,
        extra_used=("trachea_centre",))


def _above_carina(p: Point, f: _Frame, c: _Contacts, t: TracheaLevel | None,
                  s: StationSettings) -> _Decision:
    """Mediastinal stations above the carina: 6, 3a, 3p, 5, then 2/4/10 by the left border."""
    x, y, z = p
    if t is None:
        cx, cy = f.carina_xyz[0], f.carina_xyz[1]
        t = TracheaLevel(z, cx, cy, cx + 9.0, cx - 9.0, cy - 9.0, cy + 9.0)
        border_ref = [_Ref("trachea", "tracheal walls", z, True, "9 mm around the carina")]
    else:
        border_ref = []
    lb = t.left_border_x_mm
    used = ("trachea_left_border",)
    dy_ant = t.anterior_y_mm - y
    dy_post = y - t.posterior_y_mm
    left_of_border = x > lb
    lateral_left = x - (lb + s.para_aortic_offset_mm)
    anterior_left = min(dy_ant - s.para_aortic_anterior_mm, x - lb)
    arch = [f.arch_top, f.arch_bottom]

    # 6: anterior and lateral to the ascending aorta and arch (IASLC), i.e. left of the left
    # tracheal border at arch levels and either well lateral of it or well in front of it
    # (the arch itself fills the space just beside and in front of the trachea: 4L).
    if f.arch_bottom.z <= z <= f.arch_top.z and (lateral_left > 0 or anterior_left > 0):
        where = ("lateral to the arch" if lateral_left >= anterior_left
                 else f"{dy_ant:.0f} mm anterior to the trachea, in front of the arch")
        return _Decision("6", "left", [
            f"para-aortic: {x - lb:.0f} mm left of the left tracheal border at aortic arch "
            f"levels ({where})"], [*border_ref, *arch],
            [("6/4L", max(lateral_left, anterior_left)),
             ("6/arch top", f.arch_top.z - z, f.arch_top),
             ("6/5", z - f.arch_bottom.z, f.arch_bottom)], extra_used=used)

    sternal = (c.sternum_distance is not None and c.sternum_distance <= s.sternum_contact_mm
               and dy_ant > 0)
    # 5 before 3a: the AP window lies anterolateral to the trachea, in front of its wall by
    # as much as the prevascular space; only the space behind the sternum is 3a there.
    lig = x - (lb + s.ligamentum_offset_mm)
    if (f.left_pa.z <= z < f.arch_bottom.z and lig > 0 and not sternal
            and dy_ant < s.subaortic_anterior_max_mm):
        margins = [("4L/5", lig), ("5/6", f.arch_bottom.z - z, f.arch_bottom),
                   ("5/10L", z - f.left_pa.z, f.left_pa)]
        if dy_ant > s.prevascular_min_mm:
            margins.append(("5/3a", s.subaortic_anterior_max_mm - dy_ant))
        return _Decision("5", "left", [
            f"subaortic (AP window): {x - lb:.0f} mm left of the left tracheal border, lateral "
            "to the ligamentum arteriosum line, between arch bottom and left PA top"],
            [*border_ref, f.arch_bottom, f.left_pa], margins, extra_used=used)

    if dy_ant >= s.prevascular_min_mm or sternal:
        why = (f"{c.sternum_distance:.0f} mm from the sternum" if sternal
               else f"{dy_ant:.0f} mm anterior to the trachea")
        margins = [] if sternal else [("3a/pretracheal", dy_ant - s.prevascular_min_mm)]
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
            [*border_ref, f.carina], [("3p/paratracheal", min(side_margin,
                                                              dy_post - s.retrotracheal_min_mm))],
            extra_used=("trachea_posterior_wall",))

    border = [("R/L (left tracheal border)", abs(x - lb), *border_ref[:1])]
    where = f"{abs(x - lb):.0f} mm {'left' if left_of_border else 'right'} of the left " \
            f"tracheal border (x={lb:+.0f})"
    if left_of_border:
        if z > f.arch_top.z:
            margins = [("2L/4L", z - f.arch_top.z, f.arch_top), *border]
            if f.manubrium is not None:
                margins.append(("1/2", f.manubrium.z - z, f.manubrium))
            return _Decision("2L", "left", [f"upper paratracheal: {where}, above the aortic "
                                            "arch top"], [*border_ref, f.arch_top], margins,
                             extra_used=used)
        if z >= f.left_pa.z:
            margins = [("4L/10L", z - f.left_pa.z, f.left_pa),
                       ("2L/4L", f.arch_top.z - z, f.arch_top), *border]
            if f.left_pa.z <= z < f.arch_bottom.z:
                margins.append(("4L/5", -lig))
            return _Decision("4L", "left", [f"lower paratracheal: {where}, below the aortic "
                                            "arch top, above the left PA top"],
                             [*border_ref, f.arch_top, f.left_pa], margins, extra_used=used)
        return _Decision("10L", "left", [f"hilar: {where}, below the left PA top (left "
                                         "tracheobronchial angle)"],
                         [*border_ref, f.left_pa, f.carina],
                         [("4L/10L", f.left_pa.z - z, f.left_pa), *border], extra_used=used)
    if z > f.crossing.z:
        margins = [("2R/4R", z - f.crossing.z, f.crossing), *border]
        if f.manubrium is not None:
            margins.append(("1/2", f.manubrium.z - z, f.manubrium))
        return _Decision("2R", "right", [f"upper paratracheal: {where}, above the "
                                         "brachiocephalic crossing"],
                         [*border_ref, f.crossing], margins, extra_used=used)
    if z >= f.azygos.z:
        return _Decision("4R", "right", [f"lower paratracheal: {where}, below the "
                                         "brachiocephalic crossing, above the azygos lower "
                                         "border"], [*border_ref, f.crossing, f.azygos],
                         [("4R/10R", z - f.azygos.z, f.azygos),
                          ("2R/4R", f.crossing.z - z, f.crossing), *border],
                         extra_used=used)
    return _Decision("10R", "right", [f"hilar: {where}, below the azygos lower border, above "
                                      "the carina (right tracheobronchial angle)"],
                     [*border_ref, f.azygos, f.carina],
                     [("4R/10R", f.azygos.z - z, f.azygos)], extra_used=used)


def _hilar(p: Point, f: _Frame, c: _Contacts, side: Literal["left", "right"], clause: str,
           margins: list[tuple], s: StationSettings, extra_refs: list[_Ref]) -> _Decision:
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
            text += " (farther than usual for station 10)"
            margins.append(("10/outside", 0.0))
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
            [("4R/10R", z - f.azygos.z, f.azygos), ("4R/7", lateral)])
    if side == "left" and z >= f.left_pa.z:
        border = f.trachea[-1].left_border_x_mm if f.trachea else f.carina_xyz[0] + 9.0
        lig = x - (border + s.ligamentum_offset_mm)
        if lig > 0 and z < f.arch_bottom.z:
            return _Decision("5", "left", [
                "subaortic (AP window): lateral to the ligamentum arteriosum line below the "
                "carina, above the left PA top"], [f.carina, f.left_pa],
                [("4L/5", lig), ("5/10L", z - f.left_pa.z, f.left_pa)])
        return _Decision("4L", "left", [
            "lower paratracheal: beside the left main bronchus just below the carina, above "
            "the left PA top"], [f.carina, f.left_pa],
            [("4L/10L", z - f.left_pa.z, f.left_pa), ("4L/7", lateral)])
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
    if z >= f.station7_bottom.z:
        if xr < x < xl:
            return _Decision("7", "midline", [
                "subcarinal: below the carina, between the main bronchi "
                f"(x {xr:+.0f}..{xl:+.0f}), above the station 7 bottom"],
                [f.carina, f.station7_bottom],
                [("7/10", min(x - xr, xl - x)), ("7/4", f.carina.z - z, f.carina),
                 ("7/8", z - f.station7_bottom.z, f.station7_bottom)],
                extra_used=("main_bronchus_right", "main_bronchus_left"))
        lateral = xr - x if side == "right" else x - xl
        upper = _above_hilar_level(p, f, side, lateral, s)
        if upper is not None:
            return upper
        return _hilar(p, f, c, side, f"lateral of the {side} main bronchus below the carina", [
            ("7/10", lateral)], s, [f.carina])

    dx = abs(x - mid)
    if c.esophagus_distance is not None:
        near_eso = c.esophagus_distance <= s.esophagus_contact_mm
        eso_margin = abs(s.esophagus_contact_mm - c.esophagus_distance)
        eso_words = f"{c.esophagus_distance:.0f} mm from the oesophagus"
    else:
        near_eso = dx <= s.paraesophageal_max_mm
        eso_margin = abs(s.paraesophageal_max_mm - dx)
        eso_words = f"{dx:.0f} mm from the midline (oesophagus not measured)"
    unmeasured = c.esophagus_distance is None
    if near_eso:
        return _Decision(f"8{_letter(side)}", side, [
            f"paraesophageal: below the station 7 bottom, {eso_words}"],
            [f.station7_bottom],
            [("7/8", f.station7_bottom.z - z, f.station7_bottom), ("8/9", eso_margin)],
            unmeasured=unmeasured)
    if z < f.ipv.z:
        lung_ok = c.lung_distance is None or c.lung_distance <= s.lung_contact_mm
        margins = [("8/9", eso_margin), ("9/10", f.ipv.z - z, f.ipv)]
        text = (f"pulmonary ligament: below the inferior pulmonary vein, medial to the {side} "
                f"lower lobe, {eso_words}")
        if not lung_ok:
            text += f" (not touching the lung: {_away(c.lung_distance)})"
            margins.append(("9/outside", 0.0))
        return _Decision(f"9{_letter(side)}", side, [text], [f.ipv, f.station7_bottom],
                         margins, unmeasured=c.lung_distance is None)
    return _hilar(p, f, c, side, "below the station 7 bottom, above the inferior pulmonary "
                  "vein, away from the oesophagus",
                  [("8/10", eso_margin), ("9/10", z - f.ipv.z, f.ipv)],
                  s, [f.station7_bottom, f.ipv])


def assign(lesion: Lesion, landmarks: Landmarks,
           settings: StationSettings | None = None) -> StationAssignment:
    """IASLC station and side of one node (Rusch et al., J Thorac Oncol 2009;4:568).

    Parameters
    ----------
    lesion : Lesion
        Uses ``centroid_mm`` (mm LPS) and, when present, ``inside`` / ``distance_mm`` for the
        lungs (``lung``, ``lung_left``, ``lung_right`` or lobes), ``esophagus``, ``sternum``,
        ``body`` and abdominal organs. Without them the rules use geometry alone and the
        confidence drops where contact would have decided.
    landmarks : Landmarks
        From :func:`nstage.landmarks.find`; missing landmarks are approximated from others
        (and said so in the reason).
    settings : StationSettings, optional
        Distances of the practical rules.

    Returns
    -------
    StationAssignment
        ``station=None`` for nodes outside the regional stations (cervical above station 1,
        abdominal, axillary/chest wall) or when there is neither a carina nor a trachea.
    """
    s = settings or StationSettings()
    f = _resolve(landmarks, s)
    p: Point = tuple(float(v) for v in lesion.centroid_mm)  # type: ignore[assignment]
    if f is None:
        return StationAssignment(None, "midline", 0.0,
                                 "not assigned: no carina or trachea among the landmarks")
    t = trachea_level(landmarks, p[2]) if f.trachea else None
    mid = t.centre_x_mm if (t is not None and p[2] >= f.carina.z) else f.carina_xyz[0]
    c = _contacts(lesion)
    decision = (_non_regional(p, f, c, mid, s) or _intrapulmonary(p, f, c, mid, s)
                or _station1(p, f, c, mid, s))
    if decision is None:
        if p[2] >= f.carina.z:
            decision = _above_carina(p, f, c, t, s)
        else:
            decision = _below_carina(p, f, c, mid, s)
    return _finish(decision, s)
