"""``nstage phantom``: write a digital PET/CT phantom with known truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_CONFOUNDER_FLAGS = ("hot-myocardium", "brown-fat", "hilar-symmetric", "distant-lesion",
                     "subthreshold-node")


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "phantom",
        help="write a synthetic PET/CT study with known nodes and expected N (Grand Challenge "
             "layout)",
        description="Writes OUTDIR/input/ (images/ct/<uuid>.mha in HU, images/pet/<uuid>.mha in "
                    "SUV, inputs.json), OUTDIR/truth.json (primary, every node with station, "
                    "side, centroid in mm LPS, SUVmax, expected n_stage / n_stage_9th), "
                    "OUTDIR/anatomy.mha + labels.json (ground-truth anatomy, TotalSegmentator "
                    "names) and OUTDIR/lesions.mha.",
    )
    p.add_argument("outdir", type=Path, help="output folder")
    p.add_argument("--nodes", default="",
                   help="comma-separated IASLC stations of FDG-avid nodes, e.g. 4R,7,10L")
    p.add_argument("--primary-side", choices=("left", "right", "none"), default="right",
                   help="lung with the primary tumour (default right)")
    p.add_argument("--primary-lobe", choices=("upper", "middle", "lower"), default="upper",
                   help="lobe of the primary tumour (default upper)")
    p.add_argument("--extent", choices=("thorax", "whole-body"), default="thorax",
                   help="thorax (256x256x114 CT) or clinical-size whole body (512x512x512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for name in _CONFOUNDER_FLAGS:
        p.add_argument(f"--{name}", action="store_true",
                       help=f"add the '{name}' confounder (never counts for N)")
    p.add_argument("--confounders", default="", metavar="LIST",
                   help="comma-separated confounders (never count for N): hot-myocardium "
                        "(or myocardium), brown-fat, hilar-symmetric, distant-lesion, "
                        "subthreshold-node, oesophagus, thymus, marrow, granulomatous-hila")
    p.add_argument("--node-suv-max", type=float, default=None, metavar="SUV",
                   help="noise-free blurred SUVmax of every requested node (default: drawn, at "
                        "least 3.8); below 2.5 the nodes are recorded as not counting")
    p.add_argument("--node-short-axis", type=float, default=None, metavar="MM",
                   help="short axis of every requested node in mm (default: drawn, 10-20)")
    p.add_argument("--realistic", action="store_true",
                   help="PET as a clinical scanner makes it: 4.07 mm voxels on its own origin, "
                        "6.5 mm FWHM, Poisson-like noise (liver CoV 12 %%), liver SUV 2.0, "
                        "blood pool 1.6")
    p.add_argument("--preview", action="store_true",
                   help="also write OUTDIR/preview.png (CT slices with anatomy, PET MIP)")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from nstage.errors import UsageError
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom

    nodes = tuple(s for s in (part.strip() for part in args.nodes.split(",")) if s)
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, not {args.seed}")
    confounders = {n for n in _CONFOUNDER_FLAGS if getattr(args, n.replace("-", "_"))}
    confounders |= {c.strip() for c in args.confounders.split(",") if c.strip()}
    spec = PhantomSpec(nodes=nodes, primary_side=args.primary_side,
                       primary_lobe=args.primary_lobe, extent=args.extent, seed=args.seed,
                       confounders=frozenset(confounders), realistic=args.realistic,
                       node_suv_max=args.node_suv_max,
                       node_short_axis_mm=args.node_short_axis).validated()
    phantom = make_phantom(spec)
    paths = write_phantom(phantom, args.outdir)
    truth = phantom.truth
    pet_kind = "realistic PET" if spec.realistic else "PET"
    print(f"phantom ({spec.extent}, seed {spec.seed}, {pet_kind}) written to {args.outdir}")
    print(f"  CT  {paths['ct']}")
    print(f"  PET {paths['pet']}")
    prim = truth["primary"]
    print("  primary: " + ("none" if prim is None else
                           f"{prim['side']} {prim['lobe']} lobe, SUVmax {prim['suv_max']:.1f}"))
    for n in truth["nodes"]:
        tag = "counts" if n["counts"] else "does not count"
        print(f"  node {n['station']:>4} short axis {n['short_axis_mm']:.0f} mm, "
              f"SUVmax {n['suv_max_blurred']:.1f} ({tag})")
    for c in truth["confounders"]:
        peak = c.get("suv_max_blurred")
        print(f"  confounder {c['name']}: {c['where']}"
              + (f", SUVmax {peak:.1f}" if isinstance(peak, float) else ""))
    print(f"  expected N: {truth['n_stage']} (8th), {truth['n_stage_9th']} (9th)")
    print(f"  truth {paths['truth']}")
    if args.preview:
        from nstage.phantom.preview import render

        png = render(phantom, Path(args.outdir) / "preview.png")
        print(f"  preview {png}")
    print(f"  generated in {phantom.timings_s.get('total', 0.0):.1f} s", file=sys.stderr)
    return 0
