"""``nstage run``: stage one CT + PET study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nstage.commands._common import (
    add_backend_args,
    add_input_check_args,
    add_report_args,
    options_from_args,
    summary_lines,
)
from nstage.commands.anatomy import add_precomputed_args
from nstage.progress import add_quiet_arg


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="stage one study (CT + PET)",
        description="Stage one FDG-PET/CT study. Writes DIR/n-stage.json and "
                    "DIR/images/n-staging-segmentation/output.mha (the container's layout).",
    )
    p.add_argument("--ct", required=True, type=Path,
                   help="CT file (.mha/.nii.gz/.nrrd), DICOM folder, or a Grand Challenge input "
                        "folder / DICOM study folder holding both CT and PET (then omit --pet)")
    p.add_argument("--pet", type=Path, default=None,
                   help="PET file in SUV, or PET DICOM folder (converted to SUV from its header)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_backend_args(p)
    add_precomputed_args(p)
    add_report_args(p)
    add_input_check_args(p)
    add_suv_override_args(p)
    add_quiet_arg(p)
    p.set_defaults(func=main)
    return p


def add_suv_override_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SUV conversion for PET images without usable headers")
    g.add_argument("--weight", type=float, default=None, metavar="KG", help="patient weight (kg)")
    g.add_argument("--dose", type=float, default=None, metavar="MBQ",
                   help="injected dose (MBq) at injection time")
    g.add_argument("--injection-time", default=None, metavar="HHMMSS",
                   help="injection time (HHMMSS or ISO datetime)")
    g.add_argument("--scan-time", default=None, metavar="HHMMSS",
                   help="scan start time, needed with --injection-time for image files "
                        "without headers (HHMMSS or ISO datetime)")


def override_from_args(args):
    if all(v is None for v in (args.weight, args.dose, args.injection_time, args.scan_time)):
        return None
    from nstage.io import SUVOverride

    return SUVOverride.from_cli(args.weight, args.dose, args.injection_time, args.scan_time)


def main(args) -> int:
    from dataclasses import replace

    from nstage.pipeline import run_case

    options = replace(options_from_args(args), progress=not args.quiet)
    result = run_case(args.ct, args.pet, args.out, options, override=override_from_args(args))
    print("\n".join(summary_lines(result, args.out)), file=sys.stderr)
    return 0
