"""TNM N category of non-small-cell lung cancer from positive regional node stations.

Pure functions, no imaging. Input: the side of the primary tumour (patient left/right, or
unknown) and the IASLC stations of the positive regional nodes; output: the 8th edition N
category (N0-N3, NX), the 9th edition one (N0, N1, N2a, N2b, N3, NX) and a rule trace saying
which node made which category and why.

Clinical source (``../shared/docs/CLINICAL.md`` section 1):

* 8th edition (AJCC/UICC 2017), per positive regional node, relative to the primary's side:
  ipsilateral intrapulmonary, peribronchial or hilar (stations 10-14) -> N1; ipsilateral
  mediastinal (2, 3a, 3p, 4, 5, 6, 8, 9) or subcarinal (7, either side) -> N2; contralateral
  mediastinal or hilar (2-14 of the other side) or any scalene / supraclavicular (station 1,
  either side) -> N3. The patient's N is the highest category over all positive nodes; skip
  metastases (N2 without N1) are still N2.
* 9th edition (IASLC proposals, Huang et al., J Thorac Oncol 2024): N0, N1, N3 unchanged; N2
  splits into N2a (a single N2 station) and N2b (two or more N2 stations). A station is the
  code with its side letter (2R and 4R are two stations; two nodes in 4R are one station).
* Defaults where sources differ, each a field of :class:`StagingRules`:
  stations 3a/3p counted ipsilateral (Mountain-Dresler 1997: midline nodes are ipsilateral);
  stations 5/6 (left-sided) contralateral, so N3, for a right primary (some rule sets say N2);
  primary side unknown: N for a left and for a right primary, reported only when both agree,
  else NX with the reason.

Sides are the patient's (LPS: +x is patient left). Nodes outside the regional stations
(axillary, cervical above station 1, abdominal) are not N and must not be passed here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from nstage.errors import UsageError

Side = Literal["left", "right", "midline"]
PrimarySide = Literal["left", "right", "unknown"]

#: Canonical IASLC station codes (Rusch et al., J Thorac Oncol 2009), in map order.
STATIONS: tuple[str, ...] = (
    "1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7", "8R", "8L",
    "9R", "9L", "10R", "10L", "11R", "11L", "12R", "12L", "13R", "13L", "14R", "14L",
)  # fmt: skip

#: 8th edition categories in increasing severity (NX is not ordered).
CATEGORIES_8TH: tuple[str, ...] = ("N0", "N1", "N2", "N3")
#: 9th edition categories in increasing severity (NX is not ordered).
CATEGORIES_9TH: tuple[str, ...] = ("N0", "N1", "N2a", "N2b", "N3")
NX = "NX"
PRIMARY_SIDES: tuple[str, ...] = ("left", "right", "unknown")
UNKNOWN_SIDE_POLICIES: tuple[str, ...] = ("agree", "highest", "nx")

EDITION_8TH = (
    "AJCC/UICC TNM 8th edition (2017): N1 ipsilateral intrapulmonary/hilar (10-14); "
    "N2 ipsilateral mediastinal (2, 3a, 3p, 4, 5, 6, 8, 9) or subcarinal (7); "
    "N3 contralateral mediastinal/hilar or any scalene/supraclavicular (1)"
)
EDITION_9TH = (
    "IASLC 9th edition (Huang et al., J Thorac Oncol 2024): N0, N1, N3 as 8th; "
    "N2a a single N2 station, N2b two or more N2 stations (station = code with side letter)"
)

_BY_KEY = {code.upper(): code for code in STATIONS}
_MIDLINE = frozenset({"3a", "3p", "7"})
_LEFT_UNPAIRED = frozenset({"5", "6"})


def _valid_codes() -> str:
    return " ".join(STATIONS)


def normalize_station(code: str) -> str:
    """Canonical IASLC code for ``code`` (case-insensitive, spaces ignored).

    Parameters
    ----------
    code : str
        For example ``"4r"``, ``" 10 L "``, ``"3A"``.

    Returns
    -------
    str
        One of :data:`STATIONS`, e.g. ``"4R"``, ``"10L"``, ``"3a"``.

    Raises
    ------
    UsageError
        When the code is not a regional station; the one-line message lists the valid codes.
    """
    key = "".join(str(code).split()).upper()
    try:
        return _BY_KEY[key]
    except KeyError:
        raise UsageError(
            f"unknown lymph-node station {str(code).strip()!r}",
            hint=f"valid IASLC stations: {_valid_codes()}",
        ) from None


def station_side(station: str) -> Side:
    """Patient side of a station: ``"left"``, ``"right"`` or ``"midline"``.

    3a, 3p and 7 are midline; 5 (subaortic) and 6 (para-aortic) lie on the left; every other
    station carries its side letter (R = patient right, L = patient left).
    """
    code = normalize_station(station)
    if code in _MIDLINE:
        return "midline"
    if code in _LEFT_UNPAIRED:
        return "left"
    return "right" if code.endswith("R") else "left"


def station_number(station: str) -> int:
    """The station's number without side or suffix (``"10R"`` -> 10, ``"3a"`` -> 3)."""
    code = normalize_station(station)
    return int(code.rstrip("RLap"))


