"""A hand-built chest frame and node records for station and placement tests.

The chest: carina at the origin, trachea centred on x=0 with an 18 mm coronal diameter (left
tracheal border x=+9), landmark levels at typical adult heights above/below the carina.
mm LPS: +x patient LEFT, +y POSTERIOR, +z SUPERIOR.
"""

from __future__ import annotations

import dataclasses

from nstage import landmarks as lm
from nstage.findings import Lesion
from nstage.landmarks import Landmark, Landmarks, TracheaLevel

LEVELS = {
    lm.TRACHEA_TOP: 110.0,
    lm.LUNG_APEX_RIGHT: 95.0,
    lm.LUNG_APEX_LEFT: 95.0,
    lm.CLAVICLE_TOP: 78.0,
    lm.MANUBRIUM_TOP: 70.0,
    lm.BRACHIOCEPHALIC_CROSSING: 45.0,
    lm.AORTIC_ARCH_TOP: 35.0,
    lm.AORTIC_ARCH_BOTTOM: 15.0,
    lm.LEFT_PA_TOP: 5.0,
    lm.AZYGOS_BOTTOM: 3.0,
    lm.STATION7_BOTTOM: -26.0,
    lm.INFERIOR_PULMONARY_VEIN: -45.0,
    lm.DIAPHRAGM_RIGHT: -100.0,
    lm.DIAPHRAGM_LEFT: -115.0,
}
POINTS = {
    lm.CARINA: (0.0, 2.0, 0.0),
    # Hilum landmarks are the distal ends of the main bronchi (as landmarks.find gives them):
    # right short and steep (~22 mm), left longer and flatter (~43 mm).
    lm.HILUM_RIGHT: (-12.0, 4.0, -18.0),
    lm.HILUM_LEFT: (34.0, 6.0, -26.0),
}
BRONCHI = {
    "right": [(0.0, 2.0, 0.0), (-6.0, 3.0, -9.0), (-12.0, 4.0, -18.0)],
    "left": [(0.0, 2.0, 0.0), (17.0, 4.0, -13.0), (34.0, 6.0, -26.0)],
}


def chest(*, drop: tuple[str, ...] = (), approximated: dict[str, str] | None = None,
          trachea_x: float = 0.0) -> Landmarks:
    """The hand-built chest; ``drop`` removes landmarks, ``approximated`` flags some (name ->
    source words)."""
    approximated = approximated or {}
    points: dict[str, Landmark] = {}
    for name, z in LEVELS.items():
        points[name] = Landmark(name, z, "measured", "test level")
    for name, p in POINTS.items():
        points[name] = Landmark(name, p[2], "measured", "test point", p)
    for name, how in approximated.items():
        points[name] = dataclasses.replace(points[name], method="approximated", source=how)
    for name in drop:
        points.pop(name, None)
    trachea = [
        TracheaLevel(z_mm=float(z), centre_x_mm=trachea_x, centre_y_mm=0.0,
                     left_border_x_mm=trachea_x + 9.0, right_border_x_mm=trachea_x - 9.0,
                     anterior_y_mm=-9.0, posterior_y_mm=9.0)
        for z in range(110, -1, -5)
    ]
    return Landmarks(points=points, trachea=trachea,
                     bronchi={k: list(v) for k, v in BRONCHI.items()},
                     lung_volume_ml={"left": 2400.0, "right": 2800.0})


def node(x: float, y: float, z: float, *, inside: dict[str, float] | None = None,
         distance: dict[str, float] | None = None) -> Lesion:
    """A node at (x, y, z) mm; ``inside``/``distance`` as findings.measure reports them."""
    return Lesion(id=1, suv_max=6.0, suv_peak=5.0, suv_mean=4.0, volume_ml=2.0, tlg=8.0,
                  short_axis_mm=12.0, long_axis_mm=15.0, centroid_mm=(x, y, z),
                  max_point_mm=(x, y, z), inside=dict(inside or {}),
                  distance_mm=dict(distance or {}))


def measured(x: float, y: float, z: float, *, lung: float | None = None, inside_lung: str = "",
             fraction: float = 0.0, **distances: float) -> Lesion:
    """A node as ``findings.measure`` would report it: inside the body, with lung contact.

    ``lung`` is the distance to the nearest lung (None: farther than the search radius);
    ``inside_lung``/``fraction`` the lung mask covering part of it.
    """
    inside = {"body": 1.0}
    dist = {"body": 0.0, **distances}
    if lung is not None:
        dist["lung"] = lung
    if inside_lung:
        inside[inside_lung] = fraction
        inside["lung"] = fraction
    return node(x, y, z, inside=inside, distance=dist)
