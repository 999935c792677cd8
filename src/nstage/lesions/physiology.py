"""Which grown uptake regions are physiological, and why (the SUV backend's last step).

Every region the SUV backend grew is judged here; what is not a lesion is returned as a
:class:`~nstage.lesions.base.SuppressedUptake` with the structure and the numbers that decided.
Every number is in ``resources/thresholds.json`` (section ``detection``); CLINICAL.md 3 lists
the false-positive sources (granulomatous disease, brown fat, myocardium next to station 7/8).

Order of the judgement (:func:`judge`):

1. background regions (grown as organ-sized faint uptake, or a plateau no seed stood out
   from) are judged among themselves, never merged with a lesion they touch: oesophagus,
   thymus, muscle, marrow or brown fat by the patterns below, else diffuse organ uptake (a
   liver or spleen without a mask); a faint large mass mostly in the lung stays a lesion;
2. the other regions, as connected components: noise when under ``min_volume_ml`` (below about
   two PET voxels); diffuse organ uptake when organ-sized (``diffuse_min_volume_ml``), faint
   (SUVmax below ``diffuse_max_threshold_ratio`` x the threshold) and not in the lung;
3. shape patterns of a component (then of each seed's own region, for touching structures):

   - oesophagus: long and narrow (``oesophagus_min_length_mm``,
     ``oesophagus_min_elongation``), mild (SUVpeak <= ``oesophagus_max_suv``) and mostly
     within ``oesophagus_margin_mm`` of the oesophagus mask or, with no mask there, a vertical
     tube in front of the spine near the midline (``oesophagus_max_width_mm``,
     ``oesophagus_max_spine_mm``, ``oesophagus_max_midline_mm``); tested first, since a
     segment behind the left atrium is also a thin wall against the heart mask;
   - myocardium by shape: large (``myocardium_min_volume_ml``), in the mediastinum, touching
     the heart mask (``myocardium_min_near_heart`` of it within
     ``myocardium_heart_margin_mm``) or with no heart mask, and hollow like a ventricular wall
     round its cavity (``myocardium_min_hollow``) or, mostly against the heart mask, a thin
     shell (``myocardium_max_thickness_ratio``): a hot left ventricle the heart mask missed.
     Limitation: a large necrotic (ring-shaped) nodal conglomerate against the heart looks
     the same; it is listed with this reason;
   - thymus: behind the sternum (``thymus_max_sternum_mm``) in front of the trachea, flat
     (``thymus_max_axis_ratio``) and mild (SUVpeak <= ``thymus_max_suv``): a 3a node is round;
   - muscle: mostly inside a muscle mask (TotalSegmentator names);
   - bone marrow: mostly inside the spine mask and mild (SUVpeak <= ``marrow_max_suv``),
     in several regions alike (``marrow_min_regions``) or spanning ``marrow_min_extent_mm``:
     a focal bone lesion stays a lesion; a piece of a marrow component more than 3 mm from
     the spine with a pattern of its own (the oesophagus in front of it, grown together with
     the marrow at PET resolution) is recorded as that structure (:func:`_beside_the_spine`);

   a physiological component keeps a distinct focus that is hotter than the rest
   (``focus_prominence``) and node-shaped, outlined against the component's own level;
4. a short piece of mild uptake split off recognised oesophageal or marrow uptake (at a bend,
   at the hiatus, or where an organ mask took the uptake in between) is the same uptake when
   joined to it without a saddle and not standing out from it (:func:`_continues`,
   ``continuation_gap_mm``, ``continuation_bridge_mm``), and lies where that uptake can be
   (marrow in the spine; the oesophagus next to its recognised uptake or along its course);
   mild uptake round an enclosed pocket of gas that is neither lung nor airway is the
   oesophageal wall round its lumen (:func:`_gas_lumen`, ``air_hu``, ``lumen_gas_min_ml``):
   a node holds no gas;
5. brown fat, per seed's region (split by a watershed where it holds distinct foci): its core
   (SUV >= ``brown_fat_core_fraction`` x its max) largely of fat density
   (``brown_fat_min_fat_fraction`` below ``brown_fat_hu_max``; Cohade 2003), with where it
   lies (neck / supraclavicular, paravertebral) and its mirror image across the midline in
   the reason. A focal soft-tissue focus in or grown together with brown fat, outlined
   against the fat's own level, compact (``node_max_elongation``, ``node_max_diameter_mm``),
   is kept: a supraclavicular node inside brown fat is still found. A part grown together
   with recognised brown fat whose core is not fat (lobules round muscle and vessels, split
   off by the watershed) is that brown fat unless its SUVpeak stands out from the fat's own
   level by ``min_contrast_suv`` (:func:`_within_fat`).

:func:`organ_uptake` lists supra-threshold uptake inside the organs that seed nothing (heart,
kidneys, bladder, bowel, ...), and any focal maximum in them: a node inside an oversized
organ mask is listed with that mask, never lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nstage.geometry import index_to_mm
from nstage.lesions.base import SuppressedUptake
from nstage.morphology import ball, bounding_box, dilate, fill_holes_axial

_FULL = np.ones((3, 3, 3), dtype=bool)
#: Physiological uptake that runs on beyond a region's end: a piece split off it is the same.
CONTINUOUS = ("oesophagus", "bone marrow")
#: TotalSegmentator muscle classes (the classical backend has none).
MUSCLES = ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
           "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
           "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right")


@dataclass
class Context:
    """What the judgements read: images (array order), anatomy, grid, thresholds, the seed
    threshold and the blood pool (SUV)."""

    ct: sitk.Image
    suv: np.ndarray
    hu: np.ndarray
    anatomy: object
    spacing: tuple[float, float, float]
    th: dict
    threshold: float
    smooth: np.ndarray
    blood_pool: float
    _masks: dict = field(default_factory=dict)

    def mask(self, *names: str) -> np.ndarray:
        """Anatomy mask (cached per name tuple)."""
        if names not in self._masks:
            self._masks[names] = self.anatomy.mask(*names)
        return self._masks[names]

    def present(self, *names: str) -> bool:
        """Whether any of the named structures is in the anatomy (cached per name tuple)."""
        key = ("_present", *names)
        if key not in self._masks:
            self._masks[key] = any(self.anatomy.has(n) for n in names)
        return self._masks[key]

    def crop_mask(self, box: tuple[slice, ...], *names: str) -> np.ndarray:
        """Anatomy mask within ``box`` only (a whole-volume mask is not built for it)."""
        if names in self._masks:
            return self._masks[names][box]
        out = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
        values: list[int] = []
        for name in names:
            if name in self.anatomy.extra_masks:
                out |= self.anatomy.extra_masks[name][box]
            values.extend(self.anatomy.values_of(name))
        if values:
            out |= np.isin(self.anatomy.labels[box], values)
        return out

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass
class _Region:
    """One grown region in its padded bounding box."""

    mask: np.ndarray
    box: tuple[slice, slice, slice]
    ctx: Context

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * self.ctx.voxel_ml

    @property
    def suv(self) -> np.ndarray:
        return self.ctx.suv[self.box]

    @property
    def suv_max(self) -> float:
        return float(self.suv[self.mask].max())

    @property
    def suv_peak(self) -> float:
        """Highest SUV of the SUVpeak-scale smoothed image in the region (about the PERCIST
        SUVpeak): "mild" uptake is judged on it, since noise lifts the hottest voxel."""
        return float(self.ctx.smooth[self.box][self.mask].max())

    def fraction_in(self, *names: str) -> float:
        """Fraction of the region's voxels inside the named anatomy."""
        inside = self.mask & self.ctx.crop_mask(self.box, *names)
        return float(inside.sum()) / max(1, int(self.mask.sum()))

    def centroid_mm(self) -> tuple[float, float, float]:
        kji = np.argwhere(self.mask).mean(axis=0) + np.array([s.start for s in self.box])
        return tuple(float(v) for v in index_to_mm(self.ctx.ct, kji))

    def points_mm(self) -> np.ndarray:
        """Voxel centres (n, 3) in mm, array order (z, y, x), relative to the box."""
        return np.argwhere(self.mask) * np.asarray(self.ctx.spacing)

    def extents_mm(self) -> np.ndarray:
        """Extent (z, y, x) in mm."""
        pts = np.argwhere(self.mask)
        return (pts.max(axis=0) - pts.min(axis=0) + 1) * np.asarray(self.ctx.spacing)

    def axes_mm(self) -> np.ndarray:
        """Principal axis lengths (mm, 4 SD: the diameter of a uniform ellipsoid), smallest
        first."""
        pts = self.points_mm()
        if len(pts) < 4:
            return np.zeros(3)
        ev = np.clip(np.linalg.eigvalsh(np.cov(pts.T)), 0.0, None)
        return 4.0 * np.sqrt(ev)

    def record(self, structure: str, reason: str, kind: str = "physiological") -> SuppressedUptake:
        return SuppressedUptake(centroid_mm=self.centroid_mm(), suv_max=self.suv_max,
                                volume_ml=self.volume_ml, structure=structure, reason=reason,
                                kind=kind)


