"""DICOM series discovery and reading (CT in HU, PET in rescaled units with per-slice rescale).

Geometry is built from the headers: ImageOrientationPatient gives the row/column direction
cosines (LPS), slices are ordered along their normal by ImagePositionPatient, the slice
spacing is the (uniform) distance between consecutive positions. Values are
``stored x RescaleSlope + RescaleIntercept`` of each slice, so PET slices with their own
slope (the rule for PET) come out right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nstage.errors import GeometryError, InputError, SUVError

# Series descriptions that mean "not attenuation corrected" (GE "PET_BODY_NO_AC", Siemens
# "NAC", "uncorrected"), for scanners that still list ATTN in CorrectedImage.
_NON_AC_DESCRIPTION = re.compile(r"(?<![A-Z])(NO[ _-]?AC|NAC|NON[ _-]?AC|UNCORR\w*)(?![A-Z])",
                                 re.IGNORECASE)


@dataclass
class DicomSeries:
    """One DICOM series found on disk (headers only, no pixels).

    Attributes
    ----------
    uid : str
        SeriesInstanceUID.
    modality : str
        Modality (0008,0060): ``"CT"``, ``"PT"``...
    files : list of Path
        Files of the series (unsorted).
    headers : list of pydicom.Dataset
        Headers read without pixel data, same order as ``files``.
    """

    uid: str
    modality: str
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)

    @property
    def first(self):
        return self.headers[0]

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "").strip()

    @property
    def frame_of_reference(self) -> str | None:
        value = self.first.get("FrameOfReferenceUID")
        return str(value) if value else None

    @property
    def identity(self) -> dict[str, str]:
        """PatientID, StudyInstanceUID and FrameOfReferenceUID where the series carries them,
        as ``{"patient": ..., "study": ..., "frame_of_reference": ...}``."""
        found = {}
        for what, keyword in (("patient", "PatientID"), ("study", "StudyInstanceUID"),
                              ("frame_of_reference", "FrameOfReferenceUID")):
            value = str(self.first.get(keyword, "") or "").strip()
            if value:
                found[what] = value
        return found

    @property
    def held_bytes(self) -> int:
        """Bytes :func:`read_series` holds for the volume (float64), from the headers alone."""
        rows = int(self.first.get("Rows", 0) or 0)
        cols = int(self.first.get("Columns", 0) or 0)
        frames = sum(int(h.get("NumberOfFrames", 1) or 1) for h in self.headers)
        return rows * cols * frames * 8

    @property
    def folder(self) -> Path:
        return self.files[0].parent

    @property
    def label(self) -> str:
        """Short human name: folder and description."""
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.folder}{desc} ({self.modality}, {len(self.files)} files)"

    @property
    def scanner(self) -> str | None:
        parts = [str(self.first.get(k, "") or "").strip()
                 for k in ("Manufacturer", "ManufacturerModelName")]
        text = " ".join(p for p in parts if p)
        return text or None

    @property
    def is_localizer(self) -> bool:
        image_type = [str(t).upper() for t in (self.first.get("ImageType") or [])]
        return "LOCALIZER" in image_type or len(self.files) < 3


def find_series(folder: str | Path) -> list[DicomSeries]:
    """All DICOM image series under ``folder`` (recursive), grouped by SeriesInstanceUID.

    Files that are not DICOM images (DICOMDIR, reports, text files) are skipped.

    Raises
    ------
    InputError
        ``folder`` is not a folder.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    groups: dict[str, DicomSeries] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.upper() == "DICOMDIR" or path.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            continue
        if "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
            continue  # not an image (structured report, presentation state...)
        uid = str(ds.get("SeriesInstanceUID", "") or f"no-uid:{path.parent}")
        modality = str(ds.get("Modality", "") or "").upper()
        series = groups.setdefault(uid, DicomSeries(uid, modality))
        series.files.append(path)
        series.headers.append(ds)
    return list(groups.values())


def pet_refusal(series: DicomSeries) -> str | None:
    """Why a PET series cannot be used for SUV (None when it can).

    A series is refused when CorrectedImage (0028,0051) lacks ATTN or DECY, or when it lists
    them but the series description says non-attenuation-corrected (some GE exports).
    """
    corrected = series.first.get("CorrectedImage")
    values = [str(v).strip().upper() for v in (corrected or [])] if not isinstance(
        corrected, str) else [v.strip().upper() for v in corrected.split("\\")]
    missing = [c for c in ("ATTN", "DECY") if c not in values]
    shown = "/".join(values) if values else "nothing"
    if missing:
        return (f"CorrectedImage (0028,0051) lists {shown}, without {' and '.join(missing)} "
                "(not attenuation/decay corrected)")
    match = _NON_AC_DESCRIPTION.search(series.description)
    if match:
        return (f"CorrectedImage (0028,0051) lists ATTN but the series description "
                f"'{series.description}' marks it as not attenuation corrected")
    return None


def choose_pet(series: list[DicomSeries], where: Path) -> tuple[DicomSeries, list[str]]:
    """The one attenuation-corrected PET series among ``series``; notes on refused ones.

    Raises
    ------
    InputError
        No PET series, or several usable ones.
    SUVError
        PET series present but none is attenuation and decay corrected.
    """
    pets = [s for s in series if s.modality == "PT"]
    if not pets:
        found = ", ".join(sorted({s.modality or "?" for s in series})) or "no DICOM images"
        raise InputError(f"no PET series (Modality PT) found (found: {found})", where,
                         hint="point to the folder holding the PET DICOM files")
    refused = [(s, pet_refusal(s)) for s in pets]
    usable = [s for s, why in refused if why is None]
    notes = [f"PET series {s.label} not used: {why}" for s, why in refused if why]
    if not usable:
        reasons = "; ".join(f"{s.description or s.folder.name}: {why}" for s, why in refused)
        raise SUVError(f"no usable PET series: {reasons}", where,
                       hint="give the attenuation-corrected PET series")
    if len(usable) > 1:
        labels = "; ".join(s.label for s in usable)
        raise InputError(f"several attenuation-corrected PET series: {labels}", where,
                         hint="give the folder of one PET series with --pet")
    return usable[0], notes


