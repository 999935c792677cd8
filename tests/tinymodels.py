"""Tiny random-weight nnU-Net v2 model folders for offline tests of the model backends.

A trained-model folder is ``<DatasetNNN_Name>/<trainer>__<plans>__<configuration>/`` with
``dataset.json``, ``plans.json`` and ``fold_<k>/checkpoint_final.pth``. The network is built with
nnU-Net's own ``build_network_architecture`` so the saved state dict is exactly what
``nnUNetPredictor.initialize_from_trained_model_folder`` expects. Nothing is trained and nothing is
downloaded; the weights are random apart from the final 1x1x1 convolution's bias, which is set so
the prediction is deterministic and not empty (see ``favour_label``).

Needs the ``models`` extra (torch, nnunetv2); import it only after ``pytest.importorskip``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

CT_INTENSITY = {"max": 3000.0, "mean": 40.0, "median": 30.0, "min": -1024.0,
                "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}
PET_INTENSITY = {"max": 50.0, "mean": 2.0, "median": 1.5, "min": 0.0,
                 "percentile_00_5": 0.0, "percentile_99_5": 20.0, "std": 2.5}


def _is_ct(name: str) -> bool:
    return "ct" in name.lower().replace("_", " ").split() or name.strip().upper() == "CT"


def tiny_plans(dataset_name: str, channel_names: Mapping[str, str], *,
               spacing_zyx: Sequence[float] = (3.0, 3.0, 3.0),
               patch_size: Sequence[int] = (32, 32, 32),
               features: Sequence[int] = (4, 8, 16),
               image_reader_writer: str = "SimpleITKIO",
               plans_name: str = "nnUNetPlans", residual_encoder: bool = False) -> dict:
    """A valid nnU-Net v2 ``plans.json`` with one ``3d_fullres`` tiny ``PlainConvUNet`` (or,
    with ``residual_encoder``, the ``ResidualEncoderUNet`` of the ``nnUNetResEncUNet*Plans``).

    CT channels get ``CTNormalization`` (needs the foreground intensity percentiles), all other
    channels ``ZScoreNormalization``. ``spacing_zyx`` is the target spacing in mm, array order.
    """
    n_stages = len(features)
    channels = sorted(channel_names, key=int)
    schemes = ["CTNormalization" if _is_ct(channel_names[c]) else "ZScoreNormalization"
               for c in channels]
    intensity = {c: dict(CT_INTENSITY if s == "CTNormalization" else PET_INTENSITY)
                 for c, s in zip(channels, schemes, strict=True)}
    resample_data = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    resample_seg = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    network = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    per_stage = {"n_conv_per_stage": [1] * n_stages}
    if residual_encoder:
        # As nnU-Net's ResEncUNetPlanner writes it (residual blocks in the encoder).
        network = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        per_stage = {"n_blocks_per_stage": [1] + [2] * (n_stages - 1)}
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": list(map(float, spacing_zyx)),
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": image_reader_writer,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(map(int, patch_size)),
                "median_image_size_in_voxels": [64, 64, 64],
                "spacing": list(map(float, spacing_zyx)),
                "normalization_schemes": schemes,
                "use_mask_for_norm": [False] * len(channels),
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resample_data,
                "resampling_fn_seg_kwargs": resample_seg,
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": resample_data,
                "architecture": {
                    "network_class_name": network,
                    "arch_kwargs": {
                        "n_stages": n_stages,
                        "features_per_stage": list(map(int, features)),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n_stages,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
                        **per_stage,
                        "n_conv_per_stage_decoder": [1] * (n_stages - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    }


def write_model_folder(trainer_dir: Path, *, dataset_json: dict, plans: dict, trainer: str,
                       folds: Sequence[int | str] = (0,), favour_label: int | None = None,
                       seed: int = 0,
                       checkpoints: Sequence[str] = ("checkpoint_final.pth",)) -> Path:
    """Write ``dataset.json``, ``plans.json`` and ``fold_k/<checkpoint>`` for each name in
    ``checkpoints`` into ``trainer_dir`` (``<trainer>__<plans>__3d_fullres``) and return it.

    ``favour_label`` (a label value) gets a large bias in the final 1x1x1 convolution so the
    random network predicts that label nearly everywhere: a deterministic, non-empty output.
    The network is built with nnU-Net's default ``build_network_architecture`` (what every
    trainer class uses unless it changes the architecture), whatever ``trainer`` is called.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer_dir = Path(trainer_dir)
    trainer_dir.mkdir(parents=True, exist_ok=True)
    (trainer_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (trainer_dir / "plans.json").write_text(json.dumps(plans, indent=2))

    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    n_in = determine_num_input_channels(plans_manager, configuration, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration, n_in, n_out, enable_deep_supervision=False)
    state = network.state_dict()
    if favour_label is not None:
        bias_keys = [k for k in state
                     if k.startswith("decoder.seg_layers.") and k.endswith(".bias")]
        last = max(bias_keys, key=lambda k: int(k.split(".")[2]))
        state[last] = torch.zeros_like(state[last])
        state[last][int(favour_label)] = 1000.0
    checkpoint = {
        "network_weights": state,
        "trainer_name": trainer,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": dataset_json},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    for fold in folds:
        fold_dir = trainer_dir / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        for name in checkpoints:
            torch.save(checkpoint, fold_dir / name)
    return trainer_dir


def make_tiny_nnunet_model(root: Path, channel_names: Mapping[str, str] | None = None,
                           labels: Mapping[str, int] | None = None,
                           folds: Sequence[int | str] = (0,),
                           dataset_name: str = "Dataset901_TinyLesion", *,
                           trainer: str = "nnUNetTrainer", favour_label: int | None = 1,
                           spacing_zyx: Sequence[float] = (3.0, 3.0, 3.0),
                           plans_name: str = "nnUNetPlans", residual_encoder: bool = False,
                           checkpoints: Sequence[str] = ("checkpoint_final.pth",),
                           seed: int = 0) -> Path:
    """A tiny 3-stage (4/8/16 features, patch 32^3) lesion model; returns the trainer folder
    ``root/<dataset_name>/<trainer>__<plans_name>__3d_fullres``.

    ``channel_names`` defaults to ``{"0": "CT", "1": "PET"}`` (autoPET order) and ``labels`` to
    ``{"background": 0, "lesion": 1}``. ``favour_label`` biases the network towards that label
    (see ``write_model_folder``); ``None`` keeps a purely random output layer.
    """
    channel_names = dict(channel_names or {"0": "CT", "1": "PET"})
    labels = dict(labels or {"background": 0, "lesion": 1})
    dataset_json = {"channel_names": channel_names, "labels": labels, "numTraining": 1,
                    "file_ending": ".nii.gz", "name": dataset_name}
    plans = tiny_plans(dataset_name, channel_names, spacing_zyx=spacing_zyx,
                       plans_name=plans_name, residual_encoder=residual_encoder)
    folder = Path(root) / dataset_name / f"{trainer}__{plans_name}__3d_fullres"
    return write_model_folder(folder, dataset_json=dataset_json, plans=plans, trainer=trainer,
                              folds=folds, favour_label=favour_label,
                              checkpoints=checkpoints, seed=seed)


def totalseg_model_specs(fast: bool = True, *, with_crop_model: bool = False) -> list[dict]:
    """Dataset id, folder name, trainer, spacing and label map of each TotalSegmentator model the
    ``total`` task loads, read from the installed TotalSegmentator (class_map, task configs)."""
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import (
        class_map,
        class_map_5_parts,
        map_taskid_to_partname_ct,
    )

    mode = TASK_CONFIGS["total"]["sub_modes"]["fast" if fast else "default"]
    ids = mode["task_id"] if isinstance(mode["task_id"], list) else [mode["task_id"]]
    specs = []
    for tid in ids:
        labels = (class_map_5_parts[map_taskid_to_partname_ct[tid]] if tid in
                  map_taskid_to_partname_ct else class_map["total"])
        specs.append({"id": tid, "folder": TASK_ID_WEIGHTS_CONFIGS[tid]["foldername"],
                      "trainer": mode["trainer"], "spacing": float(mode["resample"]),
                      "labels": labels})
    if with_crop_model:
        # A roi_subset handed to TotalSegmentator makes it run its 6 mm model first.
        crop = TASK_CONFIGS["total"]["sub_modes"]["fastest"]
        specs.append({"id": crop["task_id"],
                      "folder": TASK_ID_WEIGHTS_CONFIGS[crop["task_id"]]["foldername"],
                      "trainer": crop["trainer"], "spacing": float(crop["resample"]),
                      "labels": class_map["total"]})
    return specs


def make_tiny_totalseg_weights(weights_root: Path, fast: bool = True, *,
                               with_crop_model: bool = False,
                               favour: str = "lung_upper_lobe_left") -> list[Path]:
    """Place random-weight model folders with TotalSegmentator's exact dataset folder names,
    trainer names and label counts under ``weights_root``; return the trainer folders.

    ``with_crop_model`` adds the 6 mm model (298) TotalSegmentator runs first when it is given a
    ``roi_subset``. Each model is biased towards the class named ``favour`` (or, for a part model
    without it, that part's first class), so the run yields a non-empty, deterministic label map
    and the 6 mm region model finds the region of interest.
    """
    folders = []
    for spec in totalseg_model_specs(fast, with_crop_model=with_crop_model):
        names = spec["labels"]
        labels = {"background": 0, **{name: int(v) for v, name in sorted(names.items())}}
        favour_value = next((v for v, n in names.items() if n == favour), min(names))
        dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1,
                        "file_ending": ".nii.gz", "name": spec["folder"]}
        s = spec["spacing"]
        plans = tiny_plans(spec["folder"], {"0": "CT"}, spacing_zyx=(s, s, s),
                           patch_size=(32, 32, 32))
        folder = (Path(weights_root) / spec["folder"]
                  / f"{spec['trainer']}__nnUNetPlans__3d_fullres")
        folders.append(write_model_folder(folder, dataset_json=dataset_json, plans=plans,
                                          trainer=spec["trainer"], folds=(0,),
                                          favour_label=favour_value, seed=spec["id"]))
    return folders
