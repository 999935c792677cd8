"""``nstage demo``: make a phantom study and stage it with the embedded defaults."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nstage.progress import add_quiet_arg

DEMO_NODES = ("4R", "7", "10R")


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="stage a synthetic PET/CT phantom end to end (no model weights needed)",
        description="Generates a thorax PET/CT phantom with a right upper-lobe primary and "
                    "nodes at 4R, 7 and 10R, stages it with the embedded defaults (classical "
                    "anatomy, SUV lesions), prints a summary and compares with the phantom's "
                    "truth.",
    )
    p.add_argument("--out", type=Path, default=Path("nstage-demo"),
                   help="output folder (default ./nstage-demo)")
    p.add_argument("--seed", type=int, default=7, help="phantom seed (default 7)")
    p.add_argument("--no-report", dest="report", action="store_false", default=True,
                   help="do not write the visual report")
    add_quiet_arg(p)
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from nstage.commands._common import summary_lines
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom
    from nstage.pipeline import RunOptions, run_case

    out: Path = args.out
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    say(f"nstage demo: generating a thorax phantom (seed {args.seed}) in {out} ...")
    spec = PhantomSpec(nodes=DEMO_NODES, primary_side="right", primary_lobe="upper",
                       extent="thorax", seed=args.seed)
    paths = write_phantom(make_phantom(spec), out)
    truth = json.loads(Path(paths["truth"]).read_text())
    say("nstage demo: staging with the embedded defaults (classical anatomy, SUV lesions) ...")
    result = run_case(out / "input", None, out,
                      RunOptions(anatomy="classical", lesions="suv", report=args.report,
                                 progress=not args.quiet))
    print("\n".join(summary_lines(result, out)))
    expected = f"{truth['n_stage']} / {truth['n_stage_9th']}"
    got = f"{result['n_stage']} / {result['n_stage_9th']}"
    verdict = "matches" if expected == got else "DIFFERS from"
    print(f"phantom truth: {expected} (nodes {', '.join(DEMO_NODES)}); the result {verdict} it")
    print(f"truth: {paths['truth']}")
    return 0
