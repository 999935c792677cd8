"""Evaluate N staging against clinical and pathological reference staging.

Three comparisons, each on the cases whose two labels both parse to N0-N3:

- ``ai_vs_pathological``: reference pN, compared the tool's ``n_stage``
- ``clinical_vs_pathological``: reference pN, compared the clinical cN
- ``ai_vs_clinical``: reference cN, compared the tool's ``n_stage``

plus ``mcnemar_ai_vs_clinical``: on cases with all three labels, who was right
against pathology when the other was wrong (exact binomial McNemar test).

Labels are parsed the way hospitals write them (``N2``, ``cN2``, ``pN2a``,
``ypN1``, ``pN1(mi)``, ``2``, lower case); 9th edition subcategories (N1a/N1b,
N2a/N2b) map to their 8th edition category so that all comparisons are on
N0-N3, and descriptors such as ``(mi)``, ``(sn)`` or ``(i+)`` are read with a
note. NX, empty and invalid labels exclude a case from the comparisons that
need that label, and every exclusion is listed with its reason.

Tables are read as hospitals save them: the delimiter (comma, semicolon or tab)
is sniffed, other column names are mapped with ``columns`` (``--truth-columns
case_id=PatientID,cN=Clinical.N.Stage``), and a reference table may hold only
cN or only pN: the comparisons that need the missing column are skipped and
say so. A confidence interval that rests on fewer than
:data:`MIN_CASES_FOR_CI` cases carries a warning.

Statistics come from scikit-learn (confusion matrix, weighted kappa, ROC AUC)
and statsmodels (Wilson intervals, exact McNemar); confidence intervals of
kappa and AUC are percentile bootstraps with a fixed seed, so a run is
reproducible.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nstage.errors import InputError

CATEGORIES = ("N0", "N1", "N2", "N3")
PROB_COLUMNS = ("p_N0", "p_N1", "p_N2", "p_N3")
PRED_REQUIRED = ("case_id", "n_stage")
TRUTH_REQUIRED = ("case_id", "cN", "pN")
TRUTH_LABELS = ("cN", "pN")
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 0
# Below this many cases a 95% interval is too unstable to lean on (a Wilson interval on 9
# cases spans about 40 percentage points): it is reported with a warning, not hidden.
MIN_CASES_FOR_CI = 10
DELIMITERS = (",", ";", "\t")

# (key in metrics.json, reference label, compared label, plain names of both)
COMPARISONS = (
    ("ai_vs_pathological", "pN", "ai", "pathology", "AI"),
    ("clinical_vs_pathological", "pN", "cN", "pathology", "clinical staging"),
    ("ai_vs_clinical", "cN", "ai", "clinical staging", "AI"),
)
LABEL_NAMES = {"ai": "AI n_stage", "cN": "clinical cN", "pN": "pathological pN"}

# Descriptor prefixes of TNM: y (after therapy), r (recurrence), a (autopsy),
# c / p (clinical / pathological), u (ultrasound, ESMO use), s (surgical).
_PREFIX = r"(?:[yra]{0,2}[cpus]?)"
# Descriptors that do not change the category: micrometastasis (mi), sentinel node
# (sn), isolated tumour cells / molecular findings (N0(i+), N0(mol+)), fine-needle
# (f); written in brackets or, as pN1mi often is, without.
_SUFFIX = r"(?:\((?P<sfx>mi|sn|i[+-]|mol[+-]|f)\)|(?P<bare>mi))?"
_LABEL_RE = re.compile(rf"^{_PREFIX}n(?P<cat>[0-9]+|x)(?P<sub>[a-c][12]?)?{_SUFFIX}$")
SUFFIX_NOTES = {
    "mi": "micrometastasis",
    "sn": "sentinel node biopsy",
    "i+": "isolated tumour cells",
    "i-": "no isolated tumour cells",
    "mol+": "molecular findings positive",
    "mol-": "molecular findings negative",
    "f": "fine-needle or core biopsy",
}
_NUMERIC_RE = re.compile(r"^(?P<num>[0-9]+)(?:\.0+)?$")
# 9th edition (IASLC 2024) splits N2 into N2a/N2b; older proposals used N2a1/N2a2
# and N1a/N1b. Each maps to its 8th edition parent category.
_ALLOWED_SUB = {1: {"a", "b"}, 2: {"a", "b", "a1", "a2"}}


@dataclass(frozen=True)
class ParsedLabel:
    """A staging label after parsing.

    Attributes
    ----------
    category : str or None
        "N0".."N3" (8th edition), or None when the label cannot be used.
    reason : str or None
        Why the label cannot be used (None when ``category`` is set).
    raw : str
        The label as written.
    note : str or None
        How a descriptor was read (``pN1(mi)``: micrometastasis, counted as N1).
    """

    category: str | None
    reason: str | None
    raw: str
    note: str | None = None


def parse_label(text: object) -> ParsedLabel:
    """Parse one N label as hospitals write it, with the reason when it is unusable.

    Accepts ``N2``, ``cN2``, ``pN2a``, ``ypN1``, ``pN1(mi)``, ``pN1mi``,
    ``pN1(sn)``, ``N0(i+)``, ``2``, ``2.0``, any case and whitespace. 9th edition
    subcategories map to the 8th edition category (``N2b`` -> ``N2``); a
    descriptor in brackets keeps the category and is explained in ``note``.
    ``NX``, empty and invalid labels (``N4``, ``N1-2``) give ``category=None``
    and a reason.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ParsedLabel(None, "empty label", "")
    raw = str(text).strip()
    if isinstance(text, float) and text.is_integer():
        raw = str(int(text))
    norm = re.sub(r"\s+", "", raw).lower()
    if norm in ("", "nan", "na", "n/a", "none", "null", "-", "unknown", "?"):
        return ParsedLabel(None, "empty label" if not norm else f"no label ({raw!r})", raw)
    numeric = _NUMERIC_RE.match(norm)
    if numeric:
        num = int(numeric.group("num"))
        if num <= 3:
            return ParsedLabel(f"N{num}", None, raw)
        return ParsedLabel(None, f"invalid label {raw!r}: code {num} is not an N category "
                                 "(N0-N3)", raw)
    match = _LABEL_RE.match(norm)
    if not match:
        return ParsedLabel(None, f"invalid label {raw!r}: not an N category (N0-N3)", raw)
    cat, sub = match.group("cat"), match.group("sub")
    if cat == "x":
        return ParsedLabel(None, f"NX ({raw!r}): regional nodes not assessed", raw)
    num = int(cat)
    if num > 3:
        return ParsedLabel(None, f"invalid label {raw!r}: N{num} is not an N category "
                                 "(N0-N3)", raw)
    if sub and sub not in _ALLOWED_SUB.get(num, set()):
        return ParsedLabel(None, f"invalid label {raw!r}: N{num}{sub} is not a known "
                                 "subcategory", raw)
    suffix = match.group("sfx") or match.group("bare")
    note = None
    if suffix:
        note = f"{raw!r} read as N{num} ({suffix}: {SUFFIX_NOTES[suffix]})"
    return ParsedLabel(f"N{num}", None, raw, note)