def is_diffuse(volume_ml: float, suv_max: float, threshold: float, th: dict,
               lung_fraction: float = 0.0) -> bool:
    """Organ-sized (>= ``diffuse_min_volume_ml``), faint (SUVmax below
    ``diffuse_max_threshold_ratio`` x the seed threshold) and not in the lung (a faint large
    lung mass is a tumour): diffuse organ uptake, not a lesion."""
    return (volume_ml >= th["diffuse_min_volume_ml"] and lung_fraction < 0.5
            and suv_max < th["diffuse_max_threshold_ratio"] * threshold)


def judge(regions: np.ndarray, cands: list, ctx: Context,
          background_ids: set[int] | None = None
          ) -> tuple[np.ndarray, list[SuppressedUptake]]:
    """Lesion mask and the suppressed regions (see the module docstring).

    Touching grown regions are judged together as one component: noise, diffuse uptake and
    the shape patterns (myocardium, oesophagus, thymus, marrow, muscle) need the whole of it.
    A physiological component keeps the distinct, node-shaped foci that stand out from it.
    Otherwise each seed's own region (split where it holds distinct foci) is judged for brown
    fat, so a node against brown fat keeps its part.

    Parameters
    ----------
    regions : numpy.ndarray of int32
        Region id per voxel (0 none), array order.
    cands : list
        Seeds (``kji``, ``suv_max``, ``suv_peak``, ``region_id``) of the regions.
    ctx : Context
    background_ids : set of int, optional
        Regions of background uptake (organ-sized and faint, or a plateau no seed stood out
        from): judged among themselves, never merged with a lesion they touch.
    """
    out = np.zeros(regions.shape, dtype=bool)
    records: list[SuppressedUptake] = []
    # Mild linear / diffuse physiological uptake recognised so far, on the whole grid: a
    # short piece of the same uptake split off it (at a bend, at the hiatus) is judged
    # against it below (:func:`_continues`).
    linear: dict[str, np.ndarray] = {}

    def recognised(view: _Region, structure: str) -> None:
        if structure in CONTINUOUS:
            grid = linear.setdefault(structure, np.zeros(regions.shape, dtype=bool))
            grid[view.box] |= view.mask

    occupied = regions > 0
    n_marrow_background = 0
    if background_ids:
        background, faint_lung, n_marrow_background = _judge_background(
            regions, background_ids, ctx, records, recognised)
        occupied &= ~background | faint_lung
    outer = _padded(bounding_box(occupied), regions.shape, 2)
    lab = np.zeros(regions.shape, dtype=np.int32)
    lab[outer], _ = ndi.label(occupied[outer], structure=_FULL)
    comps: list[tuple[_Region, list]] = []
    for cid, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        box = _padded(sl, regions.shape, 2)
        view = _Region(lab[box] == cid, box, ctx)
        whole = _whole_verdict(view, ctx)
        if whole is not None:
            records.append(view.record(*whole))
            continue
        comps.append((view, [c for c in cands if c.region_id and lab[c.kji] == cid]))
    n_marrow = sum(1 for v, _ in comps if _marrow_like(v)) + n_marrow_background
    pending: list[tuple[_Region, list]] = []
    for view, seeds in comps:
        shape = _shape_pattern(view, ctx, n_marrow)
        if shape is not None and shape[0] == "bone marrow":
            view = _beside_the_spine(view, ctx, n_marrow, records, recognised)
        if shape is not None:
            structure, reason = shape
            kept = _foci_in(view, seeds, ctx)
            if kept.any():
                out[view.box] |= kept
                reason += "; a distinct node-shaped focus in it is kept as a lesion"
                view = _Region(view.mask & ~kept, view.box, ctx)
            records.append(view.record(structure, reason))
            recognised(view, structure)
            continue
        ids = np.unique(regions[view.box][view.mask])
        for rid in ids[ids > 0]:
            own = _Region(view.mask & (regions[view.box] == rid), view.box, ctx)
            mine = [c for c in seeds if regions[c.kji] == rid]
            for part, part_seeds in _split(own, mine, ctx):
                # Physiological uptake of two structures can touch (oesophagus and spine):
                # each seed's own region is judged by shape too.
                shape = _shape_pattern(part, ctx, n_marrow)
                if shape is not None:
                    records.append(part.record(*shape))
                    recognised(part, shape[0])
                else:
                    pending.append((part, part_seeds))
    # Brown fat first: a part grown together with it is judged against its level below.
    fats: list[_Region] = []
    deferred: list[tuple[_Region, list]] = []
    for part, part_seeds in pending:
        shape = _continues(part, linear, ctx) or _gas_lumen(part, ctx)
        if shape is not None:
            records.append(part.record(*shape))
        elif _brown_fat(part, ctx) is not None:
            fats += _judge_fat(part, part_seeds, ctx, out, records)
        else:
            deferred.append((part, part_seeds))
    for part, part_seeds in deferred:
        shape = _within_fat(part, fats, ctx)
        if shape is not None:
            records.append(part.record(*shape))
        else:
            _judge_fat(part, part_seeds, ctx, out, records)
    _mirror_notes(records, ctx)
    return out, records


