"""Classical CT-only anatomy backend (no model weights).

Works on the canonical (usually thorax-cropped) CT. Everything heavy is done on a coarse
working grid (about 2.5 mm) and the labels are mapped back to the CT grid with
nearest-neighbour resampling. Steps (thresholds in HU, distances in mm, each with its reason
where it is defined):

1. body and outside air (:func:`nstage.anatomy.crop.body_and_outside`);
2. airway (:mod:`nstage.anatomy.airway`): the trachea as the round, walled air column followed
   slice by slice from the top of the scan (kept to its tube where the lung touches it), the
   bronchi grown from it, the carina where it divides, the main bronchi near the carina;
3. lungs: internal air minus the airway and its wall, pharynx air dropped, split into
   left/right (separate components, else erosion + nearest-seed split); lobes are not
   separated (``lung_left``/``lung_right``);
4. contrast: the blood level of the mediastinum decides the bone and blood thresholds;
5. bone: spine (posterior midline column, in front of which the descending aorta runs),
   sternum, clavicles; aorta (:mod:`nstage.anatomy.vessels`): descending and ascending aorta
   traced as circles and joined over the arch;
6. mediastinum = per-slice convex hull of both lungs minus lungs, airway and skeleton, in front
   of the vertebral bodies; oesophagus; heart, liver and the lungs' soft-tissue masses seeded
   separately and competed in one watershed (:mod:`nstage.anatomy.mediastinum`,
   :mod:`nstage.anatomy.abdomen`, :mod:`nstage.anatomy.lung_masses`); masses join their lung.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.anatomy.abdomen import (
    diaphragm_surface,
    liver,
    liver_tissue,
    seed_level,
    seed_under_dome,
)
from nstage.anatomy.airway import Airway, find_airway
from nstage.anatomy.base import Anatomy
from nstage.anatomy.crop import body_and_outside, lung_candidates, resample_spacing
from nstage.anatomy.lung_masses import grow_masses, mass_seeds
from nstage.anatomy.mediastinum import (
    HEART,
    LEFT_ABDOMEN,
    LIVER,
    MASS_LEFT,
    MASS_RIGHT,
    PLAIN_HEART_HU,
    esophagus,
    heart,
    heart_marker,
    heart_region,
    heart_top_k,
    mediastinum,
    organ_watershed,
)
from nstage.anatomy.vessels import blood_mask, trace_aorta
from nstage.anatomy.workgrid import (
    Grid,
    components,
    disk,
    ellipsoid,
    largest,
)
from nstage.geometry import canonical, resample_to
from nstage.morphology import (
    bounding_box,
    closing,
    dilate,
    erode,
    fast_hull,
    fill_holes_axial,
    opening,
)

log = logging.getLogger(__name__)

BACKEND = "classical"
WORK_SPACING_MM = 2.5
LABELS: dict[int, str] = {
    1: "lung_left", 2: "lung_right", 3: "trachea", 4: "main_bronchus_left",
    5: "main_bronchus_right", 6: "airway", 7: "spine", 8: "sternum", 9: "clavicula_left",
    10: "clavicula_right", 11: "mediastinum", 12: "heart", 13: "aorta", 14: "esophagus",
    15: "liver",
}
VALUE = {n: v for v, n in LABELS.items()}
# Bit of the packed uint8 that carries the body mask while resampling (labels stay below it).
BODY_BIT = 7
assert max(LABELS) < (1 << BODY_BIT)

# A lung whose lowest voxel in a (y, x) column lies this far below the heart's top rests on
# the diaphragm there, not on the heart: nothing under it is heart (the liver, stomach and
# spleen are). Lung resting on the heart (over its top and upper sides) ends higher.
HEART_UNDER_LUNG_MM = 50.0
# Air pieces smaller than this fraction of the largest lung piece are not lung.
MIN_LUNG_PIECE = 0.05
BONE_HU = 150.0
# With iodinated contrast the blood pool reaches 300-600 HU (measured on the TotalSegmentator
# contrast crops at 2.5 mm; 130-150 HU in a late-phase planning CT): bone is then taken above
# this multiple of the blood level, at most BONE_HU_CONTRAST (cortical bone stays above it
# even averaged over 2.5 mm).
BONE_OVER_BLOOD = 2.0
BONE_HU_CONTRAST = 650.0
CONTRAST_BLOOD_HU = 120.0


def _work_grid(ct: sitk.Image) -> sitk.Image:
    sx, sy, sz = ct.GetSpacing()
    tz = WORK_SPACING_MM
    # Keep thin slabs (a few 1 mm slices) usable: never fewer than ~8 working slices.
    if ct.GetSize()[2] * sz / tz < 8:
        tz = sz
    return resample_spacing(ct, (WORK_SPACING_MM, WORK_SPACING_MM, tz))


# ----------------------------------------------------------------------------- lungs

def _split_lungs(lungs: np.ndarray, mid_x_vox: float, g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lung (array order; left = larger x index)."""
    lab, counts = components(lungs)
    total = counts.sum()
    big = [c for c in np.argsort(counts)[::-1] if counts[c] >= 0.05 * total and c > 0]

    def side_of(mask: np.ndarray) -> str:
        return "left" if np.nonzero(mask)[2].mean() > mid_x_vox else "right"

    if len(big) >= 2:
        sides = {side_of(lab == c) for c in big[:2]}
        if sides == {"left", "right"}:
            left = np.isin(lab, [c for c in big if side_of(lab == c) == "left"])
            right = np.isin(lab, [c for c in big if side_of(lab == c) == "right"])
            return left, right
    # The lungs touch (thin anterior/posterior junction): erode until two seeds appear.
    work = lungs.copy()
    st = disk(1)[None]
    for _ in range(6):
        work = erode(work, st)
        lab2, counts2 = components(work)
        order = [c for c in np.argsort(counts2)[::-1] if c > 0]
        if len(order) >= 2 and counts2[order[1]] >= 0.1 * counts2[order[0]]:
            a, b = lab2 == order[0], lab2 == order[1]
            if side_of(a) != side_of(b):
                # Nearest seed of every lung voxel, in the lungs' box (the seeds, eroded
                # lung, all lie in it).
                box = bounding_box(lungs)
                seeds = np.zeros(lungs[box].shape, np.int8)
                seeds[a[box]], seeds[b[box]] = 1, 2
                _, idx = ndi.distance_transform_edt(seeds == 0, sampling=g.sp,
                                                    return_indices=True)
                nearest = np.zeros(lungs.shape, np.int8)
                nearest[box] = seeds[tuple(idx)]
                la = lungs & (nearest == 1)
                lb = lungs & (nearest == 2)
                return (la, lb) if side_of(a) == "left" else (lb, la)
    g.notes.append("lungs could not be separated by shape; split at the midline")
    xs = np.arange(lungs.shape[2])[None, None, :]
    return lungs & (xs > mid_x_vox), lungs & (xs <= mid_x_vox)


