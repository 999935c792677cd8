"""Precomputed TotalSegmentator anatomy (``--anatomy-seg``) on real TotalSegmentator output, and
the landmarks measured from its classes.

The real masks (``../shared/data/real/totalsegmentator-outputs``) lie on exactly the grids of the
two real contrast CT crops; both crops come from one CT (same patient coordinates), so the masks
of one crop can be given for the other (resampled: a grid that differs from the CT's).

Expected levels, read by hand from the masks (z mm LPS, superior positive), not by nstage:

- ``mediastinum-crop/aorta.nii.gz`` (z = 540.2 + 1.5 k). Per-slice 2D components printed with
  ``scipy.ndimage.label`` and the axial and sagittal slices rendered with the mask outline:
  the highest aorta slice is k=151, z=766.7 (5 voxels; k=150, 765.2 mm, has 101). Going down,
  the arch is one elongated section down to k=130 (735.2 mm, 927 voxels); k=129 (733.7 mm) is
  the first slice with two sections, 393 voxels (ascending aorta, x 10, y -170 mm) and 548
  voxels (descending aorta, x 21, y -122 mm), and they stay two down to the aortic root
  (k=76). k=138 (747.2 mm) has three 2D components, but two are single-voxel specks beside the
  741-voxel arch: not two sections. So arch top 766.7 mm, arch bottom 733.7 mm.
- ``heart-crop/pulmonary_artery.nii.gz`` (z = 576.2 + 1.5 k): highest voxels at k=98,
  z=723.2 mm (2 voxels, x 27 mm, left of the bifurcation at x 23 mm; k=97, 721.7 mm, 46
  voxels). The sagittal slice at x=27 mm shows that top as the left pulmonary artery arching
  over the left main bronchus, distal to ``pul_left_start``. So left PA top 723.2 mm.
- ``heart-crop/pul_bifurcation.nii.gz``: a thin plane at the trunk's division, centre
  (23.4, -164.6, 703.4) mm, spanning 693.2-714.2 mm. The pulmonary artery's largest connected
  axial section is k=85, 703.7 mm (938 voxels: trunk, right and left PA in one piece); its
  total area per slice is nearly flat from 697.7 to 703.7 mm (931-955 voxels, lobar branches
  adding separate sections below the bifurcation).
- The heart crop's top slice is 742.7 mm: the aorta given for it reaches that slice, so the arch
  top is not in view there (only its bottom, 733.7 mm, is).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_path

from nstage.cli import main

pytestmark = pytest.mark.realdata

ARCH_TOP_MM = 766.7
ARCH_BOTTOM_MM = 733.7
LEFT_PA_TOP_MM = 723.2
PA_BIFURCATION_MM = 703.4
HEART_CROP_TOP_MM = 742.7

# TotalSegmentator's class ids, written by hand from its documentation / class map
# (checked against the installed package in test_hand_written_ids_are_totalsegmentators).
TASK_IDS = {
    "total": {"heart": 51, "aorta": 52, "brachiocephalic_trunk": 54,
              "subclavian_artery_left": 56, "common_carotid_artery_left": 58},
    "heartchambers_highres": {"pulmonary_artery": 7},
    "pulmonary_artery_landmarks": {"pul_bifurcation": 5, "pul_left_start": 6,
                                   "pul_right_start": 7},
}
PRECOMPUTED = "totalsegmentator (precomputed)"


def _ct(crop: str) -> Path:
    return real_path("totalsegmentator-crops", f"{crop}-contrast-ct-1.5mm.nii.gz")


def _mask_dirs() -> list[Path]:
    return [real_path("totalsegmentator-outputs", "mediastinum-crop"),
            real_path("totalsegmentator-outputs", "heart-crop")]


def _caret_xml(names: dict[int, str]) -> bytes:
    """The label table TotalSegmentator writes into a multilabel NIfTI header
    (totalsegmentator/nifti_ext_header.py, add_label_map_to_nifti), written out by hand."""
    rows = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{n}]]>'
                   "</Label>\n" for k, n in sorted(names.items()))
    return ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <VolumeInformation '
            f'Index="0">   <LabelTable>{rows}</LabelTable> </VolumeInformation></CaretExtension>'
            ).encode()


def write_multilabel(path: Path, ids: dict[str, int], grid_of: Path, *,
                     header: bool = True) -> Path:
    """One multilabel file with TotalSegmentator's ``ids``, built from the real per-class masks
    (each resampled nearest-neighbour onto the grid of ``grid_of``)."""
    reference = sitk.ReadImage(str(grid_of))
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    for name, value in ids.items():
        source = next(d / f"{name}.nii.gz" for d in _mask_dirs() if (d / f"{name}.nii.gz").exists())
        mask = sitk.Resample(sitk.ReadImage(str(source)), reference, sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0)
        labels[sitk.GetArrayViewFromImage(mask) > 0] = value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path), True)
    if header:
        import nibabel as nib

        nii = nib.load(str(path))
        nii = nib.Nifti1Image(np.asarray(nii.dataobj), nii.affine, nii.header)
        nii.header.extensions.append(nib.nifti1.Nifti1Extension(
            0, _caret_xml({v: n for n, v in ids.items()})))
        nib.save(nii, str(path))
    return path


@pytest.fixture(scope="module")
def multilabel_files(tmp_path_factory) -> list[Path]:
    """The same classes as the mask folders, as three multilabel files (one per
    TotalSegmentator task), each on the grid its masks were made on."""
    root = tmp_path_factory.mktemp("multilabel")
    return [
        write_multilabel(root / "total.nii.gz", TASK_IDS["total"], _ct("mediastinum")),
        write_multilabel(root / "heartchambers.nii.gz", TASK_IDS["heartchambers_highres"],
                         _ct("heart")),
        write_multilabel(root / "pa_landmarks.nii.gz", TASK_IDS["pulmonary_artery_landmarks"],
                         _ct("heart")),
    ]


def run_anatomy(tmp: Path, crop: str, segs: list[Path], *extra: str) -> tuple[int, dict | None]:
    out = tmp / "out"
    argv = ["anatomy", "--ct", str(_ct(crop)), "--out", str(out), "--backend", "classical"]
    for seg in segs:
        argv += ["--anatomy-seg", str(seg)]
    code = main(argv + list(extra))
    doc = json.loads((out / "landmarks.json").read_text()) if code == 0 else None
    return code, doc


@pytest.fixture(scope="module")
def landmark_docs(tmp_path_factory, multilabel_files) -> dict[tuple[str, str], dict]:
    docs = {}
    for crop in ("mediastinum", "heart"):
        for source, segs in (("folders", _mask_dirs()), ("multilabel", multilabel_files)):
            code, doc = run_anatomy(tmp_path_factory.mktemp(f"{crop}-{source}"), crop, segs)
            assert code == 0
            docs[crop, source] = doc
    return docs


def test_hand_written_ids_are_totalsegmentators():
    pytest.importorskip("totalsegmentator")
    from totalsegmentator.map_to_binary import class_map

    for task, ids in TASK_IDS.items():
        for name, value in ids.items():
            assert class_map[task][value] == name, (task, name)


@pytest.mark.parametrize("source", ["folders", "multilabel"])
def test_mediastinum_crop_arch_and_left_pa_measured_from_the_masks(landmark_docs, source):
    lms = landmark_docs["mediastinum", source]["landmarks"]
    top, bottom = lms["aortic_arch_top"], lms["aortic_arch_bottom"]
    left_pa = lms["left_pulmonary_artery_top"]
    for lm in (top, bottom, left_pa):
        assert lm["method"] == "measured" and lm["source_backend"] == PRECOMPUTED
    assert abs(top["z_mm"] - ARCH_TOP_MM) <= 4.0
    # 6 mm around 733.7 also rules out 747.2, where the mask shows only specks beside the arch.
    assert abs(bottom["z_mm"] - ARCH_BOTTOM_MM) <= 6.0
    assert abs(left_pa["z_mm"] - LEFT_PA_TOP_MM) <= 5.0
    assert abs(lms["pulmonary_bifurcation"]["z_mm"] - PA_BIFURCATION_MM) <= 3.0
    # Classes the segmentation lacks come from the classical backend, and say so.
    assert lms["carina"]["source_backend"] == "classical"
    assert lms["azygos_arch_bottom"]["method"] == "approximated"
    assert lms["azygos_arch_bottom"]["source_backend"] is None


@pytest.mark.parametrize("source", ["folders", "multilabel"])
def test_heart_crop_arch_top_out_of_view_bottom_and_left_pa_measured(landmark_docs, source):
    lms = landmark_docs["heart", source]["landmarks"]
    top, bottom = lms["aortic_arch_top"], lms["aortic_arch_bottom"]
    # The given aorta reaches the crop's top slice: its top there is the image edge, not the arch.
    assert top["method"] == "approximated" and top["z_mm"] >= HEART_CROP_TOP_MM
    assert "top of the image" in top["source"]
    assert bottom["method"] == "measured" and abs(bottom["z_mm"] - ARCH_BOTTOM_MM) <= 6.0
    left_pa = lms["left_pulmonary_artery_top"]
    assert left_pa["method"] == "measured" and abs(left_pa["z_mm"] - LEFT_PA_TOP_MM) <= 5.0
    assert left_pa["source_backend"] == PRECOMPUTED


@pytest.mark.parametrize("crop", ["mediastinum", "heart"])
def test_folder_and_multilabel_file_give_the_same_landmarks(landmark_docs, crop):
    folders, multilabel = landmark_docs[crop, "folders"], landmark_docs[crop, "multilabel"]
    assert folders["carina_mm"] == multilabel["carina_mm"]
    assert {n: (lm["z_mm"], lm["method"], lm["source_backend"])
            for n, lm in folders["landmarks"].items()} == \
        {n: (lm["z_mm"], lm["method"], lm["source_backend"])
         for n, lm in multilabel["landmarks"].items()}
    assert folders["class_sources"] == multilabel["class_sources"]


def test_given_classes_win_and_classical_fills_the_rest():
    from nstage.anatomy import segment
    from nstage.anatomy.classical import segment_classical
    from nstage.anatomy.crop import thorax_box
    from nstage.geometry import canonical, crop

    ct = canonical(sitk.ReadImage(str(_ct("mediastinum")), sitk.sitkFloat32))
    work = crop(ct, thorax_box(ct))
    merged = segment(work, backend="auto", precomputed=_mask_dirs())
    classical = segment_classical(work)

    def given(name: str) -> np.ndarray:
        path = next(d / f"{name}.nii.gz" for d in _mask_dirs() if (d / f"{name}.nii.gz").exists())
        image = sitk.Resample(sitk.ReadImage(str(path)), work, sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(image) > 0

    assert merged.backend == f"{PRECOMPUTED} + classical"
    assert merged.source_of("aorta") == PRECOMPUTED and merged.source_of("lung_left") == \
        "classical"
    # TotalSegmentator's classes replace the classical ones, each exactly as given (the PA lies
    # 91% inside this heart mask and the landmark planes inside the PA: kept whole beside it).
    for name in ("heart", "pulmonary_artery", "pul_bifurcation", "pul_left_start"):
        assert np.array_equal(merged.mask(name), given(name)), name
    # Where two given masks overlap (10 voxels of aorta and heart) the larger keeps the voxel.
    assert np.array_equal(merged.mask("aorta"), given("aorta") & ~given("heart"))
    assert (given("aorta") & given("heart")).sum() < 0.001 * given("aorta").sum()
    # Classical lungs and airway fill in, apart from voxels the given vessels claim.
    given_any = np.logical_or.reduce([given(p.name.removesuffix(".nii.gz"))
                                      for d in _mask_dirs() for p in d.glob("*.nii.gz")])
    for name in ("lung_left", "lung_right", "trachea", "main_bronchus_left"):
        assert np.array_equal(merged.mask(name), classical.mask(name) & ~given_any), name
    assert "aorta" not in {n for v, n in merged.names.items()
                           if merged.source_of(n) == "classical"}


def test_bifurcation_level_from_the_pulmonary_artery_alone(tmp_path):
    """Without TotalSegmentator's landmark masks the bifurcation is the level of the largest
    connected pulmonary artery section: within 5 mm of the centre of the pul_bifurcation
    plane TotalSegmentator's landmark model drew."""
    only_pa = tmp_path / "pa"
    only_pa.mkdir()
    (only_pa / "pulmonary_artery.nii.gz").symlink_to(
        real_path("totalsegmentator-outputs", "heart-crop", "pulmonary_artery.nii.gz"))
    code, doc = run_anatomy(tmp_path, "heart", [only_pa])
    assert code == 0
    bif = doc["landmarks"]["pulmonary_bifurcation"]
    assert bif["method"] == "measured" and bif["point_mm"] is None
    assert abs(bif["z_mm"] - PA_BIFURCATION_MM) <= 5.0
    assert abs(doc["landmarks"]["left_pulmonary_artery_top"]["z_mm"] - LEFT_PA_TOP_MM) <= 5.0


