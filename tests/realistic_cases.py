"""Studies with a realistic PET for the noise and physiology tests: phantoms and real CTs.

PET everywhere: :data:`nstage.phantom.pet.REALISTIC` (own 4.07 x 4.07 x 4.0 mm grid with its
own origin, 6.5 mm FWHM, Gaussian noise with variance proportional to the activity and a
liver coefficient of variation of 12 % per voxel, liver SUV 2.0, blood pool 1.6).

Real CTs (``../shared/data/real``), with uptake placed by reading rendered axial slices
(positions in mm LPS: +x patient LEFT, +y POSTERIOR, +z SUPERIOR):

Lung-PET-CT-Dx A0001 (5 mm slices, neck base z = -124 to upper abdomen z = -439, carina
z = -249, large LEFT upper-lobe paravertebral tumour with its core at (52, 205, -209)):

- blood pool (SUV 1.6): soft tissue (-20..120 HU) of the mediastinum from the arch to the heart
  (x -80..70, y 60..235, z -300..-200), of the heart (x -60..65, y 55..165, z -364..-280; read
  at z = -304..-364: the heart fills x -45..60, y 50..165) and the descending aorta beside the
  spine down to the diaphragm (x -8..24, y 184..216; read at z = -244..-389, a 14 mm radius
  circle at about (8, 200));
- liver (SUV 2.0): 20-100 HU below the right dome (x -150..40, y 40..230, z < -365; the liver
  fills the right abdomen from z = -364 down);
- tumour (SUV 10): soft tissue within 20 mm of (52, 205, -209);
- left-ventricular wall (hot myocardium, SUV 9): a 10-11 mm thick ellipsoidal shell round
  (28, 112, -335) (the LV lies left-posterior-inferior in the heart, read at z = -319..-349);
- brown fat (SUV 8 in fat voxels, -150..-40 HU): both supraclavicular fossae at the neck
  base, lateral to the carotids, above the clavicles (read at z = -144..-174: fat between the
  neck muscles at x 30..75 left and -95..-45 right, y 120..190), ellipsoids round (50, 155,
  -157) and its mirror (-70, 155, -157) about the midline x = -10 (trachea and spine);
- oesophagus (SUV 4, mild linear uptake): a 16 mm wide tube at (-9, 178) from z = -300 to
  -180 (read at z = -244..-274: round soft tissue between the trachea / left atrium and the
  spine, right of the descending aorta);
- marrow (SUV 2.9, mildly raised): cancellous bone (150..700 HU) of the spine (x -45..15,
  y 185..245);
- granulomatous hila: 12 mm nodes (activity 4.6, blurred SUVmax about 3.2) at the right hilum
  (-45, 158, -270), lateral to the right main bronchus, and the left hilum (44, 186, -268),
  lateral to the left main bronchus below the left pulmonary artery (read at z = -264..-274);
- true nodes: 4R at (-25, 156, -224), against the right tracheal wall 25 mm above the carina
  in mediastinal fat (contralateral mediastinal for the left primary: N3); 1L at
  (48, 150, -157), in the left supraclavicular fat, inside the brown fat above (station 1:
  N3 whatever the side).

NSCLC-Radiomics LUNG1-002 (3 mm slices, contrast, z -133..197, large RIGHT lower-lobe tumour
with its planning contour GTV-1, the heart with its planning contour; clinical T2 N0 M0):

- tumour (SUV 10): the GTV-1 contour; blood pool (SUV 1.6): the heart contour and contrast
  blood (100..450 HU) in the mediastinum (x -70..80, y -75..60, z -90..125) outside the spine;
  liver (SUV 2.0): 40..160 HU under the right dome (x -150..20, z < -40);
- left-ventricular wall (SUV 9): a shell round (65, -40, -40) inside the heart contour (the
  LV is the left-lateral part of the heart at z = -25..-55);
- brown fat (SUV 8 in fat voxels): supraclavicular fossae at z = 150..175, ellipsoids round
  (55, 0, 162) and (-62, 0, 162);
- oesophagus (SUV 4): a 16 mm tube from (-2, 10) at z = 110 through (-3, 12) at z = 70 and
  (2, 18) at z = 40 to (8, 28) at z = 0 (read at z = 88..0: behind the trachea, then between
  the left atrium and the descending aorta);
- marrow (SUV 2.9): cancellous bone of the spine (x -25..20, y 20..85);
- granulomatous hila: 12 mm nodes at (-48, 8, 36) (right, at the bronchus intermedius, 4 mm
  above the top of GTV-1: at PET resolution a shoulder on the tumour's flank, no maximum of
  its own) and (52, 8, 36) (left, in the soft tissue (28-49 HU) between the lower-lobe
  bronchus and the interlobar artery, just below the left pulmonary artery, which fills
  (52, 8) from z = 39 up at 130-147 HU: a node there is soft tissue, not "calcified");
- true node: 4R at (-20, -2, 76), against the right tracheal wall above the azygos arch
  (z = 73) in this thin patient's narrow right paratracheal stripe (ipsilateral mediastinal
  for the right primary: N2).
- hidden hilar node: 10R (activity 6) where the right granulomatous twin sits, at the bronchus
  intermedius 4 mm above GTV-1: a shoulder on the tumour's flank at PET resolution
  (ipsilateral hilar for the right primary: N1).

Lung-PET-CT-Dx A0002 (the DICOM series: 30 slices at 8 mm, 0.65 mm pixels, no contrast; z = 80
(upper abdomen: liver, stomach) to 312 (thoracic inlet, above the lung apices, which end at
z = 304); trachea centre (-17, -118) at z = 248; carina between z = 240 (one lumen) and 232
(right (-23, -113) and left (-3, -116) main bronchi); right primary, boxed by the annotators
on z = 176..248, x -103..-22, y -131..-64):

- tumour (SUV 10): soft tissue (-400..150 HU) inside the per-slice boxes: a right hilar /
  perihilar mass round the right main and intermediate bronchi, running down into the lower
  lobe (a spiculated part at (-60, -95) on z = 176..192);
- blood pool (SUV 1.6): soft tissue (-20..120 HU) of the heart and mediastinum (x -90..70,
  y -235..-92, z 136..280; the heart fills x -80..60, y -225..-120 at z = 168..192) and an
  11 mm radius tube along the descending aorta, read slice by slice in front of and left of
  the spine (:data:`A0002_AORTA`: (16, -103) at z = 240, (10, -104) at 200, (0, -112) at 184,
  (-8..-10, -112..-114) from 168 down);
- liver (SUV 2.0): 20..100 HU for x < 15 at z <= 150 (the liver fills the right upper
  abdomen from z = 144 down) and for x < -48 at z = 150..162 (its dome right of the heart);
- left-ventricular wall (SUV 9): an 11 mm thick shell round (25, -168, 164) in the heart's
  soft tissue outside the liver (the left-lateral, posterior part of the heart at
  z = 152..184; the right part of the heart holds the atria and right ventricle);
- brown fat (SUV 8 in fat voxels): the slab's top two slices (z = 304, 312) reach the
  supraclavicular fat: fat between the neck vessels lateral to the trachea (-13, -134), above
  the apices and the medial clavicles (z = 296); ellipsoids round (34, -125, 308) and its
  mirror (-60, -125, 308) about the midline x = -13;
- oesophagus (SUV 4): a 7 mm radius tube along :data:`A0002_OESOPHAGUS`: behind the trachea
  at (-12, -119) at z = 296 and (-10, -106..-110) at z = 248..264, between the right bronchus
  and the spine at (-12, -103) at z = 232 and (-9, -104) at 216, right of the aorta at
  (-14, -103) at 200, then forward to (-18, -117) at 168 and (-8, -131) at 144 (air in its
  lumen at z = 136..144, in front of the aorta);
- marrow (SUV 2.9): cancellous bone (150..700 HU) of the spine (x -30..25, y -110..-30);
- granulomatous hila: not placed. The primary IS the right hilum (the boxes cover it from
  z = 176 to 248), so a right hilar node lies in the tumour's uptake (tried 7 mm in front of
  the boxes at (-50, -136, 228): blurred SUVmax 5.2, the tumour's own tail, no separate
  focus). What remains visible is one left hilar node of SUVmax about 3.5, which by the rules
  (contralateral hilar, above the blood pool and >= 2.5: CLINICAL.md 1 and 3) is N3, not a
  benign confounder on this CT. Thymus: not placed (optional, as on the other CTs);
- true nodes: 7 at (-8, -113, 220), 14 mm (on the slices z = 216 and 224): subcarinal,
  between the right main bronchus (-25, -110) and the left main bronchus (6, -116) at
  z = 224, 12-20 mm below the carina, in front of the oesophagus (N2 whatever the side);
  4L at (-1, -120, 244), 12 mm (on z = 240 and 248): in the fat between the left tracheal
  wall (lumen edge x = -10 at z = 248) and the aortic arch / descending aorta (medial edge
  x = 1..3 at y = -120), below the arch top (z about 268) and above the left pulmonary
  artery (contralateral mediastinal for the right primary: N3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from nstage.phantom import PhantomSpec, make_phantom
from nstage.pipeline import RunOptions, stage_study
from nstage.study import ImageGeometry, Study, StudyMeta

DEFAULTS = RunOptions(anatomy="classical", lesions="suv", report=False)
ALL_PHYSIOLOGY = frozenset({"hot-myocardium", "brown-fat", "oesophagus", "thymus", "marrow",
                            "granulomatous-hila"})


def study_of(ct: sitk.Image, pet: sitk.Image, source: str) -> Study:
    return Study(ct=ct, pet=pet, ct_geometry=ImageGeometry.of(ct),
                 meta=StudyMeta(ct_source=source, pet_source="realistic synthetic PET (test)",
                                suv_source="synthetic PET made in SUV"))


@lru_cache(maxsize=4)
def phantom_staged(spec: PhantomSpec):
    """(phantom, result dict) of a realistic phantom staged with the embedded defaults."""
    ph = make_phantom(spec)
    staged = stage_study(study_of(ph.ct, ph.pet, "phantom"), DEFAULTS)
    return ph, staged.result


def counted(result: dict) -> list[str]:
    """Distinct stations of the positive nodes that carry an N category."""
    return sorted({n["station"] for n in result["nodes"] if n["n_category"]})


def describe(result: dict) -> str:
    """Everything found, for assertion messages."""
    lines = [f"{result['n_stage']}/{result['n_stage_9th']} counted {counted(result)} "
             f"reasons {result['reasons']} reference {result['reference_suv']}"]
    p = result["primary_tumor"]
    lines.append(f"  primary {None if p is None else (p['side'], p['centroid_mm'])}")
    for key in ("nodes", "negative_node_candidates", "other_lesions"):
        lines += [f"  {key}: {n.get('station')} {n['centroid_mm']} SUVmax {n['suv_max']} "
                  f"{n['volume_ml']} ml: {n['reason'][:120]}" for n in result[key]]
    lines += [f"  suppressed {s['structure']} {s['centroid_mm']} SUVmax {s['suv_max']} "
              f"{s['volume_ml']} ml: {s['reason'][:120]}" for s in result["suppressed_uptake"]]
    return "\n".join(lines)


def near(items: list[dict], point, tol_mm: float) -> list[dict]:
    p = np.asarray(point, float)
    return [i for i in items if np.linalg.norm(np.asarray(i["centroid_mm"]) - p) <= tol_mm]


# ---------------------------------------------------------------------------- real CTs

@dataclass(frozen=True)
class RealCase:
    """A real CT with the uptake named by ``confounders`` and ``nodes`` (see the module
    docstring), PET noise ``seed``."""

    ct: str
    confounders: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    seed: int = 1


def _a0001(real_path):
    from nstage.geometry import canonical
    from nstage.io import read_ct
    from nstage.phantom.realct import Focal, Region, box_mask, coordinates_mm, ellipsoid_mask

    ct = canonical(read_ct(real_path("lung-pet-ct-dx-A0001", "ct.mha"))[0])
    hu = sitk.GetArrayFromImage(ct)
    soft = (hu > -20) & (hu < 120)
    fat = (hu > -150) & (hu < -40)
    z, y, x = coordinates_mm(ct)
    base = [
        Region("mediastinal blood", box_mask(ct, ((-80, 70), (60, 235), (-300, -200))) & soft,
               1.6),
        Region("heart blood", box_mask(ct, ((-60, 65), (55, 165), (-364, -280))) & soft, 1.6),
        Region("descending aorta", box_mask(ct, ((-8, 24), (184, 216), (-440, -240))) & soft,
               1.6),
        Region("liver", box_mask(ct, ((-150, 40), (40, 230), (-440, -365)))
               & (hu > 20) & (hu < 100), 2.0),
        Region("tumour", ellipsoid_mask(ct, (52, 205, -209), (20, 20, 20))
               & (hu > -400) & (hu < 150), 10.0),
    ]
    lv = (ellipsoid_mask(ct, (28, 112, -335), (30, 28, 32))
          & ~ellipsoid_mask(ct, (28, 112, -335), (19, 17, 21)) & soft)
    confounders = {
        "hot-myocardium": ([Region("left-ventricular wall", lv, 9.0)], []),
        "brown-fat": ([Region("brown fat", (ellipsoid_mask(ct, (50, 155, -157), (22, 30, 16))
                                            | ellipsoid_mask(ct, (-70, 155, -157),
                                                             (22, 30, 16))) & fat, 8.0)], []),
        "oesophagus": ([Region("oesophagus", ((x + 9) ** 2 + (y - 178) ** 2 <= 64)
                               & (z > -300) & (z < -180) & (hu > -500) & (hu < 150), 4.0)],
                       []),
        "marrow": ([Region("marrow", box_mask(ct, ((-45, 15), (185, 245), (-430, -130)))
                           & (hu >= 150) & (hu < 700), 2.9)], []),
        "granulomatous-hila": ([], [Focal.sphere("10R", (-45, 158, -270), 12, 4.6),
                                    Focal.sphere("10L", (44, 186, -268), 12, 4.6)]),
    }
    nodes = {"4R": Focal.sphere("4R", (-25, 156, -224), 12, 9.0),
             "1L": Focal.sphere("1L", (48, 150, -157), 12, 7.0)}
    return ct, base, confounders, nodes


def _lung1_002(real_path):
    from nstage.geometry import canonical
    from nstage.phantom.realct import Focal, Region, box_mask, coordinates_mm, ellipsoid_mask

    folder = "nsclc-radiomics-LUNG1-002"
    ct = canonical(sitk.ReadImage(str(real_path(folder, "ct.mha"))))
    hu = sitk.GetArrayFromImage(ct)
    heart = sitk.GetArrayFromImage(canonical(sitk.ReadImage(str(real_path(folder,
                                                                          "heart.mha"))))) > 0
    gtv = sitk.GetArrayFromImage(canonical(sitk.ReadImage(str(real_path(folder,
                                                                        "gtv1.mha"))))) > 0
    z, y, x = coordinates_mm(ct)
    fat = (hu > -150) & (hu < -40)
    spine = (np.abs(x) < 28) & (y > 18)
    base = [
        Region("liver", box_mask(ct, ((-150, 20), (-100, 100), (-134, -40)))
               & (hu > 40) & (hu < 160), 2.0),
        Region("contrast blood", box_mask(ct, ((-70, 80), (-75, 60), (-90, 125)))
               & (hu > 100) & (hu < 450) & ~spine, 1.6),
        Region("heart (planning contour)", heart, 1.6),
        Region("tumour (GTV-1)", gtv, 10.0),
    ]
    zs, xs, ys = np.array([0, 40, 70, 110]), np.array([8, 2, -3, -2]), np.array([28, 18, 12, 10])
    oes = (((x - np.interp(z, zs, xs)) ** 2 + (y - np.interp(z, zs, ys)) ** 2 <= 64)
           & (z > 0) & (z < 110) & (hu > -500) & (hu < 150))
    lv = (ellipsoid_mask(ct, (65, -40, -40), (40, 35, 35))
          & ~ellipsoid_mask(ct, (65, -40, -40), (29, 24, 24)) & heart)
    confounders = {
        "hot-myocardium": ([Region("left-ventricular wall", lv, 9.0)], []),
        "brown-fat": ([Region("brown fat", (ellipsoid_mask(ct, (55, 0, 162), (22, 25, 15))
                                            | ellipsoid_mask(ct, (-62, 0, 162), (22, 25, 15)))
                              & fat, 8.0)], []),
        "oesophagus": ([Region("oesophagus", oes, 4.0)], []),
        "marrow": ([Region("marrow", box_mask(ct, ((-25, 20), (20, 85), (-133, 197)))
                           & (hu >= 150) & (hu < 700), 2.9)], []),
        "granulomatous-hila": ([], [Focal.sphere("10R", (-48, 8, 36), 12, 4.6),
                                    Focal.sphere("10L", (52, 8, 36), 12, 4.6)]),
    }
    nodes = {"4R": Focal.sphere("4R", (-20, -2, 76), 12, 9.0),
             "10R": Focal.sphere("10R", (-48, 8, 36), 12, 6.0)}
    return ct, base, confounders, nodes


def _a0002_tumour(ct: sitk.Image, hu: np.ndarray, real_path) -> np.ndarray:
    """Soft tissue (-400..150 HU) inside the annotators' per-slice tumour boxes of A0002
    (PASCAL-VOC pixel boxes named by the slice's SOPInstanceUID; boxes of slices outside
    this 30-slice extract are skipped)."""
    import xml.etree.ElementTree as ET

    import pydicom

    from nstage.phantom.realct import coordinates_mm

    folder = "lung-pet-ct-dx-A0002"
    ct_dir, box_dir = real_path(folder, "ct"), real_path(folder, "tumor-boxes")
    slices = {}
    for f in sorted(ct_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        slices[ds.SOPInstanceUID] = ds
    z, y, x = coordinates_mm(ct)
    out = np.zeros(hu.shape, bool)
    for xml in sorted(box_dir.glob("*.xml")):
        ds = slices.get(xml.stem)
        if ds is None:
            continue
        bb = ET.parse(xml).getroot().find("object/bndbox")
        x0, y0, x1, y1 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        px, py, pz = (float(v) for v in ds.ImagePositionPatient)
        row, col = (float(v) for v in ds.PixelSpacing)
        # axial slices, identity in-plane orientation: columns along +x, rows along +y
        k = int(np.argmin(np.abs(z.ravel() - pz)))
        inside = ((x[0] >= px + x0 * col) & (x[0] <= px + x1 * col)
                  & (y[0] >= py + y0 * row) & (y[0] <= py + y1 * row))
        out[k] = inside & (hu[k] > -400) & (hu[k] < 150)
    return out


def _tube(z, y, x, path: dict[float, tuple[float, float]], radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of a vertical centre line given as {z: (x, y)} mm (linear
    between the given levels, nothing outside them)."""
    zs = np.array(sorted(path), float)
    xs, ys = (np.array([path[k][i] for k in sorted(path)], float) for i in (0, 1))
    cx, cy = np.interp(z, zs, xs), np.interp(z, zs, ys)
    return (((x - cx) ** 2 + (y - cy) ** 2 <= radius_mm ** 2)
            & (z >= zs[0]) & (z <= zs[-1]))


