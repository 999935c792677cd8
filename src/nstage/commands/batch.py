"""``nstage batch``: stage a cohort locally, in parallel, resumable."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from nstage.commands._common import (
    add_backend_args,
    add_input_check_args,
    add_report_args,
    options_from_args,
)
from nstage.progress import add_quiet_arg


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "batch",
        help="stage every case of a cohort (parallel, resumable) and write predictions.csv",
        description="Stage every case of a cohort. CASES is a folder of case folders (each in "
                    "Grand Challenge layout images/ct + images/pet, or with DICOM series or "
                    "two NIfTI files) or a CSV with case_id,ct,pet (paths relative to the "
                    "CSV). Per-case outputs go to DIR/cases/<case_id>/, the summary to "
                    "DIR/predictions.csv (usable as 'nstage evaluate --pred'). Re-running "
                    "skips finished cases and retries failed ones. Exit code 0: all cases "
                    "done; 3: finished but some cases failed (see predictions.csv); 2: the "
                    "cohort could not be read, or the output folder cannot be used (a file, "
                    "not writable, or locked by another run: DIR/.nstage.lock); 143/130: "
                    "stopped by SIGTERM/Ctrl-C (finished cases are kept).",
    )
    p.add_argument("--cases", required=True, type=Path, metavar="DIR_OR_CSV",
                   help="folder of case folders, or CSV with case_id,ct,pet")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel processes (default 1; each needs the memory of one case)")
    add_backend_args(p)
    add_report_args(p)
    add_quiet_arg(p)
    add_input_check_args(p)
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from nstage.batch import EXIT_SOME_FAILED, BatchStopped, run_batch
    from nstage.errors import UsageError

    if args.workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {args.workers}")
    try:
        summary = run_batch(args.cases, args.out, options_from_args(args),
                            workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (BatchStopped)
        signum = stop.signum if isinstance(stop, BatchStopped) else signal.SIGINT
        print(f"nstage batch: stopped by signal {int(signum)}; finished cases are kept in "
              f"{args.out} (run the same command again to resume)", file=sys.stderr)
        return 128 + int(signum)
    print(f"{summary.total} case(s): {summary.skipped} already done, {summary.ok} done now, "
          f"{summary.failed} failed; table: {summary.predictions}", file=sys.stderr)
    for case_id, error in summary.errors.items():
        print(f"  {case_id}: {error}", file=sys.stderr)
    return EXIT_SOME_FAILED if summary.failed else 0
