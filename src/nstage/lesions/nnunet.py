"""nnU-Net v2 lesion backend: any trained-model folder, run in-process on a CT + PET(SUV) pair.

A trained-model folder is ``<DatasetNNN_Name>/<trainer>__<plans>__<configuration>/`` holding
``dataset.json`` (``channel_names``, ``labels``), ``plans.json`` and
``fold_<k>/checkpoint_final.pth`` (and/or ``checkpoint_best.pth``). The folder is always loaded
from its explicit path, never via nnU-Net's ``nnUNet_results`` variable (TotalSegmentator
re-points that variable in-process).

Published folders load as distributed: the network is built from ``plans.json`` with the
trainer class's ``build_network_architecture`` when nnunetv2 ships that class, and with nnU-Net's
default (``get_network_from_plans``, any architecture the plans name: ``PlainConvUNet``,
``ResidualEncoderUNet`` of the ``nnUNetResEncUNet*Plans``, ...) when it does not (autoPET-style
``nnUNetTrainer_<Variant>`` classes only change training); every fold's weights must then load
strictly into that network, so an architecture the default cannot build fails with a clear
message instead of predicting garbage. All folds present are ensembled unless ``folds`` names some.

Channel order comes from ``dataset.json`` ``channel_names``: names such as ``CT``/``PET``/``SUV``
decide; for non-descriptive names the normalisation scheme (``CTNormalization`` marks CT) and then
the autoPET file convention (``_0000`` CT, ``_0001`` PET) are used. The prediction runs with the
sequential ``predict_single_npy_array`` (no worker processes) on the body box of the given grid,
and the mask (every label > 0) is returned on the grid of ``ct``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nstage.advice import LESIONS_FALLBACK, models_extra_hint
from nstage.errors import InputError, ModelError
from nstage.geometry import resample_to, spacing_zyx
from nstage.lesions.base import LesionMask

BACKEND = "nnunet"
DEFAULT_MODEL_DIR = Path("/opt/ml/model/lesions")
CHECKPOINT = "checkpoint_final.pth"
CHECKPOINTS = {"final": CHECKPOINT, "best": "checkpoint_best.pth"}
_TRAINER_DIR = re.compile(r"^[^_].*__.+__.+$")  # <trainer>__<plans>__<configuration>
_CT_TOKENS = {"ct", "cect", "ldct", "hu", "cta", "computed", "tomography"}
_PET_PREFIXES = ("pet", "suv", "fdg")


def _looks_like_trainer_folder(path: Path, *, top: bool = False) -> bool:
    # Below the given folder only nnU-Net's naming or fold folders count, so that its
    # crossval_results_* folders (which hold copies of the JSON files) are not mistaken for models.
    if not path.is_dir():
        return False
    if bool(_TRAINER_DIR.match(path.name)) or any(path.glob("fold_*")):
        return True
    return top and ((path / "plans.json").exists() or (path / "dataset.json").exists())


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


def _candidate_folders(root: Path) -> list[Path]:
    """Trainer folders at ``root``, directly below it, or one dataset folder further down."""
    if _looks_like_trainer_folder(root, top=True):
        return [root]
    direct = [p for p in _subdirs(root) if _looks_like_trainer_folder(p)]
    if direct:
        return direct
    return [q for p in _subdirs(root) for q in _subdirs(p) if _looks_like_trainer_folder(q)]


def find_lesion_model(model_dir: Path | str | None = None) -> Path | None:
    """The nnU-Net trainer folder to use, or None when no model is installed.

    Parameters
    ----------
    model_dir : Path, optional
        A trainer folder (``<trainer>__<plans>__<configuration>``), or a dataset folder holding
        exactly one trainer folder, or a folder holding exactly one such dataset folder.
        Default ``/opt/ml/model/lesions`` (where a Grand Challenge model tarball lands).

    Raises
    ------
    ModelError
        When an explicitly given folder does not exist or holds no (or several) trainer folders.
    """
    explicit = model_dir is not None
    root = Path(model_dir).expanduser() if explicit else DEFAULT_MODEL_DIR
    if not root.is_dir():
        if explicit:
            raise ModelError("nnU-Net lesion model folder not found", path=root,
                             hint="give the trainer folder <trainer>__<plans>__<configuration> "
                                  "of a trained nnU-Net v2 model, or use --lesions suv")
        return None
    found = _candidate_folders(root)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise ModelError(f"several nnU-Net model folders found ({names})", path=root,
                         hint="pass the one to use with --lesion-model")
    if explicit:
        raise ModelError("no nnU-Net v2 trainer folder (with dataset.json, plans.json and "
                         "fold_*/checkpoint_final.pth) found", path=root,
                         hint="give the <trainer>__<plans>__<configuration> folder")
    return None


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path.name} missing from the nnU-Net model folder", path=path.parent,
                         hint="copy the complete trained-model folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path.name} is not valid JSON ({exc})", path=path,
                         hint="restore the file from the trained model") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path.name} does not hold a JSON object", path=path,
                         hint="restore the file from the trained model")
    return data


def _configuration_of(folder: Path, plans: dict) -> str:
    parts = folder.name.split("__")
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or not configs:
        raise ModelError("plans.json has no configurations", path=folder / "plans.json",
                         hint="restore the file from the trained model")
    if len(parts) == 3 and parts[2] in configs:
        return parts[2]
    if len(configs) == 1:
        return next(iter(configs))
    raise ModelError(f"cannot tell which plans.json configuration the folder name "
                     f"{folder.name!r} means", path=folder,
                     hint="keep nnU-Net's folder name <trainer>__<plans>__<configuration>")


def channel_roles(dataset_json: dict, plans: dict | None = None,
                  configuration: str | None = None) -> list[str]:
    """``"CT"`` or ``"PET"`` for each model input channel, in channel order.

    Decided by the ``channel_names`` (``CT``, ``ct_hu``, ``PET``, ``SUV``, ``FDG``...), else by the
    normalisation scheme (``CTNormalization`` marks the CT channel), else by the autoPET
    convention (channel 0 CT, channel 1 PET).
    """
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ModelError("dataset.json has no channel_names", hint="restore the file")
    try:
        keys = sorted(names, key=int)
    except ValueError as exc:
        raise ModelError(f"dataset.json channel_names keys are not channel numbers: "
                         f"{list(names)}", hint="restore the file") from exc
    roles: list[str | None] = []
    for key in keys:
        tokens = [t for t in re.split(r"[^a-z0-9]+", str(names[key]).lower()) if t]
        is_pet = any(t.startswith(_PET_PREFIXES) for t in tokens)
        is_ct = any(t in _CT_TOKENS for t in tokens)
        roles.append("PET" if is_pet and not is_ct else "CT" if is_ct and not is_pet else None)
    if None in roles and plans is not None:
        cfg = plans.get("configurations", {}).get(configuration or "", {})
        schemes = cfg.get("normalization_schemes") or []
        for i, scheme in enumerate(schemes[:len(roles)]):
            if roles[i] is None and scheme == "CTNormalization":
                roles[i] = "CT"
    if len(roles) == 2 and roles.count(None) == 1:
        known = next(r for r in roles if r is not None)
        roles = [r if r is not None else ("PET" if known == "CT" else "CT") for r in roles]
    if len(roles) == 2 and roles == [None, None]:
        roles = ["CT", "PET"]  # autoPET convention: _0000 = CT, _0001 = PET
    if len(roles) == 1 and roles[0] is None:
        roles = ["PET"]
    if None in roles or len(roles) > 2 or (len(roles) == 2 and sorted(roles) != ["CT", "PET"]):
        raise ModelError(f"cannot map the model's input channels {dict(names)} to CT and PET",
                         hint="the model must take CT and/or PET (SUV) channels")
    return [str(r) for r in roles]


def checkpoint_file(checkpoint: str = "final") -> str:
    """``checkpoint_final.pth`` or ``checkpoint_best.pth`` for ``"final"`` / ``"best"``."""
    if checkpoint in CHECKPOINTS.values():
        return checkpoint
    if checkpoint not in CHECKPOINTS:
        from nstage.errors import UsageError

        raise UsageError(f"unknown nnU-Net checkpoint {checkpoint!r}", hint="use final or best")
    return CHECKPOINTS[checkpoint]


def check_model_folder(path: Path | str, folds: Sequence[int | str] | None = None,
                       checkpoint: str = "final") -> list:
    """Check an nnU-Net v2 trainer folder; return the folds to use.

    Fails fast with a one-line :class:`ModelError` for a missing folder, a missing or broken
    ``dataset.json``/``plans.json``, unusable channel names, or a missing
    ``fold_k/checkpoint_<final|best>.pth``. ``folds=None`` means every fold holding that
    checkpoint (``fold_all`` only when it is the sole one).
    """
    name = checkpoint_file(checkpoint)
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError("nnU-Net model folder not found", path=folder,
                         hint="give the <trainer>__<plans>__<configuration> folder")
    dataset_json = _load_json(folder / "dataset.json")
    plans = _load_json(folder / "plans.json")
    if not isinstance(dataset_json.get("labels"), dict) or not dataset_json["labels"]:
        raise ModelError("dataset.json has no labels", path=folder / "dataset.json",
                         hint="restore the file from the trained model")
    configuration = _configuration_of(folder, plans)
    channel_roles(dataset_json, plans, configuration)
    if folds is None:
        present = [p.name[len("fold_"):] for p in sorted(folder.glob("fold_*"))
                   if (p / name).is_file()]
        numeric = sorted(int(f) for f in present if f.isdigit())
        chosen: list = numeric or (["all"] if "all" in present else [])
        if not chosen:
            other = "best" if name == CHECKPOINT else "final"
            raise ModelError(f"no fold_*/{name} in the nnU-Net model folder", path=folder,
                             hint="copy the trained folds (fold_0 ... fold_4) into the folder"
                                  f" or try --checkpoint {other}")
        return chosen
    chosen = [f if str(f) == "all" else int(f) for f in folds]
    for fold in chosen:
        checkpoint_path = folder / f"fold_{fold}" / name
        if not checkpoint_path.is_file():
            raise ModelError(f"fold {fold} has no {name}", path=checkpoint_path.parent,
                             hint="copy that fold or choose folds that are present")
    return chosen


def nnunet_installed() -> bool:
    """True when torch and nnunetv2 (the ``models`` extra) can be imported; checked without
    importing them."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "nnunetv2"))


