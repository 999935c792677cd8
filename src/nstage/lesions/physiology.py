"""Which grown uptake regions are physiological, and why (the SUV backend's last step).

Every region the SUV backend grew is judged here; what is not a lesion is returned as a
:class:`~nstage.lesions.base.SuppressedUptake` with the structure and the numbers that decided.
Every number is in ``resources/thresholds.json`` (section ``detection``); CLINICAL.md 3 lists
the false-positive sources (granulomatous disease, brown fat, myocardium next to station 7/8).

In this order, a region is

1. noise: smaller than ``min_volume_ml`` (below about two PET voxels);
2. diffuse organ uptake: organ-sized (``diffuse_min_volume_ml``) and faint (SUVmax below
   ``diffuse_max_threshold_ratio`` x the threshold), e.g. a liver or spleen without a mask;
3. myocardium by shape: large (``myocardium_min_volume_ml``), hollow like a ventricular wall
   round its cavity (``myocardium_min_hollow``), in the mediastinum and against the heart mask
   (or with no heart mask at all): a hot left ventricle the heart mask missed;
4. brown fat: its core (SUV >= ``brown_fat_core_fraction`` x its max) has fat density
   (median HU < ``brown_fat_hu_max``; Cohade 2003); the reason says where (neck /
   supraclavicular, paravertebral) and whether it has a mirror image on the other side;
5. oesophagus: mostly within ``oesophagus_margin_mm`` of the oesophagus mask, long along it
   (``oesophagus_min_length_mm``, ``oesophagus_min_elongation``) and mild
   (``oesophagus_max_suv``);
6. thymus: behind the sternum (``thymus_max_sternum_mm``) in front of the trachea, flat
   (``thymus_max_axis_ratio``) and mild (``thymus_max_suv``): a 3a node is round;
7. bone marrow: mostly inside the spine mask and mild (``marrow_max_suv``), either in several
   vertebrae alike (``marrow_min_regions``) or spanning ``marrow_min_extent_mm``: a focal bone
   lesion stays a lesion;
8. muscle: mostly inside a muscle mask (TotalSegmentator names).

A physiological region that holds a distinct focus (another seed standing out from the saddle
towards the region's own maximum by ``focus_prominence`` of its SUVmax) is split by a
watershed and each part judged again, and a brown-fat region keeps a focal, node-shaped
soft-tissue part (HU >= ``node_soft_tissue_hu``, compact, holding a seed): a supraclavicular
node inside brown fat is still found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nstage.geometry import index_to_mm
from nstage.lesions.base import SuppressedUptake
from nstage.morphology import ball, dilate, erode

_FULL = np.ones((3, 3, 3), dtype=bool)
#: TotalSegmentator muscle classes (the classical backend has none).
MUSCLES = ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
           "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
           "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right")


@dataclass
class Context:
    """What the judgements read: images (array order), anatomy, grid and thresholds."""

    ct: sitk.Image
    suv: np.ndarray
    hu: np.ndarray
    anatomy: object
    spacing: tuple[float, float, float]
    th: dict
    threshold: float
    smooth: np.ndarray
    _masks: dict = field(default_factory=dict)

    def mask(self, *names: str) -> np.ndarray:
        """Anatomy mask (cached per name tuple)."""
        if names not in self._masks:
            self._masks[names] = self.anatomy.mask(*names)
        return self._masks[names]

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

    def fraction_in(self, other: np.ndarray) -> float:
        """Fraction of the region's voxels inside ``other`` (a full-size mask)."""
        return float((self.mask & other[self.box]).sum()) / max(1, int(self.mask.sum()))

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


def judge(regions: np.ndarray, cands: list, ctx: Context
          ) -> tuple[np.ndarray, list[SuppressedUptake]]:
    """Lesion mask and the suppressed regions (see the module docstring).

    Touching grown regions are judged together as one component (noise, diffuse uptake); a
    component with several distinct foci is split by a watershed and each part is judged for
    the physiological patterns, so a node against brown fat or the oesophagus keeps its part.

    Parameters
    ----------
    regions : numpy.ndarray of int32
        Region id per voxel (0 none), array order.
    cands : list
        Seeds (``kji``, ``suv_max``, ``suv_peak``, ``region_id``) of the regions.
    ctx : Context
    """
    out = np.zeros(regions.shape, dtype=bool)
    records: list[SuppressedUptake] = []
    lab, _ = ndi.label(regions > 0, structure=_FULL)
    parts: list[tuple[_Region, list]] = []
    for cid, sl in enumerate(ndi.find_objects(lab), start=1):
        box = _padded(sl, regions.shape, 2)
        view = _Region(lab[box] == cid, box, ctx)
        seeds = [c for c in cands if c.region_id and lab[c.kji] == cid]
        whole = _whole_verdict(view, ctx)
        if whole is not None:
            records.append(view.record(*whole))
            continue
        parts.extend(_split(view, seeds, ctx))
    n_marrow = sum(1 for v, _ in parts if _marrow_like(v))
    for view, seeds in parts:
        verdict = _pattern(view, ctx, n_marrow)
        if verdict is None:
            out[view.box] |= view.mask
            continue
        structure, reason = verdict
        kept = _focal_soft_tissue(view, seeds, ctx) if structure == "brown fat" else None
        if kept is not None and kept.any():
            out[view.box] |= kept
            reason += "; a focal node-shaped soft-tissue part of it is kept as a lesion"
            view = _Region(view.mask & ~kept, view.box, ctx)
            if not view.mask.any():
                continue
        records.append(view.record(structure, reason))
    _mirror_notes(records, ctx)
    return out, records


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
    if is_diffuse(vol, smax, ctx.threshold, th, view.fraction_in(ctx.mask("lung"))):
        return ("diffuse organ uptake",
                f"{vol:.0f} ml with SUVmax {smax:.1f} < {th['diffuse_max_threshold_ratio']} x "
                f"the threshold {ctx.threshold:.1f}: diffuse organ uptake (liver/spleen)",
                "physiological")
    return None


