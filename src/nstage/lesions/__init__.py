"""Lesion backends: nnU-Net v2 and the SUV-threshold default.

``segment`` picks the backend; the nnU-Net module is imported only when it is needed, so the
core (SUV backend) runs without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from nstage.anatomy.base import Anatomy
from nstage.errors import UsageError
from nstage.lesions.base import LesionMask, SuppressedUptake

BACKENDS = ("auto", "suv", "nnunet")

__all__ = ["BACKENDS", "LesionMask", "SuppressedUptake", "segment"]


def segment(ct: sitk.Image, pet_suv: sitk.Image, anatomy: Anatomy, backend: str = "auto",
            model_dir: Path | str | None = None, folds: Sequence[int | str] | None = None,
            device: str = "auto", thresholds: dict | None = None,
            checkpoint: str = "final", pet_native: sitk.Image | None = None) -> LesionMask:
    """FDG-avid lesion mask on the working CT grid.

    Parameters
    ----------
    ct, pet_suv : SimpleITK.Image
        Working CT (HU) and PET (SUVbw) on the same canonical grid.
    anatomy : Anatomy
        Label map on that grid (used by the SUV backend).
    backend : {"auto", "suv", "nnunet"}
        ``auto``: nnU-Net when :func:`~nstage.lesions.nnunet.find_lesion_model` finds a model in
        ``model_dir`` (default ``/opt/ml/model/lesions``), else the SUV backend. A model in the
        default folder without torch/nnunetv2 installed also falls back to the SUV backend; an
        explicitly given ``model_dir`` never falls back (the user asked for that model).
    model_dir : Path, optional
        nnU-Net v2 trained-model folder.
    folds : sequence, optional
        nnU-Net folds (default: all present).
    device : {"auto", "cpu", "cuda"}
    thresholds : dict, optional
        Overrides of ``resources/thresholds.json`` for the SUV backend.
    checkpoint : {"final", "best"}
        nnU-Net checkpoint of each fold.
    pet_native : SimpleITK.Image, optional
        The PET (SUVbw) on its own grid: the SUV backend reads seeds' SUVmax on it too.

    Raises
    ------
    UsageError
        Unknown backend name.
    ModelError
        ``nnunet`` asked for (or a model folder given) but missing or broken.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown lesion backend {backend!r}",
                         hint=f"use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        from nstage.lesions.nnunet import find_lesion_model, nnunet_installed

        found = find_lesion_model(model_dir) is not None
        backend = "nnunet" if found and (model_dir is not None or nnunet_installed()) else "suv"
    if backend == "nnunet":
        from nstage.lesions.nnunet import segment_nnunet

        return segment_nnunet(ct, pet_suv, model_dir, folds=folds, device=device,
                              checkpoint=checkpoint)
    from nstage.lesions.suv import segment_suv

    return segment_suv(ct, pet_suv, anatomy, thresholds, pet_native=pet_native)
