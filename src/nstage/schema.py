"""Validate an n-stage.json result against its JSON Schema (``resources/n-stage.schema.json``).

The schema (draft 2020-12) is the output contract of docs/ARCHITECTURE.md and DESIGN.md:
required fields, category and station enums, numbers as numbers (null where a value may be
NaN, as Grand Challenge writes NaN), n_stage and n_stage_9th consistent. Two checks JSON
Schema cannot express are added here: no NaN or infinite float anywhere (``json.dumps``
would write invalid JSON; write null instead) and P(N0..N3) summing to 1.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from nstage.errors import NStageError

SCHEMA_NAME = "n-stage.schema.json"
# Results round probabilities (4 decimals in n-stage.json), so allow that much slack.
_PROBABILITY_SUM_TOLERANCE = 1e-3
_MAX_MESSAGE = 160


class ResultSchemaError(NStageError, ValueError):
    """A result does not match the n-stage.json contract.

    Attributes
    ----------
    errors : list of str
        One entry per problem, ``"$.path: what is wrong"``.
    """

    def __init__(self, errors: list[str], path: str | Path | None = None):
        self.errors = list(errors)
        count = len(self.errors)
        super().__init__(
            f"does not match {SCHEMA_NAME} ({count} problem{'s' if count != 1 else ''}): "
            + "; ".join(self.errors),
            path=path,
            hint="fix the listed fields",
        )


@cache
def _schema_text() -> str:
    return resources.files("nstage").joinpath("resources", SCHEMA_NAME).read_text("utf-8")


def load_schema() -> dict[str, Any]:
    """The n-stage.json JSON Schema (draft 2020-12) as a dict (a fresh copy on each call)."""
    return json.loads(_schema_text())


@cache
def _validator():
    from jsonschema import Draft202012Validator

    # The shipped schema is checked against its metaschema by the tests, not on every run.
    return Draft202012Validator(load_schema())


def _json_path(parts) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _short(message: str) -> str:
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return message


def _non_finite(obj: Any, parts: tuple = ()) -> list[str]:
    """Paths of NaN / infinite floats (invalid in JSON; the contract writes them as null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{_json_path(parts)}: {obj} is not valid JSON (write null instead)"]
    if isinstance(obj, dict):
        return [msg for key, value in obj.items() for msg in _non_finite(value, (*parts, key))]
    if isinstance(obj, list | tuple):
        return [msg for i, value in enumerate(obj) for msg in _non_finite(value, (*parts, i))]
    return []


def _probability_sum(obj: Any) -> list[str]:
    probabilities = obj.get("probabilities") if isinstance(obj, dict) else None
    if not isinstance(probabilities, dict):
        return []
    values = [probabilities.get(key) for key in ("N0", "N1", "N2", "N3")]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        return []  # missing / null / wrong type: reported by the schema or the NaN check
    total = sum(numbers)
    if abs(total - 1.0) > _PROBABILITY_SUM_TOLERANCE:
        return [f"$.probabilities: N0..N3 sum to {total:.6g}, not 1"]
    return []


def schema_errors(obj: Any) -> list[str]:
    """Everything wrong with ``obj`` as an n-stage.json result; empty when it is valid.

    Parameters
    ----------
    obj : dict
        The result as parsed JSON (or as about to be written).

    Returns
    -------
    list of str
        ``"$.path: problem"`` lines, sorted by path.
    """
    messages = []
    for error in _validator().iter_errors(obj):
        messages.append((list(error.absolute_path), _short(error.message)))
    messages.sort(key=lambda item: [str(p) for p in item[0]])
    lines = [f"{_json_path(parts)}: {message}" for parts, message in messages]
    return lines + _non_finite(obj) + _probability_sum(obj)


def validate_result(obj: Any, path: str | Path | None = None) -> None:
    """Raise :class:`ResultSchemaError` listing every problem when ``obj`` is not valid.

    Parameters
    ----------
    obj : dict
        The result.
    path : str or Path, optional
        File the result came from or goes to, named in the message.
    """
    errors = schema_errors(obj)
    if errors:
        raise ResultSchemaError(errors, path=path)
