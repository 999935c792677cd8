"""Atomic writers: JSON and images appear complete or not at all (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nstage.errors import InputError
from nstage.study import ImageGeometry

_IMAGE_EXTENSIONS = (".nii.gz", ".mha", ".mhd", ".nii", ".nrrd", ".tif", ".tiff")


def _json_safe(obj: Any) -> Any:
    """Plain JSON types; NaN/inf -> None, numpy scalars/arrays -> Python, Paths -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _temp_path(path: Path, suffix: str) -> Path:
    """A fresh hidden file name next to ``path`` ending in ``suffix`` (same file system, so
    ``os.replace`` is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _default_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the permissions any new file gets
    # (shared research folders, Grand Challenge's upload step), i.e. 0666 minus the umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(obj: Any, path: str | Path, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder + rename).

    NaN and infinity become ``null``; numpy values become Python numbers; parent folders are
    created. A failure leaves any previous ``path`` untouched and no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(obj), indent=indent, allow_nan=False) + "\n"
    tmp = _temp_path(path, ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
    return path


def _image_suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in _IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise InputError("unknown image file extension", path,
                     hint="use .mha, .nii.gz, .nii or .nrrd")


def write_image_atomic(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically; the format follows the extension.

    ``.mhd`` (header + raw file pair) is written directly since it is two files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _image_suffix(path)
    if suffix == ".mhd":
        sitk.WriteImage(image, str(path), compress)
        return path
    # SimpleITK picks the writer from the extension, so the temp name keeps it.
    tmp = _temp_path(path, suffix)
    try:
        sitk.WriteImage(image, str(tmp), compress)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
    return path


def labels_to_geometry(labels: np.ndarray, canonical_reference: sitk.Image,
                       geometry: ImageGeometry) -> sitk.Image:
    """A label array on the canonical CT grid as a uint8 image on the CT's input grid.

    When the input grid is a permutation/flip of the canonical one (the usual case), the
    array is re-oriented exactly (no interpolation); otherwise it is resampled with nearest
    neighbour.
    """
    labels = np.asarray(labels)
    ref_shape = canonical_reference.GetSize()[::-1]
    if labels.shape != ref_shape:
        raise ValueError(f"label array shape {labels.shape} does not match the reference "
                         f"image {ref_shape} (array order z, y, x)")
    if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label values must be within 0..255 for a uint8 image")
    image = sitk.GetImageFromArray(labels.astype(np.uint8, copy=False))
    image.CopyInformation(canonical_reference)
    if ImageGeometry.of(image) == geometry:
        return image  # the input was already canonical: nothing to re-orient (saves copies)

    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(geometry.direction)
    oriented = sitk.DICOMOrient(image, code)
    if (tuple(oriented.GetSize()) == tuple(geometry.size)
            and np.allclose(oriented.GetDirection(), geometry.direction, atol=1e-5)
            and np.allclose(oriented.GetSpacing(), geometry.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(oriented.GetOrigin(), geometry.origin, atol=1e-3)):
        out = sitk.GetImageFromArray(sitk.GetArrayFromImage(oriented))
        out.SetSpacing(geometry.spacing)
        out.SetOrigin(geometry.origin)
        out.SetDirection(geometry.direction)
        return out
    return sitk.Resample(image, geometry.empty_image(sitk.sitkUInt8), sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def write_label_image(labels: np.ndarray, canonical_reference: sitk.Image,
                      geometry: ImageGeometry, path: str | Path) -> Path:
    """Write a uint8 label array (array order z, y, x on ``canonical_reference``'s grid) as a
    compressed image with the CT's exact input geometry, atomically.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels 0..255, shape of ``canonical_reference``'s array.
    canonical_reference : SimpleITK.Image
        The canonical CT (``Study.ct``) the labels were computed on.
    geometry : ImageGeometry
        The CT grid as given (``Study.ct_geometry``); the file gets exactly this grid.
    path : str or Path
        Output file (``.mha`` for Grand Challenge).
    """
    return write_image_atomic(labels_to_geometry(labels, canonical_reference, geometry), path,
                              compress=True)
