"""The embedded lesion backend: SUV thresholds referenced to the patient's own blood pool and liver.

Method (every number from ``resources/thresholds.json``, section ``detection``)
-------------------------------------------------------------------------------
1. Reference regions (PERCIST 1.0, Wahl 2009): blood pool = mean SUV in a 1 cm x 2 cm cylinder
   in the descending thoracic aorta (the most posterior aorta component in mid-thoracic slices);
   without an aorta, the median SUV of central mediastinal soft tissue (0-100 HU between the
   lungs, heart excluded). Liver = mean and SD in a 3 cm sphere in the right lobe (the deepest
   point of the liver's right half).
2. Seed threshold ``T = max(floor, blood_pool_factor x blood pool + blood_pool_sd_factor x SD)``
   (never below the floor, default 2.5); inside liver and spleen the PERCIST liver level
   ``max(T, 1.5 x liver mean + 2 SD)`` applies so their physiological background does not seed.
   Vessel lumens (aorta, pulmonary vessels, caval and brachiocephalic veins, ...) hold the
   blood pool: nothing seeds or grows inside them.
3. Seeds are local maxima of a mildly smoothed SUV (window ~ one PET FWHM) whose raw local
   SUVmax exceeds the threshold and whose smoothed value is at least
   ``seed_smoothed_min_fraction`` of it (isolated noisy voxels do not seed).
   Physiological organs (heart/myocardium, brain, kidneys, bladder, thyroid) cannot seed.
4. Where a supra-threshold region touches such an organ, a watershed on the SUV splits it into
   the organ's basin and each seed's basin: spill-out from a hot myocardium flows downhill
   from the heart and belongs to the organ, while a node next to the heart (station 7/8) has its
   own maximum and basin. A seed within ``spill_margin_mm`` of the organ must also stand out from
   the saddle towards the organ (the highest level at which it is still connected to the organ)
   by ``spill_prominence`` of its SUVmax, else it is a bump on the spill-out slope. Limitation:
   a node closer than about one PET FWHM to a myocardium hotter than itself merges with it at
   PET resolution and is not found.
5. Each seed is grown to the connected region above ``bg + grow_fraction x (SUVmax - bg)``
   inside its own region (SUVmax = hottest voxel within the seed's ball), where ``bg`` is the
   local background: the median SUV 5-12 mm around the lesion's half-maximum core (lung for a
   lung nodule, fat and vessels for a mediastinal node). With background-corrected 41% the
   outline of a blurred sphere of 10-30 mm matches its diameter within about 1-2 mm. With
   ``grow_background_corrected = 0`` the level is the plain ``grow_fraction x SUVmax``.
6. Components whose core (SUV >= 80% of their max) is fat on CT are brown fat and dropped;
   components under ``min_volume_ml`` are dropped as noise; organ-sized components (at least
   ``diffuse_min_volume_ml``) whose SUVmax stays below ``diffuse_max_threshold_ratio`` x the
   seed threshold are diffuse organ uptake (a liver or spleen the anatomy did not label) and
   dropped.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nstage.anatomy.base import Anatomy
from nstage.errors import GeometryError
from nstage.geometry import spacing_zyx, voxel_volume_ml
from nstage.lesions.base import LesionMask
from nstage.morphology import ball, bounding_box, dilate
from nstage.thresholds import resolve

# Organs whose FDG uptake is physiological and never a lesion seed.
PHYSIOLOGICAL = ("heart", "myocardium", "brain", "kidney_left", "kidney_right",
                 "urinary_bladder", "thyroid_gland")
# Organs with a raised (PERCIST liver) threshold instead of suppression: metastases occur there.
HIGH_BACKGROUND = ("liver", "spleen")
# Vessel lumens hold the blood pool: no lesion seeds or grows inside them (noise in the aorta
# would otherwise seed, and weak nodes would leak along the vessel they touch).
BLOOD_POOL = ("aorta", "pulmonary_artery", "pulmonary_vein", "superior_vena_cava",
              "inferior_vena_cava", "brachiocephalic_trunk", "brachiocephalic_vein_left",
              "brachiocephalic_vein_right", "subclavian_artery_left", "subclavian_artery_right",
              "common_carotid_artery_left", "common_carotid_artery_right", "atrial_appendage_left",
              "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
              "iliac_vena_left", "iliac_vena_right")

_FULL = np.ones((3, 3, 3), dtype=bool)


def segment_suv(ct: sitk.Image, pet_suv: sitk.Image, anatomy: Anatomy,
                thresholds: dict | None = None) -> LesionMask:
    """FDG-avid lesion mask from SUV thresholds (backend ``"suv"``).

    Parameters
    ----------
    ct : SimpleITK.Image
        Working (cropped, canonical) CT in HU.
    pet_suv : SimpleITK.Image
        PET in SUVbw (g/ml), already resampled onto ``ct``'s grid.
    anatomy : Anatomy
        Label map on the same grid (TotalSegmentator names).
    thresholds : dict, optional
        ``{section: {key: value}}`` overrides of ``resources/thresholds.json``.

    Returns
    -------
    LesionMask
        ``mask`` in array order ``[z, y, x]`` on the CT grid; ``reference_suv`` holds
        ``blood_pool``, ``blood_pool_sd``, ``liver``, ``liver_sd`` (when found), ``threshold``
        and ``liver_threshold`` (SUVbw).

    Raises
    ------
    GeometryError
        The PET or anatomy is not on the CT grid.
    """
    th = resolve(thresholds)["detection"]
    _check_grid(ct, pet_suv, anatomy)
    suv = sitk.GetArrayFromImage(pet_suv).astype(np.float32, copy=False)
    suv = np.where(np.isfinite(suv), suv, 0.0).astype(np.float32, copy=False)
    hu = sitk.GetArrayFromImage(ct)
    spacing = spacing_zyx(ct)
    notes: list[str] = []

    ref = reference_regions(suv, hu, anatomy, spacing, th, notes)
    bp = ref["blood_pool"]
    threshold = max(float(th["suv_floor"]),
                    th["blood_pool_factor"] * bp + th["blood_pool_sd_factor"] * ref["blood_pool_sd"])
    liver_threshold = threshold
    if "liver" in ref:
        liver_threshold = max(threshold,
                              th["liver_factor"] * ref["liver"] + th["liver_sd_factor"] * ref["liver_sd"])
    ref["threshold"] = float(threshold)
    ref["liver_threshold"] = float(liver_threshold)

    organ = anatomy.mask(*PHYSIOLOGICAL)
    blood = anatomy.mask(*BLOOD_POOL)
    high_bg = anatomy.mask(*HIGH_BACKGROUND)
    lung = anatomy.mask("lung")
    mask = _grow_lesions(suv, spacing, organ, blood, high_bg, threshold, liver_threshold, th)
    mask = _drop_brown_fat_and_specks(mask, suv, hu, lung, spacing, voxel_volume_ml(ct), th, notes,
                                      threshold)
    return LesionMask(mask=mask, backend="suv", reference_suv={k: float(v) for k, v in ref.items()
                                                               if isinstance(v, float | int)},
                      notes=notes)


def _check_grid(ct: sitk.Image, pet: sitk.Image, anatomy: Anatomy) -> None:
    if pet.GetSize() != ct.GetSize() or not np.allclose(pet.GetSpacing(), ct.GetSpacing(), atol=1e-4) \
            or not np.allclose(pet.GetOrigin(), ct.GetOrigin(), atol=1e-3):
        raise GeometryError("PET is not on the working CT grid",
                            hint="resample it first with Study.pet_on(work_ct)")
    if anatomy.labels.shape != tuple(reversed(ct.GetSize())):
        raise GeometryError("anatomy label map is not on the working CT grid",
                            hint="run the anatomy backend on the same working CT")


# --------------------------------------------------------------------------- reference regions

def reference_regions(suv: np.ndarray, hu: np.ndarray, anatomy: Anatomy,
                      spacing: tuple[float, float, float], th: dict,
                      notes: list[str]) -> dict[str, float]:
    """Blood-pool and liver reference SUVs (PERCIST regions), in SUVbw.

    Returns ``blood_pool``, ``blood_pool_sd`` and, when a liver is in view, ``liver`` and
    ``liver_sd``; ``blood_pool_source`` is encoded in ``notes``.
    """
    out: dict[str, float] = {}
    region = None
    if anatomy.has("aorta"):
        region = descending_aorta_cylinder(anatomy.mask("aorta"), spacing,
                                           th["blood_pool_radius_mm"], th["blood_pool_length_mm"])
        if region is not None:
            vals = suv[region]
            out["blood_pool"] = float(vals.mean())
            out["blood_pool_sd"] = float(vals.std())
            notes.append(f"blood pool: 1x2 cm cylinder in the descending aorta ({vals.size} voxels)")
    if "blood_pool" not in out:
        vals = _mediastinal_soft_tissue(suv, hu, anatomy)
        if vals is not None and vals.size >= 50:
            med = float(np.median(vals))
            out["blood_pool"] = med
            out["blood_pool_sd"] = float(1.4826 * np.median(np.abs(vals - med)))
            notes.append("blood pool: median of central mediastinal soft tissue (no aorta found)")
        else:
            out["blood_pool"] = float(th["default_blood_pool"])
            out["blood_pool_sd"] = 0.0
            notes.append(f"blood pool: no reference region found, typical value "
                         f"{th['default_blood_pool']} used")
    if anatomy.has("liver"):
        sphere = right_liver_sphere(anatomy.mask("liver"), spacing, th["liver_radius_mm"])
        if sphere is not None:
            vals = suv[sphere]
            out["liver"] = float(vals.mean())
            out["liver_sd"] = float(vals.std())
        else:
            notes.append("liver: too little liver in view for a reference sphere")
    else:
        notes.append("liver: not in view, no liver reference")
    return out


def descending_aorta_cylinder(aorta: np.ndarray, spacing: tuple[float, float, float],
                              radius_mm: float, length_mm: float) -> np.ndarray | None:
    """PERCIST blood-pool cylinder (array-order mask) in the descending thoracic aorta.

    In each axial slice the most posterior aorta component is the descending aorta (the
    ascending aorta and arch lie anterior). The cylinder is centred on that component's
    centroid, in ``length_mm`` of slices around the median level of the aorta in view, and
    kept inside the aorta.
    """
    ks = np.flatnonzero(aorta.any(axis=(1, 2)))
    if ks.size == 0:
        return None
    sz, sy, sx = spacing
    half = max(1, int(round(length_mm / 2 / sz)))
    mid = int(np.median(ks))
    centres = {}
    for k in range(max(ks[0], mid - half), min(ks[-1], mid + half) + 1):
        lab, n = ndi.label(aorta[k])
        if n == 0:
            continue
        com = ndi.center_of_mass(aorta[k], lab, range(1, n + 1))
        sizes = ndi.sum_labels(aorta[k], lab, range(1, n + 1))
        # Ignore slivers (partial volume at the arch) when picking the posterior component.
        cand = [(c[0], c) for c, s in zip(com, sizes, strict=True) if s * sy * sx >= 20.0]
        if cand:
            centres[k] = max(cand)[1]
    if not centres:
        return None
    out = np.zeros(aorta.shape, dtype=bool)
    jj, ii = np.ogrid[:aorta.shape[1], :aorta.shape[2]]
    for k, (cj, ci) in centres.items():
        disk = ((jj - cj) * sy) ** 2 + ((ii - ci) * sx) ** 2 <= radius_mm ** 2
        out[k] = disk & aorta[k]
    return out if out.sum() >= 5 else None


def right_liver_sphere(liver: np.ndarray, spacing: tuple[float, float, float],
                       radius_mm: float) -> np.ndarray | None:
    """PERCIST liver sphere (array-order mask): at the deepest point of the liver's right half.

    The right lobe is on the patient's right, i.e. the smaller x (array column) half. The
    radius shrinks to the available depth (at least 5 mm) when little liver is in view.
    """
    box = bounding_box(liver)
    sub = liver[box]
    cols = np.flatnonzero(sub.any(axis=(0, 1)))
    right = sub.copy()
    right[:, :, cols[len(cols) // 2] + 1:] = False
    if not right.any():
        right = sub
    depth = ndi.distance_transform_edt(np.pad(sub, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    depth = np.where(right, depth, 0.0)
    best = np.unravel_index(int(np.argmax(depth)), depth.shape)
    r = min(radius_mm, float(depth[best]))
    if r < 5.0:
        return None
    zz, yy, xx = np.ogrid[:sub.shape[0], :sub.shape[1], :sub.shape[2]]
    ball = (((zz - best[0]) * spacing[0]) ** 2 + ((yy - best[1]) * spacing[1]) ** 2
            + ((xx - best[2]) * spacing[2]) ** 2) <= r ** 2
    out = np.zeros(liver.shape, dtype=bool)
    out[box] = ball & sub
    return out


def _mediastinal_soft_tissue(suv: np.ndarray, hu: np.ndarray, anatomy: Anatomy) -> np.ndarray | None:
    """SUVs of soft tissue (0-100 HU) between the two lungs in the middle half of the lungs' levels."""
    if anatomy.has("mediastinum"):
        region = anatomy.mask("mediastinum")
    else:
        left, right = anatomy.mask("lung_left"), anatomy.mask("lung_right")
        if not left.any() or not right.any():
            return None
        nx = left.shape[2]
        idx = np.arange(nx)
        # Per (slice, row): right lung's medial border = its largest column, left lung's = smallest.
        r_med = np.where(right.any(axis=2), np.max(np.where(right, idx, -1), axis=2), -1)
        l_med = np.where(left.any(axis=2), np.min(np.where(left, idx, nx), axis=2), nx)
        both = (r_med >= 0) & (l_med < nx)
        region = (idx > r_med[..., None]) & (idx < l_med[..., None]) & both[..., None]
        ks = np.flatnonzero(region.any(axis=(1, 2)))
        if ks.size == 0:
            return None
        lo, hi = np.percentile(ks, [25, 75]).astype(int)
        region[:lo] = False
        region[hi + 1:] = False
    region = region & (hu >= 0) & (hu <= 100) & ~anatomy.mask(*PHYSIOLOGICAL)
    return suv[region] if region.any() else None