# A0002, read on the axial slices (see the module docstring): centre lines {z: (x, y)} mm
# of the descending aorta and the oesophagus, the left ventricle's centre (x, y, z) mm.
A0002_AORTA = {88: (-8, -110), 120: (-8, -112), 136: (-9, -112), 152: (-10, -114),
               160: (-8, -112), 168: (-6, -112), 176: (-2, -111), 184: (0, -112),
               192: (5, -110), 200: (10, -104), 216: (15, -102), 240: (16, -103)}
A0002_OESOPHAGUS = {136: (-7, -131), 144: (-8, -131), 152: (-12, -126), 160: (-17, -123),
                    168: (-18, -117), 176: (-15, -110), 184: (-12, -103), 200: (-14, -103),
                    216: (-9, -104), 232: (-12, -103), 248: (-10, -106), 264: (-10, -110),
                    280: (-17, -113), 296: (-12, -119)}
A0002_LV_CENTRE = (25, -168, 164)


def _a0002(real_path):
    from nstage.geometry import canonical
    from nstage.io import read_ct
    from nstage.phantom.realct import Focal, Region, box_mask, coordinates_mm, ellipsoid_mask

    ct = canonical(read_ct(real_path("lung-pet-ct-dx-A0002", "ct"))[0])
    hu = sitk.GetArrayFromImage(ct)
    soft = (hu > -20) & (hu < 120)
    fat = (hu > -150) & (hu < -40)
    z, y, x = coordinates_mm(ct)
    liver = ((box_mask(ct, ((-140, 15), (-235, -50), (80, 150)))
              | box_mask(ct, ((-140, -48), (-235, -50), (150, 162))))
             & (hu > 20) & (hu < 100))
    aorta = _tube(z, y, x, A0002_AORTA, 11.0) & soft
    base = [
        Region("mediastinal blood", box_mask(ct, ((-90, 70), (-235, -92), (136, 280))) & soft,
               1.6),
        Region("descending aorta", aorta, 1.6),
        Region("liver", liver, 2.0),
        Region("tumour (annotators' boxes)", _a0002_tumour(ct, hu, real_path), 10.0),
    ]
    c = A0002_LV_CENTRE
    lv = (ellipsoid_mask(ct, c, (32, 30, 30)) & ~ellipsoid_mask(ct, c, (21, 19, 19))
          & soft & ~liver)
    oes = _tube(z, y, x, A0002_OESOPHAGUS, 7.0) & (hu > -500) & (hu < 150)
    confounders = {
        "hot-myocardium": ([Region("left-ventricular wall", lv, 9.0)], []),
        "brown-fat": ([Region("brown fat", (ellipsoid_mask(ct, (34, -125, 308), (18, 15, 10))
                                            | ellipsoid_mask(ct, (-60, -125, 308),
                                                             (18, 15, 10))) & fat, 8.0)], []),
        "oesophagus": ([Region("oesophagus", oes, 4.0)], []),
        "marrow": ([Region("marrow", box_mask(ct, ((-30, 25), (-110, -30), (80, 312)))
                           & (hu >= 150) & (hu < 700), 2.9)], []),
    }
    # No granulomatous hila: the right hilum is the primary (see the module docstring).
    nodes = {"7": Focal.sphere("7", (-8, -113, 220), 14, 9.0),
             "4L": Focal.sphere("4L", (-1, -120, 244), 12, 9.0)}
    return ct, base, confounders, nodes


_REAL = {"A0001": _a0001, "LUNG1-002": _lung1_002, "A0002": _a0002}
_CT_CACHE: dict = {}


def real_scene(name: str, real_path):
    """(ct, base regions, confounders, nodes) of a real CT (cached, one at a time)."""
    if name not in _CT_CACHE:
        _CT_CACHE.clear()
        _CT_CACHE[name] = _REAL[name](real_path)
    return _CT_CACHE[name]


@lru_cache(maxsize=2)
def _real_staged(case: RealCase, real_path):
    from nstage.phantom.realct import realistic_pet

    ct, base, confounders, nodes = real_scene(case.ct, real_path)
    regions, lesions = list(base), []
    for name in case.confounders:
        r, les = confounders[name]
        regions += r
        lesions += les
    lesions += [nodes[n] for n in case.nodes]
    syn = realistic_pet(ct, regions=regions, lesions=lesions, seed=case.seed)
    staged = stage_study(study_of(syn.ct, syn.pet, case.ct), DEFAULTS)
    return syn, staged.result


def real_staged(case: RealCase, real_path):
    """(RealCtPet, result dict) of a real CT case staged with the embedded defaults."""
    return _real_staged(case, real_path)