def _pattern(view: _Region, ctx: Context, n_marrow: int) -> tuple[str, str] | None:
    """``(structure, reason)`` when the region shows a physiological pattern, else None."""
    th = ctx.th
    for test in (_myocardium, _brown_fat, _oesophagus, _thymus, _muscle):
        found = test(view, ctx)
        if found is not None:
            return found
    if _marrow_like(view) and (n_marrow >= th["marrow_min_regions"]
                               or view.extents_mm()[0] >= th["marrow_min_extent_mm"]):
        return ("bone marrow",
                f"SUVmax {view.suv_max:.1f} <= {th['marrow_max_suv']} inside the spine, "
                f"diffuse marrow pattern ({n_marrow} spinal regions alike or a long segment): "
                "physiological / reactive marrow")
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
    th = ctx.th
    if view.volume_ml < th["myocardium_min_volume_ml"]:
        return None
    if view.fraction_in(ctx.mask("lung")) > 0.3:
        return None
    hollow = _hollowness(view.mask)
    if hollow < th["myocardium_min_hollow"]:
        return None
    heart = ctx.mask("heart", "myocardium")
    if heart.any():
        margin = float(th["myocardium_heart_margin_mm"])
        near = dilate(heart[view.box], ball(tuple(ctx.spacing), margin))
        frac = float((view.mask & near).sum()) / float(view.mask.sum())
        if frac < 0.5:
            return None
        where = f"{100 * frac:.0f}% within {margin:.0f} mm of the heart mask"
    else:
        where = "no heart mask"
    return ("myocardium (shape)",
            f"{view.volume_ml:.0f} ml, SUVmax {view.suv_max:.1f}, a hollow wall round a "
            f"colder cavity ({100 * hollow:.0f}% of its outline), {where}: myocardial uptake")


def _hollowness(mask: np.ndarray) -> float:
    """Largest fraction of a region's filled outline that is hole, over the three orientations
    (a ventricular wall is a ring round its cavity in some plane)."""
    best = 0.0
    n = float(mask.sum())
    for axis in range(3):
        m = np.moveaxis(mask, axis, 0)
        filled = np.stack([ndi.binary_fill_holes(s) for s in m])
        best = max(best, float(filled.sum() - n) / max(float(filled.sum()), 1.0))
    return best


def _brown_fat(view: _Region, ctx: Context) -> tuple[str, str] | None:
    th = ctx.th
    s = view.suv
    core = view.mask & (s >= th["brown_fat_core_fraction"] * view.suv_max)
    h = ctx.hu[view.box][core & ~ctx.mask("lung")[view.box]]
    h = h[h > -500]  # air / lung voxels say nothing about fat vs soft tissue
    if h.size < 3 or float(np.median(h)) >= th["brown_fat_hu_max"]:
        return None
    return ("brown fat",
            f"SUVmax {view.suv_max:.1f}, core of fat density (median {np.median(h):.0f} HU < "
            f"{th['brown_fat_hu_max']:.0f}){_where_fat(view, ctx)}: brown adipose tissue")


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
    th = ctx.th
    oes = ctx.mask("esophagus")
    if not oes.any() or view.suv_max > th["oesophagus_max_suv"]:
        return None
    margin = float(th["oesophagus_margin_mm"])
    near = dilate(oes[view.box], ball(tuple(ctx.spacing), margin))
    frac = float((view.mask & near).sum()) / float(view.mask.sum())
    if frac < 0.5:
        return None
    ext = view.extents_mm()
    if ext[0] < th["oesophagus_min_length_mm"] \
            or ext[0] < th["oesophagus_min_elongation"] * max(ext[1], ext[2]):
        return None
    return ("oesophagus",
            f"SUVmax {view.suv_max:.1f} <= {th['oesophagus_max_suv']}, {100 * frac:.0f}% along "
            f"the oesophagus over {ext[0]:.0f} mm (in-plane {max(ext[1], ext[2]):.0f} mm): "
            "linear oesophageal uptake")


