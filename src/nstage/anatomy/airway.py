"""Airway of the classical backend: trachea, carina, main bronchi (working grid).

1. **Trachea**: the tubular air column in the mediastinum, followed slice by slice from the top
   of the scan (:func:`trachea_chain`). An axial air section starts a chain when it is
   central, roughly round and walled by soft tissue; a chain continues into the air section
   below that overlaps it. Where the lung touches the tracheal wall and the two airs merge in
   a slice, the chain keeps only the air under the section above (the tube goes on, the lung
   beside it does not). The trachea is the highest-starting chain long enough to be one (the
   larynx above a closed glottis and an air-filled oesophagus make shorter or lower chains).
2. **Bronchi**: grown in 3D from the trachea through air, with the trachea part held to its
   tube and the growth below it held within reach of the main and lobar bronchi; the
   threshold is lowered while the growth leaks into the lungs.
3. **Carina**: the most cranial level where the grown airway divides into two branches that
   both continue (:func:`nstage.landmarks.airway_bifurcation`). The branches below it are the
   left and right bronchial trees; their first centimetres (typical main-bronchus lengths)
   are the main bronchi.

Coordinates: arrays ``[z, y, x]``, index k superior, j posterior, i patient LEFT; mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from nstage.anatomy.workgrid import CONN26, Grid, components, disk, ellipsoid
from nstage.morphology import dilate

# Lumen of the trachea on the ~2.5 mm working grid: air is -1000 HU, the wall's partial volume
# stays above about -600 HU.
TRACHEA_AIR_HU = -700.0
# A section that starts a trachea chain: adult tracheal lumen 12-25 mm wide (areas ~110-500 mm2;
# small or flattened tracheas and the subglottis go lower), centred within this distance of
# the body's midline, filling at least this much of its bounding box, at most this elongated,
# and with at least this fraction of a one-voxel ring around it soft tissue (its wall).
START_AREA_MM2 = (40.0, 900.0)
START_MAX_OFF_MIDLINE_MM = 35.0
START_MIN_FILL = 0.45
START_MAX_ASPECT = 3.0
START_MIN_WALL = 0.4
WALL_HU = -500.0
# A continuing section larger than this (or than GROWTH_FACTOR x the one above) has merged
# with the lung beside it.
MAX_SECTION_MM2 = 1200.0
GROWTH_FACTOR = 2.2
# Air sections are followed within this distance of the midline (mm).
CHAIN_WINDOW_MM = 70.0
# Two overlapping sections at least this large end a chain (a division).
MIN_BRANCH_MM2 = 20.0
# A trachea chain is at least this long (or half the scan's height on short slabs).
MIN_TRACHEA_MM = 30.0
# The division is looked for from this far above the trachea chain's lowest section.
SPLIT_SEARCH_ABOVE_MM = 20.0
# ... or at least this long when it ends in a division.
MIN_DIVIDING_MM = 10.0
# Tried in turn until the grown airway does not leak. Thick slices (>= 4 mm) raise the lumen of
# bronchi by partial volume, so they start higher.
AIRWAY_THRESHOLDS_HU = (-900.0, -950.0, -975.0, -990.0)
AIRWAY_THRESHOLDS_THICK_HU = (-850.0, -900.0, -950.0, -975.0)
AIRWAY_MAX_ML = 250.0
MAX_AIRWAY_SECTION_MM2 = 1500.0
# Below the trachea the growth stays within this distance of its lowest section: main and lobar
# bronchi (main bronchi 2-5 cm, lobar bronchi 1-3 cm more; Gray's Anatomy), not the periphery.
BRONCHI_REACH_MM = 80.0
# Typical adult main-bronchus lengths (left ~45-50 mm, right ~20-25 mm; Gray's Anatomy): the
# part of each bronchial tree within this distance of the carina is called main bronchus.
MAIN_BRONCHUS_MM = {"left": 48.0, "right": 28.0}


@dataclass
class Chain:
    """Axial air sections followed from one slice to the next (top down)."""

    sections: list[tuple[int, np.ndarray]] = field(default_factory=list)
    constrained: int = 0  # sections cut back to the tube (lung touching the wall)
    ended_by_division: bool = False

    @property
    def top_k(self) -> int:
        return self.sections[0][0]

    @property
    def bottom_k(self) -> int:
        return self.sections[-1][0]

    def length_mm(self, sz: float) -> float:
        return len(self.sections) * sz

    def mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for k, sec in self.sections:
            out[k] |= sec
        return out


@dataclass
class Airway:
    """The airway on the working grid (boolean masks, array order)."""

    tree: np.ndarray
    trachea: np.ndarray | None = None
    main_bronchus: dict[str, np.ndarray] = field(default_factory=dict)
    rest: np.ndarray | None = None
    carina_kji: np.ndarray | None = None
    chain: Chain | None = None


def _start_ok(g: Grid, k: int, sec: np.ndarray, box, mid_i: float) -> bool:
    """Whether an axial air section looks like the trachea: central, round, walled."""
    area = sec.sum() * g.px_mm2
    if not START_AREA_MM2[0] <= area <= START_AREA_MM2[1]:
        return False
    jj, ii = np.nonzero(sec[box])
    if abs(ii.mean() + box[1].start - mid_i) * g.sp[2] > START_MAX_OFF_MIDLINE_MM:
        return False
    h, w = (np.ptp(jj) + 1) * g.sp[1], (np.ptp(ii) + 1) * g.sp[2]
    if area < START_MIN_FILL * h * w or max(h, w) > START_MAX_ASPECT * min(h, w):
        return False
    ring = dilate(sec[None], disk(1)[None])[0] & ~sec
    return float((g.hu[k][ring] > WALL_HU).mean()) >= START_MIN_WALL


def _continue(g: Grid, chain: Chain, k: int, lab: np.ndarray, counts: np.ndarray,
              air_k: np.ndarray) -> tuple[np.ndarray | None, list[int]]:
    """The section of slice ``k`` that continues ``chain`` (None: the chain ends here).

    Returns the section and the component ids it used.
    """
    _, last = chain.sections[-1]
    near = dilate(last[None], disk(1)[None])[0]
    ids = np.unique(lab[near])
    ids = [int(c) for c in ids if c > 0 and counts[c] * g.px_mm2 >= MIN_BRANCH_MM2]
    if not ids:
        return None, []
    if len(ids) >= 2:
        chain.ended_by_division = True
        return None, ids
    c = ids[0]
    sec = lab == c
    area = counts[c] * g.px_mm2
    if area > max(MAX_SECTION_MM2, GROWTH_FACTOR * last.sum() * g.px_mm2):
        # Merged with the lung beside the wall: keep the air under the tube only.
        sec = air_k & near
        chain.constrained += 1
        if sec.sum() < 0.5 * last.sum():
            return None, [c]
    return sec, [c]


def trachea_chain(g: Grid, body: np.ndarray, mid_i: float) -> Chain | None:
    """The trachea as a chain of axial air sections followed from the top of the scan.

    Parameters
    ----------
    g : Grid
    body : numpy.ndarray of bool
    mid_i : float
        Column index of the body's midline.

    Returns
    -------
    Chain or None
        The highest-starting chain at least ``MIN_TRACHEA_MM`` long (half the scan's height
        on shorter scans, and never fewer than 3 slices).
    """
    nz = g.hu.shape[0]
    # Only the central columns: the trachea starts near the midline and stays there.
    x0 = max(0, int(mid_i - CHAIN_WINDOW_MM / g.sp[2]))
    x1 = min(g.hu.shape[2], int(mid_i + CHAIN_WINDOW_MM / g.sp[2]) + 1)
    air = np.zeros(g.hu.shape, dtype=bool)
    air[:, :, x0:x1] = (g.hu[:, :, x0:x1] < TRACHEA_AIR_HU) & body[:, :, x0:x1]
    min_len = max(3 * g.sp[0], min(MIN_TRACHEA_MM, 0.5 * nz * g.sp[0]))
    open_chains: list[Chain] = []
    finished: list[Chain] = []
    for k in range(nz - 1, -1, -1):
        lab, counts = components(air[k])
        used: set[int] = set()
        still_open = []
        for chain in open_chains:
            sec, ids = _continue(g, chain, k, lab, counts, air[k])
            used.update(ids)
            if sec is None:
                finished.append(chain)
            else:
                chain.sections.append((k, sec))
                still_open.append(chain)
        boxes = ndi.find_objects(lab)
        for c, box in enumerate(boxes, start=1):
            if box is None or c in used:
                continue
            area = counts[c] * g.px_mm2
            if not START_AREA_MM2[0] <= area <= START_AREA_MM2[1]:
                continue
            sec = lab == c
            if _start_ok(g, k, sec, box, mid_i):
                still_open.append(Chain(sections=[(k, sec)]))
        open_chains = still_open
    # A chain that ends in a division is the trachea above the carina even when the scan shows
    # only a little of it.
    done = [ch for ch in finished + open_chains if ch.length_mm(g.sp[0]) >= min_len
            or (ch.ended_by_division and ch.length_mm(g.sp[0]) >= MIN_DIVIDING_MM
                and len(ch.sections) >= 3)]
    if not done:
        return None
    # The highest-starting long chain; between chains starting on the same slice, the longest.
    return max(done, key=lambda ch: (ch.top_k, ch.length_mm(g.sp[0])))


def _grow_domain(g: Grid, chain: Chain, air: np.ndarray) -> np.ndarray:
    """Where the airway may grow: the tube above the chain's end, the bronchi's reach below."""
    dom = np.zeros_like(air)
    ring = disk(1)[None]
    for k, sec in chain.sections:
        dom[k] = dilate(sec[None], ring)[0] & air[k]
    kb = chain.bottom_k
    jj, ii = np.nonzero(chain.sections[-1][1])
    cj, ci = jj.mean(), ii.mean()
    zz, yy, xx = np.ogrid[:kb, :air.shape[1], :air.shape[2]]
    reach = (((zz - kb) * g.sp[0]) ** 2 + ((yy - cj) * g.sp[1]) ** 2
             + ((xx - ci) * g.sp[2]) ** 2) <= BRONCHI_REACH_MM ** 2
    dom[:kb] = air[:kb] & reach
    return dom


def grow_airway(g: Grid, body: np.ndarray, chain: Chain) -> np.ndarray | None:
    """Airway grown from the trachea chain, lowering the threshold while it leaks."""
    thresholds = AIRWAY_THRESHOLDS_THICK_HU if g.sp[0] >= 4.0 else AIRWAY_THRESHOLDS_HU
    seeds = chain.mask(g.hu.shape)
    for t in thresholds:
        dom = _grow_domain(g, chain, (g.hu < t) & body)
        start = seeds & dom
        if not start.any():
            continue
        # 26-connectivity: with thick slices a bronchus moves sideways between slices.
        lab, _ = ndi.label(dom, structure=CONN26)
        ids = np.unique(lab[start])
        tree = np.isin(lab, ids[ids > 0])
        vol = tree.sum() * g.vox_ml
        max_area = tree.sum(axis=(1, 2)).max() * g.px_mm2
        if vol <= AIRWAY_MAX_ML and max_area <= MAX_AIRWAY_SECTION_MM2:
            return tree
        g.notes.append(f"airway grown at {t:.0f} HU leaked ({vol:.0f} ml); threshold lowered")
    return None


def find_airway(g: Grid, body: np.ndarray, mid_i: float, apex_k: int | None) -> Airway:
    """Trachea, bronchial trees and carina on the working grid.

    Parameters
    ----------
    g : Grid
    body : numpy.ndarray of bool
    mid_i : float
        Column index of the body's midline.
    apex_k : int or None
        Slice of the lung apices (the carina lies well below them).
    """
    from nstage.landmarks import airway_bifurcation

    empty = np.zeros(g.hu.shape, bool)
    chain = trachea_chain(g, body, mid_i)
    if chain is None:
        g.notes.append("trachea not found (no round, walled, central air column followed from "
                       "the top of the scan)")
        return Airway(tree=empty)
    if chain.constrained:
        g.notes.append(f"trachea touches the lung in {chain.constrained} slice(s): kept to its "
                       "tube there")
    core = grow_airway(g, body, chain)
    if core is None:
        g.notes.append("bronchi could not be grown without leaking into the lungs; airway "
                       "is the trachea only")
        core = chain.mask(g.hu.shape)
    # The lumen's partial-volume rim (one in-plane voxel, still air-ish) is added for the labels
    # only; the split is looked for on the core, where touching branches stay apart.
    rim = dilate(core, disk(1)[None]) & (g.hu < WALL_HU) & body
    rim[chain.bottom_k + 1:] &= dilate(chain.mask(g.hu.shape), disk(1)[None])[chain.bottom_k + 1:]
    tree = core | rim
    out = Airway(tree=tree, chain=chain)
    # Looked for from a little above the chain's end (the trachea is one section there; higher
    # up, a closed glottis may interrupt the grown lumen).
    start_k = min(chain.top_k, chain.bottom_k + g.mm(SPLIT_SEARCH_ABOVE_MM, 0))
    split = airway_bifurcation(core, g.sp, start_k=start_k,
                               max_k=None if apex_k is None else apex_k - g.mm(20.0, 0))
    if split is None:
        g.notes.append("carina not found: the airway does not divide in view; all of it is "
                       "called trachea")
        out.trachea = tree
        return out
    _split_labels(g, out, core, split)
    return out


def _split_labels(g: Grid, out: Airway, core: np.ndarray, split) -> None:
    """Trachea above the division, left/right trees below it, main bronchi near the carina."""
    tree = out.tree
    k_split, comp_a, comp_b = split
    above = np.zeros_like(tree)
    above[k_split + 1:] = tree[k_split + 1:]
    below = tree & ~above
    lab, _ = ndi.label(below & ~dilate(above, ellipsoid(1, 0, 0)) | (below & core),
                       structure=CONN26)
    lab[~below] = 0
    ids = {}
    for name, comp in (("a", comp_a), ("b", comp_b)):
        vals = lab[k_split][comp]
        vals = vals[vals > 0]
        ids[name] = int(np.bincount(vals).argmax()) if vals.size else 0
    xa = np.nonzero(comp_a)[1].mean()
    xb = np.nonzero(comp_b)[1].mean()
    left_id, right_id = (ids["a"], ids["b"]) if xa > xb else (ids["b"], ids["a"])
    ca = np.array([np.nonzero(c)[i].mean() for c in (comp_a, comp_b) for i in (0, 1)])
    carina = np.array([k_split, 0.5 * (ca[0] + ca[2]), 0.5 * (ca[1] + ca[3])])
    out.carina_kji = carina
    out.trachea = above
    zz, yy, xx = np.indices(tree.shape, sparse=True)
    dist = np.sqrt(((zz - carina[0]) * g.sp[0]) ** 2 + ((yy - carina[1]) * g.sp[1]) ** 2
                   + ((xx - carina[2]) * g.sp[2]) ** 2)
    rest = below.copy()
    for side, cid in (("left", left_id), ("right", right_id)):
        side_tree = (lab == cid) if cid else np.zeros_like(tree)
        out.main_bronchus[side] = side_tree & (dist <= MAIN_BRONCHUS_MM[side])
        rest &= ~out.main_bronchus[side]
    out.rest = rest
