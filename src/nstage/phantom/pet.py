"""PET synthesis: activity map from the tissue codes, partial-volume blur, PET grid, noise.

Steps (all SUV body weight):

1. activity of every CT voxel from its tissue code (lookup table);
2. block-average onto an intermediate grid of about 3 mm (partial-volume averaging);
3. Gaussian blur of ``fwhm_mm`` (scanner resolution, default 7 mm FWHM);
4. linear resampling onto the PET grid (own origin, size and spacing);
5. spatially correlated Gaussian noise whose variance is proportional to the activity
   (Poisson-like: reconstructed PET noise grows like sqrt(counts)), clipped at 0.

The noise-free PET of step 4 is kept so the truth can report each lesion's blurred SUVmax.
:class:`PetModel` holds the scanner's numbers: :data:`DEFAULT_MODEL` is the phantom's
historical model, :data:`REALISTIC` a clinical whole-body FDG PET (``nstage phantom
--realistic`` and :func:`nstage.phantom.realct.realistic_pet`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

FWHM_MM = 7.0


@dataclass(frozen=True)
class PetModel:
    """What the synthetic scanner does to the activity.

    Attributes
    ----------
    fwhm_mm : float
        Point-spread function, Gaussian FWHM (mm). Clinical PET/CT: 5-8 mm after
        reconstruction (EANM guideline, Boellaard 2015: 6-7 mm for EARL-compliant images).
    voxel_mm : tuple of float
        PET voxel size (x, y, z) in mm; clinical whole-body grids are 3-5 mm.
    noise_cov : float
        Per-voxel noise standard deviation relative to the signal at ``noise_ref_suv``
        (coefficient of variation in a uniform region of that SUV). Clinical liver
        CoV is 10-15 % (EARL; Boellaard 2015 requires liver CoV < 15 %).
    noise_ref_suv : float
        SUV at which ``noise_cov`` holds; elsewhere SD = ``noise_cov`` x
        sqrt(``noise_ref_suv`` x SUV) (variance proportional to the activity).
    noise_corr_voxels : float
        Gaussian sigma (PET voxels) of the noise correlation (iterative reconstruction
        correlates neighbouring voxels); the noise is rescaled to unit variance afterwards.
    blood_suv, liver_suv : float
        Blood-pool and liver activity of the synthetic patient (SUVbw, 60 min p.i.).
    """

    fwhm_mm: float = FWHM_MM
    voxel_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    noise_cov: float = 0.09
    noise_ref_suv: float = 2.2
    noise_corr_voxels: float = 0.6
    blood_suv: float = 1.7
    liver_suv: float = 2.2

    def to_dict(self) -> dict:
        """JSON-friendly description (written to ``truth.json``)."""
        return {"fwhm_mm": self.fwhm_mm, "voxel_mm": list(self.voxel_mm),
                "noise": "Gaussian, variance proportional to the activity (Poisson-like), "
                         f"correlated over sigma {self.noise_corr_voxels} voxels",
                "noise_cov": self.noise_cov, "noise_ref_suv": self.noise_ref_suv,
                "blood_suv": self.blood_suv, "liver_suv": self.liver_suv}


#: The phantom's default scanner (unchanged since the first phantom; tests are tuned to it).
DEFAULT_MODEL = PetModel()
#: A clinical FDG PET: 4.07 mm voxels (a common 168-200 matrix on 680-815 mm), 6.5 mm FWHM,
#: liver CoV 12 % per voxel, liver SUV 2.0, blood pool 1.6 (PERCIST reference ranges,
#: Wahl 2009: liver SUVmean about 2, blood pool about 1.6-1.8 at 60 min).
REALISTIC = PetModel(fwhm_mm=6.5, voxel_mm=(4.07, 4.07, 4.0), noise_cov=0.12,
                     noise_ref_suv=2.0, noise_corr_voxels=0.6, blood_suv=1.6, liver_suv=2.0)


def _block_mean(labels: np.ndarray, lut: np.ndarray, block: tuple[int, int, int],
                chunk: int = 32) -> np.ndarray:
    bz, by, bx = block
    nz, ny, nx = labels.shape
    oz, oy, ox = nz // bz, ny // by, nx // bx
    out = np.empty((oz, oy, ox), np.float32)
    for k0 in range(0, oz, chunk):
        k1 = min(oz, k0 + chunk)
        a = lut[labels[k0 * bz:k1 * bz, :oy * by, :ox * bx]]
        out[k0:k1] = a.reshape(k1 - k0, bz, oy, by, ox, bx).mean(axis=(1, 3, 5))
    return out


def synthesize(labels: np.ndarray, ct: sitk.Image, lut: np.ndarray, pet_ref: sitk.Image,
               rng: np.random.Generator, fwhm_mm: float = FWHM_MM,
               noise_cov: float = 0.09,
               model: PetModel | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Noisy and noise-free PET (float32 SUV) on ``pet_ref``'s grid.

    Parameters
    ----------
    labels : numpy.ndarray
        uint8 tissue codes on the CT grid (array order z, y, x).
    ct : SimpleITK.Image
        The CT (for its geometry).
    lut : numpy.ndarray
        Activity (SUV) of each code, length 256.
    pet_ref : SimpleITK.Image
        Image defining the PET grid.
    rng : numpy.random.Generator
    fwhm_mm : float
        Resolution of the scanner (mm FWHM).
    noise_cov : float
        Noise standard deviation relative to the signal at SUV 2.2 (liver).
    model : PetModel, optional
        When given, its FWHM and noise replace ``fwhm_mm`` and ``noise_cov``.
    """
    if model is None:
        model = PetModel(fwhm_mm=fwhm_mm, noise_cov=noise_cov)
    block = _block_of(ct)
    act = _block_mean(labels, lut.astype(np.float32), block)
    return scanner(act, _block_grid(ct, block), pet_ref, rng, model)


