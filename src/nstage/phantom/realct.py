"""A realistic synthetic FDG PET for a real CT, for tests on real anatomy.

There is no public chest FDG-PET/CT with a known N stage on these machines, so tests stage
real CTs with a PET made here, by the same scanner model as the phantom
(:data:`nstage.phantom.pet.REALISTIC`: own 4.07 mm grid with its own origin, 6.5 mm FWHM,
Poisson-like noise with liver CoV 12 %).

Activity (SUVbw) of every CT voxel, in this order (later steps overwrite earlier ones):

1. tissue classes from HU inside the body (:data:`TISSUE_SUV`): lung and airway air, fat,
   soft tissue (muscle and unlabelled organs), cancellous bone (marrow), cortical bone;
2. organs of an optional :class:`~nstage.anatomy.Anatomy` (TotalSegmentator names, e.g.
   rasterised planning contours), by :data:`ORGAN_SUV` (blood-pool organs take the model's
   blood SUV, the liver its liver SUV);
3. explicit :class:`Region` masks (what a test read on rendered slices: the blood pool, a
   left-ventricular wall, brown fat, ...), each with its SUV;
4. :class:`Focal` lesions (spheres or ellipsoids at mm positions), whose voxels are also made
   soft tissue on the CT (a node is soft tissue even where the real CT shows fat).

The activity is averaged onto an intermediate grid of about 2 mm (partial volume), blurred by
the model's PSF, sampled on the PET grid and made noisy (:func:`nstage.phantom.pet.scanner`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.phantom.pet import REALISTIC, PetModel, scanner

#: Activity (SUVbw, 60 min p.i.) of the tissue classes read from HU (Zincirkeser 2007;
#: PERCIST reference ranges, Wahl 2009): lung 0.3-0.5, fat 0.3-0.4, muscle 0.6-1.0,
#: red marrow 1.0-1.6, cortical bone low.
TISSUE_SUV: dict[str, float] = {"air": 0.0, "lung": 0.4, "fat": 0.35, "soft_tissue": 0.8,
                                "marrow": 1.3, "cortical_bone": 0.5}
#: HU limits of the classes (inside the body): lung/air < -500 <= fat < -30 <= soft tissue
#: < 150 <= cancellous bone < 700 <= cortical bone.
HU_LIMITS = {"lung": -500.0, "fat": -30.0, "soft_tissue": 150.0, "marrow": 700.0}
#: Organ activity by anatomy name; "blood" and "liver" mean the model's blood / liver SUV.
ORGAN_SUV: dict[str, float | str] = {
    "heart": "blood", "aorta": "blood", "pulmonary_artery": "blood", "pulmonary_vein": "blood",
    "superior_vena_cava": "blood", "inferior_vena_cava": "blood",
    "brachiocephalic_trunk": "blood", "brachiocephalic_vein_left": "blood",
    "brachiocephalic_vein_right": "blood", "subclavian_artery_left": "blood",
    "subclavian_artery_right": "blood", "common_carotid_artery_left": "blood",
    "common_carotid_artery_right": "blood", "liver": "liver", "spleen": 1.9,
    "kidney_left": 3.5, "kidney_right": 3.5, "urinary_bladder": 30.0, "brain": 7.0,
    "esophagus": 1.3, "thyroid_gland": 1.4, "stomach": 1.6,
}
#: Airway lumen (HU below this) is left unpainted by focal lesions.
AIRWAY_HU = -950.0
#: Intermediate grid spacing (mm) on which the activity is blurred.
FINE_MM = 2.0


@dataclass(frozen=True)
class Region:
    """Uptake in a given region: ``mask`` (bool, CT array order ``[z, y, x]``) at ``suv``."""

    name: str
    mask: np.ndarray = field(repr=False)
    suv: float


@dataclass(frozen=True)
class Focal:
    """A focal lesion: an ellipsoid at ``centre_mm`` (x, y, z, LPS) with ``radii_mm`` and
    activity ``suv`` (before blur). ``hu``: CT number given to its voxels of fat or lung
    density (airway air and denser tissue stay; None leaves the CT unchanged, e.g. for a
    real tumour)."""

    name: str
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    suv: float
    hu: float | None = 35.0

    @classmethod
    def sphere(cls, name: str, centre_mm, diameter_mm: float, suv: float,
               hu: float | None = 35.0) -> Focal:
        r = float(diameter_mm) / 2.0
        return cls(name, tuple(float(v) for v in centre_mm), (r, r, r), float(suv), hu)


@dataclass
class RealCtPet:
    """A real CT with its synthetic PET.

    Attributes
    ----------
    ct : SimpleITK.Image
        The CT, focal lesions made soft tissue (int16 HU).
    pet, clean : SimpleITK.Image
        Noisy and noise-free PET (float32 SUVbw) on the PET grid.
    lesions : list of dict
        Per :class:`Focal`: ``name``, ``centre_mm``, ``radii_mm``, ``suv`` (activity) and
        ``suv_max_blurred`` (noise-free PET maximum within the lesion grown by 2 mm).
    model : PetModel
    seed : int
    """

    ct: sitk.Image
    pet: sitk.Image
    clean: sitk.Image
    lesions: list[dict]
    model: PetModel
    seed: int


def coordinates_mm(img: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable world ``z, y, x`` (mm) of a canonical image's voxels (array order)."""
    o, s, n = img.GetOrigin(), img.GetSpacing(), img.GetSize()
    x = o[0] + s[0] * np.arange(n[0])
    y = o[1] + s[1] * np.arange(n[1])
    z = o[2] + s[2] * np.arange(n[2])
    return z[:, None, None], y[None, :, None], x[None, None, :]


