"""Aorta of the classical backend: descending aorta, ascending aorta and the arch (working grid).

The aorta is traced as inscribed circles of blood-like tissue, slice by slice:

1. the **descending aorta** from a round section left-anterior of the vertebral body about
   30 mm below the carina, up to the arch and down to the diaphragm;
2. the **ascending aorta** from the largest round section in front of and to the right of the
   carina (right of the pulmonary trunk), up to the arch and down towards the aortic root;
3. the **arch**: on every slice holding both traces, the two circles are joined where the
   tissue between them is as thick as the aorta (the arch cut obliquely is one elongated
   section). Below the arch the two stay apart, so the aorta shows one section over the arch
   and two below it, which is how :func:`nstage.landmarks._aortic_arch` measures the arch's
   top and bottom.

Blood is 30-60 HU without contrast (the aorta is then told from its neighbours by the fat
around it) and 100-600 HU with iodinated contrast.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT; mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from nstage.anatomy.workgrid import Grid, inscribed, round_section
from nstage.morphology import dilate

# Aortic radius range (mm): adult thoracic aorta 20-40 mm wide.
R_MIN_MM, R_MAX_MM = 7.0, 20.0
# A trace ends where the circle narrows to a branch (supra-aortic arteries: radius 3-6 mm) or
# widens beyond this factor of its median radius so far (into the heart).
R_BRANCH_MM = 6.0
WIDENING = 1.4
# Where the descending aorta is looked for: this far below the carina, left of the vertebral
# body's centre, in front of it.
DESC_START_BELOW_CARINA_MM = 30.0
DESC_LEFT_OF_SPINE_MM = 25.0
DESC_MIN_LEFT_OF_SPINE_MM = 8.0
# The ascending aorta at the carina level: in front of the carina, not farther left than this
# (the pulmonary trunk lies left of it), at least this far from the descending aorta.
ASC_FRONT_OF_CARINA_MM = 8.0
ASC_MAX_LEFT_OF_CARINA_MM = 15.0
ASC_MAX_RIGHT_OF_CARINA_MM = 55.0
ASC_MIN_FROM_DESC_MM = 35.0
ASC_DOWN_MAX_MM = 45.0
ASC_START_MAX_R_MM = 30.0
# Above the ascending aorta's top (where it joins the arch) the descending trace may rise this
# much more (the arch's top); higher it has entered a supra-aortic branch.
ARCH_ABOVE_ASC_MM = 20.0
# The arch's top lies at most this far above its highest slice joining the two traces.
ARCH_CAP_MM = 8.0
# Between two circles on one slice, tissue at least this fraction of the smaller radius thick
# all along the line joining them is the arch.
ARCH_MIN_HALF_WIDTH = 0.5
# Without contrast blood-like means -30..700 HU (fat -100 and lung excluded); with contrast it
# is above this fraction of the blood level (the myocardium and vessel walls stay below).
PLAIN_BLOOD_HU = (-30.0, 700.0)
CONTRAST_BLOOD_FRACTION = 0.6


@dataclass
class AortaTrace:
    """Circle centres (j, i) and radii (mm) per slice, and the resulting mask."""

    mask: np.ndarray
    descending: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    ascending: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    arch_ks: list[int] = field(default_factory=list)


def blood_mask(g: Grid, lungs: np.ndarray, airway: np.ndarray, spine: np.ndarray,
               blood_hu: float | None) -> np.ndarray:
    """Blood-like tissue away from lung, airway and spine (working grid)."""
    if blood_hu is None:
        lo, hi = PLAIN_BLOOD_HU
    else:
        lo, hi = CONTRAST_BLOOD_FRACTION * blood_hu, 1000.0
    from nstage.anatomy.workgrid import ellipsoid

    keep_out = dilate(lungs | airway, ellipsoid(0, 1, 1)) | dilate(spine, ellipsoid(0, 1, 1))
    return (g.hu > lo) & (g.hu < hi) & ~keep_out


def _desc_start(g: Grid, soft: np.ndarray, spine: np.ndarray, k_start: int,
                carina_ji, contrast: bool):
    """Best circle left-anterior of the vertebral body within 10 mm of ``k_start``."""
    sp2 = (g.sp[1], g.sp[2])
    nz = soft.shape[0]
    best = None
    for k in range(max(0, k_start - g.mm(10.0, 0)), min(nz, k_start + g.mm(10.0, 0) + 1)):
        region = soft[k]
        if spine[k].any():
            sj, si = np.nonzero(spine[k])
            near = (sj.min(), si.mean() + DESC_LEFT_OF_SPINE_MM / g.sp[2])
            # Left of the vertebral body's centre: never the (contrast-bright) marrow.
            cols = np.arange(region.shape[1])
            region = region & ((cols - si.mean()) * g.sp[2] >= DESC_MIN_LEFT_OF_SPINE_MM)[None]
        elif carina_ji is not None:
            near = (carina_ji[0] + 25.0 / g.sp[1], carina_ji[1] + 20.0 / g.sp[2])
        else:
            continue
        c = round_section(region, sp2, near, 30.0, R_MIN_MM, R_MAX_MM) if contrast else None
        if c is None:
            c = inscribed(region, sp2, near, 25.0)
        if c and R_MIN_MM <= c[2] <= R_MAX_MM and (best is None or c[2] > best[1][2]):
            best = (k, c)
    return best


def _trace(g: Grid, soft: np.ndarray, lungs: np.ndarray, k0: int, c0, step: int,
           stop) -> dict[int, tuple[float, float, float]]:
    """Follow circles from (k0, c0) in direction ``step`` until lost or ``stop(k, c)``."""
    sp2 = (g.sp[1], g.sp[2])
    path: dict[int, tuple[float, float, float]] = {}
    prev = c0
    k = k0 + step
    while 0 <= k < soft.shape[0] and lungs[k].any():
        c = inscribed(soft[k], sp2, prev[:2], 8.0 + 0.5 * g.sp[0])
        if c is None or c[2] < max(0.6 * prev[2], R_BRANCH_MM) or c[2] > 1.5 * prev[2]:
            break
        # Without contrast the aorta may touch its neighbours without fat between them: the
        # inscribed circle then outgrows it; the aorta is never wider than R_MAX_MM.
        c = (c[0], c[1], min(c[2], R_MAX_MM))
        radii = [r for *_, r in path.values()] or [c0[2]]
        if c[2] > WIDENING * float(np.median(radii)):
            break  # widening into a heart chamber
        if stop(k, c):
            break
        path[k] = c
        prev = c
        k += step
    return path


def _descending(g: Grid, soft: np.ndarray, lungs: np.ndarray, spine: np.ndarray,
                carina_kji, start) -> dict[int, tuple[float, float, float]]:
    k0, c0 = start
    carina_k = None if carina_kji is None else int(round(carina_kji[0]))

    def drifted(k: int, c) -> bool:
        # Below the arch the descending aorta stays left of the spine's midline and behind
        # the carina; a trace drifting away has slipped into the heart or the oesophagus.
        if carina_k is not None and k >= carina_k:
            return False
        if spine[k].any() and c[1] < np.nonzero(spine[k])[1].mean():
            return True
        return carina_kji is not None and c[0] < carina_kji[1]

    path = {k0: c0}
    for step in (-1, 1):
        path.update(_trace(g, soft, lungs, k0, c0, step, drifted))
    return path


def _asc_start(g: Grid, soft: np.ndarray, medi: np.ndarray, carina_kji, desc) -> tuple | None:
    """Largest round section in front of and right of the carina, near the carina level."""
    kc, cj, ci = carina_kji
    sp2 = (g.sp[1], g.sp[2])
    best = None
    for k in range(int(kc) - g.mm(10.0, 0), int(kc) + 1):
        if not 0 <= k < soft.shape[0] or k not in desc:
            continue
        region = soft[k] & medi[k]
        jj, ii = np.indices(region.shape)
        dj, di = desc[k][:2]
        region &= jj <= cj - ASC_FRONT_OF_CARINA_MM / g.sp[1]
        region &= (ii - ci) * g.sp[2] <= ASC_MAX_LEFT_OF_CARINA_MM
        region &= (ci - ii) * g.sp[2] <= ASC_MAX_RIGHT_OF_CARINA_MM
        region &= np.hypot((jj - dj) * g.sp[1], (ii - di) * g.sp[2]) >= ASC_MIN_FROM_DESC_MM
        if not region.any():
            continue
        dt = ndi.distance_transform_edt(soft[k], sampling=sp2)
        dt = np.where(region, dt, 0.0)
        m = int(np.argmax(dt))
        r = float(dt.flat[m])
        # Touching neighbours (superior vena cava, pulmonary trunk) widen the circle on plain
        # CTs up to ASC_START_MAX_R_MM; the aorta's own radius is capped at R_MAX_MM.
        if R_MIN_MM <= r <= ASC_START_MAX_R_MM and (best is None or r > best[1][2]):
            j, i = np.unravel_index(m, dt.shape)
            best = (k, (float(j), float(i), r))
    if best is not None:
        k, (j, i, r) = best
        best = (k, (j, i, min(r, R_MAX_MM)))
    return best


def _ascending(g: Grid, soft: np.ndarray, lungs: np.ndarray, carina_k: int, start,
               desc) -> tuple[dict[int, tuple[float, float, float]], bool]:
    """The ascending aorta's circles, and whether it ran into the descending aorta."""
    k0, c0 = start
    met = []

    def merged(k: int, c) -> bool:
        # The trace has reached the descending aorta (over the arch): stop there.
        d = desc.get(k)
        if d is not None and np.hypot((c[0] - d[0]) * g.sp[1], (c[1] - d[1]) * g.sp[2]) < d[2]:
            met.append(k)
            return True
        return False

    def too_low(k: int, c) -> bool:
        return k < carina_k - g.mm(ASC_DOWN_MAX_MM, 0)

    path = {k0: c0}
    path.update(_trace(g, soft, lungs, k0, c0, 1, merged))
    path.update(_trace(g, soft, lungs, k0, c0, -1, too_low))
    return path, bool(met)