def parse_n_label(text: object) -> str | None:
    """"N0".."N3" (8th edition) for a label as hospitals write it, None when unusable.

    See :func:`parse_label` for the accepted forms and for the reason of a None.
    """
    return parse_label(text).category


# ---------------------------------------------------------------------------
# Reading the tables


def parse_column_map(text: str | None, allowed: tuple[str, ...] = TRUTH_REQUIRED
                     ) -> dict[str, str]:
    """``"case_id=PatientID,cN=Clinical.N.Stage"`` -> ``{"case_id": "PatientID", ...}``.

    Raises
    ------
    UsageError
        A part is not ``name=column`` or names something other than ``allowed``.
    """
    from nstage.errors import UsageError

    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, column = part.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not column:
            raise UsageError(f"--truth-columns part {part.strip()!r} is not NAME=COLUMN",
                             hint=f"e.g. --truth-columns case_id=PatientID,cN=cN_stage "
                                  f"(names: {', '.join(allowed)})")
        match = next((a for a in allowed if a.lower() == key.lower()), None)
        if match is None:
            raise UsageError(f"--truth-columns names {key!r}, not one of {', '.join(allowed)}")
        out[match] = column
    return out


def _match_columns(df: pd.DataFrame, required: tuple[str, ...], path: str,
                   columns: dict[str, str] | None = None,
                   optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rename the table's columns to nstage's names: ``columns`` maps a name to the file's
    column; otherwise a column matches its name up to case and surrounding spaces.
    ``required`` must be found; ``optional`` ones are taken when present."""
    lookup = {str(c).strip().lower(): c for c in df.columns}
    columns = columns or {}
    found_list = ", ".join(map(str, df.columns))
    rename = {}
    for col in required + optional:
        wanted = columns.get(col, col)
        found = lookup.get(str(wanted).strip().lower())
        if found is None and col in columns:
            raise InputError(f"column {wanted!r} (given for {col}) is missing (columns found: "
                             f"{found_list})", path, "check --truth-columns")
        if found is None and col in required:
            raise InputError(f"column {col!r} is missing (columns found: {found_list})",
                             path, f"the file needs the columns {', '.join(required)}"
                                   + (" (name other columns with --truth-columns "
                                      "case_id=...,cN=...,pN=...)" if "cN" in optional else ""))
        if found is not None:
            rename[found] = col
    for col in PROB_COLUMNS + ("status", "error"):
        found = lookup.get(col.lower())
        if found is not None and found not in rename:
            rename[found] = col
    return df.rename(columns=rename)


def _check_case_ids(df: pd.DataFrame, path: str) -> pd.DataFrame:
    ids = df["case_id"].astype(str).str.strip()
    if (ids == "").any():
        rows = [int(i) + 2 for i in np.flatnonzero((ids == "").to_numpy())[:5]]
        raise InputError(f"empty case_id on line(s) {rows}", path,
                         "give every row a case_id")
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        shown = ", ".join(dup[:10]) + (" ..." if len(dup) > 10 else "")
        raise InputError(f"duplicate case_id(s): {shown}", path,
                         "each case must appear once; remove or rename the duplicates")
    df = df.copy()
    df["case_id"] = ids
    return df


def sniff_delimiter(text: str) -> str:
    """The delimiter of a table (comma, semicolon or tab) from its first lines.

    ``csv.Sniffer`` decides where it can; otherwise the delimiter that splits the header
    line most often, comma when there is none (a one-column table).
    """
    import csv

    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (with or without BOM), else Latin-1 (Excel on Windows)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_table(path: str | Path, required: tuple[str, ...], *,
               columns: dict[str, str] | None = None,
               optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a table (comma, semicolon or tab separated: sniffed) as strings and check its
    columns and case ids.

    Raises
    ------
    InputError
        The file is missing or unreadable, a required column is missing, or a
        case_id is empty or duplicated.
    """
    import io

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path, "check the path")
    text = _read_text(path)
    delimiter = sniff_delimiter(text)
    try:
        df = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False,
                         skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"cannot read as a table: {' '.join(str(exc).split())}", path,
                         "save it as text separated by commas, semicolons or tabs, with a "
                         "header row") from None
    df = _match_columns(df, required, str(path), columns, optional)
    df = _check_case_ids(df, str(path))
    df.attrs["delimiter"] = delimiter
    return df


