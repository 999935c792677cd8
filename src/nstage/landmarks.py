"""Landmarks for IASLC station assignment, from any :class:`~nstage.anatomy.Anatomy`.

All positions are mm in LPS (+x patient left, +y posterior, +z superior).
Every landmark records how it was found (``method``: ``"measured"`` from a
segmentation, or ``"approximated"`` from another landmark and a typical
distance) so station reasons can say when a boundary is uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from nstage.geometry import Point

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
    since +x is the patient's left); it splits 2R/4R from 2L/4L.
    """

    z_mm: float
    centre_x_mm: float
    centre_y_mm: float
    left_border_x_mm: float
    right_border_x_mm: float
    anterior_y_mm: float
    posterior_y_mm: float


@dataclass
class Landmarks:
    """All landmarks found for one study.

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
    notes : list of str
        What could not be found.
    """

    points: dict[str, Landmark] = field(default_factory=dict)
    trachea: list[TracheaLevel] = field(default_factory=list)
    bronchi: dict[str, list[Point]] = field(default_factory=dict)
    lung_volume_ml: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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


# ----------------------------------------------------------------------------- finding them
# Typical vertical distances (mm) used when a structure was not segmented. Sources: the IASLC
# map's own description (Rusch et al., J Thorac Oncol 2009;4:568: the aortic arch and the left
# brachiocephalic vein lie above the carina, the azygos arch at the carina on the right, the left
# PA crossing the left main bronchus just below the carina) and typical adult axial anatomy
# (carina at T4-T5, arch top at T3-T4: about one to two vertebral heights of ~20-25 mm).
APPROX_MM = {
    AORTIC_ARCH_TOP: 45.0,  # arch top above the carina
    AORTIC_ARCH_BOTTOM: 15.0,  # lower border of the arch above the carina (AP window)
    LEFT_PA_TOP: 0.0,  # upper rim of the left PA at about the carina level
    BRACHIOCEPHALIC_CROSSING: 50.0,  # caudal margin of the left brachiocephalic vein crossing
    AZYGOS_BOTTOM: 0.0,  # lower border of the azygos arch at the carina level
    STATION7_BOTTOM: -35.0,  # lower border of the bronchus intermedius below the carina
    INFERIOR_PULMONARY_VEIN: -60.0,  # inferior pulmonary veins below the carina
    MANUBRIUM_TOP: -30.0,  # jugular notch below the lower lung apex
    CLAVICLE_TOP: -10.0,  # clavicles' top below the lower lung apex (apex 2-3 cm above them)
}
# The left main bronchus is 4-5 cm long and runs down and out at about 40-50 degrees from the
# midline, so its distal end (station 7's lower border) lies roughly 2.5-4 cm below the carina
# (Rusch et al. 2009; standard bronchial anatomy). A measured end much closer than this is an
# airway segmentation that stopped early.
MIN_STATION7_DEPTH_MM = 15.0
# Just above the carina the airway section flares into the origins of the main bronchi
# (carinal angle 60-80 degrees, bronchi 10-15 mm wide: the flare spans about one bronchus
# height); there a tracheal border may move out from the tube above by at most this much.
TRACHEA_FLARE_MM = 15.0
TRACHEA_BORDER_TOL_MM = 2.0

_APPROX_WHY = {
    AORTIC_ARCH_TOP: "arch not measured (no aorta above the carina): carina + 45 mm (arch top typically at T3-T4, one to "
                     "two vertebrae above the carina)",
    AORTIC_ARCH_BOTTOM: "arch not measured (no aorta above the carina): carina + 15 mm (the arch's lower border lies just "
                        "above the carina, over the left main bronchus)",
    LEFT_PA_TOP: "no pulmonary artery segmented: carina level (the left PA crosses over the left "
                 "main bronchus just below the carina)",
    BRACHIOCEPHALIC_CROSSING: "no left brachiocephalic vein segmented: carina + 50 mm (it "
                              "crosses the trachea just above the aortic arch)",
    AZYGOS_BOTTOM: "no azygos class in any backend: carina level (the azygos arch runs over the "
                   "right main bronchus at about the carina)",
    STATION7_BOTTOM: "carina - 35 mm (typical length of right main bronchus plus bronchus "
                     "intermedius projected on the axis)",
    INFERIOR_PULMONARY_VEIN: "no pulmonary veins segmented: carina - 60 mm (inferior pulmonary "
                             "veins enter the left atrium about 5-7 cm below the carina)",
    MANUBRIUM_TOP: "no sternum segmented: 30 mm below the lower lung apex (the apices rise "
                   "2-3 cm above the clavicles and the jugular notch)",
    CLAVICLE_TOP: "no clavicles segmented: 10 mm below the lower lung apex (the apices rise "
                  "2-3 cm above the medial clavicles)",
}


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


