"""Time the SUV lesion backend + findings on a whole-body phantom's thorax crop.

Run: ``.venv/bin/python benchmarks/bench_lesions.py [--extent whole-body|thorax] [--repeat N]``.
Prints the crop size and the seconds for segment_suv, measure and place (landmarks +
placement; target: under 15 s together on the whole-body phantom's thorax crop), and what
was found.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    from nstage.anatomy.base import Anatomy
    from nstage.anatomy.crop import thorax_box
    from nstage.findings import measure
    from nstage.geometry import crop, resample_to
    from nstage.landmarks import find
    from nstage.lesions.suv import segment_suv
    from nstage.phantom import CONFOUNDERS, PhantomSpec, make_phantom
    from nstage.placement import place
    from nstage.positivity import assess

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--extent", default="whole-body", choices=("whole-body", "thorax"))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    t0 = time.perf_counter()
    ph = make_phantom(PhantomSpec(nodes=("4R", "7", "10L"), primary_side="right",
                                  extent=args.extent, confounders=frozenset(CONFOUNDERS)))
    t_build = time.perf_counter() - t0
    box = thorax_box(ph.ct)
    work_ct = crop(ph.ct, box)
    import SimpleITK as sitk

    work_pet = resample_to(ph.pet, work_ct, pixel_type=sitk.sitkFloat32)
    anatomy = Anatomy(labels=ph.anatomy.labels[box], names=ph.anatomy.names, reference=work_ct,
                      backend=ph.anatomy.backend,
                      extra_masks={k: v[box] for k, v in ph.anatomy.extra_masks.items()})
    print(f"phantom ({args.extent}) built in {t_build:.1f} s; CT {ph.ct.GetSize()}, "
          f"thorax crop {work_ct.GetSize()} ({np.prod(work_ct.GetSize()) / 1e6:.1f} M voxels)")
    for rep in range(args.repeat):
        t = time.perf_counter()
        lm = segment_suv(work_ct, work_pet, anatomy)
        t_seg = time.perf_counter() - t
        t = time.perf_counter()
        lesions = measure(lm, work_ct, work_pet, anatomy, pet_native=ph.pet)
        t_meas = time.perf_counter() - t
        t = time.perf_counter()
        found = place(lesions, find(anatomy))
        t_cls = time.perf_counter() - t
        total = t_seg + t_meas + t_cls
        print(f"run {rep + 1}: segment_suv {t_seg:.2f} s, measure {t_meas:.2f} s, "
              f"place {t_cls:.2f} s, total {total:.2f} s (target < 15 s)")
    print("reference SUV:", {k: round(v, 2) for k, v in lm.reference_suv.items()})
    for p in found.all():
        le = p.lesion
        pos = (assess(le, lm.reference_suv, symmetric_hilar=p.symmetric_hilar).positive
               if p.kind == "node" else None)
        station = p.station.station if p.station is not None else ""
        print(f"  lesion {le.id}: {p.kind:<12} {p.zone or '':<15} {station or '':<4} SUVmax "
              f"{le.suv_max:5.2f} {le.volume_ml:5.2f} ml SA {le.short_axis_mm:4.1f} mm "
              f"at {np.round(le.centroid_mm, 0)} positive={pos}")
    print("truth nodes:", [(n["station"], n["counts"]) for n in ph.truth["nodes"]])
    print("notes:", list(found.notes) + lm.notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
