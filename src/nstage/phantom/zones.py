"""IASLC station zones of the phantom, from its own landmarks (``CLINICAL.md`` section 2).

A zone is a predicate on a point (mm, LPS: +x patient left, +y posterior, +z superior) given
the phantom's landmark geometry. The phantom places each node inside its zone with a safety
margin (so the station is unambiguous), and tests check every node of ``truth.json`` against
these predicates with :meth:`ZoneGeometry.from_truth`.

Practical rules encoded (one per station):

- 1R/1L: below the cricoid, above the manubrium top; side by the tracheal centre.
- 2R: above the caudal margin of the left brachiocephalic vein where it crosses the trachea,
  below the manubrium top; right of the LEFT tracheal border, beside the trachea.
- 2L: above the aortic arch top, below the manubrium top; left of the left tracheal border.
- 3a: prevascular: well anterior to the trachea (in front of the great vessels), carina to the
  manubrium top, near the midline.
- 3p: posterior to the trachea, carina up to the manubrium top (above it is station 1).
- 4R: brachiocephalic crossing down to the carina; right of the left tracheal border.
- 4L: aortic arch top down to the top of the left pulmonary artery; between the left tracheal
  border and the ligamentum arteriosum.
- 5: between the arch's lower border and the left pulmonary artery top, lateral to the
  ligamentum arteriosum.
- 6: anterior-left of the ascending aorta and arch, between the arch's upper and lower borders.
- 7: carina down to the station-7 lower border (upper border of the left lower-lobe
  bronchus), between the central bronchi (main bronchus, then bronchus intermedius / left
  lower-lobe bronchus: never a lateral lobar branch), at most 22 mm from the carina's x.
- 8R/8L: below station 7 down to the diaphragm, within 24 mm of the oesophagus centre; side by
  the midline (IASLC), at least 8 mm right / left of the carina's x.
- 9R/9L: below the inferior pulmonary vein down to the diaphragm, medial, beyond 28 mm from the
  oesophagus.
- 10R/10L: at the hilum: within 24 mm of the central bronchus, at least 8 mm lateral of it and
  20 mm of the tracheal centre, more than 38 mm from the oesophagus centre; from 20 mm below
  the station-7 border up to the carina (R: below the carina and the azygos arch, as
  ``CLINICAL.md`` takes the carina for the 4R/10R border when no azygos is segmented) / the left
  pulmonary artery top (L). The phantom keeps them against the bronchus or mediastinal soft
  tissue (not wrapped by lung, see :mod:`nstage.phantom.build`).
- 11-14: intrapulmonary, beyond the hilum (more than 14 mm past the main bronchus's end along
  the carina-hilum axis, or 29 mm from the central bronchus), by distance from the hilum point
  in disjoint bands (11 nearest, 14 farthest); side by x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Disjoint distance bands (mm from the hilum point) of 11-14, with a gap around 40, 55 and
# 75 mm (a common interlobar / lobar / segmental split), so the sub-station is unambiguous.
INTRAPULMONARY_DISTANCE_MM: dict[int, tuple[float, float]] = {
    11: (18.0, 37.0), 12: (43.0, 52.0), 13: (58.0, 72.0), 14: (78.0, 200.0),
}
STATION8_MIDLINE_MM = 8.0  # 8R / 8L centre at least this far right / left of the midline


@dataclass
class ZoneGeometry:
    """Landmarks that define the station zones (mm, one frame for all of them).

    Attributes
    ----------
    levels : dict of str to float
        Axial levels z (mm): ``cricoid``, ``manubrium_top``, ``brachiocephalic_crossing``,
        ``aortic_arch_top``, ``aortic_arch_bottom``, ``left_pulmonary_artery_top``,
        ``azygos_arch_bottom``, ``carina``, ``station7_bottom``, ``inferior_pulmonary_vein``,
        ``diaphragm_medial``.
    ligamentum_x : float
        x (mm) of the ligamentum arteriosum (4L medial / 5 lateral).
    trachea : (n, 4) array
        Centreline points ``x, y, z, outer_radius`` from the cricoid down to the carina.
    bronchi : dict of str to (n, 3) array
        ``"left"``/``"right"``: main bronchus centreline from the carina outwards, continued
        into the proximal lobar bronchi (the hilum).
    esophagus : (n, 3) array
        Oesophagus centreline.
    hilum : dict of str to (x, y, z)
        Where each main bronchus enters the lung.
    central_bronchi : dict of str to (n, 3) array, optional
        ``"left"``/``"right"``: the central airway below the carina only (main bronchus, then
        the left lower-lobe bronchus / bronchus intermedius), monotonic in z; the lateral
        lobar branches of ``bronchi`` are left out. Defaults to ``bronchi`` (older truth).
    """

    levels: dict[str, float]
    ligamentum_x: float
    trachea: np.ndarray
    bronchi: dict[str, np.ndarray]
    esophagus: np.ndarray
    hilum: dict[str, tuple[float, float, float]]
    extras: dict = field(default_factory=dict)
    central_bronchi: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.central_bronchi is None:
            self.central_bronchi = {k: np.asarray(v, float) for k, v in self.bronchi.items()}
        # sorted copies for fast interpolation by level
        self._tr = _by_z(self.trachea)
        self._oe = _by_z(self.esophagus)
        self._cb = {k: _by_z(b) for k, b in self.central_bronchi.items()}

    # -- construction -------------------------------------------------------------------
    def shifted(self, offset: Sequence[float]) -> ZoneGeometry:
        """The same geometry translated by ``offset`` (x, y, z) mm."""
        o = np.asarray(offset, float)
        zs = {"cricoid", "manubrium_top", "brachiocephalic_crossing", "aortic_arch_top",
              "aortic_arch_bottom", "left_pulmonary_artery_top", "azygos_arch_bottom",
              "carina", "station7_bottom", "inferior_pulmonary_vein", "diaphragm_medial"}
        levels = {k: (v + o[2] if k in zs else v) for k, v in self.levels.items()}
        tr = self.trachea.copy()
        tr[:, :3] += o
        return ZoneGeometry(
            levels=levels,
            ligamentum_x=self.ligamentum_x + o[0],
            trachea=tr,
            bronchi={k: v + o for k, v in self.bronchi.items()},
            esophagus=self.esophagus + o,
            hilum={k: tuple(float(a) for a in np.asarray(v) + o) for k, v in self.hilum.items()},
            extras=dict(self.extras),
            central_bronchi={k: np.asarray(v, float) + o
                             for k, v in self.central_bronchi.items()},
        )

    def to_dict(self) -> dict:
        """JSON-ready form (the ``zones`` entry of truth.json)."""
        return {
            "levels_z_mm": {k: round(float(v), 2) for k, v in self.levels.items()},
            "ligamentum_x_mm": round(float(self.ligamentum_x), 2),
            "trachea_xyzr_mm": np.round(self.trachea, 2).tolist(),
            "bronchi_mm": {k: np.round(v, 2).tolist() for k, v in self.bronchi.items()},
            "esophagus_mm": np.round(self.esophagus, 2).tolist(),
            "hilum_mm": {k: [round(float(a), 2) for a in v] for k, v in self.hilum.items()},
            "central_bronchi_mm": {k: np.round(np.asarray(v, float), 2).tolist()
                                   for k, v in self.central_bronchi.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ZoneGeometry:
        return cls(
            levels={k: float(v) for k, v in d["levels_z_mm"].items()},
            ligamentum_x=float(d["ligamentum_x_mm"]),
            trachea=np.asarray(d["trachea_xyzr_mm"], float),
            bronchi={k: np.asarray(v, float) for k, v in d["bronchi_mm"].items()},
            esophagus=np.asarray(d["esophagus_mm"], float),
            hilum={k: tuple(v) for k, v in d["hilum_mm"].items()},
            central_bronchi=({k: np.asarray(v, float) for k, v in d["central_bronchi_mm"].items()}
                             if d.get("central_bronchi_mm") else None),
        )

    @classmethod
    def from_truth(cls, truth: dict) -> ZoneGeometry:
        """Zone geometry of a phantom from its truth.json (world mm, LPS)."""
        return cls.from_dict(truth["zones"])

    # -- helpers (vectorised over z) ---------------------------------------------------
    def trachea_at(self, z):
        """Trachea centre x, y and outer radius (mm) at level(s) z (clamped to its extent)."""
        t = self._tr
        return np.interp(z, t[:, 2], t[:, 0]), np.interp(z, t[:, 2], t[:, 1]), \
            np.interp(z, t[:, 2], t[:, 3])

    def esophagus_at(self, z):
        e = self._oe
        return np.interp(z, e[:, 2], e[:, 0]), np.interp(z, e[:, 2], e[:, 1])

    def bronchus_x_at(self, side: str, z):
        """x (mm) of the central bronchus centreline (main bronchus, then bronchus intermedius
        / left lower-lobe bronchus) at level(s) z, clamped to its extent.

        Only the central airway is used: interpolating through a lateral lobar branch as well
        would put the right bronchus ~25 mm lateral just below the carina.
        """
        b = self._cb[side]
        return np.interp(z, b[:, 2], b[:, 0])

    def carina_point(self) -> np.ndarray:
        """(x, y, z) mm of the carina (tracheal centre at the carina level)."""
        z = self.levels["carina"]
        x, y, _ = self.trachea_at(z)
        return np.array([float(x), float(y), float(z)])

    def hilar_geometry(self, side: str, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For points (n, 3) mm: how far beyond the hilum point they lie along the
        carina-to-hilum axis (negative: before it), and their distance to the central
        bronchus polyline (sampled points, mm)."""
        c = self.carina_point()
        h = np.asarray(self.hilum[side], float)
        axis = (h - c) / max(float(np.linalg.norm(h - c)), 1e-6)
        along = (pts - h) @ axis
        line = _densify(self._cb[side])
        d = np.min(np.linalg.norm(pts[:, None, :] - line[None], axis=2), axis=1)
        return along, d


