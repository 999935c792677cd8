"""TotalSegmentator anatomy backend (task ``total``), run in-process and strictly offline.

Weights are never downloaded. The model folders TotalSegmentator needs are checked first, so a
missing folder fails within seconds with a :class:`~nstage.errors.ModelError` naming it, before
torch, nnU-Net or TotalSegmentator are even imported.

Where the weights are looked for (first hit wins):

1. ``$TOTALSEG_WEIGHTS_PATH`` (used as given, even when it does not exist, so the error names it),
2. ``$TOTALSEG_HOME_DIR/nnunet/results`` (likewise),
3. ``/opt/ml/model/totalsegmentator`` (or its ``nnunet/results``), where a Grand Challenge model
   tarball lands,
4. ``~/.totalsegmentator/nnunet/results``.

Each folder holds TotalSegmentator's dataset folders, e.g.
``Dataset297_TotalSegmentator_total_3mm_1559subj/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth``:
297 for ``--fast``, 291-295 (``nnUNetTrainerNoMirroring``) otherwise (see
:func:`required_model_folders`).

During a run TotalSegmentator gets a private, writable config home under the temp dir with usage
statistics switched off, its download function is replaced by a check that fails instead of
downloading, and nnU-Net's worker-process prediction is swapped for its sequential in-process
prediction. Every environment variable TotalSegmentator sets (it re-points nnU-Net's global
``nnUNet_results``) is restored afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.advice import ANATOMY_FALLBACK, models_extra_hint, totalseg_weights_hint
from nstage.anatomy.base import Anatomy
from nstage.errors import InputError, ModelError
from nstage.geometry import canonical, direction_matrix, resample_to, spacing_zyx
from nstage.geometry import crop as crop_image

BACKEND = "totalsegmentator"
OPT_ML_WEIGHTS = Path("/opt/ml/model/totalsegmentator")
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"

# The ``total`` task's models, as configured in TotalSegmentator 2.x
# (totalsegmentator/map_tasks_config.py: TASK_CONFIGS["total"], TASK_ID_WEIGHTS_CONFIGS). Kept here
# so that checking for weights needs no torch import; tests compare it with the installed package.
TOTAL_FAST = {297: "Dataset297_TotalSegmentator_total_3mm_1559subj"}
TOTAL_FULL = {
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
}
# With ``roi_subset`` TotalSegmentator first runs its 6 mm model to find the region of the
# requested classes, so that model is then needed as well.
TOTAL_ROI_CROP = {298: "Dataset298_TotalSegmentator_total_6mm_1559subj"}
TRAINERS = {297: "nnUNetTrainer_4000epochs_NoMirroring",
            298: "nnUNetTrainer_4000epochs_NoMirroring",
            **dict.fromkeys(TOTAL_FULL, "nnUNetTrainerNoMirroring")}

# Classes of the ``total`` task that N-staging uses (anatomy, landmarks, physiological uptake).
STAGING_CLASSES: tuple[str, ...] = (
    "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
    "lung_middle_lobe_right", "lung_lower_lobe_right", "trachea", "esophagus", "aorta", "heart",
    "pulmonary_vein", "superior_vena_cava", "brachiocephalic_trunk", "brachiocephalic_vein_left",
    "brachiocephalic_vein_right", "subclavian_artery_left", "subclavian_artery_right",
    "common_carotid_artery_left", "common_carotid_artery_right", "sternum", "clavicula_left",
    "clavicula_right", "spinal_cord",
    *(f"vertebrae_C{i}" for i in (6, 7)), *(f"vertebrae_T{i}" for i in range(1, 13)),
    "vertebrae_L1", *(f"rib_left_{i}" for i in range(1, 13)),
    *(f"rib_right_{i}" for i in range(1, 13)),
    "thyroid_gland", "liver", "kidney_left", "kidney_right", "adrenal_gland_left",
    "adrenal_gland_right", "urinary_bladder", "brain", "spleen",
)

# Which of the five full-resolution part models predicts which staging class (TotalSegmentator
# class_map_5_parts), so the check asks only for the parts ``roi_subset`` will run.
_PART_OF_CLASS_PREFIX: tuple[tuple[str, int], ...] = (
    ("vertebrae_", 292), ("rib_", 295), ("sternum", 295), ("costal_cartilages", 295),
    ("heart", 293), ("aorta", 293), ("pulmonary_vein", 293), ("brachiocephalic", 293),
    ("subclavian_artery", 293), ("common_carotid_artery", 293), ("atrial_appendage", 293),
    ("superior_vena_cava", 293), ("inferior_vena_cava", 293), ("portal_vein", 293),
    ("iliac_", 293), ("clavicula", 294), ("scapula", 294), ("humerus", 294), ("femur", 294),
    ("hip_", 294), ("spinal_cord", 294), ("gluteus", 294), ("autochthon", 294),
    ("iliopsoas", 294), ("brain", 294), ("skull", 294), ("sacrum", 292),
)


def _part_of(name: str) -> int:
    for prefix, tid in _PART_OF_CLASS_PREFIX:
        if name.startswith(prefix):
            return tid
    return 291  # organs: lungs, airway, oesophagus, thyroid, liver, kidneys, adrenals, ...


def _env_dir(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def totalseg_weights_dir() -> Path | None:
    """The folder holding TotalSegmentator's ``DatasetNNN_*`` model folders, or None.

    ``TOTALSEG_WEIGHTS_PATH`` and ``TOTALSEG_HOME_DIR`` are used as given when set (so a wrong
    setting is reported rather than silently replaced); the fixed locations only when they exist.
    """
    explicit = _env_dir("TOTALSEG_WEIGHTS_PATH")
    if explicit is not None:
        return explicit
    home = _env_dir("TOTALSEG_HOME_DIR")
    if home is not None:
        return home / "nnunet" / "results"
    for candidate in (OPT_ML_WEIGHTS / "nnunet" / "results", OPT_ML_WEIGHTS,
                      Path.home() / ".totalsegmentator" / "nnunet" / "results"):
        if candidate.is_dir():
            return candidate
    return None


def passes_roi_subset(fast: bool, roi_subset: Sequence[str] | None) -> bool:
    """Whether TotalSegmentator itself is given ``roi_subset``.

    Only where that saves work: with the 1.5 mm models when the classes need fewer than all five
    part models. Otherwise nstage keeps the classes itself, because TotalSegmentator's
    ``roi_subset`` also runs its 6 mm model (298) first to crop to those classes, which costs an
    extra model (and its weights) and gains nothing on a CT already cropped to the thorax.
    """
    if fast or roi_subset is None:
        return False
    return {_part_of(name) for name in roi_subset} != set(TOTAL_FULL)


def _required_models(fast: bool, roi_subset: Sequence[str] | None) -> dict[int, str]:
    if fast:
        return dict(TOTAL_FAST)
    if not passes_roi_subset(fast, roi_subset):
        return dict(TOTAL_FULL)
    parts = {_part_of(name) for name in roi_subset or ()}
    return {**{t: f for t, f in TOTAL_FULL.items() if t in parts}, **TOTAL_ROI_CROP}


def required_model_folders(fast: bool = False,
                           roi_subset: Sequence[str] | None = STAGING_CLASSES) -> list[str]:
    """Dataset folder names TotalSegmentator's ``total`` task loads for this run.

    ``fast``: the 3 mm model (297). Otherwise the 1.5 mm part models (291-295); when the classes
    of ``roi_subset`` need only some parts, just those plus the 6 mm model (298) TotalSegmentator
    then runs first to find the region (see :func:`passes_roi_subset`). The default staging
    classes need all five parts.
    """
    return [folder for _, folder in sorted(_required_models(fast, roi_subset).items())]


def _checkpoint(weights: Path, tid: int, folder: str) -> Path:
    return weights / folder / f"{TRAINERS[tid]}__{PLANS}__{CONFIGURATION}" / "fold_0" / \
        "checkpoint_final.pth"


def _missing_model(fast: bool, roi_subset: Sequence[str] | None) -> Path | None:
    """The first required model path that is absent (a dataset folder or its checkpoint)."""
    weights = totalseg_weights_dir()
    models = _required_models(fast, roi_subset)
    if weights is None:
        first = min(models)
        return Path.home() / ".totalsegmentator" / "nnunet" / "results" / models[first]
    for tid, folder in sorted(models.items()):
        if not (weights / folder).is_dir():
            return weights / folder
        if not _checkpoint(weights, tid, folder).is_file():
            return _checkpoint(weights, tid, folder)
    return None


def totalseg_installed() -> bool:
    """True when torch, nnunetv2 and TotalSegmentator (the ``models`` extra) can be imported;
    checked without importing them."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("torch", "nnunetv2", "totalsegmentator"))


