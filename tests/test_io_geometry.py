"""Orientation handling and writers: flipped/permuted inputs give the same values at the same
physical points; label images go back onto the CT's exact input grid; atomic writes."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from test_io_refusals import bqml_volume, write_pet_dicom

from nstage.geometry import index_to_mm
from nstage.io import load_study, write_image_atomic, write_json_atomic, write_label_image


def smooth_volume(shape, seed=0):
    """Distinct values everywhere, so any axis mix-up shows."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 3.0, size=shape).astype(np.float32)


def canonical_image(array, spacing, origin):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def reorient(img: sitk.Image, direction: np.ndarray) -> sitk.Image:
    """Same voxels in space, stored with another signed-permutation ``direction``
    (columns = physical direction of the new i, j, k axes)."""
    direction = np.asarray(direction, float)
    size = np.array(img.GetSize())
    spacing = np.array(img.GetSpacing())
    perm = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]
    lo = np.array(img.GetOrigin())
    hi = np.array(img.TransformIndexToPhysicalPoint([int(s - 1) for s in size]))
    origin = np.array([lo[p] if direction[p, a] > 0 else hi[p] for a, p in enumerate(perm)])
    origin_xyz = np.empty(3)
    for a, p in enumerate(perm):
        origin_xyz[p] = origin[a]
    ref = sitk.Image([int(size[p]) for p in perm], img.GetPixelID())
    ref.SetSpacing([float(spacing[p]) for p in perm])
    ref.SetOrigin(origin_xyz.tolist())
    ref.SetDirection(direction.ravel().tolist())
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, -999,
                         img.GetPixelID())


FLIP_X = np.diag([-1.0, 1.0, 1.0])
FLIP_Z = np.diag([1.0, 1.0, -1.0])
# i along -z (superior to inferior), j along +x, k along -y: permuted and flipped.
PERMUTED = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def sample(image: sitk.Image, points) -> np.ndarray:
    return np.array([image[image.TransformPhysicalPointToIndex(p)] for p in points])


def voxel_centres(image: sitk.Image, step=1):
    size = image.GetSize()
    return [image.TransformIndexToPhysicalPoint((i, j, k))
            for i in range(0, size[0], step) for j in range(0, size[1], step)
            for k in range(0, size[2], step)]


@pytest.fixture()
def pair(tmp_path):
    ct_arr = np.full((8, 12, 10), -1000, np.int16)
    ct_arr[1:-1, 2:-2, 2:-2] = np.arange(6 * 8 * 6).reshape(6, 8, 6) % 200
    ct = canonical_image(ct_arr, (2.0, 2.5, 3.0), (-10.0, -20.0, -5.0))
    pet = canonical_image(smooth_volume((5, 7, 6)), (4.0, 4.5, 5.0), (-12.0, -21.0, -6.0))
    return tmp_path, ct, pet