# ---- refusals: one line, exit 2, nothing written -----------------------------------------


def _refused(tmp_path, capsys, segs, *extra) -> str:
    code, _ = run_anatomy(tmp_path, "mediastinum", segs, "--quiet", *extra)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "landmarks.json").exists()
    assert not (tmp_path / "out" / "anatomy.mha").exists()
    return err


def test_segmentation_that_does_not_overlap_the_ct_is_refused(tmp_path, capsys):
    away = tmp_path / "elsewhere"
    away.mkdir()
    aorta = sitk.ReadImage(str(_mask_dirs()[0] / "aorta.nii.gz"))
    aorta.SetOrigin([o + 2000.0 for o in aorta.GetOrigin()])
    sitk.WriteImage(aorta, str(away / "aorta.nii.gz"))
    err = _refused(tmp_path, capsys, [away])
    assert "does not overlap the CT" in err and str(away) in err


def test_folder_with_a_non_binary_file_is_refused(tmp_path, capsys):
    folder = tmp_path / "seg"
    folder.mkdir()
    shutil.copy(_ct("heart"), folder / "heart.nii.gz")  # a CT where a mask should be
    err = _refused(tmp_path, capsys, [folder])
    assert "not a binary mask" in err and "heart.nii.gz" in err


def test_missing_segmentation_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, [tmp_path / "nope"])
    assert "does not exist" in err


