"""Time phantom generation (thorax and whole body) and writing.

Usage: ``python benchmarks/bench_phantom.py [--repeat N] [--no-whole-body] [--write DIR]``.
Targets (issue 4): thorax < 10 s, whole body < 60 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from nstage.phantom import PhantomSpec, make_phantom, write_phantom

NODES = ("4R", "7", "10R", "5")


def bench(extent: str, repeat: int, write_dir: Path | None) -> None:
    for r in range(repeat):
        spec = PhantomSpec(nodes=NODES, extent=extent, seed=r,
                           confounders=frozenset({"hilar-symmetric", "distant-lesion"}))
        t0 = time.perf_counter()
        ph = make_phantom(spec)
        t1 = time.perf_counter()
        line = (f"{extent:>10}  seed {r}: generate {t1 - t0:6.2f} s  "
                f"CT {'x'.join(map(str, ph.ct.GetSize()))}  "
                f"PET {'x'.join(map(str, ph.pet.GetSize()))}  "
                + "  ".join(f"{k} {v:.2f}" for k, v in ph.timings_s.items() if k != "total"))
        if write_dir is not None:
            t2 = time.perf_counter()
            write_phantom(ph, write_dir / f"{extent}-{r}")
            line += f"  write {time.perf_counter() - t2:.2f} s"
        print(line, flush=True)
        del ph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-whole-body", action="store_true")
    ap.add_argument("--write", type=Path, default=None,
                    help="also time writing to this folder (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.write or Path(tmp)
        bench("thorax", args.repeat, out)
        if not args.no_whole_body:
            bench("whole-body", args.repeat, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