def totalseg_weights_available(fast: bool = False,
                               roi_subset: Sequence[str] | None = STAGING_CLASSES) -> bool:
    """True when every model folder (with its fold_0 checkpoint) the run needs is present and
    the ``models`` extra is installed.

    Cheap: only looks at the file system and imports nothing heavy.
    """
    return _missing_model(fast, roi_subset) is None and totalseg_installed()


def check_totalseg_weights(fast: bool = False,
                           roi_subset: Sequence[str] | None = STAGING_CLASSES) -> Path:
    """Return the weights folder, or raise :class:`ModelError` naming the missing model folder
    (or saying the ``models`` extra is not installed)."""
    missing = _missing_model(fast, roi_subset)
    if missing is not None:
        mode = "total --fast (3 mm)" if fast else "total (1.5 mm)"
        raise ModelError(
            f"TotalSegmentator {mode} model folder not found (nstage never downloads weights)",
            path=missing,
            hint=totalseg_weights_hint(fast))
    if not totalseg_installed():
        raise ModelError("TotalSegmentator, nnunetv2 or torch is not installed",
                         hint=models_extra_hint(ANATOMY_FALLBACK))
    weights = totalseg_weights_dir()
    assert weights is not None
    return weights


# --------------------------------------------------------------------------------------------
# Body mask on the full grid


