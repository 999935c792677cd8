"""The loaded study: CT in HU and PET in SUV body weight, with geometry and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from nstage.geometry import resample_to


@dataclass(frozen=True)
class ImageGeometry:
    """Grid of an image as it was given (before re-orientation), to write outputs onto.

    ``size`` and ``spacing`` are (x, y, z) in voxels / mm, ``origin`` in mm LPS,
    ``direction`` the 9 direction cosines row-major, as SimpleITK reports them.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> ImageGeometry:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def empty_image(self, pixel_type=sitk.sitkUInt8) -> sitk.Image:
        img = sitk.Image(list(self.size), pixel_type)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @property
    def is_canonical(self) -> bool:
        return bool(np.allclose(np.reshape(self.direction, (3, 3)), np.eye(3), atol=1e-6))


@dataclass
class StudyMeta:
    """Where the data came from and how PET values became SUV.

    Attributes
    ----------
    ct_source, pet_source : str
        Paths (file or DICOM folder) the images were read from.
    suv_source : str
        How SUVbw was obtained, e.g. ``"DICOM header (Units BQML, DecayCorrection START)"``,
        ``"input declared as SUV (Grand Challenge socket)"``, ``"override: weight/dose given"``.
    suv_factor : float or None
        Factor applied to Bq/ml (or stored values) to get SUVbw, when a conversion was made.
    pet_units : str
        Units of the PET as found (``"BQML"``, ``"CNTS"``, ``"GML"``, ``"SUV"``).
    scanner : str or None
        Manufacturer / model where known.
    notes : list of str
        Anything a reader of the result should know (resampling, orientation, timing fixes).
    ct_dicom_files : list of str
        When the CT was read from DICOM: its files in the order of the slices of the CT grid
        as given (``ct_geometry``'s third axis, k = 0, 1, ...), for the DICOM SEG that must
        reference each source slice; empty otherwise.
    ct_instance_numbers : list of int or None
        InstanceNumber (0020,0013) of each of those slices, the image number PACS viewers show.
    """

    ct_source: str
    pet_source: str
    suv_source: str
    suv_factor: float | None = None
    pet_units: str = "SUV"
    scanner: str | None = None
    notes: list[str] = field(default_factory=list)
    ct_dicom_files: list[str] = field(default_factory=list)
    ct_instance_numbers: list[int | None] = field(default_factory=list)


@dataclass
class Study:
    """A CT + PET pair ready for staging.

    Attributes
    ----------
    ct : SimpleITK.Image
        CT in Hounsfield units (int16 or float32), canonical LPS orientation
        (see :mod:`nstage.geometry`).
    pet : SimpleITK.Image
        PET in SUV body weight (g/ml), float32, canonical orientation, on its own grid.
    ct_geometry : ImageGeometry
        The CT grid exactly as given, so outputs can be written onto it.
    meta : StudyMeta
    invalid : dict of str to SimpleITK.Image
        Where an input held no finite value (NaN/inf), per modality (``"CT"``, ``"PET"``):
        uint8 masks on that modality's canonical grid. Those voxels are air (CT) or SUV 0
        (PET) in ``ct``/``pet``; the pipeline decides whether they hide what is staged.
        Empty when every voxel was finite.
    """

    ct: sitk.Image
    pet: sitk.Image
    ct_geometry: ImageGeometry
    meta: StudyMeta
    invalid: dict[str, sitk.Image] = field(default_factory=dict)

    def pet_on(self, reference: sitk.Image) -> sitk.Image:
        """PET (SUV, float32) resampled linearly onto ``reference``'s grid; 0 outside the PET."""
        return resample_to(self.pet, reference, nearest=False, default=0.0,
                           pixel_type=sitk.sitkFloat32)