def test_flipped_pet_gives_same_suv_at_same_points(pair):
    tmp, ct, pet = pair
    sitk.WriteImage(ct, str(tmp / "ct.mha"))
    sitk.WriteImage(pet, str(tmp / "pet.mha"))
    points = voxel_centres(pet)
    reference = load_study(tmp / "ct.mha", tmp / "pet.mha")
    for name, direction in (("flipx", FLIP_X), ("flipz", FLIP_Z), ("perm", PERMUTED)):
        moved = reorient(pet, direction)
        assert not np.allclose(moved.GetDirection(), np.eye(3).ravel())
        path = tmp / f"pet_{name}.nii.gz"
        sitk.WriteImage(moved, str(path))
        study = load_study(tmp / "ct.mha", path)
        np.testing.assert_allclose(sample(study.pet, points), sample(reference.pet, points),
                                   rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(sample(study.pet, points), sample(pet, points), rtol=1e-6)
        np.testing.assert_allclose(sitk.GetArrayFromImage(study.pet_on(study.ct)),
                                   sitk.GetArrayFromImage(reference.pet_on(reference.ct)),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_permuted_flipped_ct_gives_same_values_and_suv_at_same_points(pair):
    tmp, ct, pet = pair
    sitk.WriteImage(pet, str(tmp / "pet.mha"))
    sitk.WriteImage(ct, str(tmp / "ct.mha"))
    reference = load_study(tmp / "ct.mha", tmp / "pet.mha")
    moved = reorient(ct, PERMUTED)
    sitk.WriteImage(moved, str(tmp / "ct_perm.nrrd"))
    study = load_study(tmp / "ct_perm.nrrd", tmp / "pet.mha")
    assert np.allclose(study.ct.GetDirection(), np.eye(3).ravel())
    assert study.ct_geometry.direction == pytest.approx(PERMUTED.ravel().tolist())
    points = voxel_centres(ct)
    np.testing.assert_array_equal(sample(study.ct, points), sample(ct, points))
    pet_ref = reference.pet_on(reference.ct)
    pet_new = study.pet_on(study.ct)
    np.testing.assert_allclose(sample(pet_new, points), sample(pet_ref, points), rtol=1e-5,
                               atol=1e-6)


def test_dicom_pet_with_flipped_rows_gives_same_suv(tmp_path, pair):
    _, ct, _ = pair
    values = bqml_volume((5, 8, 8))
    values[:, 3, 2] = 9000.0  # asymmetric in x so a wrong flip shows
    normal = write_pet_dicom(tmp_path / "normal", values, origin=(0.0, 0.0, 0.0))
    # Row direction -x, so the slice normal is -z: the first column sits at x = 28 mm and the
    # first slice at z = 16 mm; the same voxels in space, stored backwards in x and z.
    flipped = write_pet_dicom(tmp_path / "flipped", values[::-1, :, ::-1],
                              iop=(-1, 0, 0, 0, 1, 0), origin=(28.0, 0.0, 16.0))
    ct_big = canonical_image(np.zeros((10, 20, 20), np.int16), (4.0, 4.0, 4.0),
                             (-10.0, -10.0, -10.0))
    sitk.WriteImage(ct_big, str(tmp_path / "ct.mha"))
    a = load_study(tmp_path / "ct.mha", normal)
    b = load_study(tmp_path / "ct.mha", flipped)
    points = voxel_centres(a.pet)
    np.testing.assert_allclose(sample(b.pet, points), sample(a.pet, points), rtol=1e-5)
    hot = a.pet.TransformPhysicalPointToIndex((8.0, 12.0, 8.0))
    assert a.pet[hot] > 1.5 * a.pet[a.pet.TransformPhysicalPointToIndex((12.0, 12.0, 8.0))]


@pytest.mark.parametrize("direction", [np.eye(3), FLIP_X, FLIP_Z, PERMUTED],
                         ids=["identity", "flipx", "flipz", "permuted"])
def test_label_image_round_trip_keeps_exact_ct_geometry(tmp_path, pair, direction):
    _, ct, pet = pair
    ct_in = reorient(ct, direction)
    sitk.WriteImage(ct_in, str(tmp_path / "ct.mha"))
    sitk.WriteImage(pet, str(tmp_path / "pet.mha"))
    study = load_study(tmp_path / "ct.mha", tmp_path / "pet.mha")

    shape = study.ct.GetSize()[::-1]
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = index_to_mm(study.ct, kji)
    # Labels defined by physical position: patient-left half 1, superior part 2, a box 5.
    labels = np.zeros(shape, np.uint8)
    labels[xyz[..., 0] > 0] = 1
    labels[xyz[..., 2] > 10] = 2
    labels[(np.abs(xyz[..., 0] + 4) < 3) & (np.abs(xyz[..., 1]) < 4)] = 5

    out = tmp_path / "out" / "labels.mha"
    write_label_image(labels, study.ct, study.ct_geometry, out)
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert back.GetSize() == ct_in.GetSize()
    assert back.GetSpacing() == ct_in.GetSpacing()
    assert back.GetOrigin() == ct_in.GetOrigin()
    assert back.GetDirection() == ct_in.GetDirection()
    flat_points = xyz.reshape(-1, 3)
    np.testing.assert_array_equal(sample(back, flat_points), labels.ravel())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_label_image_shape_mismatch_is_a_programming_error(pair):
    _, ct, _ = pair
    from nstage.study import ImageGeometry

    with pytest.raises(ValueError, match="shape"):
        write_label_image(np.zeros((2, 2, 2), np.uint8), ct, ImageGeometry.of(ct), "x.mha")


def test_write_json_atomic_nan_to_null_and_parents(tmp_path):
    path = tmp_path / "a" / "b" / "n-stage.json"
    write_json_atomic({"x": math.nan, "y": [1.5, math.inf, np.float32(2.0)], "z": np.int64(3),
                       "ok": np.bool_(True)}, path)
    assert json.loads(path.read_text()) == {"x": None, "y": [1.5, None, 2.0], "z": 3,
                                            "ok": True}
    assert os.listdir(path.parent) == ["n-stage.json"]


def test_write_json_atomic_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic({"n_stage": "N1"}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"n_stage": "N1"}
    assert os.listdir(tmp_path) == ["result.json"]


def test_write_image_atomic_leaves_no_partial_file(tmp_path, pair, monkeypatch):
    _, ct, _ = pair
    out = tmp_path / "img.nii.gz"
    write_image_atomic(ct, out)
    assert sitk.ReadImage(str(out)).GetSize() == ct.GetSize()
    before = out.read_bytes()

    def broken_write(image, path, *args):  # a writer dying half-way (disk full, killed)
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image_atomic(ct, out)
    with pytest.raises(RuntimeError):
        write_image_atomic(ct, tmp_path / "new.mha")
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["img.nii.gz"]


def test_reorient_helper_is_a_pure_relayout(pair):
    # Guard the test helper itself: every direction keeps values at every point.
    _, ct, _ = pair
    for direction in (FLIP_X, FLIP_Z, PERMUTED):
        moved = reorient(ct, direction)
        pts = voxel_centres(ct, step=2)
        np.testing.assert_array_equal(sample(moved, pts), sample(ct, pts))
        assert -999 not in sitk.GetArrayViewFromImage(moved)
    assert list(itertools.islice(voxel_centres(ct), 1))[0] == ct.GetOrigin()