def _arch_joined(g: Grid, soft2d: np.ndarray, a, d) -> bool:
    """Whether tissue as thick as the aorta runs straight between circles ``a`` and ``d``."""
    dt = ndi.distance_transform_edt(soft2d, sampling=(g.sp[1], g.sp[2]))
    n = max(2, int(np.hypot(a[0] - d[0], a[1] - d[1]) * 2))
    js = np.linspace(a[0], d[0], n)
    is_ = np.linspace(a[1], d[1], n)
    vals = ndi.map_coordinates(dt, [js, is_], order=1)
    return bool(vals.min() >= ARCH_MIN_HALF_WIDTH * min(a[2], d[2]))


def _paint(g: Grid, shape2d, centres: list[tuple[float, float, float]]) -> np.ndarray:
    """Disks (radius + 1 mm) at the given centres (j, i, radius mm) on one slice."""
    out = np.zeros(shape2d, dtype=bool)
    for cj, ci, r in centres:
        rj, ri = (r + 1.0) / g.sp[1], (r + 1.0) / g.sp[2]
        j0, j1 = max(0, int(cj - rj)), min(shape2d[0], int(cj + rj) + 2)
        i0, i1 = max(0, int(ci - ri)), min(shape2d[1], int(ci + ri) + 2)
        jj, ii = np.ogrid[j0:j1, i0:i1]
        out[j0:j1, i0:i1] |= np.hypot((jj - cj) * g.sp[1], (ii - ci) * g.sp[2]) <= r + 1.0
    return out