def _normalize_primary_side(primary_side: str | None) -> str:
    if primary_side is None:
        return "unknown"
    side = str(primary_side).strip().lower()
    if side not in PRIMARY_SIDES:
        raise UsageError(
            f"unknown primary tumour side {primary_side!r}",
            hint="use one of: left, right, unknown",
        )
    return side


@dataclass(frozen=True)
class StagingRules:
    """Settings where published rule sets differ (defaults from CLINICAL.md section 1).

    Attributes
    ----------
    stations_3_ipsilateral : bool
        True (default): the midline stations 3a (prevascular) and 3p (retrotracheal) count as
        ipsilateral mediastinal, N2, whatever the primary's side (Mountain-Dresler 1997).
        False: they count as contralateral, N3.
    stations_5_6_n3_for_right : bool
        True (default): stations 5 and 6 lie on the left, so with a right primary they are
        contralateral mediastinal, N3. False: N2 for a right primary (some rule sets).
        With a left primary they are N2 either way.
    unknown_side : {"agree", "highest", "nx"}
        What to report when the primary's side is unknown (no primary found, or primaries in
        both lungs). ``"agree"`` (default): N for a left and for a right primary, reported when
        both agree, otherwise NX with the reason. ``"highest"``: the higher of the two
        (conservative up-staging). ``"nx"``: always NX.
    """

    stations_3_ipsilateral: bool = True
    stations_5_6_n3_for_right: bool = True
    unknown_side: str = "agree"

    def __post_init__(self) -> None:
        if self.unknown_side not in UNKNOWN_SIDE_POLICIES:
            raise UsageError(
                f"unknown side policy {self.unknown_side!r}",
                hint=f"use one of: {', '.join(UNKNOWN_SIDE_POLICIES)}",
            )

    def to_dict(self) -> dict[str, bool | str]:
        """Settings as plain JSON values (``edition_rules.settings`` in n-stage.json)."""
        return asdict(self)


DEFAULT_RULES = StagingRules()


def edition_rules(rules: StagingRules = DEFAULT_RULES) -> dict:
    """The ``edition_rules`` object of n-stage.json: rule summaries and the settings used."""
    return {"8th": EDITION_8TH, "9th": EDITION_9TH, "settings": rules.to_dict()}


def _rank8(category: str) -> int:
    return CATEGORIES_8TH.index(category)


def _rank9(category: str) -> int:
    return CATEGORIES_9TH.index(category)


