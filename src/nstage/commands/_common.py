"""Options shared by the commands that run the pipeline (run, demo, batch)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--anatomy", choices=["auto", "classical", "totalsegmentator"],
                        default="auto",
                        help="anatomy backend (auto: TotalSegmentator when its weights are "
                             "present, else the classical CT-only default)")
    parser.add_argument("--lesions", choices=["auto", "suv", "nnunet"], default="auto",
                        help="lesion backend (auto: nnU-Net when a model is present, else the "
                             "SUV-threshold default)")
    parser.add_argument("--lesion-model", type=Path, default=None, metavar="DIR",
                        help="nnU-Net v2 trained-model folder (default /opt/ml/model/lesions)")
    parser.add_argument("--folds", default=None, metavar="0,1,...",
                        help="nnU-Net folds to use (default: all present)")
    parser.add_argument("--checkpoint", choices=["final", "best"], default="final",
                        help="nnU-Net checkpoint of each fold: checkpoint_final.pth (default) or "
                             "checkpoint_best.pth")
    parser.add_argument("--fast", action="store_true",
                        help="TotalSegmentator's 3 mm model (faster, coarser)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the models run (default: GPU when available)")
    parser.add_argument("--thresholds", type=Path, default=None, metavar="FILE",
                        help="JSON with thresholds to change ({section: {key: value}}, names as "
                             "in resources/thresholds.json); n-stage.json lists what differs "
                             "from the defaults")


def add_report_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--report", dest="report", action="store_true", default=True,
                       help="write the visual report (PNG + PDF) next to the JSON (default)")
    group.add_argument("--no-report", dest="report", action="store_false",
                       help="do not write the visual report")


def positive_gb(text: str) -> float:
    """argparse type for ``--max-memory-gb``: a positive number of GB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def add_input_check_args(parser: argparse.ArgumentParser) -> None:
    """``--max-memory-gb`` and ``--allow-different-studies`` (checks made before reading)."""
    g = parser.add_argument_group("input checks")
    g.add_argument("--max-memory-gb", type=positive_gb, default=None, metavar="GB",
                   help="memory available to one case; inputs whose voxels would not fit (a "
                        "quarter of it, staging holds about four working copies) are refused "
                        "before they are read (default: the container's memory limit, else "
                        "the machine's memory)")
    g.add_argument("--allow-different-studies", action="store_true",
                   help="stage a CT and PET whose PatientID, StudyInstanceUID or "
                        "FrameOfReferenceUID differ (refused by default; a note says so)")


def options_from_args(args: argparse.Namespace):
    from nstage.errors import UsageError
    from nstage.pipeline import RunOptions

    folds = None
    if getattr(args, "folds", None):
        try:
            folds = tuple(int(f) for f in str(args.folds).split(",") if f.strip())
        except ValueError:
            raise UsageError(
                f"--folds must be comma-separated integers, got {args.folds!r}") from None
    thresholds = None
    if getattr(args, "thresholds", None) is not None:
        from nstage.thresholds import read_overrides

        thresholds = read_overrides(args.thresholds)
    return RunOptions(
        thresholds=thresholds,
        anatomy=args.anatomy,
        lesions=args.lesions,
        lesion_model=args.lesion_model,
        folds=folds,
        fast=args.fast,
        device=args.device,
        report=getattr(args, "report", True),
        lesion_checkpoint=getattr(args, "checkpoint", "final"),
        anatomy_seg=tuple(getattr(args, "anatomy_seg", None) or ()) or None,
        anatomy_seg_task=getattr(args, "anatomy_seg_task", None),
        max_memory_gb=getattr(args, "max_memory_gb", None),
        allow_different_studies=getattr(args, "allow_different_studies", False),
    )


def summary_lines(result: dict, out_dir: Path) -> list[str]:
    """A short human summary of a result for the terminal."""
    lines = [f"N stage: {result['n_stage']} (8th edition), {result['n_stage_9th']} (9th edition)"]
    primary = result.get("primary_tumor")
    if primary:
        lines.append(
            f"primary tumour: {primary['side']} lung"
            + (f", {primary['lobe']} lobe" if primary.get("lobe") else "")
            + f", SUVmax {primary['suv_max']}"
        )
    for node in result.get("nodes", []):
        lines.append(
            f"  node {node['station']} ({node['side']}): {node['n_category']}, "
            f"SUVmax {node['suv_max']}, short axis {node['short_axis_mm']} mm"
        )
    if not result.get("nodes"):
        lines.append("  no positive regional node")
    for reason in result.get("reasons", []):
        lines.append(f"  note: {reason}")
    lines.append(f"outputs in {out_dir}")
    return lines