def _judge_background(regions: np.ndarray, ids: set[int], ctx: Context,
                      records: list[SuppressedUptake], recognised=None
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """Record each background region by its pattern (oesophagus, marrow, ...) or as diffuse
    organ uptake; ``recognised(view, structure)`` is told each pattern found.

    Returns the background mask, the regions that are mostly lung (a faint large lung mass is
    a tumour, judged with the lesions) and how many background regions lie in the spine.
    """
    background = np.zeros(regions.shape, dtype=bool)
    keep = np.zeros(regions.shape, dtype=bool)
    objs = ndi.find_objects(regions)
    views = []
    for rid in sorted(ids):
        if rid > len(objs) or objs[rid - 1] is None:
            continue
        box = _padded(objs[rid - 1], regions.shape, 2)
        view = _Region(regions[box] == rid, box, ctx)
        background[box] |= view.mask
        if view.fraction_in("lung") >= 0.5:
            keep[box] |= view.mask
        else:
            views.append(view)
    n_marrow = sum(1 for v in views if _marrow_like(v))
    for view in views:
        shape = _shape_pattern(view, ctx, max(n_marrow, ctx.th["marrow_min_regions"]),
                               myocardium=False) or _brown_fat(view, ctx)
        if shape is not None:
            records.append(view.record(*shape))
            if recognised is not None:
                recognised(view, shape[0])
        elif view.suv_peak < ctx.th["diffuse_max_threshold_ratio"] * ctx.threshold:
            records.append(view.record(
                "diffuse organ uptake", f"{view.volume_ml:.0f} ml of faint uptake (SUVpeak "
                f"{view.suv_peak:.1f}) that no seed stood out from: diffuse organ uptake "
                "(liver/spleen)"))
        else:
            # Grown from a faint seed, it took in hotter uptake that no seed of its own
            # reached: say so rather than call it faint.
            records.append(view.record(
                "diffuse organ uptake", f"{view.volume_ml:.0f} ml of uptake grown from a faint "
                f"seed as one plateau, but reaching SUVpeak {view.suv_peak:.1f} (above "
                f"{ctx.th['diffuse_max_threshold_ratio']} x the threshold {ctx.threshold:.1f}) "
                "with no seed of its own: not assessed as a lesion; read it on the images"))
    return background, keep, n_marrow


def _judge_fat(view: _Region, seeds: list, ctx: Context, out: np.ndarray,
               records: list[SuppressedUptake]) -> list[_Region]:
    """Brown fat or lesion, for one seed's region (adds to ``out`` / ``records``); returns
    what was recorded as brown fat."""
    found = _brown_fat(view, ctx)
    if found is None:
        kept, fat_rest = _trim_brown_fat(view, seeds, ctx)
        out[view.box] |= kept
        if fat_rest is None:
            return []
        records.append(fat_rest.record(
            "brown fat", f"SUVmax {fat_rest.suv_max:.1f}, fat-density uptake around a "
            f"focal soft-tissue node (kept as a lesion){_where_fat(fat_rest, ctx)}: brown "
            "adipose tissue"))
        return [fat_rest]
    structure, reason = found
    kept = _focus_in_fat(view, ctx)
    if kept is not None:
        out[view.box] |= kept
        reason += "; a focal node-shaped soft-tissue focus in it is kept as a lesion"
        view = _Region(view.mask & ~kept, view.box, ctx)
        if not view.mask.any():
            return []
    records.append(view.record(structure, reason))
    return [view]


def _within_fat(part: _Region, fats: list[_Region], ctx: Context
                ) -> tuple[str, str] | None:
    """A region grown together with recognised brown fat that does not stand out from it.

    Brown fat is lobulated: PET blur spreads its uptake over the muscle and vessels between
    the lobules, so a piece of it split off by a watershed can have a core of soft tissue and
    fail the fat-core test (:func:`_brown_fat`). Touching recognised brown fat, it is the same
    uptake unless its SUVpeak stands out by ``min_contrast_suv`` from the fat's own level (the
    median SUV of that brown fat's fat-density voxels, as for a node inside brown fat,
    :func:`_focus_in_fat`): a node there is hotter than the fat round it and stays a lesion.
    """
    if not fats:
        return None
    grown = dilate(part.mask, _FULL)
    levels: list[np.ndarray] = []
    for fat in fats:
        inter = [slice(max(a.start, b.start), min(a.stop, b.stop))
                 for a, b in zip(part.box, fat.box, strict=True)]
        if any(s.start >= s.stop for s in inter):
            continue
        mine = tuple(slice(s.start - a.start, s.stop - a.start)
                     for s, a in zip(inter, part.box, strict=True))
        theirs = tuple(slice(s.start - b.start, s.stop - b.start)
                       for s, b in zip(inter, fat.box, strict=True))
        if not (grown[mine] & fat.mask[theirs]).any():
            continue
        hu = ctx.hu[fat.box]
        levels.append(fat.suv[fat.mask & (hu < ctx.th["brown_fat_hu_max"]) & (hu >= -190)])
    values = np.concatenate(levels) if levels else np.zeros(0)
    if values.size < 3:
        return None
    level = float(np.median(values))
    contrast = float(ctx.th["min_contrast_suv"])
    if part.suv_peak - level >= contrast:
        return None
    return ("brown fat",
            f"SUVmax {part.suv_max:.1f}, SUVpeak {part.suv_peak:.1f}, grown together with brown "
            f"fat (its fat at SUV {level:.1f}) and not standing out from it by {contrast:.1f} "
            f"SUV{_where_fat(part, ctx)}: the same brown adipose tissue uptake")


def _beside_the_spine(view: _Region, ctx: Context, n_marrow: int,
                      records: list[SuppressedUptake], recognised) -> _Region:
    """A marrow component without the physiological uptake it grew into beside the spine.

    Marrow uptake lies in the bone; a component that is mostly marrow can hold uptake of
    another structure that touches the spine (the oesophagus in front of it, grown into the
    vertebral marrow at PET resolution). Each piece more than 3 mm from the spine (the margin
    of the marrow pattern) that has a physiological pattern of its own is recorded as that
    structure and taken out; what is left is the marrow component, whose distinct foci are
    still judged as lesions (:func:`_foci_in`).
    """
    outside = view.mask & ~_near_spine(view, ctx)
    lab, n = ndi.label(outside, structure=_FULL)
    rest = view.mask.copy()
    for i in range(1, n + 1):
        piece = _Region(lab == i, view.box, ctx)
        if piece.volume_ml < ctx.th["min_volume_ml"]:
            continue
        shape = _shape_pattern(piece, ctx, n_marrow, myocardium=False)
        if shape is not None and shape[0] != "bone marrow":
            records.append(piece.record(*shape))
            recognised(piece, shape[0])
            rest &= ~piece.mask
    return view if (rest == view.mask).all() else _Region(rest, view.box, ctx)


def _foci_in(view: _Region, seeds: list, ctx: Context) -> np.ndarray:
    """Distinct foci of a physiological component that are lesions after all.

    A focus must stand out twice: from the saddle towards hotter foci (``focus_prominence``,
    :func:`_distinct_foci`) and above the other foci (its SUVpeak-scale value at least
    ``1 + focus_prominence`` times their median: vertebrae of a diffusely raised marrow are
    distinct foci of the same height, a node beside the oesophagus is hotter). Its outline,
    against the component's median SUV, must then be a lesion (:func:`_focus_against`).
    """
    kept = np.zeros(view.mask.shape, dtype=bool)
    foci = _distinct_foci(view, seeds, ctx)
    if len(foci) < 2:
        return kept
    peaks = np.array([float(ctx.smooth[c.kji]) for c in foci])
    typical = float(np.median(peaks))
    bg = float(np.median(view.suv[view.mask]))
    off = np.array([s.start for s in view.box])
    markers = np.zeros(view.mask.shape, dtype=np.int32)
    for n, c in enumerate(foci, start=1):
        markers[tuple(np.asarray(c.kji) - off)] = n
    basins = watershed(-ctx.smooth[view.box], markers=markers, mask=view.mask)
    for n in range(1, len(foci) + 1):
        if peaks[n - 1] < (1.0 + ctx.th["focus_prominence"]) * typical:
            continue
        part = _Region(basins == n, view.box, ctx)
        if part.mask.any():
            node = _focus_against(part, bg, ctx)
            if node is not None:
                kept |= node
    return kept


def _padded(sl, shape, pad: int) -> tuple[slice, slice, slice]:
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad))
                 for s, n in zip(sl, shape, strict=True))