def _block_grid(ct: sitk.Image, block: tuple[int, int, int]) -> sitk.Image:
    """Geometry of the block-averaged grid (an empty image carrying origin and spacing)."""
    sx, sy, sz = ct.GetSpacing()
    spacing = (sx * block[2], sy * block[1], sz * block[0])
    out = sitk.Image([1, 1, 1], sitk.sitkFloat32)
    out.SetSpacing(spacing)
    # the block's centre sits half a block minus half a voxel from the first voxel
    out.SetOrigin(tuple(np.asarray(ct.GetOrigin())
                        + 0.5 * (np.asarray(spacing) - np.array([sx, sy, sz]))))
    return out


def scanner(activity: np.ndarray, grid: sitk.Image, pet_ref: sitk.Image,
            rng: np.random.Generator, model: PetModel) -> tuple[sitk.Image, sitk.Image]:
    """Noisy and noise-free PET (float32 SUV) on ``pet_ref``'s grid from an activity map.

    Parameters
    ----------
    activity : numpy.ndarray
        Activity (SUV) in array order ``[z, y, x]`` on an intermediate grid no coarser than
        about 3 mm (partial-volume averaging already done).
    grid : SimpleITK.Image
        Carries the intermediate grid's origin and spacing (canonical direction).
    pet_ref : SimpleITK.Image
        The PET grid (own origin and spacing).
    rng : numpy.random.Generator
    model : PetModel
    """
    spacing = grid.GetSpacing()
    inter = sitk.GetImageFromArray(activity)
    inter.SetSpacing(spacing)
    inter.SetOrigin(grid.GetOrigin())
    sigma_mm = model.fwhm_mm / 2.3548
    blurred = ndimage.gaussian_filter(
        activity, sigma=(sigma_mm / spacing[2], sigma_mm / spacing[1], sigma_mm / spacing[0]),
        mode="nearest", truncate=3.0)
    inter_b = sitk.GetImageFromArray(blurred.astype(np.float32))
    inter_b.CopyInformation(inter)
    clean = sitk.Resample(inter_b, pet_ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    pet = add_noise(clean, rng, model)
    return pet, clean


def add_noise(clean: sitk.Image, rng: np.random.Generator, model: PetModel) -> sitk.Image:
    """``clean`` plus correlated noise of variance proportional to the activity, clipped at 0.

    SD at SUV ``s`` is ``noise_cov x sqrt(noise_ref_suv x s)``: the coefficient of variation
    is ``noise_cov`` at ``noise_ref_suv`` and grows as the activity falls, as for counts.
    """
    c = sitk.GetArrayFromImage(clean)
    noise = rng.standard_normal(c.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, model.noise_corr_voxels, mode="nearest")
    noise /= max(float(noise.std()), 1e-6)
    sd = model.noise_cov * np.sqrt(np.maximum(c, 0.02) * model.noise_ref_suv)
    noisy = np.clip(c + sd * noise, 0.0, None).astype(np.float32)
    pet = sitk.GetImageFromArray(noisy)
    pet.CopyInformation(clean)
    return pet


def _block_of(ct: sitk.Image) -> tuple[int, int, int]:
    sx, sy, sz = ct.GetSpacing()
    return (max(1, int(round(3.0 / sz))), max(1, int(round(3.0 / sy))),
            max(1, int(round(3.0 / sx))))


def local_clean_pet(labels: np.ndarray, ct: sitk.Image, lut: np.ndarray, pet_ref: sitk.Image,
                    center_xyz, half_mm: float = 30.0,
                    fwhm_mm: float = FWHM_MM) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free PET near one point, computed exactly as :func:`synthesize` does globally.

    Returns the PET values of the PET voxels within ``half_mm`` of ``center_xyz`` (world mm)
    and their world positions (``(n, 3)``), far enough from the crop edges that the blur
    matches the whole-image result. Used to calibrate lesion activities cheaply.
    """
    from nstage.geometry import index_to_mm, mm_to_index

    block = _block_of(ct)
    c = np.asarray(center_xyz, float)
    margin = half_mm + 4.0 * fwhm_mm
    lo = np.floor(mm_to_index(ct, c - margin)).astype(int)
    hi = np.ceil(mm_to_index(ct, c + margin)).astype(int)
    lo = np.maximum(lo - lo % np.array(block), 0)
    hi = np.minimum(hi, np.array(labels.shape))
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    act = _block_mean(sub, lut.astype(np.float32), block)
    sx, sy, sz = ct.GetSpacing()
    spacing = (sx * block[2], sy * block[1], sz * block[0])
    origin = index_to_mm(ct, lo) + 0.5 * (np.asarray(spacing) - np.array([sx, sy, sz]))
    sigma_mm = fwhm_mm / 2.3548
    blurred = ndimage.gaussian_filter(
        act, sigma=(sigma_mm / spacing[2], sigma_mm / spacing[1], sigma_mm / spacing[0]),
        mode="nearest", truncate=3.0)
    inter = sitk.GetImageFromArray(blurred.astype(np.float32))
    inter.SetSpacing(spacing)
    inter.SetOrigin(tuple(float(v) for v in origin))
    plo = np.maximum(np.floor(mm_to_index(pet_ref, c - half_mm)).astype(int), 0)
    phi = np.minimum(np.ceil(mm_to_index(pet_ref, c + half_mm)).astype(int) + 1,
                     np.array(pet_ref.GetSize()[::-1]))
    if np.any(phi <= plo):
        return np.zeros(0, np.float32), np.zeros((0, 3))
    ref = sitk.Image([int(v) for v in (phi - plo)[::-1]], sitk.sitkFloat32)
    ref.SetSpacing(pet_ref.GetSpacing())
    ref.SetOrigin(tuple(float(v) for v in index_to_mm(pet_ref, plo)))
    out = sitk.GetArrayFromImage(sitk.Resample(inter, ref, sitk.Transform(), sitk.sitkLinear,
                                               0.0, sitk.sitkFloat32))
    kk, jj, ii = np.meshgrid(*[np.arange(a, b) for a, b in zip(plo, phi, strict=True)],
                             indexing="ij")
    pts = index_to_mm(pet_ref, np.stack([kk, jj, ii], -1))
    return out.ravel(), pts.reshape(-1, 3)


def recovery_coefficient(radius_mm: float, fwhm_mm: float = FWHM_MM) -> float:
    """Centre value of a uniform sphere of unit activity after a Gaussian blur (0-1)."""
    from math import erf, exp, pi, sqrt

    s = fwhm_mm / 2.3548
    q = radius_mm / s
    return erf(q / sqrt(2)) - sqrt(2 / pi) * q * exp(-q * q / 2)
