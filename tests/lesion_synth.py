"""Small synthetic thorax volumes with known FDG-avid spheres, for the lesion and findings tests.

Geometry: canonical LPS grid, array order [z, y, x]; column i grows to the patient's LEFT.
The PET is made like a scanner would: activity on a fine grid, blurred by a Gaussian PSF
(FWHM in mm), sampled on a coarse PET grid, then resampled (linear) onto the CT grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.anatomy.base import Anatomy
from nstage.geometry import index_to_mm

NAMES = {1: "lung_upper_lobe_right", 2: "lung_upper_lobe_left", 3: "trachea", 4: "aorta",
         5: "heart", 6: "liver", 7: "vertebrae_T6", 8: "esophagus", 9: "main_bronchus_right",
         10: "main_bronchus_left"}
SPACING = (1.5, 1.5, 2.0)  # x, y, z mm
SIZE = (120, 96, 72)  # x, y, z voxels


@dataclass
class Sphere:
    """A lesion: centre (x, y, z) mm LPS, diameter mm, SUV, HU."""

    centre: tuple[float, float, float]
    diameter: float
    suv: float
    hu: float = 40.0


@dataclass
class Synthetic:
    ct: sitk.Image
    pet: sitk.Image
    anatomy: Anatomy
    spheres: dict[str, Sphere]
    truth_suv: np.ndarray = field(repr=False)


def _grid():
    ref = sitk.Image(SIZE, sitk.sitkFloat32)
    ref.SetSpacing(SPACING)
    ref.SetOrigin((-SIZE[0] * SPACING[0] / 2, -SIZE[1] * SPACING[1] / 2, -SIZE[2] * SPACING[2] / 2))
    k, j, i = np.indices(SIZE[::-1], dtype=float)
    xyz = index_to_mm(ref, np.stack([k, j, i], axis=-1))
    return ref, xyz[..., 0], xyz[..., 1], xyz[..., 2]


def _ellipsoid(x, y, z, c, r):
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def default_spheres() -> dict[str, Sphere]:
    return {
        "primary": Sphere((-45.0, 0.0, 10.0), 26.0, 10.0),  # right lung
        "node_4r": Sphere((-20.0, -5.0, 40.0), 14.0, 6.0),  # right paratracheal, mediastinal fat
        "node_7": Sphere((0.0, 18.0, -12.0), 13.0, 5.5),  # subcarinal, just above the heart
    }


def make_synthetic(spheres: dict[str, Sphere] | None = None, *, myocardium_suv: float = 8.0,
                   fwhm_mm: float = 6.5, pet_voxel_mm: float = 4.0, noise_sd: float = 0.0,
                   seed: int = 0, brown_fat: bool = False) -> Synthetic:
    """Build the synthetic study (see module docstring). Coordinates are mm LPS."""
    spheres = default_spheres() if spheres is None else spheres
    ref, x, y, z = _grid()
    labels = np.zeros(x.shape, dtype=np.uint8)
    body = _ellipsoid(x, y, z, (0, 0, 0), (88, 70, 400))
    hu = np.where(body, -100.0, -1000.0)  # fat inside the body
    suv = np.where(body, 0.7, 0.0)
    lung_r = _ellipsoid(x, y, z, (-45, 0, 0), (32, 45, 58)) & (z > -50)
    lung_l = _ellipsoid(x, y, z, (45, 0, 0), (32, 45, 58)) & (z > -50)
    labels[lung_r] = 1
    labels[lung_l] = 2
    hu[lung_r | lung_l] = -850.0
    suv[lung_r | lung_l] = 0.4
    trachea = ((x - 0) ** 2 + (y + 5) ** 2 <= 9 ** 2) & (z > 0)
    bron_r = (np.abs(y + 5) <= 5) & (np.abs(z + 2) <= 4) & (x < 0) & (x > -25)
    bron_l = (np.abs(y + 5) <= 5) & (np.abs(z + 2) <= 4) & (x > 0) & (x < 25)
    aorta = ((x - 20) ** 2 + (y - 30) ** 2 <= 11 ** 2)
    heart = _ellipsoid(x, y, z, (10, -5, -45), (40, 35, 25)) & ~lung_r & ~lung_l
    myo = heart & ~_ellipsoid(x, y, z, (10, -5, -45), (31, 26, 16))
    liver = _ellipsoid(x, y, z, (-30, 0, -80), (60, 50, 30)) & (z < -55) & ~heart
    esoph = ((x - 5) ** 2 + (y - 20) ** 2 <= 6 ** 2) & (z > -30)
    vert = ((x - 0) ** 2 + (y - 50) ** 2 <= 14 ** 2)
    for mask, val, h, s in ((aorta, 4, 40, 1.8), (heart, 5, 40, 1.8), (liver, 6, 55, 2.2),
                            (vert, 7, 600, 1.2), (esoph, 8, 30, 1.0), (trachea, 3, -1000, 0.0),
                            (bron_r, 9, -1000, 0.0), (bron_l, 10, -1000, 0.0)):
        labels[mask] = val
        hu[mask] = h
        suv[mask] = s
    suv[myo] = myocardium_suv
    if brown_fat:
        # Symmetric supraclavicular brown fat: hot uptake in fat-density tissue.
        for sx in (-45.0, 45.0):
            bf = _ellipsoid(x, y, z, (sx, 5, 64), (9, 7, 5))
            suv[bf] = 6.0
    for sph in spheres.values():
        ball = _ellipsoid(x, y, z, sph.centre, (sph.diameter / 2,) * 3)
        suv[ball] = sph.suv
        hu[ball] = sph.hu
    truth = suv.copy()
    # Scanner: blur with the PSF, sample on the PET grid, resample onto the CT grid.
    sigma_mm = fwhm_mm / 2.3548
    blurred = ndi.gaussian_filter(suv, [sigma_mm / SPACING[2], sigma_mm / SPACING[1],
                                        sigma_mm / SPACING[0]])
    img = sitk.GetImageFromArray(blurred.astype(np.float32))
    img.CopyInformation(ref)
    pet_size = [int(round(n * s / pet_voxel_mm)) for n, s in zip(SIZE, SPACING, strict=True)]
    pet_grid = sitk.Resample(img, pet_size, sitk.Transform(), sitk.sitkLinear,
                             ref.GetOrigin(), (pet_voxel_mm,) * 3)
    if noise_sd:
        rng = np.random.default_rng(seed)
        arr = sitk.GetArrayFromImage(pet_grid)
        arr = np.clip(arr * (1 + noise_sd * rng.standard_normal(arr.shape)), 0, None)
        noisy = sitk.GetImageFromArray(arr.astype(np.float32))
        noisy.CopyInformation(pet_grid)
        pet_grid = noisy
    pet = sitk.Resample(pet_grid, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ct = sitk.GetImageFromArray(hu.astype(np.int16))
    ct.CopyInformation(ref)
    anatomy = Anatomy(labels=labels, names=dict(NAMES), reference=ct, backend="phantom-truth",
                      extra_masks={"body": body})
    return Synthetic(ct=ct, pet=pet, anatomy=anatomy, spheres=spheres, truth_suv=truth)


def blurred_max(syn: Synthetic, name: str) -> float:
    """SUVmax of the PET (CT grid) within 1.5 x the sphere's radius of its centre."""
    sph = syn.spheres[name]
    _, x, y, z = _grid()
    near = _ellipsoid(x, y, z, sph.centre, (sph.diameter * 0.75,) * 3)
    return float(sitk.GetArrayFromImage(syn.pet)[near].max())