def _torch_device(device: str):
    import torch

    dev = device.lower()
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev in ("cuda", "gpu") or dev.startswith(("cuda:", "gpu:")):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(dev.replace("gpu", "cuda"))
    if dev == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")


def body_box(ct_arr: np.ndarray, spacing: Sequence[float],
             margin_mm: float = 10.0) -> tuple[slice, slice, slice]:
    """Array-order bounding box of the body (largest component above -500 HU) plus a margin.

    ``spacing`` is (z, y, x) mm. The whole array when no body is found.
    """
    body = ct_arr > -500
    labels, n = ndimage.label(body)
    if n == 0:
        return tuple(slice(0, s) for s in ct_arr.shape)  # type: ignore[return-value]
    sizes = ndimage.sum_labels(body, labels, index=np.arange(1, n + 1))
    found = ndimage.find_objects((labels == 1 + int(np.argmax(sizes))).astype(np.uint8))[0]
    box = []
    for sl, sp, size in zip(found, spacing, ct_arr.shape, strict=True):
        pad = int(np.ceil(margin_mm / sp))
        box.append(slice(max(0, sl.start - pad), min(size, sl.stop + pad)))
    return tuple(box)  # type: ignore[return-value]


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def _model_flip(plans: dict) -> tuple[slice, slice, slice]:
    # NibabelIOWithReorient trains on RAS arrays: flip our LPS x and y. Other readers keep the
    # file's voxel order, which nstage cannot know; nnU-Net's mirroring augmentation covers flips.
    if str(plans.get("image_reader_writer", "")).startswith("NibabelIOWithReorient"):
        return (slice(None), slice(None, None, -1), slice(None, None, -1))
    return (slice(None), slice(None), slice(None))


