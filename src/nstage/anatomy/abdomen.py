"""Upper abdomen of the classical backend (working grid): the liver, for the PERCIST liver
reference, and the seeds that keep the heart out of the abdomen.

The liver lies under the right hemidiaphragm. Its seed is soft tissue 15-40 mm below the dome
of the right lung's base (the median lowest lung slice over the lung's central footprint, so
neither the costophrenic recesses nor lung lying over the heart count); the stomach and spleen
are seeded the same way under the left lung. The seeds compete with the heart's along the CT's
edges (:func:`nstage.anatomy.mediastinum.organ_watershed`); the liver is then the liver basin's
soft tissue, opened with a ball so the abdominal wall, kidney and bowel it touches narrowly fall
away.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT; mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from nstage.anatomy.workgrid import Grid, components, in_box
from nstage.morphology import ball, dilate, erode, opening

# Unenhanced liver 40-70 HU, enhanced 80-200 HU.
LIVER_HU = (0.0, 300.0)
# The dome is measured over the lung's footprint shrunk by this (mm): away from the recesses;
# as this percentile of the lowest lung slices there: low, because a tumour or collapsed lung
# on the diaphragm lifts the lung's base above it (the liver's top may be missed, its bulk not).
DOME_FOOTPRINT_ERODE_MM = 15.0
DOME_PERCENTILE = 25.0
# Tumours or collapsed lung on the diaphragm narrower than this (radius, mm) are told from
# the dome.
BUMP_MM = 40.0
# The seed slab under a dome (mm below it) and how far the seed is eroded (mm).
SEED_BELOW_DOME_MM = (15.0, 40.0)
SEED_ERODE_MM = 5.0
# Opening ball: the liver is several centimetres thick; muscle, bowel walls and the
# connections to the kidney and stomach are thinner.
LIVER_OPEN_MM = 8.0
# An organ's tissue lies within this many median absolute deviations of its seed's median HU
# (at least LEVEL_MIN_TOL_HU): an unenhancing tumour on the diaphragm differs from an
# enhanced liver by more.
LEVEL_MAD_FACTOR = 3.0
LEVEL_MIN_TOL_HU = 15.0
# Below this the component is not a liver in view (ml).
MIN_LIVER_ML = 100.0


def dome_k(g: Grid, lung: np.ndarray) -> tuple[float, np.ndarray] | None:
    """Slice at or below a lung's diaphragmatic dome and the lung's central footprint (2D)."""
    proj = lung.any(axis=0)
    if not proj.any():
        return None
    r = max(1, int(round(DOME_FOOTPRINT_ERODE_MM / g.sp[1])))
    core = ndi.binary_erosion(proj, iterations=r)
    if core.sum() < 10:
        core = proj
    low = np.argmax(lung, axis=0)[core]
    return float(np.percentile(low, DOME_PERCENTILE)), core


def diaphragm_surface(g: Grid, lung: np.ndarray) -> np.ndarray:
    """Slice index of the diaphragm under a lung per (j, i) column (NaN outside its footprint).

    The lowest lung slice per column is the lung's base, except where a tumour or collapsed
    lung sits on the diaphragm and lifts the aerated base above it; such a bump is narrower
    than the dome, so a grey opening of the base heights with a ``BUMP_MM``-radius disk takes
    it away and keeps the dome.
    """
    has = lung.any(axis=0)
    out = np.full(has.shape, np.nan)
    if not has.any():
        return out
    low = np.argmax(lung, axis=0).astype(float)
    _, idx = ndi.distance_transform_edt(~has, return_indices=True)
    filled = low[idx[0], idx[1]]
    # On every second column: the dome is smooth, and a 40 mm disk is costly at full size.
    step = 2
    coarse = filled[::step, ::step]
    r = max(1, int(round(BUMP_MM / (g.sp[1] * step))))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    opened = ndi.grey_opening(coarse, footprint=(yy ** 2 + xx ** 2) <= r * r)
    opened = np.repeat(np.repeat(opened, step, axis=0), step, axis=1)[:has.shape[0], :has.shape[1]]
    out[has] = opened[has]
    return out


def seed_under_dome(g: Grid, lung: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Tissue 15-40 mm under a lung's dome, in its footprint, eroded (empty when out of view)."""
    out = np.zeros_like(tissue)
    dome = dome_k(g, lung)
    if dome is None:
        return out
    k_dome, core = dome
    hi = int(k_dome) - g.mm(SEED_BELOW_DOME_MM[0], 0)
    lo = max(0, int(k_dome) - g.mm(SEED_BELOW_DOME_MM[1], 0))
    if hi <= lo:
        return out
    out[lo:hi] = tissue[lo:hi] & core[None]
    return erode(out, ball(g.sp, SEED_ERODE_MM))


def seed_level(g: Grid, seed: np.ndarray) -> tuple[float, float] | None:
    """An organ's CT level from its seed: median HU and the tolerance around it
    (``LEVEL_MAD_FACTOR`` median absolute deviations, at least ``LEVEL_MIN_TOL_HU``)."""
    if not seed.any():
        return None
    v = g.hu[seed]
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return med, max(LEVEL_MIN_TOL_HU, LEVEL_MAD_FACTOR * mad)


def liver_tissue(g: Grid, body: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    return (g.hu > LIVER_HU[0]) & (g.hu < LIVER_HU[1]) & body & ~exclude


def below_surface(surface: np.ndarray, shape) -> np.ndarray:
    """Voxels at or below a surface (columns where it is NaN: none)."""
    kk = np.arange(shape[0])[:, None, None]
    return kk <= np.where(np.isnan(surface), -1, surface)[None]


def liver(g: Grid, basin: np.ndarray, seed: np.ndarray, tissue: np.ndarray,
          surface: np.ndarray) -> np.ndarray:
    """The liver: its watershed basin's soft tissue, opened, the part holding its seed; within
    the right lung's footprint only below the diaphragm (``surface``).

    Returns an empty mask (and a note) when the liver is not in view.
    """
    if not seed.any():
        g.notes.append("liver not in view (no soft tissue under the right hemidiaphragm)")
        return np.zeros_like(basin)
    # Nothing above the diaphragm is liver (a tumour or collapsed lung on it is not), nor
    # tissue unlike the liver's own.
    above = ~np.isnan(surface)[None] & ~below_surface(surface, basin.shape)
    med, tol = seed_level(g, seed)
    tissue = tissue & (np.abs(g.hu - med) <= tol)
    cand = in_box(opening, basin & tissue & ~above, 1, ball(g.sp, LIVER_OPEN_MM))
    lab, counts = components(cand)
    ids = np.unique(lab[seed & cand])
    ids = ids[ids > 0]
    if ids.size == 0:
        g.notes.append("liver not found under the right hemidiaphragm")
        return np.zeros_like(basin)
    out = np.isin(lab, ids)
    out = dilate(out, ball(g.sp, g.sp[1])) & basin & tissue & ~above
    if out.sum() * g.vox_ml < MIN_LIVER_ML:
        g.notes.append("liver not found under the right hemidiaphragm")
        return np.zeros_like(basin)
    return out
