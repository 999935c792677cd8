"""Assemble a phantom: grid, anatomy, lesions, CT, PET and the truth.

The anatomy is designed in an anatomical frame (origin at the carina, see
:mod:`nstage.phantom.anatomy`); the images are placed in scanner (world) coordinates by a
fixed offset plus a small seed-dependent shift, so the CT origin is not a round number and
grids differ between seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nstage.phantom import anatomy as A
from nstage.phantom.pet import (
    DEFAULT_MODEL,
    REALISTIC,
    PetModel,
    local_clean_pet,
    recovery_coefficient,
    synthesize,
)
from nstage.phantom.shapes import Ellipsoid, Grid, rotation
from nstage.phantom.spec import Phantom, PhantomSpec
from nstage.phantom.tissues import TissueTable, codes_mask
from nstage.phantom.zones import (
    ZoneGeometry,
    in_zone,
    is_intrapulmonary,
    is_mediastinal,
    sampling_box,
)

WORLD_OFFSET = np.array([0.8, -12.5, -745.0])  # anatomical frame -> scanner mm (plus jitter)
BLOOD_POOL_SUV = A.BLOOD_SUV
LIVER_SUV = A.LIVER_SUV
# Counted (metastatic) nodes: lowest noise-free SUVmax after blur and partial volume, well
# above the 2.5 positivity floor so that "counts" is never a borderline call.
COUNTED_MIN_BLURRED_SUV = 3.8
# The positivity convention (CLINICAL.md 3, SUVmax >= 2.5): a node whose SUVmax the spec fixes
# below it is recorded as not counting.
SUV_FLOOR = 2.5
# Hilar (10R/10L) nodes lie in the hilar fat around the bronchi and vessels, not in lung
# parenchyma: lung within this distance (mm) of the node becomes hilar fat, so the node is
# never wrapped by lung (that reads as intrapulmonary 11-14).
HILAR_FAT_RIM_MM = 3.5
LOBE_CODES = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
              "lung_upper_lobe_left", "lung_lower_lobe_left")


@dataclass(frozen=True)
class GridSpec:
    ct: Grid
    pet_spacing: tuple[float, float, float]
    pet_size: tuple[int, int, int]

    def with_pet_voxel(self, voxel_mm: tuple[float, float, float]) -> GridSpec:
        """The same PET field of view sampled with ``voxel_mm`` voxels (x, y, z)."""
        fov = np.asarray(self.pet_size) * np.asarray(self.pet_spacing)
        size = tuple(int(np.ceil(f / v)) for f, v in zip(fov, voxel_mm, strict=True))
        return GridSpec(self.ct, tuple(float(v) for v in voxel_mm), size)


def grids_for(extent: str) -> GridSpec:
    """CT grid (anatomical frame) and PET grid size/spacing for an extent."""
    if extent == "whole-body":
        sp = (500.0 / 512, 500.0 / 512, 2.5)
        nz = 512
        top = 378.0
        ct = Grid((-250.0 + sp[0] / 2, -235.0 + sp[1] / 2, top - (nz - 1) * sp[2]), sp,
                  (nz, 512, 512))
        return GridSpec(ct, (3.65, 3.65, 3.2), (200, 200, 400))
    sp = (1.5, 1.5, 3.0)
    nz = 114
    top = A.APEX_Z + 62.0
    ct = Grid((-191.25 + 0.75, -177.0 + 0.75, top - (nz - 1) * sp[2]), sp, (nz, 256, 256))
    return GridSpec(ct, (4.0, 4.0, 4.0), (104, 104, 92))


def _image(array: np.ndarray, origin, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def _measure_landmarks(grid: Grid, table: TissueTable, labels: np.ndarray,
                       layout: A.Layout) -> ZoneGeometry:
    """Landmark levels measured on the painted anatomy (anatomical frame, mm)."""
    zs = grid.axis("z")
    xs = grid.axis("x")
    ys = grid.axis("y")

    def codes(*keys):
        return [table.code(k) for k in keys]

    # every landmark lies between the diaphragm and the neck: measure on that slab only
    slab = np.nonzero((zs > -150.0) & (zs < 180.0))[0]
    k_lo, k_hi = int(slab[0]), int(slab[-1]) + 1
    lab = labels[k_lo:k_hi]
    zs = zs[k_lo:k_hi]

    def zmax(mask_codes, sel=None):
        m = codes_mask(lab, mask_codes)
        if sel is not None:
            m &= sel
        ks = np.nonzero(m.any(axis=(1, 2)))[0]
        return float(zs[ks.max()]) if len(ks) else float("nan")

    # carina: most cranial slice where the central airway lumen has two components
    from scipy import ndimage

    lumen_codes = codes("trachea/lumen", "main_bronchus_left/lumen", "main_bronchus_right/lumen")
    carina_z = A.CARINA_Z
    for k in np.argsort(-zs):
        if zs[k] > 40 or zs[k] < -40:
            continue
        _, n = ndimage.label(codes_mask(lab[k], lumen_codes))
        if n >= 2:
            carina_z = float(zs[k])
            break
    # aortic arch top and bottom (lowest level at which the arch is one piece)
    aorta = table.code("aorta")
    arch_top = zmax([aorta])
    arch_bottom = arch_top
    for k in np.argsort(-zs):
        if zs[k] > arch_top or zs[k] < -20:
            continue
        sl = lab[k] == aorta
        sl[:, xs > 90] = False
        _, n = ndimage.label(sl)
        if n >= 2:
            break
        arch_bottom = float(zs[k])
    pa = table.code("pulmonary_artery")
    lpa_top = zmax([pa], (xs > 15.0)[None, None, :])
    bcv = table.code("brachiocephalic_vein_left")
    m = lab == bcv
    cross = np.zeros_like(m)
    for k, z in enumerate(zs):
        if not m[k].any():
            continue
        xc, _ = A.trachea_center(z)
        cross[k] = m[k] & (np.abs(xs - xc) < A.TRACHEA_LUMEN_R + A.AIRWAY_WALL)[None, :]
    ks = np.nonzero(cross.any(axis=(1, 2)))[0]
    bcv_cross = float(zs[ks.min()]) if len(ks) else float("nan")
    az = table.code("azygos")
    m = (lab == az) & (ys < 10.0)[None, :, None]
    ks = np.nonzero(m.any(axis=(1, 2)))[0]
    azygos_bottom = float(zs[ks.min()]) if len(ks) else carina_z + 5.0
    manubrium_top = zmax(codes("sternum/cortex", "sternum/marrow"))
    cricoid = zmax(codes("trachea/wall", "trachea/lumen"))
    air = layout.airways
    # IASLC: station 7 reaches down to the upper border of the left lower-lobe bronchus (left)
    # or the lower border of the bronchus intermedius (right); the higher of the two, where
    # the left main bronchus ends, keeps every station-7 node unambiguous on both sides.
    s7_bottom = float(air.ends["left_main_end"][2])
    pv_low = min(float((t.points[:, 2] - t.radii).min())
                 for n, (t, _) in layout.vessels.others.items() if n.endswith("_lower"))
    oes = layout.oesophagus
    x_oe, y_oe = float(np.interp(-110.0, oes.points[::-1, 2], oes.points[::-1, 0])), \
        float(np.interp(-110.0, oes.points[::-1, 2], oes.points[::-1, 1]))
    dia_medial = float(A.diaphragm_z(x_oe, y_oe))

    tz = np.arange(cricoid, carina_z - 0.01, -4.0)
    tx, ty = A.trachea_center(tz)
    trachea = np.stack([tx, ty, tz, np.full_like(tz, A.TRACHEA_LUMEN_R + A.AIRWAY_WALL)], 1)
    right = np.concatenate([air.main_right.points[::6], air.lobar["bi"].points[::6],
                            air.lobar["rul"].points[:40:6], air.lobar["rll"].points[:30:6]])
    left = np.concatenate([air.main_left.points[::6], air.lobar["lul"].points[:40:6],
                           air.lobar["lll"].points[:30:6]])
    oe_pts = oes.points[::8]
    # central airway below the carina (monotonic in z): main bronchus, then bronchus
    # intermedius (right) / left lower-lobe bronchus (left); no lateral lobar branch
    central = {"right": np.concatenate([air.main_right.points[::3], air.lobar["bi"].points[::3]]),
               "left": np.concatenate([air.main_left.points[::3],
                                       air.lobar["lll"].points[:30:3]])}
    return ZoneGeometry(
        levels={
            "cricoid": cricoid, "manubrium_top": manubrium_top,
            "brachiocephalic_crossing": bcv_cross, "aortic_arch_top": arch_top,
            "aortic_arch_bottom": arch_bottom, "left_pulmonary_artery_top": lpa_top,
            "azygos_arch_bottom": azygos_bottom, "carina": carina_z,
            "station7_bottom": float(s7_bottom), "inferior_pulmonary_vein": pv_low,
            "diaphragm_medial": dia_medial,
        },
        ligamentum_x=27.0,
        trachea=trachea,
        bronchi={"right": right, "left": left},
        esophagus=oe_pts,
        hilum={"right": tuple(float(v) for v in air.ends["right_main_end"]),
               "left": tuple(float(v) for v in air.ends["left_main_end"])},
        central_bronchi=central,
    )


class _Placer:
    """Rejection sampling of lesion ellipsoids into free tissue."""

    def __init__(self, grid: Grid, table: TissueTable, labels: np.ndarray,
                 rng: np.random.Generator):
        self.grid = grid
        self.table = table
        self.labels = labels
        self.rng = rng
        self.hull_codes = np.array(table.codes_where(lambda t: t.hull))
        self.airway_vessel = np.array([table.code(k) for k in (
            "airway/wall", "main_bronchus_left/wall", "main_bronchus_right/wall",
            "pulmonary_artery/hilar", "pulmonary_artery", "pulmonary_vein/hilar")])

    def fits(self, e: Ellipsoid, free: np.ndarray, grow: float) -> bool:
        sl, m = e.mask(self.grid, grow)
        if not m.size or not m.any():
            return False
        # the whole grown ellipsoid must be on the grid
        lo, hi = e.bounds(grow)
        g = self.grid
        for a in range(3):
            top = g.origin[a] + g.spacing[a] * (g.shape[::-1][a] - 1)
            if lo[a] < g.origin[a] or hi[a] > top:
                return False
        return bool(np.isin(self.labels[sl][m], free).all())

    def touches(self, e: Ellipsoid, codes: np.ndarray, grow: float) -> bool:
        sl, m = e.mask(self.grid, grow)
        return bool(m.size and np.isin(self.labels[sl][m], codes).any())

    def place(self, predicate, box, short_axis_mm: float, free: np.ndarray,
              adjacent: np.ndarray | None, grow: float = 2.5,
              min_short: float = 10.0) -> Ellipsoid | None:
        """An ellipsoid of short axis ``short_axis_mm`` (shrunk in 2 mm steps down to
        ``min_short`` when there is no room) whose centre satisfies ``predicate`` and which,
        grown by ``grow`` mm, covers only ``free`` tissue codes.

        Candidate centres come from the distance transform of the free tissue in ``box``, so
        a node is found whenever there is room; tight spots (free space just large enough)
        are tried first, which puts nodes against the structures they sit next to, and
        candidates touching ``adjacent`` codes are preferred.
        """
        from scipy import ndimage

        g = self.grid
        lo, hi = np.asarray(box[0], float), np.asarray(box[1], float)
        sl, x, y, z = g.box(lo, hi)
        if any(s.stop <= s.start for s in sl):
            return None
        freemask = np.isin(self.labels[sl], free)
        step = 2 if freemask.size > 3_000_000 else 1
        sub = freemask[::step, ::step, ::step]
        sp = (g.spacing[2] * step, g.spacing[1] * step, g.spacing[0] * step)
        dt = ndimage.distance_transform_edt(sub, sampling=sp)
        zs, ys, xs = z.ravel()[::step], y.ravel()[::step], x.ravel()[::step]
        sizes = [short_axis_mm]
        s = short_axis_mm
        while s - 2.0 >= min_short - 1e-6:
            s -= 2.0
            sizes.append(s)
        if sizes[-1] > min_short:
            sizes.append(min_short)
        for size in sizes:
            a = size / 2.0
            need = 1.3 * a + grow
            kk, jj, ii = np.nonzero(dt >= need)
            if not len(kk):
                continue
            order = self.rng.permutation(len(kk))[:6000]
            pts = np.stack([xs[ii[order]], ys[jj[order]], zs[kk[order]]], 1)
            tight = dt[kk[order], jj[order], ii[order]] < need + 4.0
            ok = np.asarray(predicate(pts), bool)
            cands = np.concatenate([pts[ok & tight], pts[ok & ~tight]])
            passes = 2 if adjacent is not None else 1
            for attempt in range(passes):
                for c in cands[:300]:
                    radii = (a, a * self.rng.uniform(1.0, 1.3), a * self.rng.uniform(1.0, 1.25))
                    rot = tuple(map(tuple, rotation(yaw_deg=float(self.rng.uniform(0, 180)))))
                    e = Ellipsoid(tuple(float(v) for v in c), radii, rot)
                    if not self.fits(e, free, grow):
                        continue
                    if attempt == 0 and adjacent is not None and not self.touches(
                            e, adjacent, grow + 5.0):
                        continue
                    return e
        return None


def make_phantom(spec: PhantomSpec) -> Phantom:
    """Build a phantom PET/CT study with known truth, in memory.

    Parameters
    ----------
    spec : PhantomSpec
        What to put in it; validated (unknown station -> :class:`nstage.errors.UsageError`).

    Returns
    -------
    Phantom
        CT (int16 HU), PET (float32 SUV, own grid), ground-truth anatomy and the truth dict:
        ``primary`` (side, lobe, centroid_mm, suv_max, suv_max_blurred, diameter_mm) or None;
        ``nodes`` (station, side, centroid_mm, short_axis_mm, radii_mm, suv_max,
        suv_max_blurred, counts, kind, label_value); ``confounders``; ``n_stage`` and
        ``n_stage_9th`` from :func:`nstage.staging.n_category` on the counting nodes;
        ``blood_pool_suv``, ``liver_suv``; ``landmarks`` and ``zones`` (mm, LPS world).
    """
    from nstage.anatomy import Anatomy
    from nstage.staging import n_category, station_side

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    spec = spec.validated()
    rng = np.random.default_rng(spec.seed)
    whole = spec.extent == "whole-body"
    model = REALISTIC if spec.realistic else DEFAULT_MODEL
    gs = grids_for(spec.extent)
    if spec.realistic:
        gs = gs.with_pet_voxel(model.voxel_mm)
    grid = gs.ct
    offset = WORLD_OFFSET + rng.uniform(-1.0, 1.0, 3) * np.array([3.0, 3.0, 6.0])

    # A hot left-ventricular wall reaches SUVmax about 9 on clinical scans (fasting does not
    # always suppress it); the historical phantom drew up to 10.
    myo_hi = 9.0 if spec.realistic else 10.0
    myo = float(rng.uniform(6.0, myo_hi)) if "hot-myocardium" in spec.confounders \
        else float(rng.uniform(1.5, 3.5))
    table = TissueTable()
    A.register_tissues(table, myo, whole, blood_suv=model.blood_suv, liver_suv=model.liver_suv)
    layout = A.build_layout(whole, (float(grid.axis("z")[0]), float(grid.axis("z")[-1])))
    labels = A.base_layers(grid, table, whole)
    A.paint_organs(grid, table, layout, labels)
    timings["anatomy"] = time.perf_counter() - t0
    zg = _measure_landmarks(grid, table, labels, layout)

    placer = _Placer(grid, table, labels, rng)
    med_free = np.array([table.code("mediastinal_fat")])
    neck_free = np.array([table.code("mediastinal_fat"), table.code("muscle")])
    lungs = np.array([table.code(k) for k in LOBE_CODES])
    hull = placer.hull_codes

    lesions: list[dict] = []  # every painted lesion, truth order

    def add_lesion(kind: str, e: Ellipsoid, suv: float, hu: float, hull: bool = False,
                   **info) -> dict:
        key = f"lesion/{len(lesions)}"
        # mediastinal nodes push the mediastinal pleura outwards (part of the lung hull)
        table.add(key, None, hu, suv, hull=hull)
        sl, m = e.mask(grid)
        target = labels[sl]
        target[m] = table.code(key)
        rec = {"kind": kind, "ellipsoid": e, "suv": suv, "code": table.code(key), **info}
        lesions.append(rec)
        return rec

    def node_node(station: str, kind: str, counts: bool, short: float, suv: float,
                  min_short: float = 10.0) -> dict:
        if is_intrapulmonary(station):
            free, adj, grow = lungs, None, 2.5
        elif station.startswith("10"):
            free, adj, grow = np.concatenate([lungs, med_free]), placer.airway_vessel, 1.5
        elif station.startswith("1") and len(station) == 2:
            free, adj, grow = neck_free, None, 2.0
        else:
            free, adj, grow = med_free, hull, 1.5
        e = None
        # Deterministic fallbacks when the zone is crowded (e.g. station 7 next to other
        # nodes): smaller nodes first, then a thinner fat rim and a smaller zone margin.
        for lo_short, g_use, margin in ((min_short, grow, 3.0),
                                        (min(min_short, 8.0), grow, 3.0),
                                        (min(min_short, 6.0), max(1.0, grow - 0.5), 2.0)):
            def predicate(p, short=short, margin=margin):
                ok = in_zone(station, p, zg, margin=margin)
                if station in ("3a", "3p", "4R"):
                    # keep the whole node above the carina: the subcarinal space is station 7's
                    ok &= np.atleast_2d(p)[:, 2] - 0.65 * short > zg.levels["carina"] + 1.0
                return ok

            e = placer.place(predicate, sampling_box(station, zg), short, free, adj,
                             grow=g_use, min_short=lo_short)
            if e is not None:
                break
        if e is not None and station.startswith("10"):
            # hilar fat around the node (only lung parenchyma is replaced; the bronchus wall
            # and vessels it abuts stay)
            sl, m = e.mask(grid, HILAR_FAT_RIM_MM)
            t = labels[sl]
            t[m & np.isin(t, lungs)] = med_free[0]
        if e is None:
            raise RuntimeError(f"phantom: no room for a node in station {station} "
                               f"(seed {spec.seed}); this is a bug in the phantom layout")
        return add_lesion(kind, e, suv, float(rng.uniform(32.0, 45.0)),
                          hull=is_mediastinal(station), station=station, counts=counts,
                          side=station_side(station))

    def requested_node(station: str, short: float, suv: float) -> dict:
        """A requested node; its size and blurred SUVmax as the spec fixes them, if it does
        (drawn values are still drawn, so the rest of the phantom does not change)."""
        if spec.node_short_axis_mm is not None:
            short = float(spec.node_short_axis_mm)
        if spec.node_suv_max is None:
            return node_node(station, "node", True, short, suv)
        target = float(spec.node_suv_max)
        rec = node_node(station, "node", target >= SUV_FLOOR, short,
                        _activity_for(target, short / 2.0, 0.4, model.fwhm_mm),
                        min_short=min(10.0, short))
        rec["target_blurred_max"] = target
        return rec

    # 1) mediastinal nodes first: they shape the mediastinal pleura (lung hull)
    requested = list(spec.nodes)
    pending_lung = []
    # tightest zones first, so a roomy station never takes a tight one's space
    priority = {"7": 0, "5": 1, "4L": 2, "6": 3, "3p": 4, "3a": 5}
    for idx in sorted(range(len(requested)), key=lambda n: priority.get(requested[n], 10)):
        st = requested[idx]
        if is_mediastinal(st):
            rec = requested_node(st, float(rng.uniform(10.0, 20.0)),
                                 float(rng.uniform(4.0, 12.0)))
            rec["order"] = idx
        else:
            pending_lung.append((idx, st))
    if "subthreshold-node" in spec.confounders:
        choices = [s for s in ("4R", "4L", "7", "2R", "3p", "8R") if s not in requested]
        st = str(rng.choice(choices))
        short = float(rng.uniform(6.0, 8.0))
        target = float(rng.uniform(1.5, 1.8))
        suv = _activity_for(target, short / 2.0, 0.4, model.fwhm_mm)
        rec = node_node(st, "confounder", False, short, suv, min_short=6.0)
        rec["target_blurred_max"] = target
        rec["confounder"] = "subthreshold-node"
    if "distant-lesion" in spec.confounders and not whole:
        name = str(rng.choice(["T7", "T8", "T9"]))
        zc = A.VERTEBRAE[name]
        r = float(rng.uniform(6.0, 8.0))
        e = Ellipsoid((float(rng.uniform(-6, 6)), float(A.spine_y(zc)) + 1.0, zc), (r, r, r))
        add_lesion("distant", e, float(rng.uniform(6.0, 10.0)), 140.0,
                   where=f"vertebra {name} (bone metastasis)", counts=False)
    t1 = time.perf_counter()
    lung_map = A.carve_lungs(grid, table, labels)
    lung_here = lung_map > 0
    labels[lung_here] = lung_map[lung_here]
    del lung_map, lung_here
    timings["lungs"] = time.perf_counter() - t1

    # 2) hilar and intrapulmonary nodes and the primary, inside the carved lungs
    for idx, st in pending_lung:
        rec = requested_node(st, float(rng.uniform(10.0, 20.0)), float(rng.uniform(4.0, 12.0)))
        rec["order"] = idx
    def hilar_pair(name: str, short_mm: tuple[float, float], blurred: tuple[float, float],
                   min_short: float) -> None:
        """10R and 10L alike: one drawn short axis and blurred SUVmax for both."""
        short = float(rng.uniform(*short_mm))
        target = float(rng.uniform(*blurred))
        suv = _activity_for(target, short / 2.0, 0.6, model.fwhm_mm)
        for st in ("10R", "10L"):
            rec = node_node(st, "confounder", False, short, suv, min_short=min_short)
            rec["target_blurred_max"] = target
            rec["confounder"] = name

    if "hilar-symmetric" in spec.confounders:
        hilar_pair("hilar-symmetric", (9.0, 11.0), (2.0, 2.3), min_short=8.0)
    if "granulomatous-hila" in spec.confounders:
        # Granulomatous / reactive hilar nodes: both sides, same size, SUVmax about 3 (above
        # the 2.5 convention, below 4: CLINICAL.md 3, Hellwig 2007).
        hilar_pair("granulomatous-hila", (10.0, 13.0), (2.8, 3.3), min_short=9.0)
    primary = None
    if spec.primary_side != "none":
        lobe = f"lung_{spec.primary_lobe}_lobe_{spec.primary_side}"
        lobe_code = np.array([table.code(lobe)])
        kz = np.nonzero((grid.axis("z") > -200.0) & (grid.axis("z") < 120.0))[0]
        k, j, i = np.nonzero(labels[kz[0]:kz[-1] + 1] == lobe_code[0])
        k = k + kz[0]
        diam = float(rng.uniform(20.0, 40.0))
        primary = None
        for d in (diam, diam * 0.8, 20.0, 16.0):
            for _ in range(300):
                q = int(rng.integers(len(k)))
                c = (grid.origin[0] + i[q] * grid.spacing[0],
                     grid.origin[1] + j[q] * grid.spacing[1],
                     grid.origin[2] + k[q] * grid.spacing[2])
                radii = (d / 2 * float(rng.uniform(0.85, 1.0)), d / 2,
                         d / 2 * float(rng.uniform(0.9, 1.15)))
                rot = tuple(map(tuple, rotation(yaw_deg=float(rng.uniform(0, 180)),
                                                pitch_deg=float(rng.uniform(-20, 20)))))
                e = Ellipsoid(c, radii, rot)
                if placer.fits(e, lobe_code, 4.0):
                    primary = add_lesion("primary", e, float(rng.uniform(8.0, 15.0)), 38.0,
                                         side=spec.primary_side, lobe=spec.primary_lobe,
                                         counts=False, diameter_mm=round(d, 1))
                    break
            if primary is not None:
                break
        if primary is None:
            raise RuntimeError(f"phantom: no room for a primary in {lobe} (seed {spec.seed})")
    if "distant-lesion" in spec.confounders and whole:
        side = str(rng.choice(["left", "right"]))
        s = 1 if side == "left" else -1
        dz = 0.0 if side == "left" else -15.0
        r = float(rng.uniform(9.0, 13.0))
        e = Ellipsoid((s * 44.0, 36.0, -215.0 + dz), (r, r * 0.8, r * 1.1))
        add_lesion("distant", e, float(rng.uniform(6.0, 10.0)), 35.0,
                   where=f"adrenal gland {side} (possible M1)", counts=False)
    if "brown-fat" in spec.confounders:
        suv = float(rng.uniform(3.5, 6.0))
        fat_ok = [table.code("fat"), table.code("muscle"), table.code("mediastinal_fat")]
        bf_key = "brown_fat"
        table.add(bf_key, None, -65.0, suv)
        code = table.code(bf_key)
        blobs = []
        for s in (-1, 1):
            blobs.append(Ellipsoid((s * 62.0, -6.0, 96.0), (20.0, 12.0, 13.0)))
            blobs.append(Ellipsoid((s * 38.0, 70.0, 60.0), (8.0, 9.0, 22.0)))
        for e in blobs:
            sl, m = e.mask(grid)
            if m.size:
                t = labels[sl]
                t[m & np.isin(t, fat_ok)] = code
        lesions.append({"kind": "brown-fat", "ellipsoids": blobs, "suv": suv, "code": code,
                        "counts": False})
    lesions.extend(_physiology(spec, table, grid, labels, rng, offset))
    timings["lesions"] = time.perf_counter() - t1 - timings["lungs"]

    # 3) CT in HU
    t2 = time.perf_counter()
    hu_lut = table.lut("hu")
    ct_arr = _ct_from_labels(labels, hu_lut, table, grid, rng)
    origin_world = np.asarray(grid.origin) + offset
    ct = _image(ct_arr, origin_world, grid.spacing)
    timings["ct"] = time.perf_counter() - t2

    # 4) PET in SUV on its own grid
    t3 = time.perf_counter()
    ct_size = np.asarray(grid.shape[::-1]) * np.asarray(grid.spacing)
    pet_extent = np.asarray(gs.pet_size) * np.asarray(gs.pet_spacing)
    centre = origin_world + ct_size / 2
    pet_origin = centre - pet_extent / 2 + np.asarray(gs.pet_spacing) / 2 + np.array(
        [1.3, -0.9, 0.7])
    pet_ref = _image(np.zeros(gs.pet_size[::-1], np.float32), pet_origin, gs.pet_spacing)
    for rec in lesions:
        if "target_blurred_max" in rec:
            _calibrate(rec, labels, ct, table, pet_ref, offset, fwhm_mm=model.fwhm_mm)
        elif rec["kind"] == "node" and rec["counts"]:
            _calibrate(rec, labels, ct, table, pet_ref, offset,
                       floor=COUNTED_MIN_BLURRED_SUV, fwhm_mm=model.fwhm_mm)
    pet, clean = synthesize(labels, ct, table.lut("suv"), pet_ref, rng, model=model)
    timings["pet"] = time.perf_counter() - t3

    # 5) anatomy export and truth
    anat = _export_anatomy(labels, table, ct, Anatomy)
    lesion_labels, truth = _truth(spec, lesions, table, grid, offset, zg, clean, ct, myo,
                                  n_category, station_side, model)
    timings["total"] = time.perf_counter() - t0
    truth["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return Phantom(spec=spec, ct=ct, pet=pet, anatomy=anat, truth=truth,
                   lesion_labels=lesion_labels, timings_s=timings)


def _physiology(spec: PhantomSpec, table: TissueTable, grid: Grid, labels: np.ndarray,
                rng: np.random.Generator, offset: np.ndarray) -> list[dict]:
    """Physiological uptake asked for in ``spec.confounders`` (:data:`PHYSIOLOGY`).

    Returns one record per confounder (``kind`` "physiology", ``name``, ``where``, ``suv``
    = the painted activity, ``points_mm`` = world positions of the painted voxels). Each
    draws from ``rng`` only when asked for, so other phantoms stay unchanged.
    """
    out = []

    def points(codes) -> np.ndarray:
        kji = np.argwhere(codes_mask(labels, codes))[::7]
        xyz = np.asarray(grid.origin) + kji[:, ::-1] * np.asarray(grid.spacing)
        return xyz + offset

    conf = spec.confounders
    if "oesophagus" in conf:
        # Mild linear oesophageal uptake (reflux, oesophagitis or physiological): SUVmax
        # 2-3.5 along the whole tube (Bural 2006; Kamel 2004).
        suv = float(rng.uniform(2.7, 3.3))
        table.set_suv("esophagus", suv)
        out.append({"kind": "physiology", "name": "oesophagus", "suv": suv,
                    "where": "whole oesophagus (mild linear uptake)",
                    "points_mm": points([table.code("esophagus")])})
    if "thymus" in conf:
        # Thymic (rebound) hyperplasia: a bilobed, arrowhead-shaped soft-tissue structure in
        # the prevascular space above the heart, mild diffuse uptake SUVmax 2-3.5
        # (Brink 2001; Ferdinand 2004).
        suv = float(rng.uniform(3.4, 4.2))
        table.add("thymus", None, 35.0, suv, hull=True)
        code = table.code("thymus")
        fat = table.code("mediastinal_fat")
        lobes = (Ellipsoid((-9.0, -58.0, 38.0), (9.0, 5.5, 21.0),
                           tuple(map(tuple, rotation(yaw_deg=-20.0, pitch_deg=-15.0)))),
                 Ellipsoid((9.0, -57.0, 32.0), (10.0, 5.5, 23.0),
                           tuple(map(tuple, rotation(yaw_deg=20.0, pitch_deg=15.0)))))
        for e in lobes:
            sl, m = e.mask(grid)
            if m.size:
                t = labels[sl]
                t[m & (t == fat)] = code
        out.append({"kind": "physiology", "name": "thymus", "suv": suv,
                    "where": "prevascular space above the heart (bilobed thymus)",
                    "points_mm": points([code])})
    if "marrow" in conf:
        # Diffusely raised vertebral marrow (anaemia, G-CSF, reactive): SUVmax up to about
        # 3, every vertebra alike (Inoue 2004).
        suv = float(rng.uniform(2.7, 3.3))
        codes = [c for c, t in enumerate(table.tissues)
                 if t.key.startswith("vertebrae_") and t.key.endswith("/marrow")]
        for c in codes:
            table.set_suv(table.tissues[c].key, suv)
        out.append({"kind": "physiology", "name": "marrow", "suv": suv,
                    "where": "vertebral marrow (diffusely raised)", "points_mm": points(codes)})
    return out


def _blurred_max_over(clean: sitk.Image, clean_arr: np.ndarray, points_mm: np.ndarray) -> float:
    """Noise-free PET maximum at the PET voxels nearest to ``points_mm`` (world mm)."""
    from nstage.geometry import nearest_index

    if not len(points_mm):
        return float("nan")
    idx, ok = nearest_index(clean, np.asarray(points_mm, dtype=float))
    if not ok.any():
        return float("nan")
    idx = idx[ok]
    return round(float(clean_arr[idx[:, 0], idx[:, 1], idx[:, 2]].max()), 3)


def _calibrate(rec: dict, labels: np.ndarray, ct: sitk.Image, table: TissueTable,
               pet_ref: sitk.Image, offset: np.ndarray, floor: float | None = None,
               fwhm_mm: float = DEFAULT_MODEL.fwhm_mm) -> None:
    """Set a lesion's activity so that its blurred, noise-free PET maximum (as the truth
    reports it) hits ``rec["target_blurred_max"]``: the blur is linear in the activity, so two
    local evaluations and one correction suffice.

    With ``floor`` (SUV) instead of a target: keep the drawn activity unless the blurred
    maximum would fall below ``floor`` (small nodes lose most of their peak to partial
    volume), then raise it to ``floor``."""
    e: Ellipsoid = rec["ellipsoid"]
    key = table.tissues[rec["code"]].key
    centre = np.asarray(e.center) + offset

    def peak(activity: float) -> float:
        table.set_suv(key, activity)
        vals, pts = local_clean_pet(labels, ct, table.lut("suv"), pet_ref, centre,
                                    half_mm=max(e.radii) + 6.0, fwhm_mm=fwhm_mm)
        q = pts - offset
        inside = e.inside(q[:, 0], q[:, 1], q[:, 2], grow_mm=2.0)
        return float(vals[inside].max() if inside.any() else vals.max())

    if floor is not None:
        if peak(rec["suv"]) >= floor:
            table.set_suv(key, rec["suv"])
            return
        target = floor
    else:
        target = rec["target_blurred_max"]
    p0, p1 = peak(0.0), peak(10.0)
    a = 10.0 * (target - p0) / max(p1 - p0, 1e-6)
    for _ in range(3):
        got = peak(a)
        if abs(got - target) < 0.01:
            break
        a *= target / max(got, 1e-6) if got > p0 else 1.5
    a = max(a, 0.0)
    table.set_suv(key, a)
    rec["suv"] = a


def _activity_for(target_max: float, radius_mm: float, background: float,
                  fwhm_mm: float = DEFAULT_MODEL.fwhm_mm) -> float:
    """Activity (SUV) of a small sphere whose blurred maximum should be ``target_max``."""
    rc = recovery_coefficient(radius_mm, fwhm_mm)
    return max(background, (target_max - (1 - rc) * background) / max(rc, 0.2))


def _ct_from_labels(labels: np.ndarray, hu_lut: np.ndarray, table: TissueTable, grid: Grid,
                    rng: np.random.Generator) -> np.ndarray:
    """HU from tissue codes, lung parenchyma texture and CT noise (sd 12 HU)."""
    from scipy import ndimage

    out = np.empty(labels.shape, np.int16)
    lung_codes = np.array([table.code(k) for k in LOBE_CODES])
    lung = codes_mask(labels, lung_codes)
    ks = np.nonzero(lung.any(axis=(1, 2)))[0]
    texture = None
    if len(ks):
        js = np.nonzero(lung.any(axis=(0, 2)))[0]
        is_ = np.nonzero(lung.any(axis=(0, 1)))[0]
        box = (slice(ks[0], ks[-1] + 1), slice(js[0], js[-1] + 1), slice(is_[0], is_[-1] + 1))
        shape = tuple(s.stop - s.start for s in box)
        coarse = rng.standard_normal(tuple(max(2, n // 3) for n in shape)).astype(np.float32)
        tex = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)],
                           order=1)[:shape[0], :shape[1], :shape[2]]
        tex = tex / max(float(tex.std()), 1e-6)
        # sparse small bright dots: vessels seen end-on
        dots = rng.random(shape, dtype=np.float32) < 0.0025
        dots = ndimage.binary_dilation(dots, iterations=1) & (tex > 0.3)
        texture = (box, (18.0 * tex + 650.0 * dots).astype(np.float32))
    # CT noise (sd 12 HU) from a bank of noise slices, each slice shifted at random: the same
    # statistics as fresh noise at a fraction of the cost on whole-body volumes
    nz, ny, nx = labels.shape
    bank = (12.0 * rng.standard_normal((min(nz, 24), ny, nx), dtype=np.float32))
    picks = rng.integers(0, len(bank), nz)
    shifts = rng.integers(0, max(ny, nx), (nz, 2))
    for k in range(nz):
        hu = hu_lut[labels[k]]
        hu += np.roll(bank[picks[k]], (int(shifts[k, 0]), int(shifts[k, 1])), axis=(0, 1))
        np.rint(hu, out=hu)
        np.clip(hu, -1024, 3071, out=hu)
        out[k] = hu
    if texture is not None:
        box, tex = texture
        sub = out[box]
        m = lung[box]
        sub[m] = np.clip(sub[m].astype(np.float32) + tex[m], -1024, 3071).astype(np.int16)
    return out


# Fixed label numbering of the exported anatomy (derived names at the end).
def _label_names(table: TissueTable) -> list[str]:
    names = []
    for t in table.tissues:
        if t.label and t.label not in names:
            names.append(t.label)
    return names


def _export_anatomy(labels: np.ndarray, table: TissueTable, ct: sitk.Image, anatomy_cls):
    names = _label_names(table)
    value_of = {n: v + 1 for v, n in enumerate(names)}
    lut = np.zeros(256, np.uint8)
    for c, t in enumerate(table.tissues):
        if t.label:
            lut[c] = value_of[t.label]
    out = lut[labels]
    body = ~codes_mask(labels, [0, table.code("table")])
    anat = anatomy_cls(labels=out, names={v: n for n, v in value_of.items()}, reference=ct,
                       backend="phantom-truth", extra_masks={"body": body})
    myo = labels == table.code("heart/myocardium")
    anat.extra_masks["myocardium"] = myo
    return anat


def _truth(spec, lesions, table, grid, offset, zg, clean, ct, myo_suv, n_category,
           station_side, model: PetModel = DEFAULT_MODEL):
    lesion_labels = np.zeros(grid.shape, np.uint8)
    clean_arr = sitk.GetArrayFromImage(clean)

    def labels_of(rec):
        """World positions (mm) of (a sample of) the voxels a physiology record painted."""
        return rec["points_mm"]

    def labels_centroid(rec):
        return [round(float(v), 2) for v in rec["points_mm"].mean(axis=0)]

    def world(p):
        return [round(float(v), 2) for v in (np.asarray(p, float) + offset)]

    def blurred_max(ell: Ellipsoid) -> float:
        from nstage.geometry import mm_to_index

        c = np.asarray(ell.center) + offset
        r = max(ell.radii) + 3.0
        lo = np.floor(mm_to_index(clean, c - r)).astype(int)
        hi = np.ceil(mm_to_index(clean, c + r)).astype(int)
        lo = np.maximum(np.minimum(lo, hi), 0)
        hi = np.minimum(np.maximum(lo, hi) + 1, clean_arr.shape)
        sub = clean_arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if not sub.size:
            return float("nan")
        kk, jj, ii = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                 indexing="ij")
        from nstage.geometry import index_to_mm

        pts = index_to_mm(clean, np.stack([kk, jj, ii], -1)) - offset
        inside = ell.inside(pts[..., 0], pts[..., 1], pts[..., 2], grow_mm=2.0)
        vals = sub[inside] if inside.any() else sub.ravel()
        return round(float(vals.max()), 3)

    def paint_label(rec, value):
        sl, m = rec["ellipsoid"].mask(grid)
        t = lesion_labels[sl]
        t[m] = value

    primary = None
    nodes = []
    confounders = []
    next_value = 2
    for rec in lesions:
        if rec["kind"] == "primary":
            e = rec["ellipsoid"]
            paint_label(rec, 1)
            primary = {
                "side": rec["side"], "lobe": rec["lobe"], "centroid_mm": world(e.center),
                "diameter_mm": rec["diameter_mm"],
                "radii_mm": [round(float(r), 2) for r in e.radii],
                "suv_max": round(rec["suv"], 3), "suv_max_blurred": blurred_max(e),
                "volume_ml": round(4 / 3 * np.pi * float(np.prod(e.radii)) / 1000.0, 3),
                "label_value": 1,
            }
    # requested nodes in the order asked for, then the confounder nodes
    node_recs = sorted((r for r in lesions if r["kind"] in ("node", "confounder")),
                       key=lambda r: r.get("order", 10_000))
    for rec in node_recs:
        e = rec["ellipsoid"]
        paint_label(rec, next_value)
        nodes.append({
            "station": rec["station"], "side": rec["side"],
            "centroid_mm": world(e.center),
            "short_axis_mm": round(2 * float(min(e.radii)), 2),
            "radius_mm": round(float(min(e.radii)), 2),
            "radii_mm": [round(float(r), 2) for r in e.radii],
            "suv_max": round(rec["suv"], 3), "suv_max_blurred": blurred_max(e),
            "counts": bool(rec["counts"]), "kind": rec["kind"],
            **({"confounder": rec["confounder"]} if "confounder" in rec else {}),
            "volume_ml": round(4 / 3 * np.pi * float(np.prod(e.radii)) / 1000.0, 3),
            "label_value": next_value,
        })
        next_value += 1
    for rec in lesions:
        if rec["kind"] == "distant":
            e = rec["ellipsoid"]
            paint_label(rec, next_value)
            confounders.append({
                "name": "distant-lesion", "where": rec["where"], "centroid_mm": world(e.center),
                "radii_mm": [round(float(r), 2) for r in e.radii],
                "suv_max": round(rec["suv"], 3), "suv_max_blurred": blurred_max(e),
                "counts": False, "label_value": next_value,
            })
            next_value += 1
        elif rec["kind"] == "brown-fat":
            confounders.append({
                "name": "brown-fat", "where": "supraclavicular and paravertebral fat",
                "centroids_mm": [world(e.center) for e in rec["ellipsoids"]],
                "suv_max": round(rec["suv"], 3), "counts": False,
            })
    spec_conf = set(spec.confounders)
    if "hot-myocardium" in spec_conf:
        confounders.append({"name": "hot-myocardium", "where": "left ventricular myocardium",
                            "suv_max": round(myo_suv, 3), "counts": False})
    for name in ("hilar-symmetric", "subthreshold-node", "granulomatous-hila"):
        if name in spec_conf:
            confounders.append({"name": name, "where": "see nodes with kind 'confounder'",
                                "stations": [n["station"] for n in nodes
                                             if n.get("confounder") == name],
                                "suv_max_blurred": max((n["suv_max_blurred"] for n in nodes
                                                        if n.get("confounder") == name),
                                                       default=None),
                                "counts": False})
    for rec in lesions:
        if rec["kind"] == "physiology":
            confounders.append({
                "name": rec["name"], "where": rec["where"], "suv_max": round(rec["suv"], 3),
                "suv_max_blurred": _blurred_max_over(clean, clean_arr, labels_of(rec)),
                "centroid_mm": labels_centroid(rec), "counts": False})

    side = "unknown" if spec.primary_side == "none" else spec.primary_side
    stations = [n["station"] for n in nodes if n["counts"]]
    ns = n_category(side, stations)
    zw = zg.shifted(offset)
    lv = zw.levels
    truth = {
        "generator": "nstage.phantom",
        "spec": {"nodes": list(spec.nodes), "primary_side": spec.primary_side,
                 "primary_lobe": spec.primary_lobe, "extent": spec.extent, "seed": spec.seed,
                 "confounders": sorted(spec.confounders), "realistic": bool(spec.realistic)},
        "primary": primary,
        "nodes": nodes,
        "confounders": confounders,
        "n_stage": ns.n_stage,
        "n_stage_9th": ns.n_stage_9th,
        "counting_stations": sorted(set(stations)),
        "blood_pool_suv": model.blood_suv,
        "liver_suv": model.liver_suv,
        "myocardium_suv": round(myo_suv, 3),
        "pet_fwhm_mm": model.fwhm_mm,
        "pet": {"realistic": bool(spec.realistic), **model.to_dict()},
        "landmarks": {
            "carina_mm": world(np.array([0.0, 0.2, zg.levels["carina"]])),
            "carina_z_mm": round(lv["carina"], 2),
            "trachea_top_z_mm": round(lv["cricoid"], 2),
            "aortic_arch_top_z_mm": round(lv["aortic_arch_top"], 2),
            "aortic_arch_bottom_z_mm": round(lv["aortic_arch_bottom"], 2),
            "left_pulmonary_artery_top_z_mm": round(lv["left_pulmonary_artery_top"], 2),
            "brachiocephalic_crossing_z_mm": round(lv["brachiocephalic_crossing"], 2),
            "azygos_arch_bottom_z_mm": round(lv["azygos_arch_bottom"], 2),
            "manubrium_top_z_mm": round(lv["manubrium_top"], 2),
            "station7_bottom_z_mm": round(lv["station7_bottom"], 2),
            "inferior_pulmonary_vein_z_mm": round(lv["inferior_pulmonary_vein"], 2),
            "hilum_left_mm": [round(v, 2) for v in zw.hilum["left"]],
            "hilum_right_mm": [round(v, 2) for v in zw.hilum["right"]],
        },
        "zones": zw.to_dict(),
        "world_offset_mm": [round(float(v), 3) for v in offset],
    }
    return lesion_labels, truth
