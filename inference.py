"""Grand Challenge entrypoint: stage the study in /input and write /output.

Reads ``INPUT/images/ct/*.mha`` and ``INPUT/images/pet/*.mha`` (PET in SUV, as in
autoPET), optionally ``INPUT/images/anatomy-segmentation/*.mha`` (a TotalSegmentator
multilabel segmentation of the CT, class ids of the task in ``NSTAGE_ANATOMY_SEG_TASK``,
default ``total``; its classes are used instead of segmenting them again), and writes
``OUTPUT/n-stage.json`` and ``OUTPUT/images/n-staging-segmentation/output.mha``. Real backends are used when
their weights are present (``/opt/ml/model/lesions``, TotalSegmentator weights in the
image or under ``/opt/ml/model/totalsegmentator``), the embedded defaults otherwise;
the JSON says which ran. A thin wrapper over :func:`nstage.pipeline.run_case`.

Input checks: ``--max-memory-gb`` (or ``NSTAGE_MAX_MEMORY_GB``; default the container's memory
limit) and ``--allow-different-studies`` (or ``NSTAGE_ALLOW_DIFFERENT_STUDIES=1``, or a Bool
input socket ``allow-different-studies`` set to true in ``inputs.json``) as for ``nstage run``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("/input"))
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument("--anatomy", default=os.environ.get("NSTAGE_ANATOMY", "auto"),
                        choices=["auto", "classical", "totalsegmentator"])
    parser.add_argument("--lesions", default=os.environ.get("NSTAGE_LESIONS", "auto"),
                        choices=["auto", "suv", "nnunet"])
    parser.add_argument("--lesion-model", type=Path, default=None)
    parser.add_argument("--fast", action="store_true",
                        default=os.environ.get("NSTAGE_FAST", "") not in ("", "0"))
    parser.add_argument("--no-report", dest="report", action="store_false", default=True)
    parser.add_argument("--max-memory-gb", type=float,
                        default=_env_float("NSTAGE_MAX_MEMORY_GB"), metavar="GB")
    parser.add_argument("--allow-different-studies", action="store_true",
                        default=os.environ.get("NSTAGE_ALLOW_DIFFERENT_STUDIES", "")
                        not in ("", "0"))
    args = parser.parse_args(argv)
    if args.max_memory_gb is not None and not args.max_memory_gb > 0:
        parser.error(f"--max-memory-gb must be more than 0, got {args.max_memory_gb}")

    try:
        from nstage.errors import EXIT_USER_ERROR, NStageError
        from nstage.io.readers import gc_input_value
        from nstage.memory import avoid_huge_page_stalls, reuse_freed_memory
        from nstage.pipeline import RunOptions, run_case
    except ImportError as exc:  # pragma: no cover - broken installation
        print(f"inference.py: nstage is not installed: {exc}", file=sys.stderr)
        return 1

    reuse_freed_memory()
    avoid_huge_page_stalls()
    try:
        allow = args.allow_different_studies or \
            gc_input_value(args.input, "allow-different-studies") is True
        options = RunOptions(anatomy=args.anatomy, lesions=args.lesions,
                             lesion_model=args.lesion_model, fast=args.fast, report=args.report,
                             max_memory_gb=args.max_memory_gb, allow_different_studies=allow)
        from nstage.anatomy.precomputed import with_gc_anatomy_segmentation

        options = with_gc_anatomy_segmentation(options, args.input)
        result = run_case(args.input, None, args.output, options)
    except NStageError as exc:
        print(f"inference.py: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # one line on stderr is what Grand Challenge shows
        if os.environ.get("NSTAGE_DEBUG"):
            traceback.print_exc()
        print(f"inference.py: internal error: {type(exc).__name__}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return 1
    print(f"N stage {result['n_stage']} / {result['n_stage_9th']} "
          f"(anatomy: {result['backends']['anatomy']}, lesions: {result['backends']['lesions']})")
    return 0


def _env_float(name: str) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        print(f"inference.py: error: {name}={text!r} is not a number (GB)", file=sys.stderr)
        raise SystemExit(2) from None


def _exit_now(code: int) -> None:
    """Leave without interpreter teardown.

    The container runs one case: once the outputs are written and closed, and the report's
    child has been joined, nothing is left to clean up, while unloading scipy, matplotlib
    (and torch) module by module costs 0.2-0.3 s of every job.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
