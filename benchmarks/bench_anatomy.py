"""Time the thorax crop and the classical anatomy backend on a whole-body phantom CT.

Usage: ``python benchmarks/bench_anatomy.py`` (prints seconds per step; the issue asks the
classical backend to stay under 20 s on this machine).
"""

from __future__ import annotations

import time

from nstage.anatomy.classical import segment_classical
from nstage.anatomy.crop import thorax_box
from nstage.geometry import crop
from nstage.landmarks import find
from nstage.phantom import PhantomSpec, make_phantom


def main() -> None:
    t0 = time.perf_counter()
    ph = make_phantom(PhantomSpec(extent="whole-body"))
    t1 = time.perf_counter()
    box = thorax_box(ph.ct)
    t2 = time.perf_counter()
    work = crop(ph.ct, box)
    anatomy = segment_classical(work)
    t3 = time.perf_counter()
    lms = find(anatomy)
    t4 = time.perf_counter()
    carina = lms.get("carina")
    print(f"whole-body phantom CT {ph.ct.GetSize()} built in {t1 - t0:.1f} s")
    print(f"thorax_box: {t2 - t1:.2f} s -> crop {work.GetSize()}")
    print(f"classical anatomy: {t3 - t2:.2f} s (limit 20 s)")
    print(f"landmarks: {t4 - t3:.2f} s; carina {carina.point_mm if carina else None}; "
          f"truth {ph.truth['landmarks']['carina_mm']}")


if __name__ == "__main__":
    main()