def body_mask_on_grid(ct: sitk.Image) -> np.ndarray:
    """Body mask (bool, ``[z, y, x]``) of ``ct`` from the shared low-resolution body mask
    (:func:`nstage.anatomy.crop.body_and_outside` at 4 mm), mapped back by nearest neighbour."""
    from nstage.anatomy.crop import body_and_outside, resample_spacing

    small = resample_spacing(ct, (4.0, 4.0, 4.0))
    body, _ = body_and_outside(sitk.GetArrayViewFromImage(small), spacing_zyx(small))
    low = sitk.GetImageFromArray(body.astype(np.uint8))
    low.CopyInformation(small)
    return sitk.GetArrayFromImage(resample_to(low, ct, nearest=True)).astype(bool)


# --------------------------------------------------------------------------------------------
# sitk <-> nibabel (TotalSegmentator's API takes and returns in-memory NIfTI)


def sitk_to_nifti(image: sitk.Image):
    """An in-memory ``nibabel.Nifti1Image`` of ``image`` (data ``[x, y, z]``, RAS affine)."""
    import nibabel as nib

    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0))
    affine = np.eye(4)
    affine[:3, :3] = direction_matrix(image) * np.array(image.GetSpacing(), dtype=float)
    affine[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK LPS -> NIfTI RAS
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def nifti_labels_to_array(seg, reference: sitk.Image) -> np.ndarray:
    """The label data of a NIfTI sharing ``reference``'s grid, as a ``[z, y, x]`` uint8 array."""
    data = np.asarray(seg.dataobj)
    out = np.ascontiguousarray(np.rint(data).astype(np.uint8).transpose(2, 1, 0))
    if out.shape != reference.GetSize()[::-1]:
        raise ModelError(f"TotalSegmentator returned a label map of shape {out.shape[::-1]} for an "
                         f"image of size {reference.GetSize()}",
                         hint="report this as a bug in nstage")
    return out


# --------------------------------------------------------------------------------------------
# Offline, in-process run


def _select_device(device: str) -> str:
    """nstage device ('auto', 'cpu', 'cuda', 'cuda:N', 'gpu') -> TotalSegmentator's ('cpu', 'gpu',
    'gpu:N')."""
    try:
        import torch
    except ImportError as exc:
        raise ModelError(f"cannot import torch ({exc})",
                         hint=models_extra_hint(ANATOMY_FALLBACK)) from exc

    dev = device.lower()
    if dev == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev in ("cuda", "gpu"):
        return "gpu" if torch.cuda.is_available() else "cpu"
    if dev.startswith(("cuda:", "gpu:")):
        return f"gpu:{dev.split(':', 1)[1]}" if torch.cuda.is_available() else "cpu"
    raise InputError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")


@contextlib.contextmanager
def _restored_environ(*names: str) -> Iterator[None]:
    saved = {n: os.environ.get(n) for n in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _offline_totalseg_home(weights: Path) -> Iterator[Path]:
    """A private writable TotalSegmentator home (usage statistics off) for the run's duration."""
    home = Path(tempfile.mkdtemp(prefix="nstage-totalseg-home-"))
    config = {"totalseg_id": "totalseg_nstage", "send_usage_stats": False,
              "prediction_counter": 0, "statistics_disclaimer_shown": True}
    (home / "config.json").write_text(json.dumps(config))
    env = ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH", "nnUNet_raw", "nnUNet_preprocessed",
           "nnUNet_results")
    try:
        with _restored_environ(*env):
            os.environ["TOTALSEG_HOME_DIR"] = str(home)
            os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)
            yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def _sequential_predict_from_files(self, list_of_lists_or_source_folder,
                                   output_folder_or_list_of_truncated_output_files,
                                   save_probabilities=False, overwrite=True,
                                   num_processes_preprocessing=1,
                                   num_processes_segmentation_export=1,
                                   folder_with_segs_from_prev_stage=None, num_parts=1, part_id=0,
                                   **kwargs):
    """``nnUNetPredictor.predict_from_files`` without worker processes (same arguments)."""
    import inspect

    accepted = inspect.signature(self.predict_from_files_sequential).parameters
    extra = {k: v for k, v in kwargs.items() if k in accepted}
    if isinstance(list_of_lists_or_source_folder, str):
        # nnU-Net lists a source folder with a 12-process Pool; list it here instead.
        try:
            from batchgenerators.utilities.file_and_folder_operations import subfiles
            from nnunetv2.utilities.utils import (
                create_paths_fn,
                get_identifiers_from_splitted_dataset_folder,
            )
        except ImportError:
            pass
        else:
            folder = list_of_lists_or_source_folder
            ending = self.dataset_json["file_ending"]
            files = subfiles(folder, suffix=ending, join=False, sort=True)
            list_of_lists_or_source_folder = [
                create_paths_fn(folder, files, ending, case)
                for case in get_identifiers_from_splitted_dataset_folder(folder, ending)]
    return self.predict_from_files_sequential(
        list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
        save_probabilities=save_probabilities, overwrite=overwrite,
        folder_with_segs_from_prev_stage=folder_with_segs_from_prev_stage, **extra)


