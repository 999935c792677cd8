"""Classical CT-only anatomy backend (no model weights).

Works on the canonical (usually thorax-cropped) CT. Everything heavy is done on a coarse
working grid (about 2.5 mm) and the labels are mapped back to the CT grid with
nearest-neighbour resampling. Steps, all thresholds in HU:

1. body and outside air (:func:`nstage.anatomy.crop.body_and_outside`);
2. airway: a seed in the upper trachea (round, central air in the top slices), grown in 3D
   through air below -950 HU with leak control (lower threshold when the volume explodes);
   the carina is the most cranial level where the airway splits into two branches
   (:func:`nstage.landmarks.airway_bifurcation`); the branches below are the left/right
   bronchial trees, their first centimetres the main bronchi;
3. lungs: internal air minus the airway, split into left/right (separate components, else
   erosion + nearest-seed split); lobes are not separated (``lung_left``/``lung_right``);
4. bone (> 150 HU): spine (posterior midline column), sternum (anterior midline),
   clavicles (anterior, lateral, at the top of the thorax);
5. mediastinum = convex hull of both lungs per slice minus lungs, airway and bone, in front
   of the vertebral bodies; heart = the bulky anterior part of it from 3 cm below the carina; aorta =
   the descending aorta traced as the largest round soft-tissue section left-anterior of the
   spine, followed upwards over the arch and down the ascending aorta.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.anatomy.base import Anatomy
from nstage.anatomy.crop import body_and_outside, lung_candidates, resample_spacing
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
}
VALUE = {n: v for v, n in LABELS.items()}
# Bit of the packed uint8 that carries the body mask while resampling (labels stay below it).
BODY_BIT = 7
assert max(LABELS) < (1 << BODY_BIT)

# Tried in turn until the grown airway does not leak. Thick slices (>= 4 mm) raise the lumen of
# bronchi by partial volume, so they start higher.
AIRWAY_THRESHOLDS_HU = (-900.0, -950.0, -975.0, -990.0)
AIRWAY_THRESHOLDS_THICK_HU = (-850.0, -900.0, -950.0, -975.0)
AIRWAY_MAX_ML = 250.0
CONN26 = np.ones((3, 3, 3), dtype=bool)
BONE_HU = 150.0
# With iodinated contrast the blood pool reaches 300-600 HU (measured on the TotalSegmentator
# contrast crops at 2.5 mm); only cortical bone stays above this.
BONE_HU_CONTRAST = 650.0
CONTRAST_BLOOD_HU = 120.0
# Typical adult main-bronchus lengths (left ~45-50 mm, right ~20-25 mm; Gray's Anatomy): the
# part of each bronchial tree within this distance of the carina is called main bronchus.
MAIN_BRONCHUS_MM = {"left": 48.0, "right": 28.0}


@dataclass
class _Grid:
    hu: np.ndarray
    sp: tuple[float, float, float]  # z, y, x mm
    image: sitk.Image
    notes: list[str] = field(default_factory=list)

    def mm(self, n: float, axis: int = 2) -> int:
        return max(1, int(round(n / self.sp[axis])))

    @property
    def vox_ml(self) -> float:
        return float(np.prod(self.sp)) / 1000.0


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2) <= r * r


def _ball(rz: int, ry: int, rx: int) -> np.ndarray:
    zz, yy, xx = np.mgrid[-rz:rz + 1, -ry:ry + 1, -rx:rx + 1]
    return (zz / max(rz, 0.5)) ** 2 + (yy / max(ry, 0.5)) ** 2 + (xx / max(rx, 0.5)) ** 2 <= 1.0


def _components(mask: np.ndarray, structure=None) -> tuple[np.ndarray, np.ndarray]:
    lab, _ = ndi.label(mask, structure=structure)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab, counts


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, counts = _components(mask)
    if counts.size <= 1 or counts.max() == 0:
        return np.zeros_like(mask, dtype=bool)
    return lab == int(np.argmax(counts))


def _work_grid(ct: sitk.Image) -> sitk.Image:
    sx, sy, sz = ct.GetSpacing()
    tz = WORK_SPACING_MM
    # Keep thin slabs (a few 1 mm slices) usable: never fewer than ~8 working slices.
    if ct.GetSize()[2] * sz / tz < 8:
        tz = sz
    return resample_spacing(ct, (WORK_SPACING_MM, WORK_SPACING_MM, tz))


# ----------------------------------------------------------------------------- airway

def _trachea_seed(g: _Grid, body: np.ndarray, mid_x: float) -> tuple[int, int, int] | None:
    """Voxel (k, j, i) inside the upper trachea, or None.

    Scans from the top slice down for a round, central air section of 40-900 mm^2 that is
    also present (within 10 mm) in the next two slices below.
    """
    hu = g.hu
    nz = hu.shape[0]
    px = g.sp[1] * g.sp[2]
    cands: dict[int, list[tuple[float, float, int, int]]] = {}

    def sections(k: int) -> list[tuple[float, float, int, int]]:
        # Computed on demand: the scan usually stops within the top few slices.
        if k in cands:
            return cands[k]
        sl = (hu[k] < -800.0) & body[k]
        lab, counts = _components(sl)
        found = []
        for c in np.nonzero((counts * px >= 40.0) & (counts * px <= 900.0))[0]:
            jj, ii = np.nonzero(lab == c)
            cx = ii.mean() * g.sp[2]
            if abs(cx - mid_x) > 35.0:
                continue
            h, w = np.ptp(jj) + 1, np.ptp(ii) + 1
            if counts[c] / float(h * w) < 0.45 or max(h, w) > 2.5 * min(h, w):
                continue
            m = np.argmin(hu[k][jj, ii])
            found.append((cx, jj.mean() * g.sp[1], int(jj[m]), int(ii[m])))
        cands[k] = found
        return found

    for k in range(nz - 1, 1, -1):
        for cx, cy, j, i in sections(k):
            ok = True
            for kk in (k - 1, k - 2):
                if not any(np.hypot(cx - x2, cy - y2) < 10.0 for x2, y2, _, _ in sections(kk)):
                    ok = False
                    break
            if ok:
                return k, j, i
    return None


def _grow_airway(g: _Grid, body: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray | None:
    """Airway grown from ``seed`` through air, lowering the threshold while it leaks."""
    px = g.sp[1] * g.sp[2]
    thresholds = AIRWAY_THRESHOLDS_THICK_HU if g.sp[0] >= 4.0 else AIRWAY_THRESHOLDS_HU
    for t in thresholds:
        air = (g.hu < t) & body
        if not air[seed]:
            continue
        # 26-connectivity: with thick slices a bronchus moves sideways between slices.
        lab, _ = ndi.label(air, structure=CONN26)
        tree = lab == lab[seed]
        vol = tree.sum() * g.vox_ml
        max_area = tree.sum(axis=(1, 2)).max() * px
        if vol <= AIRWAY_MAX_ML and max_area <= 1500.0:
            # Give back the partial-volume rim of the lumen (one in-plane voxel, still air-ish).
            return tree
        g.notes.append(f"airway grown at {t:.0f} HU leaked ({vol:.0f} ml); threshold lowered")
    return None


def _airways(g: _Grid, body: np.ndarray, mid_x: float, apex_k: int | None) -> dict:
    """Trachea, bronchial trees and carina on the working grid."""
    from nstage.landmarks import airway_bifurcation

    out: dict = {"airway": np.zeros(g.hu.shape, bool)}
    seed = _trachea_seed(g, body, mid_x)
    if seed is None:
        g.notes.append("trachea not found (no round central air column in the upper slices)")
        return out
    tree = _grow_airway(g, body, seed)
    if tree is None:
        g.notes.append("airway could not be grown without leaking into the lungs")
        return out
    # The lumen's partial-volume rim (one in-plane voxel, still air-ish) is added for the labels
    # only; the split is looked for on the core, where touching branches stay apart.
    rim = dilate(tree, _disk(1)[None]) & (g.hu < -500.0) & body
    core, tree = tree, tree | rim
    out["airway"] = tree
    split = airway_bifurcation(core, g.sp, start_k=seed[0],
                               max_k=None if apex_k is None else apex_k - g.mm(20.0, 0))
    if split is None:
        g.notes.append("carina not found: the airway does not divide in view; all of it is "
                       "called trachea")
        out["trachea"] = tree
        return out
    k_split, comp_a, comp_b = split
    above = np.zeros_like(tree)
    above[k_split + 1:] = tree[k_split + 1:]
    below = tree & ~above
    lab, _ = ndi.label(below & ~dilate(above, _ball(1, 0, 0)) | (
        below & core), structure=CONN26)
    lab[~below] = 0
    ids = {}
    for name, comp in (("a", comp_a), ("b", comp_b)):
        vals = lab[k_split][comp]
        vals = vals[vals > 0]
        ids[name] = int(np.bincount(vals).argmax()) if vals.size else 0
    xa = np.nonzero(comp_a)[1].mean()
    xb = np.nonzero(comp_b)[1].mean()
    left_id, right_id = (ids["a"], ids["b"]) if xa > xb else (ids["b"], ids["a"])
    ca = np.array([np.nonzero(c)[i].mean() for c in (comp_a, comp_b) for i in (0, 1)])
    carina_kji = np.array([k_split, 0.5 * (ca[0] + ca[2]), 0.5 * (ca[1] + ca[3])])
    out["carina_kji"] = carina_kji
    out["trachea"] = above
    zz, yy, xx = np.indices(tree.shape, sparse=True)
    dist = np.sqrt(((zz - carina_kji[0]) * g.sp[0]) ** 2 + ((yy - carina_kji[1]) * g.sp[1]) ** 2
                   + ((xx - carina_kji[2]) * g.sp[2]) ** 2)
    for side, cid in (("left", left_id), ("right", right_id)):
        side_tree = (lab == cid) if cid else np.zeros_like(tree)
        main = side_tree & (dist <= MAIN_BRONCHUS_MM[side])
        out[f"main_bronchus_{side}"] = main
        out[f"tree_{side}"] = side_tree
    rest = below.copy()
    for side in ("left", "right"):
        rest &= ~out[f"main_bronchus_{side}"]
    out["rest"] = rest
    return out


# ----------------------------------------------------------------------------- lungs

def _split_lungs(lungs: np.ndarray, mid_x_vox: float, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Left and right lung (array order; left = larger x index)."""
    lab, counts = _components(lungs)
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
    st = _disk(1)[None]
    for _ in range(6):
        work = erode(work, st)
        lab2, counts2 = _components(work)
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

