"""Every number that finds, measures, places and judges lesions, and decides stations.

The values and their sources live in ``resources/thresholds.json`` (data, not code). Every
entry there is ``{"value": ..., "unit": ..., "source": ...}``; :func:`load_thresholds`
returns only the values, as ``{section: {key: value}}``, with overrides applied, and
:func:`differences` says which of them differ from the packaged defaults (n-stage.json
records it). Modules read their numbers from here; none keeps a second copy.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from nstage.errors import InputError, UsageError

Thresholds = dict[str, dict[str, Any]]

SECTIONS = ("detection", "measurement", "classification", "positivity", "probability",
            "landmarks", "stations", "assessment", "plausibility")


@lru_cache(maxsize=1)
def _packaged() -> dict[str, Any]:
    text = resources.files("nstage").joinpath("resources", "thresholds.json").read_text("utf-8")
    return json.loads(text)


def _read(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return _packaged()
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read thresholds file ({exc.strerror})", path,
                         "give a readable JSON file") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"thresholds file is not valid JSON (line {exc.lineno})", path,
                         "fix the JSON syntax") from exc


def sources(path: str | Path | None = None) -> dict[str, dict[str, str]]:
    """``{section: {key: source text}}`` for every threshold (for reports and docs)."""
    raw = _read(path)
    return {s: {k: str(v.get("source", "")) for k, v in raw[s].items()} for s in SECTIONS
            if s in raw}


def load_thresholds(overrides: dict[str, Any] | None = None,
                    path: str | Path | None = None) -> Thresholds:
    """Threshold values ``{section: {key: value}}``.

    Parameters
    ----------
    overrides : dict, optional
        Either dotted keys (``{"positivity.suv_max_min": 3.0}``) or nested sections
        (``{"positivity": {"suv_max_min": 3.0}}``). Unknown keys are refused.
    path : str or Path, optional
        A thresholds JSON in the packaged format instead of the packaged one (a file given with
        only some entries, as ``{section: {key: {"value": v}}}`` or ``{key: v}``, overrides
        the packaged values).

    Raises
    ------
    UsageError
        An override names a section or key that does not exist.
    """
    base = _packaged()
    values: Thresholds = {s: {k: copy.deepcopy(v["value"]) for k, v in base[s].items()}
                          for s in SECTIONS}
    if path is not None:
        extra = _read(path)
        _apply(values, {s: {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
                            for k, v in sec.items()}
                        for s, sec in extra.items() if not s.startswith("_")})
    if overrides:
        _apply(values, overrides)
    return values


def read_overrides(path: str | Path) -> Thresholds:
    """The values a user thresholds file sets, checked, as ``{section: {key: value}}``.

    The file is JSON in the packaged format with only the entries to change
    (``{section: {key: {"value": v, ...}}}``) or plain values (``{section: {key: v}}``).
    Unknown sections or keys are refused (one line naming the file).
    """
    raw = _read(path)
    if not isinstance(raw, dict):
        raise InputError("thresholds file must hold a JSON object {section: {key: value}}", path,
                         "see resources/thresholds.json for the format")
    out: Thresholds = {}
    for section, entries in raw.items():
        if section.startswith("_"):
            continue
        if not isinstance(entries, dict):
            raise InputError(f"thresholds section {section!r} must be an object", path,
                             "write {section: {key: value}}")
        out[section] = {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
                        for k, v in entries.items()}
    try:
        load_thresholds(out)
    except UsageError as exc:
        raise InputError(exc.problem, path, exc.hint) from None
    return out


def _apply(values: Thresholds, overrides: dict[str, Any]) -> None:
    for key, val in overrides.items():
        if isinstance(val, dict):
            for sub, v in val.items():
                _set(values, key, sub, v)
        elif "." in key:
            section, name = key.split(".", 1)
            _set(values, section, name, val)
        else:
            raise UsageError(f"threshold override {key!r} needs a section",
                             hint=f"write it as section.key with section one of {', '.join(SECTIONS)}")


def _set(values: Thresholds, section: str, name: str, value: Any) -> None:
    if section not in values:
        raise UsageError(f"unknown threshold section {section!r}",
                         hint=f"use one of {', '.join(SECTIONS)}")
    if name not in values[section]:
        raise UsageError(f"unknown threshold {section}.{name}",
                         hint=f"known: {', '.join(sorted(values[section]))}")
    values[section][name] = value


def resolve(thresholds: Thresholds | None) -> Thresholds:
    """The packaged defaults when ``thresholds`` is None; else defaults updated by it.

    Lets callers pass a partial dict (only the sections/keys they change).
    """
    if thresholds is None:
        return load_thresholds()
    return load_thresholds(overrides={s: dict(v) for s, v in thresholds.items()
                                      if isinstance(v, dict)})


def differences(thresholds: Thresholds | None) -> dict[str, dict[str, Any]]:
    """Values that differ from the packaged defaults, as ``{"section.key": {"value", "default"}}``.

    Parameters
    ----------
    thresholds : dict or None
        Values as returned by :func:`load_thresholds` (or a partial dict of overrides).

    Returns
    -------
    dict
        Empty when every value is the default (or ``thresholds`` is None).
    """
    if not thresholds:
        return {}
    defaults = load_thresholds()
    out: dict[str, dict[str, Any]] = {}
    for section, values in resolve(thresholds).items():
        for key, value in values.items():
            default = defaults[section][key]
            if value != default:
                out[f"{section}.{key}"] = {"value": value, "default": default}
    return out
