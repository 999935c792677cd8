"""The result every lesion backend returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    """

    mask: np.ndarray
    backend: str
    reference_suv: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: dict | None = None
