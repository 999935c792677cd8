"""The ``nstage`` command line: a thin dispatcher over ``nstage.commands``.

Each subcommand lives in its own module ``nstage.commands.<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed namespace and returning an exit code). Modules import their
heavy dependencies inside ``func`` so ``nstage --help`` stays fast.

Errors: an :class:`nstage.errors.NStageError`, and a missing optional package
(``gcapi``, ``torch``, ...: :mod:`nstage.advice` names the ``pip install
"nstage[...]"`` to run), become one line on stderr and exit code 2; Ctrl-C one
line and exit code 130; any other exception one line naming it (the traceback
only with ``NSTAGE_DEBUG=1``) and exit code 1. Never a bare traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import traceback

from nstage import __version__
from nstage.advice import missing_package
from nstage.errors import EXIT_USER_ERROR, NStageError

# Exit code after Ctrl-C: 128 + SIGINT, what a shell reports for a process ended by it.
EXIT_INTERRUPTED = 130

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
    command = "nstage"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USER_ERROR
        command = f"nstage {args.command}"
        if args.command in ("run", "batch", "demo"):
            from nstage.memory import avoid_huge_page_stalls, reuse_freed_memory

            reuse_freed_memory()
            avoid_huge_page_stalls()
        return int(args.func(args) or 0)
    except NStageError as exc:
        print(f"{command}: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return interrupted(command)
    except ModuleNotFoundError as exc:
        advice = missing_package(exc.name or "")
        if advice is None:
            return internal_error(command, exc)
        print(f"{command}: error: {advice}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # last line of defence: one line, never a traceback
        return internal_error(command, exc)


def entry() -> int:
    """The ``nstage`` program: :func:`main`, then Ctrl-C is ignored while the interpreter
    exits (threads are joined), so a late Ctrl-C adds no traceback to a finished command."""
    code = main()
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def interrupted(command: str) -> int:
    """Ctrl-C: one line and exit code 130 (128 + SIGINT, as shells report it); outputs are
    written atomically, so nothing is left half-written."""
    from nstage import progress

    progress.stop()
    again = " (run the same command again to resume)" if command.endswith(
        ("batch", "gc-run")) else ""
    print(f"{command}: interrupted{again}", file=sys.stderr)
    return EXIT_INTERRUPTED


def internal_error(command: str, exc: BaseException) -> int:
    """A bug: one line naming the exception (the traceback only with ``NSTAGE_DEBUG=1``)."""
    if os.environ.get("NSTAGE_DEBUG"):
        traceback.print_exc()
    msg = " ".join(str(exc).split())
    print(
        f"{command}: internal error: {type(exc).__name__}: {msg} "
        "(set NSTAGE_DEBUG=1 for the traceback and please report it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
