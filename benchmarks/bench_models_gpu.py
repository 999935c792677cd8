"""Time the real model backends on a GPU: TotalSegmentator ``total`` (1.5 mm) and ``--fast``
(3 mm) on the thorax crop of a real chest CT, the nnU-Net lesion model, and the whole staging
run with both; prints each step's seconds and the peak GPU memory
(``torch.cuda.max_memory_allocated``) it needed.

Needs a CUDA GPU, the ``models`` extra, the TotalSegmentator weights (``TOTALSEG_WEIGHTS_PATH``
or the other places nstage looks, see ``nstage.anatomy.totalseg``) and a lesion model folder
(``--lesion-model``, default ``/opt/ml/model/lesions``). Where one is missing it stops at once
with a one-line message saying which (exit 2). ``--tiny`` replaces the weights by the tests'
random-weight model folders (``tests/tinymodels.py``) and allows the CPU: a smoke test of the
script itself, not a measurement.

The CT (``--ct``, default the real whole-thorax CT ``../shared/data/real/nsclc-radiomics-
LUNG1-002/ct.mha``) is cropped to the thorax box as the pipeline does; the PET is ``--pet``
(SUV) or a synthetic one on a 4 mm grid (body SUV 1.5 with four SUV 8 spheres).

Usage: ``python benchmarks/bench_models_gpu.py [--ct CT] [--pet PET] [--lesion-model DIR]
[--repeat 2] [--skip-full] [--tiny]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CT = ROOT.parent / "shared" / "data" / "real" / "nsclc-radiomics-LUNG1-002" / "ct.mha"
NAME = "bench_models_gpu.py"


class Unavailable(Exception):
    """What this machine lacks for the benchmark (one line)."""


def check_environment(args) -> str:
    """The torch device to use, or :class:`Unavailable` naming what is missing."""
    missing = [m for m in ("torch", "nnunetv2", "totalsegmentator")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed (pip install \"nstage[models]\")")
    import torch

    if not torch.cuda.is_available():
        if not args.tiny:
            raise Unavailable("no CUDA GPU (torch.cuda.is_available() is False): run it on a "
                              "machine with a GPU, or add --tiny for a CPU smoke test")
        return "cpu"
    return "cuda"


def check_weights(args) -> Path:
    """The lesion model folder; raises :class:`Unavailable` for missing weights."""
    from nstage.anatomy.totalseg import check_totalseg_weights
    from nstage.errors import NStageError
    from nstage.lesions.nnunet import DEFAULT_MODEL_DIR, find_lesion_model

    try:
        for fast in ([True] if args.skip_full else [True, False]):
            check_totalseg_weights(fast=fast)
        folder = find_lesion_model(args.lesion_model)
    except NStageError as exc:
        raise Unavailable(exc.one_line()) from None
    if folder is None:
        raise Unavailable(f"{DEFAULT_MODEL_DIR}: no nnU-Net lesion model (give --lesion-model)")
    return folder


def tiny_weights(tmp: Path, args) -> Path:
    """Random-weight TotalSegmentator and lesion model folders (the tests' tiny models)."""
    import os

    sys.path.insert(0, str(ROOT / "tests"))
    from tinymodels import make_tiny_nnunet_model, make_tiny_totalseg_weights

    weights = tmp / "totalseg"
    make_tiny_totalseg_weights(weights, fast=True)
    if not args.skip_full:
        make_tiny_totalseg_weights(weights, fast=False)
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)
    return make_tiny_nnunet_model(tmp / "lesions", folds=(0, 1))


def synthetic_pet(ct: sitk.Image) -> sitk.Image:
    """SUV on a 4 mm grid over ``ct``: 1.5 in the body (HU > -500), 0.05 outside, four SUV 8
    spheres of 8 mm radius in the mediastinum region."""
    size = [int(np.ceil(n * s / 4.0)) for n, s in zip(ct.GetSize(), ct.GetSpacing(), strict=True)]
    hu = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), [4.0] * 3,
                       ct.GetDirection(), -1000.0, sitk.sitkFloat32)
    arr = np.where(sitk.GetArrayViewFromImage(hu) > -500, 1.5, 0.05).astype(np.float32)
    zz, yy, xx = np.mgrid[:arr.shape[0], :arr.shape[1], :arr.shape[2]]
    centre = np.array(arr.shape) / 2
    for dz, dx in ((0, -6), (0, 6), (5, 0), (-5, 0)):
        c = centre + (dz, 0, dx)
        arr[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) * 16 <= 64] = 8.0
    pet = sitk.GetImageFromArray(arr)
    pet.CopyInformation(hu)
    return pet


