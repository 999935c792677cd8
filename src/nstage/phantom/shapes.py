"""Voxel grid and smooth shape primitives for the phantom (ellipsoids, tubes, slabs).

All coordinates here are in the phantom's *anatomical frame*, millimetres, with LPS axes:
+x patient LEFT, +y POSTERIOR, +z SUPERIOR; the origin is the design position of the
carina in the midline. The world (scanner) position is the anatomical frame plus a fixed
offset (see :mod:`nstage.phantom.build`). Arrays are indexed ``[z, y, x]`` like
``sitk.GetArrayFromImage``.

Every primitive works inside the shape's bounding box so painting a small structure on a
whole-body grid costs only the voxels near it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in the anatomical frame.

    Attributes
    ----------
    origin : (x, y, z)
        Anatomical-frame position (mm) of voxel ``[0, 0, 0]``.
    spacing : (x, y, z)
        Voxel size in mm.
    shape : (nz, ny, nx)
        Array shape.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axis(self, name: str) -> np.ndarray:
        """Coordinates (mm) of the voxel centres along ``"x"``, ``"y"`` or ``"z"``."""
        a = "xyz".index(name)
        n = self.shape[::-1][a]
        return self.origin[a] + self.spacing[a] * np.arange(n)

    def index_range(self, lo: float, hi: float, axis: int) -> slice:
        """Slice of voxel indices along ``axis`` (0=x,1=y,2=z) whose centres lie in [lo, hi]."""
        n = self.shape[::-1][axis]
        o, s = self.origin[axis], self.spacing[axis]
        i0 = max(0, int(np.ceil((lo - o) / s - 1e-9)))
        i1 = min(n, int(np.floor((hi - o) / s + 1e-9)) + 1)
        return slice(i0, max(i0, i1))

    def box(self, lo: Sequence[float], hi: Sequence[float]):
        """Index box and broadcastable coordinate arrays for the mm box ``[lo, hi]`` (xyz).

        Returns
        -------
        sl : tuple of slice
            ``(slice_z, slice_y, slice_x)``; empty when the box misses the grid.
        x, y, z : numpy.ndarray
            Coordinates shaped ``(1, 1, nx)``, ``(1, ny, 1)``, ``(nz, 1, 1)``.
        """
        sx = self.index_range(lo[0], hi[0], 0)
        sy = self.index_range(lo[1], hi[1], 1)
        sz = self.index_range(lo[2], hi[2], 2)
        x = (self.origin[0] + self.spacing[0] * np.arange(sx.start, sx.stop))[None, None, :]
        y = (self.origin[1] + self.spacing[1] * np.arange(sy.start, sy.stop))[None, :, None]
        z = (self.origin[2] + self.spacing[2] * np.arange(sz.start, sz.stop))[:, None, None]
        return (sz, sy, sx), x, y, z

    def to_index(self, p: Sequence[float]) -> tuple[int, int, int]:
        """Nearest voxel ``(k, j, i)`` of an anatomical point (may lie outside the grid)."""
        ijk = [int(round((p[a] - self.origin[a]) / self.spacing[a])) for a in range(3)]
        return ijk[2], ijk[1], ijk[0]

    def contains_index(self, kji: tuple[int, int, int]) -> bool:
        return all(0 <= v < n for v, n in zip(kji, self.shape, strict=True))


def _empty(sl) -> bool:
    return any(s.stop <= s.start for s in sl)


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix: ``roll`` about x, then ``pitch`` about y, then ``yaw`` about z (degrees)."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid: centre (mm), semi-axes (mm) and an optional rotation matrix.

    A point p is inside when ``sum(((R^T (p - c)) / radii)^2) <= 1``.
    """

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rot: tuple[tuple[float, ...], ...] | None = None

    def bounds(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center, float)
        r = np.asarray(self.radii, float) + pad
        if self.rot is not None:
            rm = np.abs(np.asarray(self.rot))
            r = rm @ r
        return c - r, c + r

    def scaled(self, grow_mm: float) -> Ellipsoid:
        return Ellipsoid(self.center, tuple(float(r + grow_mm) for r in self.radii), self.rot)

    def inside(self, x, y, z, grow_mm: float = 0.0) -> np.ndarray:
        c = self.center
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        r = np.asarray(self.radii, float) + grow_mm
        if self.rot is None:
            return (dx / r[0]) ** 2 + (dy / r[1]) ** 2 + (dz / r[2]) ** 2 <= 1.0
        m = np.asarray(self.rot)
        u = dx * m[0, 0] + dy * m[1, 0] + dz * m[2, 0]
        v = dx * m[0, 1] + dy * m[1, 1] + dz * m[2, 1]
        w = dx * m[0, 2] + dy * m[1, 2] + dz * m[2, 2]
        return (u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2 <= 1.0

    def mask(self, grid: Grid, grow_mm: float = 0.0):
        """``(sl, mask)`` of the ellipsoid on ``grid`` (mask covers the box ``sl``)."""
        lo, hi = self.bounds(grow_mm)
        sl, x, y, z = grid.box(lo, hi)
        if _empty(sl):
            return sl, np.zeros((0, 0, 0), bool)
        return sl, self.inside(x, y, z, grow_mm)


def resample_polyline(points: Sequence[Sequence[float]], radii: Sequence[float] | float,
                      step: float = 0.5, smooth: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Dense points (step mm) along a polyline with linearly interpolated radii.

    With ``smooth`` the control polygon is first rounded by Chaikin corner cutting, so tubes
    bend smoothly instead of kinking at control points.
    """
    p = np.asarray(points, float)
    r = np.broadcast_to(np.asarray(radii, float), (len(p),)).astype(float)
    if smooth and len(p) > 2:
        for _ in range(3):
            q = [p[0]]
            rq = [r[0]]
            for a in range(len(p) - 1):
                q += [0.75 * p[a] + 0.25 * p[a + 1], 0.25 * p[a] + 0.75 * p[a + 1]]
                rq += [0.75 * r[a] + 0.25 * r[a + 1], 0.25 * r[a] + 0.75 * r[a + 1]]
            q.append(p[-1])
            rq.append(r[-1])
            p, r = np.asarray(q), np.asarray(rq)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(t, s, p[:, a]) for a in range(3)], axis=1)
    return out, np.interp(t, s, r)


@dataclass(frozen=True)
class Tube:
    """A smooth tube (vessel, airway, bone shaft) along a centreline with varying radius."""

    points: np.ndarray  # (n, 3) dense centreline, mm
    radii: np.ndarray  # (n,) mm

    @classmethod
    def through(cls, points, radii, smooth: bool = True, step: float = 0.5) -> Tube:
        p, r = resample_polyline(points, radii, step=step, smooth=smooth)
        return cls(p, r)

    def bounds(self, pad: float = 0.0):
        rmax = float(self.radii.max()) + pad
        return self.points.min(axis=0) - rmax, self.points.max(axis=0) + rmax

    def paint(self, grid: Grid, fn, grow_mm: float = 0.0, chunk: int = 40) -> None:
        """Call ``fn(sl, mask)`` for pieces of the tube (chunks of the centreline).

        Chunking keeps each bounding box small, so long oblique tubes stay cheap.
        """
        n = len(self.points)
        for a in range(0, n, chunk):
            b = min(n, a + chunk + 1)
            pts, rad = self.points[a:b], self.radii[a:b] + grow_mm
            rmax = float(rad.max())
            sl, x, y, z = grid.box(pts.min(axis=0) - rmax, pts.max(axis=0) + rmax)
            if _empty(sl):
                continue
            xx, yy, zz = np.broadcast_arrays(x, y, z)
            q = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
            d, idx = cKDTree(pts).query(q, distance_upper_bound=rmax + 1.0)
            ok = np.isfinite(d)
            m = np.zeros(len(q), bool)
            m[ok] = d[ok] <= rad[idx[ok]]
            fn(sl, m.reshape(xx.shape))

    def distance(self, p: Sequence[float]) -> float:
        """Distance (mm) from point ``p`` to the centreline."""
        return float(np.min(np.linalg.norm(self.points - np.asarray(p, float), axis=1)))

    def surface_distance(self, p: Sequence[float]) -> float:
        """Signed distance (mm) from ``p`` to the tube wall (negative inside)."""
        d = np.linalg.norm(self.points - np.asarray(p, float), axis=1) - self.radii
        return float(d.min())


def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)
