"""Spreadsheet-safe CSV cells (no formula injection).

A spreadsheet opening a CSV runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and,
in some programs, a tab or carriage return) as a formula: a case id such as
``=HYPERLINK(...)`` would run when a user opens ``predictions.csv``. Every text cell nstage
writes that starts with one of those characters, or with ``'`` itself, gets a leading ``'``
(OWASP's advice); spreadsheets show the quote as "this is text" and hide it.

Columns that hold numbers (the probabilities ``p_N0..p_N3``) are written as numbers and never
prefixed, so a spreadsheet still computes with them: a numeric column is formatted by nstage
from a float, so it cannot carry a formula. :func:`read_cell` undoes the prefix, so ``nstage
evaluate`` reads a quoted case id back exactly as it was.
"""

from __future__ import annotations

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def safe_cell(value: object) -> str:
    """``value`` as a CSV text cell that no spreadsheet runs as a formula."""
    text = "" if value is None else str(value)
    if text.startswith((*_FORMULA_START, _QUOTE)):
        return _QUOTE + text
    return text


def read_cell(text: str) -> str:
    """The original text of a cell written by :func:`safe_cell`."""
    if len(text) > 1 and text[0] == _QUOTE and text[1] in (*_FORMULA_START, _QUOTE):
        return text[1:]
    return text


def safe_row(row: dict[str, object], numeric: frozenset[str] | set[str]) -> dict[str, str]:
    """A CSV row with every text cell made safe; columns in ``numeric`` are left as they are."""
    return {k: (v if k in numeric else safe_cell(v)) for k, v in row.items()}
