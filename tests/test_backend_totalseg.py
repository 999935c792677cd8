"""TotalSegmentator anatomy backend, end to end and offline, with tiny random-weight models.

Tiny model folders carry TotalSegmentator's exact dataset folder names, trainer names and label
counts (``tests/tinymodels.py``), so ``totalsegmentator()`` runs its real code path on the CPU.
Tests that run a model need the ``models`` extra and skip cleanly without it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import nstage.anatomy.totalseg as ts
from nstage.errors import ModelError

SHAPE = (80, 64, 64)  # z, y, x
SPACING = (3.0, 3.0, 4.0)  # x, y, z mm
ORIGIN = (-96.0, -120.0, -200.0)
LUNG_Z = (30, 56)  # slices holding lung


def _chest_ct() -> sitk.Image:
    """A crude chest: an elliptic body (40 HU) with two lungs (-850 HU) in slices 30-55."""
    zz, yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    arr = np.full(SHAPE, -1000, dtype=np.int16)
    body = ((yy - 32) / 24.0) ** 2 + ((xx - 32) / 29.0) ** 2 < 1
    arr[body] = 40
    lungs = (((yy - 32) / 14.0) ** 2 + ((xx - 19) / 9.0) ** 2 < 1) | \
            (((yy - 32) / 14.0) ** 2 + ((xx - 45) / 9.0) ** 2 < 1)
    arr[lungs & (zz >= LUNG_Z[0]) & (zz < LUNG_Z[1])] = -850
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    return img


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("TOTALSEG_WEIGHTS_PATH", "TOTALSEG_HOME_DIR", "nnUNet_raw",
                 "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ts, "OPT_ML_WEIGHTS", Path("/nonexistent/nstage-test/totalsegmentator"))


@pytest.fixture(scope="module")
def tiny_fast_weights(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    pytest.importorskip("totalsegmentator")
    from tinymodels import make_tiny_totalseg_weights

    root = tmp_path_factory.mktemp("totalseg_weights")
    make_tiny_totalseg_weights(root, fast=True)
    return root


# ---- weights lookup and fast failure (no torch needed) --------------------------------------


def test_weights_dir_resolution_order(tmp_path, monkeypatch, clean_env):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    assert ts.totalseg_weights_dir() is None
    (home / ".totalsegmentator" / "nnunet" / "results").mkdir(parents=True)
    assert ts.totalseg_weights_dir() == home / ".totalsegmentator" / "nnunet" / "results"
    opt = tmp_path / "opt" / "totalsegmentator"
    opt.mkdir(parents=True)
    monkeypatch.setattr(ts, "OPT_ML_WEIGHTS", opt)
    assert ts.totalseg_weights_dir() == opt
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "tshome"))
    assert ts.totalseg_weights_dir() == tmp_path / "tshome" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    assert ts.totalseg_weights_dir() == tmp_path / "w"


def test_required_folders():
    fast = ts.required_model_folders(fast=True)
    assert fast == ["Dataset297_TotalSegmentator_total_3mm_1559subj"]
    assert ts.required_model_folders(fast=True, roi_subset=None) == fast
    full = ts.required_model_folders(fast=False)
    assert [f[:10] for f in full] == ["Dataset291", "Dataset292", "Dataset293", "Dataset294",
                                      "Dataset295"]
    # Classes in fewer parts: TotalSegmentator runs only those, after its 6 mm region model.
    assert [f[:10] for f in ts.required_model_folders(False, ["liver", "trachea", "heart"])] == \
        ["Dataset291", "Dataset293", "Dataset298"]


@pytest.mark.parametrize(("fast", "folder"), [
    (True, "Dataset297_TotalSegmentator_total_3mm_1559subj"),
    (False, "Dataset291_TotalSegmentator_part1_organs_1559subj"),
])
def test_missing_weights_fail_fast_naming_the_folder(tmp_path, monkeypatch, clean_env, offline,
                                                     fast, folder):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    assert not ts.totalseg_weights_available(fast)
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as info:
        ts.segment_totalseg(_chest_ct(), fast=fast)
    assert time.perf_counter() - t0 < 5.0
    message = str(info.value)
    assert str(tmp_path / folder) in message and "never downloads" in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing created, nothing fetched


def test_missing_checkpoint_is_named(tmp_path, monkeypatch, clean_env):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    for folder in ts.required_model_folders(fast=True):
        (tmp_path / folder).mkdir()
    with pytest.raises(ModelError, match="nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__"
                                         "3d_fullres/fold_0/checkpoint_final.pth"):
        ts.check_totalseg_weights(fast=True)


def test_weights_present_but_models_extra_missing(tmp_path, monkeypatch, clean_env):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    for tid, folder in ts.TOTAL_FAST.items():
        checkpoint = ts._checkpoint(tmp_path, tid, folder)
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
    assert ts.totalseg_weights_available(fast=True) == ts.totalseg_installed()
    # Without torch/nnunetv2/TotalSegmentator `--anatomy auto` must fall back, and an explicit
    # request must fail with a clear message, not an ImportError.
    monkeypatch.setattr(ts, "totalseg_installed", lambda: False)
    assert not ts.totalseg_weights_available(fast=True)
    with pytest.raises(ModelError, match="not installed"):
        ts.segment_totalseg(_chest_ct(), fast=True)


def test_cli_anatomy_totalsegmentator_without_weights_exits_2(tmp_path, monkeypatch, clean_env,
                                                               capsys):
    if importlib.util.find_spec("nstage.commands.anatomy") is None:
        pytest.skip("the `nstage anatomy` command is not in this build yet")
    from nstage.cli import main

    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    ct_path = tmp_path / "ct.mha"
    sitk.WriteImage(_chest_ct(), str(ct_path))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    rc = main(["anatomy", "--ct", str(ct_path), "--out", str(out),
               "--backend", "totalsegmentator"])
    assert rc == 2 and time.perf_counter() - t0 < 30.0
    err = capsys.readouterr().err
    assert "Dataset29" in err and str(tmp_path / "weights") in err
    assert not (out / "anatomy.mha").exists()


# ---- agreement with the installed TotalSegmentator -----------------------------------------


def test_model_table_matches_installed_totalsegmentator():
    pytest.importorskip("totalsegmentator")
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts
    from totalsegmentator.map_to_binary import map_taskid_to_partname_ct as part_names

    modes = TASK_CONFIGS["total"]["sub_modes"]
    assert [modes["fast"]["task_id"]] == list(ts.TOTAL_FAST)
    assert modes["default"]["task_id"] == list(ts.TOTAL_FULL)
    assert [modes["fastest"]["task_id"]] == list(ts.TOTAL_ROI_CROP)
    for tid, folder in {**ts.TOTAL_FAST, **ts.TOTAL_FULL, **ts.TOTAL_ROI_CROP}.items():
        assert TASK_ID_WEIGHTS_CONFIGS[tid]["foldername"] == folder
    assert ts.TRAINERS[297] == modes["fast"]["trainer"]
    assert ts.TRAINERS[298] == modes["fastest"]["trainer"]
    assert {ts.TRAINERS[t] for t in ts.TOTAL_FULL} == {modes["default"]["trainer"]}
    total_names = set(class_map["total"].values())
    assert set(ts.STAGING_CLASSES) <= total_names
    for name in ts.STAGING_CLASSES:
        owner = [tid for tid, part in part_names.items()
                 if part in class_map_5_parts and name in class_map_5_parts[part].values()]
        assert owner == [ts._part_of(name)], name


# ---- the real TotalSegmentator code path with tiny weights ---------------------------------


@pytest.mark.models
def test_segment_totalseg_fast_offline_on_ct_grid(tiny_fast_weights, tmp_path, monkeypatch,
                                                  clean_env, offline):
    from totalsegmentator.map_to_binary import class_map

    # Weights found through TOTALSEG_HOME_DIR, whose config must not be touched (on Grand
    # Challenge the home may be read-only): nstage runs TotalSegmentator with a private home.
    home = tmp_path / "tshome"
    (home / "nnunet").mkdir(parents=True)
    (home / "nnunet" / "results").symlink_to(tiny_fast_weights, target_is_directory=True)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    assert ts.totalseg_weights_available(fast=True)

    ct = _chest_ct()
    anatomy = ts.segment_totalseg(ct, fast=True, device="cpu")

    assert anatomy.backend == "totalsegmentator"
    assert anatomy.labels.shape == SHAPE and anatomy.labels.dtype == np.uint8
    assert anatomy.reference.GetSize() == ct.GetSize()
    assert anatomy.reference.GetOrigin() == ct.GetOrigin()
    assert anatomy.reference.GetSpacing() == ct.GetSpacing()
    total = class_map["total"]
    assert anatomy.names == {v: n for v, n in total.items() if n in ts.STAGING_CLASSES}
    assert set(np.unique(anatomy.labels)) - {0} <= set(anatomy.names)
    # The biased tiny model labels its whole input "lung_upper_lobe_left", so the labelled voxels
    # show exactly where the thorax crop went back onto the CT grid.
    from nstage.anatomy.crop import thorax_box

    box = thorax_box(ct)
    assert box[0].stop - box[0].start < SHAPE[0]  # the crop really cut something off
    expected = np.zeros(SHAPE, dtype=bool)
    expected[box] = True
    assert np.array_equal(anatomy.labels > 0, expected)
    assert anatomy.present_names() == ["lung_upper_lobe_left"]
    assert anatomy.mask("lung_left")[LUNG_Z[0]:LUNG_Z[1], 32, 32].all()
    assert anatomy.extra_masks["body"].shape == SHAPE and anatomy.extra_masks["body"][40, 32, 32]
    # Nothing written to the user's TotalSegmentator home; nnU-Net's globals restored.
    assert sorted(p.name for p in home.iterdir()) == ["nnunet"]
    assert "nnUNet_results" not in os.environ
    assert os.environ["TOTALSEG_HOME_DIR"] == str(home)