def ellipsoid_mask(img: sitk.Image, centre_mm, radii_mm) -> np.ndarray:
    """Voxels of a canonical image inside an axis-aligned ellipsoid (mm, LPS)."""
    z, y, x = coordinates_mm(img)
    c, r = np.asarray(centre_mm, float), np.asarray(radii_mm, float)
    out = np.zeros((z.size, y.size, x.size), bool)
    # only the ellipsoid's bounding box is evaluated
    sel = [np.flatnonzero(np.abs(a.ravel() - c[i]) <= r[i]) for i, a in ((2, z), (1, y), (0, x))]
    if any(s.size == 0 for s in sel):
        return out
    sl = tuple(slice(int(s[0]), int(s[-1]) + 1) for s in sel)
    inside = (((x[..., sl[2]] - c[0]) / r[0]) ** 2 + ((y[:, sl[1]] - c[1]) / r[1]) ** 2
              + ((z[sl[0]] - c[2]) / r[2]) ** 2) <= 1.0
    out[sl] = inside
    return out


def box_mask(img: sitk.Image, box_mm) -> np.ndarray:
    """Voxels inside ``((x0, x1), (y0, y1), (z0, z1))`` mm."""
    z, y, x = coordinates_mm(img)
    (x0, x1), (y0, y1), (z0, z1) = box_mm
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient (array order): tissue denser than -400 HU, holes (lungs) filled per slice,
    the table and blanket cut off by an opening and the largest component kept."""
    body = ndi.binary_fill_holes(hu > -400, structure=np.ones((1, 3, 3), bool))
    body = ndi.binary_opening(body, structure=np.ones((1, 5, 5), bool))
    lab, n = ndi.label(body)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        body = lab == int(np.argmax(sizes))
    return body


def tissue_activity(hu: np.ndarray, body: np.ndarray,
                    tissue_suv: dict[str, float] | None = None) -> np.ndarray:
    """Activity (SUV, float32) of every voxel from its HU class (see :data:`HU_LIMITS`)."""
    t = dict(TISSUE_SUV, **(tissue_suv or {}))
    lim = HU_LIMITS
    act = np.full(hu.shape, t["air"], np.float32)
    classes = (("lung", hu < lim["lung"]),
               ("fat", (hu >= lim["lung"]) & (hu < lim["fat"])),
               ("soft_tissue", (hu >= lim["fat"]) & (hu < lim["soft_tissue"])),
               ("marrow", (hu >= lim["soft_tissue"]) & (hu < lim["marrow"])),
               ("cortical_bone", hu >= lim["marrow"]))
    for name, sel in classes:
        act[sel & body] = t[name]
    return act


def realistic_pet(ct: sitk.Image, *, regions: Sequence[Region] = (),
                  lesions: Iterable[Focal] = (), anatomy=None,
                  model: PetModel = REALISTIC, seed: int = 0,
                  tissue_suv: dict[str, float] | None = None) -> RealCtPet:
    """A realistic synthetic PET for a real CT (see the module docstring).

    Parameters
    ----------
    ct : SimpleITK.Image
        Canonical CT in HU (identity direction; see :func:`nstage.geometry.canonical`).
    regions : sequence of Region
        Region uptake, applied in order after the HU classes and the anatomy.
    lesions : iterable of Focal
        Focal lesions (applied last).
    anatomy : nstage.anatomy.Anatomy, optional
        Organs on the CT grid (TotalSegmentator names) whose activity :data:`ORGAN_SUV` knows.
    model : PetModel
        Scanner and patient reference values (default :data:`~nstage.phantom.pet.REALISTIC`).
    seed : int
        Seed of the noise.
    tissue_suv : dict, optional
        Overrides of :data:`TISSUE_SUV`.

    Returns
    -------
    RealCtPet
    """
    lesions = list(lesions)
    hu = sitk.GetArrayFromImage(ct)
    body = body_mask(hu)
    act = tissue_activity(hu, body, tissue_suv)
    if anatomy is not None:
        for value, name in anatomy.names.items():
            suv = ORGAN_SUV.get(name)
            if suv is not None:
                act[anatomy.labels == value] = _suv_of(suv, model)
    for region in regions:
        act[region.mask] = region.suv
    hu_out = hu.copy()
    for les in lesions:
        ball = ellipsoid_mask(ct, les.centre_mm, les.radii_mm)
        act[ball] = les.suv
        if les.hu is not None:
            # fat and lung become soft tissue; airway air (a bronchus beside the node) stays
            hu_out[ball & (hu_out < 20) & (hu_out > AIRWAY_HU)] = np.int16(les.hu)
    ct_out = sitk.GetImageFromArray(hu_out)
    ct_out.CopyInformation(ct)
    fine, grid = _fine_activity(act, ct)
    rng = np.random.default_rng(seed)
    pet, clean = scanner(fine, grid, pet_grid_for(ct, model), rng, model)
    truth = [_lesion_truth(les, clean) for les in lesions]
    return RealCtPet(ct=ct_out, pet=pet, clean=clean, lesions=truth, model=model, seed=seed)


def _suv_of(value: float | str, model: PetModel) -> float:
    if value == "blood":
        return model.blood_suv
    if value == "liver":
        return model.liver_suv
    return float(value)


def pet_grid_for(ct: sitk.Image, model: PetModel,
                 shift_fraction: tuple[float, float, float] = (0.31, -0.23, 0.37)) -> sitk.Image:
    """An empty PET grid covering the CT with the model's voxels, its origin shifted by a
    fraction of a PET voxel so that no PET voxel centre coincides with a CT voxel centre."""
    sp_ct = np.asarray(ct.GetSpacing())
    sp = np.asarray(model.voxel_mm, float)
    extent = np.asarray(ct.GetSize()) * sp_ct
    size = np.ceil(extent / sp).astype(int) + 1
    origin = (np.asarray(ct.GetOrigin()) - sp_ct / 2 + sp / 2
              + np.asarray(shift_fraction) * sp - sp / 2)
    ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(v) for v in sp))
    ref.SetOrigin(tuple(float(v) for v in origin))
    return ref


def _fine_activity(act: np.ndarray, ct: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """The activity on an intermediate grid of about :data:`FINE_MM`: block means in-plane
    (partial-volume averaging of fine CT pixels), then linear resampling to isotropic
    voxels (thick CT slices are interpolated so the PSF can be applied in mm)."""
    sx, sy, sz = ct.GetSpacing()
    bx, by = max(1, int(round(FINE_MM / sx))), max(1, int(round(FINE_MM / sy)))
    nz, ny, nx = act.shape
    oy, ox = ny // by, nx // bx
    blocks = act[:, :oy * by, :ox * bx].reshape(nz, oy, by, ox, bx).mean(axis=(2, 4))
    img = sitk.GetImageFromArray(blocks.astype(np.float32))
    sp = (sx * bx, sy * by, sz)
    img.SetSpacing(sp)
    img.SetOrigin(tuple(np.asarray(ct.GetOrigin())
                        + 0.5 * (np.asarray(sp) - np.array([sx, sy, sz]))))
    extent = np.asarray(img.GetSize()) * np.asarray(sp)
    size = [int(np.ceil(e / FINE_MM)) for e in extent]
    origin = np.asarray(img.GetOrigin()) - np.asarray(sp) / 2 + FINE_MM / 2
    fine = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, tuple(origin),
                         (FINE_MM,) * 3, img.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(fine), fine


def _lesion_truth(les: Focal, clean: sitk.Image) -> dict:
    """A lesion's record with its noise-free PET maximum (within the lesion grown by 2 mm)."""
    grown = tuple(r + 2.0 for r in les.radii_mm)
    mask = ellipsoid_mask(clean, les.centre_mm, grown)
    vals = sitk.GetArrayViewFromImage(clean)[mask]
    peak = float(vals.max()) if vals.size else float("nan")
    return {"name": les.name, "centre_mm": list(les.centre_mm), "radii_mm": list(les.radii_mm),
            "suv": les.suv, "suv_max_blurred": round(peak, 3)}
