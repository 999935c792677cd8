"""Imaging I/O: loading CT + PET studies (files, Grand Challenge inputs, DICOM), SUV conversion
and atomic writers.

Public API
----------
load_study(ct, pet=None, *, override=None) -> Study
    CT in HU and PET in SUVbw, canonical LPS orientation, with provenance.
SUVOverride, suv_factor(header) -> SUVFactor
    Explicit weight/dose/times; the pure SUVbw factor from PET DICOM header fields.
write_label_image, write_json_atomic, write_image_atomic
    Outputs that appear complete or not at all.

Checks made before an image's voxels are read or anything is written (issue 19):
:mod:`nstage.io.integrity` (headers, complete voxel data), :mod:`nstage.io.limits` (memory
budget), :mod:`nstage.io.identity` (one patient, study and frame of reference),
:mod:`nstage.io.outputs` (the output folder, staged writing), :mod:`nstage.io.csvsafe`
(spreadsheet-safe CSV cells).
"""

from nstage.io.dicom import DicomSeries, find_series, pet_refusal, read_series
from nstage.io.readers import (
    find_gc_inputs,
    load_pet_suv,
    load_study,
    read_ct,
    read_image,
    suv_plausibility_problem,
)
from nstage.io.suv import F18_HALF_LIFE_S, SUVFactor, SUVOverride, mbq_to_bq, suv_factor
from nstage.io.writers import (
    labels_to_geometry,
    write_image_atomic,
    write_json_atomic,
    write_label_image,
)

__all__ = [
    "F18_HALF_LIFE_S",
    "DicomSeries",
    "SUVFactor",
    "SUVOverride",
    "find_gc_inputs",
    "find_series",
    "labels_to_geometry",
    "load_pet_suv",
    "load_study",
    "mbq_to_bq",
    "pet_refusal",
    "read_ct",
    "read_image",
    "read_series",
    "suv_factor",
    "suv_plausibility_problem",
    "write_image_atomic",
    "write_json_atomic",
    "write_label_image",
]