def read_pred(path: str | Path) -> pd.DataFrame:
    """Read a predictions table (``case_id,n_stage`` and optional ``p_N0..p_N3``).

    Text cells nstage wrote with a leading ``'`` (spreadsheet-safe, :mod:`nstage.io.csvsafe`)
    are read back as they were.
    """
    from nstage.io.csvsafe import read_cell

    df = read_table(path, PRED_REQUIRED)
    for col in ("case_id", "n_stage", "status", "error"):
        if col in df.columns:
            df[col] = df[col].map(read_cell)
    return df


def read_truth(path: str | Path, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a reference table: ``case_id`` and ``cN`` and/or ``pN`` (names mapped by
    ``columns``, e.g. ``{"case_id": "PatientID", "cN": "Clinical.N.Stage"}``).

    Raises
    ------
    InputError
        Neither cN nor pN is there, or a column named in ``columns`` is missing.
    """
    df = read_table(path, ("case_id",), columns=columns, optional=TRUTH_LABELS)
    if not any(c in df.columns for c in TRUTH_LABELS):
        raise InputError(f"neither a cN nor a pN column (columns found: "
                         f"{', '.join(map(str, df.columns))})", path,
                         "the table needs case_id and cN and/or pN; name other columns with "
                         "--truth-columns case_id=...,cN=...,pN=...")
    return df


# ---------------------------------------------------------------------------
# Statistics


def _proportion(count: int, total: int) -> dict:
    """A proportion with its Wilson 95% interval (statsmodels); None when total is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return {"value": None, "ci95": [None, None], "count": 0, "total": 0}
    lo, hi = proportion_confint(count, total, alpha=0.05, method="wilson")
    return {"value": count / total, "ci95": [float(lo), float(hi)], "count": int(count),
            "total": int(total), **_few_cases(total)}


def _few_cases(n: int) -> dict:
    """``{"warning": ...}`` when an interval rests on fewer than MIN_CASES_FOR_CI cases."""
    if 0 < n < MIN_CASES_FOR_CI:
        return {"warning": f"rests on {n} case{'s' if n != 1 else ''}, fewer than "
                           f"{MIN_CASES_FOR_CI}: the interval is unreliable"}
    return {}


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _kappa(ref: np.ndarray, cmp: np.ndarray, weights: str, sample_weight=None) -> float:
    import warnings

    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        # Kappa is undefined (0/0) when both raters use one single category; the
        # NaN that sklearn returns then is reported as null.
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(ref, cmp, labels=[0, 1, 2, 3], weights=weights,
                                       sample_weight=sample_weight))


def _bootstrap_kappas(confusion: np.ndarray, n_boot: int, seed: int) -> dict[str, list]:
    """Percentile 95% intervals of weighted kappa by case resampling.

    Resampling n cases with replacement is a multinomial draw over the 16 cells
    of the confusion matrix, so each replicate is one sklearn call on the 16
    cells weighted by the drawn counts.
    """
    n = int(confusion.sum())
    out: dict[str, list] = {"linear": [None, None], "quadratic": [None, None]}
    if n == 0 or n_boot <= 0:
        return out
    ref_cells, cmp_cells = np.divmod(np.arange(16), 4)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, confusion.ravel() / n, size=n_boot)
    for weights in out:
        values = np.array([_kappa(ref_cells, cmp_cells, weights, sample_weight=d)
                           for d in draws])
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = np.percentile(values, [2.5, 97.5])
            out[weights] = [float(lo), float(hi)]
    return out