def find(anatomy) -> Landmarks:
    """Landmarks for station assignment from any :class:`~nstage.anatomy.Anatomy`.

    Works with the classical backend (trachea + main bronchi + airway), TotalSegmentator
    (trachea only: the carina is the centre of its lowest level) and phantom truth. Every
    structure not segmented is approximated from the carina with a typical distance
    (:data:`APPROX_MM`) and flagged ``method="approximated"``.

    Parameters
    ----------
    anatomy : nstage.anatomy.Anatomy
        Labels on a canonical grid.

    Returns
    -------
    Landmarks
        Positions in mm LPS (+x patient left, +y posterior, +z superior).
    """
    ctx = _Context(anatomy)
    out = Landmarks()
    _lungs(ctx, out)
    carina = _carina(ctx, out)
    _trachea_levels(ctx, out, carina)
    _bronchi(ctx, out, carina)
    if carina is not None:
        _aortic_arch(ctx, out, carina)
        _vessels(ctx, out, carina)
        _station7_bottom(out, carina)
        _approximate_from_carina(out, carina)
    _neck_levels(ctx, out)
    if carina is None:
        out.notes.append("landmarks relative to the carina not available")
    return out


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
        # recesses and the thin apex), i.e. the 75th percentile of the lowest lung slice per
        # (y, x) column.
        proj = m.any(axis=0)
        er = max(1, int(round(15.0 / min(sp[1], sp[2]))))
        core = ndi.binary_erosion(proj, iterations=er) if proj.sum() > 50 else proj
        if not core.any():
            core = proj
        low = np.argmax(m, axis=0)[core]
        k_dome = float(np.percentile(low, 75))
        zd = float(np.interp(k_dome, np.arange(len(zs)), zs))
        name = DIAPHRAGM_LEFT if side == "left" else DIAPHRAGM_RIGHT
        edge = " (bottom of the image: the dome may lie lower)" if k0 == 0 else ""
        out.points[name] = _lm(name, zd, "measured", f"dome under the {side} lung{edge}")


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
    if both.size and anatomy.backend == "classical":
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


def _trachea_levels(ctx: _Context, out: Landmarks, carina) -> None:
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
        out.trachea = _borders_on_the_tube(out.trachea, carina[2])
    top = out.trachea[0] if out.trachea else None
    if top is not None:
        edge = " (top of the image)" if k1 == trachea.shape[0] - 1 else ""
        out.points[TRACHEA_TOP] = _lm(TRACHEA_TOP, top.z_mm, "measured",
                                      f"most cranial trachea level in view{edge}",
                                      (top.centre_x_mm, top.centre_y_mm, top.z_mm))


def _borders_on_the_tube(levels: list[TracheaLevel], carina_z: float) -> list[TracheaLevel]:
    """Tracheal borders just above the carina held to the tube above them.

    Within ``TRACHEA_FLARE_MM`` above the carina the airway section widens into the origins of
    the main bronchi (and thick slices blur them into it); a lateral border there is the
    trachea's wall only while it stays within ``TRACHEA_BORDER_TOL_MM`` of the border on the
    levels above (median of the levels ``TRACHEA_FLARE_MM`` to twice that above the carina,
    where the trachea is a plain tube). Left border: +x, the patient's left.
    """
    import numpy as np

    ref = [t for t in levels if TRACHEA_FLARE_MM < t.z_mm - carina_z <= 2 * TRACHEA_FLARE_MM]
    if not ref:
        return levels
    left = float(np.median([t.left_border_x_mm for t in ref])) + TRACHEA_BORDER_TOL_MM
    right = float(np.median([t.right_border_x_mm for t in ref])) - TRACHEA_BORDER_TOL_MM
    out = []
    for t in levels:
        if t.z_mm - carina_z <= TRACHEA_FLARE_MM:
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
        elif carina is not None:
            sign = 1.0 if side == "left" else -1.0
            lat = 45.0 if side == "left" else 35.0
            p = (carina[0] + sign * lat, carina[1] + 10.0, carina[2] - 15.0)
            out.points[name] = _lm(name, p[2], "approximated",
                                   f"no {side} main bronchus segmented: carina {lat:.0f} mm to "
                                   f"the {side} and 15 mm down (typical main bronchus course)", p)