def _is_contrast(g: _Grid, lungs: np.ndarray) -> bool:
    """True when the soft tissue between the lungs (heart, great vessels) is contrast-bright.

    Median HU of the non-fat tissue (> 0 HU, < 1000 HU) inside the per-slice convex hull of the
    lungs, in front of the posterior lung border, over the middle third of the lungs' height:
    blood is 30-60 HU without contrast, 150-600 HU with it.
    """
    ks = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if ks.size < 3:
        return False
    lo, hi = ks[0] + np.ptp(ks) // 3, ks[0] + 2 * np.ptp(ks) // 3 + 1
    vals = []
    for k in range(lo, hi):
        if lungs[k].sum() < 10:
            continue
        inner = fast_hull(lungs[k]) & ~lungs[k]
        v = g.hu[k][inner]
        vals.append(v[(v > 0) & (v < 1000)])
    vals = np.concatenate(vals) if vals else np.zeros(0)
    return bool(vals.size > 50 and np.median(vals) > CONTRAST_BLOOD_HU)


def _spine(g: _Grid, bone: np.ndarray, body: np.ndarray, mid_x_vox: float,
           behind_j: float | None = None) -> np.ndarray:
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
        cand[:, :int(behind_j)] = False
    cand = fill_holes_axial(closing(cand, _ball(1, 2, 2)))
    # Contrast-filled vessels (aorta next to the vertebrae) touch the column only narrowly:
    # erode in-plane, keep the largest component, grow back within the candidates.
    core = _largest(erode(cand, _disk(1)[None]))
    col = cand & dilate(core, _disk(2)[None]) if core.any() else \
        _largest(cand)
    if col.sum() * g.vox_ml < 5.0:
        return np.zeros_like(bone)
    return fill_holes_axial(col)


def _sternum(g: _Grid, bone: np.ndarray, body: np.ndarray, mid_x_vox: float,
             top_k: int) -> np.ndarray:
    nz, ny, nx = bone.shape
    xs = np.arange(nx)
    central = np.abs(xs - mid_x_vox) * g.sp[2] <= 30.0
    front = np.argmax(body, axis=1)  # first body row (anterior surface) per (k, i)
    ys = np.arange(ny)[None, :, None]
    anterior = (ys >= front[:, None, :]) & (ys <= front[:, None, :] + 50.0 / g.sp[1])
    cand = bone & anterior & central[None, None, :]
    cand[top_k + 1:] = False
    cand = closing(cand, _ball(1, 2, 2))
    lab, counts = _components(cand)
    if counts.max(initial=0) * g.vox_ml < 3.0:
        return np.zeros_like(bone)
    keep = counts >= max(3.0 / g.vox_ml, 0.3 * counts.max())
    keep[0] = False
    return fill_holes_axial(keep[lab])


def _clavicles(g: _Grid, bone: np.ndarray, exclude: np.ndarray, mid_x_vox: float,
               ant_limit_j: float, low_k: int) -> dict[str, np.ndarray]:
    nz, ny, nx = bone.shape
    dx = (np.arange(nx) - mid_x_vox) * g.sp[2]
    out = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        lateral = (sign * dx >= 12.0) & (sign * dx <= 125.0)
        cand = bone & ~exclude & lateral[None, None, :]
        cand[:low_k] = False
        cand[:, int(ant_limit_j):] = False
        lab, counts = _components(cand)
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


# ----------------------------------------------------------------------------- mediastinum

def _mediastinum(g: _Grid, lungs: np.ndarray, body: np.ndarray, block: np.ndarray,
                 spine: np.ndarray) -> np.ndarray:
    out = np.zeros_like(lungs)
    for k in range(lungs.shape[0]):
        if lungs[k].sum() < 10:
            continue
        hull = fast_hull(lungs[k])
        m = hull & body[k] & ~block[k]
        sj = np.nonzero(spine[k].any(axis=1))[0]
        if sj.size:
            m[sj[0] + g.mm(10.0, 1):] = False
        out[k] = m
    out = opening(out, _disk(1)[None])
    return _largest(out)


def _heart(g: _Grid, medi: np.ndarray, spine: np.ndarray, carina_k: int | None,
           lungs: np.ndarray) -> np.ndarray:
    ks = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if ks.size == 0:
        return np.zeros_like(medi)
    # The heart (left atrium roof) starts below the subcarinal space, which reaches about
    # 3 cm below the carina (station 7's lower border: the intermediate / lower-lobe
    # bronchus, IASLC 2009); a higher top swallowed 10R nodes at the hilum (seen on phantoms).
    top = carina_k - g.mm(30.0, 0) if carina_k is not None else int(ks[0] + 0.55 * np.ptp(ks))
    region = medi.copy()
    region[top:] = False
    for k in range(region.shape[0]):
        sj = np.nonzero(spine[k].any(axis=1))[0]
        if sj.size:
            region[k, sj[0] - g.mm(8.0, 1):] = False
    r = g.mm(10.0, 1)
    region = opening(region, _disk(r)[None])
    return _largest(region)


# ----------------------------------------------------------------------------- aorta

def _inscribed(mask2d: np.ndarray, sp: tuple[float, float], near: tuple[float, float],
               radius_mm: float) -> tuple[float, float, float] | None:
    """Largest inscribed circle of ``mask2d`` centred within ``radius_mm`` of ``near`` (j, i)."""
    if not mask2d.any():
        return None
    dt = ndi.distance_transform_edt(mask2d, sampling=sp)
    jj, ii = np.indices(mask2d.shape)
    d = np.hypot((jj - near[0]) * sp[0], (ii - near[1]) * sp[1])
    dt = np.where(d <= radius_mm, dt, 0.0)
    m = int(np.argmax(dt))
    j, i = np.unravel_index(m, dt.shape)
    return float(j), float(i), float(dt.flat[m])


def _round_section(mask2d: np.ndarray, sp: tuple[float, float], near: tuple[float, float],
                   within_mm: float, rmin: float, rmax: float
                   ) -> tuple[float, float, float] | None:
    """Closest compact, round 2D component (radius rmin-rmax mm) to ``near`` (j, i)."""
    lab, n = ndi.label(ndi.binary_opening(mask2d))
    best, best_d = None, within_mm
    for sl, c in zip(ndi.find_objects(lab), range(1, n + 1), strict=True):
        m = lab[sl] == c
        area = m.sum() * sp[0] * sp[1]
        r = np.sqrt(area / np.pi)
        h, w = m.shape[0] * sp[0], m.shape[1] * sp[1]
        if not (rmin <= r <= rmax) or area < 0.6 * h * w or max(h, w) > 1.5 * min(h, w):
            continue
        jj, ii = np.nonzero(m)
        cj, ci = jj.mean() + sl[0].start, ii.mean() + sl[1].start
        d = np.hypot((cj - near[0]) * sp[0], (ci - near[1]) * sp[1])
        if d < best_d:
            best, best_d = (float(cj), float(ci), float(r)), d
    return best