@dataclass
class LoadedModel:
    """An initialised ``nnUNetPredictor`` and what was loaded into it."""

    predictor: object
    trainer: str
    trainer_class: str  # "nnunetv2" or "built from plans.json (trainer class not in nnunetv2)"
    configuration: str
    architecture: str


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"


def _load_checkpoints(folder: Path, folds: Sequence, name: str) -> list[dict]:
    import torch

    checkpoints = []
    for fold in folds:
        path = folder / f"fold_{fold}" / name
        try:
            # nnU-Net's checkpoints hold more than tensors (plans, numpy values).
            checkpoint = torch.load(path, map_location=torch.device("cpu"), weights_only=False)
        except Exception as exc:  # pickle/zip/torch errors all mean an unusable file
            raise ModelError(f"cannot load the nnU-Net model ({_first_line(exc)})", path=path,
                             hint="copy the checkpoint again from the trained model") from exc
        if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
            raise ModelError("not an nnU-Net v2 checkpoint (no network_weights)", path=path,
                             hint="copy the checkpoint again from the trained model")
        checkpoints.append(checkpoint)
    return checkpoints


def trainer_class_for(trainer_name: str):
    """nnunetv2's trainer class of that name, or None when nnunetv2 does not ship it.

    Published models (autoPET's ``nnUNetTrainer_<Variant>``) often name a class that exists
    only in their authors' code; it changes training, not the network, so the caller builds
    the network with nnU-Net's default from the plans instead.
    """
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        with contextlib.redirect_stdout(sys.stderr):
            return recursive_find_trainer_class_by_name(trainer_name)
    except Exception:  # not found, or a broken optional import inside nnunetv2's trainers
        return None


