"""The ``nstage`` command line: a thin dispatcher over ``nstage.commands``.

Each subcommand lives in its own module ``nstage.commands.<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed namespace and returning an exit code). Modules import their
heavy dependencies inside ``func`` so ``nstage --help`` stays fast.

Errors: an :class:`nstage.errors.NStageError` becomes one line on stderr and
exit code 2; any other exception becomes one line naming it (the traceback only
with ``NSTAGE_DEBUG=1``) and exit code 1. Never a bare traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from nstage import __version__
from nstage.errors import EXIT_USER_ERROR, NStageError

# Order shown in --help. Module names use underscores ("gc-run" -> gc_run).
COMMANDS = ["run", "demo", "stage", "phantom", "anatomy", "suv", "batch", "evaluate", "gc-run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nstage",
        description="Interpretable lung-cancer N-staging (TNM 8th/9th edition) from FDG-PET/CT.",
    )
    parser.add_argument("--version", action="version", version=f"nstage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"nstage.commands.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    if args.command in ("run", "batch", "demo"):
        from nstage.memory import reuse_freed_memory

        reuse_freed_memory()
    try:
        return int(args.func(args) or 0)
    except NStageError as exc:
        print(f"nstage {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"nstage {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last line of defence: one line, never a traceback
        if os.environ.get("NSTAGE_DEBUG"):
            traceback.print_exc()
        msg = " ".join(str(exc).split())
        print(
            f"nstage {args.command}: internal error: {type(exc).__name__}: {msg} "
            "(set NSTAGE_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