def _whole_verdict(view: _Region, ctx: Context) -> tuple[str, str, str] | None:
    """Noise or diffuse organ uptake (judged on a whole connected component)."""
    th = ctx.th
    vol, smax = view.volume_ml, view.suv_max
    if vol < th["min_volume_ml"]:
        return ("noise", f"{vol:.2f} ml under the {th['min_volume_ml']} ml minimum (below about "
                         "two PET voxels): noise", "rejected")
    if is_diffuse(vol, smax, ctx.threshold, th) \
            and is_diffuse(vol, smax, ctx.threshold, th, view.fraction_in("lung")):
        if _marrow_like(view):
            return ("bone marrow",
                    f"{vol:.0f} ml with SUVpeak {view.suv_peak:.1f} <= {th['marrow_max_suv']} "
                    "along the "
                    "spine: diffusely raised marrow", "physiological")
        return ("diffuse organ uptake",
                f"{vol:.0f} ml with SUVmax {smax:.1f} < {th['diffuse_max_threshold_ratio']} x "
                f"the threshold {ctx.threshold:.1f}: diffuse organ uptake (liver/spleen)",
                "physiological")
    return None


def _shape_pattern(view: _Region, ctx: Context, n_marrow: int,
                   myocardium: bool = True) -> tuple[str, str] | None:
    """``(structure, reason)`` when a component has the shape and place of physiological
    uptake (myocardium, oesophagus, thymus, muscle, bone marrow), else None. ``myocardium``
    False skips the (costly) ventricular-wall test, for faint background uptake that is left
    out whatever it is called."""
    th = ctx.th
    # The oesophagus first: a segment of it behind the left atrium is also a thin wall
    # against the heart mask.
    tests = (_oesophagus, _myocardium, _thymus, _muscle) if myocardium \
        else (_oesophagus, _thymus, _muscle)
    for test in tests:
        found = test(view, ctx)
        if found is not None:
            return found
    if _marrow_like(view) and (n_marrow >= th["marrow_min_regions"]
                               or view.extents_mm()[0] >= th["marrow_min_extent_mm"]):
        return ("bone marrow",
                f"SUVpeak {view.suv_peak:.1f} <= {th['marrow_max_suv']} inside the spine, "
                f"diffuse marrow pattern ({n_marrow} spinal uptake regions; this one "
                f"{view.extents_mm()[0]:.0f} mm long): "
                "physiological / reactive marrow")
    return None


def _continues(part: _Region, linear: dict[str, np.ndarray],
               ctx: Context) -> tuple[str, str] | None:
    """A short piece of mild linear or diffuse uptake (oesophagus, marrow) split off a region
    recognised as such (at a bend, at the hiatus, or where an organ mask took the uptake in
    between), too short alone to show its shape.

    It continues that uptake when it lies within ``continuation_gap_mm`` of it, or is joined
    to it within ``continuation_bridge_mm`` by uptake that never dips below
    ``1 - focus_prominence`` of its own SUVpeak (no saddle: the same test that tells distinct
    foci apart, :func:`_distinct_foci`) nor to within ``focus_prominence`` of the blood pool
    (a path through blood joins everything), and does not stand out from it (SUVpeak below
    ``1 + focus_prominence`` times the recognised uptake it joins). A node against it is
    hotter and stays a lesion. The piece must also lie where that uptake can be: marrow in
    the spine, as the marrow pattern requires (:func:`_marrow_like`); oesophageal uptake
    within ``continuation_gap_mm`` of it (at the hiatus the oesophagus leaves the spine and
    the midline) or, joined only by a longer path, along its mask or in front of the spine
    near the midline (:func:`_in_oesophageal_course`). A faint node that a warm path joins
    to them (a hilar node through the heart's uptake) stays a lesion.
    """
    gap = float(ctx.th["continuation_gap_mm"])
    big = _padded_mm(part, ctx, max(gap, float(ctx.th["continuation_bridge_mm"])))
    off = [p.start - b.start for p, b in zip(part.box, big, strict=True)]
    mine = np.zeros(tuple(b.stop - b.start for b in big), dtype=bool)
    mine[tuple(slice(o, o + n) for o, n in zip(off, part.mask.shape, strict=True))] = part.mask
    near = dilate(mine, ball(tuple(ctx.spacing), gap))
    prom = float(ctx.th["focus_prominence"])
    floor = max((1.0 - prom) * part.suv_peak, (1.0 + prom) * ctx.blood_pool)
    lab, _ = ndi.label(near | (ctx.smooth[big] >= floor), structure=_FULL)
    joined = np.isin(lab, np.unique(lab[mine]))
    for structure, grid in linear.items():
        beside = joined & grid[big]
        if not beside.any():
            continue
        if structure == "bone marrow":
            if not _marrow_like(part):
                continue
        elif not (near & grid[big]).any() and not _in_oesophageal_course(part, ctx):
            continue
        level = float(ctx.smooth[big][beside].max())
        if part.suv_peak < (1.0 + prom) * level:
            return (structure, f"SUVpeak {part.suv_peak:.1f}, continuous with the {structure} "
                               f"uptake next to it (SUVpeak {level:.1f} there) and not standing "
                               "out from it: the same physiological uptake")
    return None


