"""Plausibility of the anatomical frame: anatomy that always holds, checked before staging.

Stations and sides are read off the landmarks (carina, tracheal borders, lungs). When the
anatomy behind them is wrong (the trachea taken for lung, the carina put in the neck, a CT
whose voxels are stored upside down), every node lands in a wrong station, and nothing in the
output would say so. These checks compare the frame with facts of adult anatomy; a study that
fails any of them is not staged (NX, with the failures as reasons).

Checks (numbers in ``resources/thresholds.json``, section ``plausibility``):

- the trachea reaches at least ``min_trachea_above_carina_mm`` above the carina, unless the
  scan starts lower than that;
- the carina lies ``carina_below_apex_mm`` below the lung apices (when both apices are in
  view, i.e. not cut by the top of the scan);
- both main bronchi run down from the carina: their distal ends (the hila) lie no more than
  ``bronchus_above_carina_tol_mm`` above it;
- a lung on each side of the trachea: the left lung's centre at least
  ``lung_off_midline_min_mm`` to the patient's left of the carina (+x), the right lung's as
  far to the right;
- the heart lies below the carina (its top at least ``heart_below_carina_min_mm`` lower).

:func:`check_frame` is pure (landmarks and a few numbers in, failures out);
:func:`frame_facts` reads those numbers off an :class:`~nstage.anatomy.Anatomy`.
Positions are mm LPS (+x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

from dataclasses import dataclass

from nstage.landmarks import (
    CARINA,
    HILUM_LEFT,
    HILUM_RIGHT,
    LUNG_APEX_LEFT,
    LUNG_APEX_RIGHT,
    TRACHEA_TOP,
    Landmarks,
)


@dataclass(frozen=True)
class FrameFacts:
    """What the checks need besides the landmarks (mm LPS; None where not found).

    Attributes
    ----------
    image_top_z_mm : float
        Level of the scan's (work region's) most cranial slice.
    lung_centre_x_mm : dict of str to float or None
        ``"left"``/``"right"``: x of each lung's centre of mass.
    heart_top_z_mm : float or None
        Level of the heart's most cranial voxel.
    """

    image_top_z_mm: float
    lung_centre_x_mm: dict[str, float | None]
    heart_top_z_mm: float | None = None


@dataclass(frozen=True)
class Failure:
    """One failed check: its name and a sentence a reader of the output understands."""

    check: str
    reason: str


def check_frame(landmarks: Landmarks, facts: FrameFacts, thresholds: dict) -> list[Failure]:
    """Failures of the anatomical frame (an empty list: plausible).

    Parameters
    ----------
    landmarks : Landmarks
    facts : FrameFacts
    thresholds : dict
        The ``plausibility`` section of the thresholds (values only).

    Returns
    -------
    list of Failure
        Checks relative to the carina are skipped when no carina was measured (nothing is
        then staged relative to it either).
    """
    carina = landmarks.get(CARINA)
    if carina is None or carina.point_mm is None:
        return []
    cx, _, cz = carina.point_mm
    out: list[Failure] = []
    for check in (_trachea_above, _carina_below_apices, _bronchi_below, _lungs_either_side,
                  _heart_below):
        failure = check(landmarks, facts, thresholds, cx, cz)
        if failure is not None:
            out.append(failure)
    return out


def _trachea_above(lms: Landmarks, facts: FrameFacts, th: dict, cx: float, cz: float):
    need = float(th["min_trachea_above_carina_mm"])
    if facts.image_top_z_mm - cz < need:
        return None  # the scan starts lower: that much trachea cannot be in view
    top = lms.get(TRACHEA_TOP)
    if top is not None and top.approximated:
        top = None  # a trachea top made up from the lung apices shows no trachea
    have = -float("inf") if top is None else top.z_mm - cz
    if have < need:
        shown = "no trachea" if top is None else f"the trachea only {have:.0f} mm"
        return Failure("trachea_above_carina",
                       f"implausible anatomy: {shown} above the carina (at z {cz:.0f} mm), "
                       f"though the scan reaches {facts.image_top_z_mm - cz:.0f} mm above it "
                       f"(at least {need:.0f} mm of trachea expected)")
    return None


def _carina_below_apices(lms: Landmarks, facts: FrameFacts, th: dict, cx: float, cz: float):
    lo, hi = (float(v) for v in th["carina_below_apex_mm"])
    apices = [lms.get(n) for n in (LUNG_APEX_LEFT, LUNG_APEX_RIGHT)]
    if any(a is None or "top of the image" in a.source for a in apices):
        return None  # apices not (both) in view
    depth = min(a.z_mm for a in apices) - cz
    if not lo <= depth <= hi:
        where = "above the lung apices" if depth < 0 else "below the lung apices"
        return Failure("carina_below_apices",
                       f"implausible anatomy: the carina lies {abs(depth):.0f} mm {where} "
                       f"({lo:.0f}-{hi:.0f} mm below them expected)")
    return None


def _bronchi_below(lms: Landmarks, facts: FrameFacts, th: dict, cx: float, cz: float):
    tol = float(th["bronchus_above_carina_tol_mm"])
    high = []
    for side, name in (("left", HILUM_LEFT), ("right", HILUM_RIGHT)):
        hilum = lms.get(name)
        if hilum is not None and not hilum.approximated and hilum.z_mm > cz + tol:
            high.append(f"the {side} main bronchus ends {hilum.z_mm - cz:.0f} mm above it")
    if high:
        return Failure("bronchi_below_carina",
                       "implausible anatomy: the main bronchi should run down from the carina, "
                       "but " + " and ".join(high))
    return None


def _lungs_either_side(lms: Landmarks, facts: FrameFacts, th: dict, cx: float, cz: float):
    off = float(th["lung_off_midline_min_mm"])
    wrong = []
    for side, sign in (("left", 1.0), ("right", -1.0)):
        x = facts.lung_centre_x_mm.get(side)
        if x is None:
            wrong.append(f"no {side} lung")
        elif sign * (x - cx) < off:
            where = "left" if x > cx else "right"
            wrong.append(f"the {side} lung's centre lies {abs(x - cx):.0f} mm to the patient's "
                         f"{where} of the carina")
    if wrong:
        return Failure("lung_each_side",
                       "implausible anatomy: a lung is expected on each side of the trachea "
                       f"(centre at least {off:.0f} mm off it), but " + " and ".join(wrong))
    return None


def _heart_below(lms: Landmarks, facts: FrameFacts, th: dict, cx: float, cz: float):
    if facts.heart_top_z_mm is None:
        return None
    margin = float(th["heart_below_carina_min_mm"])
    if facts.heart_top_z_mm > cz - margin:
        return Failure("heart_below_carina",
                       f"implausible anatomy: the heart reaches {facts.heart_top_z_mm - cz:.0f} "
                       "mm above the carina (it lies below it)")
    return None


def frame_facts(anatomy) -> FrameFacts:
    """The numbers :func:`check_frame` needs, read off an anatomy (labels on a canonical grid).

    Parameters
    ----------
    anatomy : nstage.anatomy.Anatomy
    """
    import numpy as np

    from nstage.geometry import index_to_mm

    ref = anatomy.reference
    top = float(index_to_mm(ref, [ref.GetSize()[2] - 1, 0, 0])[2])
    centres: dict[str, float | None] = {}
    for side in ("left", "right"):
        m = anatomy.mask(f"lung_{side}")
        ii = np.nonzero(m.any(axis=(0, 1)))[0]
        if ii.size == 0:
            centres[side] = None
            continue
        weights = m.sum(axis=(0, 1))[ii]
        i_mean = float((ii * weights).sum() / weights.sum())
        centres[side] = float(index_to_mm(ref, [0, 0, i_mean])[0])
    heart_top = None
    if "heart" in set(anatomy.names.values()):
        ks = np.nonzero(anatomy.mask("heart").any(axis=(1, 2)))[0]
        if ks.size:
            heart_top = float(index_to_mm(ref, [ks[-1], 0, 0])[2])
    return FrameFacts(image_top_z_mm=top, lung_centre_x_mm=centres, heart_top_z_mm=heart_top)
