"""Mediastinum, heart, oesophagus and the diaphragm surface of the classical backend.

- **Diaphragm surface** (:func:`lung_floor`): the lowest lung slice over every (y, x) column,
  interpolated under the heart between the two lungs' bases (inverse-distance weights from
  the nearest right-lung and left-lung columns).
- **Mediastinum**: per slice, the convex hull of both lungs minus lungs, airway and bone, in
  front of the vertebral bodies.
- **Heart** (:func:`heart`): the bulky soft tissue of the mediastinum between the diaphragm
  and a level below the subcarinal space, in front of the vertebral bodies, descending aorta
  and oesophagus, and away from the bronchi (so never in the fat between the main bronchi
  below the carina or in the hila). Without contrast, soft tissue is non-fat tissue; with
  contrast the heart's chambers and myocardium are brighter than a tumour against them, so
  the tissue must reach half the blood level. A 3D opening keeps the compact heart and drops
  what joins it narrowly (hilar vessels, a lung tumour touching it over a short stretch).
- **Oesophagus**: traced as a tube of soft tissue (or collapsed air) in front of the spine.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT; mm.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.anatomy.workgrid import Grid, components, disk, ellipsoid, inscribed, largest
from nstage.morphology import (
    ball,
    bounding_box,
    dilate,
    erode,
    fill_holes_axial,
    opening,
)

log = logging.getLogger(__name__)

# The heart (left atrium roof, pulmonary trunk) starts below the subcarinal space, which
# reaches about 3 cm below the carina (station 7's lower border: the intermediate / lower-lobe
# bronchus, IASLC 2009; RTOG heart atlas: the heart begins below the pulmonary artery's
# bifurcation).
HEART_BELOW_CARINA_MM = 30.0
# No heart within this distance of the bronchi below the carina (subcarinal fat, hilar nodes).
HEART_AWAY_FROM_BRONCHI_MM = 10.0
# The heart lies in front of the vertebral bodies (and of the aorta and oesophagus on them).
HEART_FRONT_OF_SPINE_MM = 8.0
# Structuring ball of the opening that finds the compact heart (adult heart 9-12 cm across), the
# slab below the heart's top where its seed is taken, and how far the seed is eroded.
HEART_OPEN_MM = 12.0
HEART_MARKER_SLAB_MM = 40.0
HEART_MARKER_ERODE_MM = 5.0
# Smoothing of the edges the organs' floods meet on.
EDGE_SIGMA_MM = 2.0
# Seed labels of the organ watershed.
HEART, LIVER, LEFT_ABDOMEN, MASS_LEFT, MASS_RIGHT, OTHER = 1, 2, 3, 4, 5, 6
# Non-fat soft tissue without contrast (fat is -100 HU).
PLAIN_HEART_HU = (-30.0, 300.0)
# With contrast: at least this fraction of the blood level, within these bounds (HU).
CONTRAST_HEART_FRACTION = 0.5
CONTRAST_HEART_HU = (60.0, 100.0)


def mediastinum(g: Grid, hull: np.ndarray, body: np.ndarray, block: np.ndarray,
                spine: np.ndarray) -> np.ndarray:
    """Per slice, the convex hull of both lungs (``hull``) minus lungs, airway and skeleton
    (``block``), in front of the vertebral bodies (largest component)."""
    out = hull & body & ~block
    for k in np.nonzero(spine.reshape(spine.shape[0], -1).any(axis=1))[0]:
        sj = np.nonzero(spine[k].any(axis=1))[0]
        out[k, sj[0] + g.mm(10.0, 1):] = False
    out = opening(out, disk(1)[None])
    return largest(out)


def heart_top_k(g: Grid, lungs: np.ndarray, carina_k: int | None) -> int | None:
    """Highest slice of the heart: below the subcarinal space, or, without a carina, a little
    above the middle of the lungs' height."""
    ks = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if ks.size == 0:
        return None
    if carina_k is not None:
        return carina_k - g.mm(HEART_BELOW_CARINA_MM, 0)
    return int(ks[0] + 0.55 * np.ptp(ks))


