"""Loading a CT + PET study into a :class:`nstage.study.Study`.

Accepted inputs
---------------
- A Grand Challenge input folder: ``DIR/images/ct/<one image>`` and ``DIR/images/pet/<one
  image>`` (PET in SUV, as autoPET), optional ``DIR/inputs.json``.
- A DICOM study folder holding CT and PET series (picked by Modality; PET series that are not
  attenuation/decay corrected are refused).
- A CT and a PET given separately: each an image file SimpleITK reads (.mha, .nii.gz, .nrrd)
  or a DICOM folder.

PET from DICOM is converted to SUVbw from its header (:mod:`nstage.io.suv`). PET image files
are taken as SUV already, unless a :class:`SUVOverride` with weight and dose says they hold
Bq/ml; values that clearly are not SUV are refused.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.errors import GeometryError, InputError, SUVError
from nstage.geometry import canonical
from nstage.io.dicom import DicomSeries, choose_ct, choose_pet, find_series, read_series
from nstage.io.identity import check_same_study
from nstage.io.integrity import (
    ImageHeader,
    check_layout,
    data_layout,
    identity_from_metadata,
    read_header,
    verify_stream,
)
from nstage.io.limits import InputSize, check_input_sizes, memory_limit
from nstage.io.suv import F18_HALF_LIFE_S, SUVFactor, SUVOverride, suv_factor
from nstage.study import ImageGeometry, Study, StudyMeta

IMAGE_EXTENSIONS = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".tif", ".tiff")
CT_SLUGS = ("ct", "ct-image", "ct-scan")
PET_SLUGS = ("pet", "pet-image", "pet-scan")

# SUV plausibility: whole-body FDG SUVs above background have a median around 0.5-3 and a
# 99.9th percentile rarely above ~50; Bq/ml images sit in the thousands.
SUV_BODY_MEDIAN_MAX = 30.0
SUV_P999_MAX = 300.0
SUV_P999_MIN = 0.05

HOW_TO_CONVERT = ("convert it first: `nstage suv PET_DICOM_DIR -o pet_suv.mha` for a DICOM "
                  "series, or give --weight KG --dose MBQ (and the times) for a Bq/ml image")


# --------------------------------------------------------------------------- image files


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def read_image(path: str | Path, *, max_memory_gb: float | None = None) -> sitk.Image:
    """Read a 3D scalar image file (anything SimpleITK reads), checked before reading.

    The header is read first: an image whose voxels exceed the memory budget
    (:mod:`nstage.io.limits`) is refused before any voxel is read, and the voxel data must be
    complete (:mod:`nstage.io.integrity`). A 4D image with a single time point is reduced to 3D.

    Parameters
    ----------
    max_memory_gb : float, optional
        Memory available to the run (default: the container's limit or the physical memory).

    Raises
    ------
    InputError
        Missing, unreadable, truncated or damaged file, vector/RGB pixels, too large for the
        memory available.
    GeometryError
        Not 3D (2D, a single slice, or 4D with several time points).
    """
    header = _checked_header(read_header(path))
    check_input_sizes([InputSize("image", header.path, header.nbytes, header.describe())],
                      memory_limit(max_memory_gb))
    return read_verified(header)


def _checked_header(header: ImageHeader) -> ImageHeader:
    """Refuse, from the header alone, what cannot be a CT or PET volume."""
    path, size = header.path, header.size
    if header.components != 1:
        raise InputError(f"has {header.components} components per voxel (colour or vector "
                         "image), expected a scalar CT/PET volume", path)
    dim = len(size) - (1 if len(size) == 4 and size[3] == 1 else 0)
    if dim != 3:
        raise GeometryError(f"is {len(size)}D (size {size}), expected a 3D volume", path,
                            hint="give one 3D volume per modality")
    if min(size[:3]) < 2:
        raise GeometryError(f"has size {size[:3]}: a single slice is not a 3D volume", path)
    return header


def read_verified(header: ImageHeader) -> sitk.Image:
    """The voxels of a file whose header was read, after checking that the file holds all of
    them (:func:`nstage.io.integrity.check_layout`); 3D, as given.

    Raises
    ------
    InputError
        Truncated or damaged voxel data, or SimpleITK cannot read them.
    """
    path = header.path
    layout = data_layout(header)
    check_layout(header, layout)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        problem = verify_stream(header, layout)  # says what is wrong with the data, if it is
        if problem is not None:
            raise problem from None
        msg = " ".join(str(exc).split())
        raise InputError(f"cannot be read as an image ({msg[-160:]})", path,
                         hint="give a .mha, .nii.gz or .nrrd file or a DICOM folder") from None
    if image.GetDimension() == 4:
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    return image


# --------------------------------------------------------------------------- GC layout


def is_gc_folder(folder: Path) -> bool:
    """True when ``folder`` looks like a Grand Challenge input folder."""
    return folder.is_dir() and ((folder / "images").is_dir()
                                or (folder / "inputs.json").is_file())


def _socket_folders(folder: Path) -> tuple[list[Path], list[Path]]:
    """Candidate CT and PET socket folders, from inputs.json when it names them."""
    ct_dirs = [folder / "images" / s for s in CT_SLUGS]
    pet_dirs = [folder / "images" / s for s in PET_SLUGS]
    manifest = folder / "inputs.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"is not valid JSON ({exc})", manifest) from None
        if not isinstance(entries, list):
            raise InputError("must hold a list of socket values", manifest)
        for entry in entries:
            interface = entry.get("interface", entry) if isinstance(entry, dict) else {}
            if not isinstance(interface, dict):
                continue
            slug = str(interface.get("slug", "")).lower()
            rel = interface.get("relative_path") or entry.get("relative_path")
            if not rel:
                continue
            target = folder / str(rel)
            if slug in CT_SLUGS:
                ct_dirs.insert(0, target)
            elif slug in PET_SLUGS:
                pet_dirs.insert(0, target)
    return ct_dirs, pet_dirs


def gc_input_value(folder: str | Path, slug: str):
    """The ``value`` of the socket ``slug`` in a Grand Challenge ``inputs.json`` (None when the
    file or the socket is absent; a value socket such as a Bool carries it inline)."""
    manifest = Path(folder) / "inputs.json"
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", manifest) from None
    for entry in entries if isinstance(entries, list) else []:
        interface = entry.get("interface", {}) if isinstance(entry, dict) else {}
        if isinstance(interface, dict) and str(interface.get("slug", "")).lower() == slug:
            return entry.get("value")
    return None


def _one_image(candidates: list[Path], folder: Path, what: str, default: str) -> Path:
    for cand in candidates:
        if cand.is_file() and is_image_file(cand):
            return cand
        if cand.is_dir():
            files = sorted(p for p in cand.iterdir() if is_image_file(p))
            if len(files) == 1:
                return files[0]
            if len(files) > 1:
                names = ", ".join(p.name for p in files)
                raise InputError(f"holds {len(files)} {what} images ({names}); exactly one is "
                                 "expected", cand, hint=f"keep only the {what} image to stage")
            raise InputError(f"holds no {what} image (.mha, .nii.gz, .nrrd)", cand)
    raise InputError(f"no {what} input: images/{default}/ is missing", folder,
                     hint=f"put the {what} image in {folder / 'images' / default}")


def find_gc_inputs(folder: str | Path) -> tuple[Path, Path]:
    """The CT and PET image files of a Grand Challenge input folder.

    Raises
    ------
    InputError
        A modality folder is missing, empty or holds more than one image.
    """
    folder = Path(folder)
    ct_dirs, pet_dirs = _socket_folders(folder)
    return (_one_image(ct_dirs, folder, "CT", CT_SLUGS[0]),
            _one_image(pet_dirs, folder, "PET", PET_SLUGS[0]))


# --------------------------------------------------------------------------- value checks


def _sample(values: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    flat = values.ravel()
    step = max(1, flat.size // limit)
    return flat[::step]


def suv_plausibility_problem(values: np.ndarray) -> str | None:
    """Why ``values`` (a PET array) do not look like SUVbw, or None when they do.

    Looks at voxels above background (above 5 % of the 99.9th percentile): their median must
    be a plausible body SUV and the 99.9th percentile a plausible SUVmax.
    """
    v = _sample(np.asarray(values))
    v = v[np.isfinite(v)].astype(np.float64)
    if v.size == 0:
        return "no finite values"
    p999 = float(np.percentile(v, 99.9))
    vmax = float(v.max())
    if vmax <= 0:
        return "no positive values (all zero or negative)"
    ref = p999 if p999 > 0 else vmax
    body = v[v > 0.05 * ref]
    median = float(np.median(body)) if body.size else 0.0
    stats = f"median above background {median:.4g}, 99.9th percentile {p999:.4g}, max {vmax:.4g}"
    if median > SUV_BODY_MEDIAN_MAX or p999 > SUV_P999_MAX:
        return (f"values look like Bq/ml or counts, not SUV ({stats}; SUVs above background "
                "are typically 0.3-5, SUVmax rarely above 50)")
    if ref < SUV_P999_MIN:
        return f"values are far below any SUV ({stats})"
    return None


def _refuse_all_non_finite(arr: np.ndarray, path: Path, what: str) -> None:
    if arr.size and not np.isfinite(arr).any():
        raise GeometryError(f"{what} holds only NaN/inf values, no finite voxel", path,
                            hint="check the export of this image")


def _non_finite(image: sitk.Image, path: Path, fill: float, what: str,
                notes: list[str]) -> tuple[sitk.Image, sitk.Image | None]:
    """Voxels without a finite value (NaN/inf): filled with ``fill`` for the analysis, and
    returned as a uint8 mask (same grid) so the pipeline can decide what they hide.

    Returns
    -------
    (image, mask or None)
        The image with ``fill`` in place of NaN/inf, and the mask of those voxels (None when
        every voxel is finite).

    Raises
    ------
    GeometryError
        No finite voxel at all.
    """
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image, None
    arr = sitk.GetArrayViewFromImage(image)
    bad = ~np.isfinite(arr)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return image, None
    _refuse_all_non_finite(arr, path, what)
    fixed = sitk.GetImageFromArray(np.where(bad, fill, arr).astype(arr.dtype))
    fixed.CopyInformation(image)
    mask = sitk.GetImageFromArray(bad.view(np.uint8))
    mask.CopyInformation(image)
    notes.append(f"{what}: {n_bad} voxels ({100 * n_bad / arr.size:.2g} %) hold no valid value "
                 f"(NaN/inf); set to {fill:g} for the analysis, their region is judged in "
                 "reasons")
    return fixed, mask


def _as_ct_type(image: sitk.Image) -> sitk.Image:
    """CT as int16 when the values are integral and fit, else float32 (HU)."""
    pid = image.GetPixelID()
    if pid in (sitk.sitkInt16, sitk.sitkFloat32):
        return image
    arr = sitk.GetArrayViewFromImage(image)
    if pid in (sitk.sitkFloat64,) or np.issubdtype(arr.dtype, np.integer):
        if (np.issubdtype(arr.dtype, np.integer) or np.all(np.mod(arr, 1) == 0)) and \
                arr.size and arr.min() >= -32768 and arr.max() <= 32767:
            return sitk.Cast(image, sitk.sitkInt16)
    return sitk.Cast(image, sitk.sitkFloat32)


def _physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (min, max xyz mm) covering the voxels (centres +- half a voxel)."""
    size = np.array(image.GetSize(), dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def check_overlap(ct: sitk.Image, pet: sitk.Image, ct_path: Path, pet_path: Path) -> float:
    """Fraction of the CT box covered by the PET box; refuses when they do not overlap.

    Raises
    ------
    GeometryError
        The physical boxes of CT and PET do not intersect.
    """
    c_lo, c_hi = _physical_box(ct)
    p_lo, p_hi = _physical_box(pet)
    lo = np.maximum(c_lo, p_lo)
    hi = np.minimum(c_hi, p_hi)
    if np.any(hi <= lo):
        fmt = lambda a, b: "x {:.0f}..{:.0f}, y {:.0f}..{:.0f}, z {:.0f}..{:.0f} mm".format(  # noqa: E731
            *np.column_stack([a, b]).ravel())
        raise GeometryError(
            f"PET ({fmt(p_lo, p_hi)}) and CT ({fmt(c_lo, c_hi)}) do not overlap in space",
            pet_path, hint=f"check that {pet_path.name} and {ct_path.name} belong to the same "
                           "study and share one coordinate system")
    return float(np.prod(hi - lo) / np.prod(c_hi - c_lo))


# --------------------------------------------------------------------------- loading parts


@dataclass
class _Source:
    """One modality located but not read yet: an image file (header read) or a DICOM series
    (headers read), so sizes and identities can be checked before any voxel is read."""

    what: str                              # "CT" or "PET"
    path: Path                             # the image file, or the series' folder
    header: ImageHeader | None = None
    series: DicomSeries | None = None
    notes: list[str] = field(default_factory=list)
    declared: str = "input file declared as SUV"  # how a PET file's SUV is vouched for

    def size(self) -> InputSize:
        """Bytes the voxels take once read (PET as float32, CT at least int16)."""
        if self.series is not None:
            first = self.series.first
            shape = f"{len(self.series.files)} DICOM slices of {first.get('Rows')}x" \
                    f"{first.get('Columns')}"
            return InputSize(self.what, self.path, self.series.held_bytes, shape)
        header = self.header
        working = 4 if self.what == "PET" else 2
        per_voxel = max(header.dtype.itemsize * header.components, working)
        return InputSize(self.what, self.path, header.voxels * per_voxel, header.describe())

    @property
    def identity(self) -> dict[str, str]:
        if self.series is not None:
            return self.series.identity
        return identity_from_metadata(self.header.metadata)


def _file_source(what: str, path: Path, declared: str = "input file declared as SUV"
                 ) -> _Source:
    return _Source(what, path, header=_checked_header(read_header(path)), declared=declared)


def _locate_one(what: str, path: Path, frame_of_reference: str | None = None) -> _Source:
    """A CT or PET given alone: an image file, or a folder holding its DICOM series."""
    if not path.exists():
        raise InputError("does not exist", path)
    if not path.is_dir():
        return _file_source(what, path)
    if what == "PET":
        series, notes = choose_pet(find_series(path), path)
    else:
        series, notes = choose_ct(find_series(path), path, frame_of_reference)
    return _Source(what, series.folder, series=series, notes=notes)


def _locate(ct: Path, pet: Path | None) -> tuple[_Source, _Source]:
    """CT and PET sources from the two paths (or one folder holding both)."""
    if pet is not None:
        pet_src = _locate_one("PET", pet)
        ct_src = _locate_one("CT", ct, pet_src.identity.get("frame_of_reference"))
        return ct_src, pet_src
    if is_gc_folder(ct):
        ct_file, pet_file = find_gc_inputs(ct)
        return (_file_source("CT", ct_file),
                _file_source("PET", pet_file, "input declared as SUV (Grand Challenge socket)"))
    if ct.is_dir():
        series = find_series(ct)
        if not series:
            raise InputError("holds neither DICOM series nor the Grand Challenge layout "
                             "(images/ct, images/pet)", ct, hint="give --ct and --pet separately")
        pet_series, pet_notes = choose_pet(series, ct)
        ct_series, ct_notes = choose_ct(series, ct, pet_series.frame_of_reference)
        return (_Source("CT", ct_series.folder, series=ct_series, notes=ct_notes),
                _Source("PET", pet_series.folder, series=pet_series, notes=pet_notes))
    raise InputError("no PET given: a single CT file is not enough", ct,
                     hint="give --pet PET, or a folder holding both CT and PET")


@dataclass
class _Loaded:
    image: sitk.Image           # as given (not canonical)
    source: Path
    notes: list[str] = field(default_factory=list)
    scanner: str | None = None
    frame_of_reference: str | None = None
    factor: SUVFactor | None = None
    suv_source: str = ""
    units: str = "SUV"
    dicom_files: list[Path] = field(default_factory=list)  # in slice order (DICOM SEG)
    instance_numbers: list[int | None] = field(default_factory=list)


def _read_ct(src: _Source) -> _Loaded:
    if src.series is not None:
        vol = read_series(src.series)
        numbers = [None if h.get("InstanceNumber") in (None, "") else int(h.InstanceNumber)
                   for h in vol.headers]
        return _Loaded(_as_ct_type(vol.image), src.path, list(src.notes),
                       scanner=src.series.scanner,
                       frame_of_reference=src.series.frame_of_reference,
                       dicom_files=list(vol.files), instance_numbers=numbers)
    return _Loaded(_as_ct_type(read_verified(src.header)), src.path, list(src.notes))


def _read_pet(src: _Source, override: SUVOverride | None) -> _Loaded:
    if src.series is not None:
        loaded = _load_pet_series(src.series, override)
        loaded.notes[:0] = src.notes
        return loaded
    return _load_pet_file(src.header, override, src.declared)


def _load_pet_series(series: DicomSeries, override: SUVOverride | None) -> _Loaded:
    vol = read_series(series)
    try:
        factor = suv_factor(vol.headers, override)
    except SUVError as exc:
        if exc.path is not None:
            raise
        raise SUVError(exc.problem, series.folder, exc.hint) from None
    factors = np.array([factor.factor_for(i) for i in range(len(vol.headers))])
    values = sitk.GetArrayFromImage(vol.image) * factors[:, None, None]
    problem = suv_plausibility_problem(values)
    if problem:
        raise SUVError(f"the SUV computed from the DICOM header looks wrong: {problem}",
                       series.folder, hint="check PatientWeight, RadionuclideTotalDose and "
                                           "the times, or give --weight/--dose/--injection-time")
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(vol.image)
    notes = [f"SUV: {factor.describe()}", *factor.notes]
    return _Loaded(image, series.folder, notes, series.scanner, series.frame_of_reference,
                   factor, factor.source, factor.units)


def override_factor(override: SUVOverride, path: Path) -> SUVFactor:
    """SUVbw factor for a Bq/ml image file from explicit weight, dose and times.

    Raises
    ------
    SUVError
        Weight or dose missing, or only one of the two times given.
    """
    if override.weight_kg is None or override.dose_bq is None:
        missing = " and ".join(n for n, v in (("--weight KG", override.weight_kg),
                                              ("--dose MBQ", override.dose_bq)) if v is None)
        raise SUVError("an image file carries no SUV header: weight and dose are both needed to "
                       "convert Bq/ml to SUV", path, hint=f"give {missing}")
    half_life = override.half_life_s or F18_HALF_LIFE_S
    notes = []
    if override.half_life_s is None:
        notes.append(f"half-life of F-18 ({F18_HALF_LIFE_S} s) assumed")
    inj, scan = override.injection_time, override.scan_time
    if (inj is None) != (scan is None):
        raise SUVError("an image file carries no scan time: the dose cannot be decay-corrected "
                       "from the injection time alone", path,
                       hint="give both --injection-time and --scan-time, or neither to take "
                            "--dose as the activity at scan start")
    if inj is None:
        notes.append("no injection/scan times given: dose taken as the activity at scan start "
                     "(no decay correction)")
        return SUVFactor(override.weight_kg * 1000.0 / override.dose_bq, "BQML", None, None,
                         None, tuple(notes), None, override.weight_kg, override.dose_bq,
                         half_life, "override: weight and dose given (no decay correction)")
    import datetime as dt

    day = dt.date(2000, 1, 1)
    inj_dt = inj if isinstance(inj, dt.datetime) else dt.datetime.combine(
        scan.date() if isinstance(scan, dt.datetime) else day, inj)
    scan_dt = scan if isinstance(scan, dt.datetime) else dt.datetime.combine(inj_dt.date(), scan)
    uptake = (scan_dt - inj_dt).total_seconds()
    if uptake < 0 and not (isinstance(inj, dt.datetime) and isinstance(scan, dt.datetime)):
        uptake += 86400.0
        notes.append("scan after midnight: injection taken on the day before")
    if uptake < 0 or uptake > 6 * 3600:
        raise SUVError(f"uptake time {uptake / 60:.0f} min from the given injection and scan "
                       "times is implausible", path, hint="check --injection-time/--scan-time")
    decayed = override.dose_bq * 2.0 ** (-uptake / half_life)
    return SUVFactor(override.weight_kg * 1000.0 / decayed, "BQML", scan_dt,
                     scan_dt - dt.timedelta(seconds=uptake), "START", tuple(notes), None,
                     override.weight_kg, override.dose_bq, half_life,
                     "override: weight, dose and times given")


def _load_pet_file(header: ImageHeader, override: SUVOverride | None, declared: str
                   ) -> _Loaded:
    """A PET image file in SUV (or Bq/ml with ``override``); NaN/inf voxels are kept."""
    path = header.path
    image = sitk.Cast(read_verified(header), sitk.sitkFloat32)
    notes: list[str] = []
    values = sitk.GetArrayViewFromImage(image)
    _refuse_all_non_finite(values, path, "PET")
    if override is not None and not override.empty:
        factor = override_factor(override, path)
        suv = (values * factor.factor).astype(np.float32)
        problem = suv_plausibility_problem(suv)
        if problem:
            raise SUVError(f"after conversion with the given weight/dose the PET still does not "
                           f"look like SUV: {problem}", path,
                           hint="leave out --weight/--dose if the file holds SUV already")
        out = sitk.GetImageFromArray(suv)
        out.CopyInformation(image)
        notes.extend([f"SUV: {factor.describe()}", *factor.notes])
        return _Loaded(out, path, notes, factor=factor, suv_source=factor.source,
                       units="BQML")
    problem = suv_plausibility_problem(values)
    if problem:
        raise SUVError(f"PET does not look like SUV: {problem}", path, hint=HOW_TO_CONVERT)
    return _Loaded(image, path, notes, suv_source=declared, units="SUV")


# --------------------------------------------------------------------------- the study


def load_study(ct: str | Path, pet: str | Path | None = None, *,
               override: SUVOverride | None = None, max_memory_gb: float | None = None,
               allow_different_studies: bool = False) -> Study:
    """Load a CT + PET study: CT in HU, PET in SUVbw, both canonical, checked.

    Before any voxel is read, the headers are checked: the voxels of both images must fit the
    memory budget (:mod:`nstage.io.limits`), and CT and PET must not differ in PatientID,
    StudyInstanceUID or FrameOfReferenceUID where both carry them (:mod:`nstage.io.identity`).
    Image files must hold every voxel their header declares (:mod:`nstage.io.integrity`).

    Parameters
    ----------
    ct : str or Path
        CT image file or DICOM folder; or, with ``pet`` None, a Grand Challenge input folder
        (``images/ct``, ``images/pet``) or a DICOM study folder holding both series.
    pet : str or Path, optional
        PET image file (SUV) or PET DICOM folder (converted from its header).
    override : SUVOverride, optional
        Weight/dose/times replacing or supplying what the PET header lacks.
    max_memory_gb : float, optional
        Memory available to the run (GB); default the container's limit or physical memory.
    allow_different_studies : bool
        Stage a CT and PET whose identities differ (with a note) instead of refusing them.

    Returns
    -------
    Study
        ``ct`` (int16/float32 HU) and ``pet`` (float32 SUVbw, own grid) in canonical LPS
        orientation; ``ct_geometry`` is the CT grid as given; ``invalid`` the regions without
        a finite value.

    Raises
    ------
    InputError, GeometryError, SUVError
        One-line messages naming the file and the problem.
    """
    ct = Path(ct)
    if not ct.exists():
        raise InputError("does not exist", ct)
    if pet is not None and not Path(pet).exists():
        raise InputError("does not exist", pet)
    ct_src, pet_src = _locate(ct, None if pet is None else Path(pet))
    check_input_sizes([ct_src.size(), pet_src.size()], memory_limit(max_memory_gb))
    identity_notes = check_same_study(ct_src.identity, pet_src.identity, ct_src.path,
                                      pet_src.path, allow_different_studies)
    # The PET is read in a second thread while the CT is read here: decompression and
    # reading release the GIL, so on two cores the two reads overlap. The PET's error, if
    # any, is raised first, as when they were read one after the other.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nstage-read-pet") as pool:
        pet_job = pool.submit(_read_pet, pet_src, override)
        try:
            ct_part = _read_ct(ct_src)
        except Exception:
            pet_job.result()
            raise
        pet_part = pet_job.result()
    ct_part.notes.extend(identity_notes)
    return assemble_study(ct_part, pet_part)


def assemble_study(ct_part: _Loaded, pet_part: _Loaded) -> Study:
    """Checks shared by every input kind, then canonical orientation."""
    notes = [*pet_part.notes, *ct_part.notes]
    ct_raw, ct_invalid = _non_finite(ct_part.image, ct_part.source, -1024.0, "CT", notes)
    pet_raw, pet_invalid = _non_finite(pet_part.image, pet_part.source, 0.0, "PET", notes)
    check_overlap(ct_raw, pet_raw, ct_part.source, pet_part.source)
    if ct_raw.GetPixelID() == sitk.sitkFloat32 or ct_raw.GetPixelID() == sitk.sitkInt16:
        ct_arr = sitk.GetArrayViewFromImage(ct_raw)
        if ct_arr.size and float(ct_arr.min()) >= 0:
            notes.append("CT has no negative values: it may hold stored values rather than HU")
    if not ImageGeometry.of(ct_raw).is_canonical:
        notes.append("CT re-oriented to LPS internally; outputs use the CT's own grid")
    meta = StudyMeta(
        ct_source=str(ct_part.source),
        pet_source=str(pet_part.source),
        suv_source=pet_part.suv_source,
        suv_factor=None if pet_part.factor is None else float(pet_part.factor.factor),
        pet_units=pet_part.units,
        scanner=pet_part.scanner or ct_part.scanner,
        notes=notes,
        ct_dicom_files=[str(f) for f in ct_part.dicom_files],
        ct_instance_numbers=list(ct_part.instance_numbers),
    )
    invalid = {what: canonical(mask) for what, mask in (("CT", ct_invalid), ("PET", pet_invalid))
               if mask is not None}
    return Study(ct=canonical(ct_raw), pet=sitk.Cast(canonical(pet_raw), sitk.sitkFloat32),
                 ct_geometry=ImageGeometry.of(ct_raw), meta=meta, invalid=invalid)


def read_ct(path: str | Path, *, max_memory_gb: float | None = None
            ) -> tuple[sitk.Image, list[str]]:
    """A CT alone (file or DICOM folder) in HU, as given (not re-oriented), with notes.

    NaN/inf voxels become air (-1024 HU) with a note.

    Raises
    ------
    InputError, GeometryError
        Unreadable, truncated, too large, not 3D, no CT series in the folder, only NaN/inf.
    """
    src = _locate_one("CT", Path(path))
    check_input_sizes([src.size()], memory_limit(max_memory_gb))
    part = _read_ct(src)
    notes = list(part.notes)
    image, _ = _non_finite(part.image, part.source, -1024.0, "CT", notes)
    return image, notes


def load_pet_suv(pet: str | Path, *, override: SUVOverride | None = None,
                 max_memory_gb: float | None = None
                 ) -> tuple[sitk.Image, SUVFactor | None, list[str], str]:
    """PET alone in SUVbw (canonical orientation, float32), for ``nstage suv``.

    Voxels without a finite value stay NaN (with a note), so that a later ``nstage run`` on
    the converted image still sees where the PET holds no data.

    Returns
    -------
    image, factor, notes, source
        The SUV image, the factor used (None for files already in SUV), notes and where the
        PET was read from.
    """
    src = _locate_one("PET", Path(pet))
    check_input_sizes([src.size()], memory_limit(max_memory_gb))
    part = _read_pet(src, override)
    notes = list(part.notes)
    values = sitk.GetArrayViewFromImage(part.image)
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    _refuse_all_non_finite(values, part.source, "PET")
    if n_bad:
        notes.append(f"PET: {n_bad} voxels hold no valid value (NaN/inf); kept as NaN")
    return sitk.Cast(canonical(part.image), sitk.sitkFloat32), part.factor, notes, str(part.source)