# ----------------------------------------------------------------------------- bones

def _lung_hull(lungs: np.ndarray) -> np.ndarray:
    """Per axial slice, the convex hull of both lungs (the cavity they and the mediastinum
    fill); computed once, used by several steps."""
    out = np.zeros_like(lungs)
    for k in np.nonzero(lungs.reshape(lungs.shape[0], -1).sum(axis=1) >= 10)[0]:
        out[k] = fast_hull(lungs[k])
    return out


def _blood_level(g: Grid, lungs: np.ndarray, hull: np.ndarray) -> float | None:
    """Blood level (HU) of a contrast-enhanced CT, or None when there is no contrast.

    Median HU of the non-fat tissue (> 0 HU, < 1000 HU) inside the per-slice convex hull of the
    lungs over the middle third of the lungs' height (heart and great vessels): blood is 30-60
    HU without contrast, 100-600 HU with it.
    """
    ks = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if ks.size < 3:
        return None
    lo, hi = ks[0] + np.ptp(ks) // 3, ks[0] + 2 * np.ptp(ks) // 3 + 1
    vals = []
    for k in range(lo, hi):
        if lungs[k].sum() < 10:
            continue
        inner = hull[k] & ~lungs[k]
        v = g.hu[k][inner]
        vals.append(v[(v > 0) & (v < 1000)])
    vals = np.concatenate(vals) if vals else np.zeros(0)
    if vals.size <= 50:
        return None
    level = float(np.median(vals))
    return level if level > CONTRAST_BLOOD_HU else None


