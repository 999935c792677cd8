"""Time the two model backends' real code paths: TotalSegmentator ``total`` and nnU-Net v2 lesions.

By default the models are the tiny random-weight folders of ``tests/tinymodels.py`` (built in a
temp dir), so the figures measure nstage's and the libraries' overhead plus a tiny network, not
real model cost. Point ``--weights`` (a TotalSegmentator weights folder) and/or ``--lesion-model``
(an nnU-Net trainer folder) at real models to time those instead. Runs on the CPU and, when
available, on CUDA; prints one line per run (device, input size, seconds, peak RSS).

The synthetic input is a thorax-sized working crop: a CT with a body and two lungs and a PET with
a few hot spheres, ``--size`` voxels (x y z) at ``--spacing`` mm.

Usage: ``python benchmarks/bench_models.py [--size 192 160 96] [--spacing 1.5 1.5 3]
[--weights DIR] [--lesion-model DIR] [--full] [--repeat 2] [--devices cpu cuda]``
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def synthetic_pair(size_xyz, spacing_xyz) -> tuple[sitk.Image, sitk.Image]:
    """CT (HU) with an elliptic body and two lungs; PET (SUV) with background 1 and hot spheres."""
    nx, ny, nz = size_xyz
    zz, yy, xx = np.mgrid[:nz, :ny, :nx].astype(np.float32)
    cy, cx = ny / 2, nx / 2
    body = ((yy - cy) / (0.42 * ny)) ** 2 + ((xx - cx) / (0.46 * nx)) ** 2 < 1
    lungs = (((yy - cy) / (0.25 * ny)) ** 2 + ((xx - 0.3 * nx) / (0.14 * nx)) ** 2 < 1) | \
            (((yy - cy) / (0.25 * ny)) ** 2 + ((xx - 0.7 * nx) / (0.14 * nx)) ** 2 < 1)
    lung_z = (zz > 0.2 * nz) & (zz < 0.85 * nz)
    ct = np.full((nz, ny, nx), -1000, dtype=np.int16)
    ct[body] = 40
    ct[lungs & lung_z] = -850
    pet = np.where(body, 1.0, 0.0).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(4):
        c = rng.uniform([0.3 * nz, 0.3 * ny, 0.3 * nx], [0.7 * nz, 0.7 * ny, 0.7 * nx])
        r2 = ((zz - c[0]) * spacing_xyz[2]) ** 2 + ((yy - c[1]) * spacing_xyz[1]) ** 2 + \
             ((xx - c[2]) * spacing_xyz[0]) ** 2
        pet[r2 < 8.0 ** 2] = 8.0
    ct_img = sitk.GetImageFromArray(ct)
    ct_img.SetSpacing([float(s) for s in spacing_xyz])
    ct_img.SetOrigin((-nx * spacing_xyz[0] / 2, -ny * spacing_xyz[1] / 2, -300.0))
    pet_img = sitk.GetImageFromArray(pet)
    pet_img.CopyInformation(ct_img)
    return ct_img, pet_img


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[192, 160, 96], metavar=("X", "Y", "Z"))
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 3.0])
    ap.add_argument("--weights", type=Path, help="real TotalSegmentator weights folder")
    ap.add_argument("--lesion-model", type=Path, help="real nnU-Net trainer folder")
    ap.add_argument("--full", action="store_true", help="TotalSegmentator 1.5 mm (not --fast)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--devices", nargs="+", default=None,
                    help="default: cpu, plus cuda when available")
    args = ap.parse_args()

    import nnunetv2
    import torch
    import totalsegmentator  # noqa: F401

    from nstage.anatomy.totalseg import segment_totalseg
    from nstage.lesions.nnunet import segment_nnunet

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    from importlib.metadata import version

    print(f"torch {torch.__version__}, nnunetv2 {version('nnunetv2')}, TotalSegmentator "
          f"{version('TotalSegmentator')}, cuda {torch.cuda.is_available()}"
          f"{' (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else ''}, "
          f"threads {torch.get_num_threads()}; nnunetv2 at {Path(nnunetv2.__file__).parent}")
    ct, pet = synthetic_pair(args.size, args.spacing)
    print(f"input: {ct.GetSize()} voxels at {ct.GetSpacing()} mm")

    with tempfile.TemporaryDirectory(prefix="nstage-bench-models-") as tmp:
        tmp = Path(tmp)
        if args.weights is None or args.lesion_model is None:
            from tinymodels import make_tiny_nnunet_model, make_tiny_totalseg_weights
        weights = args.weights
        if weights is None:
            weights = tmp / "totalseg"
            make_tiny_totalseg_weights(weights, fast=not args.full)
            print(f"tiny TotalSegmentator weights in {weights}")
        lesion = args.lesion_model
        if lesion is None:
            lesion = make_tiny_nnunet_model(tmp / "lesions")
            print(f"tiny lesion model in {lesion}")
        os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)

        for device in devices:
            anatomy = None

            def run_anatomy(device=device):
                nonlocal anatomy
                anatomy = segment_totalseg(ct, fast=not args.full, device=device)

            times = timed(run_anatomy, args.repeat)
            print(f"totalsegmentator {'full' if args.full else 'fast'} [{device}]: "
                  f"{', '.join(f'{t:.2f}' for t in times)} s; labels present "
                  f"{len(anatomy.present_names())}; peak RSS {peak_rss_gb():.2f} GB")

            result = None

            def run_lesions(device=device):
                nonlocal result
                result = segment_nnunet(ct, pet, lesion, device=device)

            times = timed(run_lesions, args.repeat)
            print(f"nnunet lesions [{device}]: {', '.join(f'{t:.2f}' for t in times)} s; "
                  f"mask {int(result.mask.sum())} voxels; peak RSS {peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":  # nnU-Net may start worker processes with spawn: keep the guard
    sys.exit(main())
