"""The result every lesion backend returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SuppressedUptake:
    """FDG uptake a backend saw and did not report as a lesion, with the reason.

    Attributes
    ----------
    centroid_mm : tuple of float
        Centre of the uptake (x, y, z) in mm, ITK LPS (+x patient left, +y posterior,
        +z superior), world coordinates of the CT.
    suv_max : float
        Hottest voxel of the uptake (SUVbw).
    volume_ml : float
        Volume of the uptake (ml); for a rejected seed, the region it would have grown to
        (0 when it was rejected before growing).
    structure : str
        The anatomy mask or pattern that excluded it, e.g. ``"heart"``, ``"myocardium
        (shape)"``, ``"brown fat"``, ``"oesophagus"``, ``"thymus"``, ``"bone marrow"``,
        ``"liver"``, ``"noise"``.
    reason : str
        One line a reader can check, with the numbers that decided.
    kind : str
        ``"physiological"`` (normal uptake of an organ or tissue) or ``"rejected"`` (a
        candidate that is not a lesion: noise, too small, spill-out, diffuse background).
    """

    centroid_mm: tuple[float, float, float]
    suv_max: float
    volume_ml: float
    structure: str
    reason: str
    kind: str = "physiological"

    def to_dict(self) -> dict:
        """JSON form (``n-stage.json`` key ``suppressed_uptake``)."""
        return {"centroid_mm": [round(float(v), 1) for v in self.centroid_mm],
                "suv_max": round(float(self.suv_max), 2),
                "volume_ml": round(float(self.volume_ml), 2),
                "structure": self.structure, "reason": self.reason, "kind": self.kind}


@dataclass
class LesionMask:
    """FDG-avid lesion voxels on the working CT grid.

    Attributes
    ----------
    mask : numpy.ndarray of bool
        Array order ``[z, y, x]``, same grid as the working CT / anatomy.
    backend : str
        ``"suv"`` or ``"nnunet"``.
    reference_suv : dict of str to float
        Reference values used, e.g. ``{"blood_pool": 1.8, "liver": 2.3, "threshold": 2.9}``
        (SUVbw); empty where the backend used none.
    notes : list of str
    model : dict or None
        The lesion model that ran (nnU-Net: folder, trainer, plans, configuration, folds,
        checkpoint), written to n-stage.json as ``lesion_model``; None for the SUV backend.
    suppressed : list of SuppressedUptake
        Uptake the backend saw and left out of ``mask`` (physiological uptake, rejected
        candidates), each with the structure and the reason; empty for backends that do not
        report it.
    """

    mask: np.ndarray
    backend: str
    reference_suv: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: dict | None = None
    suppressed: list[SuppressedUptake] = field(default_factory=list)