def _spine(g: Grid, bone: np.ndarray, body: np.ndarray, mid_x_vox: float,
           behind_j: float | np.ndarray | None = None) -> np.ndarray:
    """The vertebral column: the posterior midline bone column (array order).

    ``behind_j``: row (or row per slice) in front of which no vertebra lies (behind the
    trachea, oesophagus and the descending aorta's front).
    """
    nz, ny, nx = bone.shape
    xs = np.arange(nx)
    ys = np.arange(ny)
    central = np.abs(xs - mid_x_vox) * g.sp[2] <= 35.0
    body_y = np.nonzero(body.any(axis=(0, 2)))[0]
    ymid = 0.5 * (body_y[0] + body_y[-1]) if body_y.size else ny / 2
    posterior = ys >= ymid - 20.0 / g.sp[1]
    cand = bone & central[None, None, :] & posterior[None, :, None]
    if behind_j is not None:
        # The vertebral bodies lie behind the trachea and oesophagus.
        front = np.broadcast_to(np.asarray(behind_j, dtype=float), (nz,))
        cand &= ys[None, :, None] >= front[:, None, None]
    cand = fill_holes_axial(closing(cand, ellipsoid(1, 2, 2)))
    # Contrast-filled vessels (aorta next to the vertebrae) touch the column only narrowly:
    # erode in-plane, keep the largest component, grow back within the candidates.
    core = largest(erode(cand, disk(1)[None]))
    col = cand & dilate(core, disk(2)[None]) if core.any() else \
        largest(cand)
    if col.sum() * g.vox_ml < 5.0:
        return np.zeros_like(bone)
    return fill_holes_axial(col)


def _sternum(g: Grid, bone: np.ndarray, body: np.ndarray, mid_x_vox: float,
             top_k: int) -> np.ndarray:
    nz, ny, nx = bone.shape
    xs = np.arange(nx)
    central = np.abs(xs - mid_x_vox) * g.sp[2] <= 30.0
    front = np.argmax(body, axis=1)  # first body row (anterior surface) per (k, i)
    ys = np.arange(ny)[None, :, None]
    anterior = (ys >= front[:, None, :]) & (ys <= front[:, None, :] + 50.0 / g.sp[1])
    cand = bone & anterior & central[None, None, :]
    cand[top_k + 1:] = False
    cand = closing(cand, ellipsoid(1, 2, 2))
    lab, counts = components(cand)
    if counts.max(initial=0) * g.vox_ml < 3.0:
        return np.zeros_like(bone)
    keep = counts >= max(3.0 / g.vox_ml, 0.3 * counts.max())
    keep[0] = False
    return fill_holes_axial(keep[lab])


def _clavicles(g: Grid, bone: np.ndarray, exclude: np.ndarray, mid_x_vox: float,
               ant_limit_j: float, low_k: int) -> dict[str, np.ndarray]:
    nz, ny, nx = bone.shape
    dx = (np.arange(nx) - mid_x_vox) * g.sp[2]
    out = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        lateral = (sign * dx >= 12.0) & (sign * dx <= 125.0)
        cand = bone & ~exclude & lateral[None, None, :]
        cand[:low_k] = False
        cand[:, int(ant_limit_j):] = False
        lab, counts = components(cand)
        best, best_score = 0, 0.0
        for c in np.nonzero(counts * g.vox_ml >= 1.0)[0]:
            if c == 0:
                continue
            kk, jj, ii = np.nonzero(lab == c)
            span_x = np.ptp(ii) * g.sp[2]
            if span_x < 30.0:
                continue
            score = counts[c] * (1.0 + kk.mean() / nz)  # prefer high, big
            if score > best_score:
                best, best_score = c, score
        out[side] = (lab == best) if best else np.zeros_like(bone)
    return out


