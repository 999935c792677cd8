"""Do the CT and the PET belong to one patient, one study, one coordinate system?

Compared when both inputs carry the field: PatientID and StudyInstanceUID (a CT and a PET of
different patients or examinations would put one patient's uptake on another's anatomy), and
FrameOfReferenceUID (a hybrid PET/CT scanner records both in one frame; different frames mean
the images were not acquired in one coordinate system, so a node could land on the wrong
structure). DICOM series carry them in their headers; MetaImage/NRRD files often keep them
as header fields (:func:`nstage.io.integrity.identity_from_metadata`). The values are never
printed: they identify patients.
"""

from __future__ import annotations

from pathlib import Path

from nstage.errors import InputError

ALLOW_FLAG = "--allow-different-studies"
_FIELDS = {"patient": "PatientID", "study": "StudyInstanceUID",
           "frame_of_reference": "FrameOfReferenceUID"}


def differing_fields(ct: dict[str, str], pet: dict[str, str]) -> list[str]:
    """Keys of ``_FIELDS`` present in both and different."""
    return [k for k in _FIELDS if k in ct and k in pet and ct[k] != pet[k]]


def check_same_study(ct: dict[str, str], pet: dict[str, str], ct_path: Path, pet_path: Path,
                     allow: bool) -> list[str]:
    """Refuse a CT and a PET of different patients, studies or frames of reference.

    Parameters
    ----------
    ct, pet : dict
        Identity fields as from :attr:`nstage.io.dicom.DicomSeries.identity`.
    allow : bool
        ``--allow-different-studies``: stage anyway, with a note.

    Returns
    -------
    list of str
        Notes for the result (empty when nothing differs).

    Raises
    ------
    InputError
        A field differs and ``allow`` is False.
    """
    differ = differing_fields(ct, pet)
    if not differ:
        return []
    names = " and ".join(_FIELDS[k] for k in differ)
    verb = "differs" if len(differ) == 1 else "differ"
    if allow:
        return [f"CT and PET differ in {names}; staged together because {ALLOW_FLAG} was given"]
    if "patient" in differ or "study" in differ:
        what = "patients" if "patient" in differ else "studies"
        raise InputError(
            f"the PET and the CT {ct_path.name} are from different {what} (their {names} "
            f"{verb}): staging them together would put one examination's uptake on another's "
            "anatomy", pet_path,
            hint=f"give the CT and PET of one study; if they do belong together, add {ALLOW_FLAG}")
    raise InputError(
        f"the PET and the CT {ct_path.name} have different {names}: the scanner did not record "
        "them in one coordinate system, so nodes could be placed on the wrong anatomy",
        pet_path, hint=f"register the PET to the CT first, or add {ALLOW_FLAG} if you know "
                       "they are aligned")