def _no_download(weights: Path):
    def check(task_id) -> None:
        # Replaces totalsegmentator's download_pretrained_weights: never fetch, never delete.
        models = {**TOTAL_FAST, **TOTAL_FULL, **TOTAL_ROI_CROP}
        folder = models.get(task_id, f"Dataset{task_id}_*")
        if task_id not in models or not (weights / folder).is_dir():
            raise ModelError(f"TotalSegmentator model folder for task {task_id} not found "
                             "(nstage never downloads weights)", path=weights / folder,
                             hint="put the TotalSegmentator weights there or set "
                                  "TOTALSEG_WEIGHTS_PATH")
    return check


def run_totalsegmentator(image: sitk.Image, *, fast: bool, roi_subset: Sequence[str] | None,
                         device: str, weights: Path) -> np.ndarray:
    """Run TotalSegmentator ``total`` in-process on ``image``; labels ``[z, y, x]`` on its grid
    with values of TotalSegmentator's ``class_map["total"]``. ``device`` is TotalSegmentator's
    (``cpu``, ``gpu``, ``gpu:N``; see :func:`_select_device`)."""
    with _offline_totalseg_home(weights):
        # Imported once the environment points at the weights (nnunetv2 < 2.8 reads its paths
        # at import time), and TotalSegmentator's own nnU-Net patches go in before ours.
        try:
            import torch
            import totalsegmentator.nnunet  # noqa: F401
            import totalsegmentator.python_api as api
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        except ImportError as exc:
            raise ModelError(f"cannot import TotalSegmentator ({exc})",
                             hint=models_extra_hint(ANATOMY_FALLBACK)) from exc

        threads = torch.get_num_threads()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_patched(api, "download_pretrained_weights",
                                         _no_download(weights)))
            if hasattr(nnUNetPredictor, "predict_from_files_sequential"):
                stack.enter_context(_patched(nnUNetPredictor, "predict_from_files",
                                             _sequential_predict_from_files))
            # TotalSegmentator prints progress and citations; keep nstage's stdout clean.
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            try:
                seg = api.totalsegmentator(
                    sitk_to_nifti(image), None, ml=True, nr_thr_resamp=1, nr_thr_saving=1,
                    fast=fast, task="total",
                roi_subset=list(roi_subset) if passes_roi_subset(fast, roi_subset) else None,
                    device=device, quiet=True, verbose=False, skip_saving=True,
                    statistics=False, preview=False)
            finally:
                torch.set_num_threads(threads)
    return nifti_labels_to_array(seg, image)