def test_multilabel_without_names_needs_totalsegmentators_class_map(tmp_path, capsys,
                                                                   monkeypatch):
    seg = write_multilabel(tmp_path / "total.mha", TASK_IDS["total"], _ct("mediastinum"),
                           header=False)
    # As on an install without the models extra.
    monkeypatch.setitem(sys.modules, "totalsegmentator.map_to_binary", None)
    err = _refused(tmp_path, capsys, [seg])
    assert 'pip install "nstage[models]"' in err and "total.mha" in err


def test_multilabel_without_names_read_with_the_task_class_map(tmp_path):
    pytest.importorskip("totalsegmentator")
    segs = [write_multilabel(tmp_path / "total.mha", TASK_IDS["total"], _ct("mediastinum"),
                             header=False)]
    code, doc = run_anatomy(tmp_path, "mediastinum", segs)  # default task: total
    assert code == 0
    assert doc["landmarks"]["aortic_arch_bottom"]["source_backend"] == PRECOMPUTED
    assert abs(doc["landmarks"]["aortic_arch_bottom"]["z_mm"] - ARCH_BOTTOM_MM) <= 6.0
    pa = write_multilabel(tmp_path / "hc.mha", TASK_IDS["heartchambers_highres"], _ct("heart"),
                          header=False)
    code, doc = run_anatomy(tmp_path / "b", "heart", [pa], "--anatomy-seg-task",
                            "heartchambers_highres")
    assert code == 0
    assert abs(doc["landmarks"]["left_pulmonary_artery_top"]["z_mm"] - LEFT_PA_TOP_MM) <= 5.0
    code, _ = run_anatomy(tmp_path / "c", "heart", [pa], "--anatomy-seg-task", "no_such_task")
    assert code == 2


