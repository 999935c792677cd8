"""Landmarks for IASLC station assignment, from any :class:`~nstage.anatomy.Anatomy`.

All positions are mm in LPS (+x patient left, +y posterior, +z superior).
Every landmark records how it was found (``method``: ``"measured"`` from a
segmentation, or ``"approximated"`` from another landmark and a typical
distance) so station reasons can say when a boundary is uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nstage.geometry import Point

Method = Literal["measured", "approximated"]

# Landmark names (keys of Landmarks.points). Levels are axial z (mm).
CARINA = "carina"  # point: where the airway divides into the two main bronchi
TRACHEA_TOP = "trachea_top"  # level: most cranial trachea slice in view (cricoid proxy)
AORTIC_ARCH_TOP = "aortic_arch_top"  # level: superior border of the aortic arch
AORTIC_ARCH_BOTTOM = "aortic_arch_bottom"  # level: inferior border of the arch
LEFT_PA_TOP = "left_pulmonary_artery_top"  # level: upper rim of the left main pulmonary artery
BRACHIOCEPHALIC_CROSSING = "brachiocephalic_crossing"  # level: caudal margin of the left brachiocephalic vein crossing the trachea (2R/4R)
AZYGOS_BOTTOM = "azygos_arch_bottom"  # level: lower border of the azygos arch (4R/10R)
MANUBRIUM_TOP = "manubrium_top"  # level: upper border of the manubrium (station 1 lower limit)
CLAVICLE_TOP = "clavicle_top"  # level: highest point of the clavicles
LUNG_APEX_LEFT = "lung_apex_left"
LUNG_APEX_RIGHT = "lung_apex_right"
DIAPHRAGM_LEFT = "diaphragm_left"  # level: dome of the diaphragm (lowest lung base proxy)
DIAPHRAGM_RIGHT = "diaphragm_right"
STATION7_BOTTOM = "station7_bottom"  # level: lower border of bronchus intermedius / upper border of left lower-lobe bronchus
INFERIOR_PULMONARY_VEIN = "inferior_pulmonary_vein"  # level: station 9 upper limit
HILUM_LEFT = "hilum_left"  # point: where the left main bronchus enters the lung
HILUM_RIGHT = "hilum_right"


@dataclass(frozen=True)
class Landmark:
    """One landmark.

    Attributes
    ----------
    name : str
    point_mm : (x, y, z) or None
        Position in mm LPS where a point is meaningful.
    z_mm : float
        Axial level in mm (superior positive); for points, ``point_mm[2]``.
    method : {"measured", "approximated"}
    source : str
        How it was found, in words a reason can quote.
    """

    name: str
    z_mm: float
    method: Method
    source: str
    point_mm: Point | None = None

    @property
    def approximated(self) -> bool:
        return self.method == "approximated"


@dataclass(frozen=True)
class TracheaLevel:
    """Cross-section of the trachea at one axial level (mm LPS).

    ``left_border_x_mm`` is the x of the trachea's LEFT lateral wall (the larger x,
    since +x is the patient's left); it splits 2R/4R from 2L/4L.
    """

    z_mm: float
    centre_x_mm: float
    centre_y_mm: float
    left_border_x_mm: float
    right_border_x_mm: float
    anterior_y_mm: float
    posterior_y_mm: float


@dataclass
class Landmarks:
    """All landmarks found for one study.

    Attributes
    ----------
    points : dict of str to Landmark
        Keyed by the names defined in this module.
    trachea : list of TracheaLevel
        From the most cranial level down to the carina, ordered by z descending.
    bronchi : dict of str to list of (x, y, z)
        ``"left"``/``"right"`` main-bronchus centreline points from the carina outwards.
    lung_volume_ml : dict of str to float
        ``{"left": ..., "right": ...}``.
    notes : list of str
        What could not be found.
    """

    points: dict[str, Landmark] = field(default_factory=dict)
    trachea: list[TracheaLevel] = field(default_factory=list)
    bronchi: dict[str, list[Point]] = field(default_factory=dict)
    lung_volume_ml: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> Landmark | None:
        return self.points.get(name)

    def z(self, name: str) -> float | None:
        lm = self.points.get(name)
        return None if lm is None else lm.z_mm

    def trachea_at(self, z_mm: float) -> TracheaLevel | None:
        """Trachea cross-section nearest to level ``z_mm`` (the lowest level below the carina)."""
        if not self.trachea:
            return None
        return min(self.trachea, key=lambda t: abs(t.z_mm - z_mm))
