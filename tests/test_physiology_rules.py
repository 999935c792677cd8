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