def _category_known_side(code: str, primary_side: str, rules: StagingRules) -> tuple[str, str]:
    """8th edition category of one node for a left or right primary, with its rule text."""
    side = station_side(code)
    number = station_number(code)
    primary = f"{primary_side} primary"
    if number == 1:
        return "N3", f"{code} is scalene/supraclavicular (station 1, either side): N3"
    if code == "7":
        return "N2", "7 is subcarinal (either side): N2"
    if code in ("3a", "3p"):
        name = "prevascular" if code == "3a" else "retrotracheal"
        if rules.stations_3_ipsilateral:
            return "N2", f"{code} is midline {name}, counted ipsilateral mediastinal: N2"
        return "N3", f"{code} is midline {name}, counted contralateral mediastinal (setting): N3"
    if code in _LEFT_UNPAIRED:
        name = "subaortic" if code == "5" else "para-aortic"
        if primary_side == "left":
            return "N2", f"{code} is left {name}, ipsilateral mediastinal ({primary}): N2"
        if rules.stations_5_6_n3_for_right:
            return "N3", f"{code} is left {name}, contralateral mediastinal ({primary}): N3"
        return "N2", f"{code} is left {name}, counted N2 for a right primary (setting): N2"
    ipsilateral = side == primary_side
    if number >= 10:
        if ipsilateral:
            return "N1", f"{code} is ipsilateral hilar/intrapulmonary ({primary}): N1"
        return "N3", f"{code} is contralateral hilar/intrapulmonary ({primary}): N3"
    # Stations 2, 4, 8, 9 with a side letter.
    if ipsilateral:
        return "N2", f"{code} is ipsilateral mediastinal ({primary}): N2"
    return "N3", f"{code} is contralateral mediastinal ({primary}): N3"


def node_category(
    station: str, primary_side: str, rules: StagingRules = DEFAULT_RULES
) -> tuple[str, str]:
    """8th edition N category implied by one positive node, with a one-line rule text.

    Parameters
    ----------
    station : str
        IASLC code (case-insensitive), see :data:`STATIONS`.
    primary_side : {"left", "right", "unknown"}
        Patient side of the primary tumour. For ``"unknown"`` the node's category for a left
        and for a right primary are combined by ``rules.unknown_side`` (``"agree"``: the common
        category, else ``"NX"``; ``"highest"``: the higher; ``"nx"``: ``"NX"``).
    rules : StagingRules

    Returns
    -------
    (category, rule) : (str, str)
        Category ``"N1"``, ``"N2"``, ``"N3"`` (or ``"NX"`` for an unknown side) and why.

    Raises
    ------
    UsageError
        Unknown station code or primary side.
    """
    code = normalize_station(station)
    side = _normalize_primary_side(primary_side)
    if side != "unknown":
        return _category_known_side(code, side, rules)
    left, left_rule = _category_known_side(code, "left", rules)
    right, right_rule = _category_known_side(code, "right", rules)
    if rules.unknown_side == "nx":
        return NX, f"primary side unknown (policy: always NX); {left} if left, {right} if right"
    if left == right:
        return left, f"primary side unknown, same for either side: {left_rule}"
    if rules.unknown_side == "highest":
        worst, worst_side = (left, "left") if _rank8(left) > _rank8(right) else (right, "right")
        return worst, (
            f"primary side unknown (policy: highest): {worst} assuming a {worst_side} primary; "
            f"{left} if left, {right} if right"
        )
    return NX, f"primary side unknown and the side decides: {left_rule}; {right_rule}"


@dataclass
class TraceEntry:
    """Which category one positive station implies, and why.

    Attributes
    ----------
    station : str
        Canonical IASLC code.
    station_side : {"left", "right", "midline"}
        Patient side of the station (written as ``"side"`` in JSON).
    category : str
        8th edition category this station implies: N1, N2, N3 (NX: primary side unknown
        and the side would decide).
    rule : str
        One line: the rule that fired (and, for N2 stations, the 9th edition count).
    """

    station: str
    station_side: Side
    category: str
    rule: str

    def to_dict(self) -> dict[str, str]:
        """JSON form: ``{"station", "side", "category", "rule"}`` (n-stage.json ``trace``)."""
        return {
            "station": self.station,
            "side": self.station_side,
            "category": self.category,
            "rule": self.rule,
        }


