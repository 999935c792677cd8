"""Whole-body phantom through inference.py with the embedded defaults: time and peak memory.

Prints, from one run on this machine:
- the baseline: reading both inputs and writing one CT-sized uint8 mask (no analysis);
- inference.py end to end (classical anatomy + SUV lesions), wall time and peak RSS;
- the ratio of the two (target: at most 4x), and the per-step timings from n-stage.json.
Baseline and inference run in alternating pairs (``--repeat``, default 3) and the medians are
reported, because a shared machine's speed drifts by 10-20% between runs.

Targets (issue "Stations, pipeline and interpretable outputs"): <= 60 s and <= 6 GB peak
RSS on a 2-core machine, within 4x of the baseline.
Usage: python benchmarks/bench_pipeline.py [--workdir DIR] [--seed N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = r'''
import sys, time, glob
import numpy as np, SimpleITK as sitk
t0 = time.perf_counter()
ct = sitk.ReadImage(glob.glob(sys.argv[1] + "/images/ct/*.mha")[0])
pet = sitk.ReadImage(glob.glob(sys.argv[1] + "/images/pet/*.mha")[0])
mask = sitk.GetImageFromArray(np.zeros(ct.GetSize()[::-1], dtype=np.uint8))
mask.CopyInformation(ct)
sitk.WriteImage(mask, sys.argv[2], True)
print(time.perf_counter() - t0)
'''


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS of the child in GB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far; the inference run is the
    # largest process here, so this is its peak.
    return wall, max(peak_kb, before) / 1024**2, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3,
                        help="baseline/inference pairs (median reported)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nstage-bench-"))
    case = work / "case"
    if not (case / "input").is_dir():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nstage", "phantom", str(case), "--extent",
                        "whole-body", "--nodes", "4R,7,10L", "--seed", str(args.seed)],
                       check=True)
        print(f"phantom generation (whole-body): {time.perf_counter() - t0:.1f} s")

    import SimpleITK as sitk

    ct_file = next((case / "input" / "images" / "ct").glob("*.mha"))
    pet_file = next((case / "input" / "images" / "pet").glob("*.mha"))
    ct_r = sitk.ImageFileReader()
    ct_r.SetFileName(str(ct_file))
    ct_r.ReadImageInformation()
    pet_r = sitk.ImageFileReader()
    pet_r.SetFileName(str(pet_file))
    pet_r.ReadImageInformation()
    print(f"CT  {ct_r.GetSize()} spacing {tuple(round(s, 2) for s in ct_r.GetSpacing())}")
    print(f"PET {pet_r.GetSize()} spacing {tuple(round(s, 2) for s in pet_r.GetSpacing())}")

    # Baseline and inference alternate, so a slow spell of a shared machine hits both; the
    # ratio reported is the median of the per-pair ratios.
    out = work / "output"
    pairs = []
    inf_rss = 0.0
    for i in range(args.repeat):
        base_wall, _, _ = run_child([sys.executable, "-c", BASELINE, str(case / "input"),
                                     str(work / "baseline-mask.mha")])
        shutil.rmtree(out, ignore_errors=True)
        inf_wall, inf_rss, _ = run_child([sys.executable, str(ROOT / "inference.py"), "--input",
                                          str(case / "input"), "--output", str(out),
                                          "--anatomy", "classical", "--lesions", "suv"])
        pairs.append((base_wall, inf_wall))
        print(f"run {i + 1}: baseline {base_wall:.2f} s, inference {inf_wall:.2f} s, "
              f"ratio {inf_wall / base_wall:.2f}x")
    base_wall = statistics.median(b for b, _ in pairs)
    inf_wall = statistics.median(w for _, w in pairs)
    ratio = statistics.median(w / b for b, w in pairs)
    result = json.loads((out / "n-stage.json").read_text())
    truth = json.loads((case / "truth.json").read_text())
    print(f"baseline (read CT+PET, write one uint8 mask): {base_wall:.2f} s (median)")
    print(f"inference.py end to end:                       {inf_wall:.2f} s (median; "
          f"target <= 60 s)")
    print(f"ratio inference / baseline:                    {ratio:.2f}x (median of the pairs; "
          f"target <= 4x)")
    print(f"peak RSS (largest child process):              {inf_rss:.2f} GB (target <= 6 GB)")
    print("steps (s): " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()))
    print(f"result {result['n_stage']} / {result['n_stage_9th']}, truth "
          f"{truth['n_stage']} / {truth['n_stage_9th']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
