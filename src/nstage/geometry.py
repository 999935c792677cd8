"""Image geometry shared by every step.

Conventions
-----------
- Physical space is ITK's LPS in millimetres: +x patient LEFT, +y POSTERIOR,
  +z SUPERIOR.
- Inside the pipeline every image is in *canonical orientation*: direction
  cosines as close to identity as the data allow (``sitk.DICOMOrient(img,
  "LPS")``), so numpy arrays from ``sitk.GetArrayFromImage`` are indexed
  ``[k, j, i] = [z, y, x]`` with k growing superior, j posterior, i to the
  patient's left. Outputs are mapped back onto the input geometry at the end.
- Index boxes are ``(slice_z, slice_y, slice_x)`` tuples in array order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

Point = tuple[float, float, float]  # (x, y, z) mm, LPS


def canonical(image: sitk.Image) -> sitk.Image:
    """Return ``image`` re-oriented to LPS axis order (a permutation/flip, no resampling).

    Physical positions of voxels are unchanged; only the array layout changes.
    """
    if np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-6):
        return image
    return sitk.DICOMOrient(image, "LPS")


def direction_matrix(image: sitk.Image) -> np.ndarray:
    return np.array(image.GetDirection(), dtype=float).reshape(3, 3)


def index_to_mm(image: sitk.Image, kji: np.ndarray | Sequence[float]) -> np.ndarray:
    """Array indices ``[k, j, i]`` (z, y, x order; may be fractional; shape (..., 3))
    to physical points ``(x, y, z)`` mm LPS (shape (..., 3))."""
    kji = np.asarray(kji, dtype=float)
    ijk = kji[..., ::-1]
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    return origin + (ijk * spacing) @ direction_matrix(image).T


def mm_to_index(image: sitk.Image, xyz: np.ndarray | Sequence[float]) -> np.ndarray:
    """Physical points ``(x, y, z)`` mm (shape (..., 3)) to fractional array indices
    ``[k, j, i]`` (shape (..., 3))."""
    xyz = np.asarray(xyz, dtype=float)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    ijk = ((xyz - origin) @ direction_matrix(image)) / spacing
    return ijk[..., ::-1]


def nearest_index(image: sitk.Image, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array indices ``[k, j, i]`` (int, shape (n, 3)) of the voxel nearest to each physical
    point ``(x, y, z)`` mm (shape (n, 3)), and whether that voxel lies in the image."""
    idx = np.rint(mm_to_index(image, xyz)).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(image.GetSize()[::-1])), axis=1)
    return idx, inside


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres (cm^3)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel spacing in mm in array order (z, y, x), for scipy.ndimage ``sampling``."""
    sx, sy, sz = image.GetSpacing()
    return (sz, sy, sx)


def z_of_slices(image: sitk.Image) -> np.ndarray:
    """Physical z (mm, superior positive) of every axial slice of a canonical image."""
    n = image.GetSize()[2]
    return np.array([index_to_mm(image, (k, 0, 0))[2] for k in range(n)])


def crop(image: sitk.Image, box: tuple[slice, slice, slice]) -> sitk.Image:
    """Crop a canonical image by an array-order index box, keeping physical positions."""
    size = image.GetSize()
    lo = []
    hi = []
    for s, n in zip(box[::-1], size, strict=True):
        start, stop, _ = s.indices(n)
        lo.append(start)
        hi.append(n - stop)
    return sitk.Crop(image, lo, hi)


def paste(reference: sitk.Image, part: np.ndarray, box: tuple[slice, slice, slice],
          dtype=np.uint8) -> np.ndarray:
    """Place ``part`` (array of a crop) into a zero array of ``reference``'s shape."""
    shape = reference.GetSize()[::-1]
    out = np.zeros(shape, dtype=dtype)
    out[box] = part
    return out


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap an array (array order) as an image with ``reference``'s geometry."""
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(reference)
    return img


def resample_to(image: sitk.Image, reference: sitk.Image, *, nearest: bool = False,
                default: float = 0.0, pixel_type=None) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (linear, or nearest for labels)."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    if pixel_type is None:
        pixel_type = image.GetPixelID()
    return sitk.Resample(image, reference, sitk.Transform(), interp, default, pixel_type)


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min xyz, max xyz) in mm of the voxel centres."""
    size = np.array(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])],
                       dtype=float)
    pts = index_to_mm(image, corners[:, ::-1])
    return pts.min(axis=0), pts.max(axis=0)
