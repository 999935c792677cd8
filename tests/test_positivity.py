"""Node positivity decision and probability (CLINICAL.md section 3)."""

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
                  max_point_mm=(0.0, 0.0, 0.0), kind="node", core_hu=kw.pop("core_hu", 40.0), **kw)


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
def test_decision_follows_the_thresholds(s, a, bp):
    positive, p, reason = assess(node(s, a), {"blood_pool": bp})
    assert positive == (s > bp and s >= 2.5)
    assert reason and "\n" not in reason
    assert 0.0 <= p <= 1.0


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
    positive, p, reason = assess(node(6.1, 12.0), REF)
    assert positive and p > 0.8
    assert "6.1" in reason and "1.8" in reason and "12 mm" in reason


def test_calcified_node_is_benign():
    positive, p, reason = assess(node(6.0, 12.0, core_hu=400.0), REF)
    assert not positive
    assert "calcified" in reason
    assert p < assess(node(6.0, 12.0), REF)[1]


def test_symmetric_hilar_node_is_reactive():
    positive, _, reason = assess(node(3.2, 10.0, symmetric_hilar=True, zone="hilar"), REF)
    assert not positive and "symmetric" in reason


def test_direct_extension_counts():
    positive, p, reason = assess(node(2.0, 8.0, direct_extension=True), REF)
    assert positive and p >= 0.95 and "direct extension" in reason


def test_missing_blood_pool_uses_the_typical_value_and_says_so():
    positive, _, reason = assess(node(3.0), {})
    assert positive
    assert "typical" in reason


def test_overrides_change_the_decision():
    th = load_thresholds({"positivity.suv_max_min": 4.0})
    assert not assess(node(3.5), REF, th)[0]
    assert assess(node(3.5), REF)[0]


def test_nan_short_axis_adds_no_evidence():
    assert math.isfinite(probability(5.0, 1.8, float("nan")))
