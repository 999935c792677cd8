"""Soft-tissue masses in a lung (tumour, collapsed lung) added to that lung's mask.

The lungs are found as air, so a solid tumour is a hole in them; where the tumour reaches the
mediastinum it is not even a hole, and between the lungs it would pass for mediastinal tissue
(and an FDG-avid primary for a node). The mediastinum, however, is made of known structures
(heart, aorta, oesophagus, airway, spine and sternum) and the fat and nodes around them. So a
soft-tissue mass inside the thoracic cavity seeds its lung's mass when it is

- away from the mediastinal structures (farther than ``CLEAR_OF_MEDIASTINUM_MM``, so
  paratracheal, subcarinal, hilar, para-aortic and paraoesophageal nodes stay mediastinal)
  and off the midline corridor (anterior mediastinum, thymus);
- bulky (it survives an opening with a ``BULK_MM`` ball: veins and strands do not) and at
  least ``MIN_MASS_ML``;
- against that lung (it touches it over more of its surface than the other lung), and above
  that lung's diaphragmatic dome (below it, the liver, stomach and spleen also sit inside the
  lungs' outline).

The seeds compete with the heart's and the abdominal organs' in one watershed
(:func:`nstage.anatomy.mediastinum.organ_watershed`), which finds the diaphragm between a
tumour on it and the liver under it. A mass is then its seed grown within its basin: freely
where it is clear of the mediastinal structures, and up to ``CLEAR_OF_MEDIASTINUM_MM`` +
``BULK_MM`` into the margin around them, so the whole tumour belongs to its lung up to the
structures it abuts.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT; mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from nstage.anatomy.abdomen import below_surface
from nstage.anatomy.workgrid import Grid, components, ellipsoid, in_box
from nstage.morphology import ball, dilate, opening

CLEAR_OF_MEDIASTINUM_MM = 15.0
MIDLINE_CORRIDOR_MM = 15.0
BULK_MM = 8.0
MIN_MASS_ML = 5.0
# A mass's contact with a lung is counted within this distance (the partial-volume rim between
# them is neither lung nor soft tissue).
CONTACT_MM = 5.0
# The thoracic cavity of a slice: the lungs' outline over this far above and below.
CAVITY_Z_MM = 10.0
# Soft tissue (fat is about -100 HU); with contrast, brighter than this fraction of the blood
# level is (enhanced) blood, not tumour.
MASS_HU = (-30.0, 300.0)
CONTRAST_MASS_MAX_FRACTION = 0.8


@dataclass
class MassSeeds:
    """Seeds of lung masses and the masks their growth needs (working grid)."""

    left: np.ndarray
    right: np.ndarray
    soft: np.ndarray  # soft tissue in the thoracic cavity, outside lungs and structures
    clear: np.ndarray  # ... farther than CLEAR_OF_MEDIASTINUM_MM from the structures


def _thoracic_cavity(g: Grid, hull: np.ndarray) -> np.ndarray:
    """The lungs' per-slice outline (``hull``) joined over ``CAVITY_Z_MM`` above and below
    (a tumour or a collapsed lobe displaces the aerated lung on its own slices but not on all
    of its neighbours')."""
    n = g.mm(CAVITY_Z_MM, 0)
    return ndi.maximum_filter1d(hull.view(np.uint8), size=2 * n + 1, axis=0).astype(bool)


def mass_seeds(g: Grid, left: np.ndarray, right: np.ndarray, hull: np.ndarray,
               structures: np.ndarray,
               mid_i: float, blood_hu: float | None,
               diaphragm: dict[str, np.ndarray],
               organs: list[tuple[np.ndarray, tuple[float, float]]] = ()) -> MassSeeds:
    """Seeds of the soft-tissue masses of the left and the right lung.

    Parameters
    ----------
    g : Grid
    left, right : numpy.ndarray of bool
        The lungs' aerated parts.
    hull : numpy.ndarray of bool
        Per-slice convex hull of the lungs.
    structures : numpy.ndarray of bool
        Mediastinal structures and bone (heart, aorta, oesophagus, airway, spine, sternum, ...).
    mid_i : float
        Column index of the midline (the carina or trachea).
    blood_hu : float or None
        Blood level of a contrast-enhanced CT (None: no contrast); bright blood is never a
        mass.
    diaphragm : dict
        ``"left"``/``"right"``: each lung's diaphragm surface
        (:func:`nstage.anatomy.abdomen.diaphragm_surface`); a seed lies above it.
    organs : list of (mask, (median HU, tolerance HU))
        Abdominal organs' territories and CT levels: a candidate that touches one and has
        its level is part of it (the liver's dome inside the lungs' outline), not a mass.
    """
    lungs = left | right
    empty = np.zeros_like(lungs)
    hi = MASS_HU[1] if blood_hu is None else CONTRAST_MASS_MAX_FRACTION * blood_hu
    soft = (g.hu > MASS_HU[0]) & (g.hu < hi) & _thoracic_cavity(g, hull) & ~lungs & ~structures
    cols = np.arange(lungs.shape[2])
    corridor = (np.abs(cols - mid_i) * g.sp[2] <= MIDLINE_CORRIDOR_MM)[None, None, :]
    soft &= ~corridor
    clear = soft & ~dilate(structures, ball(g.sp, CLEAR_OF_MEDIASTINUM_MM))
    out = MassSeeds(left=empty.copy(), right=empty.copy(), soft=soft, clear=clear)
    if not left.any() or not right.any() or not clear.any():
        return out
    lab, counts = components(in_box(opening, clear, 1, ball(g.sp, BULK_MM)))
    reach = ball(g.sp, CONTACT_MM)
    for c in np.nonzero(counts * g.vox_ml >= MIN_MASS_ML)[0]:
        m = lab == c
        shell = dilate(m, reach) & ~m
        nl, nr = int((shell & left).sum()), int((shell & right).sum())
        if max(nl, nr) == 0:
            continue
        if _part_of_organ(g, m, shell, organs):
            continue
        side = "left" if nl > nr else "right"
        m &= ~below_surface(diaphragm[side], m.shape)
        getattr(out, side)[...] |= m
    return out


def _part_of_organ(g: Grid, m: np.ndarray, shell: np.ndarray, organs) -> bool:
    level = float(np.median(g.hu[m]))
    return any((shell & territory).any() and abs(level - med) <= tol
               for territory, (med, tol) in organs)


def grow_masses(g: Grid, seeds: MassSeeds, basin_left: np.ndarray,
                basin_right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each seed grown within its watershed basin: freely where clear of the mediastinal
    structures, up to ``CLEAR_OF_MEDIASTINUM_MM + BULK_MM`` into the margin around them."""
    near = ellipsoid(1, 1, 1)
    a, b = seeds.left & basin_left, seeds.right & basin_right
    a, b = _grow(a, b, seeds.clear & basin_left, seeds.clear & basin_right, near, None)
    steps = int(np.ceil((CLEAR_OF_MEDIASTINUM_MM + BULK_MM) / min(g.sp)))
    return _grow(a, b, seeds.soft & basin_left, seeds.soft & basin_right, near, steps)


def _grow(a: np.ndarray, b: np.ndarray, within_a: np.ndarray, within_b: np.ndarray,
          step: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Grow two masks in turn within their regions (n steps, or until neither changes)."""
    if not a.any() and not b.any():
        return a, b
    i = 0
    while n is None or i < n:
        a2 = a | (dilate(a, step) & within_a & ~b)
        b2 = b | (dilate(b, step) & within_b & ~a2)
        if (a2 == a).all() and (b2 == b).all():
            break
        a, b, i = a2, b2, i + 1
    return a, b
