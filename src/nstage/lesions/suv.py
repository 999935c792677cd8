"""The embedded lesion backend: SUV thresholds referenced to the patient's own blood pool and
liver, robust to PET noise, with physiological uptake suppressed and listed.

Method (every number from ``resources/thresholds.json``, section ``detection``)
-------------------------------------------------------------------------------
1. Reference regions (PERCIST 1.0, Wahl 2009): blood pool = mean SUV in a 1 cm x 2 cm cylinder
   in the descending thoracic aorta (the most posterior aorta component in mid-thoracic slices);
   without an aorta, the median SUV of central mediastinal soft tissue (0-100 HU between the
   lungs, heart excluded). Liver = mean and SD in a 3 cm sphere in the right lobe (the deepest
   point of the liver's right half).
2. Noise: the per-voxel SD of the PET at SUV ``s`` is ``sd_ref x sqrt(s / ref)`` (PET noise
   variance grows with the counts), with ``sd_ref`` and ``ref`` the SD and mean of the liver
   sphere (or, without a liver, of the blood-pool region).
3. Seed threshold ``T = max(floor, blood_pool_factor x blood pool + blood_pool_sd_factor x SD)``
   (never below the floor, default 2.5); inside liver and spleen the PERCIST liver level
   ``max(T, 1.5 x liver mean + 2 SD)`` applies so their physiological background does not seed.
   Vessel lumens (aorta, pulmonary vessels, caval and brachiocephalic veins, ...) hold the
   blood pool: nothing seeds or grows inside them where the uptake at the SUVpeak scale is
   below the threshold. Blood at the blood-pool level never reaches it, so uptake that does is
   not blood: a node that a vessel mask grew over (node and blood have the same density on a
   CT without contrast) still seeds and grows.
4. Seeds are local maxima of the SUV smoothed to the scale of a 1 ml sphere (the PERCIST
   SUVpeak volume; a Gaussian of the same second moment) whose raw local SUVmax reaches the
   threshold (``seed_max_fraction`` of it: the PET resampled onto the CT grid loses a little
   of a small node's maximum; given the native PET, its voxels within the 1 ml sphere are
   read too, as the positivity rule reads SUVmax, since a CT grid coarser than the PET loses
   up to about 15%). A seed must stand out from its local background (median SUV 5-12 mm around its
   half-maximum core): SUVpeak (mean of the 1 ml sphere at the seed) - background >=
   ``max(min_contrast_suv, contrast_noise_sd x noise SD at the background)``. A single noisy
   voxel >= 2.5 inside the blood pool or the heart raises the 1 ml mean by a fraction of
   that, and is rejected as noise. A faint seed (SUVpeak below ``diffuse_max_threshold_ratio``
   x the threshold) outside the lung whose half-maximum core is organ-sized
   (``plateau_min_volume_ml``) sits on a plateau (an organ without a mask, the oesophagus):
   unless it stands out from the plateau itself, the plateau is the uptake region (judged as
   a whole: diffuse organ uptake, oesophagus, ...). Physiological organs (heart/myocardium, brain, kidneys,
   bladder, thyroid, bowel) cannot seed; their supra-threshold uptake is listed.
4b. A focus within about one PET FWHM of a hotter lesion's edge is no maximum of its own
   (its uptake rises on into the lesion) but bends the lesion's falling profile into a
   shoulder: a maximum of the curvature (minus the Laplacian) of the SUVpeak-smoothed SUV
   (Lindeberg 1998). After all seeds are grown, such a curvature maximum outside every region
   is a focus when its SUVpeak sphere's SUVmax reaches the threshold, it is connected (at its
   own smoothed level) to a grown lesion more than ``1 / shoulder_max_host_fraction`` times
   hotter (so it lies beyond that lesion's half-maximum edge, where the lesion's own blurred
   profile has no curvature maximum), and its curvature exceeds ``shoulder_noise_sd`` SDs of
   the curvature's noise, measured in the noise reference region like the voxel noise. Its
   region is its curvature blob above half the maximum, one voxel clear of the lesion, so it
   is measured and staged on its own (a hilar node on a central tumour's flank).
5. Where a supra-threshold region touches such an organ, a watershed on the SUV splits it into
   the organ's basin and each seed's basin: spill-out from a hot myocardium flows downhill
   from the heart and belongs to the organ, while a node next to the heart (station 7/8) has its
   own maximum and basin. A seed with organ voxels hotter than itself within ``spill_margin_mm``
   must also stand out from the saddle towards the organ (the highest level at which it is
   still connected to the organ) by ``spill_prominence`` of its SUVmax, else it is a bump on
   the spill-out slope. Limitation:
   a node closer than about one PET FWHM to a myocardium hotter than itself merges with it at
   PET resolution and is not found.
6. Each seed is grown to the connected region above ``bg + grow_fraction x (SUVmax - bg)``
   inside its own region (SUVmax = hottest voxel within the seed's ball), where ``bg`` is the
   local background. The level never falls into the noise of the warmest background next to
   the lesion: it stays ``>= bg_high + grow_noise_sd x noise SD`` (``bg_high`` the
   ``grow_background_high_percentile`` of the background shell), so a lesion against the
   blood pool or an organ cannot leak into it. With background-corrected 41% the outline of a
   blurred sphere of 10-30 mm matches its diameter within about 1-2 mm.
7. Each grown region is judged (:mod:`nstage.lesions.physiology`): under ``min_volume_ml`` it
   is noise; organ-sized and faint it is diffuse organ uptake; myocardium by shape, brown fat
   (fat HU core), oesophagus, thymus, bone marrow and muscle patterns are physiological. A
   focal, node-shaped soft-tissue focus inside brown fat is kept. Everything left out is
   listed in ``LesionMask.suppressed`` with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nstage.anatomy.base import Anatomy
from nstage.errors import GeometryError
from nstage.geometry import index_to_mm, mm_to_index, nearest_index, spacing_zyx
from nstage.lesions import physiology
from nstage.lesions.base import LesionMask, SuppressedUptake
from nstage.morphology import ball, bounding_box, dilate
from nstage.thresholds import resolve

# Organs whose FDG uptake is physiological and never a lesion seed.
PHYSIOLOGICAL = ("heart", "myocardium", "brain", "kidney_left", "kidney_right",
                 "urinary_bladder", "thyroid_gland", "colon", "small_bowel", "duodenum",
                 "stomach")
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


@dataclass(frozen=True)
class NoiseModel:
    """Per-voxel PET noise SD as a function of the SUV (variance proportional to the SUV).

    ``sd(s) = sd_ref x sqrt(s / ref_suv)``; ``source`` says which region it was measured in.
    """

    ref_suv: float
    sd_ref: float
    source: str

    def sd(self, suv: float) -> float:
        return float(self.sd_ref * np.sqrt(max(float(suv), 0.05) / max(self.ref_suv, 0.05)))


@dataclass
class _Candidate:
    """A seed that passed the threshold, and what became of it."""

    kji: tuple[int, int, int]
    suv_max: float
    suv_peak: float
    region_id: int = 0


def segment_suv(ct: sitk.Image, pet_suv: sitk.Image, anatomy: Anatomy,
                thresholds: dict | None = None,
                pet_native: sitk.Image | None = None) -> LesionMask:
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
    pet_native : SimpleITK.Image, optional
        The PET (SUVbw) on its own grid. A seed's SUVmax is then also read from the native
        voxels within its SUVpeak sphere, as the positivity rule reads it: resampling onto a
        CT grid coarser than the PET along an axis (5 mm slices against 4 mm) loses up to
        about 15% of a small node's maximum.

    Returns
    -------
    LesionMask
        ``mask`` in array order ``[z, y, x]`` on the CT grid; ``reference_suv`` holds
        ``blood_pool``, ``blood_pool_sd``, ``liver``, ``liver_sd`` (when found), ``threshold``,
        ``liver_threshold`` (SUVbw) and ``noise_sd_blood_pool`` (the noise model's per-voxel
        SD at the blood-pool level); ``suppressed`` lists the uptake left out, with reasons.

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

    ref_masks: dict[str, np.ndarray] = {}
    ref = reference_regions(suv, hu, anatomy, spacing, th, notes, ref_masks)
    bp = ref["blood_pool"]
    threshold = max(float(th["suv_floor"]),
                    th["blood_pool_factor"] * bp + th["blood_pool_sd_factor"] * ref["blood_pool_sd"])
    liver_threshold = threshold
    if "liver" in ref:
        liver_threshold = max(threshold,
                              th["liver_factor"] * ref["liver"] + th["liver_sd_factor"] * ref["liver_sd"])
    ref["threshold"] = float(threshold)
    ref["liver_threshold"] = float(liver_threshold)
    noise = noise_model(ref, th, notes)
    ref["noise_sd_blood_pool"] = noise.sd(bp)
    region = ref_masks.get({"liver sphere": "liver", "blood-pool region": "blood_pool"}
                           .get(noise.source, ""))
    flank_noise = curvature_noise(suv, region, spacing, th, noise)
    if flank_noise is None:
        notes.append("no PET noise reference region: foci on the flank of a hotter lesion "
                     "(not a maximum of their own) were not searched")

    organ = anatomy.mask(*PHYSIOLOGICAL)
    blood = anatomy.mask(*BLOOD_POOL)
    high_bg = anatomy.mask(*HIGH_BACKGROUND)
    suppressed: list[SuppressedUptake] = []
    grower = _Grower(suv, spacing, organ, blood, threshold, th, noise, ct, suppressed,
                     anatomy.mask("lung"), flank_noise, pet_native)
    regions, cands = grower.grow_all(high_bg, liver_threshold)
    notes.extend(grower.notes)
    ctx = physiology.Context(ct=ct, suv=suv, hu=hu, anatomy=anatomy, spacing=spacing, th=th,
                             threshold=threshold, smooth=grower.smooth, blood_pool=float(bp))
    mask, judged = physiology.judge(regions, cands, ctx, grower.background_ids)
    suppressed.extend(judged)
    suppressed.extend(physiology.organ_uptake(organ, anatomy, PHYSIOLOGICAL, ctx,
                                              grower.organ_seeds))
    _summarise(suppressed, notes)
    return LesionMask(mask=mask, backend="suv",
                      reference_suv={k: float(v) for k, v in ref.items()
                                     if isinstance(v, float | int)},
                      notes=notes, suppressed=suppressed)


def _check_grid(ct: sitk.Image, pet: sitk.Image, anatomy: Anatomy) -> None:
    if pet.GetSize() != ct.GetSize() or not np.allclose(pet.GetSpacing(), ct.GetSpacing(), atol=1e-4) \
            or not np.allclose(pet.GetOrigin(), ct.GetOrigin(), atol=1e-3):
        raise GeometryError("PET is not on the working CT grid",
                            hint="resample it first with Study.pet_on(work_ct)")
    if anatomy.labels.shape != tuple(reversed(ct.GetSize())):
        raise GeometryError("anatomy label map is not on the working CT grid",
                            hint="run the anatomy backend on the same working CT")


def _summarise(suppressed: list[SuppressedUptake], notes: list[str]) -> None:
    """One note per structure: how much uptake was left out and why (details in the list)."""
    counts: dict[str, int] = {}
    for s in suppressed:
        counts[s.structure] = counts.get(s.structure, 0) + 1
    for structure, n in sorted(counts.items()):
        notes.append(f"{n} uptake region(s) left out as {structure} (see suppressed_uptake)")


# --------------------------------------------------------------------------- reference regions

def reference_regions(suv: np.ndarray, hu: np.ndarray, anatomy: Anatomy,
                      spacing: tuple[float, float, float], th: dict,
                      notes: list[str], masks: dict[str, np.ndarray] | None = None
                      ) -> dict[str, float]:
    """Blood-pool and liver reference SUVs (PERCIST regions), in SUVbw.

    Returns ``blood_pool``, ``blood_pool_sd`` and, when a liver is in view, ``liver`` and
    ``liver_sd``; ``blood_pool_source`` is encoded in ``notes``. ``masks``, when given, receives
    the regions measured (``"blood_pool"``: the aorta cylinder, ``"liver"``: the sphere).
    """
    out: dict[str, float] = {}
    masks = {} if masks is None else masks
    region = None
    if anatomy.has("aorta"):
        region = descending_aorta_cylinder(anatomy.mask("aorta"), spacing,
                                           th["blood_pool_radius_mm"], th["blood_pool_length_mm"])
        if region is not None:
            vals = suv[region]
            out["blood_pool"] = float(vals.mean())
            out["blood_pool_sd"] = float(vals.std())
            masks["blood_pool"] = region
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
            masks["liver"] = sphere
        else:
            notes.append("liver: too little liver in view for a reference sphere")
    else:
        notes.append("liver: not in view, no liver reference")
    return out


def noise_model(ref: dict[str, float], th: dict, notes: list[str]) -> NoiseModel:
    """The PET's per-voxel noise, measured in the liver sphere (larger, so steadier) or else
    in the blood-pool region; a typical coefficient of variation when neither has one.

    The measured SD is bounded by ``noise_cov_range`` (as a coefficient of variation at the
    reference level): a region that holds more than noise (partial volume at a vessel wall,
    the mediastinal fallback's mix of tissues) would otherwise inflate it.
    """
    lo, hi = th["noise_cov_range"]
    if ref.get("liver", 0.0) > 0.5 and ref.get("liver_sd", 0.0) > 0.0:
        level, sd, source = ref["liver"], ref["liver_sd"], "liver sphere"
    elif ref.get("blood_pool_sd", 0.0) > 0.0:
        level, sd, source = ref["blood_pool"], ref["blood_pool_sd"], "blood-pool region"
    else:
        level, sd = ref["blood_pool"], ref["blood_pool"] * float(th["noise_cov_default"])
        source = "typical value"
    cov = float(np.clip(sd / max(level, 0.05), lo, hi))
    notes.append(f"PET noise: coefficient of variation {100 * cov:.0f}% at SUV {level:.1f} "
                 f"({source}), variance taken proportional to the SUV")
    return NoiseModel(ref_suv=float(level), sd_ref=cov * float(level), source=source)


def curvature(smooth: np.ndarray, spacing: tuple[float, float, float],
              sigma_mm: float) -> np.ndarray:
    """Scale-normalised curvature ``-sigma^2 x Laplacian`` (SUV) of an SUV image smoothed by a
    Gaussian of ``sigma_mm``: positive on blobs, largest at their centres when ``sigma_mm``
    matches their size (Lindeberg 1998), and negative beyond a lesion's blurred edge.

    Central second differences in mm along each array axis (``spacing`` in array order), edges
    replicated.
    """
    lap = np.zeros(smooth.shape, dtype=np.float32)
    for axis, h in enumerate(spacing):
        lap += ndi.correlate1d(smooth, [1.0, -2.0, 1.0], axis=axis, mode="nearest") / h ** 2
    return (-sigma_mm ** 2) * lap


def curvature_noise(suv: np.ndarray, region: np.ndarray | None,
                    spacing: tuple[float, float, float], th: dict,
                    noise: NoiseModel) -> NoiseModel | None:
    """Noise model of :func:`curvature` at the SUVpeak scale, measured in the PET noise
    reference region (the one :func:`noise_model` used), with the same square-root growth with
    the SUV; None without that region.

    PET noise is correlated over a few voxels, so the curvature's noise cannot be derived from
    the voxel SD: it is measured on the same operator.
    """
    if region is None or region.sum() < 10:
        return None
    sigma_mm = float(th["seed_smoothing_mm"])
    pad = [int(np.ceil(4.0 * sigma_mm / s)) + 1 for s in spacing]
    box = _pad(bounding_box(region), pad, suv.shape)
    sm = ndi.gaussian_filter(suv[box], [sigma_mm / s for s in spacing], mode="nearest")
    values = curvature(sm, spacing, sigma_mm)[region[box]]
    return NoiseModel(ref_suv=noise.ref_suv, sd_ref=float(values.std()),
                      source=noise.source)


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
    sphere = (((zz - best[0]) * spacing[0]) ** 2 + ((yy - best[1]) * spacing[1]) ** 2
              + ((xx - best[2]) * spacing[2]) ** 2) <= r ** 2
    out = np.zeros(liver.shape, dtype=bool)
    out[box] = sphere & sub
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


def ball_stat(values: np.ndarray, points: np.ndarray, spacing: tuple[float, float, float],
              radius_mm: float, stat=np.mean) -> np.ndarray:
    """``stat`` (mean, max, ...) of ``values`` over the sphere of ``radius_mm`` centred on each
    point (array indices, ``(n, 3)``): the mean is the PERCIST SUVpeak when the radius holds
    1 ml (6.2 mm).

    Voxels whose centre lies within the radius count (at least the centre voxel); the sphere
    is clipped at the array border.
    """
    offsets = np.argwhere(ball(tuple(spacing), radius_mm)) - np.array(
        ball(tuple(spacing), radius_mm).shape) // 2
    out = np.empty(len(points), dtype=np.float64)
    shape = np.array(values.shape)
    for n, p in enumerate(np.asarray(points, dtype=int)):
        q = p + offsets
        q = q[np.all((q >= 0) & (q < shape), axis=1)]
        out[n] = float(stat(values[q[:, 0], q[:, 1], q[:, 2]]))
    return out


def native_points_at_least(pet: sitk.Image, ct: sitk.Image, level: float) -> np.ndarray:
    """CT array indices ``(n, 3)`` of the nearest CT voxel to each native PET voxel of at
    least ``level`` whose centre lies on the CT grid."""
    arr = sitk.GetArrayViewFromImage(pet)
    kji = np.argwhere(np.asarray(arr) >= level)
    if kji.size == 0:
        return np.zeros((0, 3), dtype=int)
    idx, inside = nearest_index(ct, index_to_mm(pet, kji))
    return idx[inside]


def native_ball_max(pet: sitk.Image, ct: sitk.Image, points: np.ndarray,
                    radius_mm: float) -> np.ndarray:
    """Highest native PET value whose voxel centre lies within ``radius_mm`` of each point
    (CT array indices, ``(n, 3)``); -inf where none does (outside the PET).

    Any orientation of the two grids (the distance is measured in mm LPS).
    """
    out = np.full(len(points), -np.inf)
    if len(points) == 0:
        return out
    arr = sitk.GetArrayViewFromImage(pet)
    shape = np.array(arr.shape)
    reach = np.ceil(radius_mm / np.array(spacing_zyx(pet))).astype(int)
    centres = index_to_mm(ct, np.asarray(points, dtype=float))
    for n, (xyz, c) in enumerate(zip(centres, mm_to_index(pet, centres), strict=True)):
        lo = np.clip(np.floor(c).astype(int) - reach, 0, shape)
        hi = np.clip(np.ceil(c).astype(int) + reach + 1, 0, shape)
        if np.any(hi <= lo):
            continue
        kji = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                   indexing="ij"), axis=-1).reshape(-1, 3)
        near = np.sum((index_to_mm(pet, kji) - xyz) ** 2, axis=1) <= radius_mm ** 2
        if near.any():
            vals = np.asarray(arr[tuple(kji[near].T)], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                out[n] = float(vals.max())
    return out


def ball_maxima(values: np.ndarray, other: np.ndarray, candidate: np.ndarray,
                ball: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Candidate voxels that are the maximum of ``values`` over ``ball``, and the maximum of
    ``other`` over the ball at each of them.

    The same voxels and values as ``values == ndi.maximum_filter(values, footprint=ball)``
    and ``ndi.maximum_filter(other, footprint=ball)`` (mode ``"reflect"``) restricted to
    ``candidate``, without filtering the whole array: a voxel must first be the maximum of
    the ball's 3x3x3 core (necessary, since the centre lies in both), which leaves few
    voxels to test against the whole ball; when the candidates are that few already, each
    is tested against its ball directly.

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
    if np.count_nonzero(candidate) * np.count_nonzero(ball) < values.size:
        # Few candidates: testing each against its whole ball is cheaper than any filter.
        peaks = np.argwhere(candidate)
    else:
        core = ball[tuple(slice(r - 1, r + 2) for r in h)]
        peaks = np.argwhere(candidate & (values == ndi.maximum_filter(values, footprint=core)))
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


class _Grower:
    """Seeds and their grown regions (steps 4-6 of the module docstring).

    ``grow_all`` returns an int32 map of region ids (each accepted seed's region; 0 none) and
    every candidate seed with the region it ended in; rejected seeds are appended to
    ``suppressed`` with their reason.
    """

    def __init__(self, suv, spacing, organ, blood, threshold, th, noise, ct, suppressed, lung,
                 flank_noise: NoiseModel | None = None, pet_native: sitk.Image | None = None):
        self.suv, self.spacing, self.organ, self.blood = suv, spacing, organ, blood
        self.lung = lung
        self.flank_noise = flank_noise
        self.pet_native = pet_native
        self.notes: list[str] = []
        self.threshold, self.th, self.noise, self.ct = threshold, th, noise, ct
        self.suppressed = suppressed
        self.smooth = np.zeros(suv.shape, dtype=np.float32)
        self.ball = _ball_footprint(spacing, th["peak_window_mm"])
        self.ml = float(np.prod(spacing)) / 1000.0
        # Regions of background uptake (organ-sized and faint, or a plateau a seed did not
        # stand out from): judged on their own, never merged with a lesion they touch (a
        # tumour against the liver dome).
        self.background_ids: set[int] = set()
        self.organ_seeds: list[_Candidate] = []

    def grow_all(self, high_bg: np.ndarray, liver_threshold: float):
        suv, th = self.suv, self.th
        regions = np.zeros(suv.shape, dtype=np.int32)
        hot = suv >= th["seed_max_fraction"] * self.threshold
        if self.pet_native is not None:
            # A node whose maximum only the native PET shows (see below) is searched too.
            hot[tuple(native_points_at_least(self.pet_native, self.ct,
                                             th["seed_max_fraction"] * self.threshold).T)] = True
        if not hot.any():
            return regions, []
        # Seeds are searched only in the bounding box of supra-threshold voxels.
        win = _window(self.spacing, th["peak_radius_mm"])
        box = _pad(bounding_box(hot), list(win), suv.shape)
        # A Gaussian with the second moment of the 1 ml sphere (seed_smoothing_mm = radius /
        # sqrt(5)): the SUVpeak scale, at which a single noisy voxel no longer makes a maximum.
        sigma = [th["seed_smoothing_mm"] / s for s in self.spacing]
        self.smooth[box] = ndi.gaussian_filter(suv[box], sigma, mode="nearest")
        sb = self.smooth[box]
        # Vessel voxels whose SUVpeak-scale uptake reaches the threshold are not blood (only
        # the box can hold any: the smoothed image is zero outside it).
        self.blood = self.blood.copy()
        self.blood[box] &= sb < self.threshold
        # Small nodes lose much of their maximum to the smoothing: the raw SUVmax within the
        # ball decides, the smoothed value only has to be clear of the background.
        candidate = (sb >= th["seed_smoothed_min_fraction"] * self.threshold) \
            & ~self.organ[box] & ~self.blood[box]
        peaks, raw_max = ball_maxima(sb, suv[box], candidate, self.ball)
        seeds = peaks + np.array([s.start for s in box])
        self.organ_seeds = self._organ_seeds(sb, box)
        # The hottest voxel within the SUVpeak sphere decides (noise may put a small node's
        # hottest voxel a few mm from the smoothed maximum). Resampling onto the CT grid
        # lowers it a little while the positivity rule reads SUVmax on the native PET, so
        # seeds start slightly below the threshold.
        wide_max = ball_stat(suv, seeds, self.spacing, th["peak_radius_mm"], np.max)
        seed_thr = np.where(high_bg[tuple(seeds.T)], liver_threshold, self.threshold)
        keep = wide_max >= th["seed_max_fraction"] * seed_thr
        if self.pet_native is not None and not keep.all():
            # On a CT grid coarser than the PET the resampled maximum can fall short: the
            # native voxels within the sphere decide too.
            low = np.flatnonzero(~keep)
            native = native_ball_max(self.pet_native, self.ct, seeds[low], th["peak_radius_mm"])
            keep[low] = native >= th["seed_max_fraction"] * seed_thr[low]
        seeds, raw_max = seeds[keep], raw_max[keep]
        peak_means = ball_stat(suv, seeds, self.spacing, th["peak_radius_mm"], np.mean)
        order = np.argsort(-peak_means, kind="stable")
        cands = []
        next_id = 1
        for n in order:
            cand = _Candidate(tuple(int(v) for v in seeds[n]), float(raw_max[n]),
                              float(peak_means[n]))
            cands.append(cand)
            if regions[cand.kji]:
                cand.region_id = int(regions[cand.kji])
                continue
            grown = self._grow_one(cand)
            if grown is None:
                continue
            region, sl, background = grown
            free = region & (regions[sl] == 0)
            regions[sl][free] = next_id
            cand.region_id = next_id
            if background:
                self.background_ids.add(next_id)
            next_id += 1
        self._flank_foci(regions, cands, next_id, box, high_bg, liver_threshold)
        return regions, cands

    def _flank_foci(self, regions: np.ndarray, cands: list[_Candidate], next_id: int,
                    box: tuple[slice, ...], high_bg: np.ndarray, liver_threshold: float) -> None:
        """Foci hidden on the flank of a hotter lesion (step 4b of the module docstring).

        A node a few mm from a tumour's edge is no maximum of its own at PET resolution: its
        uptake rises on into the tumour. It still bends the tumour's falling profile into a
        shoulder, a maximum of the :func:`curvature` at the SUVpeak scale. Such a maximum is a
        focus when (1) its SUVpeak sphere's SUVmax reaches the seed threshold, (2) at its own
        smoothed level it is connected to a grown lesion (not to background uptake) whose
        SUVmax is more than ``1 / shoulder_max_host_fraction`` times its own, so it lies
        beyond that lesion's edge, and (3) its curvature exceeds ``shoulder_noise_sd`` noise
        SDs. Its region is its curvature blob above half the maximum, kept one voxel clear of
        every other region so that it is measured and staged as a lesion of its own.
        """
        th, suv, spacing = self.th, self.suv, self.spacing
        lesion_ids = {c.region_id for c in cands if c.region_id} - self.background_ids
        if self.flank_noise is None or not lesion_ids:
            return
        sigma_mm = float(th["seed_smoothing_mm"])
        sb = self.smooth[box]
        curv = curvature(sb, spacing, sigma_mm)
        fn = self.flank_noise
        # Above the noise, voxel by voxel (a maximum must be too), before looking for maxima:
        # it leaves a few small spots, so the maxima are searched in their box only.
        sd = fn.sd_ref * np.sqrt(np.maximum(sb, 0.05) / max(fn.ref_suv, 0.05))
        candidate = ((curv >= th["shoulder_noise_sd"] * sd)
                     & (sb >= th["seed_smoothed_min_fraction"] * self.threshold)
                     & (regions[box] == 0) & ~self.organ[box] & ~self.blood[box])
        if not candidate.any():
            return
        sub = _pad(bounding_box(candidate), list(np.array(self.ball.shape) // 2), sb.shape)
        peaks, _ = ball_maxima(curv[sub], sb[sub], candidate[sub], self.ball)
        if len(peaks) == 0:
            return
        peaks = peaks + np.array([s.start for s in sub])
        start = np.array([s.start for s in box])
        level = sb[tuple(peaks.T)]
        z = curv[tuple(peaks.T)] / sd[tuple(peaks.T)]
        pts = peaks + start
        wide = ball_stat(suv, pts, spacing, th["peak_radius_mm"], np.max)
        seed_thr = np.where(high_bg[tuple(pts.T)], liver_threshold, self.threshold)
        keep = wide >= th["seed_max_fraction"] * seed_thr
        if not keep.any():
            return
        objects = ndi.find_objects(regions)
        host_max: dict[int, float] = {}

        def lesion_max(rid: int) -> float:
            if rid not in host_max:
                sl = objects[rid - 1]
                host_max[rid] = float(suv[sl][regions[sl] == rid].max())
            return host_max[rid]

        # Search boxes only: a shoulder lies within about one PET FWHM of its lesion's edge
        # (40 mm reaches it), and a node's curvature blob is smaller than 30 mm.
        reach = [int(np.ceil(40.0 / s)) for s in spacing]
        half = [int(np.ceil(15.0 / s)) for s in spacing]
        frac = float(th["shoulder_max_host_fraction"])
        for n in np.flatnonzero(keep)[np.argsort(-z[keep], kind="stable")]:
            p, q = tuple(int(v) for v in pts[n]), tuple(int(v) for v in peaks[n])
            if regions[p]:
                continue
            # The lesion whose flank this is: reached without going below the focus' level.
            sl = tuple(slice(max(0, c - r), min(m, c + r + 1))
                       for c, r, m in zip(q, reach, sb.shape, strict=True))
            loc = tuple(c - s.start for c, s in zip(q, sl, strict=True))
            lab, _ = ndi.label(sb[sl] >= level[n], structure=_FULL)
            reached = np.unique(regions[box][sl][lab == lab[loc]])
            hosts = [lesion_max(int(r)) for r in reached if int(r) in lesion_ids]
            if not hosts or wide[n] >= frac * max(hosts):
                continue
            # Its own blob, one voxel clear of every region (else it would merge back).
            sl = tuple(slice(max(0, c - r), min(m, c + r + 1))
                       for c, r, m in zip(p, half, suv.shape, strict=True))
            loc = tuple(c - s.start for c, s in zip(p, sl, strict=True))
            bsl = tuple(slice(s.start - b.start, s.stop - b.start)
                        for s, b in zip(sl, box, strict=True))
            clear = ~ndi.binary_dilation(regions[sl] > 0, structure=_FULL)
            blob = ((curv[bsl] >= 0.5 * curv[q]) & clear & ~self.organ[sl] & ~self.blood[sl])
            lab, _ = ndi.label(blob, structure=_FULL)
            if not lab[loc]:
                continue
            regions[sl][lab == lab[loc]] = next_id
            peak = float(ball_stat(suv, np.array([p]), spacing, th["peak_radius_mm"], np.mean)[0])
            cands.append(_Candidate(p, float(wide[n]), peak, region_id=next_id))
            next_id += 1
            centre = index_to_mm(self.ct, np.asarray(p, dtype=float))
            self.notes.append(
                f"focus at ({centre[0]:.0f}, {centre[1]:.0f}, {centre[2]:.0f}) mm found on the "
                f"flank of a hotter lesion (SUVmax {wide[n]:.1f} against {max(hosts):.1f}; "
                f"curvature {z[n]:.1f} noise SD): not a maximum of its own at PET resolution")

    def _organ_seeds(self, sb: np.ndarray, box: tuple[slice, ...]) -> list[_Candidate]:
        """Maxima inside physiological organs whose SUVpeak-sphere SUVmax reaches the
        threshold: they seed nothing, but a focal one is listed (a node inside an oversized
        heart mask must not vanish silently)."""
        th = self.th
        inside = (sb >= th["seed_smoothed_min_fraction"] * self.threshold) & self.organ[box]
        if not inside.any():
            return []
        peaks, raw_max = ball_maxima(sb, self.suv[box], inside, self.ball)
        pts = peaks + np.array([s.start for s in box])
        wide = ball_stat(self.suv, pts, self.spacing, th["peak_radius_mm"], np.max)
        keep = wide >= self.threshold
        means = ball_stat(self.suv, pts[keep], self.spacing, th["peak_radius_mm"], np.mean)
        return [_Candidate(tuple(int(v) for v in p), float(m), float(pk))
                for p, m, pk in zip(pts[keep], wide[keep], means, strict=True)]

    def _reject(self, cand: _Candidate, structure: str, reason: str, volume_ml: float = 0.0):
        centre = index_to_mm(self.ct, np.asarray(cand.kji, dtype=float))
        self.suppressed.append(SuppressedUptake(
            centroid_mm=tuple(float(v) for v in centre), suv_max=cand.suv_max,
            volume_ml=volume_ml, structure=structure, reason=reason, kind="rejected"))

    def _grow_one(self, cand: _Candidate):
        """Outline of the lesion around a seed: ``(mask, box, background)``, or None when
        rejected; ``background`` marks organ-sized faint uptake and plateaus.

        Works in a box around the seed that doubles until the outline no longer touches its
        edge.
        """
        th, suv, spacing = self.th, self.suv, self.spacing
        p = cand.kji
        frac = float(th["grow_fraction"])
        corrected = bool(th["grow_background_corrected"])
        half_mm = 30.0
        peak = cand.suv_max
        while True:
            half = [max(2, int(np.ceil(half_mm / s))) for s in spacing]
            sl = tuple(slice(max(0, c - h), min(n, c + h + 1))
                       for c, h, n in zip(p, half, suv.shape, strict=True))
            q = tuple(c - s.start for c, s in zip(p, sl, strict=True))
            s_raw, s_sm, org = suv[sl], self.smooth[sl], self.organ[sl]
            own = ~org & ~self.blood[sl]
            near = False
            if (org & (s_sm > self.threshold)).any():
                # A hot organ in reach: split by watershed so its spill-out stays its own.
                markers = np.zeros(s_sm.shape, dtype=np.int32)
                markers[org] = 2
                markers[q] = 1
                basins = watershed(-s_sm, markers=markers,
                                   mask=s_sm > min(self.threshold, peak) * 0.5)
                own = (basins == 1) & ~org & ~self.blood[sl]
                # Spill-out comes from an organ hotter than the bump on its slope: uptake that
                # is hotter than the organ beside it (the oesophagus against the left atrium)
                # is not the organ's spill-out.
                near = _organ_max_near(s_raw, org, q, spacing, th["spill_margin_mm"]) > peak
                saddle = _pass_height(s_raw, org, q, peak) if near else 0.0
                if near and peak - saddle < th["spill_prominence"] * peak:
                    self._reject(cand, "spill-out of a physiological organ",
                                 f"SUVmax {peak:.1f} within {th['spill_margin_mm']:.0f} mm of "
                                 f"a hot organ and connected to it up to SUV {saddle:.1f} "
                                 f"(prominence < {th['spill_prominence']:.0%}): organ spill-out")
                    return None
            faint = cand.suv_peak < th["diffuse_max_threshold_ratio"] * self.threshold
            bg, bg_high, plateau = _local_background(
                q, s_raw, own, org, peak, spacing, self.threshold,
                th["grow_background_high_percentile"],
                th["plateau_min_volume_ml"] if faint and not self.lung[p] else np.inf,
                split=near)
            # On a faint organ-sized plateau (a liver or spleen without a mask) a seed must
            # stand out from the plateau itself, not from what lies beyond the organ.
            ref = bg if plateau is None else plateau[0]
            need = max(float(th["min_contrast_suv"]),
                       float(th["contrast_noise_sd"]) * self.noise.sd(ref))
            if plateau is not None and cand.suv_peak - ref < need:
                # A bump on the plateau: the plateau itself is the uptake (an organ, the
                # oesophagus), grown down to the lower edge of its noise band and judged as a
                # whole later.
                lab, _ = ndi.label(plateau[1] & (s_raw >= ref - need), structure=_FULL)
                flat = lab == lab[q] if lab[q] else plateau[1]
                return flat, sl, True
            if cand.suv_peak - ref < need:
                self._reject(cand, "noise",
                             f"SUVmax {peak:.1f} but SUVpeak {cand.suv_peak:.2f} only "
                             f"{cand.suv_peak - ref:.2f} above the local background "
                             f"({ref:.2f}; needs {need:.2f}): noise, not a focal lesion")
                return None
            if corrected:
                level = bg + frac * (peak - bg)
            else:
                level = frac * peak
            # Never into the noise of the warmest background beside the lesion (leaks).
            level = max(level, bg_high + float(th["grow_noise_sd"]) * self.noise.sd(bg_high))
            lab, _ = ndi.label(own & (s_raw >= level), structure=_FULL)
            if lab[q] == 0:
                self._reject(cand, "noise",
                             f"SUVmax {peak:.1f} does not reach the growth level {level:.2f} "
                             "around its seed: noise")
                return None
            region = lab == lab[q]
            volume = float(region.sum()) * self.ml
            if physiology.is_diffuse(volume, peak, self.threshold, th):
                # Organ-sized and faint: judged (and dropped) as diffuse uptake later; growing
                # the box further (across a whole unlabelled liver) would change nothing.
                return region, sl, True
            at_edge = any(
                (region.take(0, axis=a).any() and sl[a].start > 0)
                or (region.take(-1, axis=a).any() and sl[a].stop < suv.shape[a])
                for a in range(3))
            if not at_edge or half_mm >= 160.0:
                return region, sl, False
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
                      threshold: float, high_percentile: float,
                      plateau_ml: float = np.inf,
                      split: bool = False
                      ) -> tuple[float, float, tuple[float, np.ndarray] | None]:
    """Median and a high percentile of the SUV in a shell 5-12 mm around the lesion's
    half-maximum core, and the plateau level when that core is organ-sized.

    Local (not blood-pool) background makes the background-corrected 41% outline match the
    true size of spheres of 10-30 mm within about 1-2 mm at clinical PET resolution; the high
    percentile is the warmest tissue beside the lesion (blood pool, an organ) that the
    outline must not leak into. When the half-maximum core holds ``plateau_ml`` or more, the
    seed sits on a plateau (an organ without a mask, or a large lesion): the third value is
    ``(level, core)``, the upper quartile of that core 8-15 mm from the seed (the plateau
    level, little lowered by its edges) and the core itself, else None. The seed must lie on
    the plateau, not beside it: at least half of the 8-15 mm ring round it is at least half as
    warm as the seed. ``split``: the seed lies on the slope of a hotter organ, whose
    spill-out (outside the organ mask) is the organ's, not a plateau: the core is then taken
    within the seed's own watershed basin (``own``).
    """
    lab, _ = ndi.label(own & (s_raw >= 0.5 * peak), structure=_FULL)
    core = lab == lab[q] if lab[q] else np.zeros(s_raw.shape, dtype=bool)
    core[q] = True
    plateau = None
    if np.isfinite(plateau_ml):
        # The plateau is judged without the watershed split towards a physiological organ
        # (an unlabelled liver beside the stomach is one plateau).
        region = own if split else ~org
        lab, _ = ndi.label(region & (s_raw >= 0.5 * peak), structure=_FULL)
        flat = lab == lab[q] if lab[q] else core
        if flat.sum() * float(np.prod(spacing)) / 1000.0 >= plateau_ml:
            around = _ring(q, flat.shape, spacing, 8.0, 15.0)
            ring = around & flat
            # On the plateau, not beside it: most of the ring round the seed is at least half
            # as warm as the seed (inside an organ, whatever masks cut it), while a node
            # against the blood pool has it on one side only (A0001 hilar node: 18%).
            warm = around & (s_raw >= 0.5 * peak)
            if ring.sum() >= 10 and warm.sum() >= 0.5 * around.sum():
                level = float(np.percentile(s_raw[ring], 75))
                plateau = (level, flat)
    # Only the 12 mm neighbourhood of the core matters: work in its bounding box.
    sl = _pad(bounding_box(core),
              [int(np.ceil(12.0 / s)) + 1 for s in spacing], s_raw.shape)
    # Within 12 mm and beyond 5 mm of the core, by dilations (exact, and cheaper than a
    # distance map here).
    near, within = (dilate(core[sl], ball(tuple(spacing), r)) for r in (5.0, 12.0))
    shell = within & ~near & ~org[sl] & (s_raw[sl] < threshold)
    if shell.sum() < 10:
        return 0.0, 0.0, plateau
    vals = s_raw[sl][shell]
    bg = float(np.clip(np.median(vals), 0.0, 0.6 * peak))
    return bg, float(np.clip(np.percentile(vals, high_percentile), bg, 0.9 * peak)), plateau


def _ring(q: tuple[int, int, int], shape: tuple[int, ...], spacing: tuple[float, float, float],
          inner_mm: float, outer_mm: float) -> np.ndarray:
    """Voxels (of an array of ``shape``) between ``inner_mm`` and ``outer_mm`` from ``q``."""
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    d2 = (((zz - q[0]) * spacing[0]) ** 2 + ((yy - q[1]) * spacing[1]) ** 2
          + ((xx - q[2]) * spacing[2]) ** 2)
    return (d2 >= inner_mm ** 2) & (d2 <= outer_mm ** 2)


def _organ_max_near(values: np.ndarray, organ: np.ndarray, q: tuple[int, int, int],
                    spacing: tuple[float, float, float], within_mm: float) -> float:
    """Highest value of ``values`` over the organ voxels within ``within_mm`` of voxel ``q``
    (0 when none)."""
    r = [int(np.ceil(within_mm / s)) for s in spacing]
    sl = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(q, r, strict=True))
    pts = np.argwhere(organ[sl])
    if pts.size == 0:
        return 0.0
    off = pts + np.array([s.start for s in sl])
    d = np.sqrt((((off - np.array(q)) * np.array(spacing)) ** 2).sum(axis=1))
    pts = off[d <= within_mm]
    return float(values[tuple(pts.T)].max()) if len(pts) else 0.0
