"""The overlay as a DICOM Segmentation (``n-staging-segmentation.dcm``) for PACS, OHIF, 3D Slicer.

Written when the CT was read from DICOM (the source slices must be referenced): a binary
DICOM SEG made with highdicom, in the CT's own series geometry, one frame per source CT slice
and segment (empty frames left out), each frame referencing its source slice
(SOPInstanceUID, in the Derivation Image and Source Image sequences).

One segment per overlay value present (``resources/overlay-segments.json``), numbered 1, 2, ...
in overlay order, with coded terms from DICOM PS3.16 CID 7150/7151 (SNOMED CT):

=====  ==============================  ===========================  ==========================
value  segment label                   property type                anatomic region
=====  ==============================  ===========================  ==========================
1      primary tumour                  86049000 Neoplasm, Primary   39607008 Lung
2      N1 node                         14799000 Neoplasm, Secondary 59441001 Lymph node
3      N2 node                         14799000 Neoplasm, Secondary 59441001 Lymph node
4      N3 node                         14799000 Neoplasm, Secondary 59441001 Lymph node
5      other FDG-avid lesion           52988006 Lesion              (none)
=====  ==============================  ===========================  ==========================

All in category 49755003 "Morphologically Abnormal Structure". The overlay value is kept as
each segment's TrackingID (``overlay value N``) so a reader can map segments back to the
``label_value`` of n-stage.json. The algorithm is identified as nstage with its version and
backends.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nstage import __version__

SEG_NAME = "n-staging-segmentation.dcm"
SERIES_NUMBER = 9501  # high, so the SEG sorts after the scanner's own series in PACS lists
SERIES_DESCRIPTION = "nstage N-staging segmentation"
CONTENT_LABEL = "NSTAGE"  # CS, at most 16 characters, upper case


@dataclass(frozen=True)
class SegmentTerm:
    """Coded description of one overlay value (SNOMED CT code, scheme SCT)."""

    label: str
    type_code: tuple[str, str]  # (code value, code meaning)
    region_code: tuple[str, str] | None
    colour: str  # recommended display colour (sRGB hex), as in the visual report


CATEGORY = ("49755003", "Morphologically Abnormal Structure")
TERMS: dict[int, SegmentTerm] = {
    1: SegmentTerm("primary tumour", ("86049000", "Neoplasm, Primary"),
                   ("39607008", "Lung"), "#c21fc2"),
    2: SegmentTerm("N1 node", ("14799000", "Neoplasm, Secondary"),
                   ("59441001", "Lymph node"), "#f2d600"),
    3: SegmentTerm("N2 node", ("14799000", "Neoplasm, Secondary"),
                   ("59441001", "Lymph node"), "#ff8c00"),
    4: SegmentTerm("N3 node", ("14799000", "Neoplasm, Secondary"),
                   ("59441001", "Lymph node"), "#e8001c"),
    5: SegmentTerm("other FDG-avid lesion (not counted for N)", ("52988006", "Lesion"), None,
                   "#1f77b4"),
}


def _code(value_meaning: tuple[str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value_meaning[0], scheme_designator="SCT",
                        meaning=value_meaning[1])


def _colour(hex_rgb: str):
    from highdicom.color import CIELabColor

    rgb = tuple(int(hex_rgb[i:i + 2], 16) for i in (1, 3, 5))
    return CIELabColor.from_rgb(*rgb)


def _algorithm(result: dict):
    """nstage with its version; family after the lesion backend (it draws the outlines)."""
    from highdicom import AlgorithmIdentificationSequence
    from pydicom.sr.codedict import codes

    backends = result.get("backends") or {}
    learned = {"nnunet", "totalsegmentator"} & set(backends.values())
    family = (codes.cid7162.ArtificialIntelligence if learned
              else codes.cid7162.HistogramAnalysis)  # SUV thresholds on reference regions
    parameters = {f"{k} backend": str(v) for k, v in sorted(backends.items())}
    return AlgorithmIdentificationSequence(name="nstage", family=family,
                                           version=str(result.get("version") or __version__),
                                           parameters=parameters or None)


def _description(value: int, result: dict) -> str:
    """Segment description: which stations (nodes) or which side (primary)."""
    if value == 1 and result.get("primary_tumor"):
        primary = result["primary_tumor"]
        lobe = f" {primary['lobe']} lobe" if primary.get("lobe") else ""
        return f"primary tumour, {primary.get('side')}{lobe}"
    stations = sorted({str(n.get("station")) for n in result.get("nodes") or []
                       if n.get("label_value") == value})
    if stations:
        return f"{TERMS[value].label}: station {', '.join(stations)}"
    return TERMS[value].label


def segment_descriptions(values: list[int], result: dict) -> list:
    """highdicom SegmentDescriptions for the overlay ``values`` present, numbered 1, 2, ..."""
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription

    algorithm = _algorithm(result)
    out = []
    for number, value in enumerate(values, start=1):
        term = TERMS[value]
        out.append(SegmentDescription(
            segment_number=number,
            segment_label=term.label,
            segmented_property_category=_code(CATEGORY),
            segmented_property_type=_code(term.type_code),
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"overlay value {value}",
            tracking_uid=_uid(),
            anatomic_regions=None if term.region_code is None else [_code(term.region_code)],
            display_color=_colour(term.colour),
        ))
        out[-1].SegmentDescription = _description(value, result)[:64]
    return out


def _uid() -> str:
    from highdicom import UID

    return str(UID())


def read_source_headers(files: list[str]) -> list:
    """The source CT headers (no pixel data), in the order given."""
    import pydicom

    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def build(overlay_input_grid: np.ndarray, sources: list, result: dict):
    """The DICOM SEG dataset, or None when the overlay has no segment.

    Parameters
    ----------
    overlay_input_grid : numpy.ndarray
        uint8 overlay (0..5) on the CT grid as given, array order ``[slice, row, column]``,
        slice k belonging to ``sources[k]``.
    sources : list of pydicom.Dataset
        The CT slices' headers in the same order.
    result : dict
        The n-stage.json content (for descriptions and the algorithm's backends).
    """
    labels = np.asarray(overlay_input_grid)
    if labels.shape[0] != len(sources):
        raise ValueError(f"overlay has {labels.shape[0]} slices, the CT series {len(sources)}")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape[1:] != (rows, cols):
        raise ValueError(f"overlay slices are {labels.shape[1:]}, the CT's {(rows, cols)}")
    values = [v for v in sorted(TERMS) if np.any(labels == v)]
    if not values:
        return None
    numbered = np.zeros(labels.shape, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        numbered[labels == value] = number
    with warnings.catch_warnings():
        # highdicom warns about the source headers (e.g. a one-part PatientName it copies):
        # nothing a user of nstage can act on, and the SEG is valid.
        warnings.simplefilter("ignore", UserWarning)
        return _segmentation(sources, numbered, values, result)


def _segmentation(sources: list, numbered: np.ndarray, values: list[int], result: dict):
    from highdicom.seg import Segmentation, SegmentationTypeValues

    return Segmentation(
        source_images=sources,
        pixel_array=numbered,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(values, result),
        series_instance_uid=_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=_uid(),
        instance_number=1,
        manufacturer="nstage",
        manufacturer_model_name="nstage",
        software_versions=str(result.get("version") or __version__),
        device_serial_number="none",
        content_label=CONTENT_LABEL,
        content_description="N staging: primary tumour, N1-N3 nodes, other FDG-avid lesions",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
    )


def write_dicom_seg(overlay: np.ndarray, study, result: dict, path: str | Path) -> Path | None:
    """Write the overlay of a study read from DICOM as a DICOM SEG, atomically.

    Parameters
    ----------
    overlay : numpy.ndarray
        uint8 overlay on the canonical CT grid (``study.ct``), array order ``[z, y, x]``.
    study : nstage.study.Study
        With ``meta.ct_dicom_files`` (the CT's files in slice order).
    result : dict
        The n-stage.json content.
    path : path
        Output file (``n-staging-segmentation.dcm``).

    Returns
    -------
    Path or None
        ``path``, or None when nothing was written (no DICOM CT, or no segment).
    """
    import SimpleITK as sitk

    from nstage.io import labels_to_geometry

    files = list(study.meta.ct_dicom_files)
    if not files:
        return None
    on_input = sitk.GetArrayFromImage(labels_to_geometry(overlay, study.ct, study.ct_geometry))
    seg = build(on_input, read_source_headers(files), result)
    if seg is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        seg.save_as(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
