"""Is a regional node candidate positive on FDG-PET/CT, and how likely is it involved?

Probability (``resources/thresholds.json`` section ``probability``; CLINICAL.md section 3):
a logistic function, increasing in both inputs::

    logit = ratio_slope * ln(SUVmax / blood_pool / ratio_at_half)
            + short_axis_slope * (clip(short_axis_mm, *short_axis_clip_mm) - short_axis_ref_mm)
            + ln(calcified_odds_factor)        if calcified
            + ln(symmetric_hilar_odds_factor)  if symmetric hilar
    p = 1 / (1 + exp(-logit))

``ratio_at_half`` and ``ratio_slope`` come from Hellwig 2007 (metastatic SUVmax 7.1 +/- 4.5 vs
benign 2.4 +/- 1.7, read as log-normal; linear discriminant -> logistic), the short-axis term
from Toloza 2003 (CT: sensitivity 57%, specificity 82% at 10 mm), halved for correlation with
PET.

Decision (section ``positivity``): a node counts when its probability is at least
``count_probability_min`` (0.5: involvement is the more probable state), so the decision and
the probabilities that feed P(N) never disagree. The usual readings are necessary
conditions on top: SUVmax above ``blood_pool_factor`` x the mediastinal blood pool and at
least ``suv_max_min`` (2.5); not calcified (median core HU below ``calcified_hu``); not one of
a symmetric mildly avid hilar pair (flagged by :mod:`nstage.placement`). A node failing one
keeps a probability of at most ``negative_probability_cap``. The CT short axis (>= 10 mm)
enters the probability only (CT alone is unreliable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nstage.findings import Lesion
from nstage.thresholds import Thresholds, load_thresholds, resolve

__all__ = ["NodeCall", "assess", "load_thresholds", "probability"]


def _blood_pool(reference_suv: dict[str, float] | None, thresholds: Thresholds) -> tuple[float, bool]:
    bp = (reference_suv or {}).get("blood_pool")
    if bp is None or not math.isfinite(bp) or bp <= 0:
        return float(thresholds["detection"]["default_blood_pool"]), False
    return float(bp), True


def probability(suv_max: float, blood_pool: float, short_axis_mm: float, *,
                calcified: bool = False, symmetric_hilar: bool = False,
                thresholds: Thresholds | None = None) -> float:
    """Probability (0-1) that a node is involved; see the module docstring for the formula.

    Parameters
    ----------
    suv_max : float
        Node SUVmax (SUVbw).
    blood_pool : float
        Mediastinal blood-pool SUVmean (SUVbw), > 0.
    short_axis_mm : float
        CT short-axis diameter (mm); NaN adds no evidence.
    """
    pr = resolve(thresholds)["probability"]
    ratio = max(suv_max, 1e-3) / max(blood_pool, 1e-3)
    logit = pr["ratio_slope"] * math.log(ratio / pr["ratio_at_half"])
    if math.isfinite(short_axis_mm):
        lo, hi = pr["short_axis_clip_mm"]
        logit += pr["short_axis_slope"] * (min(max(short_axis_mm, lo), hi) - pr["short_axis_ref_mm"])
    if calcified:
        logit += math.log(pr["calcified_odds_factor"])
    if symmetric_hilar:
        logit += math.log(pr["symmetric_hilar_odds_factor"])
    return 1.0 / (1.0 + math.exp(-logit))


@dataclass(frozen=True)
class NodeCall:
    """The positivity decision about one node candidate (its own record; the lesion's
    measurements are not touched).

    Attributes
    ----------
    positive : bool
        Counted as involved: ``probability >= count_probability_min``.
    probability : float
        Probability of involvement (0-1), rounded to 3 decimals (the value the decision and
        the JSON use).
    reason : str
        One line with the numbers and the rule that decided.
    """

    positive: bool
    probability: float
    reason: str


def assess(lesion: Lesion, reference_suv: dict[str, float] | None,
           thresholds: Thresholds | None = None, *,
           symmetric_hilar: bool = False) -> NodeCall:
    """Positivity decision, probability and a one-line reason for one node candidate.

    Parameters
    ----------
    lesion : Lesion
        A measured node candidate.
    reference_suv : dict
        ``LesionMask.reference_suv`` (``blood_pool`` in SUVbw); a typical blood pool is used and
        said so when it is missing.
    thresholds : dict, optional
        :func:`load_thresholds` values (or partial overrides); default the packaged ones.
    symmetric_hilar : bool
        One of a symmetric mildly avid hilar pair (:mod:`nstage.placement`).

    Returns
    -------
    NodeCall
    """
    th = resolve(thresholds)
    pth = th["positivity"]
    bp, measured = _blood_pool(reference_suv, th)
    bp_txt = f"blood pool {bp:.1f}" + ("" if measured else " (typical value, not measured)")
    calcified = math.isfinite(lesion.core_hu) and lesion.core_hu >= pth["calcified_hu"]
    p = probability(lesion.suv_max, bp, lesion.short_axis_mm, calcified=calcified,
                    symmetric_hilar=symmetric_hilar, thresholds=th)
    sa = lesion.short_axis_mm
    sa_txt = (f"short axis {sa:.0f} mm" + (" (>= {:.0f} mm supports)".format(pth["short_axis_support_mm"])
                                          if sa >= pth["short_axis_support_mm"] else ""))
    suv_txt = f"SUVmax {lesion.suv_max:.1f}"
    fails = []
    if calcified:
        fails.append(f"dense/calcified core ({lesion.core_hu:.0f} HU >= "
                     f"{pth['calcified_hu']:.0f}): likely benign (granulomatous)")
    if symmetric_hilar:
        fails.append(f"symmetric mildly avid hilar uptake (SUVmax < {pth['symmetric_hilar_max_suv']:.1f}"
                     " within the PET noise, on both sides), likely reactive")
    if not lesion.suv_max > pth["blood_pool_factor"] * bp:
        fails.append(f"not above {bp_txt}")
    if not lesion.suv_max >= pth["suv_max_min"]:
        fails.append(f"below {pth['suv_max_min']:.1f}")
    if fails:
        p = min(p, float(pth["negative_probability_cap"]))
    p = round(p, 3)
    cut = float(pth["count_probability_min"])
    if fails:
        return NodeCall(False, p, f"{suv_txt}: {'; '.join(fails)}; {sa_txt}; p {p:.2f}")
    if p < cut:
        return NodeCall(False, p, (f"{suv_txt} > {bp_txt} (x{lesion.suv_max / bp:.1f}) and >= "
                                   f"{pth['suv_max_min']:.1f}, but p {p:.2f} < {cut:.2f} "
                                   f"(too faint for its size); {sa_txt}"))
    return NodeCall(True, p, (f"{suv_txt} > {bp_txt} (x{lesion.suv_max / bp:.1f}) and >= "
                              f"{pth['suv_max_min']:.1f}; {sa_txt}; p {p:.2f}"))
