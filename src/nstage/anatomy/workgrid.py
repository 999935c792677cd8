"""The coarse working grid of the classical backend and the small helpers its steps share.

Arrays are in array order ``[z, y, x]`` of a canonical image: index k grows superior, j
posterior, i to the patient's LEFT. Distances are in mm unless a name says ``_vox``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.morphology import bounding_box

CONN26 = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Grid:
    """The working CT and what every step needs to know about it.

    Attributes
    ----------
    hu : numpy.ndarray
        CT in HU on the working grid, array order.
    sp : tuple of float
        Spacing in mm, array order (z, y, x).
    image : SimpleITK.Image
        The working image (its geometry).
    notes : list of str
        What was not found or approximated, in words for the user.
    """

    hu: np.ndarray
    sp: tuple[float, float, float]
    image: sitk.Image
    notes: list[str] = field(default_factory=list)

    def mm(self, n: float, axis: int = 2) -> int:
        """``n`` mm in voxels along ``axis`` (at least 1)."""
        return max(1, int(round(n / self.sp[axis])))

    @property
    def vox_ml(self) -> float:
        return float(np.prod(self.sp)) / 1000.0

    @property
    def px_mm2(self) -> float:
        """Area of one in-plane pixel (mm^2)."""
        return float(self.sp[1] * self.sp[2])


def disk(r: int) -> np.ndarray:
    """2D disk of radius ``r`` voxels."""
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2) <= r * r


def ellipsoid(rz: int, ry: int, rx: int) -> np.ndarray:
    """3D ellipsoid with half-axes in voxels (0 allowed: flat along that axis)."""
    zz, yy, xx = np.mgrid[-rz:rz + 1, -ry:ry + 1, -rx:rx + 1]
    return (zz / max(rz, 0.5)) ** 2 + (yy / max(ry, 0.5)) ** 2 + (xx / max(rx, 0.5)) ** 2 <= 1.0


def components(mask: np.ndarray, structure=None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and voxel count per label (count of label 0 set to 0).

    Labelled within the mask's bounding box (the same labels, several times faster for the
    organ-sized masks of a thorax).
    """
    box = bounding_box(mask)
    lab = np.zeros(mask.shape, dtype=np.int32)
    if all(s.stop > s.start for s in box):
        lab[box], _ = ndi.label(mask[box], structure=structure)
    counts = np.bincount(lab[box].ravel()) if lab[box].size else np.zeros(1, np.int64)
    counts[0] = 0
    return lab, counts


def in_box(fn, mask: np.ndarray, pad: int, *args, **kwargs) -> np.ndarray:
    """``fn(mask, ...)`` computed in the mask's bounding box padded by ``pad`` voxels (for
    operations, such as an opening, whose result lies within that box)."""
    box = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad))
                for s, n in zip(bounding_box(mask), mask.shape, strict=True))
    out = np.zeros_like(mask)
    if all(s.stop > s.start for s in box):
        out[box] = fn(mask[box], *args, **kwargs)
    return out


def largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (empty when the mask is)."""
    lab, counts = components(mask)
    if counts.size <= 1 or counts.max() == 0:
        return np.zeros_like(mask, dtype=bool)
    return lab == int(np.argmax(counts))


# Inscribed circles are looked for in a window around the expected centre; radii up to this
# (mm) are exact there (larger ones are not asked for: the aorta is at most 20 mm).
INSCRIBED_MAX_MM = 32.0


def inscribed(mask2d: np.ndarray, sp: tuple[float, float], near: tuple[float, float],
              radius_mm: float) -> tuple[float, float, float] | None:
    """Largest inscribed circle of ``mask2d`` centred within ``radius_mm`` of ``near`` (j, i).

    Radii are exact up to ``INSCRIBED_MAX_MM`` (the distance map is computed in a window
    around ``near`` whose outside counts as background). Returns (j, i, radius mm) or None
    when the mask is empty there.
    """
    reach = radius_mm + INSCRIBED_MAX_MM
    lo = [max(0, int(np.floor(near[a] - reach / sp[a]))) for a in (0, 1)]
    hi = [min(mask2d.shape[a], int(np.ceil(near[a] + reach / sp[a])) + 1) for a in (0, 1)]
    win = mask2d[lo[0]:hi[0], lo[1]:hi[1]]
    if win.size == 0 or not win.any():
        return None
    dt = ndi.distance_transform_edt(np.pad(win, 1), sampling=sp)[1:-1, 1:-1]
    jj, ii = np.indices(win.shape)
    d = np.hypot((jj + lo[0] - near[0]) * sp[0], (ii + lo[1] - near[1]) * sp[1])
    dt = np.where(d <= radius_mm, dt, 0.0)
    m = int(np.argmax(dt))
    j, i = np.unravel_index(m, dt.shape)
    return float(j + lo[0]), float(i + lo[1]), float(dt.flat[m])


def round_section(mask2d: np.ndarray, sp: tuple[float, float], near: tuple[float, float],
                  within_mm: float, rmin: float, rmax: float
                  ) -> tuple[float, float, float] | None:
    """Closest compact, round 2D component (radius rmin-rmax mm) to ``near`` (j, i)."""
    lab, n = ndi.label(ndi.binary_opening(mask2d))
    best, best_d = None, within_mm
    for sl, c in zip(ndi.find_objects(lab), range(1, n + 1), strict=True):
        m = lab[sl] == c
        area = m.sum() * sp[0] * sp[1]
        r = np.sqrt(area / np.pi)
        h, w = m.shape[0] * sp[0], m.shape[1] * sp[1]
        if not (rmin <= r <= rmax) or area < 0.6 * h * w or max(h, w) > 1.5 * min(h, w):
            continue
        jj, ii = np.nonzero(m)
        cj, ci = jj.mean() + sl[0].start, ii.mean() + sl[1].start
        d = np.hypot((cj - near[0]) * sp[0], (ci - near[1]) * sp[1])
        if d < best_d:
            best, best_d = (float(cj), float(ci), float(r)), d
    return best