def build_network(plans: dict, dataset_json: dict, configuration: str, trainer_name: str):
    """The inference network of a model folder: ``(network, plans_manager,
    configuration_manager, trainer_class_note)``; deep supervision off."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    n_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer_class = trainer_class_for(trainer_name)
    note = "nnunetv2"
    if trainer_class is None:
        trainer_class = nnUNetTrainer
        note = "built from plans.json (trainer class not in nnunetv2)"
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, n_in, n_out, enable_deep_supervision=False)
    return network, plans_manager, configuration_manager, note


def load_predictor(folder: Path, folds: Sequence, device, mirroring: bool,
                   checkpoint: str = "final") -> LoadedModel:
    """An initialised ``nnUNetPredictor`` for ``folder`` (errors become :class:`ModelError`).

    Like nnU-Net's ``initialize_from_trained_model_folder``, but a trainer class nnunetv2 does
    not ship does not stop the model: see :func:`trainer_class_for`.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    name = checkpoint_file(checkpoint)
    dataset_json = _load_json(folder / "dataset.json")
    plans = _load_json(folder / "plans.json")
    checkpoints = _load_checkpoints(folder, folds, name)
    first = checkpoints[0]
    trainer = str(first.get("trainer_name") or folder.name.split("__")[0])
    init_args = first.get("init_args") if isinstance(first.get("init_args"), dict) else {}
    configuration = str(init_args.get("configuration") or _configuration_of(folder, plans))
    try:
        network, plans_manager, configuration_manager, note = build_network(
            plans, dataset_json, configuration, trainer)
    except Exception as exc:
        raise ModelError(f"cannot build the network of plans.json configuration "
                         f"{configuration!r} ({_first_line(exc)})", path=folder,
                         hint="check that plans.json belongs to these checkpoints") from exc
    parameters = [c["network_weights"] for c in checkpoints]
    for fold, params in zip(folds, parameters, strict=True):
        try:
            network.load_state_dict(params)
        except Exception as exc:
            why = ("the trainer class is not in nnunetv2 and its network differs from the "
                   "plans' default" if note != "nnunetv2" else "plans.json does not match")
            raise ModelError(f"fold {fold} {name} does not fit the network of plans.json "
                             f"({why}: {_first_line(exc)})", path=folder / f"fold_{fold}",
                             hint="install the package holding the trainer class, or check "
                                  "the model folder is complete") from exc
    network.load_state_dict(parameters[0])
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints notices
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
                                    use_mirroring=mirroring,
                                    perform_everything_on_device=device.type == "cuda",
                                    device=device, verbose=False, verbose_preprocessing=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(
            network, plans_manager, configuration_manager, parameters, dataset_json, trainer,
            first.get("inference_allowed_mirroring_axes"))
    return LoadedModel(predictor=predictor, trainer=trainer, trainer_class=note,
                       configuration=configuration,
                       architecture=configuration_manager.network_arch_class_name)