def segment_totalseg(ct: sitk.Image, *, fast: bool = False, device: str = "auto",
                     roi_subset: Sequence[str] | None = STAGING_CLASSES,
                     crop: bool = True) -> Anatomy:
    """Segment the staging anatomy of a CT with TotalSegmentator (task ``total``).

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU (the working CT of the pipeline); re-oriented to canonical if it is not.
    fast : bool
        Use the 3 mm model (dataset 297) instead of the 1.5 mm part models (291-295).
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    roi_subset : sequence of str or None
        TotalSegmentator classes to keep; default :data:`STAGING_CLASSES` (handed to
        TotalSegmentator only where that saves work, see :func:`passes_roi_subset`).
    crop : bool
        Crop to the thorax first (cheap; the main lever on run time and memory).

    Returns
    -------
    Anatomy
        Labels on ``ct``'s full (canonical) grid with TotalSegmentator's ``total`` label values
        and names, ``backend="totalsegmentator"``, the body mask in ``extra_masks["body"]``.

    Raises
    ------
    ModelError
        When a needed model folder is missing (before anything heavy is loaded) or the
        ``models`` extra is not installed.
    """
    weights = check_totalseg_weights(fast, roi_subset)
    if ct.GetDimension() != 3:
        raise InputError("the CT is not a 3D image", hint="pass a 3D CT volume")
    ct = canonical(ct)  # the thorax box and the Anatomy refer to the canonical layout
    t0 = time.perf_counter()
    if crop:
        from nstage.anatomy.crop import thorax_box

        box = tuple(thorax_box(ct))
    else:
        box = tuple(slice(0, n) for n in ct.GetSize()[::-1])
    work = crop_image(ct, box)
    ts_device = _select_device(device)
    labels_crop = run_totalsegmentator(work, fast=fast, roi_subset=roi_subset, device=ts_device,
                                       weights=weights)
    shape = ct.GetSize()[::-1]
    labels = np.zeros(shape, dtype=np.uint8)
    labels[box] = labels_crop

    from totalsegmentator.map_to_binary import class_map

    total = class_map["total"]
    keep = set(roi_subset) if roi_subset else set(total.values())
    names = {int(v): n for v, n in total.items() if n in keep}
    labels[~np.isin(labels, list(names))] = 0
    body = body_mask_on_grid(ct)
    notes = [f"TotalSegmentator total{' --fast' if fast else ''} on a crop of "
             f"{work.GetSize()} voxels on {ts_device} in {time.perf_counter() - t0:.1f} s"]
    return Anatomy(labels=labels, names=names, reference=ct, backend=BACKEND,
                   extra_masks={"body": body}, notes=notes)