# ----------------------------------------------------------------------------- main

def segment_classical(ct: sitk.Image) -> Anatomy:
    """Segment thoracic anatomy from a CT alone.

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU (ideally the thorax crop from :func:`nstage.anatomy.crop.thorax_box`);
        canonicalised here.

    Returns
    -------
    Anatomy
        Labels on ``ct``'s (canonical) grid with names in :data:`LABELS`; ``extra_masks``
        holds ``body``; ``notes`` list what was not found or approximated.
    """
    ct = canonical(ct)
    small = _work_grid(ct)
    hu = sitk.GetArrayFromImage(small)
    sp = small.GetSpacing()
    g = Grid(hu=hu, sp=(sp[2], sp[1], sp[0]), image=small)
    g.notes.append("lobes not separated (lung_left/lung_right)")
    body, _ = body_and_outside(hu, g.sp)
    cand = lung_candidates(hu, body, g.sp)
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    mid_x_vox = 0.5 * (xs[0] + xs[-1]) if xs.size else hu.shape[2] / 2
    apex_k = _apex_k(g, cand, mid_x_vox)

    aw = find_airway(g, body, mid_x_vox, apex_k)
    if aw.carina_kji is not None:
        mid_x_vox = float(aw.carina_kji[2])
    elif aw.trachea is not None and aw.trachea.any():
        mid_x_vox = float(np.nonzero(aw.trachea)[2].mean())
    left, right = _lungs(g, cand, body, aw.tree, mid_x_vox)
    lungs = left | right
    hull = _lung_hull(lungs)
    blood_hu = _blood_level(g, lungs, hull)
    bone_hu = BONE_HU if blood_hu is None else \
        float(np.clip(BONE_OVER_BLOOD * blood_hu, BONE_HU, BONE_HU_CONTRAST))
    s = _Structures(body=body, left=left, right=right, airway=aw, hull=hull)
    _bones_and_aorta(g, s, blood_hu, bone_hu, mid_x_vox, apex_k)
    _soft_organs(g, s, blood_hu, bone_hu, mid_x_vox)
    lab = _label_map(g, s)
    # Labels and body travel in one uint8 (body in the top bit): one resampling, not two.
    packed = sitk.GetImageFromArray(lab | (body.astype(np.uint8) << BODY_BIT))
    packed.CopyInformation(small)
    packed = sitk.GetArrayFromImage(resample_to(packed, ct, nearest=True,
                                                pixel_type=sitk.sitkUInt8))
    labels = packed & ((1 << BODY_BIT) - 1)
    body_full = packed >= (1 << BODY_BIT)
    return Anatomy(labels=labels, names=dict(LABELS), reference=ct, backend=BACKEND,
                   extra_masks={"body": body_full}, notes=g.notes)


@dataclass
class _Structures:
    """Masks on the working grid, filled in step by step."""

    body: np.ndarray
    left: np.ndarray
    right: np.ndarray
    airway: Airway
    hull: np.ndarray  # per-slice convex hull of the (aerated) lungs
    spine: np.ndarray | None = None
    sternum: np.ndarray | None = None
    clavicles: dict[str, np.ndarray] = field(default_factory=dict)
    aorta: np.ndarray | None = None
    medi: np.ndarray | None = None
    heart: np.ndarray | None = None
    esophagus: np.ndarray | None = None
    liver: np.ndarray | None = None

    @property
    def lungs(self) -> np.ndarray:
        return self.left | self.right

    @property
    def carina_k(self) -> int | None:
        c = self.airway.carina_kji
        return None if c is None else int(c[0])


