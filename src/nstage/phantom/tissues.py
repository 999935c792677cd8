"""Tissue classes of the phantom: CT number, FDG uptake and anatomy label of each.

The phantom paints one integer code per voxel. A code stands for a tissue inside an organ
(e.g. the cortex and the marrow of vertebra T5 are two codes with the same anatomy label
``vertebrae_T5``), so CT numbers (HU), PET activity (SUV) and the exported TotalSegmentator
label all come from one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tissue:
    """One painted tissue class.

    Attributes
    ----------
    key : str
        Unique name, e.g. ``"vertebrae_T5/marrow"``.
    label : str or None
        Anatomy label (TotalSegmentator class or derived name) or None when the tissue has no
        label of its own (fat, muscle, lesions).
    hu : float
        Mean CT number (HU) before noise.
    suv : float
        FDG activity (SUV) before partial-volume blur and noise.
    hull : bool
        True for mediastinal structures: the lungs are carved around their per-slice convex
        hull (the mediastinal pleura).
    """

    key: str
    label: str | None
    hu: float
    suv: float
    hull: bool = False


@dataclass
class TissueTable:
    """Registry of tissue codes (code 0 is air outside the patient)."""

    tissues: list[Tissue] = field(default_factory=lambda: [Tissue("air", None, -1000.0, 0.0)])
    _codes: dict[str, int] = field(default_factory=lambda: {"air": 0})

    def add(self, key: str, label: str | None, hu: float, suv: float, hull: bool = False) -> int:
        if key in self._codes:
            raise ValueError(f"tissue {key!r} registered twice")
        if len(self.tissues) >= 255:
            raise ValueError("too many tissue classes for a uint8 label map")
        self.tissues.append(Tissue(key, label, float(hu), float(suv), hull))
        self._codes[key] = len(self.tissues) - 1
        return self._codes[key]

    def set_suv(self, key: str, suv: float) -> None:
        """Change the activity of a registered tissue (used to calibrate lesions)."""
        from dataclasses import replace

        c = self._codes[key]
        self.tissues[c] = replace(self.tissues[c], suv=float(suv))

    def code(self, key: str) -> int:
        return self._codes[key]

    def __contains__(self, key: str) -> bool:
        return key in self._codes

    def codes_where(self, predicate) -> list[int]:
        return [c for c, t in enumerate(self.tissues) if predicate(t)]

    def lut(self, attr: str):
        import numpy as np

        out = np.zeros(256, dtype=np.float32)
        for c, t in enumerate(self.tissues):
            out[c] = getattr(t, attr)
        return out


def codes_mask(labels, codes):
    """Boolean mask of the voxels whose code is in ``codes`` (a gather through a 256-entry
    table, much faster than ``numpy.isin`` on whole-body volumes)."""
    import numpy as np

    lut = np.zeros(256, bool)
    lut[np.asarray(list(codes), dtype=np.int64)] = True
    return lut[labels]
