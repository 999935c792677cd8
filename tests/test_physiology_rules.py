"""The physiology judgement (:func:`nstage.lesions.physiology.judge`) on hand-built regions.

A small 2 mm grid (LPS, array order z, y, x) with no anatomy: two grown regions side by side
in the neck fat, as the SUV backend hands them over (region ids, one seed each). Left: a brown
fat lobule, fat density (-100 HU) at SUV 3.5 with its lobule border blurred. Right: a piece of
uptake over soft tissue (40 HU: the muscle and vessels between brown-fat lobules, or a node).
Expectations are written from the rules in CLINICAL.md 3 (brown fat is a false-positive
source; a node inside brown fat must still be found when it is focal and node-shaped):

- a 20 mm soft-tissue piece at the fat's own level (activity 2.6; blurred SUVmax 2.9, above
  the 2.5 threshold, against the fat's median 3.1) is the same brown-fat uptake split off it:
  suppressed as brown fat, nothing kept;
- a compact 12 mm soft-tissue focus twice as hot as the fat (activity 7, blurred SUVpeak 5.7)
  is a node: kept;
- the same faint piece 10 mm away from the fat (not grown together with it) is not brown fat
  by this rule: it stays a lesion for the later steps to judge.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage.anatomy.base import Anatomy
from nstage.lesions import physiology
from nstage.lesions.suv import _Candidate
from nstage.thresholds import resolve

SPACING = 2.0  # mm, isotropic
SHAPE = (30, 40, 60)  # z, y, x voxels


def _scene(piece_suv: float, gap_vox: int, piece_half: int = 5):
    """(regions, candidates, context) of a fat lobule (x voxels 10..29) and a soft-tissue piece
    ``gap_vox`` voxels to its right, ``2 * piece_half`` voxels wide."""
    ct = sitk.Image(SHAPE[::-1], sitk.sitkFloat32)
    ct.SetSpacing((SPACING,) * 3)
    hu = np.full(SHAPE, -100.0, dtype=np.float32)
    suv = np.full(SHAPE, 0.7, dtype=np.float32)
    regions = np.zeros(SHAPE, dtype=np.int32)
    zc, yc = 15, 20
    fat = np.zeros(SHAPE, dtype=bool)
    fat[zc - 6:zc + 6, yc - 8:yc + 8, 10:30] = True
    suv[fat] = 3.5
    x0 = 30 + gap_vox
    piece = np.zeros(SHAPE, dtype=bool)
    piece[zc - piece_half:zc + piece_half, yc - piece_half:yc + piece_half,
          x0:x0 + 2 * piece_half] = True
    hu[piece] = 40.0
    suv[piece] = piece_suv
    # PET resolution: the regions are what the backend grew on the blurred image.
    blurred = ndi.gaussian_filter(suv, 6.5 / 2.355 / SPACING).astype(np.float32)
    regions[fat] = 1
    regions[piece] = 2
    smooth = ndi.gaussian_filter(blurred, 1.0).astype(np.float32)
    th = resolve(None)["detection"]
    anatomy = Anatomy(labels=np.zeros(SHAPE, dtype=np.uint8), names={}, reference=ct,
                      backend="classical")
    ctx = physiology.Context(ct=ct, suv=blurred, hu=hu, anatomy=anatomy,
                             spacing=(SPACING,) * 3, th=th, threshold=2.5, smooth=smooth,
                             blood_pool=1.5)
    cands = []
    for rid, mask in ((1, fat), (2, piece)):
        kji = np.unravel_index(int(np.argmax(np.where(mask, blurred, -1.0))), SHAPE)
        cands.append(_Candidate(tuple(int(v) for v in kji), float(blurred[kji]),
                                float(smooth[kji]), region_id=rid))
    return regions, cands, ctx, fat, piece


def test_soft_tissue_piece_grown_together_with_brown_fat_is_that_brown_fat():
    regions, cands, ctx, fat, piece = _scene(piece_suv=2.6, gap_vox=0)
    out, records = physiology.judge(regions, cands, ctx)
    assert not out.any()
    structures = sorted(r.structure for r in records)
    assert structures == ["brown fat", "brown fat"], records
    piece_record = next(r for r in records if "grown together with brown fat" in r.reason)
    assert "not standing out" in piece_record.reason


def test_node_grown_together_with_brown_fat_is_kept():
    regions, cands, ctx, fat, piece = _scene(piece_suv=7.0, gap_vox=0, piece_half=3)
    out, records = physiology.judge(regions, cands, ctx)
    assert out[piece].mean() > 0.5, records
    assert not out[fat].any()
    assert [r.structure for r in records] == ["brown fat"]


def test_faint_soft_tissue_uptake_apart_from_brown_fat_is_not_called_brown_fat():
    regions, cands, ctx, fat, piece = _scene(piece_suv=2.6, gap_vox=5)
    out, records = physiology.judge(regions, cands, ctx)
    assert out[piece].all(), records
    assert [r.structure for r in records] == ["brown fat"]


# ----------------------------------------------------------------- continuation of marrow

def _spine_scene(piece_centre_x: int):
    """A spine column (label "spine", x voxels 8..17) holding 60 mm of marrow uptake (SUV 3,
    cancellous bone 300 HU), a warm band (SUV 2.4, not a grown region: the uptake of the tissue
    in between) from the spine to the right, and a faint 12 mm soft-tissue node (activity 2.8,
    about a granulomatous hilar node's) centred at x voxel ``piece_centre_x``."""
    ct = sitk.Image(SHAPE[::-1], sitk.sitkFloat32)
    ct.SetSpacing((SPACING,) * 3)
    hu = np.full(SHAPE, 40.0, dtype=np.float32)
    suv = np.full(SHAPE, 1.5, dtype=np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    spine = np.zeros(SHAPE, dtype=bool)
    spine[:, 14:26, 8:18] = True
    labels[spine] = 1
    hu[spine] = 300.0
    suv[spine] = 3.0
    band = np.zeros(SHAPE, dtype=bool)
    band[12:18, 17:23, 18:60] = True
    suv[band] = 2.4
    node = np.zeros(SHAPE, dtype=bool)
    c = piece_centre_x
    node[12:18, 17:23, c - 3:c + 3] = True
    suv[node] = 2.8
    blurred = ndi.gaussian_filter(suv, 6.5 / 2.355 / SPACING).astype(np.float32)
    smooth = ndi.gaussian_filter(blurred, 1.0).astype(np.float32)
    regions = np.zeros(SHAPE, dtype=np.int32)
    regions[spine & (blurred >= 2.5)] = 1
    core = node & (blurred >= 2.5)
    regions[core] = 2
    th = resolve(None)["detection"]
    anatomy = Anatomy(labels=labels, names={1: "spine"}, reference=ct, backend="classical")
    ctx = physiology.Context(ct=ct, suv=blurred, hu=hu, anatomy=anatomy,
                             spacing=(SPACING,) * 3, th=th, threshold=2.5, smooth=smooth,
                             blood_pool=1.5)
    cands = []
    for rid in (1, 2):
        mask = regions == rid
        kji = np.unravel_index(int(np.argmax(np.where(mask, blurred, -1.0))), SHAPE)
        cands.append(_Candidate(tuple(int(v) for v in kji), float(blurred[kji]),
                                float(smooth[kji]), region_id=rid))
    return regions, cands, ctx, core


def test_faint_node_joined_to_the_marrow_by_warm_tissue_is_not_marrow():
    """The node 40 mm right of the spine (x voxel 38), joined to the marrow uptake by tissue
    that never dips below its own SUVpeak's saddle level: marrow uptake lies in bone
    (CLINICAL.md 3 lists marrow as physiological uptake of the bone), so the node is not a
    continuation of the marrow and stays a lesion."""
    regions, cands, ctx, node = _spine_scene(38)
    assert node.any() and not (regions[:, :, 18:30] > 0).any()
    out, records = physiology.judge(regions, cands, ctx)
    assert out[node].all(), records
    assert all(r.structure == "bone marrow" for r in records), records


# ---------------------------------------------------------------- gas in a lumen

def _lumen_scene(wall_suv: float, lung_touches: bool):
    """A 16 mm soft-tissue tube segment (40 HU) with a 6 mm gas lumen (-900 HU) in
    mediastinal soft tissue, uptake ``wall_suv`` in its wall; a lung mask 20 mm to its right, or reaching
    the lumen (``lung_touches``: the gas is then the lung's edge, not a lumen)."""
    ct = sitk.Image(SHAPE[::-1], sitk.sitkFloat32)
    ct.SetSpacing((SPACING,) * 3)
    k, j, i = np.indices(SHAPE)
    hu = np.full(SHAPE, 20.0, dtype=np.float32)  # mediastinal soft tissue round it
    suv = np.full(SHAPE, 1.0, dtype=np.float32)
    r2 = (j - 20) ** 2 + (i - 30) ** 2
    tube = (r2 <= 16) & (k >= 11) & (k < 19)
    lumen = (r2 <= 2) & (k >= 12) & (k < 18)
    hu[tube] = 40.0
    hu[lumen] = -900.0
    suv[tube & ~lumen] = wall_suv
    labels = np.zeros(SHAPE, dtype=np.uint8)
    lung = (i >= 40) & (i < 55)
    if lung_touches:
        lung |= (j == 20) & (i > 30) & (k >= 12) & (k < 18)
    labels[lung] = 1
    hu[lung] = -850.0
    blurred = ndi.gaussian_filter(suv, 6.5 / 2.355 / SPACING).astype(np.float32)
    smooth = ndi.gaussian_filter(blurred, 1.0).astype(np.float32)
    regions = np.zeros(SHAPE, dtype=np.int32)
    regions[(blurred >= 0.6 * blurred.max()) & ~lung] = 1
    th = resolve(None)["detection"]
    anatomy = Anatomy(labels=labels, names={1: "lung_left"}, reference=ct, backend="classical")
    ctx = physiology.Context(ct=ct, suv=blurred, hu=hu, anatomy=anatomy,
                             spacing=(SPACING,) * 3, th=th, threshold=2.5, smooth=smooth,
                             blood_pool=1.5)
    kji = np.unravel_index(int(np.argmax(np.where(regions > 0, blurred, -1.0))), SHAPE)
    cands = [_Candidate(tuple(int(v) for v in kji), float(blurred[kji]), float(smooth[kji]),
                        region_id=1)]
    return regions, cands, ctx


def test_mild_uptake_round_gas_outside_lung_and_airway_is_the_oesophageal_wall():
    """SUV 4 in the wall round an enclosed 6 mm gas lumen (Lung-PET-CT-Dx A0002 shows one in
    the oesophagus near the hiatus): oesophageal uptake, not a node (a node holds no gas)."""
    regions, cands, ctx = _lumen_scene(4.0, lung_touches=False)
    assert (regions > 0).any() and (ctx.hu[regions > 0] < -500).sum() * 0.008 >= 0.05
    out, records = physiology.judge(regions, cands, ctx)
    assert not out.any()
    assert [r.structure for r in records] == ["oesophagus"], records
    assert "gas" in records[0].reason


def test_gas_joined_to_the_lung_or_hot_uptake_round_gas_is_not_a_lumen():
    """Gas that reaches the lung mask is the lung's edge; uptake round gas hotter than
    oesophageal uptake (SUV 12: SUVpeak above ``oesophagus_max_suv``, a cavitating tumour or
    node) is not physiological: both stay lesions."""
    for wall, touches in ((4.0, True), (12.0, False)):
        regions, cands, ctx = _lumen_scene(wall, lung_touches=touches)
        out, records = physiology.judge(regions, cands, ctx)
        assert out[regions > 0].all() and records == [], (wall, touches, records)
