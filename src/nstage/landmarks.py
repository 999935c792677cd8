"""Landmarks for IASLC station assignment, from any :class:`~nstage.anatomy.Anatomy`.

All positions are mm in LPS (+x patient left, +y posterior, +z superior).
Every landmark records how it was found (``method``: ``"measured"`` from a
segmentation, or ``"approximated"`` from another landmark and a typical
distance) so station reasons can say when a boundary is uncertain.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Literal

from nstage.geometry import Point
from nstage.morphology import bounding_box
from nstage.thresholds import resolve

Method = Literal["measured", "approximated"]

# Landmark names (keys of Landmarks.points). Levels are axial z (mm).
CARINA = "carina"  # point: where the airway divides into the two main bronchi
TRACHEA_TOP = "trachea_top"  # level: most cranial trachea slice in view (cricoid proxy)
AORTIC_ARCH_TOP = "aortic_arch_top"  # level: superior border of the aortic arch
AORTIC_ARCH_BOTTOM = "aortic_arch_bottom"  # level: inferior border of the arch
LEFT_PA_TOP = "left_pulmonary_artery_top"  # level: upper rim of the left main pulmonary artery
BRACHIOCEPHALIC_CROSSING = "brachiocephalic_crossing"  # level: caudal margin of the left brachiocephalic vein crossing the trachea (2R/4R)
AZYGOS_BOTTOM = "azygos_arch_bottom"  # level: lower border of the azygos arch (4R/10R)
MANUBRIUM_TOP = "manubrium_top"  # level: upper border of the manubrium (station 1 lower limit)
CLAVICLE_TOP = "clavicle_top"  # level: highest point of the clavicles
LUNG_APEX_LEFT = "lung_apex_left"
LUNG_APEX_RIGHT = "lung_apex_right"
DIAPHRAGM_LEFT = "diaphragm_left"  # level: dome of the diaphragm (lowest lung base proxy)
DIAPHRAGM_RIGHT = "diaphragm_right"
STATION7_BOTTOM = "station7_bottom"  # level: lower border of bronchus intermedius / upper border of left lower-lobe bronchus
INFERIOR_PULMONARY_VEIN = "inferior_pulmonary_vein"  # level: station 9 upper limit
HILUM_LEFT = "hilum_left"  # point: where the left main bronchus enters the lung
HILUM_RIGHT = "hilum_right"
PULMONARY_BIFURCATION = "pulmonary_bifurcation"  # level (point where measured): the pulmonary trunk divides into the right and left PA
SVC_TOP = "superior_vena_cava_top"  # level: upper end of the SVC, where the brachiocephalic veins join
VERTEBRA_PREFIX = "vertebra_"  # + "T4" etc.: point at the centre of that vertebral body

# Segmented classes each landmark is measured from (groups expand, see anatomy.base.GROUPS), so
# a report can say which backend measured it when anatomy comes from several (see
# :func:`source_backend`).
LANDMARK_CLASSES: dict[str, tuple[str, ...]] = {
    CARINA: ("trachea", "airway", "lung_airways"),
    TRACHEA_TOP: ("trachea",),
    AORTIC_ARCH_TOP: ("aorta",),
    AORTIC_ARCH_BOTTOM: ("aorta",),
    LEFT_PA_TOP: ("pulmonary_artery",),
    PULMONARY_BIFURCATION: ("pulmonary_artery", "pul_bifurcation"),
    BRACHIOCEPHALIC_CROSSING: ("brachiocephalic_vein_left",),
    SVC_TOP: ("superior_vena_cava",),
    INFERIOR_PULMONARY_VEIN: ("pulmonary_vein",),
    MANUBRIUM_TOP: ("sternum",),
    CLAVICLE_TOP: ("clavicles",),
    LUNG_APEX_LEFT: ("lung_left",),
    LUNG_APEX_RIGHT: ("lung_right",),
    DIAPHRAGM_LEFT: ("lung_left",),
    DIAPHRAGM_RIGHT: ("lung_right",),
    STATION7_BOTTOM: ("main_bronchus_left",),
    HILUM_LEFT: ("main_bronchus_left",),
    HILUM_RIGHT: ("main_bronchus_right",),
}



@dataclass(frozen=True)
class Landmark:
    """One landmark.

    Attributes
    ----------
    name : str
    point_mm : (x, y, z) or None
        Position in mm LPS where a point is meaningful.
    z_mm : float
        Axial level in mm (superior positive); for points, ``point_mm[2]``.
    method : {"measured", "approximated"}
    source : str
        How it was found, in words a reason can quote.
    """

    name: str
    z_mm: float
    method: Method
    source: str
    point_mm: Point | None = None

    @property
    def approximated(self) -> bool:
        return self.method == "approximated"


@dataclass(frozen=True)
class TracheaLevel:
    """Cross-section of the trachea at one axial level (mm LPS).

    ``left_border_x_mm`` is the x of the trachea's LEFT lateral wall (the larger x,
    since +x is the patient's left); it splits 2R/4R from 2L/4L. ``approximated`` marks a
    level made up from the carina and a typical tracheal width (no trachea segmented).
    """

    z_mm: float
    centre_x_mm: float
    centre_y_mm: float
    left_border_x_mm: float
    right_border_x_mm: float
    anterior_y_mm: float
    posterior_y_mm: float
    approximated: bool = False


@dataclass(frozen=True)
class LungExtent:
    """Lateral extent of both lungs together at one axial level (mm LPS)."""

    z_mm: float
    right_x_mm: float  # the right lung's lateral wall (smallest x)
    left_x_mm: float  # the left lung's lateral wall (largest x)


@dataclass
class Landmarks:
    """The anatomical frame of one study: every landmark the station rules use.

    Built once per study by :func:`find` (measured) and :func:`complete` (the rest
    approximated, each with its rule); read-only afterwards. Station rules read positions
    only from here.

    Attributes
    ----------
    points : dict of str to Landmark
        Keyed by the names defined in this module.
    trachea : list of TracheaLevel
        From the most cranial level down to the carina, ordered by z descending.
    bronchi : dict of str to list of (x, y, z)
        ``"left"``/``"right"`` main-bronchus centreline points from the carina outwards.
    lung_volume_ml : dict of str to float
        ``{"left": ..., "right": ...}``.
    lung_extent : list of LungExtent
        Lateral walls of the lungs per axial level with lung, z descending.
    notes : list of str
        What could not be found.
    carina_below_view : bool
        The trachea reaches the lower edge of the image: the carina lies below it and is not
        approximated.
    """

    points: dict[str, Landmark] = field(default_factory=dict)
    trachea: list[TracheaLevel] = field(default_factory=list)
    bronchi: dict[str, list[Point]] = field(default_factory=dict)
    lung_volume_ml: dict[str, float] = field(default_factory=dict)
    lung_extent: list[LungExtent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    carina_below_view: bool = False

    def get(self, name: str) -> Landmark | None:
        return self.points.get(name)

    def z(self, name: str) -> float | None:
        lm = self.points.get(name)
        return None if lm is None else lm.z_mm

    def trachea_at(self, z_mm: float) -> TracheaLevel | None:
        """Trachea cross-section nearest to level ``z_mm`` (the lowest level below the carina)."""
        if not self.trachea:
            return None
        return min(self.trachea, key=lambda t: abs(t.z_mm - z_mm))

    def midline_x(self, z_mm: float) -> float:
        """x (mm) of the patient's midline at level ``z_mm``.

        Above the carina the centre of the nearest trachea level; below it the carina
        (the subcarinal space and the oesophagus lie under it); without either, half-way
        between the lungs' lateral walls, else 0.
        """
        carina = self.points.get(CARINA)
        below = carina is not None and carina.point_mm is not None and z_mm < carina.z_mm
        level = self.trachea_at(z_mm)
        if level is not None and not below:
            return level.centre_x_mm
        if carina is not None and carina.point_mm is not None:
            return float(carina.point_mm[0])
        if self.lung_extent:
            e = min(self.lung_extent, key=lambda e: abs(e.z_mm - z_mm))
            return 0.5 * (e.right_x_mm + e.left_x_mm)
        return 0.0

    def lung_walls_at(self, z_mm: float) -> tuple[float, float] | None:
        """(right, left) lateral lung walls x (mm) at level ``z_mm``; None above or below the
        lungs (more than 5 mm from any level with lung)."""
        if not self.lung_extent:
            return None
        e = min(self.lung_extent, key=lambda e: abs(e.z_mm - z_mm))
        if abs(e.z_mm - z_mm) > 5.0:
            return None
        return e.right_x_mm, e.left_x_mm

    def table(self) -> list[dict]:
        """Every landmark as plain JSON values (name, z, point, method, source), by name."""
        rows = []
        for name, lm in sorted(self.points.items()):
            rows.append({
                "name": name, "z_mm": round(lm.z_mm, 1),
                "point_mm": None if lm.point_mm is None else [round(v, 1) for v in lm.point_mm],
                "method": lm.method, "source": lm.source,
            })
        return rows


def airway_bifurcation(mask, spacing_zyx, *, start_k: int | None = None,
                       max_k: int | None = None, min_area_mm2: float = 20.0,
                       min_branch_mm: float = 6.0):
    """Most cranial axial slice where an airway mask divides into two branches.

    Follows the airway slice by slice from ``start_k`` (default: its top slice) downward;
    the trachea is the section overlapping the previous one (within 8 mm); the first slice
    where two sections of at least ``min_area_mm2`` both continue it, each still present
    ``min_branch_mm`` further down, is the bifurcation.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        Airway (trachea and bronchi), array order ``[z, y, x]`` of a canonical image.
    spacing_zyx : tuple of float
        Voxel spacing in mm (z, y, x).
    start_k, max_k : int, optional
        Slice to start from, and the highest slice allowed for the split (e.g. below the
        lung apices, so laryngeal recesses are not taken for the carina).

    Returns
    -------
    (k, comp_a, comp_b) or None
        The slice index and the two branch sections (2D boolean masks) there.
    """
    import numpy as np
    from scipy import ndimage as ndi

    ks = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]
    if ks.size < 2:
        return None
    top = int(ks[-1]) if start_k is None else int(min(start_k, ks[-1]))
    px = spacing_zyx[1] * spacing_zyx[2]
    r = max(1, int(round(8.0 / min(spacing_zyx[1], spacing_zyx[2]))))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy ** 2 + xx ** 2) <= r * r
    min_vox = max(1, int(np.ceil(min_area_mm2 / px)))
    # Slices thicker than min_branch_mm cannot show a branch continuing; then none is asked.
    depth = int(min_branch_mm // spacing_zyx[0])

    def sections(k: int):
        lab, n = ndi.label(mask[k])
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        return [lab == c for c in range(1, n + 1) if counts[c] >= min_vox]

    secs = sections(top)
    if not secs:
        return None
    prev = max(secs, key=lambda s: s.sum())
    for k in range(top - 1, -1, -1):
        near = ndi.binary_dilation(prev, structure=disk)
        cont = [s for s in sections(k) if (s & near).any()]
        if not cont:
            return None
        if len(cont) >= 2 and (max_k is None or k <= max_k):
            cont.sort(key=lambda s: -s.sum())
            a, b = cont[0], cont[1]
            if depth == 0 or (_branch_persists(mask, k, a, depth)
                              and _branch_persists(mask, k, b, depth)):
                return k, a, b
        prev = np.logical_or.reduce(cont)
    return None


def _branch_persists(mask, k: int, section, depth: int) -> bool:
    """True when the branch starting at ``section`` on slice k reaches ``depth`` slices down."""
    import numpy as np
    from scipy import ndimage as ndi

    lo = max(0, k - depth)
    if lo == k:
        return True
    sub = mask[lo:k + 1].copy()
    sub[-1] = section
    lab, _ = ndi.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    ids = set(lab[-1][section].tolist()) - {0}
    if not ids:
        return False
    return bool(any((lab[0] == i).any() for i in ids)) or k - depth < 0


def _lm(name, z, method, source, point=None) -> Landmark:
    pt = None if point is None else tuple(float(v) for v in point)
    return Landmark(name=name, z_mm=float(z), method=method, source=source, point_mm=pt)


def find(anatomy, thresholds: dict | None = None) -> Landmarks:
    """The anatomical frame of a study: every landmark the station rules use.

    Measures what the anatomy shows (classical backend: trachea, main bronchi and airway;
    TotalSegmentator: trachea and vessels, the carina at the lowest trachea level; phantom
    truth), then :func:`complete` approximates every missing landmark from measured ones with
    a typical distance (``resources/thresholds.json``, section ``landmarks``), flagged
    ``method="approximated"`` with its rule.

    Parameters
    ----------
    anatomy : nstage.anatomy.Anatomy
        Labels on a canonical grid.
    thresholds : dict, optional
        Overrides of ``resources/thresholds.json``.

    Returns
    -------
    Landmarks
        Positions in mm LPS (+x patient left, +y posterior, +z superior).
    """
    th = resolve(thresholds)["landmarks"]
    ctx = _Context(anatomy)
    out = Landmarks()
    _lungs(ctx, out)
    carina = _carina(ctx, out)
    _trachea_levels(ctx, out, carina, th)
    _bronchi(ctx, out, carina)
    if carina is not None:
        _aortic_arch(ctx, out, carina, th)
        _vessels(ctx, out, carina, th)
        _station7_bottom(out, carina, th)
    _neck_levels(ctx, out)
    _vertebrae(ctx, out)
    return complete(out, thresholds)


class _Context:
    """The anatomy with its grid helpers, shared by the landmark finders."""

    def __init__(self, anatomy) -> None:
        from nstage.geometry import spacing_zyx, z_of_slices

        self.anatomy = anatomy
        self.ref = anatomy.reference
        self.sp = spacing_zyx(self.ref)
        self.zs = z_of_slices(self.ref)
        self.names = set(anatomy.names.values())
        self.lungs = {s: anatomy.mask(f"lung_{s}") for s in ("left", "right")}

    def to_mm(self, kji):
        import numpy as np

        from nstage.geometry import index_to_mm

        return index_to_mm(self.ref, np.asarray(kji, dtype=float))


def _z_range(mask):
    """Lowest and highest slice index holding ``mask`` (None, None when empty)."""
    import numpy as np

    ks = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]
    return (None, None) if ks.size == 0 else (int(ks[0]), int(ks[-1]))


def _lungs(ctx: _Context, out: Landmarks) -> None:
    """Lung volumes, apices and diaphragm domes."""
    import numpy as np
    from scipy import ndimage as ndi

    sp, zs = ctx.sp, ctx.zs
    out.lung_volume_ml = {s: ctx.anatomy.volume_ml(f"lung_{s}") for s in ("left", "right")}
    cols = (ctx.lungs["left"] | ctx.lungs["right"]).any(axis=1)  # [z, x]
    x_mm = ctx.to_mm(np.stack([np.zeros(cols.shape[1]), np.zeros(cols.shape[1]),
                               np.arange(cols.shape[1])], axis=-1))[:, 0]
    for k in np.flatnonzero(cols.any(axis=1))[::-1]:
        ii = np.flatnonzero(cols[k])
        out.lung_extent.append(LungExtent(float(zs[k]), float(x_mm[ii[0]]),
                                          float(x_mm[ii[-1]])))
    # Lung lying on the heart ends at the heart's upper surface, well above the diaphragm.
    heart = ctx.anatomy.mask("heart").any(axis=0)
    for side, m in ctx.lungs.items():
        k0, k1 = _z_range(m)
        if k1 is None:
            out.notes.append(f"{side} lung not found")
            continue
        jj, ii = np.nonzero(m[k1])
        apex = ctx.to_mm([k1, jj.mean(), ii.mean()])
        name = LUNG_APEX_LEFT if side == "left" else LUNG_APEX_RIGHT
        edge = " (top of the image: the apex may lie higher)" if k1 == m.shape[0] - 1 else ""
        out.points[name] = _lm(name, apex[2], "measured", f"top of the {side} lung{edge}", apex)
        # Dome: the lung base under the lung's central footprint (away from the costophrenic
        # recesses and the thin apex) where it rests on the diaphragm, not on the heart, i.e.
        # the 75th percentile of the lowest lung slice per (y, x) column.
        proj = m.any(axis=0)
        er = max(1, int(round(15.0 / min(sp[1], sp[2]))))
        core = ndi.binary_erosion(proj, iterations=er) if proj.sum() > 50 else proj
        if not core.any():
            core = proj
        if (core & ~heart).sum() > 50:
            core = core & ~heart
        low = np.argmax(m, axis=0)[core]
        k_dome = float(np.percentile(low, 75))
        zd = float(np.interp(k_dome, np.arange(len(zs)), zs))
        name = DIAPHRAGM_LEFT if side == "left" else DIAPHRAGM_RIGHT
        edge = " (bottom of the image: the dome may lie lower)" if k0 == 0 else ""
        out.points[name] = _lm(name, zd, "measured", f"dome under the {side} lung, where it "
                               f"rests on the diaphragm (not over the heart){edge}")


def _carina(ctx: _Context, out: Landmarks):
    """The carina point (mm LPS) where the airway divides, or None."""
    import numpy as np

    anatomy, sp = ctx.anatomy, ctx.sp
    trachea = anatomy.mask("trachea")
    airway = anatomy.mask("airway")
    if "lung_airways" in ctx.names:
        airway |= anatomy.mask("lung_airways")
    apex_k = None
    apex_ks = [_z_range(m)[1] for m in ctx.lungs.values() if _z_range(m)[1] is not None]
    if apex_ks:
        apex_k = min(apex_ks) - int(round(20.0 / sp[0]))
    carina = None
    split = None
    mbl, mbr = anatomy.mask("main_bronchus_left"), anatomy.mask("main_bronchus_right")
    both = np.nonzero(mbl.any(axis=(1, 2)) & mbr.any(axis=(1, 2)))[0]
    if both.size and anatomy.source_of("main_bronchus_left") == "classical":
        # The classical backend starts its main bronchi at the split it found: the carina is
        # the most cranial level holding both (other sources may start bronchi higher).
        k = int(both[-1])
        split = (k, mbl[k], mbr[k])
    elif (airway & ~trachea).any():
        _, t1 = _z_range(trachea)
        split = airway_bifurcation(airway, sp, start_k=t1, max_k=apex_k)
    if split is not None:
        k, a, b = split
        ca = [np.nonzero(c) for c in (a, b)]
        pj = 0.5 * (ca[0][0].mean() + ca[1][0].mean())
        pi = 0.5 * (ca[0][1].mean() + ca[1][1].mean())
        carina = ctx.to_mm([k, pj, pi])
        out.points[CARINA] = _lm(CARINA, carina[2], "measured",
                                 "most cranial level where the airway divides into two branches",
                                 carina)
    elif trachea.any() and _z_range(trachea)[0] == 0:
        out.carina_below_view = True
        out.notes.append("carina not in view: the trachea reaches the lower edge of the image")
    elif trachea.any():
        k0, _ = _z_range(trachea)
        jj, ii = np.nonzero(trachea[k0])
        carina = ctx.to_mm([k0, jj.mean(), ii.mean()])
        out.points[CARINA] = _lm(CARINA, carina[2], "measured",
                                 "centre of the lowest trachea level (no bronchi segmented)",
                                 carina)
    else:
        out.notes.append("carina not found: no trachea segmented")
    return carina


def _trachea_levels(ctx: _Context, out: Landmarks, carina, th: dict) -> None:
    """Trachea cross-sections from the top down to the carina, and the trachea top."""
    import numpy as np

    trachea = ctx.anatomy.mask("trachea")
    if not trachea.any():
        return
    k0, k1 = _z_range(trachea)
    k_stop = k0 if carina is None else max(k0, int(np.floor(mm_to_k(ctx.ref, carina[2]))))
    for k in range(k1, k_stop - 1, -1):
        jj, ii = np.nonzero(trachea[k])
        if jj.size == 0:
            continue
        c = ctx.to_mm([k, jj.mean(), ii.mean()])
        lo = ctx.to_mm([k, jj.min() - 0.5, ii.min() - 0.5])
        hi = ctx.to_mm([k, jj.max() + 0.5, ii.max() + 0.5])
        out.trachea.append(TracheaLevel(z_mm=float(c[2]), centre_x_mm=float(c[0]),
                                        centre_y_mm=float(c[1]),
                                        left_border_x_mm=float(hi[0]),
                                        right_border_x_mm=float(lo[0]),
                                        anterior_y_mm=float(lo[1]),
                                        posterior_y_mm=float(hi[1])))
    if carina is not None:
        out.trachea = _borders_on_the_tube(out.trachea, carina[2], th["trachea_flare_mm"],
                                           th["trachea_border_tol_mm"])
    top = out.trachea[0] if out.trachea else None
    if top is not None:
        edge = " (top of the image)" if k1 == trachea.shape[0] - 1 else ""
        out.points[TRACHEA_TOP] = _lm(TRACHEA_TOP, top.z_mm, "measured",
                                      f"most cranial trachea level in view{edge}",
                                      (top.centre_x_mm, top.centre_y_mm, top.z_mm))


def _borders_on_the_tube(levels: list[TracheaLevel], carina_z: float, flare_mm: float,
                         tol_mm: float) -> list[TracheaLevel]:
    """Tracheal borders just above the carina held to the tube above them.

    Within ``flare_mm`` above the carina the airway section widens into the origins of
    the main bronchi (and thick slices blur them into it); a lateral border there is the
    trachea's wall only while it stays within ``tol_mm`` of the border on the levels above
    (median of the levels ``flare_mm`` to twice that above the carina, where the trachea is a
    plain tube). Left border: +x, the patient's left.
    """
    import numpy as np

    ref = [t for t in levels if flare_mm < t.z_mm - carina_z <= 2 * flare_mm]
    if not ref:
        return levels
    left = float(np.median([t.left_border_x_mm for t in ref])) + tol_mm
    right = float(np.median([t.right_border_x_mm for t in ref])) - tol_mm
    out = []
    for t in levels:
        if t.z_mm - carina_z <= flare_mm:
            lb, rb = min(t.left_border_x_mm, left), max(t.right_border_x_mm, right)
            clipped = (lb, rb) != (t.left_border_x_mm, t.right_border_x_mm)
            if clipped and lb > rb:
                t = replace(t, left_border_x_mm=lb, right_border_x_mm=rb,
                            centre_x_mm=0.5 * (lb + rb))
        out.append(t)
    return out


def _bronchi(ctx: _Context, out: Landmarks, carina) -> None:
    """Main-bronchus centrelines and the hila (their distal ends)."""
    import numpy as np

    for side in ("left", "right"):
        m = ctx.anatomy.mask(f"main_bronchus_{side}")
        name = HILUM_LEFT if side == "left" else HILUM_RIGHT
        if m.any():
            k0, k1 = _z_range(m)
            pts = []
            for k in range(k1, k0 - 1, -1):
                jj, ii = np.nonzero(m[k])
                if jj.size:
                    pts.append(tuple(float(v) for v in ctx.to_mm([k, jj.mean(), ii.mean()])))
            out.bronchi[side] = pts
            kk, jj, ii = np.nonzero(m)
            p = ctx.to_mm(np.stack([kk, jj, ii], axis=1))
            if carina is not None:
                d = np.linalg.norm(p - carina, axis=1)
                far = p[d >= np.percentile(d, 90)].mean(axis=0)
            else:
                far = np.array(pts[-1])
            out.points[name] = _lm(name, far[2], "measured",
                                   f"distal end of the {side} main bronchus", far)


def _aortic_arch(ctx: _Context, out: Landmarks, carina, th: dict) -> None:
    """Aortic arch top and bottom from the aorta mask (:func:`arch_levels`)."""
    aorta = ctx.anatomy.mask("aorta")
    if not aorta.any():
        return
    zs = ctx.zs
    top, bottom = arch_levels(aorta, ctx.sp, min_section_mm2=th["arch_min_section_mm2"],
                              persist_mm=th["arch_persist_mm"], speck_ml=th["vessel_speck_ml"])
    if top is None:
        out.notes.append(f"the segmented aorta holds only specks (pieces < "
                         f"{th['vessel_speck_ml']} ml)")
        return
    if top <= mm_to_k(ctx.ref, carina[2]):
        out.notes.append("the segmented aorta does not reach above the carina")
        return
    if top == aorta.shape[0] - 1:
        # The arch rises above the image: its top is not in view, only bounded from below.
        typical = th["arch_bottom_above_carina_mm"] + th["arch_height_mm"]
        z = max(float(zs[top]), carina[2] + typical)
        out.points[AORTIC_ARCH_TOP] = _lm(
            AORTIC_ARCH_TOP, z, "approximated",
            f"the aorta reaches the top of the image ({zs[top]:.1f} mm): arch top above it, "
            f"taken as carina + {typical:.0f} mm or the top of the image, whichever is higher")
    else:
        out.points[AORTIC_ARCH_TOP] = _lm(AORTIC_ARCH_TOP, zs[top], "measured",
                                          "highest level of the segmented aorta")
    if bottom is not None:
        out.points[AORTIC_ARCH_BOTTOM] = _lm(
            AORTIC_ARCH_BOTTOM, zs[bottom], "measured",
            "highest level below the arch where the aorta shows two separate sections "
            "(ascending and descending aorta)")
    else:
        out.notes.append("no level below the top of the segmented aorta shows it as two "
                         "separate sections: arch bottom not measured")


def _without_specks(mask, spacing_zyx, min_ml: float):
    """``mask`` without its 3D pieces (26-connected) smaller than ``min_ml``; labelled within
    the mask's bounding box, which is all that costs time. Larger pieces all stay: a vessel
    segmentation may break into several (an ascending aorta apart from the arch)."""
    import numpy as np
    from scipy import ndimage as ndi

    box = bounding_box(mask)
    if box[0].stop == 0:
        return mask
    lab, n = ndi.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    min_vox = min_ml * 1000.0 / float(np.prod(spacing_zyx))
    keep = np.bincount(lab.ravel()) >= min_vox
    keep[0] = False
    out = np.zeros_like(mask, dtype=bool)
    out[box] = keep[lab]
    return out


def arch_levels(aorta, spacing_zyx, *, min_section_mm2: float | None = None,
                persist_mm: float | None = None,
                speck_ml: float | None = None) -> tuple[int | None, int | None]:
    """Slices of the aortic arch's top and bottom in an aorta mask.

    The top is the highest slice of the aorta without its specks (3D pieces under
    ``speck_ml``). Going down from there, the bottom is the first slice where the
    aorta shows two separate sections (ascending and descending aorta) of at least
    ``min_section_mm2`` each that do not join again within ``persist_mm`` below: the arch's
    lower border (Rusch et al. 2009: station 5 lies below it, station 6 between the two borders).

    Parameters
    ----------
    aorta : numpy.ndarray of bool
        Aorta mask, array order ``[z, y, x]`` of a canonical image (k grows superior).
    spacing_zyx : tuple of float
        Voxel spacing in mm (z, y, x).
    min_section_mm2 : float
        Smallest section counted as a part of the aorta (mm^2); the ascending and descending
        aorta are at least 2 cm wide (> 300 mm^2), segmentation specks far smaller.
    persist_mm : float
        How far below the two sections must not join again (mm).
    speck_ml : float
        3D pieces smaller than this (ml) are dropped first.
    (Each defaults to the packaged ``resources/thresholds.json`` section ``landmarks``.)

    Returns
    -------
    (top_k, bottom_k)
        Slice indices, None where not found. ``bottom_k`` is None when the top slice itself
        already shows the two sections (the arch lies above the image).
    """
    import numpy as np
    from scipy import ndimage as ndi

    th = resolve(None)["landmarks"]
    min_section_mm2 = th["arch_min_section_mm2"] if min_section_mm2 is None else min_section_mm2
    persist_mm = th["arch_persist_mm"] if persist_mm is None else persist_mm
    speck_ml = th["vessel_speck_ml"] if speck_ml is None else speck_ml
    aorta = _without_specks(np.asarray(aorta, dtype=bool), spacing_zyx, speck_ml)
    box = bounding_box(aorta)
    if box[0].stop == 0:
        return None, None
    aorta = aorta[:, box[1], box[2]]  # slice indices unchanged
    k0, k1 = _z_range(aorta)
    min_vox = max(1, int(np.ceil(min_section_mm2 / (spacing_zyx[1] * spacing_zyx[2]))))
    depth = max(1, int(round(persist_mm / spacing_zyx[0])))
    for k in range(k1, k0 - 1, -1):
        lab, n = ndi.label(aorta[k])
        if n < 2:
            continue
        counts = np.bincount(lab.ravel())[1:]
        big = [1 + int(c) for c in np.argsort(-counts)[:2] if counts[c] >= min_vox]
        if len(big) < 2:
            continue
        if _stay_separate(aorta, k, lab == big[0], lab == big[1], depth):
            return k1, (None if k == k1 else k)
    return k1, None


def _stay_separate(mask, k: int, a, b, depth: int) -> bool:
    """True when sections ``a`` and ``b`` of slice k do not join again within ``depth`` slices
    below (within ``mask``): two vessels, not a notch in one section's outline, nor a branch
    stub rising from the section below."""
    import numpy as np
    from scipy import ndimage as ndi

    lo = max(0, k - depth)
    sub = mask[lo:k + 1].copy()
    sub[-1] = a | b
    lab, _ = ndi.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    return not (set(lab[-1][a].tolist()) & set(lab[-1][b].tolist()))


def _vessels(ctx: _Context, out: Landmarks, carina, th: dict) -> None:
    """Pulmonary artery (left PA top, bifurcation), brachiocephalic crossing, SVC top,
    inferior pulmonary vein."""
    _pulmonary_artery(ctx, out, carina, th)
    _brachiocephalic_crossing(ctx, out)
    _superior_vena_cava(ctx, out)
    pv = ctx.anatomy.mask("pulmonary_vein")
    if pv.any():
        k0, _ = _z_range(pv)
        out.points[INFERIOR_PULMONARY_VEIN] = _lm(INFERIOR_PULMONARY_VEIN, ctx.zs[k0], "measured",
                                                  "lowest level of the pulmonary veins")


def _pulmonary_artery(ctx: _Context, out: Landmarks, carina, th: dict) -> None:
    """Left PA top and the pulmonary bifurcation from ``pulmonary_artery`` (and
    TotalSegmentator's ``pul_bifurcation`` landmark mask when given)."""
    import numpy as np

    anatomy, zs = ctx.anatomy, ctx.zs
    pa = anatomy.mask("pulmonary_artery")
    if not pa.any():
        return
    pa = _without_specks(pa, ctx.sp, th["vessel_speck_ml"])
    bif = anatomy.mask("pul_bifurcation")
    if bif.any():
        kk, jj, ii = np.nonzero(bif)
        point = ctx.to_mm([kk.mean(), jj.mean(), ii.mean()])
        out.points[PULMONARY_BIFURCATION] = _lm(
            PULMONARY_BIFURCATION, point[2], "measured",
            "centre of the segmented pulmonary bifurcation (pul_bifurcation)", point)
        ref_x = float(point[0])
    else:
        ref_x = float(carina[0])
        k = pa_bifurcation_level(pa)
        if k is not None and k < pa.shape[0] - 1:
            out.points[PULMONARY_BIFURCATION] = _lm(
                PULMONARY_BIFURCATION, zs[k], "measured",
                "level of the largest axial section of the pulmonary artery (trunk dividing "
                "into the right and left PA)")
    k_top = left_pa_top(pa, mm_to_i(ctx.ref, ref_x))
    if k_top is None:
        return
    if k_top == pa.shape[0] - 1:
        out.notes.append("the pulmonary artery reaches the top of the image: left PA top not "
                         "measured")
        return
    side = "the pulmonary bifurcation" if bif.any() else "the carina"
    out.points[LEFT_PA_TOP] = _lm(LEFT_PA_TOP, zs[k_top], "measured",
                                  f"highest level of the pulmonary artery left of {side}")


def left_pa_top(pa, ref_i: float) -> int | None:
    """Highest slice holding pulmonary artery voxels left (+x, larger column) of column ``ref_i``:
    the upper rim of the left main pulmonary artery, which arches over the left main bronchus
    higher than the trunk and the right PA.

    Parameters
    ----------
    pa : numpy.ndarray of bool
        Pulmonary artery mask ``[z, y, x]`` of a canonical image.
    ref_i : float
        Fractional column of the dividing x (the bifurcation or the carina).
    """
    import numpy as np

    left = pa[:, :, int(np.floor(ref_i)) + 1:] if ref_i >= 0 else pa
    _, k1 = _z_range(left)
    return k1


def pa_bifurcation_level(pa) -> int | None:
    """Slice of the largest connected axial section of a pulmonary artery mask: where the
    trunk divides and the right PA runs horizontally towards the right hilum, trunk and both
    main branches in one piece. (Total area per slice is not used: below the bifurcation the
    lobar branches add separate sections of their own.)"""
    import numpy as np
    from scipy import ndimage as ndi

    best, best_k = 0, None
    for k in np.nonzero(pa.reshape(pa.shape[0], -1).any(axis=1))[0]:
        lab, n = ndi.label(pa[k])
        largest = int(np.bincount(lab.ravel())[1:].max()) if n else 0
        if largest > best:
            best, best_k = largest, int(k)
    return best_k


def _brachiocephalic_crossing(ctx: _Context, out: Landmarks) -> None:
    """Caudal margin of the left brachiocephalic vein where it passes in front of the trachea
    (2R/4R); approximated from the top of the SVC when only that is segmented."""
    import numpy as np

    anatomy, ref, zs = ctx.anatomy, ctx.ref, ctx.zs
    bcv = anatomy.mask("brachiocephalic_vein_left")
    if bcv.any() and out.trachea:
        xs = np.nonzero(bcv)
        i_lo = mm_to_i(ref, min(t.right_border_x_mm for t in out.trachea))
        i_hi = mm_to_i(ref, max(t.left_border_x_mm for t in out.trachea))
        over = (xs[2] >= i_lo) & (xs[2] <= i_hi)
        if over.any():
            out.points[BRACHIOCEPHALIC_CROSSING] = _lm(
                BRACHIOCEPHALIC_CROSSING, zs[xs[0][over].min()], "measured",
                "lowest level of the left brachiocephalic vein in front of the trachea")
            return
    svc = anatomy.mask("superior_vena_cava")
    _, k1 = _z_range(svc)
    if k1 is not None and k1 < svc.shape[0] - 1:
        out.points[BRACHIOCEPHALIC_CROSSING] = _lm(
            BRACHIOCEPHALIC_CROSSING, zs[k1], "approximated",
            "no left brachiocephalic vein crossing the trachea segmented: top of the superior "
            "vena cava (the left vein crosses just above where the two veins join)")


def _superior_vena_cava(ctx: _Context, out: Landmarks) -> None:
    """Top of the superior vena cava: where the brachiocephalic veins join."""
    svc = ctx.anatomy.mask("superior_vena_cava")
    _, k1 = _z_range(svc)
    if k1 is None:
        return
    if k1 == svc.shape[0] - 1:
        out.notes.append("the superior vena cava reaches the top of the image: its top not "
                         "measured")
        return
    out.points[SVC_TOP] = _lm(SVC_TOP, ctx.zs[k1], "measured",
                              "highest level of the superior vena cava (brachiocephalic veins "
                              "join)")


def _vertebrae(ctx: _Context, out: Landmarks) -> None:
    """Centre of every vertebral body segmented whole (TotalSegmentator ``vertebrae_*``)."""
    import numpy as np
    from scipy import ndimage as ndi

    anatomy = ctx.anatomy
    wanted = {v: n for v, n in anatomy.names.items() if n.startswith("vertebrae_")}
    if not wanted:
        return
    values = sorted(wanted)
    present = np.isin(anatomy.labels, values)
    if not present.any():
        return
    labels = np.where(present, anatomy.labels, 0)
    boxes = ndi.find_objects(labels, max_label=max(values))
    last = anatomy.labels.shape[0] - 1
    # Vertebrae cut by the image are left out: their centre would be wrong.
    whole = [v for v in values if boxes[v - 1] is not None
             and boxes[v - 1][0].start > 0 and boxes[v - 1][0].stop - 1 < last]
    centres = ndi.center_of_mass(present, labels, whole) if whole else []
    for v, c in zip(whole, centres, strict=True):
        name = VERTEBRA_PREFIX + wanted[v].removeprefix("vertebrae_")
        p = ctx.to_mm(c)
        out.points[name] = _lm(name, p[2], "measured",
                               f"centre of the segmented {wanted[v]}", p)


def _station7_bottom(out: Landmarks, carina, th: dict) -> None:
    """Station 7's lower border from the traced left main bronchus, when long enough."""
    min_depth = float(th["station7_min_measured_depth_mm"])
    st7 = None
    if out.bronchi.get("left"):
        hl = out.points.get(HILUM_LEFT)
        if hl is not None and not hl.approximated:
            st7 = hl.z_mm
    if st7 is not None and carina[2] - st7 < min_depth:
        # A left main bronchus traced for less than this has been lost by the airway
        # segmentation (thick slices, partial volume): its end is not the lower-lobe bronchus.
        out.notes.append(f"left main bronchus ends only {carina[2] - st7:.0f} mm below the "
                         f"carina (< {min_depth:.0f} mm): station 7 bottom "
                         "approximated")
        st7 = None
    if st7 is not None:
        out.points[STATION7_BOTTOM] = _lm(
            STATION7_BOTTOM, st7, "measured",
            "distal end of the left main bronchus (upper border of the lower-lobe bronchus)")


def _neck_levels(ctx: _Context, out: Landmarks) -> None:
    """Manubrium top (jugular notch) and clavicle top, where segmented."""
    import numpy as np

    ref, zs = ctx.ref, ctx.zs
    for name, struct in ((MANUBRIUM_TOP, "sternum"), (CLAVICLE_TOP, "clavicles")):
        m = ctx.anatomy.mask(struct)
        if m.any() and name == MANUBRIUM_TOP:
            # The jugular notch is midline: ignore sternoclavicular parts off the sternum's
            # median column (a CT-only sternum mask may hold the clavicle heads).
            xs = np.nonzero(m)[2]
            half = 12.0 / ref.GetSpacing()[0]
            cols = np.abs(np.arange(m.shape[2]) - np.median(xs)) <= half
            m = m & cols[None, None, :]
        if m.any():
            _, k1 = _z_range(m)
            edge = " (top of the image)" if k1 == m.shape[0] - 1 else ""
            out.points[name] = _lm(name, zs[k1], "measured", f"top of the {struct}{edge}")


# ----------------------------------------------------------------------------- completing them
# Which landmarks the station rules need (stations.py reads exactly these).
RULE_LANDMARKS = (CARINA, TRACHEA_TOP, MANUBRIUM_TOP, CLAVICLE_TOP, AORTIC_ARCH_TOP,
                  AORTIC_ARCH_BOTTOM, BRACHIOCEPHALIC_CROSSING, LEFT_PA_TOP, AZYGOS_BOTTOM,
                  STATION7_BOTTOM, INFERIOR_PULMONARY_VEIN, DIAPHRAGM_LEFT, DIAPHRAGM_RIGHT,
                  HILUM_LEFT, HILUM_RIGHT)


def complete(landmarks: Landmarks, thresholds: dict | None = None) -> Landmarks:
    """The frame with every rule landmark present: measured ones kept, the rest approximated.

    Pure: returns a new :class:`Landmarks`. Each approximation is one rule from
    ``resources/thresholds.json`` (section ``landmarks``, distances in mm with their sources),
    applied to measured landmarks first, and the landmark's ``source`` names the rule
    (``method="approximated"``). This is the only place where positions are made up;
    :mod:`nstage.stations` reads them.

    Without a carina or a trachea nothing relative to the carina can be placed: those
    landmarks stay missing and a note says so.
    """
    th = resolve(thresholds)["landmarks"]
    out = copy.deepcopy(landmarks)
    pts = out.points
    carina = _complete_carina(out)
    if carina is None:
        if "landmarks relative to the carina not available" not in out.notes:
            out.notes.append("landmarks relative to the carina not available")
    else:
        cx, cy, cz = carina
        if not out.trachea:
            h = float(th["trachea_half_width_mm"])
            out.trachea = [TracheaLevel(cz, cx, cy, cx + h, cx - h, cy - h, cy + h,
                                        approximated=True)]
        _complete_arch(pts, cz, th)
        _approx(pts, BRACHIOCEPHALIC_CROSSING,
                pts[AORTIC_ARCH_TOP].z_mm + th["crossing_above_arch_top_mm"],
                f"no left brachiocephalic vein segmented: aortic arch top + "
                f"{th['crossing_above_arch_top_mm']:.0f} mm (it crosses the trachea just above "
                "the arch)")
        _approx(pts, LEFT_PA_TOP, cz + th["left_pa_top_above_carina_mm"],
                f"no pulmonary artery segmented: carina + {th['left_pa_top_above_carina_mm']:.0f}"
                " mm (the left PA arches over the left main bronchus at about the carina)")
        _approx(pts, AZYGOS_BOTTOM, cz + th["azygos_bottom_above_carina_mm"],
                f"no azygos class in any backend: carina + {th['azygos_bottom_above_carina_mm']:.0f}"
                " mm (the azygos arch runs over the right main bronchus at about the carina)")
        _approx(pts, STATION7_BOTTOM, cz - th["station7_depth_mm"],
                f"carina - {th['station7_depth_mm']:.0f} mm (right main bronchus plus bronchus "
                "intermedius, or the left main bronchus, projected on the axis)")
        _approx(pts, INFERIOR_PULMONARY_VEIN, cz - th["ipv_below_carina_mm"],
                f"no pulmonary veins segmented: carina - {th['ipv_below_carina_mm']:.0f} mm "
                "(inferior pulmonary veins enter the left atrium 5-7 cm below the carina)")
        for side in ("left", "right"):
            _complete_hilum(out, side, carina, th)
    _complete_neck(out, th)
    for side, other in (("left", "right"), ("right", "left")):
        mine, theirs = _DIAPHRAGM[side], _DIAPHRAGM[other]
        if mine not in pts and theirs in pts and not pts[theirs].approximated:
            _approx(pts, mine, pts[theirs].z_mm, f"{side} lung base not found: the {other} "
                    "diaphragm dome level")
    return out


_DIAPHRAGM = {"left": DIAPHRAGM_LEFT, "right": DIAPHRAGM_RIGHT}


def _approx(points: dict[str, Landmark], name: str, z: float, how: str, point=None) -> None:
    """Add an approximated landmark unless it is already there."""
    if name not in points:
        points[name] = _lm(name, z, "approximated", how, point)


def _complete_carina(out: Landmarks):
    """The carina point (mm), approximated from the lowest trachea level when missing."""
    pts = out.points
    low = min(out.trachea, key=lambda t: t.z_mm) if out.trachea else None
    item = pts.get(CARINA)
    if item is not None and item.point_mm is None and low is not None:
        pts[CARINA] = replace(item, point_mm=(low.centre_x_mm, low.centre_y_mm, item.z_mm))
    elif item is None and low is not None and not out.carina_below_view:
        _approx(pts, CARINA, low.z_mm, "no airway division found: lowest trachea level",
                (low.centre_x_mm, low.centre_y_mm, low.z_mm))
    item = pts.get(CARINA)
    if item is None or item.point_mm is None:
        return None
    return tuple(float(v) for v in item.point_mm)


def _complete_arch(pts: dict[str, Landmark], carina_z: float, th: dict) -> None:
    """Aortic arch bottom and top: each from the other when one is measured, else from the
    carina (bottom) and the typical arch height (top)."""
    height = float(th["arch_height_mm"])
    top, bottom = pts.get(AORTIC_ARCH_TOP), pts.get(AORTIC_ARCH_BOTTOM)
    if bottom is None and top is not None:
        _approx(pts, AORTIC_ARCH_BOTTOM, top.z_mm - height,
                f"arch bottom not measured: arch top - {height:.0f} mm (typical arch height)")
    _approx(pts, AORTIC_ARCH_BOTTOM, carina_z + th["arch_bottom_above_carina_mm"],
            f"arch not measured: carina + {th['arch_bottom_above_carina_mm']:.0f} mm (the "
            "arch's lower border lies just above the carina, over the left main bronchus)")
    _approx(pts, AORTIC_ARCH_TOP, pts[AORTIC_ARCH_BOTTOM].z_mm + height,
            f"arch top not measured: arch bottom + {height:.0f} mm (typical arch height)")


def _complete_hilum(out: Landmarks, side: str, carina, th: dict) -> None:
    """A hilum (distal end of a main bronchus): the traced bronchus end, else the typical
    bronchus course from the carina."""
    name = HILUM_LEFT if side == "left" else HILUM_RIGHT
    item = out.points.get(name)
    if item is not None and item.point_mm is not None:
        return
    below = [p for p in out.bronchi.get(side, []) if float(p[2]) <= carina[2]]
    if below:
        end = tuple(float(v) for v in below[-1])
        out.points[name] = _lm(name, end[2], "approximated",
                               f"end of the traced {side} main bronchus", end)
        return
    lat = float(th[f"hilum_lateral_{side}_mm"])
    sign = 1.0 if side == "left" else -1.0
    p = (carina[0] + sign * lat, carina[1] + th["hilum_posterior_mm"],
         carina[2] - th["hilum_below_carina_mm"])
    out.points[name] = _lm(name, p[2], "approximated",
                           f"no {side} main bronchus segmented: carina {lat:.0f} mm to the "
                           f"{side}, {th['hilum_below_carina_mm']:.0f} mm down (typical main "
                           "bronchus course)", p)


def _complete_neck(out: Landmarks, th: dict) -> None:
    """Trachea top (cricoid proxy), clavicle top and manubrium top when not measured."""
    pts = out.points
    apices = [pts[n].z_mm for n in (LUNG_APEX_LEFT, LUNG_APEX_RIGHT) if n in pts]
    if TRACHEA_TOP not in pts and out.trachea and not out.trachea[0].approximated:
        top = max(out.trachea, key=lambda t: t.z_mm)
        pts[TRACHEA_TOP] = _lm(TRACHEA_TOP, top.z_mm, "measured",
                               "most cranial trachea level in view",
                               (top.centre_x_mm, top.centre_y_mm, top.z_mm))
    if apices:
        _approx(pts, TRACHEA_TOP, max(apices) + th["neck_above_apex_mm"],
                f"no trachea top: higher lung apex + {th['neck_above_apex_mm']:.0f} mm "
                "(approximated cricoid)")
        _approx(pts, CLAVICLE_TOP, min(apices) - th["clavicle_below_apex_mm"],
                f"no clavicles segmented: {th['clavicle_below_apex_mm']:.0f} mm below the lower "
                "lung apex (the apices rise 2-3 cm above the medial clavicles)")
    clav = pts.get(CLAVICLE_TOP)
    if MANUBRIUM_TOP not in pts and clav is not None and not clav.approximated:
        _approx(pts, MANUBRIUM_TOP, clav.z_mm,
                "no sternum segmented: the measured clavicle top level")
    if apices:
        _approx(pts, MANUBRIUM_TOP, min(apices) - th["manubrium_below_apex_mm"],
                f"no sternum segmented: {th['manubrium_below_apex_mm']:.0f} mm below the lower "
                "lung apex (the apices rise 2-3 cm above the jugular notch)")


def mm_to_k(ref, z_mm: float) -> float:
    """Fractional slice index of level ``z_mm`` on a canonical image."""
    return (z_mm - ref.GetOrigin()[2]) / ref.GetSpacing()[2]


def mm_to_i(ref, x_mm: float) -> float:
    """Fractional column index of ``x_mm`` on a canonical image."""
    return (x_mm - ref.GetOrigin()[0]) / ref.GetSpacing()[0]


def source_backend(name: str, landmark: Landmark, anatomy) -> str | None:
    """Which anatomy backend measured ``landmark`` (None when it was approximated).

    The backends of the classes in :data:`LANDMARK_CLASSES` present in ``anatomy``, joined
    with " + " when several contributed (e.g. a TotalSegmentator trachea with classical
    bronchi); ``anatomy.backend`` when none of them is present.
    """
    from nstage.anatomy.base import GROUPS

    if landmark.approximated:
        return None
    if name.startswith(VERTEBRA_PREFIX):
        classes: tuple[str, ...] = ("vertebrae_" + name.removeprefix(VERTEBRA_PREFIX),)
    else:
        classes = LANDMARK_CLASSES.get(name, ())
    present = set(anatomy.names.values()) | set(anatomy.extra_masks)
    members = [m for c in classes for m in GROUPS.get(c, (c,)) if m in present]
    sources = sorted({anatomy.source_of(m) for m in members})
    return " + ".join(sources) if sources else anatomy.backend
