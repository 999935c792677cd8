"""Connected FDG-avid lesions, their measurements, and what they are.

Positions are mm LPS; SUV values are SUVbw (g/ml); volumes in ml.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import watershed

from nstage.anatomy.base import GROUPS, Anatomy
from nstage.geometry import Point, index_to_mm, mm_to_index, spacing_zyx, voxel_volume_ml
from nstage.morphology import bounding_box, dilate, fill_holes_axial
from nstage.thresholds import resolve

if TYPE_CHECKING:
    from nstage.landmarks import Landmarks
    from nstage.lesions.base import LesionMask

Kind = Literal["primary", "node", "other"]


@dataclass
class Lesion:
    """One connected lesion with its measurements.

    Attributes
    ----------
    id : int
        Component number in the lesion label map (1-based).
    suv_max, suv_peak, suv_mean : float
        SUVbw; peak = mean in the hottest 1 cm^3 sphere.
    volume_ml : float
        Metabolic tumour volume (ml).
    tlg : float
        Total lesion glycolysis = SUVmean x MTV (g).
    short_axis_mm, long_axis_mm : float
        Largest-slice axial short / long axis diameters (mm).
    centroid_mm, max_point_mm : (x, y, z)
        Centroid and position of SUVmax, mm LPS.
    inside : dict of str to float
        Structure name -> fraction of lesion voxels inside it (only non-zero).
    distance_mm : dict of str to float
        Structure name -> smallest distance from the lesion to the structure (0 when
        touching/inside); only structures within the search radius are listed.
    kind : {"primary", "node", "other"} or None
    kind_reason : str
        Why it was classified so.
    side : {"left", "right", "midline"} or None
    direct_extension : bool
        Node candidate contiguous with the primary (direct extension of the tumour).
    second_primary : bool
        A separate tumour in the other lung.
    positive : bool
        Meets the node positivity criteria.
    probability : float
        Probability of nodal involvement (0-1).
    positivity_reason : str
    surround : dict of str to float
        Structure name -> fraction of a thin shell (``measurement.shell_mm``) around the lesion
        that lies in it (what the lesion is embedded in); same names as ``inside``.
    zones : dict of str to float
        Fraction of the lesion in derived zones: ``"mediastinal"`` (between the two lungs in
        its axial row, outside lung), ``"hilar"`` (within ``classification.hilar_zone_mm`` of
        the main bronchi / airway beyond the trachea / pulmonary vessels, outside lung),
        ``"nodal"`` (either), ``"lung_filled"`` (the lung masks with holes filled per axial
        slice: a nodule surrounded by parenchyma is in the lung).
    core_hu : float
        Median CT density (HU) of the lesion's core (SUV >= 80% of SUVmax, air/lung excluded);
        NaN when the core is all air/lung. High values mean calcified / dense.
    zone : str or None
        Where :func:`classify` placed it: ``"lung"``, ``"central"`` (a primary against the
        mediastinum), ``"intrapulmonary"``, ``"hilar"``, ``"mediastinal"``,
        ``"supraclavicular"`` or ``"outside"``.
    extension_ml, extension_centroid_mm, extension_zone
        Part of the lesion outside lung parenchyma inside a nodal zone (ml, its centroid mm LPS,
        ``"hilar"``/``"mediastinal"``): for the primary, its direct extension into nodes.
    symmetric_hilar : bool
        One of a bilateral, similar, mildly avid hilar pair (likely reactive).
    contiguous_with : tuple of int
        Ids of lesions touching this one (pieces of one FDG-avid region split at an SUV saddle).
    """

    id: int
    suv_max: float
    suv_peak: float
    suv_mean: float
    volume_ml: float
    tlg: float
    short_axis_mm: float
    long_axis_mm: float
    centroid_mm: Point
    max_point_mm: Point
    inside: dict[str, float] = field(default_factory=dict)
    distance_mm: dict[str, float] = field(default_factory=dict)
    kind: Kind | None = None
    kind_reason: str = ""
    side: Literal["left", "right", "midline"] | None = None
    direct_extension: bool = False
    second_primary: bool = False
    positive: bool = False
    probability: float = 0.0
    positivity_reason: str = ""
    surround: dict[str, float] = field(default_factory=dict)
    zones: dict[str, float] = field(default_factory=dict)
    core_hu: float = float("nan")
    zone: str | None = None
    extension_ml: float = 0.0
    extension_centroid_mm: Point | None = None
    extension_zone: str | None = None
    symmetric_hilar: bool = False
    contiguous_with: tuple[int, ...] = ()


@dataclass
class Findings:
    """Lesions sorted into primary tumour(s), regional node candidates and others."""

    primary: Lesion | None
    second_primary: Lesion | None
    nodes: list[Lesion]
    others: list[Lesion]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- measurement

_FULL = np.ones((3, 3, 3), dtype=bool)
LUNG_GROUPS = ("lung_left", "lung_right", "lung")
# Structures that mark the hilum: airway beyond the trachea and the pulmonary vessels.
HILAR_STRUCTURES = ("main_bronchus_left", "main_bronchus_right", "airway", "lung_airways",
                    "pulmonary_artery", "pulmonary_vein")
# "spine": the classical backend labels the whole vertebral column with that one name.
BONE_PREFIXES = ("vertebrae_", "spine", "rib_", "sternum", "clavicula", "scapula", "humerus",
                 "hip_", "sacrum", "femur", "skull", "costal_cartilages")
ORGANS_NOT_NODES = ("liver", "spleen", "kidney_left", "kidney_right", "adrenal_gland_left",
                    "adrenal_gland_right", "stomach", "pancreas", "gallbladder", "small_bowel",
                    "duodenum", "colon", "urinary_bladder", "brain", "thyroid_gland", "heart",
                    "myocardium", "spinal_cord")


def label_lesions(mask: np.ndarray, suv: np.ndarray | None = None,
                  spacing: tuple[float, float, float] | None = None,
                  split_saddle_fraction: float | None = None,
                  min_piece_ml: float = 0.0) -> tuple[np.ndarray, int]:
    """Lesion label map (int32, array order) and count; values are :attr:`Lesion.id`.

    Connected components (26-connectivity). With ``suv`` (same grid) and ``spacing`` (mm, array
    order), a component holding several SUV maxima is split along the watershed of the
    (1 mm-smoothed) SUV where the saddle between two maxima is below ``split_saddle_fraction``
    of the lower maximum: a node touching the primary at PET resolution becomes its own lesion,
    while noise maxima inside one heterogeneous tumour (saddles close to the peaks) merge back.
    Pieces under ``min_piece_ml`` join their neighbour.
    """
    labels, n = ndi.label(np.asarray(mask, dtype=bool), structure=_FULL)
    labels = labels.astype(np.int32, copy=False)
    if suv is None or spacing is None or split_saddle_fraction is None or n == 0:
        return labels, int(n)
    out = np.zeros_like(labels)
    count = 0
    vox_ml = float(np.prod(spacing)) / 1000.0
    footprint = _ball(4.0, spacing) > 0
    for cid, sl in enumerate(ndi.find_objects(labels), start=1):
        comp = labels[sl] == cid
        pieces = _split_component(comp, suv[sl], spacing, footprint, split_saddle_fraction,
                                  int(np.ceil(min_piece_ml / vox_ml)))
        k = int(pieces.max())
        out[sl][comp] = pieces[comp] + count
        count += k
    return out, count


def _split_component(comp: np.ndarray, s: np.ndarray, spacing, footprint: np.ndarray,
                     frac: float, min_vox: int) -> np.ndarray:
    """Pieces 1..k of one component (see :func:`label_lesions`)."""
    one = comp.astype(np.int32)
    if comp.sum() < 2 * max(min_vox, 1):
        return one
    sm = ndi.gaussian_filter(s.astype(np.float32), [1.0 / v for v in spacing], mode="nearest")
    sm_in = np.where(comp, sm, -np.inf)
    peaks = np.argwhere((sm_in == ndi.maximum_filter(sm_in, footprint=footprint)) & comp)
    if len(peaks) < 2:
        return one
    markers = np.zeros(comp.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    basins = watershed(-sm, markers=markers, mask=comp)
    height = {i + 1: float(sm[tuple(p)]) for i, p in enumerate(peaks)}
    size = np.bincount(basins.ravel(), minlength=len(peaks) + 1)
    saddles: dict[tuple[int, int], float] = {}
    for ax in range(3):
        a, b = np.moveaxis(basins, ax, 0), np.moveaxis(sm, ax, 0)
        l1, l2 = a[:-1], a[1:]
        m = (l1 != l2) & (l1 > 0) & (l2 > 0)
        if not m.any():
            continue
        v = np.minimum(b[:-1], b[1:])[m]
        for x, y, z in zip(l1[m].tolist(), l2[m].tolist(), v.tolist(), strict=True):
            key = (x, y) if x < y else (y, x)
            if z > saddles.get(key, -np.inf):
                saddles[key] = z
    parent = list(range(len(peaks) + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    top = dict(height)
    vol = {i: int(size[i]) for i in height}
    # Highest saddles first: the classic prominence merge.
    for (x, y), z in sorted(saddles.items(), key=lambda t: -t[1]):
        rx, ry = root(x), root(y)
        if rx == ry:
            continue
        lower = min(top[rx], top[ry])
        if z >= frac * lower or min(vol[rx], vol[ry]) < min_vox:
            parent[ry] = rx
            top[rx] = max(top[rx], top[ry])
            vol[rx] += vol[ry]
    roots = sorted({root(i) for i in height})
    remap = np.zeros(len(peaks) + 1, dtype=np.int32)
    for i in height:
        remap[i] = roots.index(root(i)) + 1
    return remap[basins]


class _Context:
    """Anatomy-derived masks computed once for all lesions (full grid, array order)."""

    def __init__(self, anatomy: Anatomy, spacing: tuple[float, float, float],
                 hilar_zone_mm: float, zslab: slice):
        self.anatomy = anatomy
        self.labels = anatomy.labels
        self.names = anatomy.names
        shape = anatomy.labels.shape
        self.groups: dict[str, np.ndarray] = {}
        for side in ("lung_left", "lung_right"):
            self.groups[side] = anatomy.mask(side)
        self.groups["lung"] = self.groups["lung_left"] | self.groups["lung_right"]
        # Lungs hole-filled per axial slice: a soft-tissue nodule inside the parenchyma lies
        # in the lung whichever backend (lobes with or without tumours) made the mask.
        self.lung_filled = np.zeros(shape, dtype=bool)
        for side in ("lung_left", "lung_right"):
            self.lung_filled[zslab] |= fill_holes_axial(self.groups[side][zslab])
        for name in GROUPS:
            if name not in self.groups:
                m = anatomy.mask(name)
                if m.any():
                    self.groups[name] = m
        for name, m in anatomy.extra_masks.items():
            if name not in self.groups and m.any():
                self.groups[name] = m.astype(bool, copy=False)
        lung = self.lung_filled
        self.mediastinal = _between_lungs(self.groups["lung_right"], self.groups["lung_left"]) & ~lung
        # Exact class names (not the "airway" group, which includes the trachea).
        hilar_values = [v for v, nm in anatomy.names.items() if nm in HILAR_STRUCTURES]
        hilar_src = np.isin(anatomy.labels, hilar_values) if hilar_values else \
            np.zeros(shape, dtype=bool)
        self.hilar = np.zeros(shape, dtype=bool)
        if hilar_src.any():
            box = bounding_box(hilar_src)
            pad = [int(math.ceil(hilar_zone_mm / s)) + 1 for s in spacing]
            box = tuple(slice(max(0, b.start - p), min(n, b.stop + p))
                        for b, p, n in zip(box, pad, shape, strict=True))
            d = ndi.distance_transform_edt(~hilar_src[box], sampling=spacing)
            self.hilar[box] = (d <= hilar_zone_mm) & ~lung[box] & ~anatomy.mask("trachea")[box]


def _between_lungs(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Voxels between the right lung's and the left lung's medial borders in their axial row.

    Array column ``i`` grows to the patient's left, so the right lung's medial border is its
    largest column and the left lung's its smallest. Rows without both lungs are excluded.
    """
    nx = right.shape[2]
    idx = np.arange(nx)
    r_any, l_any = right.any(axis=2), left.any(axis=2)
    r_med = np.where(r_any, nx - 1 - np.argmax(right[..., ::-1], axis=2), -1)
    l_med = np.where(l_any, np.argmax(left, axis=2), nx)
    return (idx > r_med[..., None]) & (idx < l_med[..., None]) & (r_any & l_any)[..., None]


def measurement_context(anatomy: Anatomy, ct: sitk.Image,
                        thresholds: dict | None = None) -> _Context:
    """The anatomy-derived masks :func:`measure` needs (hole-filled lungs, mediastinal and
    hilar zones), over the whole work grid.

    They depend on the anatomy only, so the pipeline computes them while the lesions are
    segmented and passes them to :func:`measure` as ``context``.
    """
    th = resolve(thresholds)
    return _Context(anatomy, spacing_zyx(ct), float(th["classification"]["hilar_zone_mm"]),
                    slice(0, anatomy.labels.shape[0]))


def measure(lesion_mask: LesionMask, ct: sitk.Image, pet_suv: sitk.Image, anatomy: Anatomy,
            thresholds: dict | None = None, *, return_labels: bool = False,
            pet_native: sitk.Image | None = None, context: _Context | None = None):
    """Measure every connected lesion.

    Parameters
    ----------
    lesion_mask : LesionMask
        Lesion voxels on the working CT grid.
    ct : SimpleITK.Image
        Working CT (HU), canonical.
    pet_suv : SimpleITK.Image
        PET in SUVbw on the CT grid.
    anatomy : Anatomy
        Label map on the same grid.
    thresholds : dict, optional
        Overrides of ``resources/thresholds.json`` (sections ``measurement``,
        ``classification``).
    return_labels : bool
        Also return the component label map (int32, array order) whose values are the ids.
    pet_native : SimpleITK.Image, optional
        The PET (SUVbw) on its own reconstruction grid. When given, SUVmax and its point are
        read from the PET voxels whose centres lie in the lesion (and the CT-grid maximum, if
        higher): linear resampling onto a finer CT grid lowers the maximum of a small node by
        up to ~10% (the peak falls between CT sample points).
    context : optional
        :func:`measurement_context` of the same anatomy, computed beforehand; by default
        it is computed here (over the lesions' slices only).

    Returns
    -------
    list of Lesion, or (labels, list of Lesion) with ``return_labels``
        Sorted by id. Measurements:

        - SUVmax / SUVmean (SUVbw) over the component; SUVpeak = highest mean SUV in a 1 ml
          sphere (voxel centres within 6.2 mm, spacing-aware) centred on a lesion voxel.
        - volume (MTV, ml) = voxel count x voxel volume; TLG = SUVmean x MTV.
        - short / long axis (mm): on the axial slice where the lesion has the largest area, the
          minor / major axis lengths of the ellipse with the same second moments (skimage
          ``regionprops`` ``axis_minor_length`` / ``axis_major_length`` with pixel spacing);
          exact for discs and ellipses, smooth for irregular outlines (no Feret extremes).
        - centroid and SUVmax point, mm LPS.
        - ``inside`` / ``surround``: fractions in each anatomy structure (names, groups
          ``lung_left``/``lung_right``/``lung``, ``airway``, and extra masks such as
          ``body``), as segmented (a nodule the lung mask leaves out is not inside it; see
          ``zones["lung_filled"]``); only non-zero entries.
        - ``distance_mm``: smallest voxel-centre distance between the lesion and each
          structure within ``measurement.distance_search_mm`` (0 when overlapping, about one
          voxel when touching). One Euclidean distance transform per lesion (distance *from the
          lesion*, in a box padded by the search radius); the structure's minimum of it is the
          lesion-structure distance.
    """
    th = resolve(thresholds)
    mth, cth = th["measurement"], th["classification"]
    suv = sitk.GetArrayFromImage(pet_suv).astype(np.float32, copy=False)
    suv = np.where(np.isfinite(suv), suv, 0.0)
    spacing = spacing_zyx(ct)
    labels, n = label_lesions(lesion_mask.mask, suv, spacing, mth["split_saddle_fraction"],
                              mth["min_piece_ml"])
    if n == 0:
        return (labels, []) if return_labels else []
    hu = sitk.GetArrayFromImage(ct)
    vox_ml = voxel_volume_ml(ct)
    objs = ndi.find_objects(labels)
    search = float(mth["distance_search_mm"])
    pad = [int(math.ceil(search / s)) + 1 for s in spacing]
    zlo = max(0, min(o[0].start for o in objs) - pad[0])
    zhi = min(labels.shape[0], max(o[0].stop for o in objs) + pad[0])
    ctx = context if context is not None else _Context(
        anatomy, spacing, float(cth["hilar_zone_mm"]), slice(zlo, zhi))
    peak_r = (3.0 * mth["suv_peak_volume_ml"] * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    kernel = _ball(peak_r, spacing)
    out = []
    for lid, obj in enumerate(objs, start=1):
        box = tuple(slice(max(0, o.start - p), min(N, o.stop + p))
                    for o, p, N in zip(obj, pad, labels.shape, strict=True))
        out.append(_measure_one(lid, box, labels, suv, hu, ct, spacing, vox_ml, kernel, ctx,
                                mth, search))
    if pet_native is not None:
        _native_maxima(out, labels, n, ct, pet_native)
    return (labels, out) if return_labels else out


def _native_maxima(lesions: list[Lesion], labels: np.ndarray, n: int, ct: sitk.Image,
                   pet: sitk.Image) -> None:
    """Raise SUVmax (and its point) to the hottest native PET voxel centred in each lesion."""
    lo_mm, hi_mm = (index_to_mm(ct, np.argwhere(labels).min(axis=0)),
                    index_to_mm(ct, np.argwhere(labels).max(axis=0)))
    corners = np.array([[a, b, c] for a in (lo_mm[0], hi_mm[0]) for b in (lo_mm[1], hi_mm[1])
                        for c in (lo_mm[2], hi_mm[2])])
    pk = mm_to_index(pet, corners)
    size = np.array(pet.GetSize()[::-1])
    lo = np.clip(np.floor(pk.min(axis=0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(pk.max(axis=0)).astype(int) + 2, 0, size)
    if np.any(hi <= lo):
        return
    arr = sitk.GetArrayViewFromImage(pet)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    kji = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                               indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = index_to_mm(pet, kji)
    ct_idx = np.rint(mm_to_index(ct, xyz)).astype(int)
    ok = np.all((ct_idx >= 0) & (ct_idx < np.array(labels.shape)), axis=1)
    lab = np.zeros(len(kji), dtype=np.int32)
    lab[ok] = labels[tuple(ct_idx[ok].T)]
    vals = np.asarray(arr, dtype=np.float64).reshape(-1)
    vals = np.where(np.isfinite(vals), vals, -np.inf)
    sel = lab > 0
    if not sel.any():
        return
    best = np.full(n + 1, -np.inf)
    np.maximum.at(best, lab[sel], vals[sel])
    for les in lesions:
        v = best[les.id]
        if np.isfinite(v) and v > les.suv_max:
            hit = np.flatnonzero(sel & (lab == les.id) & (vals == v))[0]
            les.suv_max = float(v)
            les.max_point_mm = tuple(float(c) for c in xyz[hit])


def _ball(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    h = [int(math.floor(radius_mm / s)) for s in spacing]
    zz, yy, xx = np.ogrid[-h[0]:h[0] + 1, -h[1]:h[1] + 1, -h[2]:h[2] + 1]
    ball = ((zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2) <= radius_mm ** 2
    return ball.astype(np.float64) / ball.sum()


def _measure_one(lid: int, box, labels, suv, hu, ct, spacing, vox_ml, kernel, ctx: _Context,
                 mth: dict, search: float) -> Lesion:
    comp = labels[box] == lid
    s = suv[box]
    vals = s[comp]
    offset = np.array([b.start for b in box])
    kji = np.argwhere(comp)
    i_max = int(np.argmax(vals))
    suv_max = float(vals[i_max])
    suv_mean = float(vals.mean())
    volume = float(comp.sum()) * vox_ml
    # SUVpeak: the 1 ml sphere mean centred on each lesion voxel, the best one. Only the
    # lesion's extent plus the sphere radius matters; outside the image counts as zero.
    # (ndimage, not scipy.signal's FFT: importing that costs about a second per run.)
    reach = tuple(slice(max(0, a.min() - r), a.max() + r + 1)
                  for a, r in zip(kji.T, (n // 2 for n in kernel.shape), strict=True))
    peak_map = ndi.convolve(s[reach].astype(np.float64), kernel, mode="constant", cval=0.0)
    suv_peak = float(peak_map[comp[reach]].max())
    short_ax, long_ax = _axes(comp, spacing)
    centroid = tuple(float(v) for v in index_to_mm(ct, kji.mean(axis=0) + offset))
    max_pt = tuple(float(v) for v in index_to_mm(ct, kji[i_max] + offset))

    dist = ndi.distance_transform_edt(~comp, sampling=spacing)
    shell = (dist > 0) & (dist <= mth["shell_mm"])
    lab = ctx.labels[box]
    inside, surround, distance = {}, {}, {}
    n_in, n_sh = int(comp.sum()), int(shell.sum())
    present = [int(v) for v in np.unique(lab) if v]
    if present:
        near = ndi.minimum(dist, lab, present)
        cnt_in = np.bincount(lab[comp], minlength=int(lab.max()) + 1)
        cnt_sh = np.bincount(lab[shell], minlength=int(lab.max()) + 1)
        for v, dmin in zip(present, np.atleast_1d(near), strict=True):
            name = ctx.names.get(v, f"label_{v}")
            if name in ctx.groups:  # a backend's whole-lung label: reported as the group
                continue
            if cnt_in[v]:
                inside[name] = float(cnt_in[v] / n_in)
            if n_sh and cnt_sh[v]:
                surround[name] = float(cnt_sh[v] / n_sh)
            if dmin <= search:
                distance[name] = float(dmin)
    for name, m in ctx.groups.items():
        mb = m[box]
        if not mb.any():
            continue
        f_in = float(mb[comp].mean())
        if f_in:
            inside[name] = f_in
        if n_sh:
            f_sh = float(mb[shell].mean())
            if f_sh:
                surround[name] = f_sh
        dmin = float(dist[mb].min())
        if dmin <= search:
            distance[name] = dmin

    med, hil = ctx.mediastinal[box], ctx.hilar[box]
    filled = ctx.lung_filled[box]
    zones = {"mediastinal": float(med[comp].mean()), "hilar": float(hil[comp].mean()),
             "nodal": float((med | hil)[comp].mean()), "lung_filled": float(filled[comp].mean())}
    zones = {k: v for k, v in zones.items() if v}
    h = hu[box]
    core = comp & (s >= mth["core_fraction"] * suv_max) & (h > -500)
    core_hu = float(np.median(h[core])) if core.any() else float("nan")
    grown = dilate(comp, _FULL)
    touching = tuple(int(v) for v in np.unique(labels[box][grown]) if v and v != lid)
    ext = comp & (med | hil) & ~filled
    ext_ml = float(ext.sum()) * vox_ml
    ext_c = ext_zone = None
    if ext.any():
        ext_c = tuple(float(v) for v in index_to_mm(ct, np.argwhere(ext).mean(axis=0) + offset))
        ext_zone = "mediastinal" if (ext & med).sum() >= (ext & hil & ~med).sum() else "hilar"
    return Lesion(
        id=lid, suv_max=suv_max, suv_peak=suv_peak, suv_mean=suv_mean, volume_ml=volume,
        tlg=suv_mean * volume, short_axis_mm=short_ax, long_axis_mm=long_ax,
        centroid_mm=centroid, max_point_mm=max_pt, inside=inside, distance_mm=distance,
        surround=surround, zones=zones, core_hu=core_hu, extension_ml=ext_ml,
        extension_centroid_mm=ext_c, extension_zone=ext_zone, contiguous_with=touching)


def _axes(comp: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, float]:
    """Short and long axis (mm) on the axial slice of largest lesion area (ellipse moments)."""
    areas = comp.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    sl = comp[k]
    lab, n = ndi.label(sl, structure=np.ones((3, 3), dtype=bool))
    if n > 1:  # several pieces on that slice: measure the largest
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        sl = lab == int(np.argmax(sizes))
    rp = regionprops(sl.astype(np.uint8), spacing=(spacing[1], spacing[2]))[0]
    minor, major = float(rp.axis_minor_length), float(rp.axis_major_length)
    # One-pixel-wide lesions have zero second moment across: report one pixel instead.
    pix = min(spacing[1], spacing[2])
    return max(minor, pix), max(major, pix)


# --------------------------------------------------------------------------- classification

class _Frame:
    """Where the lungs, midline and neck are, from the anatomy (and landmarks when given)."""

    def __init__(self, anatomy: Anatomy, landmarks: Landmarks | None, cth: dict):
        ref = anatomy.reference
        lung = anatomy.mask("lung")
        nz = lung.shape[0]
        self.z = np.array([index_to_mm(ref, (k, 0, 0))[2] for k in range(nz)])
        self.x = index_to_mm(ref, np.stack([np.zeros(lung.shape[2]), np.zeros(lung.shape[2]),
                                            np.arange(lung.shape[2])], axis=-1))[:, 0]
        self.has_lungs = bool(lung.any())
        cols = lung.any(axis=1)  # [z, x]
        self.xmin = np.full(nz, np.nan)
        self.xmax = np.full(nz, np.nan)
        for k in np.flatnonzero(cols.any(axis=1)):
            ii = np.flatnonzero(cols[k])
            self.xmin[k], self.xmax[k] = self.x[ii[0]], self.x[ii[-1]]
        ks = np.flatnonzero(cols.any(axis=1))
        self.lung_top = float(self.z[ks].max()) if ks.size else math.inf
        self.lung_bottom = float(self.z[ks].min()) if ks.size else -math.inf
        self.lung_xmin = float(np.nanmin(self.xmin)) if ks.size else -math.inf
        self.lung_xmax = float(np.nanmax(self.xmax)) if ks.size else math.inf
        trachea = anatomy.mask("trachea")
        self.trachea_x = np.full(nz, np.nan)
        for k in np.flatnonzero(trachea.any(axis=(1, 2))):
            self.trachea_x[k] = self.x[np.flatnonzero(trachea[k].any(axis=0))].mean()
        self.landmarks = landmarks
        self.neck_top = self.lung_top + cth["neck_above_apex_mm"]
        self.neck_source = f"lung apex + {cth['neck_above_apex_mm']:.0f} mm (approximated cricoid)"
        if landmarks is not None:
            from nstage.landmarks import TRACHEA_TOP

            top = landmarks.get(TRACHEA_TOP)
            if top is not None and not top.approximated:
                self.neck_top = top.z_mm
                self.neck_source = "top of the trachea (cricoid proxy)"

    def _k(self, z: float) -> int:
        return int(np.argmin(np.abs(self.z - z)))

    def midline_x(self, z: float) -> float:
        """x (mm) of the midline at level z: trachea centre, else between the lungs."""
        lm = self.landmarks
        if lm is not None and lm.trachea:
            t = lm.trachea_at(z)
            if t is not None and abs(t.z_mm - z) <= 30.0:
                return t.centre_x_mm
        k = self._k(z)
        if np.isfinite(self.trachea_x[k]):
            return float(self.trachea_x[k])
        valid = np.flatnonzero(np.isfinite(self.trachea_x))
        if valid.size:
            return float(self.trachea_x[valid[np.argmin(np.abs(valid - k))]])
        if self.has_lungs:
            return 0.5 * (self.lung_xmin + self.lung_xmax)
        return float(self.x.mean())

    def lateral_range(self, z: float) -> tuple[float, float]:
        k = self._k(z)
        if np.isfinite(self.xmin[k]):
            return float(self.xmin[k]), float(self.xmax[k])
        return self.lung_xmin, self.lung_xmax

    def hilum_distance(self, p: Point) -> float:
        """Distance (mm) to the nearer hilum landmark; inf when none."""
        if self.landmarks is None:
            return math.inf
        from nstage.landmarks import HILUM_LEFT, HILUM_RIGHT

        ds = [math.dist(p, lm.point_mm) for name in (HILUM_LEFT, HILUM_RIGHT)
              if (lm := self.landmarks.get(name)) is not None and lm.point_mm is not None]
        return min(ds) if ds else math.inf


def _lung_side(les: Lesion) -> Literal["left", "right"] | None:
    left = max(les.inside.get("lung_left", 0.0), les.surround.get("lung_left", 0.0))
    right = max(les.inside.get("lung_right", 0.0), les.surround.get("lung_right", 0.0))
    if left == right == 0.0:
        return None
    return "left" if left > right else "right"


def _side_of_x(x: float, midline: float, tol: float = 5.0) -> Literal["left", "right", "midline"]:
    # +x is the patient's LEFT.
    if x > midline + tol:
        return "left"
    if x < midline - tol:
        return "right"
    return "midline"


def _hilar_distance(les: Lesion) -> float:
    ds = [d for n, d in les.distance_mm.items() if n in HILAR_STRUCTURES]
    return min(ds) if ds else math.inf


def classify(lesions: list[Lesion], anatomy: Anatomy, landmarks: Landmarks | None = None,
             thresholds: dict | None = None) -> Findings:
    """Sort measured lesions into primary tumour(s), regional node candidates and others.

    Rules, in order (numbers from ``resources/thresholds.json``, section ``classification``):

    1. Not regional (``kind="other"``, possible M1, never counted for N): mostly inside (or
       surrounded by) bone;
       mostly inside a solid organ (liver, spleen, adrenal, kidney, thyroid, ...); centroid more
       than ``below_diaphragm_mm`` below the lowest lung base (abdominal); above the station 1
       limit (top of the trachea when a measured landmark exists, else lung apex +
       ``neck_above_apex_mm``: cervical); lateral to the lungs at its level (axilla/chest wall).
    2. Pulmonary (at least ``lung_fraction_min`` inside the hole-filled lung
       (``zones["lung_filled"]``), or a surrounding
       shell at least ``lung_shell_min`` lung unless most of the lesion lies between the two
       lungs' medial borders, where the lung apices wrap around upper paratracheal nodes): the
       primary is the pulmonary lesion with the largest TLG (SUVmean x MTV: most avid and
       largest).
    3. Other pulmonary lesions. An intrapulmonary node (stations 11-14, N1/N3 by side) is told
       from a lung metastasis / second nodule by size and position: short axis at most
       ``intrapulmonary_node_max_short_axis_mm`` AND within ``intrapulmonary_node_max_hilum_mm``
       of the airway beyond the trachea or the pulmonary vessels (nodes sit along the
       bronchovascular bundles, nodules anywhere); or, up to ``hilar_node_max_short_axis_mm``,
       within ``hilar_node_max_distance_mm`` of those hilar structures (a hilar node the lung
       mask wraps around). Else, in the other lung with MTV of at least
       ``second_primary_min_volume_ml`` (the largest such): a second primary
       (``second_primary=True``); else an additional lung nodule (T descriptor or M1a, not N).
    4. Every other lesion is a regional node candidate: ``supraclavicular`` above the lung
       apices, ``hilar`` at least 25 mm off the tracheal midline and near a hilum (hilum
       landmark within ``hilar_zone_mm`` + 10 mm, or mostly in the hilar zone), else
       ``mediastinal``. (The zone is descriptive; the IASLC station comes from
       :mod:`nstage.stations`.)
       When no lesion is pulmonary, a central primary is looked for among them
       (:func:`_central_primary`: at least ``central_primary_min_short_axis_mm`` short axis,
       against one lung; ``zone="central"``, lower confidence, said in the notes).
    5. Direct extension: a node candidate touching the primary (one FDG-avid region split at
       an SUV saddle, see :func:`label_lesions`) is flagged ``direct_extension``; and when the
       primary itself has at least ``direct_extension_min_ml`` outside lung
       parenchyma inside a nodal zone, the primary is flagged and that part is added as a node
       candidate (same id, centroid of the extension, ``direct_extension=True``).
    6. Symmetric hilar uptake: hilar candidates on both sides, all below
       ``positivity.symmetric_hilar_max_suv`` and within ``symmetric_hilar_ratio`` of each
       other, are flagged ``symmetric_hilar`` (read as reactive by :mod:`nstage.positivity`).

    Sides: ``+x`` is the patient's left; nodes are left/right of the tracheal midline (within
    5 mm: midline), pulmonary lesions take the side of their lung.
    """
    th = resolve(thresholds)
    cth, pth = th["classification"], th["positivity"]
    frame = _Frame(anatomy, landmarks, cth)
    notes: list[str] = []
    pulmonary: list[Lesion] = []
    nodes: list[Lesion] = []
    others: list[Lesion] = []
    for les in lesions:
        x, _, z = les.centroid_mm
        why = _outside_reason(les, frame, cth)
        if why is not None:
            les.kind, les.kind_reason, les.zone = "other", why, "outside"
            les.side = _side_of_x(x, frame.midline_x(z))
            others.append(les)
            continue
        lung_in = max(les.inside.get("lung", 0.0), les.zones.get("lung_filled", 0.0))
        lung_sh = les.surround.get("lung", 0.0)
        between = les.zones.get("mediastinal", 0.0)
        if lung_in >= cth["lung_fraction_min"] or (lung_sh >= cth["lung_shell_min"]
                                                   and between < 0.5):
            les.side = _lung_side(les) or _side_of_x(x, frame.midline_x(z))
            les.zone = "lung"
            pulmonary.append(les)
            continue
        les.kind = "node"
        les.side = _side_of_x(x, frame.midline_x(z))
        les.zone, les.kind_reason = _node_zone(les, frame, cth)
        nodes.append(les)

    primary = second = None
    if pulmonary:
        pulmonary.sort(key=lambda le: le.tlg, reverse=True)
        primary = pulmonary[0]
        primary.kind = "primary"
        primary.kind_reason = (f"largest and most avid lung lesion (TLG {primary.tlg:.1f} g, "
                               f"SUVmax {primary.suv_max:.1f}, {primary.volume_ml:.1f} ml) in the "
                               f"{primary.side} lung")
        for les in pulmonary[1:]:
            near = _hilar_distance(les)
            if ((les.short_axis_mm <= cth["intrapulmonary_node_max_short_axis_mm"]
                 and near <= cth["intrapulmonary_node_max_hilum_mm"])
                    or (les.short_axis_mm <= cth["hilar_node_max_short_axis_mm"]
                        and near <= cth["hilar_node_max_distance_mm"])):
                les.kind, les.zone = "node", "intrapulmonary"
                les.kind_reason = (f"node inside the lung contour (stations 10-14): {les.short_axis_mm:.0f} mm "
                                   f"short axis, {near:.0f} mm from the bronchi/pulmonary vessels")
                nodes.append(les)
            elif (second is None and les.side != primary.side
                  and les.volume_ml >= cth["second_primary_min_volume_ml"]):
                les.kind, les.second_primary = "primary", True
                les.kind_reason = (f"separate tumour in the {les.side} lung (other side than the "
                                   f"primary, {les.volume_ml:.1f} ml): possible second primary")
                second = les
                notes.append("a second tumour in the other lung was found: side of the primary "
                             "is ambiguous")
            else:
                les.kind = "other"
                where = "the same lung (T3/T4 descriptor)" if les.side == primary.side \
                    else "the other lung (M1a)"
                les.kind_reason = (f"additional lung nodule in {where}, not a node: "
                                   f"{les.short_axis_mm:.0f} mm, {near:.0f} mm from the hilar structures")
                others.append(les)
        if primary.extension_ml >= cth["direct_extension_min_ml"] and primary.extension_centroid_mm:
            primary.direct_extension = True
            ext_zone = primary.extension_zone or "mediastinal"
            ext = dataclasses.replace(
                primary, kind="node", zone=ext_zone, direct_extension=True,
                centroid_mm=primary.extension_centroid_mm,
                side=_side_of_x(primary.extension_centroid_mm[0],
                                frame.midline_x(primary.extension_centroid_mm[2])),
                inside=dict(primary.inside), distance_mm=dict(primary.distance_mm),
                kind_reason=(f"direct extension of the primary tumour into the {ext_zone} "
                             f"zone ({primary.extension_ml:.1f} ml outside lung parenchyma)"))
            nodes.append(ext)
            notes.append(f"primary tumour extends directly into the {ext_zone} zone")
    else:
        primary = _central_primary(nodes, cth)
        if primary is None:
            notes.append("no FDG-avid lesion in or next to the lungs: no primary tumour found")
        else:
            nodes.remove(primary)
            notes.append(
                "no lesion inside the lung parenchyma: the mass against the "
                f"{primary.side} lung ({primary.short_axis_mm:.0f} mm) is taken for a central "
                "primary tumour, lower confidence: check that it is not a bulky node")

    if primary is not None:
        for les in nodes:
            if primary.id in les.contiguous_with and not les.direct_extension:
                les.direct_extension = True
                les.kind_reason += "; contiguous with the primary tumour (direct extension)"
    _flag_symmetric_hilar(nodes, pth, notes)
    return Findings(primary=primary, second_primary=second, nodes=nodes, others=others,
                    notes=notes)


def _central_primary(nodes: list[Lesion], cth: dict) -> Lesion | None:
    """A central (hilar / paramediastinal) primary among the node candidates, or None.

    Called only when no lesion lies in the lung parenchyma. A tumour growing from the hilum or
    against the mediastinum displaces the aerated lung, so the lung mask (air-based, in both
    anatomy backends) leaves it out and it sits where nodes sit. It is told from a node by size:
    the node candidate with the largest TLG whose short axis is at least
    ``central_primary_min_short_axis_mm`` and whose rim touches a lung (at least
    ``central_primary_lung_contact_min`` of it; the other lung touching at most half as much)
    is taken as the primary, on that lung's side.
    Limitation: a bulky nodal mass with a non-avid primary would be taken for the primary.
    """
    def one_lung(les: Lesion) -> str | None:
        # Against one lung, not wrapped by both (a mass between the lungs is mediastinal).
        left, right = les.surround.get("lung_left", 0.0), les.surround.get("lung_right", 0.0)
        if max(left, right) < cth["central_primary_lung_contact_min"]:
            return None
        if min(left, right) * 2.0 > max(left, right):
            return None
        return "left" if left > right else "right"

    cands = [n for n in nodes
             if n.short_axis_mm >= cth["central_primary_min_short_axis_mm"] and one_lung(n)]
    if not cands:
        return None
    best = max(cands, key=lambda le: le.tlg)
    best.kind, best.zone, best.side = "primary", "central", one_lung(best)
    best.kind_reason = (
        f"central tumour: no lesion inside the lung parenchyma, and this mass "
        f"({best.short_axis_mm:.0f} mm short axis, larger than a node usually is; TLG "
        f"{best.tlg:.1f} g, SUVmax {best.suv_max:.1f}, {best.volume_ml:.1f} ml) lies against the "
        f"{best.side} lung ({best.surround.get('lung', 0.0):.0%} of its rim); lower confidence")
    return best


def _outside_reason(les: Lesion, frame: _Frame, cth: dict) -> str | None:
    """Why a lesion is not regional (possible M1), or None when it may be."""
    x, _, z = les.centroid_mm
    # Inside bone, or wrapped by it (a lytic lesion replaces the bone the mask was made from).
    bone_in = sum(v for n, v in les.inside.items() if n.startswith(BONE_PREFIXES))
    bone_sh = sum(v for n, v in les.surround.items() if n.startswith(BONE_PREFIXES))
    if max(bone_in, bone_sh) >= cth["bone_fraction_min"]:
        return (f"skeletal: {max(bone_in, bone_sh):.0%} inside or surrounded by bone "
                "(possible M1), not a node")
    organ = max(((n, les.inside.get(n, 0.0)) for n in ORGANS_NOT_NODES), key=lambda t: t[1])
    if organ[1] >= 0.5:
        return f"inside the {organ[0]} ({organ[1]:.0%}): not a regional node"
    if frame.has_lungs and z < frame.lung_bottom - cth["below_diaphragm_mm"]:
        return (f"abdominal: {frame.lung_bottom - z:.0f} mm below the lowest lung base "
                "(possible M1), not a regional node")
    if z > frame.neck_top:
        return (f"cervical above station 1 (above the {frame.neck_source}): not a regional node")
    lung = max(les.inside.get("lung", 0.0), les.zones.get("lung_filled", 0.0),
               les.surround.get("lung", 0.0))
    if frame.has_lungs and lung < cth["lung_fraction_min"]:
        lo, hi = frame.lateral_range(z) if z <= frame.lung_top else (frame.lung_xmin,
                                                                     frame.lung_xmax)
        if x < lo or x > hi:
            return ("lateral to the lungs (axilla / chest wall / lateral neck): not a "
                    "regional node (possible M1)")
    return None


def _node_zone(les: Lesion, frame: _Frame, cth: dict) -> tuple[str, str]:
    x, _, z = les.centroid_mm
    if z > frame.lung_top:
        return "supraclavicular", ("low neck / supraclavicular (station 1 region), above the "
                                   "lung apices")
    d_hilum = frame.hilum_distance(les.centroid_mm)
    off_mid = abs(x - frame.midline_x(z))
    if off_mid >= 25.0 and (d_hilum <= cth["hilar_zone_mm"] + 10.0
                            or les.zones.get("hilar", 0.0) >= 0.5):
        return "hilar", (f"hilar: next to the {les.side} hilum (bronchi/pulmonary vessels), "
                         "outside lung parenchyma")
    return "mediastinal", "mediastinal: between the lungs, outside lung parenchyma"


def _flag_symmetric_hilar(nodes: list[Lesion], pth: dict, notes: list[str]) -> None:
    hilar = {s: [n for n in nodes if n.zone == "hilar" and n.side == s and not n.direct_extension]
             for s in ("left", "right")}
    if not hilar["left"] or not hilar["right"]:
        return
    lmax = max(n.suv_max for n in hilar["left"])
    rmax = max(n.suv_max for n in hilar["right"])
    if max(lmax, rmax) < pth["symmetric_hilar_max_suv"] and \
            max(lmax, rmax) / max(min(lmax, rmax), 1e-6) <= pth["symmetric_hilar_ratio"]:
        for n in hilar["left"] + hilar["right"]:
            n.symmetric_hilar = True
        notes.append(f"symmetric mildly avid hilar uptake (SUVmax {rmax:.1f} right, {lmax:.1f} "
                     "left): read as reactive")