@dataclass
class NStage:
    """The N category of one patient.

    Attributes
    ----------
    n_stage : str
        8th edition: N0, N1, N2, N3 or NX.
    n_stage_9th : str
        9th edition: N0, N1, N2a, N2b, N3 or NX.
    primary_side : {"left", "right", "unknown"}
    trace : list of TraceEntry
        One entry per distinct positive station, in IASLC map order.
    reasons : list of str
        Why NX, or what limited the assessment (empty when nothing did).
    n2_stations : list of str
        Distinct stations counted N2 (the 9th edition N2a/N2b count), in map order. For an
        unknown side: the stations counted N2 for both a left and a right primary.
    """

    n_stage: str
    n_stage_9th: str
    primary_side: str
    trace: list[TraceEntry] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    n2_stations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON values; ``trace`` entries as in :meth:`TraceEntry.to_dict`."""
        return {
            "n_stage": self.n_stage,
            "n_stage_9th": self.n_stage_9th,
            "primary_side": self.primary_side,
            "trace": [entry.to_dict() for entry in self.trace],
            "reasons": list(self.reasons),
            "n2_stations": list(self.n2_stations),
        }


def _distinct_stations(stations: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """Canonical distinct stations in map order, and how many nodes each had."""
    if isinstance(stations, str):
        raise TypeError("stations must be an iterable of station codes, not one string")
    counts: dict[str, int] = {}
    for station in stations:
        code = normalize_station(station)
        counts[code] = counts.get(code, 0) + 1
    ordered = [code for code in STATIONS if code in counts]
    return ordered, counts


def _ninth(n8: str, n2_count: int) -> str:
    if n8 != "N2":
        return n8
    return "N2a" if n2_count == 1 else "N2b"


def _n_category_known(
    side: str, codes: list[str], counts: dict[str, int], rules: StagingRules
) -> NStage:
    trace: list[TraceEntry] = []
    categories = []
    for code in codes:
        category, rule = _category_known_side(code, side, rules)
        categories.append(category)
        if counts[code] > 1:
            rule += f" ({counts[code]} nodes, one station)"
        trace.append(TraceEntry(code, station_side(code), category, rule))
    n8 = max(categories, key=_rank8, default="N0")
    n2 = [code for code, category in zip(codes, categories, strict=True) if category == "N2"]
    n9 = _ninth(n8, len(n2))
    if n8 == "N2":
        # Say in each N2 entry how it counts for the 9th edition split.
        note = (
            "single N2 station: N2a (9th ed.)"
            if len(n2) == 1
            else f"one of {len(n2)} N2 stations ({', '.join(n2)}): N2b (9th ed.)"
        )
        for entry in trace:
            if entry.category == "N2":
                entry.rule += f"; {note}"
    return NStage(n8, n9, side, trace, [], n2)


def _combine_unknown(
    left: NStage, right: NStage, codes: list[str], counts: dict[str, int], rules: StagingRules
) -> NStage:
    """Patient N for an unknown primary side from the left- and right-primary answers."""
    trace = []
    for code in codes:
        category, rule = node_category(code, "unknown", rules)
        if counts[code] > 1:
            rule += f" ({counts[code]} nodes, one station)"
        trace.append(TraceEntry(code, station_side(code), category, rule))
    both = f"a left primary gives {left.n_stage}/{left.n_stage_9th}, a right one {right.n_stage}/{right.n_stage_9th}"
    common_n2 = [code for code in left.n2_stations if code in right.n2_stations]
    if rules.unknown_side == "nx":
        reason = f"primary tumour side unknown: NX by setting (unknown_side=nx); {both}"
        return NStage(NX, NX, "unknown", trace, [reason], common_n2)
    if rules.unknown_side == "highest":
        n8 = max(left.n_stage, right.n_stage, key=_rank8)
        n9 = max(left.n_stage_9th, right.n_stage_9th, key=_rank9)
        if _rank9(left.n_stage_9th) == _rank9(right.n_stage_9th):
            n2 = common_n2
        else:
            n2 = max(left, right, key=lambda n: _rank9(n.n_stage_9th)).n2_stations
        reason = f"primary tumour side unknown: reporting the higher category (unknown_side=highest); {both}"
        return NStage(n8, n9, "unknown", trace, [reason], list(n2))
    # "agree": each edition is reported only when both sides give the same answer.
    n8 = left.n_stage if left.n_stage == right.n_stage else NX
    n9 = left.n_stage_9th if left.n_stage_9th == right.n_stage_9th and n8 != NX else NX
    if n8 == NX or n9 == NX:
        reason = f"primary tumour side unknown and the side decides the category: {both}"
    else:
        reason = f"primary tumour side unknown, but either side gives {n8}/{n9}"
    return NStage(n8, n9, "unknown", trace, [reason], common_n2)


def n_category(
    primary_side: str | None,
    stations: Iterable[str],
    rules: StagingRules = DEFAULT_RULES,
) -> NStage:
    """N category (8th and 9th edition) from the stations of the positive regional nodes.

    Parameters
    ----------
    primary_side : {"left", "right", "unknown"} or None
        Patient side of the primary tumour; None means unknown.
    stations : iterable of str
        IASLC station of each positive regional node (case-insensitive). A station given
        more than once (several nodes in it) counts once for the 9th edition N2a/N2b split.
    rules : StagingRules
        Settings where sources differ; :data:`DEFAULT_RULES` follows CLINICAL.md.

    Returns
    -------
    NStage
        8th edition N0-N3 (highest over the nodes; skip metastases are still N2), 9th edition
        N0/N1/N2a/N2b/N3, NX per ``rules.unknown_side`` when the side is unknown, a trace entry
        per distinct station and the reasons for NX.

    Raises
    ------
    UsageError
        Unknown station code or primary side (one line listing the valid values).
    """
    side = _normalize_primary_side(primary_side)
    codes, counts = _distinct_stations(stations)
    if side != "unknown":
        return _n_category_known(side, codes, counts, rules)
    left = _n_category_known("left", codes, counts, rules)
    right = _n_category_known("right", codes, counts, rules)
    return _combine_unknown(left, right, codes, counts, rules)


Distribution = dict  # {station code or None (not regional): probability}


def _as_distribution(station) -> dict[str | None, float]:
    """A node's station as a distribution: a code is certain; a dict is checked."""
    if isinstance(station, dict):
        out: dict[str | None, float] = {}
        for code, q in station.items():
            q = float(q)
            if not math.isfinite(q) or q < 0.0:
                raise ValueError(f"station probability for {code} must be >= 0, got {q}")
            key = None if code is None else normalize_station(code)
            out[key] = out.get(key, 0.0) + q
        total = sum(out.values())
        if not math.isclose(total, 1.0, abs_tol=1e-3):
            raise ValueError(f"station probabilities must sum to 1, got {total:.4f}")
        return {k: v / total for k, v in out.items()}
    return {normalize_station(station): 1.0}