def choose_ct(series: list[DicomSeries], where: Path,
              frame_of_reference: str | None = None) -> tuple[DicomSeries, list[str]]:
    """The CT series to use: not a localizer, preferably in ``frame_of_reference``, else the
    one with the most slices.

    Raises
    ------
    InputError
        No CT series.
    """
    cts = [s for s in series if s.modality == "CT" and not s.is_localizer]
    if not cts:
        found = ", ".join(sorted({s.modality or "?" for s in series})) or "no DICOM images"
        raise InputError(f"no CT series (Modality CT) found (found: {found})", where,
                         hint="point to the folder holding the CT DICOM files")
    notes = []
    if frame_of_reference:
        same = [s for s in cts if s.frame_of_reference == frame_of_reference]
        if same:
            cts = same
        else:
            notes.append("no CT series shares the PET's FrameOfReferenceUID; assuming the "
                         "images are registered")
    cts.sort(key=lambda s: len(s.files), reverse=True)
    if len(cts) > 1:
        notes.append(f"several CT series; used {cts[0].label}, not "
                     + "; ".join(s.label for s in cts[1:]))
    return cts[0], notes


@dataclass
class SeriesVolume:
    """Pixel values of a series as a 3D image, with the headers in slice order.

    Attributes
    ----------
    image : SimpleITK.Image
        float64 values ``stored x slope + intercept`` per slice, geometry from the headers.
    headers : list of pydicom.Dataset
        Headers in the order of the image's slices (k = 0, 1, ...).
    files : list of Path
        Files in the same order.
    """

    image: sitk.Image
    headers: list[Any]
    files: list[Path]


def read_series(series: DicomSeries) -> SeriesVolume:
    """Read a series into a 3D image, rescaling every slice with its own slope/intercept.

    Raises
    ------
    InputError
        Enhanced multi-frame files, unreadable pixel data, inconsistent slice sizes.
    GeometryError
        Fewer than 2 slices, missing orientation/position, several images at one position
        (4D/dynamic series), non-uniform slice spacing or gantry tilt.
    """
    where = series.folder
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in series.headers):
        raise InputError("enhanced multi-frame DICOM is not supported", where,
                         hint="export the series as one file per slice, or convert it to .mha "
                              "or .nii.gz (e.g. with dcm2niix)")
    if len(series.files) < 2:
        raise GeometryError(f"series {series.label} has a single slice: not a 3D volume", where)
    iop = series.first.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6 or any("ImagePositionPatient" not in h
                                           for h in series.headers):
        raise GeometryError("ImageOrientationPatient/ImagePositionPatient missing: cannot place "
                            "the slices in space", where)
    row = np.array([float(v) for v in iop[:3]])
    col = np.array([float(v) for v in iop[3:]])
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in series.headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise GeometryError(
            f"series {series.label} has several images at the same slice position "
            "(dynamic, gated or multi-frame 4D series): not a 3D volume", where,
            hint="export one time frame as its own series")
    dz = float(np.median(steps))
    if np.max(np.abs(steps - dz)) > max(0.01 * dz, 0.05):
        raise GeometryError(
            f"slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm "
            "(missing slices?)", where, hint="check that the series is complete")
    offset = positions[order][-1] - positions[order][0]
    lateral = offset - (offset @ normal) * normal
    if np.linalg.norm(lateral) > 0.01 * abs(offset @ normal) + 0.1:
        raise GeometryError("slices are sheared (gantry tilt): not supported", where,
                            hint="resample the series to an orthogonal grid first")

    headers = [series.headers[i] for i in order]
    files = [series.files[i] for i in order]
    slices = [_slice_values(f, h) for f, h in zip(files, headers, strict=True)]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"slices of different sizes {sorted(shapes)}", where)
    volume = np.stack(slices, axis=0)

    spacing_rc = [float(v) for v in (series.first.get("PixelSpacing") or [1.0, 1.0])]
    image = sitk.GetImageFromArray(volume)
    # PixelSpacing is (row spacing = between rows, column spacing = between columns).
    image.SetSpacing((spacing_rc[1], spacing_rc[0], dz))
    image.SetOrigin(tuple(float(v) for v in positions[order][0]))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    return SeriesVolume(image, headers, files)


def _slice_values(path: Path, header) -> np.ndarray:
    """``stored x RescaleSlope + RescaleIntercept`` of one slice as float64 (rows, cols)."""
    import pydicom

    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.float64)
    except Exception:  # compressed syntax pydicom cannot decode: let GDCM try
        try:
            # GDCM applies this slice's rescale itself.
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat64))
        except RuntimeError as exc:
            raise InputError(f"cannot decode the pixel data ({' '.join(str(exc).split())[:120]})",
                             path) from None
        return arr.reshape(arr.shape[-2:])
    if stored.ndim != 2:
        raise InputError(f"pixel data has shape {stored.shape}, expected one 2D slice", path)
    return stored * slope + intercept