def _aortic_arch(ctx: _Context, out: Landmarks, carina) -> None:
    """Aortic arch top and bottom from the aorta's axial sections."""
    import numpy as np
    from scipy import ndimage as ndi

    aorta = ctx.anatomy.mask("aorta")
    if not aorta.any():
        return
    sp, zs = ctx.sp, ctx.zs
    k_c = mm_to_k(ctx.ref, carina[2])
    k0, k1 = _z_range(aorta)
    if k1 <= k_c:
        out.notes.append("the segmented aorta does not reach above the carina")
        return
    out.points[AORTIC_ARCH_TOP] = _lm(AORTIC_ARCH_TOP, zs[k1], "measured",
                                      "top of the segmented aorta")
    px = sp[1] * sp[2]
    bottom = None
    for k in range(k1, k0 - 1, -1):
        lab, n = ndi.label(aorta[k])
        if n >= 2:
            counts = np.bincount(lab.ravel())[1:]
            if (counts * px >= 50.0).sum() >= 2:
                bottom = k
                break
    if bottom is not None:
        out.points[AORTIC_ARCH_BOTTOM] = _lm(
            AORTIC_ARCH_BOTTOM, zs[bottom], "measured",
            "highest level where the aorta shows two sections (ascending, descending)")


def _vessels(ctx: _Context, out: Landmarks, carina) -> None:
    """Left pulmonary artery top, brachiocephalic crossing, inferior pulmonary vein."""
    import numpy as np

    anatomy, ref, zs = ctx.anatomy, ctx.ref, ctx.zs
    if "pulmonary_artery" in ctx.names:
        pa = anatomy.mask("pulmonary_artery")
        if pa.any():
            xs_ok = np.nonzero(pa)
            left = xs_ok[2] > mm_to_i(ref, carina[0])
            if left.any():
                out.points[LEFT_PA_TOP] = _lm(LEFT_PA_TOP, zs[xs_ok[0][left].max()], "measured",
                                              "top of the pulmonary artery left of the carina")
    bcv = anatomy.mask("brachiocephalic_vein_left")
    if bcv.any() and out.trachea:
        # Caudal margin where the vein passes in front of the trachea.
        xs = np.nonzero(bcv)
        i_lo = mm_to_i(ref, min(t.right_border_x_mm for t in out.trachea))
        i_hi = mm_to_i(ref, max(t.left_border_x_mm for t in out.trachea))
        over = (xs[2] >= i_lo) & (xs[2] <= i_hi)
        if over.any():
            out.points[BRACHIOCEPHALIC_CROSSING] = _lm(
                BRACHIOCEPHALIC_CROSSING, zs[xs[0][over].min()], "measured",
                "lowest level of the left brachiocephalic vein in front of the trachea")
    pv = anatomy.mask("pulmonary_vein")
    if pv.any():
        k0, _ = _z_range(pv)
        out.points[INFERIOR_PULMONARY_VEIN] = _lm(INFERIOR_PULMONARY_VEIN, zs[k0], "measured",
                                                  "lowest level of the pulmonary veins")


def _station7_bottom(out: Landmarks, carina) -> None:
    """Station 7's lower border from the traced left main bronchus, when long enough."""
    st7 = None
    if out.bronchi.get("left"):
        hl = out.points.get(HILUM_LEFT)
        if hl is not None and not hl.approximated:
            st7 = hl.z_mm
    if st7 is not None and carina[2] - st7 < MIN_STATION7_DEPTH_MM:
        # A left main bronchus traced for less than this has been lost by the airway
        # segmentation (thick slices, partial volume): its end is not the lower-lobe bronchus.
        out.notes.append(f"left main bronchus ends only {carina[2] - st7:.0f} mm below the "
                         f"carina (< {MIN_STATION7_DEPTH_MM:.0f} mm): station 7 bottom "
                         "approximated")
        st7 = None
    if st7 is not None:
        out.points[STATION7_BOTTOM] = _lm(
            STATION7_BOTTOM, st7, "measured",
            "distal end of the left main bronchus (upper border of the lower-lobe bronchus)")


def _approximate_from_carina(out: Landmarks, carina) -> None:
    """Every carina-relative landmark not measured: carina + typical distance."""
    for name, dz in APPROX_MM.items():
        if name in out.points or name in (MANUBRIUM_TOP, CLAVICLE_TOP):
            continue
        out.points[name] = _lm(name, carina[2] + dz, "approximated", _APPROX_WHY[name])


def _neck_levels(ctx: _Context, out: Landmarks) -> None:
    """Manubrium top (jugular notch) and clavicle top, measured or from the lung apices."""
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
        else:
            apices = [out.points[n].z_mm for n in (LUNG_APEX_LEFT, LUNG_APEX_RIGHT)
                      if n in out.points]
            if apices:
                out.points[name] = _lm(name, min(apices) + APPROX_MM[name], "approximated",
                                       _APPROX_WHY[name])


def mm_to_k(ref, z_mm: float) -> float:
    """Fractional slice index of level ``z_mm`` on a canonical image."""
    return (z_mm - ref.GetOrigin()[2]) / ref.GetSpacing()[2]


def mm_to_i(ref, x_mm: float) -> float:
    """Fractional column index of ``x_mm`` on a canonical image."""
    return (x_mm - ref.GetOrigin()[0]) / ref.GetSpacing()[0]