def trace_aorta(g: Grid, soft: np.ndarray, lungs: np.ndarray, spine: np.ndarray,
                medi: np.ndarray | None, carina_kji, *, contrast: bool = False) -> AortaTrace:
    """Descending aorta, arch and ascending aorta as traced circles (working grid).

    Parameters
    ----------
    g : Grid
    soft : numpy.ndarray of bool
        Blood-like tissue (:func:`blood_mask`).
    lungs, spine : numpy.ndarray of bool
    medi : numpy.ndarray of bool or None
        Mediastinum (None: anywhere).
    carina_kji : array-like or None
        Carina (k, j, i) on the working grid.
    contrast : bool
        Contrast-enhanced CT (round sections are preferred when starting).
    """
    aorta = np.zeros_like(lungs)
    out = AortaTrace(mask=aorta)
    if medi is None:
        medi = np.ones_like(lungs)
    carina_k = None if carina_kji is None else int(round(carina_kji[0]))
    carina_ji = None if carina_kji is None else (float(carina_kji[1]), float(carina_kji[2]))
    if not spine.any() and carina_ji is None:
        g.notes.append("aorta not traced: neither spine nor carina to start from")
        return out
    ks_lung = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if ks_lung.size == 0:
        g.notes.append("aorta not traced: no lungs")
        return out
    k_start = carina_k - g.mm(DESC_START_BELOW_CARINA_MM, 0) if carina_k is not None \
        else int(np.median(ks_lung))
    k_start = int(np.clip(k_start, 0, soft.shape[0] - 1))
    start = _desc_start(g, soft, spine, k_start, carina_ji, contrast)
    if start is None:
        g.notes.append("descending aorta not found next to the spine")
        return out
    out.descending = _descending(g, soft, lungs, spine, carina_kji, start)
    if carina_kji is not None:
        a0 = _asc_start(g, soft, medi, carina_kji, out.descending)
        if a0 is not None:
            out.ascending, met = _ascending(g, soft, lungs, carina_k, a0, out.descending)
    if not out.ascending:
        g.notes.append("ascending aorta not found; aorta is the descending part only")
    joined = {k for k in set(out.descending) & set(out.ascending)
              if _arch_joined(g, soft[k], out.descending[k], out.ascending[k])}
    arch = _arch_run(joined)
    if out.ascending:
        # Where the ascending trace ran into the descending one, the latter goes on over the
        # arch's top; else both may have left the arch for its branches (or, without
        # contrast, tissue fused with them): the aorta ends a little above the arch.
        cap = max(out.ascending) + g.mm(ARCH_ABOVE_ASC_MM, 0) if met or not arch \
            else max(arch) + g.mm(ARCH_CAP_MM, 0)
        out.descending = {k: c for k, c in out.descending.items() if k <= cap}
        out.ascending = {k: c for k, c in out.ascending.items() if k <= cap}
    out.arch_ks = sorted(arch)
    shape2d = soft.shape[1:]
    for k in sorted(set(out.descending) | set(out.ascending)):
        circles = [c for c in (out.descending.get(k), out.ascending.get(k)) if c is not None]
        section = _paint(g, shape2d, circles)
        if k in arch:
            section |= _capsule(g, shape2d, soft[k], *circles)
        aorta[k] = section & soft[k]
    return out


def _arch_run(joined: set[int]) -> set[int]:
    """The arch: the lowest run of consecutive slices where the two traces are joined."""
    if not joined:
        return set()
    k = min(joined)
    run = set()
    while k in joined:
        run.add(k)
        k += 1
    return run


def _capsule(g: Grid, shape2d, soft2d: np.ndarray, a, d) -> np.ndarray:
    """Disks along the line from circle ``a`` to circle ``d``, as wide as the tissue allows."""
    dt = ndi.distance_transform_edt(soft2d, sampling=(g.sp[1], g.sp[2]))
    n = max(2, int(np.hypot(a[0] - d[0], a[1] - d[1]) * 2))
    centres = []
    for t in np.linspace(0.0, 1.0, n):
        j, i = a[0] + t * (d[0] - a[0]), a[1] + t * (d[1] - a[1])
        r = float(ndi.map_coordinates(dt, [[j], [i]], order=1)[0])
        centres.append((j, i, min(r, max(a[2], d[2]))))
    return _paint(g, shape2d, centres)