def _split(view: _Region, seeds: list, ctx: Context) -> list[tuple[_Region, list]]:
    """The component, or its watershed basins when it holds several distinct foci."""
    foci = _distinct_foci(view, seeds, ctx)
    if len(foci) < 2:
        return [(view, seeds)]
    off = np.array([s.start for s in view.box])
    markers = np.zeros(view.mask.shape, dtype=np.int32)
    for n, c in enumerate(foci, start=1):
        markers[tuple(np.asarray(c.kji) - off)] = n
    basins = watershed(-ctx.smooth[view.box], markers=markers, mask=view.mask)
    out = []
    for n in range(1, len(foci) + 1):
        part = basins == n
        if part.any():
            mine = [c for c in seeds if part[tuple(np.asarray(c.kji) - off)]]
            out.append((_Region(part, view.box, ctx), mine))
    return out


# --------------------------------------------------------------------------- patterns

def _myocardium(view: _Region, ctx: Context) -> tuple[str, str] | None:
    """A ventricular wall: large, in the mediastinum, touching the heart mask (or with no heart
    mask at all), and hollow round its colder cavity or, mostly against the heart mask, a thin
    curved shell (the part of a wall a heart mask missed is a half ring)."""
    th = ctx.th
    if view.volume_ml < th["myocardium_min_volume_ml"] or view.fraction_in("lung") > 0.3:
        return None
    hollow = _hollowness(view.mask)
    is_hollow = hollow >= th["myocardium_min_hollow"]
    has_heart = ctx.present("heart", "myocardium")
    if not has_heart:
        if not is_hollow:
            return None
        return ("myocardium (shape)",
                f"{view.volume_ml:.0f} ml, SUVmax {view.suv_max:.1f}, a hollow wall round a "
                f"colder cavity ({100 * hollow:.0f}% of its outline), no heart mask: "
                "myocardial uptake")
    thick = 2.0 * float(ndi.distance_transform_edt(np.pad(view.mask, 1),
                                                   sampling=ctx.spacing).max())
    length = float(view.extents_mm().max())
    is_thin = thick / max(length, 1e-6) <= th["myocardium_max_thickness_ratio"]
    if not (is_hollow or is_thin):
        return None  # cheap shape tests first: the heart's neighbourhood costs a dilation
    margin = float(th["myocardium_heart_margin_mm"])
    big = _padded_mm(view, ctx, margin)
    heart = ctx.crop_mask(big, "heart", "myocardium")
    if not heart.any():
        return None
    frac = float((view.mask & _near(view, heart, margin, ctx)).sum()) / float(view.mask.sum())
    if frac < th["myocardium_min_near_heart"] or (not is_hollow and frac < 0.5):
        return None
    shape = (f"a hollow wall round a colder cavity ({100 * hollow:.0f}% of its outline)"
             if is_hollow else f"a thin wall ({thick:.0f} mm thick over {length:.0f} mm)")
    return ("myocardium (shape)",
            f"{view.volume_ml:.0f} ml, SUVmax {view.suv_max:.1f}, {shape}, {100 * frac:.0f}% "
            f"within {margin:.0f} mm of the heart mask: myocardial uptake")


def _hollowness(mask: np.ndarray) -> float:
    """Largest fraction of a region's filled outline that is hole, over the three orientations
    (a ventricular wall is a ring round its cavity in some plane)."""
    best = 0.0
    n = float(mask.sum())
    for axis in range(3):
        filled = fill_holes_axial(np.moveaxis(mask, axis, 0))
        best = max(best, float(filled.sum() - n) / max(float(filled.sum()), 1.0))
    return best


def _brown_fat(view: _Region, ctx: Context) -> tuple[str, str] | None:
    """Uptake whose core (SUV >= ``brown_fat_core_fraction`` x its max) is largely fat: at
    least ``brown_fat_min_fat_fraction`` of the core's non-air voxels below
    ``brown_fat_hu_max`` (PET blur mixes the muscle between fat lobules into the core, a
    node's core is solid soft tissue)."""
    th = ctx.th
    core = view.mask & (view.suv >= th["brown_fat_core_fraction"] * view.suv_max)
    fat = _fat_fraction(core, view, ctx)
    if fat < th["brown_fat_min_fat_fraction"]:
        return None
    return ("brown fat",
            f"SUVmax {view.suv_max:.1f}, core of fat density ({100 * fat:.0f}% of it below "
            f"{th['brown_fat_hu_max']:.0f} HU){_where_fat(view, ctx)}: brown adipose tissue")


def _where_fat(view: _Region, ctx: Context) -> str:
    """Where brown fat sits: above the lung apices (neck / supraclavicular) or beside the spine
    (paravertebral)."""
    lung = ctx.mask("lung")
    k = int(np.argwhere(view.mask)[:, 0].mean()) + view.box[0].start
    ks = np.flatnonzero(lung.any(axis=(1, 2)))
    if ks.size and k >= ks[-1] - int(round(10.0 / ctx.spacing[0])):
        return ", at the lung apices or above (neck / supraclavicular)"
    spine = ctx.mask("spine")
    if spine.any():
        near = dilate(spine[view.box], ball(tuple(ctx.spacing), 25.0))
        if float((view.mask & near).sum()) / float(view.mask.sum()) > 0.5:
            return ", beside the spine (paravertebral)"
    return ""