def _by_z(points) -> np.ndarray:
    """(n, 3) points as floats, sorted by z (for ``np.interp`` by level)."""
    p = np.asarray(points, float)
    return p[np.argsort(p[:, 2])]


def _densify(line: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Polyline points resampled every ``step`` mm (distances to the line, not its nodes)."""
    out = [line[:1]]
    for a, b in zip(line[:-1], line[1:], strict=True):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out)


def _side_ok(code: str, x, xref, m: float):
    if code.endswith("R"):
        return x < xref - m
    if code.endswith("L"):
        return x > xref + m
    return np.ones(np.shape(x), bool)


def in_zone(station: str, point, g: ZoneGeometry, margin: float = 0.0):
    """True when ``point`` (x, y, z mm) lies in ``station``'s zone by at least ``margin`` mm.

    ``station`` is a canonical IASLC code (``"4R"``, ``"3a"``, ``"10L"`` ...). ``point`` may
    also be an ``(n, 3)`` array; then a boolean array is returned.
    """
    p = np.asarray(point, float)
    scalar = p.ndim == 1
    p = np.atleast_2d(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    out = _zone(station, x, y, z, g, float(margin))
    return bool(out[0]) if scalar else out


def _zone(station, x, y, z, g, m):
    lv = g.levels
    xc, yc, rt = g.trachea_at(z)
    x_lb = xc + rt  # LEFT lateral border of the trachea (the 2R/4R vs 2L/4L split)
    band = ((yc - rt - 18.0 + m) <= y) & (y <= (yc + rt - m))

    def between(v, lo, hi):
        return (v > lo + m) & (v < hi - m)

    num = int(station.rstrip("RLap"))
    if num == 1:
        return (between(z, lv["manubrium_top"], lv["cricoid"]) & (np.abs(x - xc) < 75.0 - m)
                & between(y, yc - 40.0, yc + 45.0) & _side_ok(station, x, xc, m))
    if station == "2R":
        return (between(z, lv["brachiocephalic_crossing"], lv["manubrium_top"])
                & between(x, xc - 45.0, x_lb) & band)
    if station == "2L":
        return (between(z, lv["aortic_arch_top"], lv["manubrium_top"])
                & between(x, x_lb, xc + 45.0) & band)
    if station == "3a":
        return (between(z, lv["carina"], lv["manubrium_top"]) & (y < yc - rt - 22.0 - m)
                & between(x, xc - 25.0, xc + 12.0))
    if station == "3p":
        return (between(z, lv["carina"], lv["manubrium_top"])
                & between(y, yc + rt, yc + rt + 40.0)
                & (np.abs(x - xc) < 25.0 - m))
    if station == "4R":
        return (between(z, lv["carina"], lv["brachiocephalic_crossing"])
                & between(x, xc - 45.0, x_lb) & band)
    if station == "4L":
        return (between(z, lv["left_pulmonary_artery_top"], lv["aortic_arch_top"])
                & between(x, x_lb, g.ligamentum_x) & band)
    if station == "5":
        return (between(z, lv["left_pulmonary_artery_top"], lv["aortic_arch_bottom"])
                & between(x, g.ligamentum_x, xc + 70.0) & between(y, yc - 40.0, yc + 20.0))
    if station == "6":
        return (between(z, lv["aortic_arch_bottom"], lv["aortic_arch_top"])
                & between(x, xc + 18.0, xc + 75.0) & (y < yc - 15.0 - m))
    if station == "7":
        x0, cy, _ = g.trachea_at(lv["carina"])
        xr = np.maximum(g.bronchus_x_at("right", z), x0 - 22.0)
        xl = np.minimum(g.bronchus_x_at("left", z), x0 + 22.0)
        return (between(z, lv["station7_bottom"], lv["carina"]) & between(x, xr, xl)
                & between(y, cy - 15.0, cy + 25.0))
    if num == 8:
        xe, ye = g.esophagus_at(z)
        x0 = g.trachea_at(lv["carina"])[0]
        return (between(z, lv["diaphragm_medial"], lv["station7_bottom"])
                & (np.hypot(x - xe, y - ye) < 24.0 - m)
                & _side_ok(station, x, x0, m + STATION8_MIDLINE_MM))
    if num == 9:
        xe, ye = g.esophagus_at(z)
        d = np.hypot(x - xe, y - ye)
        return (between(z, lv["diaphragm_medial"], lv["inferior_pulmonary_vein"])
                & between(d, 28.0, 75.0) & (y > yc - 10.0 + m) & _side_ok(station, x, xc, m))
    pts = np.stack([x, y, z], 1)
    if num == 10:
        side = "right" if station.endswith("R") else "left"
        if side == "right":
            # CLINICAL.md: 4R reaches down to about the carina (no azygos segmented)
            top = min(lv["azygos_arch_bottom"], lv["carina"]) - 2.0
        else:
            top = lv["left_pulmonary_artery_top"]
        _, d = g.hilar_geometry(side, pts)
        xb = g.bronchus_x_at(side, z)
        lateral = (xb - x) if side == "right" else (x - xb)
        xe, ye = g.esophagus_at(z)
        return ((d < 24.0 - m) & (lateral > 8.0 + m)
                & between(z, lv["station7_bottom"] - 20.0, top)
                & (np.hypot(x - xe, y - ye) > 38.0 + m)
                & (np.abs(x - xc) > 20.0 + m) & _side_ok(station, x, xc, m))
    if num in INTRAPULMONARY_DISTANCE_MM:
        side = "right" if station.endswith("R") else "left"
        lo, hi = INTRAPULMONARY_DISTANCE_MM[num]
        d = np.linalg.norm(pts - np.asarray(g.hilum[side], float), axis=1)
        along, d_bronchus = g.hilar_geometry(side, pts)
        beyond = (along > 14.0 + m) | (d_bronchus > 29.0 + m)
        return (between(d, lo, hi) & beyond & (np.abs(x - xc) > 30.0 + m)
                & _side_ok(station, x, xc, m))
    raise ValueError(f"no zone defined for station {station!r}")


def is_mediastinal(station: str) -> bool:
    """True for stations 1-9 (outside the lung); 10 is hilar, 11-14 intrapulmonary."""
    return int(station.rstrip("RLap")) <= 9


def is_intrapulmonary(station: str) -> bool:
    return int(station.rstrip("RLap")) >= 11


def sampling_box(station: str, g: ZoneGeometry) -> tuple[np.ndarray, np.ndarray]:
    """A box (min xyz, max xyz mm) that contains the station's zone, for rejection sampling."""
    lv = g.levels
    num = int(station.rstrip("RLap"))
    xc, yc, _ = g.trachea_at(lv["carina"])
    if num == 1:
        zlo, zhi = lv["manubrium_top"], lv["cricoid"]
    elif station in ("2R", "2L"):
        zlo, zhi = min(lv["brachiocephalic_crossing"], lv["aortic_arch_top"]), lv["manubrium_top"]
    elif station in ("3a", "3p"):
        zlo, zhi = lv["carina"], lv["manubrium_top"]
    elif station == "4R":
        zlo, zhi = lv["carina"], lv["brachiocephalic_crossing"]
    elif station in ("4L", "5", "6"):
        zlo, zhi = lv["left_pulmonary_artery_top"], lv["aortic_arch_top"]
    elif station == "7":
        zlo, zhi = lv["station7_bottom"], lv["carina"]
    elif num in (8, 9):
        zlo, zhi = lv["diaphragm_medial"], lv["station7_bottom"]
    elif num == 10:
        zlo, zhi = lv["station7_bottom"] - 20.0, lv["carina"] + 20.0
    else:
        h = np.asarray(g.hilum["right" if station.endswith("R") else "left"])
        r = INTRAPULMONARY_DISTANCE_MM[num][1]
        return h - r, h + r
    zc = 0.5 * (zlo + zhi)
    ych = g.trachea_at(zc)[1]
    return (np.array([xc - 90.0, ych - 75.0, zlo]), np.array([xc + 90.0, ych + 75.0, zhi]))
