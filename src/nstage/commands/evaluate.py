"""``nstage evaluate``: compare predictions with clinical and pathological N staging."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="compare predicted N stages with clinical (cN) and pathological (pN) staging",
        description="Compare AI N staging with clinical and pathological staging. PRED has "
                    "case_id,n_stage (and optional p_N0..p_N3; nstage batch / gc-run write it); "
                    "TRUTH has case_id and cN and/or pN (other names: --truth-columns). Tables "
                    "may be comma, semicolon or tab separated. Labels such as N2, cN2, pN2a, "
                    "ypN1, pN1(mi) or 2 are accepted; 9th edition subcategories count as their "
                    "8th edition category; NX, empty and invalid labels exclude the case from "
                    "the comparisons that need them. Intervals on fewer than 10 cases carry a "
                    "warning. Writes DIR/metrics.json, DIR/report.md, DIR/report.html and "
                    "confusion-matrix PNGs.",
    )
    p.add_argument("--pred", required=True, type=Path, metavar="PRED.csv",
                   help="predictions table (case_id,n_stage[,p_N0..p_N3])")
    p.add_argument("--truth", required=True, type=Path, metavar="TRUTH.csv",
                   help="reference table: case_id and cN and/or pN (comma, semicolon or tab "
                        "separated; a missing cN or pN skips the comparisons that need it)")
    p.add_argument("--truth-columns", default=None, metavar="case_id=COL,cN=COL,pN=COL",
                   help="the reference table's own column names, e.g. "
                        "case_id=PatientID,cN=Clinical.N.Stage")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the kappa and AUC intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from nstage.errors import UsageError
    from nstage.evaluate import (
        evaluate_files,
        parse_column_map,
        summary_sentences,
        write_reports,
    )

    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    columns = parse_column_map(args.truth_columns)
    metrics = evaluate_files(args.pred, args.truth, n_boot=args.bootstrap, seed=args.seed,
                             truth_columns=columns)
    write_reports(metrics, args.out)
    for line in summary_sentences(metrics):
        print(line, file=sys.stderr)
    for warning in metrics["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"metrics and report in {args.out}", file=sys.stderr)
    return 0
