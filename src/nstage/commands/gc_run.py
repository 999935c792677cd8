"""``nstage gc-run``: run a cohort as algorithm jobs on Grand Challenge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gc-run",
        help="run a cohort as Grand Challenge algorithm jobs and collect predictions.csv",
        description="Upload each case's CT and PET to the algorithm's ct and pet inputs, keep "
                    "at most N jobs active, download each job's n-stage JSON and overlay into "
                    "DIR/cases/<case_id>/ and write DIR/predictions.csv (as 'nstage batch'). "
                    "Resumable: DIR/gc-ledger.json remembers every job, so running the same "
                    "command again never uploads a submitted case twice and collects jobs "
                    "still running. The API token is read only from the environment variable "
                    "named by --token-env. Exit code 0: all cases done; 3: finished but some "
                    "jobs failed; 4: stopped waiting with jobs still running (run again); "
                    "2: token, algorithm, cohort or output-folder problem (another run holding "
                    "DIR/.nstage.lock).",
    )
    p.add_argument("--algorithm", required=True, metavar="SLUG",
                   help="algorithm slug (from https://grand-challenge.org/algorithms/SLUG/)")
    p.add_argument("--cases", required=True, type=Path, metavar="DIR_OR_CSV",
                   help="folder of case folders in Grand Challenge layout (images/ct, "
                        "images/pet with PET in SUV), or CSV with case_id,ct,pet")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--token-env", default="GC_TOKEN", metavar="NAME",
                   help="environment variable holding the API token (default GC_TOKEN)")
    p.add_argument("--max-active", type=int, default=16, metavar="N",
                   help="most jobs queued or running at once (default 16, the platform's "
                        "limit per user)")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="API root (default $NSTAGE_GC_BASE_URL or "
                        "https://grand-challenge.org/api/v1/)")
    p.add_argument("--poll-seconds", type=float, default=10.0, metavar="S",
                   help="first pause between status checks; grows to 120 s while nothing "
                        "changes (default 10)")
    p.add_argument("--max-wait-hours", type=float, default=None, metavar="H",
                   help="stop waiting after H hours (jobs keep running; run again to collect)")
    p.add_argument("--retry-failed", action="store_true",
                   help="submit cases whose job failed in an earlier run again")
    p.set_defaults(func=main)
    return p


def check_gc_extra() -> None:
    """Refuse early, with the install command, when the ``gc`` extra is missing."""
    import importlib.util

    from nstage.advice import missing_package
    from nstage.errors import UsageError

    for package in ("gcapi", "httpx"):
        if importlib.util.find_spec(package) is None:
            raise UsageError(missing_package(package))


def main(args) -> int:
    check_gc_extra()
    from nstage.batch import EXIT_SOME_FAILED
    from nstage.errors import UsageError
    from nstage.gcrun import run_on_grand_challenge

    if args.poll_seconds <= 0:
        raise UsageError(f"--poll-seconds must be positive, got {args.poll_seconds}")
    summary = run_on_grand_challenge(
        args.cases, args.out, args.algorithm, token_env=args.token_env,
        base_url=args.base_url, max_active=args.max_active, poll_s=args.poll_seconds,
        max_poll_s=max(120.0, args.poll_seconds), retry_failed=args.retry_failed,
        deadline_s=None if args.max_wait_hours is None else args.max_wait_hours * 3600)
    print(f"{summary.total} case(s): {summary.done} done, {summary.failed} failed, "
          f"{summary.active} still running, {summary.not_submitted} not submitted; "
          f"table: {summary.predictions}", file=sys.stderr)
    for case_id, error in summary.errors.items():
        print(f"  {case_id}: {error}", file=sys.stderr)
    if summary.active or summary.not_submitted:
        print("run the same command again to collect the remaining jobs", file=sys.stderr)
        return 4
    return EXIT_SOME_FAILED if summary.failed else 0