def _distributions_known(side: str, nodes: list[tuple[dict, float]],
                         rules: StagingRules) -> tuple[dict[str, float], dict[str, float]]:
    """Exact P over the 8th and 9th edition categories for a known primary side.

    Sums over every combination of node involvement and station alternatives, by dynamic
    programming over the states that decide the category: N3 reached, else the highest
    category so far and the set of distinct N2 stations (one station, or two or more).
    """
    # state: (rank 0..2, n2) with n2 = () | (code,) | "many"; N3 absorbing.
    states: dict[tuple, float] = {(0, ()): 1.0}
    n3 = 0.0
    for dist, p in nodes:
        nxt: defaultdict[tuple, float] = defaultdict(float)
        for (rank, n2), q in states.items():
            nxt[(rank, n2)] += q * (1.0 - p)
            for code, w in dist.items():
                mass = q * p * w
                if mass == 0.0:
                    continue
                if code is None:
                    nxt[(rank, n2)] += mass
                    continue
                category = _rank8(_category_known_side(code, side, rules)[0])
                if category == 3:
                    n3 += mass
                elif category == 2:
                    grown = n2 if n2 == "many" or n2 == (code,) else (
                        (code,) if n2 == () else "many")
                    nxt[(2, grown)] += mass
                else:
                    nxt[(max(rank, category), n2)] += mass
        states = dict(nxt)
    p8 = dict.fromkeys(CATEGORIES_8TH, 0.0)
    p9 = dict.fromkeys(CATEGORIES_9TH, 0.0)
    for (rank, n2), q in states.items():
        p8[CATEGORIES_8TH[rank]] += q
        key = CATEGORIES_9TH[rank] if rank < 2 else ("N2b" if n2 == "many" else "N2a")
        p9[key] += q
    p8["N3"] = p9["N3"] = n3
    return ({k: min(1.0, max(0.0, v)) for k, v in p8.items()},
            {k: min(1.0, max(0.0, v)) for k, v in p9.items()})