def _apex_k(g: Grid, cand: np.ndarray, mid_x_vox: float) -> int | None:
    """Slice of the lung apices: the highest holding lung away from the midline (the trachea
    is central, the apices lateral)."""
    lat = np.abs(np.arange(cand.shape[2]) - mid_x_vox) * g.sp[2] > 25.0
    lat_k = np.nonzero((cand & lat[None, None, :]).sum(axis=(1, 2)) * g.px_mm2 >= 50)[0]
    return int(lat_k[-1]) if lat_k.size else None


def _lungs(g: Grid, cand: np.ndarray, body: np.ndarray, airway: np.ndarray,
           mid_x_vox: float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lung: internal air minus the airway (and its wall's partial volume)."""
    lungs = cand & ~dilate(airway, ellipsoid(0, 1, 1))
    lungs = opening(lungs, disk(1)[None]) | (lungs & ~body)
    lungs = _drop_airway_remnants(g, lungs)
    if lungs.sum() * g.vox_ml < 20.0:
        g.notes.append("no lungs found")
        return np.zeros_like(lungs), np.zeros_like(lungs)
    return _split_lungs(lungs, mid_x_vox, g)


def _drop_airway_remnants(g: Grid, lungs: np.ndarray) -> np.ndarray:
    """Without the airway, the air left in the pharynx and larynx above it (and other small
    pockets) falls apart from the lungs: keep the pieces of at least ``MIN_LUNG_PIECE``
    of the largest."""
    lab, counts = components(lungs)
    if counts.max(initial=0) == 0:
        return lungs
    keep = counts >= MIN_LUNG_PIECE * counts.max()
    keep[0] = False
    return keep[lab]


def _bones_and_aorta(g: Grid, s: _Structures, blood_hu: float | None, bone_hu: float,
                     mid_x_vox: float, apex_k: int | None) -> None:
    """Spine, sternum, clavicles and the aorta (with contrast the aorta first: contrast blood
    is as bright as bone, so it is kept out of the spine)."""
    hu, body, lungs, aw = g.hu, s.body, s.lungs, s.airway
    behind_j = None
    if aw.trachea is not None and aw.trachea.any():
        behind_j = np.nonzero(aw.trachea)[1].mean() + 12.0 / g.sp[1]
    if blood_hu is not None:
        g.notes.append(f"contrast-enhanced CT (blood about {blood_hu:.0f} HU): bone taken "
                       f"above {bone_hu:.0f} HU")
        bone = (hu > bone_hu) & body
        cortex_spine = _vertebral_outline(_spine(g, bone, body, mid_x_vox, behind_j))
        soft = blood_mask(g, lungs, aw.tree, cortex_spine, blood_hu)
        trace = trace_aorta(g, soft, lungs, cortex_spine, None, aw.carina_kji, contrast=True)
        s.aorta = trace.mask
        # Marrow is found from the plain bone threshold; the contrast-filled heart and aorta
        # that also pass it lie in front of the descending aorta's front.
        spine_bone = (hu > BONE_HU) & body & ~dilate(s.aorta, ellipsoid(1, 2, 2))
        behind_j = _front_of_spine(g, trace.descending, behind_j, hu.shape[0])
    else:
        bone = (hu > BONE_HU) & body
        spine_bone = bone
    s.spine = _spine(g, spine_bone, body, mid_x_vox, behind_j) if body.any() \
        else np.zeros_like(bone)
    if not s.spine.any():
        g.notes.append("spine not found")
    top_k = hu.shape[0] - 1 if apex_k is None else min(hu.shape[0] - 1, apex_k + g.mm(10.0, 0))
    s.sternum = _sternum(g, bone & ~s.spine, body, mid_x_vox, top_k)
    if not s.sternum.any():
        g.notes.append("sternum not found")
    s.clavicles = _find_clavicles(g, s, bone, mid_x_vox, apex_k)
    # With contrast, bright "bone" between the lungs is blood: only the skeleton is left out.
    skeleton = s.spine | s.sternum | s.clavicles["left"] | s.clavicles["right"]
    s.medi = mediastinum(g, s.hull, body, lungs | aw.tree | skeleton, s.spine)
    if s.aorta is None:
        soft = blood_mask(g, lungs, aw.tree, s.spine, None)
        s.aorta = trace_aorta(g, soft, lungs, s.spine, s.medi, aw.carina_kji).mask


def _front_of_spine(g: Grid, descending: dict, behind_j: float | None,
                    nz: int) -> np.ndarray | float | None:
    """Per slice, the row in front of which no vertebra lies: the descending aorta's front
    (it runs beside the vertebral bodies), carried to slices it does not reach."""
    if not descending:
        return behind_j
    ks = np.array(sorted(descending))
    fronts = np.array([descending[k][0] - descending[k][2] / g.sp[1] for k in ks])
    out = fronts[np.abs(np.arange(nz)[:, None] - ks[None, :]).argmin(axis=1)]
    return out if behind_j is None else np.maximum(out, behind_j)


def _vertebral_outline(spine: np.ndarray) -> np.ndarray:
    """The spine's per-slice convex outline, carried to slices where it was missed.

    With contrast the marrow is as bright as late-phase blood and only the cortex tells the
    vertebra; its outline keeps the aorta's trace out of the marrow and places its start.
    """
    ks = np.nonzero(spine.reshape(spine.shape[0], -1).any(axis=1))[0]
    out = np.zeros_like(spine)
    if ks.size == 0:
        return out
    for k in ks:
        out[k] = fast_hull(spine[k])
    nearest = ks[np.abs(np.arange(spine.shape[0])[:, None] - ks[None, :]).argmin(axis=1)]
    return out[nearest]


def _find_clavicles(g: Grid, s: _Structures, bone: np.ndarray, mid_x_vox: float,
                    apex_k: int | None) -> dict[str, np.ndarray]:
    hu = g.hu
    carina_kji = s.airway.carina_kji
    if carina_kji is not None:
        ant_limit = carina_kji[1] + 10.0 / g.sp[1]
    else:
        sj = np.nonzero(s.spine.any(axis=(0, 2)))[0]
        ant_limit = sj[0] if sj.size else hu.shape[1] / 2
    if apex_k is None or apex_k >= hu.shape[0] - 1 - g.mm(10.0, 0):
        g.notes.append("clavicles not searched: the lung apices are not in view")
        return {"left": np.zeros_like(bone), "right": np.zeros_like(bone)}
    low_k = max(0, apex_k - g.mm(50.0, 0))
    # Contrast-filled great vessels lie between the lungs; clavicles never do.
    return _clavicles(g, bone & ~s.hull, s.spine | s.sternum, mid_x_vox, ant_limit, low_k)


def _soft_organs(g: Grid, s: _Structures, blood_hu: float | None, bone_hu: float,
                 mid_x_vox: float) -> None:
    """Oesophagus, heart, liver and the soft-tissue masses of the lungs.

    The heart, the abdominal organs under each hemidiaphragm and each lung's masses are seeded
    separately and compete in one watershed, so none spills into another across the
    diaphragm or the fat around the heart.
    """
    aw = s.airway
    none = np.zeros_like(s.body)
    s.esophagus = esophagus(g, s.lungs, aw.tree, s.spine, s.aorta,
                            none if aw.trachea is None else aw.trachea, s.carina_k)
    s.heart, s.liver = none, none
    top = heart_top_k(g, s.lungs, s.carina_k)
    if top is None:
        return
    bronchi = none.copy()
    for m in (*aw.main_bronchus.values(), aw.rest):
        if m is not None:
            bronchi |= m
    posterior = s.aorta | s.esophagus
    region = heart_region(g, s.medi, s.spine, bronchi, posterior, top)
    bone = (g.hu > bone_hu) & s.body
    hard = s.spine | s.sternum | s.lungs | aw.tree | posterior
    abdominal = liver_tissue(g, s.body, hard | bone)
    diaphragm = {"left": diaphragm_surface(g, s.left), "right": diaphragm_surface(g, s.right)}
    region &= ~_under_lung_bases(g, s.lungs, top)
    seeds = np.zeros(g.hu.shape, np.uint8)
    seeds[seed_under_dome(g, s.left, abdominal)] = LEFT_ABDOMEN
    liver_seed = seed_under_dome(g, s.right, abdominal)
    seeds[liver_seed] = LIVER
    tissue = (g.hu > PLAIN_HEART_HU[0]) & s.body & ~hard
    # First the heart against the abdominal organs; then the lungs' masses, seeded clear of
    # that heart, join the competition (so a tumour on the diaphragm is not taken for liver).
    first = seeds.copy()
    first[heart_marker(g, region, top, blood_hu)] = HEART
    first = organ_watershed(g, first, tissue)
    s.heart = heart(g, region, first, blood_hu)
    structures = (hard & ~s.lungs) | s.heart | (seeds > 0)
    organs = [(first == label, level) for label in (LIVER, LEFT_ABDOMEN)
              if (level := seed_level(g, seeds == label)) is not None]
    masses = mass_seeds(g, s.left, s.right, s.hull, structures, mid_x_vox, blood_hu,
                        diaphragm, organs)
    if masses.left.any() or masses.right.any():
        seeds[masses.left] = MASS_LEFT
        seeds[masses.right] = MASS_RIGHT
        seeds[s.heart] = HEART
        flooded = organ_watershed(g, seeds, tissue)
        s.heart = heart(g, region, flooded, blood_hu)
    else:
        flooded = first  # nothing new competes: the first flood stands
    s.liver = liver(g, flooded == LIVER, liver_seed, abdominal, diaphragm["right"])
    # The liver's basin may hold the lower part of a tumour on the diaphragm: what is not liver
    # there is open to the right lung's mass.
    mass_l, mass_r = grow_masses(g, masses, flooded == MASS_LEFT,
                                 (flooded == MASS_RIGHT) | ((flooded == LIVER) & ~s.liver))
    mass_l &= ~s.heart
    mass_r &= ~s.heart
    if mass_l.any() or mass_r.any():
        g.notes.append(f"soft-tissue masses in the lungs (tumour, collapse) counted as lung: "
                       f"left {mass_l.sum() * g.vox_ml:.0f} ml, right "
                       f"{mass_r.sum() * g.vox_ml:.0f} ml")
    s.left = s.left | mass_l
    s.right = s.right | mass_r


def _under_lung_bases(g: Grid, lungs: np.ndarray, top: int) -> np.ndarray:
    """Voxels under a lung base that rests on the diaphragm (see ``HEART_UNDER_LUNG_MM``)."""
    has = lungs.any(axis=0)
    bottom = np.where(has, np.argmax(lungs, axis=0), -1)
    on_diaphragm = has & (bottom < top - g.mm(HEART_UNDER_LUNG_MM, 0))
    kk = np.arange(lungs.shape[0])[:, None, None]
    return on_diaphragm[None] & (kk < bottom[None])


def _label_map(g: Grid, s: _Structures) -> np.ndarray:
    """One uint8 label map; later entries win where masks overlap."""
    aw = s.airway
    none = np.zeros_like(s.body)
    order = [("mediastinum", s.medi), ("liver", s.liver), ("heart", s.heart),
             ("esophagus", s.esophagus), ("aorta", s.aorta), ("spine", s.spine),
             ("sternum", s.sternum), ("clavicula_left", s.clavicles["left"]),
             ("clavicula_right", s.clavicles["right"]), ("lung_left", s.left),
             ("lung_right", s.right), ("airway", none if aw.rest is None else aw.rest),
             ("main_bronchus_left", aw.main_bronchus.get("left", none)),
             ("main_bronchus_right", aw.main_bronchus.get("right", none)),
             ("trachea", none if aw.trachea is None else aw.trachea)]
    lab = np.zeros(g.hu.shape, np.uint8)
    for name, m in order:
        lab[m] = VALUE[name]
    for name in ("clavicula_left", "clavicula_right", "heart", "aorta", "esophagus", "liver"):
        if not (lab == VALUE[name]).any():
            g.notes.append(f"{name} not found")
    return lab