class GPUStep:
    """Times one step and reports the peak GPU memory it allocated."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __call__(self, name: str, fn, repeat: int = 1):
        import torch

        result, times = None, []
        for _ in range(repeat):
            if self.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            result = fn()
            if self.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = (f"{torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GiB"
                if self.device == "cuda" else "n/a (cpu)")
        print(f"{name:<38} {', '.join(f'{t:7.2f}' for t in times)} s   peak GPU memory {peak}",
              flush=True)
        return result


def run(args, device: str, lesion_model: Path) -> None:
    import torch

    from nstage.anatomy.crop import thorax_box
    from nstage.anatomy.totalseg import segment_totalseg
    from nstage.geometry import canonical, crop
    from nstage.io import load_study
    from nstage.landmarks import find
    from nstage.lesions.nnunet import segment_nnunet
    from nstage.pipeline import RunOptions, stage_study

    step = GPUStep(device)
    ct_path = Path(args.ct)
    if not ct_path.exists():
        raise Unavailable(f"{ct_path}: CT not found (give --ct)")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "")
          + f", CT {ct_path}", flush=True)
    ct = step("read CT", lambda: canonical(sitk.ReadImage(str(ct_path), sitk.sitkFloat32)))
    box = step("thorax crop", lambda: thorax_box(ct))
    work = crop(ct, box)
    print(f"thorax crop {work.GetSize()} voxels at {work.GetSpacing()} mm", flush=True)
    for fast in ([True] if args.skip_full else [True, False]):
        name = f"TotalSegmentator total{' --fast' if fast else ''}"
        anatomy = step(name, lambda fast=fast: segment_totalseg(work, fast=fast, device=device,
                                                                crop=False), args.repeat)
        lms = step("  landmarks from it", lambda a=anatomy: find(a))
        measured = sorted(n for n, lm in lms.points.items() if lm.method == "measured")
        print(f"  {len(anatomy.present_names())} classes; measured landmarks: "
              f"{', '.join(measured)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nstage-bench-gpu-") as tmp:
        pet_path = Path(args.pet) if args.pet else Path(tmp) / "pet.mha"
        if not args.pet:
            sitk.WriteImage(synthetic_pet(ct), str(pet_path))
        study = step("load study (CT + PET in SUV)", lambda: load_study(ct_path, pet_path))
        work_pet = study.pet_on(work)
        mask = step("nnU-Net lesion model", lambda: segment_nnunet(
            work, work_pet, lesion_model, device=device), args.repeat)
        print(f"  {mask.notes[0]}", flush=True)
        options = RunOptions(anatomy="totalsegmentator", lesions="nnunet",
                             lesion_model=lesion_model, fast=args.skip_full, device=device,
                             report=False)
        staged = step("whole staging run (stage_study)", lambda: stage_study(study, options))
    timings = staged.result["timings_s"]
    print("  stage_study steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=Path, default=DEFAULT_CT, help="chest CT (default: %(default)s)")
    ap.add_argument("--pet", type=Path, default=None, help="PET in SUV (default: synthetic)")
    ap.add_argument("--lesion-model", type=Path, default=None,
                    help="nnU-Net trainer folder (default /opt/ml/model/lesions)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each model step")
    ap.add_argument("--skip-full", action="store_true",
                    help="only TotalSegmentator --fast (needs only its 3 mm weights)")
    ap.add_argument("--tiny", action="store_true",
                    help="random-weight tiny models, CPU allowed: checks the script, measures "
                         "nothing real")
    args = ap.parse_args(argv)
    try:
        device = check_environment(args)
        with tempfile.TemporaryDirectory(prefix="nstage-bench-weights-") as tmp:
            lesion_model = tiny_weights(Path(tmp), args) if args.tiny else check_weights(args)
            run(args, device, lesion_model)
    except Unavailable as exc:
        print(f"{NAME}: cannot run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # nnU-Net may start worker processes with spawn: keep the guard
    sys.exit(main())