def test_totalsegmentators_own_header_is_read(tmp_path):
    pytest.importorskip("totalsegmentator")
    import nibabel as nib
    from totalsegmentator.nifti_ext_header import add_label_map_to_nifti

    from nstage.anatomy.precomputed import header_label_names

    path = write_multilabel(tmp_path / "x.nii.gz", TASK_IDS["total"], _ct("mediastinum"),
                            header=False)
    nii = nib.load(str(path))
    nii = nib.Nifti1Image(np.asarray(nii.dataobj), nii.affine)
    nib.save(add_label_map_to_nifti(nii, {v: n for n, v in TASK_IDS["total"].items()}),
             str(path))
    assert header_label_names(path) == {v: n for n, v in TASK_IDS["total"].items()}


# ---- nstage run and the Grand Challenge input ---------------------------------------------


def _pet_for(ct_path: Path, out: Path) -> Path:
    """A PET in SUV on its own 4 mm grid over the CT: 1.5 in the body, 0.05 outside (only the
    anatomy is under test here, not staging)."""
    ct = sitk.ReadImage(str(ct_path))
    size = [int(np.ceil(n * s / 4.0)) for n, s in zip(ct.GetSize(), ct.GetSpacing(), strict=True)]
    pet = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(),
                        [4.0] * 3, ct.GetDirection(), -1000.0, sitk.sitkFloat32)
    pet = sitk.Cast(sitk.BinaryThreshold(pet, -500.0, 5000.0, 1, 0), sitk.sitkFloat32) * 1.45
    sitk.WriteImage(pet + 0.05, str(out))
    return out


