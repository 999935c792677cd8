"""nnU-Net v2 lesion backend: real nnU-Net inference with tiny random-weight model folders.

The model tests need the ``models`` extra (torch, nnunetv2) and skip cleanly without it; the
channel-order and folder-check tests need neither.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nstage.errors import ModelError
from nstage.lesions.nnunet import (
    channel_roles,
    check_model_folder,
    find_lesion_model,
    segment_nnunet,
)

SHAPE = (36, 44, 52)  # z, y, x
SPACING = (2.5, 2.0, 3.0)  # x, y, z mm (anisotropic on purpose)
ORIGIN = (-60.0, -40.0, 120.0)
BODY = (slice(6, 30), slice(8, 36), slice(10, 42))


def _images() -> tuple[sitk.Image, sitk.Image]:
    ct = np.full(SHAPE, -1000.0, dtype=np.float32)
    ct[BODY] = 40.0
    pet = np.zeros(SHAPE, dtype=np.float32)
    pet[BODY] = 1.0
    pet[15:20, 20:25, 20:26] = 12.0
    ct_img = sitk.GetImageFromArray(ct)
    ct_img.SetSpacing(SPACING)
    ct_img.SetOrigin(ORIGIN)
    pet_img = sitk.GetImageFromArray(pet)
    pet_img.CopyInformation(ct_img)
    return ct_img, pet_img


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    from tinymodels import make_tiny_nnunet_model

    root = tmp_path_factory.mktemp("lesion_models")
    return {
        "ct_first": make_tiny_nnunet_model(root / "a", {"0": "CT", "1": "PET"}),
        "pet_first": make_tiny_nnunet_model(root / "b", {"0": "SUV", "1": "CT"},
                                            labels={"background": 0, "tumor": 1}),
    }


# ---- channel order and folder discovery (no torch needed) ------------------------------------


@pytest.mark.parametrize(("names", "expected"), [
    ({"0": "CT", "1": "PET"}, ["CT", "PET"]),
    ({"0": "PET", "1": "CT"}, ["PET", "CT"]),
    ({"0": "SUV", "1": "ct_hu"}, ["PET", "CT"]),
    ({"1": "FDG-PET", "0": "CT"}, ["CT", "PET"]),
    ({"0": "0", "1": "1"}, ["CT", "PET"]),  # autoPET file convention _0000 CT, _0001 PET
    ({"0": "noNorm", "1": "CT"}, ["PET", "CT"]),
    ({"0": "PET"}, ["PET"]),
])
def test_channel_roles_from_names(names, expected):
    assert channel_roles({"channel_names": names}) == expected


def test_channel_roles_from_normalisation_when_names_say_nothing():
    plans = {"configurations": {"3d_fullres": {
        "normalization_schemes": ["ZScoreNormalization", "CTNormalization"]}}}
    roles = channel_roles({"channel_names": {"0": "a", "1": "b"}}, plans, "3d_fullres")
    assert roles == ["PET", "CT"]


@pytest.mark.parametrize("names", [{"0": "T1", "1": "T2", "2": "FLAIR"},
                                   {"0": "CT", "1": "CT"}])
def test_channel_roles_rejects_other_inputs(names):
    with pytest.raises(ModelError, match="channels"):
        channel_roles({"channel_names": names})


def _fake_folder(root: Path, name="nnUNetTrainer__nnUNetPlans__3d_fullres") -> Path:
    folder = root / "Dataset902_Fake" / name
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1}}))
    (folder / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    return folder


def test_find_model_accepts_trainer_dataset_and_parent_folders(tmp_path):
    folder = _fake_folder(tmp_path)
    # nnU-Net writes crossval_results_* folders holding JSON copies; they are not models.
    (folder.parent / "crossval_results_folds_0").mkdir()
    (folder.parent / "crossval_results_folds_0" / "plans.json").write_text("{}")
    assert find_lesion_model(folder) == folder
    assert find_lesion_model(folder.parent) == folder
    assert find_lesion_model(tmp_path) == folder


def test_find_model_rejects_ambiguous_and_missing(tmp_path):
    folder = _fake_folder(tmp_path)
    shutil.copytree(folder, folder.parent / "nnUNetTrainer__nnUNetPlans__2d")
    with pytest.raises(ModelError, match="several"):
        find_lesion_model(folder.parent)
    with pytest.raises(ModelError, match="not found"):
        find_lesion_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no nnU-Net v2 trainer folder"):
        find_lesion_model(tmp_path / "empty")


def test_default_location_absent_means_no_model(monkeypatch, tmp_path):
    import nstage.lesions.nnunet as mod

    monkeypatch.setattr(mod, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    assert find_lesion_model(None) is None
    with pytest.raises(ModelError, match="no nnU-Net lesion model"):
        segment_nnunet(*_images(), None)


@pytest.mark.parametrize(("breakage", "message"), [
    ("no_dataset_json", "dataset.json missing"),
    ("bad_plans_json", "plans.json is not valid JSON"),
    ("no_checkpoint", "no fold_\\*/checkpoint_final.pth"),
    ("no_labels", "no labels"),
])
def test_broken_model_folder_fails_fast_with_one_line(tmp_path, breakage, message):
    folder = _fake_folder(tmp_path)
    if breakage == "no_dataset_json":
        (folder / "dataset.json").unlink()
    elif breakage == "bad_plans_json":
        (folder / "plans.json").write_text('{"configurations": ')
    elif breakage == "no_checkpoint":
        (folder / "fold_0" / "checkpoint_final.pth").unlink()
    elif breakage == "no_labels":
        (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=message) as info:
        segment_nnunet(*_images(), folder)
    assert time.perf_counter() - t0 < 5.0
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_model_without_models_extra_is_a_model_error(tmp_path, monkeypatch):
    import nstage.lesions.nnunet as mod

    monkeypatch.setattr(mod, "nnunet_installed", lambda: False)
    with pytest.raises(ModelError, match="not installed"):
        segment_nnunet(*_images(), _fake_folder(tmp_path))


def test_auto_uses_suv_when_default_model_present_but_extra_missing(tmp_path, monkeypatch):
    """A model in /opt/ml/model/lesions must not break a core-only install: auto -> SUV."""
    import nstage.lesions as lesions
    import nstage.lesions.nnunet as mod
    import nstage.lesions.suv as suv

    monkeypatch.setattr(mod, "DEFAULT_MODEL_DIR", _fake_folder(tmp_path))
    monkeypatch.setattr(mod, "nnunet_installed", lambda: False)
    called = []
    monkeypatch.setattr(suv, "segment_suv", lambda *a, **k: called.append("suv") or "mask")
    ct, pet = _images()
    assert lesions.segment(ct, pet, anatomy=None, backend="auto") == "mask"
    assert called == ["suv"]
    # An explicitly named model folder is what the user asked for: no silent fallback.
    with pytest.raises(ModelError, match="not installed"):
        lesions.segment(ct, pet, anatomy=None, backend="auto", model_dir=mod.DEFAULT_MODEL_DIR)


def test_named_fold_must_exist(tmp_path):
    folder = _fake_folder(tmp_path)
    assert check_model_folder(folder) == [0]
    with pytest.raises(ModelError, match="fold 3 has no checkpoint_final.pth"):
        check_model_folder(folder, folds=(0, 3))


# ---- real nnU-Net inference with tiny models ----------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize("order", ["ct_first", "pet_first"])
def test_mask_on_ct_grid_with_channels_in_model_order(tiny_models, order, monkeypatch, offline):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    seen = {}
    original = nnUNetPredictor.predict_single_npy_array

    def spy(self, input_image, image_properties, *args, **kwargs):
        seen["input"] = np.array(input_image)
        seen["spacing"] = list(image_properties["spacing"])
        return original(self, input_image, image_properties, *args, **kwargs)

    monkeypatch.setattr(nnUNetPredictor, "predict_single_npy_array", spy)
    ct, pet = _images()
    result = segment_nnunet(ct, pet, tiny_models[order], device="cpu")

    assert result.backend == "nnunet"
    assert result.mask.dtype == bool and result.mask.shape == SHAPE
    # The biased tiny model calls everything it sees a lesion: the mask is the body box the
    # backend cropped to, pasted back at the right place of the CT grid.
    assert result.mask[BODY].all()
    assert not result.mask[0].any() and not result.mask[:, :, -1].any()
    # Channels reach the network in dataset.json's order, on the CT grid spacing (z, y, x).
    ct_channel, pet_channel = (0, 1) if order == "ct_first" else (1, 0)
    x = seen["input"]
    assert x.shape[0] == 2
    assert x[ct_channel].min() == pytest.approx(-1000.0) and x[pet_channel].max() == 12.0
    assert seen["spacing"] == [SPACING[2], SPACING[1], SPACING[0]]
    assert "tumor" in result.notes[0] or "lesion" in result.notes[0]


@pytest.mark.models
def test_pet_on_another_grid_is_resampled_to_ct(tiny_models, offline):
    ct, pet = _images()
    coarse = sitk.Resample(pet, [26, 22, 18], sitk.Transform(), sitk.sitkLinear,
                           pet.GetOrigin(), [5.0, 4.0, 6.0], pet.GetDirection(), 0.0,
                           sitk.sitkFloat32)
    result = segment_nnunet(ct, coarse, tiny_models["ct_first"].parent, device="cpu")
    assert result.mask.shape == SHAPE and result.mask[BODY].all()


@pytest.mark.models
def test_corrupt_checkpoint_is_a_model_error(tiny_models, tmp_path):
    folder = tmp_path / tiny_models["ct_first"].name
    shutil.copytree(tiny_models["ct_first"], folder)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load the nnU-Net model"):
        segment_nnunet(*_images(), folder, device="cpu")


@pytest.mark.models
def test_ras_trained_model_gets_ras_arrays(tiny_models, tmp_path, monkeypatch, offline):
    """A model whose plans say NibabelIOWithReorient was trained on RAS arrays: the backend flips
    the LPS working arrays in x and y for it, and flips the prediction back."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nstage.geometry import spacing_zyx
    from nstage.lesions.nnunet import body_box

    folder = tmp_path / tiny_models["ct_first"].name
    shutil.copytree(tiny_models["ct_first"], folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["image_reader_writer"] = "NibabelIOWithReorient"
    (folder / "plans.json").write_text(json.dumps(plans))
    seen = {}
    original = nnUNetPredictor.predict_single_npy_array

    def spy(self, input_image, *args, **kwargs):
        seen["input"] = np.array(input_image)
        return original(self, input_image, *args, **kwargs)

    monkeypatch.setattr(nnUNetPredictor, "predict_single_npy_array", spy)
    ct, pet = _images()
    result = segment_nnunet(ct, pet, folder, device="cpu")
    box = body_box(sitk.GetArrayFromImage(ct), spacing_zyx(ct))
    expected_pet = sitk.GetArrayFromImage(pet)[box][:, ::-1, ::-1]
    assert np.array_equal(seen["input"][1], expected_pet)
    assert result.mask.shape == SHAPE and result.mask[BODY].all()


@pytest.mark.models
def test_all_present_folds_are_ensembled_unless_named(tmp_path, offline):
    pytest.importorskip("nnunetv2")
    from tinymodels import make_tiny_nnunet_model

    folder = make_tiny_nnunet_model(tmp_path, folds=(0, 1, 2))
    ct, pet = _images()
    assert "folds [0, 1, 2]" in segment_nnunet(ct, pet, folder, device="cpu").notes[0]
    assert "folds [1]" in segment_nnunet(ct, pet, folder, folds=[1], device="cpu").notes[0]


# ---- published model folders as distributed -------------------------------------------------

# An autoPET-style trainer variant that nnunetv2 does not ship (checked in the tests).
VARIANT = "nnUNetTrainer_TinyAutoPETVariant"


def _favour(checkpoint: Path, label: int, value: float) -> None:
    """Rewrite a checkpoint so its network predicts ``label`` everywhere (bias ``value``)."""
    import torch

    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = data["network_weights"]
    key = max((k for k in weights if k.startswith("decoder.seg_layers.") and k.endswith(".bias")),
              key=lambda k: int(k.split(".")[2]))
    weights[key] = torch.zeros_like(weights[key])
    weights[key][label] = value
    torch.save(data, checkpoint)


@pytest.fixture(scope="module")
def variant_model(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("nnunetv2")
    from tinymodels import make_tiny_nnunet_model

    return make_tiny_nnunet_model(tmp_path_factory.mktemp("variant"), trainer=VARIANT,
                                  folds=(0, 1), dataset_name="Dataset221_autoPETTiny")


@pytest.mark.models
def test_trainer_class_not_in_nnunetv2_is_built_from_the_plans(variant_model, offline):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nstage.lesions.nnunet import trainer_class_for

    # nnU-Net's own loader cannot load this folder: it looks the trainer class up by name.
    assert trainer_class_for(VARIANT) is None
    with pytest.raises(RuntimeError, match=VARIANT):
        nnUNetPredictor(device=__import__("torch").device("cpu")) \
            .initialize_from_trained_model_folder(str(variant_model), use_folds=(0,))
    result = segment_nnunet(*_images(), variant_model, device="cpu")
    assert result.mask[BODY].all()
    assert result.model == {
        "folder": str(variant_model), "dataset": "Dataset221_autoPETTiny", "trainer": VARIANT,
        "trainer_class": "built from plans.json (trainer class not in nnunetv2)",
        "plans": "nnUNetPlans", "configuration": "3d_fullres", "architecture": "PlainConvUNet",
        "folds": [0, 1], "checkpoint": "checkpoint_final.pth"}
    assert any(VARIANT in n and "not part of nnunetv2" in n for n in result.notes)


@pytest.mark.models
def test_shipped_trainer_class_is_used(tmp_path, offline):
    from tinymodels import make_tiny_nnunet_model

    folder = make_tiny_nnunet_model(tmp_path, trainer="nnUNetTrainer_4000epochs_NoMirroring")
    result = segment_nnunet(*_images(), folder, device="cpu")
    assert result.model["trainer_class"] == "nnunetv2"
    assert not any("not part of nnunetv2" in n for n in result.notes)


@pytest.mark.models
def test_residual_encoder_plans(tmp_path, offline):
    from tinymodels import make_tiny_nnunet_model

    folder = make_tiny_nnunet_model(tmp_path, trainer=VARIANT, plans_name="nnUNetResEncUNetMPlans",
                                    residual_encoder=True)
    assert folder.name == f"{VARIANT}__nnUNetResEncUNetMPlans__3d_fullres"
    result = segment_nnunet(*_images(), folder, device="cpu")
    assert result.mask[BODY].all()
    assert result.model["architecture"] == "ResidualEncoderUNet"
    assert result.model["plans"] == "nnUNetResEncUNetMPlans"


@pytest.mark.models
def test_folds_are_ensembled(tmp_path, offline):
    """Fold 1 is rewritten to call everything background, three times as strongly as fold 0
    calls it lesion: alone fold 0 gives lesion, the two-fold ensemble (mean logits) background,
    so the default really uses both."""
    from tinymodels import make_tiny_nnunet_model

    folder = make_tiny_nnunet_model(tmp_path, trainer=VARIANT, folds=(0, 1))
    _favour(folder / "fold_1" / "checkpoint_final.pth", 0, 3000.0)
    ct, pet = _images()
    only_0 = segment_nnunet(ct, pet, folder, folds=[0], device="cpu")
    both = segment_nnunet(ct, pet, folder, device="cpu")
    assert only_0.mask[BODY].all() and only_0.model["folds"] == [0]
    assert not both.mask.any() and both.model["folds"] == [0, 1]


@pytest.mark.models
def test_checkpoint_best_or_final(tmp_path, offline):
    from tinymodels import make_tiny_nnunet_model

    folder = make_tiny_nnunet_model(tmp_path / "a", trainer=VARIANT,
                                    checkpoints=("checkpoint_final.pth", "checkpoint_best.pth"))
    _favour(folder / "fold_0" / "checkpoint_best.pth", 0, 1000.0)
    ct, pet = _images()
    final = segment_nnunet(ct, pet, folder, device="cpu")
    best = segment_nnunet(ct, pet, folder, device="cpu", checkpoint="best")
    assert final.mask[BODY].all() and final.model["checkpoint"] == "checkpoint_final.pth"
    assert not best.mask.any() and best.model["checkpoint"] == "checkpoint_best.pth"
    only_final = make_tiny_nnunet_model(tmp_path / "b", trainer=VARIANT)
    with pytest.raises(ModelError, match="no fold_\\*/checkpoint_best.pth.*--checkpoint final"):
        segment_nnunet(ct, pet, only_final, device="cpu", checkpoint="best")


@pytest.mark.models
def test_weights_that_do_not_fit_the_plans_fail_clearly(tmp_path, offline):
    """A variant whose trainer changed the architecture cannot be rebuilt from the plans: the
    weights do not load, and the message says so (no silent garbage prediction)."""
    from tinymodels import make_tiny_nnunet_model, write_model_folder

    folder = make_tiny_nnunet_model(tmp_path / "a", trainer=VARIANT, folds=(0, 1))
    # Fold 1 from a wider network (8/16/32 features) than plans.json describes (4/8/16).
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "features_per_stage"] = [8, 16, 32]
    wider = write_model_folder(tmp_path / "b" / folder.name, plans=plans, trainer=VARIANT,
                               dataset_json=json.loads((folder / "dataset.json").read_text()),
                               folds=(1,))
    shutil.copy(wider / "fold_1" / "checkpoint_final.pth",
                folder / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(ModelError, match="fold 1 checkpoint_final.pth does not fit") as info:
        segment_nnunet(*_images(), folder, device="cpu")
    assert "\n" not in str(info.value) and "not in nnunetv2" in str(info.value)


def _write_run_inputs(root: Path) -> tuple[Path, Path]:
    """A small chest-like CT (body, two lungs; 3 mm) and an SUV PET (background 1, a hot
    sphere) as .mha files for `nstage run`."""
    shape = (60, 70, 90)  # z, y, x
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    ct = np.full(shape, -1000, np.int16)
    body = ((yy - 35) / 30.0) ** 2 + ((xx - 45) / 42.0) ** 2 < 1
    ct[body] = 40
    lungs = (((yy - 35) / 20.0) ** 2 + ((xx - 27) / 14.0) ** 2 < 1) | \
            (((yy - 35) / 20.0) ** 2 + ((xx - 63) / 14.0) ** 2 < 1)
    ct[lungs & (zz > 10) & (zz < 55)] = -850
    pet = np.where(body, 1.0, 0.05).astype(np.float32)
    pet[((zz - 30) ** 2 + (yy - 35) ** 2 + (xx - 27) ** 2) < 9] = 8.0
    paths = []
    for name, arr in (("ct.mha", ct), ("pet.mha", pet)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((3.0, 3.0, 3.0))
        img.SetOrigin((-135.0, -105.0, 400.0))
        sitk.WriteImage(img, str(root / name))
        paths.append(root / name)
    return paths[0], paths[1]


@pytest.mark.models
def test_nstage_run_with_a_published_style_folder_records_both_folds(variant_model, tmp_path,
                                                                      capsys):
    from nstage.cli import main
    from nstage.schema import validate_result

    assert variant_model.name == f"{VARIANT}__nnUNetPlans__3d_fullres"
    ct, pet = _write_run_inputs(tmp_path)
    out = tmp_path / "out"
    code = main(["run", "--ct", str(ct), "--pet", str(pet), "--out", str(out), "--lesions",
                 "nnunet", "--lesion-model", str(variant_model), "--device", "cpu",
                 "--no-report"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "n-stage.json").read_text())
    validate_result(result)
    assert result["backends"]["lesions"] == "nnunet"
    model = result["lesion_model"]
    assert model["folds"] == [0, 1] and model["trainer"] == VARIANT
    assert model["plans"] == "nnUNetPlans" and model["configuration"] == "3d_fullres"
    assert model["checkpoint"] == "checkpoint_final.pth"
    assert model["trainer_class"].startswith("built from plans.json")
    code = main(["run", "--ct", str(ct), "--pet", str(pet), "--out", str(tmp_path / "o2"),
                 "--lesions", "nnunet", "--lesion-model", str(variant_model.parent),
                 "--folds", "1", "--checkpoint", "final", "--no-report"])
    assert code == 0
    assert json.loads((tmp_path / "o2" / "n-stage.json").read_text())["lesion_model"][
        "folds"] == [1]