def _heart_tissue(g: Grid, blood_hu: float | None) -> np.ndarray:
    if blood_hu is None:
        lo, hi = PLAIN_HEART_HU
    else:
        lo = float(np.clip(CONTRAST_HEART_FRACTION * blood_hu, *CONTRAST_HEART_HU))
        hi = 1000.0
    return (g.hu > lo) & (g.hu < hi)


def heart_region(g: Grid, medi: np.ndarray, spine: np.ndarray, bronchi: np.ndarray,
                 posterior: np.ndarray, top: int) -> np.ndarray:
    """Where the heart may lie: mediastinum up to ``top``, in front of the vertebral bodies,
    the descending aorta and oesophagus (``posterior``), away from the bronchi."""
    region = medi.copy()
    region[max(top, 0):] = False
    for k in range(region.shape[0]):
        sj = np.nonzero(spine[k].any(axis=1))[0]
        if sj.size:
            region[k, sj[0] - g.mm(HEART_FRONT_OF_SPINE_MM, 1):] = False
    if bronchi.any():
        region &= ~dilate(bronchi, ball(g.sp, HEART_AWAY_FROM_BRONCHI_MM))
    return region & ~dilate(posterior, ellipsoid(0, 1, 1))


def heart_marker(g: Grid, region: np.ndarray, top: int, blood_hu: float | None) -> np.ndarray:
    """Inside the heart for sure: the compact heart-like tissue just below ``top`` (the heart's
    base, where neither liver nor stomach can be), eroded."""
    cand = region & _heart_tissue(g, blood_hu)
    if not cand.any():
        return cand
    box = _padded_box(cand, g.mm(HEART_OPEN_MM, 1) + 1)
    opened = opening(cand[box], ball(g.sp, HEART_OPEN_MM))
    lab, counts = components(opened)
    lo = max(0, top - g.mm(HEART_MARKER_SLAB_MM, 0) - box[0].start)
    in_slab = np.bincount(lab[lo:].ravel(), minlength=counts.size)
    in_slab[0] = 0
    out = np.zeros_like(cand)
    if in_slab.max() == 0:
        return out
    out[box] = erode(lab == int(np.argmax(in_slab)), ball(g.sp, HEART_MARKER_ERODE_MM))
    return out


def heart(g: Grid, region: np.ndarray, flooded: np.ndarray, blood_hu: float | None
          ) -> np.ndarray:
    """The heart: the watershed basin of its seed, within ``region`` and heart-like tissue.

    Parameters
    ----------
    region : numpy.ndarray of bool
        :func:`heart_region`.
    flooded : numpy.ndarray of uint8
        :func:`organ_watershed`'s labels.
    """
    cand = (flooded == HEART) & region & _heart_tissue(g, blood_hu)
    if not cand.any():
        return cand
    out = largest(cand)
    # Epicardial fat, valve planes and the septum's partial volume inside the heart's outline.
    return fill_holes_axial(out) & region


def _padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    box = bounding_box(mask)
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad))
                 for s, n in zip(box, mask.shape, strict=True))


