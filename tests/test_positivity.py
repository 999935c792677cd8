"""Node positivity decision and probability (CLINICAL.md section 3).

The decision is the probability: a node counts when p >= 0.5 (issue 15), and the readings of
CLINICAL.md 3 (above the blood pool, SUVmax >= 2.5, not calcified, not a symmetric hilar
pair) are necessary conditions that cap p below 0.5 when they fail.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nstage.findings import Lesion
from nstage.positivity import assess, load_thresholds, probability

REF = {"blood_pool": 1.8, "liver": 2.3, "threshold": 2.5}


def node(suv_max: float, short_axis: float = 10.0, **kw) -> Lesion:
    return Lesion(id=1, suv_max=suv_max, suv_peak=suv_max * 0.8, suv_mean=suv_max * 0.6,
                  volume_ml=1.0, tlg=0.6 * suv_max, short_axis_mm=short_axis,
                  long_axis_mm=short_axis * 1.2, centroid_mm=(0.0, 0.0, 0.0),
                  max_point_mm=(0.0, 0.0, 0.0), core_hu=kw.pop("core_hu", 40.0), **kw)


suvs = st.floats(min_value=0.1, max_value=40.0, allow_nan=False)
axes = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)
pools = st.floats(min_value=0.5, max_value=4.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(s1=suvs, s2=suvs, a=axes, bp=pools)
def test_probability_increases_with_suvmax(s1, s2, a, bp):
    lo, hi = sorted((s1, s2))
    assert probability(lo, bp, a) <= probability(hi, bp, a)


@settings(max_examples=200, deadline=None)
@given(s=suvs, a1=axes, a2=axes, bp=pools)
def test_probability_increases_with_short_axis(s, a1, a2, bp):
    lo, hi = sorted((a1, a2))
    assert probability(s, bp, lo) <= probability(s, bp, hi)
    assert 0.0 < probability(s, bp, lo) < 1.0


@settings(max_examples=200, deadline=None)
@given(s=suvs, a=axes, bp=pools)
def test_decision_is_the_probability_with_the_readings_as_necessary_conditions(s, a, bp):
    call = assess(node(s, a), {"blood_pool": bp})
    assert call.positive == (s > bp and s >= 2.5 and call.probability >= 0.5)
    assert call.positive == (call.probability >= 0.5)  # never counted against its probability
    assert call.reason and "\n" not in call.reason
    assert 0.0 <= call.probability <= 1.0


def test_node_just_above_the_readings_but_improbable_is_not_counted():
    """Issue 15: SUVmax 2.6 (> blood pool 1.8, >= 2.5) with a 7 mm short axis was counted N2
    with P(N0) = 0.74. Its p: 3 ln(2.6 / 1.8 / 1.9) + 0.1 (7 - 10) = -0.82 - 0.3 -> 0.25."""
    call = assess(node(2.6, 7.0), REF)
    assert call.probability == pytest.approx(0.246, abs=0.01)
    assert not call.positive and "< 0.50" in call.reason


def test_probability_is_one_half_at_the_documented_midpoint():
    th = load_thresholds()
    pr = th["probability"]
    bp = 1.8
    s = pr["ratio_at_half"] * bp
    assert probability(s, bp, pr["short_axis_ref_mm"]) == pytest.approx(0.5)
    # Hellwig 2007 means: metastatic SUVmax 7.1 is likely, benign 2.4 unlikely.
    assert probability(7.1, bp, 10.0) > 0.85
    assert probability(2.4, bp, 10.0) < 0.3


def test_typical_positive_node_reason_names_the_numbers():
    call = assess(node(6.1, 12.0), REF)
    assert call.positive and call.probability > 0.8
    assert "6.1" in call.reason and "1.8" in call.reason and "12 mm" in call.reason


def test_calcified_node_is_benign():
    call = assess(node(6.0, 12.0, core_hu=400.0), REF)
    assert not call.positive and call.probability <= 0.45
    assert "calcified" in call.reason
    assert call.probability < assess(node(6.0, 12.0), REF).probability


def test_symmetric_hilar_node_is_reactive():
    call = assess(node(3.2, 10.0), REF, symmetric_hilar=True)
    assert not call.positive and "symmetric" in call.reason and call.probability <= 0.45


def test_missing_blood_pool_uses_the_typical_value_and_says_so():
    # Typical blood pool 1.8 (thresholds "detection.default_blood_pool"): SUVmax 4.0 with a
    # 10 mm short axis gives p = 1 / (1 + exp(-3 ln(4.0 / 1.8 / 1.9))) = 0.62.
    call = assess(node(4.0), {})
    assert call.positive and call.probability == pytest.approx(0.617, abs=0.01)
    assert "typical" in call.reason


def test_overrides_change_the_decision():
    th = load_thresholds({"positivity.suv_max_min": 4.0})
    assert not assess(node(3.9, 15.0), REF, th).positive
    assert assess(node(3.9, 15.0), REF).positive


def test_nan_short_axis_adds_no_evidence():
    assert math.isfinite(probability(5.0, 1.8, float("nan")))