def _oesophagus(view: _Region, ctx: Context) -> tuple[str, str] | None:
    """Linear uptake along the oesophagus: mild, long and narrow, and either mostly along the
    oesophagus mask or, where no mask is near, a vertical tube in front of the spine near the
    midline (where the oesophagus runs)."""
    th = ctx.th
    if view.suv_peak > th["oesophagus_max_suv"] or view.fraction_in("lung") > 0.3:
        return None
    ext = view.extents_mm()
    width = _slice_width_mm(view)
    if ext[0] < th["oesophagus_min_length_mm"] \
            or ext[0] < th["oesophagus_min_elongation"] * width:
        return None
    frac = _along_oesophagus_mask(view, ctx)
    if frac >= 0.5:
        where = f"{100 * frac:.0f}% along the oesophagus mask"
    elif width <= th["oesophagus_max_width_mm"] and _in_front_of_spine(view, ctx):
        where = "a vertical tube in front of the spine near the midline (no oesophagus mask there)"
    else:
        return None
    return ("oesophagus",
            f"SUVpeak {view.suv_peak:.1f} <= {th['oesophagus_max_suv']}, {where}, over "
            f"{ext[0]:.0f} mm (in-plane {width:.0f} mm): linear oesophageal uptake")


def _gas_lumen(view: _Region, ctx: Context) -> tuple[str, str] | None:
    """Mild uptake round gas that is neither lung nor airway: the wall of the oesophagus
    round its lumen (a lymph node holds no gas).

    Mild (SUVpeak <= ``oesophagus_max_suv``), mostly outside the lung, and holding at least
    ``lumen_gas_min_ml`` of gas (below ``air_hu``) in pieces that do not touch the lung
    or airway masks (partial volume at the lung's edge touches them). This finds a short
    piece of oesophageal uptake near the hiatus, where the oesophagus has left the spine and
    the midline, that no other oesophageal uptake was recognised next to.
    """
    th = ctx.th
    if view.suv_peak > th["oesophagus_max_suv"] or view.fraction_in("lung") > 0.3:
        return None
    gas = view.mask & (ctx.hu[view.box] < th["air_hu"])
    if float(gas.sum()) * ctx.voxel_ml < th["lumen_gas_min_ml"]:
        return None
    airways = dilate(ctx.crop_mask(view.box, "lung", "airway"), _FULL)
    lab, _ = ndi.label(gas, structure=_FULL)
    touching = np.unique(lab[gas & airways])
    enclosed = gas & ~np.isin(lab, touching[touching > 0])
    ml = float(enclosed.sum()) * ctx.voxel_ml
    if ml < th["lumen_gas_min_ml"]:
        return None
    return ("oesophagus",
            f"SUVpeak {view.suv_peak:.1f} <= {th['oesophagus_max_suv']}, round {ml:.2f} ml of "
            f"gas (below {th['air_hu']:.0f} HU) that is neither lung nor airway: uptake "
            "in the wall of the oesophagus round its lumen")


def _along_oesophagus_mask(view: _Region, ctx: Context) -> float:
    """Fraction of the region within ``oesophagus_margin_mm`` of the oesophagus mask (0 with
    no mask near)."""
    margin = float(ctx.th["oesophagus_margin_mm"])
    oes = ctx.crop_mask(_padded_mm(view, ctx, margin), "esophagus")
    if not oes.any():
        return 0.0
    return float((view.mask & _near(view, oes, margin, ctx)).sum()) / float(view.mask.sum())


def _in_oesophageal_course(view: _Region, ctx: Context) -> bool:
    """Where the oesophagus runs: mostly within ``oesophagus_margin_mm`` of its mask or, with
    no mask there, in front of the spine near the midline (:func:`_in_front_of_spine`)."""
    return _along_oesophagus_mask(view, ctx) >= 0.5 or _in_front_of_spine(view, ctx)


def _slice_width_mm(view: _Region) -> float:
    """Typical in-plane extent (mm) of the region: the median over its axial slices of the
    larger in-plane extent (a curved tube is wider in its bounding box than in any slice, and
    a few slices where it touches a neighbour do not make it wide)."""
    sp = view.ctx.spacing
    widths = []
    for sl in view.mask:
        if sl.any():
            jj = np.flatnonzero(sl.any(axis=1))
            ii = np.flatnonzero(sl.any(axis=0))
            widths.append(max((jj[-1] - jj[0] + 1) * sp[1], (ii[-1] - ii[0] + 1) * sp[2]))
    return float(np.median(widths)) if widths else 0.0


def _in_front_of_spine(view: _Region, ctx: Context) -> bool:
    """The region's centre lies within ``oesophagus_max_spine_mm`` of the spine, in front of
    its centre and within ``oesophagus_max_midline_mm`` of its centre left-right (at the
    region's levels)."""
    th = ctx.th
    big = _padded_mm(view, ctx, th["oesophagus_max_spine_mm"])
    spine = ctx.crop_mask(big, "spine")
    ks = slice(view.box[0].start - big[0].start, view.box[0].stop - big[0].start)
    pts = np.argwhere(spine[ks])
    if pts.size == 0:
        return False
    off = np.array([view.box[0].start, big[1].start, big[2].start])
    kji = np.argwhere(view.mask).mean(axis=0) + np.array([s.start for s in view.box])
    spine_c = pts.mean(axis=0) + off
    dist = _distance_mm(spine, kji - np.array([b.start for b in big]), ctx.spacing,
                        th["oesophagus_max_spine_mm"])
    d_lr = abs(kji[2] - spine_c[2]) * ctx.spacing[2]
    return (dist <= th["oesophagus_max_spine_mm"] and kji[1] < spine_c[1]
            and d_lr <= th["oesophagus_max_midline_mm"])


def _thymus(view: _Region, ctx: Context) -> tuple[str, str] | None:
    th = ctx.th
    if view.suv_peak > th["thymus_max_suv"] or view.volume_ml < 1.0:
        return None
    axes = view.axes_mm()
    ratio = axes[0] / max(axes[2], 1e-6)
    if ratio > th["thymus_max_axis_ratio"] or view.fraction_in("lung") > 0.3:
        return None
    sternum = ctx.mask("sternum")
    if not sternum.any():
        return None
    kji = np.argwhere(view.mask).mean(axis=0) + np.array([s.start for s in view.box])
    d = _distance_mm(sternum, kji, ctx.spacing, th["thymus_max_sternum_mm"])
    if d > th["thymus_max_sternum_mm"]:
        return None
    trachea = ctx.mask("trachea")
    k = int(round(kji[0]))
    if trachea[k].any() and kji[1] > np.argwhere(trachea[k])[:, 0].min():
        return None  # not in front of the trachea
    return ("thymus",
            f"SUVpeak {view.suv_peak:.1f} <= {th['thymus_max_suv']}, flat (axes "
            f"{axes[0]:.0f}/{axes[2]:.0f} mm, ratio {ratio:.2f} <= "
            f"{th['thymus_max_axis_ratio']}), {d:.0f} mm behind the sternum in front of the "
            "trachea: thymic uptake")