def _roc_auc(truth_pos: np.ndarray, score: np.ndarray, n_boot: int, seed: int) -> dict:
    """ROC AUC of ``score`` for the positive class, with a percentile bootstrap interval."""
    from sklearn.metrics import roc_auc_score

    n = int(truth_pos.size)
    res = {"value": None, "ci95": [None, None], "n": n, "reason": None}
    if n == 0:
        res["reason"] = "no case with probabilities"
        return res
    if truth_pos.all() or not truth_pos.any():
        res["reason"] = "the reference has only one class (N2-3 or N0-1) among these cases"
        return res
    res["value"] = float(roc_auc_score(truth_pos, score))
    res.update(_few_cases(n))
    rng = np.random.default_rng(seed + 1)
    values = []
    for _ in range(max(n_boot, 0)):
        idx = rng.integers(0, n, n)
        y = truth_pos[idx]
        if y.all() or not y.any():
            continue
        values.append(roc_auc_score(y, score[idx]))
    if values:
        lo, hi = np.percentile(values, [2.5, 97.5])
        res["ci95"] = [float(lo), float(hi)]
    return res


def compare(ref: np.ndarray, cmp: np.ndarray, *, score: np.ndarray | None = None,
            n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> dict:
    """Agreement statistics of two N0-N3 labelings (codes 0..3).

    Parameters
    ----------
    ref, cmp : array of int
        Reference and compared categories, 0..3 for N0..N3, same length.
    score : array of float, optional
        P(N2 or N3) of the compared rater (NaN where unknown), for the ROC AUC of
        the binary question N2-3 vs N0-1.
    n_boot : int
        Bootstrap resamples for the kappa and AUC intervals.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``weighted_kappa_linear``, ``weighted_kappa_quadratic``,
        ``confusion`` (rows reference N0..N3, columns compared N0..N3),
        ``per_category``, ``upstaging_rate``, ``downstaging_rate``, ``n2_3_vs_n0_1``.
    """
    from sklearn.metrics import confusion_matrix

    ref = np.asarray(ref, dtype=int)
    cmp = np.asarray(cmp, dtype=int)
    n = int(ref.size)
    cm = confusion_matrix(ref, cmp, labels=[0, 1, 2, 3]) if n else np.zeros((4, 4), int)
    boot = _bootstrap_kappas(cm, n_boot, seed)
    kappas = {}
    for weights in ("linear", "quadratic"):
        value = _finite_or_none(_kappa(ref, cmp, weights)) if n else None
        kappas[weights] = {"value": value, "ci95": boot[weights] if value is not None
                           else [None, None], **(_few_cases(n) if value is not None else {})}

    per_category = {}
    for k, name in enumerate(CATEGORIES):
        tp = int(cm[k, k])
        fn = int(cm[k, :].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = n - tp - fn - fp
        per_category[name] = {
            "sensitivity": _proportion(tp, tp + fn),
            "specificity": _proportion(tn, tn + fp),
            "ppv": _proportion(tp, tp + fp),
            "npv": _proportion(tn, tn + fn),
        }

    ref_pos, cmp_pos = ref >= 2, cmp >= 2
    binary = {
        "sensitivity": _proportion(int((ref_pos & cmp_pos).sum()), int(ref_pos.sum())),
        "specificity": _proportion(int((~ref_pos & ~cmp_pos).sum()), int((~ref_pos).sum())),
        "ppv": _proportion(int((ref_pos & cmp_pos).sum()), int(cmp_pos.sum())),
        "npv": _proportion(int((~ref_pos & ~cmp_pos).sum()), int((~cmp_pos).sum())),
    }
    if score is None:
        binary["roc_auc"] = {"value": None, "ci95": [None, None], "n": 0,
                             "reason": "no probabilities for this comparison"}
    else:
        score = np.asarray(score, dtype=float)
        ok = np.isfinite(score)
        binary["roc_auc"] = _roc_auc(ref_pos[ok], score[ok], n_boot, seed)
        binary["roc_auc"]["score"] = "p_N2 + p_N3"

    return {
        "n": n,
        "accuracy": _proportion(int(np.trace(cm)), n),
        "weighted_kappa_linear": kappas["linear"],
        "weighted_kappa_quadratic": kappas["quadratic"],
        "confusion": cm.astype(int).tolist(),
        "per_category": per_category,
        "upstaging_rate": _proportion(int((cmp > ref).sum()), n),
        "downstaging_rate": _proportion(int((cmp < ref).sum()), n),
        "n2_3_vs_n0_1": binary,
    }


def mcnemar_test(ai_correct: np.ndarray, clin_correct: np.ndarray) -> dict:
    """Exact (binomial) McNemar test of AI vs clinical correctness against pathology."""
    from statsmodels.stats.contingency_tables import mcnemar

    ai_correct = np.asarray(ai_correct, bool)
    clin_correct = np.asarray(clin_correct, bool)
    both = int((ai_correct & clin_correct).sum())
    ai_only = int((ai_correct & ~clin_correct).sum())
    clin_only = int((~ai_correct & clin_correct).sum())
    neither = int((~ai_correct & ~clin_correct).sum())
    n = both + ai_only + clin_only + neither
    p_value = None
    if n:
        table = np.array([[both, ai_only], [clin_only, neither]])
        p_value = float(mcnemar(table, exact=True).pvalue)
    return {
        "n": n,
        "ai_only_correct": ai_only,
        "clinical_only_correct": clin_only,
        "both_correct": both,
        "neither_correct": neither,
        "p_value": p_value,
        "test": "exact binomial McNemar (statsmodels mcnemar, exact=True), two-sided",
    }


# ---------------------------------------------------------------------------
# Whole evaluation


def _score_column(pred: pd.DataFrame) -> pd.Series | None:
    """P(N2 or N3) per case from p_N2 + p_N3, NaN where missing or not a number."""
    if "p_N2" not in pred.columns or "p_N3" not in pred.columns:
        return None
    def number(col: pd.Series) -> pd.Series:
        # "0,85": a decimal comma, as semicolon-separated tables from Excel write it
        text = col.astype(str).str.strip().str.replace(",", ".", regex=False)
        return pd.to_numeric(text.replace("", np.nan), errors="coerce")

    return number(pred["p_N2"]) + number(pred["p_N3"])


def _prediction_problem(row: pd.Series) -> str | None:
    """Reason text when batch recorded a failed case (status/error columns)."""
    status = str(row.get("status", "") or "").strip().lower()
    if status and status not in ("ok", "done", "success", "succeeded"):
        error = str(row.get("error", "") or "").strip()
        return f"prediction status {status!r}" + (f": {error}" if error else "")
    return None


def _skipped(key: str, ref_key: str, cmp_key: str, missing: list[str]) -> dict:
    """A comparison that cannot be made: the reference table lacks a column it needs."""
    return {"skipped": True, "n": 0, "reference": LABEL_NAMES[ref_key],
            "compared": LABEL_NAMES[cmp_key],
            "reason": f"skipped: the reference table has no {' and no '.join(missing)} column"}


def evaluate(pred_df: pd.DataFrame, truth_df: pd.DataFrame, *,
             n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> dict:
    """All comparison metrics for a predictions table and a reference table.

    Parameters
    ----------
    pred_df : DataFrame
        ``case_id``, ``n_stage`` and optionally ``p_N0..p_N3`` (as written by
        ``nstage batch`` / ``nstage gc-run``: ``status``/``error`` columns are
        used for the exclusion reasons).
    truth_df : DataFrame
        ``case_id`` and ``cN`` (clinical) and/or ``pN`` (pathological). Comparisons that
        need a missing column are skipped: ``{"skipped": true, "reason": ...}``.
    n_boot, seed : int
        Bootstrap resamples and seed for the kappa and AUC intervals.

    Returns
    -------
    dict
        The content of ``metrics.json`` (see module docstring).

    Raises
    ------
    InputError
        A required column is missing or a case_id is duplicated.
    """
    pred = _check_case_ids(_match_columns(pred_df.astype(object), PRED_REQUIRED, "predictions"),
                           "predictions")
    truth = _check_case_ids(_match_columns(truth_df.astype(object), ("case_id",), "reference",
                                           optional=TRUTH_LABELS), "reference")
    present = [c for c in TRUTH_LABELS if c in truth.columns]
    if not present:
        raise InputError("neither a cN nor a pN column", "reference",
                         "the table needs case_id and cN and/or pN")
    score = _score_column(pred)
    has_scores = score is not None
    pred = pred.assign(_score=score if has_scores else np.nan)
    pred = pred[[c for c in ("case_id", "n_stage", "status", "error", "_score")
                 if c in pred.columns]]
    truth = truth[["case_id", *present]]
    merged = pred.merge(truth, on="case_id", how="outer", indicator=True, sort=False)
    order = list(truth["case_id"]) + [c for c in pred["case_id"] if c not in
                                      set(truth["case_id"])]
    merged = merged.set_index("case_id").loc[order].reset_index()

    labels = _parse_labels(merged, present)
    case_ids = list(merged["case_id"])
    codes = {k: np.array([CATEGORIES.index(p.category) if p.category else -1 for p in v])
             for k, v in labels.items()}
    scores = pd.to_numeric(merged["_score"], errors="coerce").to_numpy(dtype=float)

    metrics: dict = {}
    for key, ref_key, cmp_key, _, _ in COMPARISONS:
        missing = [k for k in (ref_key, cmp_key) if k in TRUTH_LABELS and k not in present]
        if missing:
            metrics[key] = _skipped(key, ref_key, cmp_key, missing)
            continue
        use = (codes[ref_key] >= 0) & (codes[cmp_key] >= 0)
        excluded = []
        for i in np.flatnonzero(~use):
            reasons = []
            for k in (cmp_key, ref_key):
                if codes[k][i] < 0:
                    reasons.append(f"{LABEL_NAMES[k]}: {labels[k][i].reason}")
            excluded.append({"case_id": case_ids[i], "reason": "; ".join(reasons)})
        cmp_scores = scores[use] if cmp_key == "ai" and has_scores else None
        result = compare(codes[ref_key][use], codes[cmp_key][use], score=cmp_scores,
                         n_boot=n_boot, seed=seed)
        result["reference"] = LABEL_NAMES[ref_key]
        result["compared"] = LABEL_NAMES[cmp_key]
        result["excluded"] = {"count": len(excluded), "cases": excluded}
        metrics[key] = result

    if len(present) == 2:
        all3 = (codes["ai"] >= 0) & (codes["cN"] >= 0) & (codes["pN"] >= 0)
        metrics["mcnemar_ai_vs_clinical"] = mcnemar_test(
            codes["ai"][all3] == codes["pN"][all3], codes["cN"][all3] == codes["pN"][all3])
    else:
        all3 = np.zeros(len(case_ids), bool)
        missing = next(c for c in TRUTH_LABELS if c not in present)
        metrics["mcnemar_ai_vs_clinical"] = {
            "skipped": True, "n": 0, "p_value": None,
            "reason": f"skipped: the reference table has no {missing} column"}

    only_pred = [c for c, m in zip(case_ids, merged["_merge"], strict=True) if m == "left_only"]
    only_truth = [c for c, m in zip(case_ids, merged["_merge"], strict=True)
                  if m == "right_only"]
    metrics["cases"] = {
        "in_predictions": int(len(pred)),
        "in_reference": int(len(truth)),
        "only_in_predictions": only_pred,
        "only_in_reference": only_truth,
        "with_all_three_labels": int(all3.sum()),
    }
    metrics["reference_columns"] = present
    metrics["label_notes"] = [
        {"case_id": case_ids[i], "label": LABEL_NAMES[k], "note": parsed.note}
        for k, values in labels.items() for i, parsed in enumerate(values) if parsed.note]
    metrics["warnings"] = _warnings(metrics)
    metrics["settings"] = {
        "label_mapping": "9th edition subcategories (N1a/N1b, N2a/N2b) counted as their 8th "
                         "edition category; descriptors (mi), (sn), (i+), (mol+), (f) keep the "
                         "category; NX, empty and invalid labels excluded",
        "proportion_ci": "Wilson score 95% interval (statsmodels proportion_confint)",
        "kappa": "Cohen's weighted kappa (scikit-learn cohen_kappa_score), labels N0..N3",
        "kappa_ci": f"percentile bootstrap 95% interval, {n_boot} case resamples, seed {seed}",
        "auc_score": "p_N2 + p_N3 of the predictions, reference N2-3 as positive",
        "confusion": "rows = reference N0..N3, columns = compared N0..N3",
        "small_samples": f"intervals resting on fewer than {MIN_CASES_FOR_CI} cases carry a "
                         "warning",
    }
    return metrics


def _parse_labels(merged: pd.DataFrame, present: list[str]) -> dict[str, list[ParsedLabel]]:
    """The AI label and each reference label of every merged row, parsed with reasons."""
    labels: dict[str, list[ParsedLabel]] = {"ai": [], **{c: [] for c in present}}
    for _, row in merged.iterrows():
        if row["_merge"] == "right_only":
            labels["ai"].append(ParsedLabel(None, "no prediction for this case (not in the "
                                                  "predictions file)", ""))
        else:
            problem = _prediction_problem(row)
            parsed = parse_label(row["n_stage"])
            if parsed.category is None and problem:
                parsed = ParsedLabel(None, problem, parsed.raw)
            labels["ai"].append(parsed)
        for col in present:
            if row["_merge"] == "left_only":
                labels[col].append(ParsedLabel(None, "case not in the reference file", ""))
            else:
                labels[col].append(parse_label(row[col]))
    return labels


def _warnings(metrics: dict) -> list[str]:
    """Plain warnings: comparisons on fewer than MIN_CASES_FOR_CI cases, and how many of
    the finer intervals (per category, N2-3 vs N0-1) rest on that few."""
    out = []
    for key, _, _, ref_name, cmp_name in COMPARISONS:
        m = metrics[key]
        if m.get("skipped"):
            continue
        if 0 < m["n"] < MIN_CASES_FOR_CI:
            out.append(f"{cmp_name} vs {ref_name}: {m['n']} case(s), fewer than "
                       f"{MIN_CASES_FOR_CI}: every interval of this comparison is unreliable")
            continue
        small = [v for v in _proportions(m) if v.get("warning")]
        if small:
            out.append(f"{cmp_name} vs {ref_name}: {len(small)} of the per-category and "
                       f"N2-3 vs N0-1 intervals rest on fewer than {MIN_CASES_FOR_CI} cases "
                       "(marked in metrics.json)")
    return out


def _proportions(m: dict) -> list[dict]:
    items = [d[x] for d in m["per_category"].values() for x in d]
    items += [v for k, v in m["n2_3_vs_n0_1"].items() if k != "roc_auc"]
    return items


def evaluate_files(pred_path: str | Path, truth_path: str | Path, *,
                   n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED,
                   truth_columns: dict[str, str] | None = None) -> dict:
    """:func:`evaluate` on two table files; adds the file names and delimiters to the result.

    ``truth_columns`` maps ``case_id``/``cN``/``pN`` to the reference table's own column
    names (see :func:`parse_column_map`).
    """
    pred = read_pred(pred_path)
    truth = read_truth(truth_path, truth_columns)
    metrics = evaluate(pred, truth, n_boot=n_boot, seed=seed)
    metrics["inputs"] = {"pred": str(pred_path), "truth": str(truth_path),
                         "pred_delimiter": pred.attrs.get("delimiter"),
                         "truth_delimiter": truth.attrs.get("delimiter"),
                         "truth_columns": {k: (truth_columns or {}).get(k, k)
                                           for k in ("case_id", *metrics["reference_columns"])}}
    return metrics


# ---------------------------------------------------------------------------
# Plain-language summary and reports


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ci(ci: list) -> str:
    if ci is None or ci[0] is None:
        return "CI not available"
    return f"95% CI {_pct(ci[0])} to {_pct(ci[1])}"


def _num(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def summary_sentences(metrics: dict) -> list[str]:
    """Plain-language sentences, one per comparison plus the McNemar result."""
    lines = []
    for key, _, _, ref_name, cmp_name in COMPARISONS:
        m = metrics[key]
        if m.get("skipped"):
            lines.append(f"{cmp_name[0].upper() + cmp_name[1:]} vs {ref_name}: {m['reason']}.")
            continue
        acc = m["accuracy"]
        if m["n"] == 0:
            lines.append(f"{cmp_name} vs {ref_name}: no case had both labels "
                         f"({m['excluded']['count']} excluded).")
            continue
        up, down = m["upstaging_rate"], m["downstaging_rate"]
        kq = m["weighted_kappa_quadratic"]
        text = (f"{cmp_name} agreed with {ref_name} in {acc['count']} of {m['n']} cases "
                f"({_pct(acc['value'])}, {_ci(acc['ci95'])}); it staged higher in "
                f"{up['count']} ({_pct(up['value'])}) and lower in {down['count']} "
                f"({_pct(down['value'])}); quadratic weighted kappa {_num(kq['value'])}")
        if kq["ci95"][0] is not None:
            text += f" (95% CI {_num(kq['ci95'][0])} to {_num(kq['ci95'][1])})"
        text += "."
        if m["n"] < MIN_CASES_FOR_CI:
            text += (f" Warning: only {m['n']} case(s), fewer than {MIN_CASES_FOR_CI}: the "
                     "intervals are unreliable.")
        if m["excluded"]["count"]:
            text += f" {m['excluded']['count']} case(s) excluded (see the list)."
        lines.append(text[0].upper() + text[1:])
    mc = metrics["mcnemar_ai_vs_clinical"]
    notes = metrics.get("label_notes") or []
    if notes:
        lines.append(f"{len(notes)} label(s) with a descriptor were read as their category "
                     f"(e.g. {notes[0]['note']}); see the list.")
    if mc.get("skipped"):
        lines.append(f"McNemar test of AI vs clinical staging: {mc['reason']}.")
    elif mc["n"]:
        lines.append(
            f"On the {mc['n']} cases with AI, clinical and pathological N, AI alone was right in "
            f"{mc['ai_only_correct']} and clinical staging alone in "
            f"{mc['clinical_only_correct']} (exact McNemar p = {_num(mc['p_value'], 3)}).")
    else:
        lines.append("No case had AI, clinical and pathological N together: no McNemar test.")
    return lines


def _confusion_figure(cm: list, ref_name: str, cmp_name: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=110)
    ax.imshow(arr, cmap="Blues")
    vmax = arr.max() if arr.size else 0
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if vmax and v > vmax / 2 else "black")
    ax.set_xticks(range(4), CATEGORIES)
    ax.set_yticks(range(4), CATEGORIES)
    ax.set_xlabel(cmp_name)
    ax.set_ylabel(f"reference: {ref_name}")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _flag(d: dict) -> str:
    """The small-sample warning of a measure, for the CI column of the tables."""
    return f" (warning: {d['warning']})" if d.get("warning") else ""


def _rows_for(m: dict) -> list[list[str]]:
    acc = m["accuracy"]
    rows = [["accuracy", _pct(acc["value"]), _ci(acc["ci95"]) + _flag(acc)]]
    for w in ("linear", "quadratic"):
        k = m[f"weighted_kappa_{w}"]
        ci = ("CI not available" if k["ci95"][0] is None
              else f"95% CI {_num(k['ci95'][0])} to {_num(k['ci95'][1])}")
        rows.append([f"weighted kappa ({w})", _num(k["value"]), ci + _flag(k)])
    for name in ("upstaging_rate", "downstaging_rate"):
        rows.append([name.replace("_", " "), _pct(m[name]["value"]),
                     _ci(m[name]["ci95"]) + _flag(m[name])])
    b = m["n2_3_vs_n0_1"]
    for name in ("sensitivity", "specificity"):
        rows.append([f"N2-3 vs N0-1 {name}", _pct(b[name]["value"]),
                     _ci(b[name]["ci95"]) + _flag(b[name])])
    auc = b["roc_auc"]
    rows.append(["N2-3 vs N0-1 ROC AUC", _num(auc["value"]),
                 auc.get("reason") or (("" if auc["ci95"][0] is None else
                                        f"95% CI {_num(auc['ci95'][0])} to "
                                        f"{_num(auc['ci95'][1])}") + _flag(auc))])
    for cat, d in m["per_category"].items():
        few = [x for x in ("sensitivity", "specificity", "ppv", "npv") if d[x].get("warning")]
        rows.append([f"{cat} sensitivity / specificity / PPV / NPV",
                     " / ".join(_pct(d[x]["value"]) for x in ("sensitivity", "specificity",
                                                                "ppv", "npv")),
                     f"warning: {', '.join(few)} on fewer than {MIN_CASES_FOR_CI} cases"
                     if few else ""])
    return rows


def write_reports(metrics: dict, out_dir: str | Path) -> list[Path]:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and the confusion PNGs.

    Every file goes through a temporary name and an atomic rename; metrics.json
    is written last.
    """
    import html
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    figures = {}
    for key, _, _, ref_name, cmp_name in COMPARISONS:
        m = metrics[key]
        if m.get("skipped"):
            continue
        tmp = out / f".confusion_{key}.tmp.png"
        _confusion_figure(m["confusion"], ref_name, cmp_name,
                          f"{cmp_name} vs {ref_name} (n={m['n']})", tmp)
        final = out / f"confusion_{key}.png"
        _atomic_write_bytes(final, tmp.read_bytes())
        tmp.unlink()
        figures[key] = final.name
        written.append(final)

    sentences = summary_sentences(metrics)
    md = ["# N-staging evaluation", "", "## Summary", ""]
    md += [f"- {s}" for s in sentences]
    md.append("")
    body = ["<h1>N-staging evaluation</h1>", "<h2>Summary</h2>", "<ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in sentences]
    body.append("</ul>")
    warnings = metrics.get("warnings") or []
    if warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
        body += ["<h2>Warnings</h2>", "<ul>"] + [f"<li>{html.escape(w)}</li>"
                                                for w in warnings] + ["</ul>"]
    for key, _, _, ref_name, cmp_name in COMPARISONS:
        m = metrics[key]
        if m.get("skipped"):
            title = f"{cmp_name[0].upper()}{cmp_name[1:]} vs {ref_name}"
            md += [f"## {title}", "", f"{m['reason'][0].upper()}{m['reason'][1:]}.", ""]
            body += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(m['reason'])}.</p>"]
            continue
        title = f"{cmp_name[0].upper()}{cmp_name[1:]} vs {ref_name} (n = {m['n']})"
        md += [f"## {title}", "", f"![confusion matrix]({figures[key]})", "",
               "| measure | value | 95% CI |", "|---|---|---|"]
        md += [f"| {a} | {b} | {c} |" for a, b, c in _rows_for(m)]
        body += [f"<h2>{html.escape(title)}</h2>",
                 f'<img src="{figures[key]}" alt="confusion matrix {html.escape(title)}">',
                 "<table><tr><th>measure</th><th>value</th><th>95% CI</th></tr>"]
        body += [f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td>"
                 f"<td>{html.escape(c)}</td></tr>" for a, b, c in _rows_for(m)]
        body.append("</table>")
        exc = m["excluded"]
        if exc["count"]:
            md += ["", f"Excluded ({exc['count']}):", ""]
            md += [f"- {e['case_id']}: {e['reason']}" for e in exc["cases"]]
            body.append(f"<p>Excluded ({exc['count']}):</p><ul>")
            body += [f"<li>{html.escape(e['case_id'])}: {html.escape(e['reason'])}</li>"
                     for e in exc["cases"]]
            body.append("</ul>")
        md.append("")
    notes = metrics.get("label_notes") or []
    if notes:
        md += ["## Labels read with a descriptor", ""]
        md += [f"- {n['case_id']} ({n['label']}): {n['note']}" for n in notes] + [""]
        body += ["<h2>Labels read with a descriptor</h2>", "<ul>"]
        body += [f"<li>{html.escape(n['case_id'])} ({html.escape(n['label'])}): "
                 f"{html.escape(n['note'])}</li>" for n in notes] + ["</ul>"]
    md += ["## Methods", ""] + [f"- {k}: {v}" for k, v in metrics["settings"].items()]
    body += ["<h2>Methods</h2>", "<ul>"] + [
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in metrics["settings"].items()]
    body.append("</ul>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>N-staging evaluation"
            "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            "</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    _atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    _atomic_write_text(out / "report.html", page)
    written += [out / "report.md", out / "report.html"]
    _atomic_write_text(out / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    written.append(out / "metrics.json")
    return written


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename (never half-written)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(obj):
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj
