"""Connected FDG-avid lesions and their measurements (read-only records).

Positions are mm LPS; SUV values are SUVbw (g/ml); volumes in ml. What each lesion is
(primary, node, lung lesion, other) is decided by :mod:`nstage.placement`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import watershed

from nstage.anatomy.base import GROUPS, Anatomy
from nstage.geometry import (
    Point,
    index_to_mm,
    mm_to_index,
    nearest_index,
    spacing_zyx,
    voxel_volume_ml,
)
from nstage.morphology import bounding_box, dilate, fill_holes_axial
from nstage.thresholds import resolve

if TYPE_CHECKING:
    from nstage.lesions.base import LesionMask


@dataclass(frozen=True)
class Lesion:
    """One connected FDG-avid lesion and its measurements (read-only).

    Like scikit-image's region properties, a lesion is measured once by :func:`measure` and
    never written afterwards; what later steps decide about it (primary, node, station,
    positivity) lives in their own records (:mod:`nstage.placement`,
    :mod:`nstage.positivity`).

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
    extension_ml, extension_centroid_mm, extension_zone
        Part of the lesion outside lung parenchyma inside a nodal zone (ml, its centroid mm LPS,
        ``"hilar"``/``"mediastinal"``): for a lung tumour, how far it reaches past the pleura.
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
    surround: dict[str, float] = field(default_factory=dict)
    zones: dict[str, float] = field(default_factory=dict)
    core_hu: float = float("nan")
    extension_ml: float = 0.0
    extension_centroid_mm: Point | None = None
    extension_zone: str | None = None
    contiguous_with: tuple[int, ...] = ()

    @cached_property
    def lung_fraction(self) -> float:
        """Fraction of the lesion in the lung, the lung masks hole-filled (0-1)."""
        return max(self.inside.get("lung", 0.0), self.zones.get("lung_filled", 0.0))

    @cached_property
    def lung_rim_fraction(self) -> float:
        """Fraction of the lesion's surrounding shell that is lung (0-1)."""
        return self.surround.get("lung", 0.0)

    @cached_property
    def lung_side(self) -> Literal["left", "right"] | None:
        """The lung holding or surrounding more of the lesion; None when neither touches it."""
        left = max(self.inside.get("lung_left", 0.0), self.surround.get("lung_left", 0.0))
        right = max(self.inside.get("lung_right", 0.0), self.surround.get("lung_right", 0.0))
        if left == right == 0.0:
            return None
        return "left" if left > right else "right"


# --------------------------------------------------------------------------- measurement

_FULL = np.ones((3, 3, 3), dtype=bool)
LUNG_GROUPS = ("lung_left", "lung_right", "lung")
# Structures that mark the hilum: airway beyond the trachea and the pulmonary vessels.
HILAR_STRUCTURES = ("main_bronchus_left", "main_bronchus_right", "airway", "lung_airways",
                    "pulmonary_artery", "pulmonary_vein")

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

    _MASKS = ("lung_filled", "mediastinal", "hilar")

    def packed(self) -> dict:
        """The masks without the anatomy, bit-packed (an eighth of their size): what a
        process that computed them sends to the one that measures
        (:meth:`from_packed`)."""
        shape = self.labels.shape
        masks = {f"group:{k}": v for k, v in self.groups.items()}
        masks.update({k: getattr(self, k) for k in self._MASKS})
        return {"shape": shape, "masks": {k: np.packbits(v, axis=None)
                                          for k, v in masks.items()}}

    @classmethod
    def from_packed(cls, anatomy: Anatomy, packed: dict) -> _Context:
        """The context of ``anatomy`` from :meth:`packed` (of the same anatomy)."""
        shape = tuple(packed["shape"])
        if shape != anatomy.labels.shape:
            raise ValueError(f"packed context of shape {shape} for anatomy {anatomy.labels.shape}")
        n = int(np.prod(shape))
        out = cls.__new__(cls)
        out.anatomy, out.labels, out.names = anatomy, anatomy.labels, anatomy.names
        out.groups = {}
        for key, bits in packed["masks"].items():
            mask = np.unpackbits(bits, count=n).view(bool).reshape(shape)
            if key.startswith("group:"):
                out.groups[key[len("group:"):]] = mask
            else:
                setattr(out, key, mask)
        return out


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


def measurement_context_from(anatomy: Anatomy, packed: dict) -> _Context:
    """:func:`measurement_context` from its bit-packed form (``measurement_context(...)
    .packed()``, computed in another process from the same anatomy)."""
    return _Context.from_packed(anatomy, packed)


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
        out = _native_maxima(out, labels, n, ct, pet_native)
    return (labels, out) if return_labels else out


def _native_maxima(lesions: list[Lesion], labels: np.ndarray, n: int, ct: sitk.Image,
                   pet: sitk.Image) -> list[Lesion]:
    """The lesions with SUVmax (and its point) raised to the hottest native PET voxel centred
    in each (measured here, before anyone reads them)."""
    lo_mm, hi_mm = (index_to_mm(ct, np.argwhere(labels).min(axis=0)),
                    index_to_mm(ct, np.argwhere(labels).max(axis=0)))
    corners = np.array([[a, b, c] for a in (lo_mm[0], hi_mm[0]) for b in (lo_mm[1], hi_mm[1])
                        for c in (lo_mm[2], hi_mm[2])])
    pk = mm_to_index(pet, corners)
    size = np.array(pet.GetSize()[::-1])
    lo = np.clip(np.floor(pk.min(axis=0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(pk.max(axis=0)).astype(int) + 2, 0, size)
    if np.any(hi <= lo):
        return lesions
    arr = sitk.GetArrayViewFromImage(pet)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    kji = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                               indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = index_to_mm(pet, kji)
    ct_idx, ok = nearest_index(ct, xyz)
    lab = np.zeros(len(kji), dtype=np.int32)
    lab[ok] = labels[tuple(ct_idx[ok].T)]
    vals = np.asarray(arr, dtype=np.float64).reshape(-1)
    vals = np.where(np.isfinite(vals), vals, -np.inf)
    sel = lab > 0
    if not sel.any():
        return lesions
    best = np.full(n + 1, -np.inf)
    np.maximum.at(best, lab[sel], vals[sel])
    out = []
    for les in lesions:
        v = best[les.id]
        if np.isfinite(v) and v > les.suv_max:
            hit = np.flatnonzero(sel & (lab == les.id) & (vals == v))[0]
            les = dataclasses.replace(les, suv_max=float(v),
                                      max_point_mm=tuple(float(c) for c in xyz[hit]))
        out.append(les)
    return out


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
    centroid = tuple(float(v) for v in index_to_mm(ct, kji.mean(axis=0) + offset))
    max_pt = tuple(float(v) for v in index_to_mm(ct, kji[i_max] + offset))

    dist = ndi.distance_transform_edt(~comp, sampling=spacing)
    h = hu[box]
    hot = s >= mth["core_fraction"] * suv_max
    short_ax, long_ax = _axes(comp, spacing)
    tissue = _ct_tissue(comp, hot, h, dist <= mth["ct_tissue_margin_mm"], mth)
    if tissue is not None:
        # CLINICAL.md 3: the short axis is a CT measurement. A small node's PET outline is
        # narrower than the node (partial volume), so its soft tissue on CT is measured
        # when that is the wider reading.
        ct_short, ct_long = _axes(tissue, spacing)
        if ct_short > short_ax:
            short_ax, long_ax = ct_short, max(long_ax, ct_long)
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
    core = comp & hot & (h > -500)
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


def _ct_tissue(comp: np.ndarray, hot: np.ndarray, h: np.ndarray, reach: np.ndarray,
               mth: dict) -> np.ndarray | None:
    """The soft tissue on CT that a PET region outlines: voxels in ``ct_tissue_hu`` within
    ``reach`` (the region and ``ct_tissue_margin_mm`` around it: the PET blur), connected to
    its hot core (SUV >= ``core_fraction`` x SUVmax). None when the core holds no soft tissue
    (a lesion in air or bone, or a CT that does not cover it)."""
    lo, hi = mth["ct_tissue_hu"]
    soft = (h >= lo) & (h <= hi)
    seed = comp & hot & soft
    if not seed.any():
        return None
    lab, _ = ndi.label(soft & reach, structure=_FULL)
    keep = np.unique(lab[seed])
    return np.isin(lab, keep[keep > 0])


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
