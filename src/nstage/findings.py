"""Connected FDG-avid lesions, their measurements, and what they are.

Positions are mm LPS; SUV values are SUVbw (g/ml); volumes in ml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nstage.geometry import Point

Kind = Literal["primary", "node", "other"]


@dataclass
class Lesion:
    """One connected lesion with its measurements.

    Attributes
    ----------
    id : int
        Component number in the lesion label map (1-based).
    suv_max, suv_peak, suv_mean : float
        SUVbw; peak = mean in the hottest 1 cm^3 sphere.
    volume_ml : float
        Metabolic tumour volume (ml).
    tlg : float
        Total lesion glycolysis = SUVmean x MTV (g).
    short_axis_mm, long_axis_mm : float
        Largest-slice axial short / long axis diameters (mm).
    centroid_mm, max_point_mm : (x, y, z)
        Centroid and position of SUVmax, mm LPS.
    inside : dict of str to float
        Structure name -> fraction of lesion voxels inside it (only non-zero).
    distance_mm : dict of str to float
        Structure name -> smallest distance from the lesion to the structure (0 when
        touching/inside); only structures within the search radius are listed.
    kind : {"primary", "node", "other"} or None
    kind_reason : str
        Why it was classified so.
    side : {"left", "right", "midline"} or None
    direct_extension : bool
        Node candidate contiguous with the primary (direct extension of the tumour).
    second_primary : bool
        A separate tumour in the other lung.
    positive : bool
        Meets the node positivity criteria.
    probability : float
        Probability of nodal involvement (0-1).
    positivity_reason : str
    """

    id: int
    suv_max: float
    suv_peak: float
    suv_mean: float
    volume_ml: float
    tlg: float
    short_axis_mm: float
    long_axis_mm: float
    centroid_mm: Point
    max_point_mm: Point
    inside: dict[str, float] = field(default_factory=dict)
    distance_mm: dict[str, float] = field(default_factory=dict)
    kind: Kind | None = None
    kind_reason: str = ""
    side: Literal["left", "right", "midline"] | None = None
    direct_extension: bool = False
    second_primary: bool = False
    positive: bool = False
    probability: float = 0.0
    positivity_reason: str = ""


@dataclass
class Findings:
    """Lesions sorted into primary tumour(s), regional node candidates and others."""

    primary: Lesion | None
    second_primary: Lesion | None
    nodes: list[Lesion]
    others: list[Lesion]
    notes: list[str] = field(default_factory=list)