def _muscle(view: _Region, ctx: Context) -> tuple[str, str] | None:
    present = [m for m in MUSCLES if m in ctx.anatomy.names.values()]
    if not present:
        return None
    frac = view.fraction_in(*present)
    if frac < 0.5:
        return None
    return ("muscle", f"SUVmax {view.suv_max:.1f}, {100 * frac:.0f}% inside a muscle mask: "
                      "muscular uptake")


def _marrow_like(view: _Region) -> bool:
    ctx = view.ctx
    if view.suv_peak > ctx.th["marrow_max_suv"] or not ctx.crop_mask(view.box, "spine").any():
        return False
    near = _near_spine(view, ctx)
    if not near.any():
        return False
    return float((view.mask & near).sum()) / float(view.mask.sum()) >= 0.6


def _near_spine(view: _Region, ctx: Context) -> np.ndarray:
    """Voxels of the region's box within 3 mm of the spine mask (the marrow pattern's
    margin: partial volume at the cortex)."""
    spine = ctx.crop_mask(_padded_mm(view, ctx, 3.0), "spine")
    if not spine.any():
        return np.zeros(view.mask.shape, dtype=bool)
    return _near(view, spine, 3.0, ctx)


def _padded_mm(view: _Region, ctx: Context, margin_mm: float) -> tuple[slice, ...]:
    """The region's box grown by ``margin_mm`` (clipped to the volume)."""
    shape = ctx.suv.shape
    return tuple(slice(max(0, s.start - int(np.ceil(margin_mm / sp))),
                       min(n, s.stop + int(np.ceil(margin_mm / sp))))
                 for s, sp, n in zip(view.box, ctx.spacing, shape, strict=True))


def _near(view: _Region, mask_big: np.ndarray, margin_mm: float, ctx: Context) -> np.ndarray:
    """Voxels of the region's box within ``margin_mm`` of ``mask_big`` (a mask on the box
    grown by ``margin_mm``, see :func:`_padded_mm`)."""
    big = _padded_mm(view, ctx, margin_mm)
    near = dilate(mask_big, ball(tuple(ctx.spacing), margin_mm))
    return near[tuple(slice(b.start - g.start, b.stop - g.start)
                      for b, g in zip(view.box, big, strict=True))]


def _distance_mm(mask: np.ndarray, kji, spacing, within_mm: float) -> float:
    r = [int(np.ceil(within_mm / s)) for s in spacing]
    c = [int(round(v)) for v in kji]
    sl = tuple(slice(max(0, a - h), a + h + 1) for a, h in zip(c, r, strict=True))
    pts = np.argwhere(mask[sl])
    if pts.size == 0:
        return float("inf")
    off = (pts + np.array([s.start for s in sl]) - np.array(kji)) * np.array(spacing)
    return float(np.sqrt((off ** 2).sum(axis=1)).min())


# --------------------------------------------------------------------------- rescue

def _distinct_foci(view: _Region, seeds: list, ctx: Context) -> list:
    """Seeds of the region that stand out by ``focus_prominence`` of their value (on the
    SUVpeak-scale smoothed image) from the saddle towards any hotter seed: at level
    ``(1 - prominence) x value`` their part of the region holds no hotter seed."""
    if len(seeds) < 2:
        return list(seeds)
    sm = np.where(view.mask, ctx.smooth[view.box], 0.0)
    off = np.array([s.start for s in view.box])
    pts = [tuple(np.asarray(c.kji) - off) for c in seeds]
    vals = np.array([sm[q] for q in pts])
    order = np.argsort(-vals, kind="stable")
    out = [seeds[order[0]]]
    prom = float(ctx.th["focus_prominence"])
    for rank in order[1:]:
        q, v = pts[rank], float(vals[rank])
        lab, _ = ndi.label(sm >= (1.0 - prom) * v, structure=_FULL)
        hotter = [pts[o] for o in order if vals[o] > v]
        if lab[q] and not any(lab[h] == lab[q] for h in hotter):
            out.append(seeds[rank])
    return out


def _fat_fraction(mask: np.ndarray, view: _Region, ctx: Context) -> float:
    """Fraction of the non-air voxels of ``mask`` (on the region's box) of fat density.

    Air is told by density, not by the lung mask: a lung mask that holds the tumour it
    contains (classical anatomy) would otherwise leave only the tumour's partial-volume rim
    to judge, and that rim looks like fat."""
    h = ctx.hu[view.box][mask]
    h = h[h > ctx.th["air_hu"]]  # air / lung voxels say nothing about fat vs soft tissue
    if h.size < 3:
        return 0.0
    return float(np.mean((h < ctx.th["brown_fat_hu_max"]) & (h >= -190)))


def _trim_brown_fat(view: _Region, seeds: list, ctx: Context
                    ) -> tuple[np.ndarray, _Region | None]:
    """A lesion region that is largely hot fat round a soft-tissue focus (a node inside brown
    fat, grown together with it): the node and the rest as brown fat. Otherwise the region
    unchanged and None."""
    th = ctx.th
    if _fat_fraction(view.mask, view, ctx) < th["brown_fat_min_fat_fraction"]:
        return view.mask, None
    node = _focus_in_fat(view, ctx)
    if node is None:
        return view.mask, None
    rest = view.mask & ~node
    if float(rest.sum()) * ctx.voxel_ml < th["min_volume_ml"]:
        return view.mask, None
    return node, _Region(rest, view.box, ctx)


def _focus_in_fat(view: _Region, ctx: Context) -> np.ndarray | None:
    """A focal soft-tissue focus inside hot fat (on the region's box), outlined against the
    brown fat itself (median SUV of the region's fat-density voxels), or None."""
    th = ctx.th
    hu = ctx.hu[view.box]
    fat = view.mask & (hu < th["brown_fat_hu_max"]) & (hu >= -190)
    if fat.sum() < 3:
        return None
    return _focus_against(view, float(np.median(view.suv[fat])), ctx)


def _focus_against(view: _Region, bg: float, ctx: Context) -> np.ndarray | None:
    """The focus round the region's hottest voxel, outlined against a warm background ``bg``
    (``bg + grow_fraction x (SUVmax - bg)``), when it is a lesion: it stands out from ``bg`` by
    ``min_contrast_suv``, reaches the threshold, is soft tissue (under
    ``brown_fat_min_fat_fraction`` fat), at least ``min_volume_ml`` and compact
    (``node_max_elongation``, ``node_max_diameter_mm``). Else None."""
    th = ctx.th
    suv = view.suv
    peak = view.suv_max
    if peak - bg < th["min_contrast_suv"] or peak < ctx.threshold:
        return None
    level = bg + float(th["grow_fraction"]) * (peak - bg)
    lab, _ = ndi.label(view.mask & (suv >= level), structure=_FULL)
    top = np.unravel_index(int(np.argmax(np.where(view.mask, suv, -np.inf))), suv.shape)
    node = lab == lab[top]
    if float(node.sum()) * ctx.voxel_ml < th["min_volume_ml"] \
            or _fat_fraction(node, view, ctx) >= th["brown_fat_min_fat_fraction"]:
        return None
    pts = np.argwhere(node)
    ext = (pts.max(axis=0) - pts.min(axis=0) + 1) * np.asarray(ctx.spacing)
    if ext.max() > th["node_max_elongation"] * max(ext.min(), 1e-6) \
            or ext.max() > th["node_max_diameter_mm"]:
        return None
    return node


def _mirror_notes(records: list[SuppressedUptake], ctx: Context) -> None:
    """Add "symmetric with ..." to brown-fat records that have a mirror image across the
    midline (x of the spine, else of the body), within ``brown_fat_mirror_mm``."""
    fats = [n for n, r in enumerate(records) if r.structure == "brown fat"]
    if len(fats) < 2:
        return
    spine = ctx.mask("spine")
    body = ctx.mask("body") if "body" in ctx.anatomy.extra_masks else None
    ref = spine if spine.any() else body
    if ref is None or not ref.any():
        return
    mid_x = float(index_to_mm(ctx.ct, np.argwhere(ref).mean(axis=0))[0])
    tol = float(ctx.th["brown_fat_mirror_mm"])
    from dataclasses import replace

    for n in fats:
        c = np.asarray(records[n].centroid_mm)
        mirrored = c.copy()
        mirrored[0] = 2 * mid_x - c[0]
        for m in fats:
            if m != n and abs(c[0] - mid_x) > tol \
                    and np.linalg.norm(np.asarray(records[m].centroid_mm) - mirrored) <= tol:
                other = records[m].centroid_mm
                records[n] = replace(records[n], reason=records[n].reason
                                     + f"; symmetric with uptake at ({other[0]:.0f}, "
                                     f"{other[1]:.0f}, {other[2]:.0f}) mm")
                break


# --------------------------------------------------------------------------- organ uptake

def organ_uptake(organ: np.ndarray, anatomy, names: tuple[str, ...], ctx: Context,
                 seeds: list | None = None) -> list[SuppressedUptake]:
    """Supra-threshold uptake inside organs that cannot seed lesions.

    One record per connected focus of at least ``min_volume_ml`` on the SUVpeak-scale
    smoothed SUV (noise specks are not listed), and one per focal maximum inside an organ
    (``seeds``: SUVpeak at least ``min_contrast_suv`` above the organ 8-15 mm around it) that
    no such focus holds: a node inside an oversized organ mask is listed, not lost.
    """
    hot = organ & (ctx.smooth >= ctx.threshold)
    out: list[SuppressedUptake] = []
    covered = np.zeros(organ.shape, dtype=bool)
    if hot.any():
        box = bounding_box(hot)
        lab, _ = ndi.label(hot[box], structure=_FULL)
        values = set(np.unique(anatomy.labels[box][lab > 0]).tolist())
        present = [nm for nm in names if values & set(anatomy.values_of(nm))
                   or nm in anatomy.extra_masks]
        for cid, sl0 in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[sl0] == cid
            vol = float(comp.sum()) * ctx.voxel_ml
            if vol < ctx.th["min_volume_ml"]:
                continue
            sl = tuple(slice(a.start + b.start, a.start + b.stop) for a, b in zip(box, sl0,
                                                                                strict=True))
            covered[sl] |= comp
            where = _organ_name(comp, sl, present, ctx)
            kji = np.argwhere(comp).mean(axis=0) + np.array([s.start for s in sl])
            smax = float(ctx.suv[sl][comp].max())
            peak = float(ctx.smooth[sl][comp].max())
            rise = peak - _organ_level_around(tuple(int(round(v)) for v in kji), organ, ctx)
            focal = vol < ctx.th["myocardium_min_volume_ml"] and rise >= ctx.th["min_contrast_suv"]
            reason = (f"focal uptake inside the {where} mask (SUVmax {smax:.1f}, {vol:.1f} ml, "
                      f"{rise:.1f} above the organ around it): not assessed as a lesion because "
                      "organs with physiological uptake do not seed lesions; if this is a node, "
                      "the organ mask is too large" if focal else
                      f"SUVmax {smax:.1f}, {vol:.1f} ml inside the {where} mask: normal organ "
                      "uptake (organs with physiological FDG uptake do not seed lesions)")
            out.append(SuppressedUptake(
                centroid_mm=tuple(float(v) for v in index_to_mm(ctx.ct, kji)), suv_max=smax,
                volume_ml=vol, structure=where, reason=reason))
    for c in seeds or ():
        if covered[c.kji]:
            continue
        level = _organ_level_around(c.kji, organ, ctx)
        if c.suv_peak - level < ctx.th["min_contrast_suv"]:
            continue  # the organ's own noise
        box = tuple(slice(max(0, v - 1), v + 2) for v in c.kji)
        where = _organ_name(organ[box], box, list(names), ctx)
        out.append(SuppressedUptake(
            centroid_mm=tuple(float(v) for v in index_to_mm(ctx.ct, np.asarray(c.kji, float))),
            suv_max=c.suv_max, volume_ml=0.0, structure=where,
            reason=f"focal uptake inside the {where} mask (SUVmax {c.suv_max:.1f}, SUVpeak "
                   f"{c.suv_peak:.1f}, {c.suv_peak - level:.1f} above the organ around it): "
                   "not assessed as a lesion because organs with physiological uptake do not "
                   "seed lesions; if this is a node, the organ mask is too large"))
    return out


def _organ_name(comp: np.ndarray, sl: tuple[slice, ...], names: list[str],
                ctx: Context) -> str:
    """The organ holding most of ``comp`` (on box ``sl``)."""
    return next((nm for nm in names if (ctx.crop_mask(sl, nm) & comp).sum() * 2 >= comp.sum()
                 and (ctx.crop_mask(sl, nm) & comp).any()),
                names[0] if names else "organ")


def _organ_level_around(kji, organ: np.ndarray, ctx: Context) -> float:
    """Median SUVpeak-scale SUV of the organ 8-15 mm from a voxel."""
    r = [int(np.ceil(15.0 / s)) for s in ctx.spacing]
    sl = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(kji, r, strict=True))
    q = tuple(c - s.start for c, s in zip(kji, sl, strict=True))
    zz, yy, xx = np.ogrid[tuple(slice(0, s.stop - s.start) for s in sl)]
    d2 = (((zz - q[0]) * ctx.spacing[0]) ** 2 + ((yy - q[1]) * ctx.spacing[1]) ** 2
          + ((xx - q[2]) * ctx.spacing[2]) ** 2)
    ring = (d2 >= 64.0) & (d2 <= 225.0) & organ[sl]
    return float(np.median(ctx.smooth[sl][ring])) if ring.sum() >= 10 else 0.0
