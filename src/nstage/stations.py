"""IASLC station and side of each node from landmarks (pure geometry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class StationAssignment:
    """Where a node lies on the IASLC map.

    Attributes
    ----------
    station : str or None
        IASLC code (``"1R"``, ``"3a"``, ``"4L"``, ``"7"``, ``"10R"``, ...), or None when the
        node lies outside the regional stations (then it is an "other lesion").
    side : {"left", "right", "midline"}
        Side of the patient.
    confidence : float
        0-1; lower near a boundary or when a landmark was approximated.
    reason : str
        One line naming the landmarks used and whether any was approximated.
    landmarks_used : tuple of str
    approximated : bool
    """

    station: str | None
    side: Literal["left", "right", "midline"]
    confidence: float
    reason: str
    landmarks_used: tuple[str, ...] = field(default_factory=tuple)
    approximated: bool = False
