"""One exception family for everything a user can fix.

Every error a user can act on is an :class:`NStageError`. Its ``str()`` is a
single line that names the file, the problem and what to do, so the CLI and
``inference.py`` can print it to stderr and exit with code 2 without a
traceback. Anything else escaping is a bug in nstage.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USER_ERROR = 2


class NStageError(Exception):
    """An input or configuration problem the user can fix.

    Parameters
    ----------
    problem : str
        What is wrong, in plain words.
    path : str or Path, optional
        The file or folder the problem is about.
    hint : str, optional
        What the user can do about it.
    """

    def __init__(self, problem: str, path: str | Path | None = None, hint: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}:")
        parts.append(self.problem.rstrip("."))
        text = " ".join(parts)
        if self.hint:
            text += f" ({self.hint.rstrip('.')})"
        # Collapse whitespace so the message is always exactly one line.
        return " ".join(text.split())


class InputError(NStageError):
    """A file or folder cannot be read, or holds the wrong thing."""


class SUVError(NStageError):
    """PET values cannot be turned into SUV body weight."""


class GeometryError(NStageError):
    """Images cannot be matched in space (no overlap, not 3D, no finite values)."""


class ModelError(NStageError):
    """A model folder (TotalSegmentator weights, nnU-Net lesion model) is missing or broken."""


class UsageError(NStageError):
    """A command line argument is invalid (unknown station code, bad option)."""


class OutputError(NStageError):
    """The output folder cannot take the results (a file, not writable, disk full)."""
