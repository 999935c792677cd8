"""Seconds per case to draw the visual report (PNG + one-page PDF), nstage.figure.render.

Prints, for the synthetic cases of tests/figure_cases.py (N0, N2b, N3 with 9 marks, NX) on a
thorax-sized work grid (256 x 192 x 100 voxels of 1.5 x 1.5 x 3 mm):
- the first render in a fresh process (includes importing matplotlib and loading fonts), and
- the mean of the following renders, wall and CPU seconds (CPU time is the fairer number
  on a shared machine).
With ``--phantom`` it also stages the thorax phantoms of tests/figure_cases.PHANTOM_CASES
(N0, N2b, N3, NX) with nstage.pipeline (classical anatomy, SUV lesions; about half a minute
each) and times the report on the pipeline's own work images; ``--examples DIR`` writes
those reports as DIR/report-<case>.png (the figures in docs/images).

Target (issue "Per-case visual report"): under 3 s per case.
Usage: python benchmarks/bench_figure.py [--repeat N] [--phantom] [--examples DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TARGET_S = 3.0


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed renders per case")
    parser.add_argument("--phantom", action="store_true",
                        help="also time the report of a staged phantom (slow)")
    parser.add_argument("--examples", type=Path, default=None,
                        help="with --phantom: write report-<case>.png here (docs/images)")
    parser.add_argument("--out", type=Path, default=None, help="keep the figures here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="nstage-bench-figure-"))
    out.mkdir(parents=True, exist_ok=True)

    from figure_cases import make_case

    grid = {"size_xyz": (256, 192, 100), "spacing_xyz": (1.5, 1.5, 3.0)}
    cases = {name: make_case(name, **grid) for name in ("N0", "N2b", "N3", "NX")}

    from nstage.figure import render

    worst = worst_cpu = 0.0
    first = True
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall time "
          "grows with the load, CPU time does not")
    print(f"{'case':<8}{'marks':>6}{'first s':>10}{'wall s':>9}{'cpu s':>8}")
    for name, case in cases.items():
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"

        def draw(case=case, png=png, pdf=pdf):
            return render(case.result, case.ct, case.pet, png, pdf)

        cold = timed(draw)[0] if first else float("nan")
        first = False
        runs = [timed(draw) for _ in range(max(1, args.repeat))]
        wall = sum(r[0] for r in runs) / len(runs)
        cpu = sum(r[1] for r in runs) / len(runs)
        worst, worst_cpu = max(worst, wall), max(worst_cpu, cpu)
        marks = 1 if case.result["primary_tumor"] else 0
        marks += len(case.result["nodes"])
        print(f"{name:<8}{marks:>6}{cold:>10.2f}{wall:>9.2f}{cpu:>8.2f}")

    if args.phantom:
        import shutil

        from figure_cases import PHANTOM_CASES, stage_phantom

        from nstage.figure import PNG_NAME, write_report

        for name in PHANTOM_CASES:
            staged, phantom = stage_phantom(name)
            folder = out / f"phantom-{name}"
            wall, cpu = timed(lambda staged=staged, folder=folder: write_report(staged, folder))
            worst, worst_cpu = max(worst, wall), max(worst_cpu, cpu)
            res = staged.result
            marks = len(res["nodes"]) + (1 if res["primary_tumor"] else 0)
            print(f"{'ph-' + name:<8}{marks:>6}{'':>10}{wall:>9.2f}{cpu:>8.2f}  work grid "
                  f"{staged.work_ct.GetSize()}, staged {res['n_stage']}/{res['n_stage_9th']}, "
                  f"truth {phantom.truth['n_stage']}/{phantom.truth['n_stage_9th']}")
            if args.examples:
                args.examples.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / PNG_NAME, args.examples / f"report-{name}.png")

    for what, value in (("wall", worst), ("CPU", worst_cpu)):
        verdict = "within" if value < TARGET_S else "OVER"
        print(f"slowest mean {what} time {value:.2f} s per case: {verdict} the "
              f"{TARGET_S:.0f} s target")
    print(f"figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