def _thymus(view: _Region, ctx: Context) -> tuple[str, str] | None:
    th = ctx.th
    sternum = ctx.mask("sternum")
    if not sternum.any() or view.suv_max > th["thymus_max_suv"] or view.volume_ml < 1.0:
        return None
    if view.fraction_in(ctx.mask("lung")) > 0.3:
        return None
    axes = view.axes_mm()
    ratio = axes[0] / max(axes[2], 1e-6)
    if ratio > th["thymus_max_axis_ratio"]:
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
            f"SUVmax {view.suv_max:.1f} <= {th['thymus_max_suv']}, flat (axes "
            f"{axes[0]:.0f}/{axes[2]:.0f} mm, ratio {ratio:.2f} <= "
            f"{th['thymus_max_axis_ratio']}), {d:.0f} mm behind the sternum in front of the "
            "trachea: thymic uptake")


def _muscle(view: _Region, ctx: Context) -> tuple[str, str] | None:
    present = [m for m in MUSCLES if m in ctx.anatomy.names.values()]
    if not present:
        return None
    frac = view.fraction_in(ctx.mask(*present))
    if frac < 0.5:
        return None
    return ("muscle", f"SUVmax {view.suv_max:.1f}, {100 * frac:.0f}% inside a muscle mask: "
                      "muscular uptake")


def _marrow_like(view: _Region) -> bool:
    ctx = view.ctx
    spine = ctx.mask("spine")
    if not spine.any() or view.suv_max > ctx.th["marrow_max_suv"]:
        return False
    near = dilate(spine[view.box], ball(tuple(ctx.spacing), 3.0))
    return float((view.mask & near).sum()) / float(view.mask.sum()) >= 0.6


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


def _focal_soft_tissue(view: _Region, seeds: list, ctx: Context) -> np.ndarray:
    """Soft-tissue parts of a brown-fat region that are node-shaped and hold a seed."""
    th = ctx.th
    soft = view.mask & (ctx.hu[view.box] >= th["node_soft_tissue_hu"]) & (ctx.hu[view.box] < 150)
    # An erosion by 1.5 mm removes partial-volume rims and the thin muscle edges beside fat.
    core = erode(soft, ball(tuple(ctx.spacing), 1.5))
    lab, n = ndi.label(core, structure=_FULL)
    out = np.zeros(view.mask.shape, dtype=bool)
    if n == 0:
        return out
    off = np.array([s.start for s in view.box])
    seed_pts = [tuple(np.asarray(c.kji) - off) for c in seeds]
    for cid, sl in enumerate(ndi.find_objects(lab), start=1):
        comp = lab == cid
        part = dilate(comp, ball(tuple(ctx.spacing), 1.5)) & soft
        vol = float(part.sum()) * ctx.voxel_ml
        if vol < th["min_volume_ml"]:
            continue
        ext = (np.array([s.stop - s.start for s in sl]) + 2) * np.asarray(ctx.spacing)
        if ext.max() > th["node_max_elongation"] * max(ext.min(), 1e-6) \
                or ext.max() > th["node_max_diameter_mm"]:
            continue
        # Focal: a seed (local PET maximum) within 4 mm of it.
        near = dilate(part, ball(tuple(ctx.spacing), 4.0))
        if any(near[q] for q in seed_pts if all(0 <= a < b for a, b in zip(q, near.shape,
                                                                             strict=True))):
            if float(ctx.suv[view.box][part].max()) >= ctx.threshold:
                out |= part
    return out


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

def organ_uptake(organ: np.ndarray, anatomy, names: tuple[str, ...],
                 ctx: Context) -> list[SuppressedUptake]:
    """Supra-threshold uptake inside organs that cannot seed lesions, one record per
    connected focus of at least ``min_volume_ml`` (on the SUVpeak-scale smoothed SUV, so
    noise specks are not listed)."""
    hot = organ & (ctx.smooth >= ctx.threshold)
    if not hot.any():
        return []
    lab, n = ndi.label(hot, structure=_FULL)
    out = []
    names_present = [nm for nm in names if (ctx.mask(nm) & hot).any()]
    for cid, sl in enumerate(ndi.find_objects(lab), start=1):
        comp = lab[sl] == cid
        vol = float(comp.sum()) * ctx.voxel_ml
        if vol < ctx.th["min_volume_ml"]:
            continue
        where = next((nm for nm in names_present
                      if (ctx.mask(nm)[sl] & comp).sum() * 2 >= comp.sum()),
                     names_present[0] if names_present else "organ")
        kji = np.argwhere(comp).mean(axis=0) + np.array([s.start for s in sl])
        smax = float(ctx.suv[sl][comp].max())
        out.append(SuppressedUptake(
            centroid_mm=tuple(float(v) for v in index_to_mm(ctx.ct, kji)), suv_max=smax,
            volume_ml=vol, structure=where,
            reason=f"SUVmax {smax:.1f}, {vol:.1f} ml inside the {where} mask: normal organ "
                   "uptake (organs with physiological FDG uptake do not seed lesions)"))
    return out