def _approximated_in(result: dict) -> set[str]:
    return set(result["landmarks"]["approximated"])


def test_nstage_run_with_precomputed_anatomy(tmp_path, capsys):
    pet = _pet_for(_ct("mediastinum"), tmp_path / "pet.mha")
    argv = ["run", "--ct", str(_ct("mediastinum")), "--pet", str(pet), "--no-report",
            "--lesions", "suv"]
    assert main(argv + ["--out", str(tmp_path / "classical")]) == 0
    segs = [a for d in _mask_dirs() for a in ("--anatomy-seg", str(d))]
    assert main(argv + ["--out", str(tmp_path / "pre"), *segs]) == 0, capsys.readouterr().err
    classical = json.loads((tmp_path / "classical" / "n-stage.json").read_text())
    result = json.loads((tmp_path / "pre" / "n-stage.json").read_text())
    assert result["backends"]["anatomy"] == f"{PRECOMPUTED} + classical"
    measured_now = {"left_pulmonary_artery_top"}
    assert measured_now <= _approximated_in(classical)
    assert not measured_now & _approximated_in(result)
    assert not {"aortic_arch_top", "aortic_arch_bottom"} & _approximated_in(result)
    assert any(n.startswith("precomputed TotalSegmentator classes") for n in result["notes"])


def test_grand_challenge_input_with_an_anatomy_segmentation(tmp_path, monkeypatch):
    pytest.importorskip("totalsegmentator")  # an .mha has no label table: the class map names it
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("nstage_inference", root / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    inp = tmp_path / "input" / "images"
    for socket in ("ct", "pet", "anatomy-segmentation"):
        (inp / socket).mkdir(parents=True)
    sitk.WriteImage(sitk.ReadImage(str(_ct("mediastinum"))), str(inp / "ct" / "ct.mha"))
    _pet_for(_ct("mediastinum"), inp / "pet" / "pet.mha")
    write_multilabel(inp / "anatomy-segmentation" / "seg.mha", TASK_IDS["total"],
                     _ct("mediastinum"), header=False)
    monkeypatch.delenv("NSTAGE_ANATOMY_SEG_TASK", raising=False)
    out = tmp_path / "output"
    code = inference.main(["--input", str(tmp_path / "input"), "--output", str(out),
                           "--anatomy", "auto", "--lesions", "suv", "--no-report"])
    assert code == 0
    result = json.loads((out / "n-stage.json").read_text())
    assert result["backends"]["anatomy"] == f"{PRECOMPUTED} + classical"
    assert not {"aortic_arch_top", "aortic_arch_bottom"} & _approximated_in(result)
    # Two images in the socket folder: refused with one line, exit 2.
    write_multilabel(inp / "anatomy-segmentation" / "other.mha", TASK_IDS["total"],
                     _ct("mediastinum"), header=False)
    assert inference.main(["--input", str(tmp_path / "input"), "--output",
                           str(tmp_path / "o2"), "--lesions", "suv", "--no-report"]) == 2
    assert not (tmp_path / "o2" / "n-stage.json").exists()