def organ_watershed(g: Grid, seeds: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Compete the seeded organs for ``tissue`` along the CT's edges.

    A marker-based watershed on the gradient magnitude (Gaussian, ``EDGE_SIGMA_MM``) of the CT:
    each organ floods from its seed and two floods meet on the strongest edge between them
    (the diaphragm and the fat around the heart). Voxels outside ``tissue`` belong to
    :data:`OTHER` from the start. Returns the flooded labels (uint8, same shape).
    """
    markers = seeds.copy()
    markers[~tissue & (markers == 0)] = OTHER
    box = _padded_box(seeds > 0, 2)
    # Down to the bottom of the scan: the abdominal organs flood below their seeds.
    box = (slice(0, box[0].stop), *box[1:])
    sigma = [EDGE_SIGMA_MM / s for s in g.sp]
    grad = ndi.gaussian_gradient_magnitude(g.hu[box].astype(np.float32), sigma)
    # Per mm, not per voxel; whole HU/mm steps are fine enough and an 8-bit image floods
    # about 20x faster.
    grad /= min(g.sp)
    grad = sitk.GetImageFromArray(np.clip(grad, 0, 255).astype(np.uint8))
    m = sitk.GetImageFromArray(markers[box])
    grad.CopyInformation(m)
    ws = sitk.MorphologicalWatershedFromMarkers(grad, m, markWatershedLine=False,
                                                fullyConnected=False)
    out = np.zeros_like(markers)
    out[box] = sitk.GetArrayFromImage(ws)
    return out


def esophagus(g: Grid, lungs: np.ndarray, airway: np.ndarray, spine: np.ndarray,
              aorta: np.ndarray, trachea: np.ndarray, carina_k: int | None) -> np.ndarray:
    """Oesophagus as a traced tube of soft tissue (or collapsed air) in front of the spine.

    Expected centre per slice: above the carina midway between the trachea's back wall and the
    vertebral body, below it in front of the vertebral body and right of the descending aorta.
    The largest inscribed circle (radius 3-12 mm) of non-fat, non-bone tissue within 10 mm of
    that point is taken; centres are median-smoothed along z and interpolated over the slices
    between where none was found.
    """
    hu = g.hu
    out = np.zeros_like(lungs)
    tissue = ((hu > -60.0) & (hu < 250.0)) | ((hu < -500.0) & ~dilate(
        lungs | airway, ellipsoid(0, 2, 2)))
    tissue &= ~dilate(lungs | airway | spine | aorta, ellipsoid(0, 1, 1))
    sp2 = (g.sp[1], g.sp[2])
    found: dict[int, tuple[float, float, float]] = {}
    for k in range(hu.shape[0]):
        if not spine[k].any() or lungs[k].sum() < 10:
            continue
        sj, si = np.nonzero(spine[k])
        # Front of the vertebral body: the central columns only (not ribs or processes).
        mid = np.abs(si - np.median(si)) * g.sp[2] <= 10.0
        front = float(sj[mid].min())
        if trachea[k].any() and (carina_k is None or k > carina_k):
            tj, ti = np.nonzero(trachea[k])
            near = (0.5 * (tj.max() + front), ti.mean() + 5.0 / g.sp[2])
        else:
            near = (front - 10.0 / g.sp[1], si.mean())
            aj, ai = np.nonzero(aorta[k])
            desc = aj >= front - 40.0 / g.sp[1]  # the descending aorta, not the ascending
            aj, ai = aj[desc], ai[desc]
            if aj.size:
                near = (0.5 * (near[0] + aj.mean()), min(near[1], ai.mean() - 15.0 / g.sp[2]))
        c = inscribed(tissue[k], sp2, near, 10.0)
        log.debug("esophagus k=%d near=%s circle=%s", k, near, c)
        if c is not None and 3.0 <= c[2] <= 12.0:
            found[k] = c
    if len(found) < 3:
        return out
    ks = np.array(sorted(found))
    cj = ndi.median_filter(np.array([found[k][0] for k in ks]), size=5, mode="nearest")
    ci = ndi.median_filter(np.array([found[k][1] for k in ks]), size=5, mode="nearest")
    rr = np.array([min(found[k][2] + 2.0, 10.0) for k in ks])
    # The oesophagus is one continuous tube: slices where no circle was found (a bolus of air,
    # a tight spot against the aorta) are bridged by interpolating the traced centre.
    every = np.arange(ks[0], ks[-1] + 1)
    cj, ci, rr = (np.interp(every, ks, v) for v in (cj, ci, rr))
    jj, ii = np.indices(hu.shape[1:])
    for k, j0, i0, r in zip(every, cj, ci, rr, strict=True):
        out[k] = (np.hypot((jj - j0) * g.sp[1], (ii - i0) * g.sp[2]) <= r) & ~(
            lungs[k] | airway[k] | spine[k] | aorta[k])
    return out