def _aorta(g: _Grid, lungs: np.ndarray, airway: np.ndarray, spine: np.ndarray,
           medi: np.ndarray | None, carina_k: int | None, *, contrast: bool = False,
           carina_ji: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """Descending aorta, arch and ascending aorta as traced disks (working grid).

    The trace starts left-anterior of the vertebral body about 30 mm below the carina (or,
    without a spine, 25 mm behind and 20 mm left of the carina), then follows the largest
    inscribed circle of blood-like voxels slice by slice.
    """
    info: dict = {}
    hu = g.hu
    nz = hu.shape[0]
    aorta = np.zeros_like(lungs)
    # Blood is 30-60 HU without contrast (fat -100 and lung excluded), 150-600 HU with it.
    # Low-dose noise is averaged by the 2.5 mm grid.
    lo_hu, hi_hu = (150.0, 1000.0) if contrast else (-30.0, 700.0)
    soft = (hu > lo_hu) & (hu < hi_hu) & ~dilate(lungs | airway, _ball(0, 1, 1)) \
        & ~dilate(spine, _ball(0, 1, 1))
    if medi is None:
        medi = np.ones_like(lungs)
    if not spine.any() and carina_ji is None:
        g.notes.append("aorta not traced: neither spine nor carina to start from")
        return aorta, info
    sp2 = (g.sp[1], g.sp[2])
    rmin, rmax = 7.0, 20.0
    ks_lung = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if ks_lung.size == 0:
        g.notes.append("aorta not traced: no lungs")
        return aorta, info
    k_start = carina_k - g.mm(30.0, 0) if carina_k is not None else int(np.median(ks_lung))
    k_start = int(np.clip(k_start, 0, nz - 1))
    # Starting point: the best circle left-anterior of the vertebral body near k_start.
    best = None
    for k in range(max(0, k_start - g.mm(10.0, 0)), min(nz, k_start + g.mm(10.0, 0) + 1)):
        if spine[k].any():
            sj, si = np.nonzero(spine[k])
            near = (sj.min(), si.mean() + 25.0 / g.sp[2])
        elif carina_ji is not None:
            near = (carina_ji[0] + 25.0 / g.sp[1], carina_ji[1] + 20.0 / g.sp[2])
        else:
            continue
        c = _round_section(soft[k], sp2, near, 30.0, rmin, rmax) if contrast else None
        if c is None:
            c = _inscribed(soft[k], sp2, near, 25.0)
        if c and rmin <= c[2] <= rmax and (best is None or c[2] > best[1][2]):
            best = (k, c)
    if best is None:
        g.notes.append("descending aorta not found next to the spine")
        return aorta, info
    path: dict[int, tuple[float, float, float]] = {best[0]: best[1]}
    # Follow downward (descending aorta) and upward (over the arch).
    for step in (-1, 1):
        prev = best[1]
        k = best[0] + step
        while 0 <= k < nz and lungs[k].any():
            c = _inscribed(soft[k], sp2, prev[:2], 8.0 + 0.5 * g.sp[0])
            if c is None or c[2] < 0.6 * prev[2] or c[2] > min(rmax, 1.5 * prev[2]):
                break
            if (carina_k is None or k < carina_k) and spine[k].any():
                # Below the arch the descending aorta stays left-anterior of the vertebral
                # body; a trace drifting away has slipped into the heart or oesophagus.
                sj, si = np.nonzero(spine[k])
                if not (c[1] >= si.mean() and sj.min() - 35.0 / g.sp[1] <= c[0]
                        <= sj.mean() + 5.0 / g.sp[1]):
                    break
            path[k] = c
            prev = c
            k += step
    ks = sorted(path)
    info["descending_top_k"] = ks[-1]
    # Ascending aorta: below the arch top, a second round section anterior-right of the
    # descending one (mediastinum only); found from the top down.
    asc: dict[int, tuple[float, float, float]] = {}
    top = ks[-1]
    prev_a = None
    for k in range(top, max(-1, top - g.mm(120.0, 0)), -1):
        d = path.get(k)
        if d is None:
            continue
        region = soft[k] & medi[k]
        jj, ii = np.indices(region.shape)
        if prev_a is None:
            far = np.hypot((jj - d[0]) * g.sp[1], (ii - d[1]) * g.sp[2]) >= 35.0
            region &= far & (jj < d[0] - 15.0 / g.sp[1]) & (ii < d[1])
            if not region.any():
                continue
            near = (d[0] - 40.0 / g.sp[1], d[1] - 40.0 / g.sp[2])
            c = _inscribed(region, sp2, near, 30.0)
        else:
            c = _inscribed(region, sp2, prev_a[:2], 8.0 + 0.5 * g.sp[0])
        if c is None or not (rmin <= c[2] <= rmax):
            if prev_a is not None:
                break
            continue
        if prev_a is not None and c[2] > 1.5 * prev_a[2]:
            break  # widening into the heart
        asc[k] = c
        prev_a = c
        if carina_k is not None and k < carina_k - g.mm(60.0, 0):
            break
    if asc:
        info["arch_bottom_k"] = max(asc)
    jj, ii = np.indices(hu.shape[1:])
    for k, (cj, ci, r) in list(path.items()) + list(asc.items()):
        disk = np.hypot((jj - cj) * g.sp[1], (ii - ci) * g.sp[2]) <= r + 1.0
        aorta[k] |= disk & soft[k]
    if not asc:
        g.notes.append("ascending aorta not found; aorta is the descending part only")
    return aorta, info


# ----------------------------------------------------------------------------- oesophagus

def _esophagus(g: _Grid, lungs: np.ndarray, airway: np.ndarray, spine: np.ndarray,
               aorta: np.ndarray, trachea: np.ndarray, carina_k: int | None) -> np.ndarray:
    """Oesophagus as a traced tube of soft tissue (or collapsed air) in front of the spine.

    Expected centre per slice: above the carina midway between the trachea's back wall and the
    vertebral body, below it in front of the vertebral body and right of the descending aorta.
    The largest inscribed circle (radius 3-12 mm) of non-fat, non-bone tissue within 10 mm of
    that point is taken; centres are median-smoothed along z.
    """
    hu = g.hu
    out = np.zeros_like(lungs)
    tissue = ((hu > -60.0) & (hu < 250.0)) | ((hu < -500.0) & ~dilate(
        lungs | airway, _ball(0, 2, 2)))
    tissue &= ~dilate(lungs | airway | spine | aorta, _ball(0, 1, 1))
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
        c = _inscribed(tissue[k], sp2, near, 10.0)
        log.debug("esophagus k=%d near=%s circle=%s", k, near, c)
        if c is not None and 3.0 <= c[2] <= 12.0:
            found[k] = c
    if len(found) < 3:
        return out
    ks = np.array(sorted(found))
    cj = ndi.median_filter(np.array([found[k][0] for k in ks]), size=5, mode="nearest")
    ci = ndi.median_filter(np.array([found[k][1] for k in ks]), size=5, mode="nearest")
    jj, ii = np.indices(hu.shape[1:])
    for k, j0, i0 in zip(ks, cj, ci, strict=True):
        r = min(found[k][2] + 2.0, 10.0)
        out[k] = (np.hypot((jj - j0) * g.sp[1], (ii - i0) * g.sp[2]) <= r) & ~(
            lungs[k] | airway[k] | spine[k] | aorta[k])
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
    g = _Grid(hu=hu, sp=(sp[2], sp[1], sp[0]), image=small)
    g.notes.append("lobes not separated (lung_left/lung_right)")
    body, _ = body_and_outside(hu, g.sp)
    cand = lung_candidates(hu, body, g.sp)

    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    mid_x_vox = 0.5 * (xs[0] + xs[-1]) if xs.size else hu.shape[2] / 2
    # Lung apex from lateral lung (the trachea is central).
    lat = np.abs(np.arange(hu.shape[2]) - mid_x_vox) * g.sp[2] > 25.0
    lat_k = np.nonzero((cand & lat[None, None, :]).sum(axis=(1, 2)) * g.sp[1] * g.sp[2] >= 50)[0]
    apex_k = int(lat_k[-1]) if lat_k.size else None

    aw = _airways(g, body, mid_x_vox * g.sp[2], apex_k)
    airway = aw["airway"]
    carina_kji = aw.get("carina_kji")
    carina_k = int(carina_kji[0]) if carina_kji is not None else None
    if carina_kji is not None:
        mid_x_vox = float(carina_kji[2])
    elif "trachea" in aw and aw["trachea"].any():
        mid_x_vox = float(np.nonzero(aw["trachea"])[2].mean())

    lungs = cand & ~dilate(airway, _ball(0, 1, 1))
    lungs = opening(lungs, _disk(1)[None]) | (lungs & ~body)
    if lungs.sum() * g.vox_ml < 20.0:
        g.notes.append("no lungs found")
        left = right = np.zeros_like(lungs)
    else:
        left, right = _split_lungs(lungs, mid_x_vox, g)
    lungs = left | right

    contrast = _is_contrast(g, lungs)
    if contrast:
        g.notes.append("contrast-enhanced CT: bone taken above "
                       f"{BONE_HU_CONTRAST:.0f} HU (vessels are above {BONE_HU:.0f} HU)")
        bone = (hu > BONE_HU_CONTRAST) & body
    else:
        bone = (hu > BONE_HU) & body
    behind_j = None
    if "trachea" in aw and aw["trachea"].any():
        behind_j = np.nonzero(aw["trachea"])[1].mean() + 12.0 / g.sp[1]
    aorta = ainfo = None
    carina_ji = None if carina_kji is None else (float(carina_kji[1]), float(carina_kji[2]))
    if contrast:
        # Contrast blood is as bright as bone: find the aorta first and keep it out of the spine.
        aorta, ainfo = _aorta(g, lungs, airway, np.zeros_like(lungs), None, carina_k,
                              contrast=True, carina_ji=carina_ji)
        spine_bone = (hu > BONE_HU) & body & ~dilate(aorta, _ball(1, 2, 2))
    else:
        spine_bone = bone
    spine = _spine(g, spine_bone, body, mid_x_vox, behind_j) if body.any() \
        else np.zeros_like(bone)
    if not spine.any():
        g.notes.append("spine not found")
    top_k = hu.shape[0] - 1 if apex_k is None else min(hu.shape[0] - 1, apex_k + g.mm(10.0, 0))
    sternum = _sternum(g, bone & ~spine, body, mid_x_vox, top_k)
    if not sternum.any():
        g.notes.append("sternum not found")
    if carina_kji is not None:
        ant_limit = carina_kji[1] + 10.0 / g.sp[1]
    else:
        sj = np.nonzero(spine.any(axis=(0, 2)))[0]
        ant_limit = sj[0] if sj.size else hu.shape[1] / 2
    if apex_k is not None and apex_k < hu.shape[0] - 1 - g.mm(10.0, 0):
        low_k = max(0, apex_k - g.mm(50.0, 0))
        # Contrast-filled great vessels lie between the lungs; clavicles never do.
        hull = np.zeros_like(cand)
        for k in range(low_k, hu.shape[0]):
            if lungs[k].sum() >= 10:
                hull[k] = fast_hull(lungs[k])
        clav = _clavicles(g, bone & ~hull, spine | sternum, mid_x_vox, ant_limit, low_k)
    else:
        g.notes.append("clavicles not searched: the lung apices are not in view")
        clav = {"left": np.zeros_like(bone), "right": np.zeros_like(bone)}

    block = lungs | airway | spine | sternum | bone
    medi = _mediastinum(g, lungs, body, block, spine)
    heart = _heart(g, medi, spine, carina_k, lungs)
    if aorta is None:
        aorta, ainfo = _aorta(g, lungs, airway, spine, medi, carina_k, carina_ji=carina_ji)

    eso = _esophagus(g, lungs, airway, spine, aorta, aw.get("trachea", np.zeros_like(lungs)),
                     carina_k)
    lab = np.zeros(hu.shape, np.uint8)
    order = [("mediastinum", medi), ("heart", heart), ("esophagus", eso), ("aorta", aorta),
             ("spine", spine),
             ("sternum", sternum), ("clavicula_left", clav["left"]),
             ("clavicula_right", clav["right"]), ("lung_left", left), ("lung_right", right),
             ("airway", aw.get("rest", np.zeros_like(lungs))),
             ("main_bronchus_left", aw.get("main_bronchus_left", np.zeros_like(lungs))),
             ("main_bronchus_right", aw.get("main_bronchus_right", np.zeros_like(lungs))),
             ("trachea", aw.get("trachea", np.zeros_like(lungs)))]
    for name, m in order:
        lab[m] = VALUE[name]
    for name in ("clavicula_left", "clavicula_right", "heart", "aorta", "esophagus"):
        if not (lab == VALUE[name]).any():
            g.notes.append(f"{name} not found")

    # Labels and body travel in one uint8 (body in the top bit): one resampling, not two.
    packed = sitk.GetImageFromArray(lab | (body.astype(np.uint8) << BODY_BIT))
    packed.CopyInformation(small)
    packed = sitk.GetArrayFromImage(resample_to(packed, ct, nearest=True,
                                                pixel_type=sitk.sitkUInt8))
    labels = packed & ((1 << BODY_BIT) - 1)
    body_full = packed >= (1 << BODY_BIT)
    return Anatomy(labels=labels, names=dict(LABELS), reference=ct, backend=BACKEND,
                   extra_masks={"body": body_full}, notes=g.notes)
