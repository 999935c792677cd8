"""Per-slice binary morphology on whole volumes, in single passes.

Exact, faster equivalents of loops over axial slices that the anatomy and findings steps
need on every case. Arrays are in array order ``[z, y, x]``; "axial" means per index of
the first axis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

# 4-connectivity within an axial slice, none across slices.
INPLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
INPLANE_CROSS[1] = ndi.generate_binary_structure(2, 1)


def fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every axial slice of a 3D mask.

    The same result as ``np.stack([ndi.binary_fill_holes(s) for s in mask])``: background
    4-connected, within its slice, to the slice's border stays background, all other
    background becomes foreground. One labelling pass instead of an iterated dilation
    per slice.

    Parameters
    ----------
    mask : numpy.ndarray
        3D boolean array, array order.

    Returns
    -------
    numpy.ndarray of bool
    """
    mask = np.asarray(mask, dtype=bool)
    lab, n = ndi.label(~mask, structure=INPLANE_CROSS)
    if n == 0:
        return np.ones_like(mask)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[lab]


def fast_hull(mask2d: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2D mask (pixel centres), much faster than skimage's.

    Only the first and last pixel of every row can be hull vertices, so only those go to
    Qhull. Each row of a convex polygon is one interval, bounded by the facets whose
    normals point left or right, so the polygon is rasterised row by row.
    """
    rows = np.nonzero(mask2d.any(axis=1))[0]
    if rows.size == 0:
        return np.zeros_like(mask2d, dtype=bool)
    first = np.argmax(mask2d[rows], axis=1)
    last = mask2d.shape[1] - 1 - np.argmax(mask2d[rows, ::-1], axis=1)
    pts = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)]).astype(float)
    out = np.zeros_like(mask2d, dtype=bool)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):  # collinear / too few points: the mask is its own hull
        out[mask2d] = True
        return out
    # Inside: a * row + b * col + d <= tol for every facet (a, b, d); per row that bounds
    # col from below (b < 0) and above (b > 0), or holds or fails for the whole row (b = 0).
    tol = 1e-6
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    rr = np.arange(r0, r1, dtype=float)[:, None]
    a, b, d = hull.equations.T
    rhs = tol - a[None] * rr - d[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / b[None]
    lo = np.where(b < 0, bound, -np.inf).max(axis=1)
    hi = np.where(b > 0, bound, np.inf).min(axis=1)
    row_ok = np.where(b == 0, rhs >= 0, True).all(axis=1)
    c0, c1 = int(first.min()), int(last.max()) + 1
    cc = np.arange(c0, c1, dtype=float)[None]
    out[r0:r1, c0:c1] = (cc >= lo[:, None]) & (cc <= hi[:, None]) & row_ok[:, None]
    out |= mask2d
    return out