def segment_nnunet(ct: sitk.Image, pet_suv: sitk.Image, model_dir: Path | str | None = None, *,
                   folds: Sequence[int | str] | None = None, device: str = "auto",
                   mirroring: bool | None = None, checkpoint: str = "final") -> LesionMask:
    """FDG-avid lesion mask from an nnU-Net v2 model, on ``ct``'s grid.

    Parameters
    ----------
    ct : SimpleITK.Image
        Working CT in HU (canonical orientation, usually the thorax crop).
    pet_suv : SimpleITK.Image
        PET in SUVbw; resampled onto ``ct``'s grid when it is not already on it.
    model_dir : Path, optional
        See :func:`find_lesion_model`; default ``/opt/ml/model/lesions``.
    folds : sequence, optional
        Folds to ensemble; default every fold present.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    mirroring : bool, optional
        Test-time mirroring (8 passes); default on for CUDA, off on the CPU.
    checkpoint : {"final", "best"}
        ``checkpoint_final.pth`` (default) or ``checkpoint_best.pth`` of each fold.

    Returns
    -------
    LesionMask
        ``mask`` (bool, ``[z, y, x]`` on ``ct``'s grid) = every predicted label > 0,
        ``backend="nnunet"``, notes naming the model, labels, channels and folds, and
        ``model``: folder, trainer, plans, configuration, folds and checkpoint used.
    """
    folder = find_lesion_model(model_dir)
    if folder is None:
        raise ModelError("no nnU-Net lesion model installed", path=DEFAULT_MODEL_DIR,
                         hint="give --lesion-model DIR or use --lesions suv")
    chosen_folds = check_model_folder(folder, folds, checkpoint)
    dataset_json = _load_json(folder / "dataset.json")
    plans = _load_json(folder / "plans.json")
    configuration = _configuration_of(folder, plans)
    roles = channel_roles(dataset_json, plans, configuration)
    if ct.GetDimension() != 3 or pet_suv.GetDimension() != 3:
        raise InputError("CT and PET must be 3D images", hint="pass 3D volumes")
    if not nnunet_installed():
        raise ModelError("nnunetv2 or torch is not installed", path=folder,
                         hint=models_extra_hint(LESIONS_FALLBACK))
    if not _same_grid(ct, pet_suv):
        pet_suv = resample_to(pet_suv, ct, default=0.0, pixel_type=sitk.sitkFloat32)

    try:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"cannot import nnunetv2 ({exc})", path=folder,
                         hint=models_extra_hint(LESIONS_FALLBACK)) from exc

    t0 = time.perf_counter()
    dev = _torch_device(device)
    use_mirroring = (dev.type == "cuda") if mirroring is None else bool(mirroring)
    ct_arr = sitk.GetArrayViewFromImage(ct)
    box = body_box(ct_arr, spacing_zyx(ct))
    arrays = {"CT": ct_arr, "PET": sitk.GetArrayViewFromImage(pet_suv)}
    flip = _model_flip(plans)
    data = np.stack([np.asarray(arrays[r][box], dtype=np.float32)[flip] for r in roles])
    loaded = load_predictor(folder, chosen_folds, dev, use_mirroring, checkpoint)
    predictor = loaded.predictor
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            seg = predictor.predict_single_npy_array(
                np.ascontiguousarray(data), {"spacing": [float(s) for s in spacing_zyx(ct)]},
                None, None, False)
    finally:
        torch.set_num_threads(threads)
    seg = np.asarray(seg)[flip]
    if seg.shape != data.shape[1:]:
        raise ModelError(f"the model returned shape {seg.shape} for input {data.shape[1:]}",
                         path=folder, hint="report this as a bug in nstage")
    mask = np.zeros(ct_arr.shape, dtype=bool)
    mask[box] = seg > 0
    labels = {str(k): v for k, v in dataset_json["labels"].items() if k != "background"}
    model = _model_record(folder, plans, loaded, chosen_folds, checkpoint_file(checkpoint))
    notes = [
        f"nnU-Net model {folder.parent.name}/{folder.name}, folds {chosen_folds}, "
        f"{model['checkpoint']}, channels {roles}, lesion labels {labels}, device {dev.type}, "
        f"mirroring {use_mirroring}, {time.perf_counter() - t0:.1f} s",
    ]
    if loaded.trainer_class != "nnunetv2":
        notes.append(f"nnU-Net trainer class {loaded.trainer} is not part of nnunetv2: the "
                     f"network ({model['architecture']}) was built from plans.json, which is "
                     "all inference needs (the trainer class only changes training)")
    return LesionMask(mask=mask, backend=BACKEND, notes=notes, model=model)


def _model_record(folder: Path, plans: dict, loaded: LoadedModel, folds: list,
                  checkpoint: str) -> dict:
    """What ran, for n-stage.json's ``lesion_model``."""
    parts = folder.name.split("__")
    return {
        "folder": str(folder),
        "dataset": folder.parent.name,
        "trainer": loaded.trainer,
        "trainer_class": loaded.trainer_class,
        "plans": str(plans.get("plans_name") or (parts[1] if len(parts) == 3 else "")),
        "configuration": loaded.configuration,
        "architecture": loaded.architecture.rsplit(".", 1)[-1],
        "folds": [f if f == "all" else int(f) for f in folds],
        "checkpoint": checkpoint,
    }