# --------------------------------------------------------------------------- seeds and growing

def _window(spacing: tuple[float, float, float], half_mm: float) -> tuple[int, int, int]:
    return tuple(2 * max(1, int(round(half_mm / s))) + 1 for s in spacing)


def _ball_footprint(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Spherical footprint (array order) of the given radius in mm, at least 3 voxels wide."""
    h = [max(1, int(round(radius_mm / s))) for s in spacing]
    zz, yy, xx = np.ogrid[-h[0]:h[0] + 1, -h[1]:h[1] + 1, -h[2]:h[2] + 1]
    r2 = (zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2
    return r2 <= max(radius_mm, max(spacing)) ** 2


def _grow_lesions(suv: np.ndarray, spacing: tuple[float, float, float], organ: np.ndarray,
                  blood: np.ndarray, high_bg: np.ndarray, threshold: float,
                  liver_threshold: float, th: dict) -> np.ndarray:
    """Union of all accepted seeds' grown outlines (array-order bool mask)."""
    out = np.zeros(suv.shape, dtype=bool)
    hot = suv > threshold
    if not hot.any():
        return out
    # Seeds are searched only in the bounding box of supra-threshold voxels (small in practice).
    win = _window(spacing, th["peak_window_mm"])
    box = _pad(bounding_box(hot), list(win), suv.shape)
    sigma = [th["seed_smoothing_mm"] / s for s in spacing]
    smooth = np.zeros(suv.shape, dtype=np.float32)
    smooth[box] = ndi.gaussian_filter(suv[box], sigma, mode="nearest")
    seed_thr = np.where(high_bg[box], liver_threshold, threshold)
    sb = smooth[box]
    # A seed: a local maximum of the smoothed SUV whose raw local SUVmax exceeds the threshold
    # (the value positivity is judged on) while the smoothed value is not far below it (a
    # single noisy voxel in the blood pool is not a lesion).
    # A ball, not a box: a box's corners reach into the spill-out of a nearby hot organ.
    ball = _ball_footprint(spacing, th["peak_window_mm"])
    candidate = (sb > th["seed_smoothed_min_fraction"] * seed_thr) & ~organ[box] & ~blood[box]
    peaks, raw_max = ball_maxima(sb, suv[box], candidate, ball)
    peaks = peaks[raw_max > seed_thr[tuple(peaks.T)]]
    seeds = peaks + np.array([s.start for s in box])
    order = np.argsort(-smooth[tuple(seeds.T)], kind="stable")
    for seed in seeds[order]:
        p = tuple(int(v) for v in seed)
        if out[p]:
            continue
        region_box = _grow_one(p, suv, smooth, spacing, organ, blood, threshold, th, ball)
        if region_box is not None:
            # Diffuse regions are kept here too: the other seeds of the same organ are then
            # skipped, and the final pass drops the organ as one component.
            region, sl = region_box
            out[sl] |= region
    return out


def ball_maxima(values: np.ndarray, other: np.ndarray, candidate: np.ndarray,
                ball: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Candidate voxels that are the maximum of ``values`` over ``ball``, and the maximum of
    ``other`` over the ball at each of them.

    The same voxels and values as ``values == ndi.maximum_filter(values, footprint=ball)``
    and ``ndi.maximum_filter(other, footprint=ball)`` (mode ``"reflect"``) restricted to
    ``candidate``, without filtering the whole array: a voxel must first be the maximum of
    the ball's 3x3x3 core (necessary, since the centre lies in both), which leaves few
    voxels to test against the whole ball.

    Parameters
    ----------
    values, other : numpy.ndarray
        3D arrays of the same shape (array order).
    candidate : numpy.ndarray of bool
        Voxels to test.
    ball : numpy.ndarray of bool
        Footprint with odd sizes, centred.

    Returns
    -------
    peaks : numpy.ndarray of int, shape (n, 3)
        Indices of the maxima, in C order.
    other_max : numpy.ndarray, shape (n,)
    """
    h = np.array(ball.shape) // 2
    if any(n < 2 * r + 1 for n, r in zip(values.shape, h, strict=True)):
        # Smaller than the ball: scipy's reflection differs from a single mirror; filter.
        is_max = candidate & (values == ndi.maximum_filter(values, footprint=ball))
        peaks = np.argwhere(is_max)
        return peaks, ndi.maximum_filter(other, footprint=ball)[tuple(peaks.T)]
    core = ball[tuple(slice(r - 1, r + 2) for r in h)]
    is_max = candidate & (values == ndi.maximum_filter(values, footprint=core))
    peaks = np.argwhere(is_max)
    if peaks.size == 0:
        return peaks, np.zeros(0, dtype=other.dtype)
    offsets = np.argwhere(ball) - h
    shape = np.array(values.shape)

    def over_ball(arr: np.ndarray, pts: np.ndarray) -> np.ndarray:
        out = np.empty(len(pts), dtype=arr.dtype)
        for c in range(0, len(pts), chunk):
            q = pts[c:c + chunk][:, None, :] + offsets[None]
            # scipy's "reflect" mirrors about the edge (d c b a | a b c d); the ball is
            # narrower than the array, so one mirror is enough.
            q = np.where(q < 0, -q - 1, np.where(q >= shape, 2 * shape - 1 - q, q))
            out[c:c + chunk] = arr[q[..., 0], q[..., 1], q[..., 2]].max(axis=1)
        return out

    peaks = peaks[values[tuple(peaks.T)] >= over_ball(values, peaks)]
    return peaks, over_ball(other, peaks)


def _pad(box: tuple[slice, ...], margin: list[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                 for s, m, n in zip(box, margin, shape, strict=True))


def _grow_one(p: tuple[int, int, int], suv: np.ndarray, smooth: np.ndarray,
              spacing: tuple[float, float, float], organ: np.ndarray, blood: np.ndarray,
              threshold: float, th: dict, ball: np.ndarray):
    """Outline of the lesion around seed ``p``: ``(mask, box)`` or None when rejected.

    Works in a box around the seed that doubles until the outline no longer touches its edge.
    """
    frac = float(th["grow_fraction"])
    corrected = bool(th["grow_background_corrected"])
    half_mm = 30.0
    # Local SUVmax: the hottest raw voxel within the seed's ball (what the outline refers to).
    h = [w // 2 for w in ball.shape]
    lo = [max(0, c - r) for c, r in zip(p, h, strict=True)]
    wsl = tuple(slice(a, c + r + 1) for a, c, r in zip(lo, p, h, strict=True))
    part = suv[wsl]
    fp = ball[tuple(slice(r - (c - a), r - (c - a) + n)
                    for r, c, a, n in zip(h, p, lo, part.shape, strict=True))]
    peak = float(part[fp].max())
    while True:
        half = [max(2, int(np.ceil(half_mm / s))) for s in spacing]
        sl = tuple(slice(max(0, c - h), min(n, c + h + 1))
                   for c, h, n in zip(p, half, suv.shape, strict=True))
        q = tuple(c - s.start for c, s in zip(p, sl, strict=True))
        s_raw, s_sm, org = suv[sl], smooth[sl], organ[sl]
        own = ~org & ~blood[sl]
        if (org & (s_sm > threshold)).any():
            # A hot organ in reach: split by watershed so its spill-out stays its own.
            markers = np.zeros(s_sm.shape, dtype=np.int32)
            markers[org] = 2
            markers[q] = 1
            basins = watershed(-s_sm, markers=markers, mask=s_sm > min(threshold, peak) * 0.5)
            own = (basins == 1) & ~org & ~blood[sl]
            near = _distance_to(org, q, spacing, th["spill_margin_mm"]) <= th["spill_margin_mm"]
            if near and peak - _pass_height(s_raw, org, q, peak) < th["spill_prominence"] * peak:
                return None
        if corrected:
            bg = _local_background(q, s_raw, own, org, peak, spacing, threshold)
            level = bg + frac * (peak - bg)
        else:
            level = frac * peak
        lab, _ = ndi.label(own & (s_raw >= level), structure=_FULL)
        if lab[q] == 0:
            return None
        region = lab == lab[q]
        if _is_diffuse(float(region.sum()) * float(np.prod(spacing)) / 1000.0, peak, threshold,
                       th):
            # Organ-sized and faint: the final pass drops it as diffuse uptake; growing the
            # box further (across a whole unlabelled liver) would change nothing but the time.
            return region, sl
        at_edge = any(
            (region.take(0, axis=a).any() and sl[a].start > 0)
            or (region.take(-1, axis=a).any() and sl[a].stop < suv.shape[a])
            for a in range(3))
        if not at_edge or half_mm >= 160.0:
            return region, sl
        half_mm *= 2


def _pass_height(s_raw: np.ndarray, org: np.ndarray, q: tuple[int, int, int],
                 peak: float, steps: int = 10) -> float:
    """Highest SUV level at which the seed is still connected to the organ (the saddle).

    Bisection on ``{SUV >= level}``: a node next to the heart is separated from it by a
    valley, a bump on the organ's spill-out slope is connected almost up to its own value.
    Judged on the unsmoothed SUV, because smoothing flattens small nodes more than the slope.
    """
    lo, hi = 0.0, float(peak)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lab, _ = ndi.label(s_raw >= mid, structure=_FULL)
        if lab[q] and (lab[org] == lab[q]).any():
            lo = mid
        else:
            hi = mid
    return lo


def _local_background(q: tuple[int, int, int], s_raw: np.ndarray, own: np.ndarray,
                      org: np.ndarray, peak: float, spacing: tuple[float, float, float],
                      threshold: float) -> float:
    """Median SUV in a shell 5-12 mm around the lesion's half-maximum core.

    Local (not blood-pool) background makes the background-corrected 41% outline match the
    true size of spheres of 10-30 mm within about 1-2 mm at clinical PET resolution.
    """
    lab, _ = ndi.label(own & (s_raw >= 0.5 * peak), structure=_FULL)
    core = lab == lab[q] if lab[q] else np.zeros(s_raw.shape, dtype=bool)
    core[q] = True
    # Only the 12 mm neighbourhood of the core matters: work in its bounding box.
    sl = _pad(bounding_box(core),
              [int(np.ceil(12.0 / s)) + 1 for s in spacing], s_raw.shape)
    # Within 12 mm and beyond 5 mm of the core, by dilations (exact, and cheaper than a
    # distance map here).
    near, within = (dilate(core[sl], ball(tuple(spacing), r)) for r in (5.0, 12.0))
    shell = within & ~near & ~org[sl] & (s_raw[sl] < threshold)
    if shell.sum() < 10:
        return 0.0
    return float(np.clip(np.median(s_raw[sl][shell]), 0.0, 0.6 * peak))


def _distance_to(mask: np.ndarray, q: tuple[int, int, int],
                 spacing: tuple[float, float, float], within_mm: float) -> float:
    """Distance in mm from voxel ``q`` to the nearest voxel of ``mask``, or inf when none lies
    within ``within_mm`` (only that neighbourhood is searched)."""
    r = [int(np.ceil(within_mm / s)) for s in spacing]
    sl = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(q, r, strict=True))
    pts = np.argwhere(mask[sl])
    if pts.size == 0:
        return float("inf")
    off = (pts + np.array([s.start for s in sl]) - np.array(q)) * np.array(spacing)
    return float(np.sqrt((off ** 2).sum(axis=1)).min())


def _is_diffuse(volume_ml: float, suv_max: float, threshold: float, th: dict) -> bool:
    """Organ-sized (>= ``diffuse_min_volume_ml``) and faint (SUVmax below
    ``diffuse_max_threshold_ratio`` x the seed threshold): diffuse organ uptake, not a lesion."""
    return (volume_ml >= th["diffuse_min_volume_ml"]
            and suv_max < th["diffuse_max_threshold_ratio"] * threshold)


def _drop_brown_fat_and_specks(mask: np.ndarray, suv: np.ndarray, hu: np.ndarray,
                               lung: np.ndarray, spacing: tuple[float, float, float],
                               voxel_ml: float, th: dict, notes: list[str],
                               threshold: float) -> np.ndarray:
    lab, n = ndi.label(mask, structure=_FULL)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    n_small = n_fat = n_diffuse = 0
    for cid, sl in enumerate(ndi.find_objects(lab), start=1):
        if sizes[cid] * voxel_ml < th["min_volume_ml"]:
            n_small += 1
            continue
        comp = lab[sl] == cid
        s = suv[sl]
        if _is_diffuse(sizes[cid] * voxel_ml, float(s[comp].max()), threshold, th):
            n_diffuse += 1
            continue
        core = comp & (s >= th["brown_fat_core_fraction"] * s[comp].max())
        h = hu[sl][core & ~lung[sl]]
        h = h[h > -500]  # air / lung voxels say nothing about fat vs soft tissue
        if h.size >= 3 and float(np.median(h)) < th["brown_fat_hu_max"]:
            n_fat += 1
            continue
        keep[cid] = True
    if n_small:
        notes.append(f"{n_small} component(s) under {th['min_volume_ml']} ml dropped as noise")
    if n_fat:
        notes.append(f"{n_fat} component(s) with fat-density cores dropped as brown fat")
    if n_diffuse:
        notes.append(f"{n_diffuse} organ-sized component(s) with SUVmax below "
                     f"{th['diffuse_max_threshold_ratio']} x the threshold dropped as diffuse "
                     "organ uptake (liver/spleen)")
    return keep[lab]