@dataclass(frozen=True)
class NProbabilities:
    """P over the categories of both editions (each sums to 1)."""

    n8: dict[str, float]
    n9: dict[str, float]

    def most_probable(self) -> tuple[str, str]:
        """The 8th and 9th edition categories with the highest probability (ties: lower)."""
        return (max(CATEGORIES_8TH, key=lambda c: (self.n8[c], -_rank8(c))),
                max(CATEGORIES_9TH, key=lambda c: (self.n9[c], -_rank9(c))))


def n_probabilities(
    primary_side: str | None,
    nodes: Iterable[tuple],
    rules: StagingRules = DEFAULT_RULES,
) -> NProbabilities:
    """P(N0..N3) and P(N0, N1, N2a, N2b, N3) from uncertain nodes, by exact enumeration.

    Each node ``i`` is involved with probability ``p_i`` (independently of the others) and
    then lies in station ``s`` with probability ``w_i(s)`` (its station and the alternatives
    across nearby boundaries; ``s=None``: not a regional node). The result sums over every
    combination (by dynamic programming over what decides the category, which is exact):
    the 8th edition category is the highest over the involved nodes; the 9th splits N2 by the
    number of distinct N2 stations. For an unknown primary side the answer is the average of
    the left- and right-primary distributions (equal prior on the side).

    Parameters
    ----------
    primary_side : {"left", "right", "unknown"} or None
    nodes : iterable of (station, probability)
        ``station`` a code (certain) or a dict ``{code or None: probability}`` summing to 1;
        ``probability`` the node's probability of involvement, 0-1.
    rules : StagingRules

    Raises
    ------
    UsageError
        Unknown station or primary side.
    ValueError
        A probability outside [0, 1] or not finite; station probabilities not summing to 1.
    """
    side = _normalize_primary_side(primary_side)
    checked = []
    for station, p in nodes:
        dist = _as_distribution(station)
        p = float(p)
        if not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"node probability for station {station} must be in [0, 1], "
                             f"got {p}")
        checked.append((dist, p))
    if side != "unknown":
        return NProbabilities(*_distributions_known(side, checked, rules))
    left = _distributions_known("left", checked, rules)
    right = _distributions_known("right", checked, rules)
    return NProbabilities(
        {c: 0.5 * (left[0][c] + right[0][c]) for c in CATEGORIES_8TH},
        {c: 0.5 * (left[1][c] + right[1][c]) for c in CATEGORIES_9TH})


def category_probabilities(
    primary_side: str | None,
    nodes: Iterable[tuple],
    rules: StagingRules = DEFAULT_RULES,
) -> dict[str, float]:
    """P(N0..N3) (8th edition) from uncertain nodes: :func:`n_probabilities`'s ``n8``.

    With certain stations this is ``P(N <= c) = prod over nodes with cat_i > c of (1 - p_i)``,
    so ``P(N0) = prod (1 - p_i)`` and ``P(N3) = 1 - P(N <= N2)``.
    """
    return n_probabilities(primary_side, nodes, rules).n8
