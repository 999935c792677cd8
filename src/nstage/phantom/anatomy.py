"""The phantom's anatomy: shapes, sizes and positions of the organs (anatomical frame, mm).

Frame: LPS axes (+x patient LEFT, +y POSTERIOR, +z SUPERIOR), origin at the design carina in
the midline. The adult layout follows typical CT anatomy: trachea 18 mm wide from the cricoid
(C6, 12.5 cm above the carina) down to a carina at T4/T5; right main bronchus short and steep,
left one longer and more horizontal; aortic arch 2.5-5 cm above the carina running from
right-anterior to left-posterior round the trachea; left pulmonary artery arching over the left
main bronchus; left brachiocephalic vein crossing in front of the trachea just above the arch;
oesophagus behind the trachea, slightly left; heart on the diaphragm, bulging left; liver under
the right dome.

:func:`paint_organs` paints everything except the base layers (body, wall, cavity) and the lungs
into a uint8 code map; :func:`base_layers` and :func:`carve_lungs` do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from nstage.phantom.shapes import Ellipsoid, Grid, Tube, rotation, smoothstep
from nstage.phantom.tissues import TissueTable

# Reference uptake (SUV) of the blood pool (all vessels and heart chambers) and the liver.
BLOOD_SUV = 1.7
LIVER_SUV = 2.2

# Design levels (mm, anatomical frame).
CARINA_Z = 0.0
CRICOID_Z = 125.0
APEX_Z = 98.0
MANUBRIUM_TOP_Z = 72.0
TRACHEA_LUMEN_R = 9.0
AIRWAY_WALL = 2.0

# Vertebral body centres (z, mm): T5 at the carina's level minus 1 cm.
_VERT_Z: dict[str, float] = {}
_z = -10.0
for _name, _step in [("T5", 0), ("T4", 23), ("T3", 23), ("T2", 22.5), ("T1", 22), ("C7", 19.5),
                     ("C6", 18), ("C5", 17.5), ("C4", 17.5), ("C3", 17.5), ("C2", 18),
                     ("C1", 16)]:
    _z += _step
    _VERT_Z[_name] = _z
_z = -10.0
for _name, _step in [("T6", 24), ("T7", 24.5), ("T8", 25), ("T9", 25.5), ("T10", 26),
                     ("T11", 27), ("T12", 28), ("L1", 31), ("L2", 32), ("L3", 33), ("L4", 33),
                     ("L5", 33)]:
    _z -= _step
    _VERT_Z[_name] = _z
VERTEBRAE = dict(sorted(_VERT_Z.items(), key=lambda kv: -kv[1]))


def trachea_center(z):
    """Trachea centreline (x, y) at level ``z`` (mm): descends backwards, slightly right at
    the arch (the arch pushes it)."""
    z = np.asarray(z, float)
    x = -2.5 * np.exp(-(((z - 30.0) / 25.0) ** 2))
    y = -0.22 * z
    return x, y


def spine_y(z):
    """Anterior-posterior position (y, mm) of the vertebral body centres: thoracic column
    posterior, cervical lordosis bringing the neck column forward."""
    z = np.asarray(z, float)
    t = smoothstep((z - 40.0) / 76.0)
    return 46.0 * (1 - t) + 12.0 * t


def body_params(z: float, whole_body: bool) -> list[tuple[float, float, float, float, float]]:
    """Body outline at level ``z``: list of superellipses ``(cx, cy, ax, ay, p)`` (mm).

    The patient lies supine, arms up out of the field; a superellipse exponent above 2
    flattens the back and sides a little, as on a CT table.
    """
    neck = (0.0, 12.0, 60.0, 63.0, 2.0)
    chest = (0.0, 15.0, 158.0, 115.0, 2.3)
    abdomen = (0.0, 12.0, 150.0, 110.0, 2.2)
    pelvis = (0.0, 15.0, 168.0, 108.0, 2.4)

    def mix(a, b, t):
        return tuple(float(u * (1 - t) + v * t) for u, v in zip(a, b, strict=True))

    if z > 75.0:
        part = mix(chest, neck, float(smoothstep((z - 75.0) / 60.0)))
    elif z > -140.0 or not whole_body:
        part = chest
    elif z > -330.0:
        part = mix(chest, abdomen, float(smoothstep((-140.0 - z) / 60.0)))
    else:
        part = mix(abdomen, pelvis, float(smoothstep((-330.0 - z) / 80.0)))
    out = []
    if not whole_body or z > -575.0:
        out.append(part)
    if whole_body and z < -540.0:
        # thighs, tapering towards the knees
        t = float(smoothstep((-560.0 - z) / 350.0))
        r = 78.0 * (1 - t) + 58.0 * t
        for side in (-1, 1):
            out.append((side * (88.0 - 6 * t), 12.0, r, r * 1.02, 2.0))
    return out


def _cavity_taper(z):
    """Relative width of the thoracic cavity at level z: the rib cage widens downwards."""
    return 0.78 + 0.22 * smoothstep((60.0 - np.asarray(z, float)) / 140.0)


def diaphragm_z(x, y):
    """Upper surface of the diaphragm (z, mm) at (x, y): right dome higher (liver)."""
    right = -100.0 - (x + 60.0) ** 2 / 180.0 - (y + 5.0) ** 2 / 220.0
    left = -115.0 - (x - 60.0) ** 2 / 180.0 - y ** 2 / 220.0
    return np.maximum(right, left)


def apex_z(x, y):
    """Upper surface of the lung apices (z, mm): a dome over each lung."""
    right = APEX_Z - ((x + 45.0) ** 2 + (y - 15.0) ** 2) / 110.0
    left = APEX_Z - ((x - 45.0) ** 2 + (y - 15.0) ** 2) / 110.0
    return np.where(x < 0, right, left)


def oblique_fissure_z(y, left: bool):
    """Oblique fissure (z, mm) as a function of y: high at the back, low at the front."""
    return (24.0 if left else 18.0) + 0.92 * (y - 70.0)


def horizontal_fissure_z(y):
    """Right horizontal (minor) fissure level (z, mm)."""
    return -32.0 + 0.08 * y


@dataclass
class Airways:
    """Airway tubes (lumen radius; the wall adds ``AIRWAY_WALL``)."""

    larynx: Tube
    trachea: Tube
    main_right: Tube
    main_left: Tube
    lobar: dict[str, Tube]
    ends: dict[str, np.ndarray]


def build_airways(top_z: float) -> Airways:
    zs = np.linspace(CRICOID_Z, 10.0, 40)
    tx, ty = trachea_center(zs)
    trachea = Tube.through(np.stack([tx, ty, zs], 1), TRACHEA_LUMEN_R, smooth=False)
    # larynx and pharynx above the cricoid: narrower, bending forward
    lz = np.linspace(CRICOID_Z - 4.0, max(top_z, CRICOID_Z) + 10.0, 12)
    lx, ly = trachea_center(np.full_like(lz, CRICOID_Z))
    ly = ly - 0.25 * (lz - CRICOID_Z)
    larynx = Tube.through(np.stack([lx, ly, lz], 1), 7.0, smooth=False)
    carina = np.array([0.0, 0.2, 8.0])

    def ray(start, direction, length):
        d = np.asarray(direction, float)
        d = d / np.linalg.norm(d)
        return np.asarray(start, float) + d * length

    r_end = ray(carina, (-0.5, 0.1, -0.866), 22.0)
    l_end = ray(carina, (0.766, 0.12, -0.643), 50.0)
    main_right = Tube.through([carina, r_end], 6.5, smooth=False)
    main_left = Tube.through([carina, l_end], 6.0, smooth=False)
    bi_end = ray(r_end, (-0.2, 0.15, -0.97), 22.0)
    lobar = {
        # right upper-lobe bronchus: lateral, rising only a little (it stays below the carina)
        "rul": Tube.through([r_end, ray(r_end, (-0.98, 0.05, 0.05), 18.0),
                             ray(r_end, (-0.98, 0.05, 0.05), 30.0) + [0, 0, 2]],
                            [4.0, 3.5, 2.5]),
        "bi": Tube.through([r_end, bi_end], 5.5, smooth=False),
        "rml": Tube.through([bi_end, ray(bi_end, (-0.4, -0.85, -0.35), 16.0),
                             ray(bi_end, (-0.4, -0.85, -0.35), 30.0)], [3.5, 3.0, 2.2]),
        "rll": Tube.through([bi_end, ray(bi_end, (-0.2, 0.35, -0.92), 30.0),
                             ray(bi_end, (-0.3, 0.4, -0.87), 55.0)], [4.5, 3.8, 2.5]),
        "lul": Tube.through([l_end, ray(l_end, (0.75, -0.5, 0.3), 18.0),
                             ray(l_end, (0.6, -0.5, 0.6), 34.0)], [4.2, 3.6, 2.5]),
        "lll": Tube.through([l_end, ray(l_end, (0.15, 0.35, -0.92), 30.0),
                             ray(l_end, (0.25, 0.4, -0.88), 55.0)], [4.5, 3.8, 2.5]),
    }
    ends = {"carina": carina, "right_main_end": r_end, "left_main_end": l_end,
            "bronchus_intermedius_end": bi_end}
    return Airways(larynx, trachea, main_right, main_left, lobar, ends)


@dataclass
class Vessels:
    aorta: Tube
    pa_trunk: Tube
    pa_left: Tube
    pa_right: Tube
    svc: Tube
    bcv_left: Tube
    bcv_right: Tube
    azygos: Tube
    others: dict[str, tuple[Tube, str | None]] = field(default_factory=dict)


def build_vessels(whole_body: bool) -> Vessels:
    aorta_pts = [(10, -30, -50), (0, -42, -30), (-6, -46, -10), (-8, -44, 8), (-7, -40, 21),
                 (0, -38, 29), (12, -32, 33), (22, -20, 33), (28, -6, 29), (28, 8, 23),
                 (25, 20, 14), (23, 28, 3), (22, 32, -15), (21, 33, -60), (18, 33, -110),
                 (10, 31, -160), (5, 28, -230), (3, 26, -300)]
    aorta_r = [15, 15, 15, 14.5, 14, 13, 12.5, 12.5, 12.5, 12, 12, 11.5, 11.5, 11.5, 11, 10.5,
               10, 9.5]
    if whole_body:
        aorta_pts += [(2, 22, -330)]
        aorta_r += [9]
    aorta = Tube.through(aorta_pts, aorta_r)
    pa_trunk = Tube.through([(22, -50, -45), (24, -44, -25), (26, -34, -8)], [14, 14, 13.5])
    pa_left = Tube.through([(26, -34, -8), (32, -22, -3), (40, -6, -4), (46, 6, -7),
                            (54, 14, -14), (60, 20, -30), (64, 24, -48)],
                           [11, 10.5, 10.5, 10, 9, 7, 5])
    # right PA: behind the ascending aorta, in front of the carina and bronchus intermedius
    pa_right = Tube.through([(26, -34, -8), (12, -25, -13), (-5, -22, -16), (-25, -18, -18),
                             (-45, -11, -22), (-58, -4, -30), (-66, 2, -45)],
                            [11, 10, 9.5, 9.5, 9, 7, 5])
    svc = Tube.through([(-32, -34, 45), (-33, -33, 20), (-32, -30, -5), (-28, -26, -30)],
                       [9, 9.5, 10, 10], smooth=True)
    bcv_left = Tube.through([(60, -22, 88), (42, -30, 76), (20, -40, 64), (0, -44, 58),
                             (-18, -40, 52), (-30, -35, 47)], [6.5, 6.5, 6.5, 6.5, 7, 8])
    bcv_right = Tube.through([(-48, -22, 90), (-40, -28, 72), (-33, -34, 52), (-32, -34, 44)],
                             [7, 7, 8, 9])
    azygos = Tube.through([(-10, 36, -120), (-11, 35, -40), (-12, 33, 0), (-15, 24, 10),
                           (-20, 4, 13), (-26, -14, 11), (-30, -26, 9)], 4.0)
    others: dict[str, tuple[Tube, str | None]] = {}
    others["brachiocephalic_trunk"] = (
        Tube.through([(-4, -38, 32), (-10, -32, 55), (-16, -26, 72)], 7.0),
        "brachiocephalic_trunk")
    others["subclavian_artery_right"] = (
        Tube.through([(-16, -26, 72), (-35, -20, 80), (-60, -12, 84), (-95, -5, 80),
                      (-130, 0, 76)], [5, 5, 4.5, 4.5, 4]), "subclavian_artery_right")
    others["common_carotid_artery_right"] = (
        Tube.through([(-16, -26, 72), (-26, -22, 100), (-30, -18, 140), (-30, -15, 200)], 4.0),
        "common_carotid_artery_right")
    others["common_carotid_artery_left"] = (
        Tube.through([(6, -36, 38), (14, -30, 65), (26, -22, 100), (30, -18, 140),
                      (30, -15, 200)], 4.0), "common_carotid_artery_left")
    others["subclavian_artery_left"] = (
        Tube.through([(20, -14, 36), (26, -8, 62), (34, -4, 78), (60, -2, 86), (95, 2, 82),
                      (130, 5, 76)], [5, 5, 5, 4.5, 4.5, 4]), "subclavian_artery_left")
    others["jugular_right"] = (Tube.through([(-48, -22, 90), (-42, -24, 130),
                                             (-40, -20, 200)], 5.5), None)
    others["jugular_left"] = (Tube.through([(60, -22, 88), (44, -24, 120), (40, -20, 200)], 5.5),
                              None)
    others["subclavian_vein_right"] = (Tube.through([(-48, -22, 90), (-90, -18, 84),
                                                     (-130, -10, 78)], 5.0), None)
    others["subclavian_vein_left"] = (Tube.through([(60, -22, 88), (92, -16, 84),
                                                    (130, -10, 78)], 5.0), None)
    others["ivc"] = (Tube.through([(-20, -6, -95), (-22, 6, -140), (-20, 20, -200),
                                   (-18, 24, -300 if whole_body else -200)], [11, 11, 10, 10]),
                     "inferior_vena_cava")
    for side, s in (("right", -1), ("left", 1)):
        others[f"pulmonary_vein_{side}_upper"] = (
            Tube.through([(s * 62, -8, -22), (s * 38, -2, -36), (s * 16, 4, -44)], 5.5),
            "pulmonary_vein")
        others[f"pulmonary_vein_{side}_lower"] = (
            Tube.through([(s * 60, 22, -60), (s * 38, 16, -54), (s * 16, 8, -50)], 5.5),
            "pulmonary_vein")
    if whole_body:
        for side, s in (("right", -1), ("left", 1)):
            others[f"iliac_artery_{side}"] = (
                Tube.through([(2, 22, -330), (s * 30, 15, -390), (s * 60, 0, -450),
                              (s * 82, -12, -500)], [8, 7, 6.5, 6]), f"iliac_artery_{side}")
            others[f"femoral_artery_{side}"] = (
                Tube.through([(s * 82, -12, -500), (s * 85, -15, -600), (s * 80, -5, -800),
                              (s * 72, 10, -950)], [6, 5.5, 5, 4.5]), None)
            others[f"iliac_vein_{side}"] = (
                Tube.through([(-18, 24, -300), (s * 28, 25, -370), (s * 62, 8, -450),
                              (s * 86, -4, -500)], [10, 9, 8, 7]), f"iliac_vena_{side}")
        others["renal_vein_left"] = (Tube.through([(-18, 24, -275), (70, 40, -280)], 5.0), None)
        others["renal_vein_right"] = (Tube.through([(-18, 24, -270), (-70, 40, -290)], 5.0),
                                      None)
    return Vessels(aorta, pa_trunk, pa_left, pa_right, svc, bcv_left, bcv_right, azygos, others)


def oesophagus_tube(top_z: float) -> Tube:
    """Oesophagus centreline from the neck to the gastro-oesophageal junction."""
    zs = [max(top_z, 140.0) + 10, 140, 110, 70, 30, 0, -30, -60, -95, -120, -135]
    pts = []
    for z in zs:
        tx, ty = trachea_center(z)
        if z >= 0:
            pts.append((float(tx) + 6.0, float(ty) + 20.0, z))
        else:
            pts.append(None)
    pts[6] = (8.0, 25.0, -30.0)
    pts[7] = (5.0, 22.0, -60.0)
    pts[8] = (10.0, 14.0, -95.0)
    pts[9] = (22.0, 6.0, -120.0)
    pts[10] = (36.0, -2.0, -135.0)
    return Tube.through(pts, [7.5] * 9 + [8.5, 9.0])


def heart_shapes() -> dict[str, Ellipsoid]:
    rot = tuple(map(tuple, rotation(yaw_deg=-28.0, pitch_deg=18.0)))
    lv_rot = tuple(map(tuple, rotation(yaw_deg=-35.0, pitch_deg=30.0)))
    return {
        "heart": Ellipsoid((15.0, -22.0, -70.0), (60.0, 46.0, 44.0), rot),
        "left_atrium": Ellipsoid((10.0, 2.0, -47.0), (28.0, 13.0, 15.0)),
        "lv_outer": Ellipsoid((36.0, -30.0, -82.0), (38.0, 30.0, 34.0), lv_rot),
        "lv_cavity": Ellipsoid((36.0, -30.0, -82.0), (27.0, 19.0, 23.0), lv_rot),
    }


def rib_path(k: int, side: int) -> tuple[np.ndarray, float]:
    """Centreline of rib ``k`` (1-12) on ``side`` (-1 right, +1 left) and its radius (mm).

    Ribs leave the transverse process of their vertebra, run back and out, round the chest
    wall just outside the pleura, and fall towards the front; upper ribs reach the sternum,
    lower ones stop short (costal cartilage is not modelled); 11 and 12 float.
    """
    zv = VERTEBRAE[f"T{k}"]
    z0 = zv + 6.0
    yv = float(spine_y(zv))
    # cavity outline at the rib's level (shrunk body outline)
    cx, cy, ax, ay, _ = body_params(min(z0, 75.0), False)[0]
    ax_c, ay_c, cy_c = ax - 22.0, ay - 27.0, cy - 8.0
    if k == 1:
        ax_c, ay_c = 58.0, 52.0
        cy_c = 5.0
    elif k == 2:
        ax_c, ay_c = 90.0, 70.0
    theta_end = {1: 0.86, 2: 0.85, 3: 0.85, 4: 0.85, 5: 0.84, 6: 0.82, 7: 0.80, 8: 0.74,
                 9: 0.68, 10: 0.62, 11: 0.45, 12: 0.35}[k] * np.pi
    drop = {1: 28.0, 2: 40.0}.get(k, 55.0 + 3.0 * min(k, 8))
    th = np.linspace(0.12 * np.pi, theta_end, 40)
    # the chest is narrower higher up, as the cavity is
    ax_c = ax_c * _cavity_taper(z0)
    x = side * (ax_c + 4.0) * np.sin(th)
    y = cy_c + (ay_c + 4.0) * np.cos(th)
    z = z0 - drop * (th - th[0]) / (theta_end - th[0])
    start = np.array([[side * 14.0, yv + 16.0, z0]])
    pts = np.concatenate([start, np.stack([x, y, z], 1)], 0)
    return pts, (4.0 if k > 1 else 4.5)


@dataclass
class Layout:
    """All shapes of one phantom (anatomical frame)."""

    whole_body: bool
    airways: Airways
    vessels: Vessels
    oesophagus: Tube
    heart: dict[str, Ellipsoid]
    z_range: tuple[float, float]


def build_layout(whole_body: bool, z_range: tuple[float, float]) -> Layout:
    return Layout(
        whole_body=whole_body,
        airways=build_airways(z_range[1]),
        vessels=build_vessels(whole_body),
        oesophagus=oesophagus_tube(z_range[1]),
        heart=heart_shapes(),
        z_range=z_range,
    )


def register_tissues(table: TissueTable, myocardium_suv: float, whole_body: bool,
                     blood_suv: float = BLOOD_SUV, liver_suv: float = LIVER_SUV) -> None:
    """Fill ``table`` with the tissue classes (HU of non-contrast CT, SUV of a 60 min scan).

    ``blood_suv`` and ``liver_suv`` set the blood pool (vessels, heart chambers) and liver.
    """
    add = table.add
    add("table", None, 150.0, 0.0)
    add("fat", None, -100.0, 0.3)
    add("muscle", None, 50.0, 0.7)
    add("mediastinal_fat", None, -95.0, 0.35)
    add("abdomen", None, 25.0, 1.1)
    add("lung_upper_lobe_right", "lung_upper_lobe_right", -850.0, 0.4)
    add("lung_middle_lobe_right", "lung_middle_lobe_right", -850.0, 0.4)
    add("lung_lower_lobe_right", "lung_lower_lobe_right", -850.0, 0.4)
    add("lung_upper_lobe_left", "lung_upper_lobe_left", -850.0, 0.4)
    add("lung_lower_lobe_left", "lung_lower_lobe_left", -850.0, 0.4)
    add("trachea/wall", "trachea", 70.0, 0.8, hull=True)
    add("trachea/lumen", "trachea", -1000.0, 0.0, hull=True)
    add("larynx/wall", None, 70.0, 1.0, hull=True)
    add("larynx/lumen", None, -1000.0, 0.0, hull=True)
    for side in ("right", "left"):
        add(f"main_bronchus_{side}/wall", f"main_bronchus_{side}", 70.0, 0.7, hull=True)
        add(f"main_bronchus_{side}/lumen", f"main_bronchus_{side}", -1000.0, 0.0, hull=True)
    add("airway/wall", "airway", 60.0, 0.5)
    add("airway/lumen", "airway", -1000.0, 0.0)
    add("esophagus", "esophagus", 40.0, 1.3, hull=True)
    add("aorta", "aorta", 40.0, blood_suv, hull=True)
    add("pulmonary_artery", "pulmonary_artery", 40.0, blood_suv, hull=True)
    add("pulmonary_artery/hilar", "pulmonary_artery", 40.0, blood_suv)
    add("superior_vena_cava", "superior_vena_cava", 40.0, blood_suv, hull=True)
    add("brachiocephalic_vein_left", "brachiocephalic_vein_left", 40.0, blood_suv, hull=True)
    add("brachiocephalic_vein_right", "brachiocephalic_vein_right", 40.0, blood_suv, hull=True)
    add("azygos", None, 40.0, 1.6, hull=True)
    add("brachiocephalic_trunk", "brachiocephalic_trunk", 40.0, blood_suv, hull=True)
    for name in ("common_carotid_artery_left", "common_carotid_artery_right",
                 "subclavian_artery_left", "subclavian_artery_right"):
        # not part of the hull: they run out over the apices to the arms
        add(name, name, 40.0, blood_suv, hull=False)
    add("vessel", None, 40.0, 1.6)
    add("pulmonary_vein", "pulmonary_vein", 40.0, blood_suv, hull=True)
    add("pulmonary_vein/hilar", "pulmonary_vein", 40.0, blood_suv)
    add("inferior_vena_cava", "inferior_vena_cava", 40.0, blood_suv)
    add("heart/blood", "heart", 40.0, blood_suv, hull=True)
    add("heart/myocardium", "heart", 45.0, myocardium_suv, hull=True)
    add("thyroid_gland", "thyroid_gland", 95.0, 1.4, hull=True)
    add("spinal_canal", None, 15.0, 0.6)
    add("spinal_cord", "spinal_cord", 35.0, 1.0)
    add("liver", "liver", 55.0, liver_suv)
    add("spleen", "spleen", 45.0, 1.9)
    add("stomach", "stomach", 30.0, 1.6)
    add("stomach/air", "stomach", -1000.0, 0.0)
    for name in ("sternum", "clavicula_left", "clavicula_right", "scapula_left",
                 "scapula_right"):
        add(f"{name}/cortex", name, 900.0, 0.5, hull=name == "sternum")
        add(f"{name}/marrow", name, 250.0, 1.2, hull=name == "sternum")
    for name in VERTEBRAE:
        add(f"vertebrae_{name}/cortex", f"vertebrae_{name}", 850.0, 0.6, hull=True)
        add(f"vertebrae_{name}/marrow", f"vertebrae_{name}", 230.0, 1.4, hull=True)
        add(f"vertebrae_{name}/arch", f"vertebrae_{name}", 650.0, 0.6)
    for k in range(1, 13):
        for side in ("left", "right"):
            add(f"rib_{side}_{k}", f"rib_{side}_{k}", 600.0, 0.7)
    if whole_body:
        add("brain", "brain", 35.0, 7.0)
        add("skull", "skull", 1000.0, 0.6)
        add("kidney_left", "kidney_left", 32.0, 3.5)
        add("kidney_right", "kidney_right", 32.0, 3.5)
        add("adrenal_gland_left", "adrenal_gland_left", 30.0, 1.4)
        add("adrenal_gland_right", "adrenal_gland_right", 30.0, 1.4)
        add("urinary_bladder", "urinary_bladder", 8.0, 30.0)
        add("sacrum", "sacrum", 400.0, 1.2)
        for side in ("left", "right"):
            add(f"hip_{side}", f"hip_{side}", 450.0, 1.0)
            add(f"femur_{side}/cortex", f"femur_{side}", 1100.0, 0.5)
            add(f"femur_{side}/marrow", f"femur_{side}", 150.0, 0.8)
            add(f"iliac_artery_{side}", f"iliac_artery_{side}", 40.0, blood_suv)
            add(f"iliac_vena_{side}", f"iliac_vena_{side}", 40.0, 1.6)


class Painter:
    """Paints tissue codes into a label map on a grid, optionally clipped below the diaphragm."""

    def __init__(self, grid: Grid, table: TissueTable, labels: np.ndarray):
        self.grid = grid
        self.table = table
        self.labels = labels

    def _put(self, code: int, clip=None, only=None):
        def fn(sl, m):
            if not m.any():
                return
            if clip is not None:
                m = m & clip(sl)
            target = self.labels[sl]
            if only is not None:
                m = m & np.isin(target, only)
            target[m] = code

        return fn

    def ellipsoid(self, key: str, e: Ellipsoid, clip=None, only=None, grow: float = 0.0):
        sl, m = e.mask(self.grid, grow)
        if m.size:
            self._put(self.table.code(key), clip, only)(sl, m)

    def tube(self, key: str, t: Tube, grow: float = 0.0, clip=None, only=None):
        t.paint(self.grid, self._put(self.table.code(key), clip, only), grow_mm=grow)

    def below_diaphragm(self, margin: float = 5.0):
        grid = self.grid

        def clip(sl):
            x = grid.axis("x")[sl[2]][None, None, :]
            y = grid.axis("y")[sl[1]][None, :, None]
            z = grid.axis("z")[sl[0]][:, None, None]
            return z < diaphragm_z(x, y) - margin

        return clip


def _superellipse(x, y, cx, cy, ax, ay, p):
    return (np.abs(x - cx) / ax) ** p + (np.abs(y - cy) / ay) ** p <= 1.0


def base_layers(grid: Grid, table: TissueTable, whole_body: bool) -> np.ndarray:
    """Air, table, subcutaneous fat, muscle, and the thoracic / abdominal cavities."""
    nz, ny, nx = grid.shape
    labels = np.zeros(grid.shape, np.uint8)
    x = grid.axis("x")[None, :]
    y = grid.axis("y")[:, None]
    zs = grid.axis("z")
    c_fat, c_mus = table.code("fat"), table.code("muscle")
    c_med, c_abd = table.code("mediastinal_fat"), table.code("abdomen")
    c_tab = table.code("table")
    back = -1e9
    cache: dict = {}
    for k, z in enumerate(zs):
        parts = body_params(float(z), whole_body)
        key = tuple(np.round(np.asarray(parts, float).ravel(), 1))
        if key not in cache:
            body = np.zeros((ny, nx), bool)
            inner = np.zeros((ny, nx), bool)
            for cx, cy, ax, ay, p in parts:
                body |= _superellipse(x, y, cx, cy, ax, ay, p)
                inner |= _superellipse(x, y, cx, cy, ax - 10.0, ay - 10.0, p)
            cache[key] = (body, inner)
            if len(cache) > 64:
                cache.pop(next(iter(cache)))
        body, inner = cache[key]
        sl = labels[k]
        sl[body] = c_fat
        sl[inner] = c_mus
        for cx, cy, ax, ay, _p in parts:
            back = max(back, cy + ay)
            if len(parts) > 1 and abs(cx) > 1:
                continue  # thighs: muscle only
            if z < 105.0:
                axc = (ax - 24.0) * float(_cavity_taper(z)) if len(parts) == 1 else ax - 24.0
                ayc = ay - 29.0
                if z > 75.0:
                    # thoracic inlet: the cavity narrows smoothly up to the apices
                    t = float(smoothstep((z - 75.0) / 30.0))
                    axc *= 1.0 - 0.45 * t
                    ayc *= 1.0 - 0.25 * t
                cav = _superellipse(x, y, cx, cy - 8.0, axc, ayc, 2.0)
                dia = diaphragm_z(x, y)
                sl[cav & (z >= dia)] = c_med
                sl[cav & (z < dia)] = c_abd
    # a curved carbon table under the patient, 8 mm below the back
    ty = back + 8.0
    curve = ty - 25.0 * (x / 220.0) ** 2  # the table top curves up at the sides
    tab = (y >= curve) & (y <= curve + 6.0) & (np.abs(x) < 220.0)
    labels[:, tab & (labels[0] == 0)] = c_tab
    return labels


def paint_organs(grid: Grid, table: TissueTable, layout: Layout, labels: np.ndarray) -> None:
    """Paint every organ into ``labels`` (uint8 codes). Paint order: later wins."""
    p = Painter(grid, table, labels)
    wb = layout.whole_body
    below = p.below_diaphragm(5.0)
    zlo, zhi = layout.z_range

    # --- abdomen ---------------------------------------------------------------------
    liver_region = _liver_mask(grid)
    if liver_region is not None:
        sl, m = liver_region
        p._put(table.code("liver"), below)(sl, m)
    p.ellipsoid("spleen", Ellipsoid((82.0, 48.0, -165.0), (24.0, 42.0, 52.0),
                                    tuple(map(tuple, rotation(yaw_deg=30)))), clip=below)
    p.ellipsoid("stomach", Ellipsoid((52.0, -18.0, -160.0), (42.0, 34.0, 40.0)), clip=below)
    p.ellipsoid("stomach/air", Ellipsoid((52.0, -30.0, -132.0), (20.0, 14.0, 8.0)),
                clip=p.below_diaphragm(8.0))
    if wb:
        for side, s, dz in (("left", 1, 0.0), ("right", -1, -15.0)):
            rot = tuple(map(tuple, rotation(yaw_deg=s * 20, roll_deg=s * 10)))
            p.ellipsoid(f"kidney_{side}", Ellipsoid((s * 75.0, 48.0, -280.0 + dz),
                                                    (27.0, 24.0, 55.0), rot))
            p.ellipsoid(f"adrenal_gland_{side}", Ellipsoid((s * 42.0, 38.0, -215.0 + dz),
                                                           (9.0, 6.0, 16.0)))
        p.ellipsoid("urinary_bladder", Ellipsoid((0.0, -30.0, -478.0), (42.0, 32.0, 32.0)))

    # --- heart and great vessels -------------------------------------------------------
    h = layout.heart
    p.ellipsoid("heart/blood", h["heart"])
    p.ellipsoid("heart/blood", h["left_atrium"])
    p.ellipsoid("heart/myocardium", h["lv_outer"], only=[table.code("heart/blood")])
    p.ellipsoid("heart/blood", h["lv_cavity"])
    v = layout.vessels
    p.tube("inferior_vena_cava", v.others["ivc"][0])
    p.tube("pulmonary_artery", v.pa_trunk)
    _split_tube(p, "pulmonary_artery", "pulmonary_artery/hilar", v.pa_left, 30.0)
    _split_tube(p, "pulmonary_artery", "pulmonary_artery/hilar", v.pa_right, 30.0)
    p.tube("superior_vena_cava", v.svc)
    p.tube("brachiocephalic_vein_left", v.bcv_left)
    p.tube("brachiocephalic_vein_right", v.bcv_right)
    p.tube("azygos", v.azygos)
    for name, (tube, label) in v.others.items():
        if name == "ivc":
            continue
        if label == "pulmonary_vein":
            _split_tube(p, "pulmonary_vein", "pulmonary_vein/hilar", tube, 30.0)
        elif label is not None and label in table:
            p.tube(label, tube)
        else:
            p.tube("vessel", tube)
    # after the arch branches, so they leave the arch in one piece
    p.tube("aorta", v.aorta)

    # --- airways -----------------------------------------------------------------------
    a = layout.airways
    p.tube("larynx/wall", a.larynx, grow=AIRWAY_WALL)
    p.tube("trachea/wall", a.trachea, grow=AIRWAY_WALL)
    p.tube("main_bronchus_right/wall", a.main_right, grow=AIRWAY_WALL - 0.2)
    p.tube("main_bronchus_left/wall", a.main_left, grow=AIRWAY_WALL - 0.2)
    for tube in a.lobar.values():
        p.tube("airway/wall", tube, grow=1.5)
    for tube in a.lobar.values():
        p.tube("airway/lumen", tube)
    p.tube("main_bronchus_right/lumen", a.main_right)
    p.tube("main_bronchus_left/lumen", a.main_left)
    p.tube("trachea/lumen", a.trachea)
    p.tube("larynx/lumen", a.larynx)
    p.tube("esophagus", layout.oesophagus, only=None)

    # thyroid: two lobes beside the trachea and an isthmus in front, C5-T1
    for s in (-1, 1):
        tx, ty = trachea_center(118.0)
        p.ellipsoid("thyroid_gland", Ellipsoid((s * 21.0, float(ty) - 6.0, 118.0),
                                               (8.0, 10.0, 21.0)))
    tx, ty = trachea_center(106.0)
    p.ellipsoid("thyroid_gland", Ellipsoid((0.0, float(ty) - 15.5, 106.0), (14.0, 3.5, 5.0)))

    # --- skeleton ----------------------------------------------------------------------
    _paint_spine(p, zlo, zhi)
    for k in range(1, 13):
        for side, s in (("right", -1), ("left", 1)):
            pts, r = rib_path(k, s)
            if pts[:, 2].max() + r < zlo:
                continue
            p.tube(f"rib_{side}_{k}", Tube.through(pts, r, smooth=True))
    _paint_sternum(p)
    for side, s in (("right", -1), ("left", 1)):
        clav = Tube.through([(s * 24.0, -72.0, 78.0), (s * 60.0, -62.0, 84.0),
                             (s * 100.0, -40.0, 92.0), (s * 130.0, -15.0, 95.0)],
                            [8.0, 6.5, 6.0, 7.0])
        p.tube(f"clavicula_{side}/cortex", clav)
        p.tube(f"clavicula_{side}/marrow", clav, grow=-2.5)
        rot = tuple(map(tuple, rotation(yaw_deg=-s * 32.0, roll_deg=-10.0)))
        scap = Ellipsoid((s * 98.0, 92.0, 42.0), (48.0, 5.0, 58.0), rot)
        p.ellipsoid(f"scapula_{side}/cortex", scap,
                    only=[table.code("muscle"), table.code("fat")])
    if wb:
        _paint_whole_body_extras(p)


def _split_tube(p: Painter, central: str, distal: str, tube: Tube, x_split: float) -> None:
    """Paint a tube with one code medially (|x| < x_split, part of the mediastinum) and another
    laterally (inside the hilum and lung)."""
    central_fn = p._put(p.table.code(central))
    distal_fn = p._put(p.table.code(distal))
    grid = p.grid

    def fn(sl, m):
        x = grid.axis("x")[sl[2]][None, None, :]
        med = np.abs(x) < x_split
        central_fn(sl, m & med)
        distal_fn(sl, m & ~med)

    tube.paint(grid, fn)


def _liver_mask(grid: Grid):
    lo, hi = (-150.0, -90.0, -260.0), (70.0, 110.0, -95.0)
    sl, x, y, z = grid.box(lo, hi)
    if any(s.stop <= s.start for s in sl):
        return None
    _, cy, ax, ay, _ = body_params(-150.0, False)[0]
    cav = _superellipse(x, y, 0.0, cy - 8.0, ax - 26.0, ay - 31.0, 2.0)
    bottom = -245.0 + 0.45 * (x + 120.0) + 0.12 * (y + 60.0)
    left_edge = 55.0 - 0.5 * (-105.0 - z)
    m = cav & (z > bottom) & (x < left_edge) & ~((np.abs(x) < 28.0) & (y > 20.0))
    return sl, m


def _paint_sternum(p: Painter) -> None:
    zs = np.linspace(MANUBRIUM_TOP_Z - 6.0, -125.0, 40)
    ys = -72.0 - 0.08 * (MANUBRIUM_TOP_Z - zs)
    grid = p.grid
    lo, hi = (-35.0, ys.min() - 12.0, -130.0), (35.0, ys.max() + 12.0, MANUBRIUM_TOP_Z + 2.0)
    sl, x, y, z = grid.box(lo, hi)
    if any(s.stop <= s.start for s in sl):
        return
    yc = -72.0 - 0.08 * (MANUBRIUM_TOP_Z - z)
    # manubrium wide (clavicular notches), body narrower, xiphoid thin
    t = np.clip((MANUBRIUM_TOP_Z - z) / 72.0, 0, 1)
    rx = np.where(z > 0, 26.0 - 11.0 * t, np.where(z > -105.0, 15.0, 8.0))
    ry = np.where(z > 0, 7.5, 6.0)
    outer = ((x / rx) ** 2 + ((y - yc) / ry) ** 2 <= 1.0) & (z <= MANUBRIUM_TOP_Z) & (z > -125.0)
    # rounded top of the manubrium
    outer &= z <= MANUBRIUM_TOP_Z - (x / 26.0) ** 2 * 6.0
    inner = ((x / (rx - 2.5)) ** 2 + ((y - yc) / (ry - 2.2)) ** 2 <= 1.0) & outer
    target = p.labels[sl]
    target[outer] = p.table.code("sternum/cortex")
    target[inner] = p.table.code("sternum/marrow")


def _paint_spine(p: Painter, zlo: float, zhi: float) -> None:
    grid = p.grid
    table = p.table
    names = list(VERTEBRAE)
    zc = np.array([VERTEBRAE[n] for n in names])
    for a, name in enumerate(names):
        z0 = zc[a]
        gap_up = (zc[a - 1] - z0) if a > 0 else 18.0
        gap_dn = (z0 - zc[a + 1]) if a + 1 < len(names) else 33.0
        top, bot = z0 + gap_up / 2 - 2.0, z0 - gap_dn / 2 + 2.0
        if top < zlo - 20 or bot > zhi + 20:
            continue
        cervical = name.startswith("C")
        lumbar = name.startswith("L")
        rx, ry = (12.0, 10.0) if cervical else ((24.0, 17.0) if lumbar else (19.0, 15.0))
        yb = float(spine_y(z0))
        lo, hi = (-rx - 40.0, yb - ry - 2, bot), (rx + 40.0, yb + ry + 75.0, top)
        sl, x, y, z = grid.box(lo, hi)
        if any(s.stop <= s.start for s in sl):
            continue
        yz = spine_y(z)
        zin = (z >= bot) & (z <= top)
        ell = ((x / rx) ** 2 + ((y - yz) / ry) ** 2 <= 1.0) & zin
        marrow = ((x / (rx - 2.5)) ** 2 + ((y - yz) / (ry - 2.5)) ** 2 <= 1.0) & zin
        marrow &= (z >= bot + 1.5) & (z <= top - 1.5)
        # neural arch: ring round the canal, transverse and spinous processes
        cy = yz + ry + (8.0 if cervical else 10.0)
        rc = 7.0 if cervical else 8.5
        dcanal = np.sqrt(x ** 2 + ((y - cy) / 1.1) ** 2)
        arch_z = (z >= bot + 2.0) & (z <= top + 1.0)
        ring = (dcanal <= rc + 4.5) & (dcanal > rc) & arch_z & (y > yz + ry - 3.0)
        zmid = 0.5 * (top + bot)
        # transverse processes: short, sloping backwards
        tp_len = 12.0 if cervical else 18.0
        tp = (np.abs(x) > rc) & (np.abs(x) < rc + tp_len) \
            & (np.abs(y - (cy + 0.4 * (np.abs(x) - rc))) <= 3.5) & (np.abs(z - zmid) <= 4.0)
        sp_len = 28.0 if not cervical else 18.0
        t = np.clip((y - cy - rc) / sp_len, 0, 1)
        sp = (np.abs(x) <= 3.5) & (y > cy + rc) & (y < cy + rc + sp_len) \
            & (np.abs(z - (zmid - 10.0 * t)) <= 5.0)
        canal = (dcanal <= rc) & arch_z
        cord = (np.sqrt(x ** 2 + (y - cy) ** 2) <= (4.5 if not lumbar else 3.5)) & arch_z
        target = p.labels[sl]
        target[(ring | tp | sp) & ~canal] = table.code(f"vertebrae_{name}/arch")
        target[ell] = table.code(f"vertebrae_{name}/cortex")
        target[marrow] = table.code(f"vertebrae_{name}/marrow")
        target[canal] = table.code("spinal_canal")
        target[cord] = table.code("spinal_cord")
    # discs and canal between vertebrae: soft tissue / canal continue
    lo, hi = (-30.0, -40.0, zlo), (30.0, 110.0, zhi)
    sl, x, y, z = grid.box(lo, hi)
    if not any(s.stop <= s.start for s in sl):
        yz = spine_y(z)
        target = p.labels[sl]
        rx = np.where(z > 100, 12.0, np.where(z < -200, 24.0, 19.0))
        ry = np.where(z > 100, 10.0, np.where(z < -200, 17.0, 15.0))
        disc = ((x / rx) ** 2 + ((y - yz) / ry) ** 2 <= 1.0)
        bonecodes = table.codes_where(lambda t: t.label is not None
                                      and t.label.startswith("vertebrae_"))
        free = ~np.isin(target, bonecodes)
        target[disc & free] = table.code("muscle")
        cy = yz + ry + np.where(z > 100, 8.0, 10.0)
        canal = np.sqrt(x ** 2 + ((y - cy) / 1.1) ** 2) <= np.where(z > 100, 7.0, 8.5)
        target[canal & free & ~disc] = table.code("spinal_canal")
        cord = np.sqrt(x ** 2 + (y - cy) ** 2) <= 4.5
        target[cord & free & ~disc] = table.code("spinal_cord")


def _paint_whole_body_extras(p: Painter) -> None:
    """Head (skull, brain), pelvis and femurs for the whole-body extent."""
    head = Ellipsoid((0.0, 2.0, 268.0), (74.0, 92.0, 102.0))
    p.ellipsoid("muscle", head)
    p.ellipsoid("fat", head, grow=0.0, only=[0])
    p.ellipsoid("skull", Ellipsoid((0.0, 4.0, 285.0), (68.0, 86.0, 85.0)))
    p.ellipsoid("brain", Ellipsoid((0.0, 4.0, 288.0), (61.0, 79.0, 77.0)))
    for side, s in (("right", -1), ("left", 1)):
        rot = tuple(map(tuple, rotation(yaw_deg=s * 40.0, roll_deg=-15.0)))
        p.ellipsoid(f"hip_{side}", Ellipsoid((s * 92.0, 35.0, -430.0), (50.0, 10.0, 60.0), rot))
        p.ellipsoid(f"hip_{side}", Ellipsoid((s * 70.0, 10.0, -495.0), (30.0, 28.0, 28.0)))
        p.ellipsoid(f"hip_{side}", Ellipsoid((s * 25.0, -40.0, -505.0), (16.0, 10.0, 18.0)))
        femur = Tube.through([(s * 90.0, 8.0, -495.0), (s * 105.0, 10.0, -530.0),
                              (s * 98.0, 12.0, -600.0), (s * 88.0, 15.0, -800.0),
                              (s * 82.0, 12.0, -1000.0)], [24.0, 15.0, 13.0, 13.0, 14.0])
        p.tube(f"femur_{side}/cortex", femur)
        p.tube(f"femur_{side}/marrow", femur, grow=-5.0)
    p.ellipsoid("sacrum", Ellipsoid((0.0, 70.0, -430.0), (42.0, 18.0, 55.0),
                                    tuple(map(tuple, rotation(roll_deg=25.0)))))


def carve_lungs(grid: Grid, table: TissueTable, labels: np.ndarray,
                extra_hull: np.ndarray | None = None) -> np.ndarray:
    """Lungs: the thoracic cavity outside the mediastinal hull, below the apices and above
    the diaphragm, split into lobes by the fissures. Returns a lobe-code map (0 elsewhere)."""
    hull_lut = np.zeros(256, bool)
    hull_lut[table.codes_where(lambda t: t.hull)] = True
    cav_code = table.code("mediastinal_fat")
    zs = grid.axis("z")
    x = grid.axis("x")[None, :]
    y = grid.axis("y")[:, None]
    ks = np.nonzero((zs > -200.0) & (zs < APEX_Z + 2.0))[0]
    out = np.zeros(grid.shape, np.uint8)
    dia = diaphragm_z(x, y)
    apex = apex_z(x, y)
    yy = np.broadcast_to(y, (grid.shape[1], grid.shape[2]))
    xx = np.broadcast_to(x, (grid.shape[1], grid.shape[2]))
    codes = {n: table.code(n) for n in ("lung_upper_lobe_right", "lung_middle_lobe_right",
                                        "lung_lower_lobe_right", "lung_upper_lobe_left",
                                        "lung_lower_lobe_left")}
    dil = max(1, int(round(3.0 / grid.spacing[0])))
    struct = ndimage.generate_binary_structure(2, 1)
    for k in ks:
        z = zs[k]
        cav = labels[k] == cav_code
        if not cav.any():
            continue
        med = hull_lut[labels[k]]
        if extra_hull is not None:
            med |= extra_hull[k]
        region = cav & (z > dia) & (z < apex)
        if not region.any():
            continue
        if med.any():
            # hull on the bounding box of the mediastinal structures only (speed)
            jj = np.nonzero(med.any(axis=1))[0]
            ii = np.nonzero(med.any(axis=0))[0]
            j0, j1 = max(jj[0] - dil - 1, 0), jj[-1] + dil + 2
            i0, i1 = max(ii[0] - dil - 1, 0), ii[-1] + dil + 2
            hull = np.zeros_like(med)
            crop = convex_hull_image(med[j0:j1, i0:i1])
            hull[j0:j1, i0:i1] = ndimage.binary_dilation(crop, struct, iterations=dil)
            region &= ~hull
        if not region.any():
            continue
        right = region & (xx < 0)
        left = region & (xx >= 0)
        lower_r = z < oblique_fissure_z(yy, left=False)
        lower_l = z < oblique_fissure_z(yy, left=True)
        middle = z < horizontal_fissure_z(yy)
        sl = out[k]
        sl[right & lower_r] = codes["lung_lower_lobe_right"]
        sl[right & ~lower_r & middle] = codes["lung_middle_lobe_right"]
        sl[right & ~lower_r & ~middle] = codes["lung_upper_lobe_right"]
        sl[left & lower_l] = codes["lung_lower_lobe_left"]
        sl[left & ~lower_l] = codes["lung_upper_lobe_left"]
    return out
