"""nstage evaluate: label parsing, statistics against independent computations, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import product

import numpy as np
import pandas as pd
import pytest
from conftest import real_path

from nstage.errors import InputError
from nstage.evaluate import (
    evaluate,
    evaluate_files,
    parse_label,
    parse_n_label,
    summary_sentences,
    write_reports,
)

CATS = ["N0", "N1", "N2", "N3"]


# ---------------------------------------------------------------------------
# Label parsing


@pytest.mark.parametrize("text, expected", [
    ("pN1(mi)", "N1"), ("pN1mi", "N1"), ("ypN1(mi)", "N1"), ("pN2(sn)", "N2"),
    ("N2", "N2"), ("cN2", "N2"), ("pN2a", "N2"), ("pN2b", "N2"), ("ypN1", "N1"),
    ("2", "N2"), ("0", "N0"), ("3", "N3"), ("n1", "N1"), ("  pn3 ", "N3"), ("N 2", "N2"),
    ("N1a", "N1"), ("N1b", "N1"), ("cN0", "N0"), ("pN1(sn)", "N1"), ("pN0(i+)", "N0"),
    ("ycN2", "N2"), ("rpN1", "N1"), ("2.0", "N2"), (2, "N2"), (3.0, "N3"), ("N2a1", "N2"),
])
def test_parse_valid_labels(text, expected):
    assert parse_n_label(text) == expected
    assert parse_label(text).reason is None


@pytest.mark.parametrize("text, reason_part", [
    ("NX", "NX"), ("pNx", "NX"), ("", "empty"), (None, "empty"), (float("nan"), "empty"),
    ("N4", "N4"), ("4", "code 4"), ("N1-2", "invalid"), ("T2", "invalid"), ("N3a", "subcategory"),
    ("N22", "N22"), ("abc", "invalid"), ("N/A", "no label"), ("-1", "invalid"),
])
def test_parse_unusable_labels_give_none_and_a_reason(text, reason_part):
    parsed = parse_label(text)
    assert parsed.category is None
    assert parse_n_label(text) is None
    assert reason_part.lower() in parsed.reason.lower()


# ---------------------------------------------------------------------------
# Statistics against independent computations


def _wilson(k, n, z=1.959963984540054):
    """Wilson score interval written out (independent of statsmodels)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _weighted_kappa(ref, cmp, power):
    """Cohen's weighted kappa from its definition with explicit loops."""
    n = len(ref)
    obs = [[0.0] * 4 for _ in range(4)]
    for a, b in zip(ref, cmp, strict=True):
        obs[a][b] += 1
    row = [sum(obs[i]) for i in range(4)]
    col = [sum(obs[i][j] for i in range(4)) for j in range(4)]
    num = den = 0.0
    for i, j in product(range(4), range(4)):
        w = abs(i - j) ** power
        num += w * obs[i][j]
        den += w * row[i] * col[j] / n
    return 1 - num / den


def _auc(pos_scores, neg_scores):
    """AUC as the Mann-Whitney pair probability (ties count one half)."""
    total = 0.0
    for p in pos_scores:
        for q in neg_scores:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos_scores) * len(neg_scores))


def _binom_two_sided(b, c):
    """Exact McNemar p: two-sided binomial test of b vs c with p = 0.5."""
    n = b + c
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.fixture(scope="module")
def generated():
    rng = np.random.default_rng(7)
    n = 80
    pn = rng.integers(0, 4, n)
    # clinical and AI: noisy copies of pathology
    cn = np.clip(pn + rng.choice([-1, 0, 0, 1], n), 0, 3)
    ai = np.clip(pn + rng.choice([-2, -1, 0, 0, 0, 1], n), 0, 3)
    probs = rng.dirichlet([1, 1, 1, 1], n)
    ids = [f"case{i:03d}" for i in range(n)]
    pred = pd.DataFrame({"case_id": ids, "n_stage": [f"N{x}" for x in ai],
                         **{f"p_N{k}": probs[:, k] for k in range(4)}})
    # hospital spellings for the reference
    truth = pd.DataFrame({"case_id": ids, "cN": [f"cN{x}" for x in cn],
                          "pN": [("pN2b" if x == 2 and i % 2 else f"pN{x}")
                                 for i, x in enumerate(pn)]})
    return pred, truth, ai, cn, pn, probs


def test_metrics_match_independent_computation(generated):
    pred, truth, ai, cn, pn, probs = generated
    m = evaluate(pred, truth, n_boot=50, seed=3)
    for key, ref, cmp in [("ai_vs_pathological", pn, ai), ("clinical_vs_pathological", pn, cn),
                          ("ai_vs_clinical", cn, ai)]:
        r = m[key]
        assert r["n"] == len(ref)
        conf = [[0] * 4 for _ in range(4)]
        for a, b in zip(ref, cmp, strict=True):
            conf[a][b] += 1
        assert r["confusion"] == conf
        agree = sum(int(a == b) for a, b in zip(ref, cmp, strict=True))
        assert r["accuracy"]["count"] == agree
        assert r["accuracy"]["value"] == pytest.approx(agree / len(ref))
        assert r["accuracy"]["ci95"] == pytest.approx(_wilson(agree, len(ref)), abs=1e-9)
        assert r["weighted_kappa_linear"]["value"] == pytest.approx(
            _weighted_kappa(ref, cmp, 1), abs=1e-12)
        assert r["weighted_kappa_quadratic"]["value"] == pytest.approx(
            _weighted_kappa(ref, cmp, 2), abs=1e-12)
        lo, hi = r["weighted_kappa_linear"]["ci95"]
        assert lo <= r["weighted_kappa_linear"]["value"] <= hi
        up = sum(int(b > a) for a, b in zip(ref, cmp, strict=True))
        down = sum(int(b < a) for a, b in zip(ref, cmp, strict=True))
        assert r["upstaging_rate"]["count"] == up
        assert r["downstaging_rate"]["count"] == down
        assert r["upstaging_rate"]["value"] == pytest.approx(up / len(ref))
        for k, cat in enumerate(CATS):
            tp = sum(int(a == k and b == k) for a, b in zip(ref, cmp, strict=True))
            pos = sum(int(a == k) for a in ref)
            called = sum(int(b == k) for b in cmp)
            neg_ok = sum(int(a != k and b != k) for a, b in zip(ref, cmp, strict=True))
            pc = r["per_category"][cat]
            assert pc["sensitivity"]["value"] == pytest.approx(tp / pos)
            assert pc["sensitivity"]["ci95"] == pytest.approx(_wilson(tp, pos), abs=1e-9)
            assert pc["ppv"]["value"] == pytest.approx(tp / called)
            assert pc["specificity"]["value"] == pytest.approx(neg_ok / (len(ref) - pos))
            assert pc["npv"]["value"] == pytest.approx(neg_ok / (len(ref) - called))
        b = r["n2_3_vs_n0_1"]
        tp = sum(int(a >= 2 and c >= 2) for a, c in zip(ref, cmp, strict=True))
        assert b["sensitivity"]["value"] == pytest.approx(tp / sum(int(a >= 2) for a in ref))
        tn = sum(int(a < 2 and c < 2) for a, c in zip(ref, cmp, strict=True))
        assert b["specificity"]["value"] == pytest.approx(tn / sum(int(a < 2) for a in ref))
    score = probs[:, 2] + probs[:, 3]
    auc = _auc(score[pn >= 2], score[pn < 2])
    assert m["ai_vs_pathological"]["n2_3_vs_n0_1"]["roc_auc"]["value"] == pytest.approx(auc)
    assert m["ai_vs_clinical"]["n2_3_vs_n0_1"]["roc_auc"]["value"] == pytest.approx(
        _auc(score[cn >= 2], score[cn < 2]))
    # the clinical rater gives no probabilities
    assert m["clinical_vs_pathological"]["n2_3_vs_n0_1"]["roc_auc"]["value"] is None

    mc = m["mcnemar_ai_vs_clinical"]
    b_ = sum(int(a == p and c != p) for a, c, p in zip(ai, cn, pn, strict=True))
    c_ = sum(int(a != p and c == p) for a, c, p in zip(ai, cn, pn, strict=True))
    assert (mc["ai_only_correct"], mc["clinical_only_correct"]) == (b_, c_)
    assert mc["p_value"] == pytest.approx(_binom_two_sided(b_, c_), rel=1e-9)


def test_known_small_example():
    """Hand-checked: 4 cases, 3 agree; one N1 called N2 (up-staged)."""
    pred = pd.DataFrame({"case_id": list("abcd"), "n_stage": ["N0", "N2", "N2", "N3"]})
    truth = pd.DataFrame({"case_id": list("abcd"), "cN": ["N0", "N1", "N2", "N3"],
                          "pN": ["pN0", "pN1", "pN2a", "pN3"]})
    m = evaluate(pred, truth, n_boot=0)
    r = m["ai_vs_pathological"]
    assert r["n"] == 4 and r["accuracy"]["count"] == 3
    assert r["upstaging_rate"]["count"] == 1 and r["downstaging_rate"]["count"] == 0
    assert r["confusion"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    # clinical is perfect: kappa exactly 1
    assert m["clinical_vs_pathological"]["weighted_kappa_quadratic"]["value"] == pytest.approx(1)
    mc = m["mcnemar_ai_vs_clinical"]
    assert (mc["ai_only_correct"], mc["clinical_only_correct"], mc["both_correct"]) == (0, 1, 3)
    assert mc["p_value"] == pytest.approx(1.0)


def test_bad_labels_are_excluded_and_listed_never_crash():
    pred = pd.DataFrame({"case_id": ["a", "b", "c", "d", "e", "x"],
                         "n_stage": ["N1", "NX", "N2", "", "N0", "N1"]})
    truth = pd.DataFrame({"case_id": ["a", "b", "c", "d", "e", "y"],
                          "cN": ["N4", "N1", "cN2", "N0", "garbage", "N1"],
                          "pN": ["pN1", "pN1", "pNX", "pN0", "pN0", "pN1"]})
    m = evaluate(pred, truth, n_boot=0)
    ai_p = m["ai_vs_pathological"]
    # a, e usable; b NX, c pNX, d empty, x/y only in one file
    assert ai_p["n"] == 2
    reasons = {e["case_id"]: e["reason"] for e in ai_p["excluded"]["cases"]}
    assert set(reasons) == {"b", "c", "d", "x", "y"}
    assert "NX" in reasons["b"] and "pathological" in reasons["c"]
    assert "not in the reference" in reasons["x"] and "no prediction" in reasons["y"]
    cl_p = m["clinical_vs_pathological"]
    assert cl_p["n"] == 3  # b, d, and y (which has no prediction but both reference labels)
    cl_reasons = {e["case_id"]: e["reason"] for e in cl_p["excluded"]["cases"]}
    assert set(cl_reasons) == {"a", "c", "e", "x"}
    assert "N4" in cl_reasons["a"] and "garbage" in cl_reasons["e"]
    # no case has all three labels usable
    assert m["mcnemar_ai_vs_clinical"]["n"] == 0
    assert m["cases"]["only_in_predictions"] == ["x"]
    assert m["cases"]["only_in_reference"] == ["y"]


def test_empty_comparison_gives_nulls(tmp_path):
    pred = pd.DataFrame({"case_id": ["a"], "n_stage": ["NX"]})
    truth = pd.DataFrame({"case_id": ["a"], "cN": ["N1"], "pN": ["N1"]})
    m = evaluate(pred, truth, n_boot=10)
    assert m["ai_vs_pathological"]["n"] == 0
    assert m["ai_vs_pathological"]["accuracy"]["value"] is None
    assert m["mcnemar_ai_vs_clinical"]["p_value"] is None
    write_reports(m, tmp_path)  # must not fail on empty comparisons
    json.loads((tmp_path / "metrics.json").read_text())


def test_duplicate_ids_and_missing_columns_are_clear_errors(tmp_path):
    pred = tmp_path / "pred.csv"
    truth = tmp_path / "truth.csv"
    pred.write_text("case_id,n_stage\na,N1\na,N2\n")
    truth.write_text("case_id,cN,pN\na,N1,N1\n")
    with pytest.raises(InputError, match="duplicate case_id.*a") as exc:
        evaluate_files(pred, truth)
    assert str(pred) in str(exc.value)
    pred.write_text("case_id,n_stage\na,N1\n")
    truth.write_text("case_id,stage\na,N1\n")
    with pytest.raises(InputError, match="neither a cN nor a pN column") as exc:
        evaluate_files(pred, truth)
    assert str(truth) in str(exc.value) and "--truth-columns" in str(exc.value)


# ---------------------------------------------------------------------------
# Real clinical table as the clinical column


def test_real_lung1_clinical_column(tmp_path):
    src = real_path("clinical", "nsclc-radiomics-lung1-clinical.csv")
    table = pd.read_csv(src, dtype=str)
    codes = table["Clinical.N.Stage"].tolist()
    n_total = len(table)
    n_invalid = sum(c.strip() == "4" for c in codes)
    assert n_invalid == 3
    rng = np.random.default_rng(0)
    pn = rng.integers(0, 4, n_total)
    ai = rng.integers(0, 4, n_total)
    pd.DataFrame({"case_id": table["PatientID"], "cN": codes,
                  "pN": [f"pN{x}" for x in pn]}).to_csv(tmp_path / "truth.csv", index=False)
    pd.DataFrame({"case_id": table["PatientID"], "n_stage": [f"N{x}" for x in ai]}).to_csv(
        tmp_path / "pred.csv", index=False)
    m = evaluate_files(tmp_path / "pred.csv", tmp_path / "truth.csv", n_boot=20)
    for key in ("clinical_vs_pathological", "ai_vs_clinical"):
        r = m[key]
        assert r["n"] == n_total - 3
        assert r["excluded"]["count"] == 3
        assert all("4" in e["reason"] for e in r["excluded"]["cases"])
        assert sum(map(sum, r["confusion"])) == n_total - 3
    # clinical column row sums = the table's own counts of 0..3
    rows = [sum(r) for r in m["ai_vs_clinical"]["confusion"]]
    assert rows == [sum(c.strip() == str(k) for c in codes) for k in range(4)]
    assert m["ai_vs_pathological"]["n"] == n_total
    assert m["mcnemar_ai_vs_clinical"]["n"] == n_total - 3


# ---------------------------------------------------------------------------
# CLI


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nstage", "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_metrics_reports_and_figures(tmp_path, generated):
    pred, truth, *_ = generated
    pred.to_csv(tmp_path / "pred.csv", index=False)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "out"
    res = _cli("--pred", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv",
               "--out", out, "--bootstrap", "30")
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "metrics.json").read_text())
    for key in ("ai_vs_pathological", "clinical_vs_pathological", "ai_vs_clinical"):
        for field in ("n", "accuracy", "weighted_kappa_linear", "weighted_kappa_quadratic",
                      "confusion", "per_category", "upstaging_rate", "downstaging_rate",
                      "n2_3_vs_n0_1"):
            assert field in m[key]
        assert (out / f"confusion_{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(m["mcnemar_ai_vs_clinical"]) >= {"ai_only_correct", "clinical_only_correct",
                                                "p_value"}
    md = (out / "report.md").read_text()
    acc = m["ai_vs_pathological"]["accuracy"]
    assert f"AI agreed with pathology in {acc['count']} of 80 cases" in md
    assert "confusion_ai_vs_pathological.png" in (out / "report.html").read_text()


def test_cli_bad_input_exit_2_one_line(tmp_path):
    (tmp_path / "pred.csv").write_text("case_id,stage\na,N1\n")
    (tmp_path / "truth.csv").write_text("case_id,cN,pN\na,N1,N1\n")
    res = _cli("--pred", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv",
               "--out", tmp_path / "out")
    assert res.returncode == 2
    assert "n_stage" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "metrics.json").exists()
    res = _cli("--pred", tmp_path / "missing.csv", "--truth", tmp_path / "truth.csv",
               "--out", tmp_path / "out")
    assert res.returncode == 2 and "not found" in res.stderr


# ---------------------------------------------------------------------------
# A hospital's own table: delimiters, column names, one reference column, descriptors


# Clinical N of the first Lung1 cases, read by hand from
# ../shared/data/real/clinical/nsclc-radiomics-lung1-clinical.csv (column Clinical.N.Stage),
# and predictions written by hand against them. LUNG1-167 is coded 4 (invalid) in the file.
LUNG1_HAND = [
    # case, clinical N in the file, prediction, AI vs clinical
    ("LUNG1-001", "N3", "N3", "same"),
    ("LUNG1-002", "N0", "N0", "same"),
    ("LUNG1-003", "N3", "N2", "lower"),
    ("LUNG1-004", "N1", "N1", "same"),
    ("LUNG1-005", "N2", "N2", "same"),
    ("LUNG1-006", "N1", "N2", "higher"),
    ("LUNG1-007", "N2", "N2", "same"),
    ("LUNG1-008", "N2", "N0", "lower"),
    ("LUNG1-009", "N2", "N2", "same"),
    ("LUNG1-010", "N3", "N3", "same"),
    ("LUNG1-011", "N0", "N1", "higher"),
    ("LUNG1-012", "N2", "N2", "same"),
    ("LUNG1-167", "code 4", "N2", "excluded"),
]
# rows = clinical N0..N3, columns = AI N0..N3, counted from the table above
LUNG1_CONFUSION = [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 4, 0], [0, 0, 1, 2]]


def _lung1_pred(path):
    pd.DataFrame({"case_id": [c for c, *_ in LUNG1_HAND],
                  "n_stage": [p for _, _, p, _ in LUNG1_HAND]}).to_csv(path, index=False)
    return path


def test_real_lung1_table_with_its_own_column_names_and_no_pn(tmp_path):
    """The real Lung1 table as it is (quoted header, PatientID, Clinical.N.Stage coded 0-3,
    no pathological N): only AI vs clinical can be computed; the rest is skipped, said so."""
    truth = real_path("clinical", "nsclc-radiomics-lung1-clinical.csv")
    pred = _lung1_pred(tmp_path / "pred.csv")
    out = tmp_path / "out"
    res = _cli("--pred", pred, "--truth", truth, "--out", out, "--bootstrap", "50",
               "--truth-columns", "case_id=PatientID,cN=Clinical.N.Stage")
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "metrics.json").read_text())
    r = m["ai_vs_clinical"]
    assert r["n"] == 12 and r["accuracy"]["count"] == 8
    assert r["upstaging_rate"]["count"] == 2 and r["downstaging_rate"]["count"] == 2
    assert r["confusion"] == LUNG1_CONFUSION
    reasons = {e["case_id"]: e["reason"] for e in r["excluded"]["cases"]}
    assert len(reasons) == 422 - 12
    assert "code 4" in reasons["LUNG1-167"]
    assert "no prediction" in reasons["LUNG1-013"]
    for key in ("ai_vs_pathological", "clinical_vs_pathological", "mcnemar_ai_vs_clinical"):
        assert m[key]["skipped"] is True and "no pN column" in m[key]["reason"]
    assert m["reference_columns"] == ["cN"]
    assert m["inputs"]["truth_columns"] == {"case_id": "PatientID", "cN": "Clinical.N.Stage"}
    assert "AI vs pathology: skipped: the reference table has no pN column." in res.stderr
    assert "McNemar test of AI vs clinical staging: skipped" in res.stderr
    md = (out / "report.md").read_text()
    assert "## AI vs pathology" in md and "Skipped: the reference table has no pN column." in md
    assert (out / "confusion_ai_vs_clinical.png").is_file()
    assert not (out / "confusion_ai_vs_pathological.png").exists()


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_tables_give_the_same_result(tmp_path, sep):
    """The Lung1 table saved with another delimiter (and the predictions with decimal
    commas, as Excel writes semicolon files in much of Europe) gives the same metrics."""
    truth = pd.read_csv(real_path("clinical", "nsclc-radiomics-lung1-clinical.csv"), dtype=str)
    pred = pd.read_csv(_lung1_pred(tmp_path / "pred.csv"), dtype=str)
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), size=len(pred))
    for k in range(4):
        pred[f"p_N{k}"] = [f"{v:.4f}" for v in p[:, k]]
    pred.to_csv(tmp_path / "pred.csv", index=False)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    comma_pred = pred.copy()
    for k in range(4):
        comma_pred[f"p_N{k}"] = comma_pred[f"p_N{k}"].str.replace(".", ",", regex=False)
    (comma_pred if sep == ";" else pred).to_csv(tmp_path / "pred2.csv", index=False, sep=sep)
    truth.to_csv(tmp_path / "truth2.csv", index=False, sep=sep)
    columns = {"case_id": "PatientID", "cN": "Clinical.N.Stage"}
    a = evaluate_files(tmp_path / "pred.csv", tmp_path / "truth.csv", n_boot=30,
                       truth_columns=columns)
    b = evaluate_files(tmp_path / "pred2.csv", tmp_path / "truth2.csv", n_boot=30,
                       truth_columns=columns)
    assert b["inputs"]["truth_delimiter"] == sep and b["inputs"]["pred_delimiter"] == sep
    assert a["inputs"]["truth_delimiter"] == ","
    a.pop("inputs"), b.pop("inputs")
    assert a == b
    assert a["ai_vs_clinical"]["n2_3_vs_n0_1"]["roc_auc"]["value"] is not None


def test_table_with_only_pn_skips_the_clinical_comparisons():
    pred = pd.DataFrame({"case_id": list("abcdefghijk"),
                         "n_stage": ["N0", "N1", "N2", "N2", "N3", "N0", "N0", "N2", "N1",
                                     "N3", "N0"]})
    truth = pd.DataFrame({"case_id": list("abcdefghijk"),
                          "pN": ["pN0", "pN1(mi)", "pN2a", "pN2b", "pN3", "pN0(i+)", "pN1",
                                 "pN2", "pN1(sn)", "pN2", "pN0"]})
    m = evaluate(pred, truth, n_boot=0)
    r = m["ai_vs_pathological"]
    # by hand: all agree except g (pN1, AI N0: lower) and j (pN2, AI N3: higher)
    assert r["n"] == 11 and r["accuracy"]["count"] == 9
    assert r["downstaging_rate"]["count"] == 1 and r["upstaging_rate"]["count"] == 1
    assert m["clinical_vs_pathological"]["skipped"] and m["ai_vs_clinical"]["skipped"]
    assert "no cN column" in m["ai_vs_clinical"]["reason"]
    notes = {n["case_id"]: n["note"] for n in m["label_notes"]}
    assert set(notes) == {"b", "f", "i"}
    assert "micrometastasis" in notes["b"] and "read as N1" in notes["b"]
    assert "isolated tumour cells" in notes["f"] and "read as N0" in notes["f"]
    lines = summary_sentences(m)
    assert any("3 label(s) with a descriptor were read as their category" in s for s in lines)


def test_fewer_than_ten_cases_warn_instead_of_claiming_certainty(tmp_path):
    pred = pd.DataFrame({"case_id": list("abcdef"),
                         "n_stage": ["N0", "N1", "N2", "N2", "N3", "N0"]})
    truth = pd.DataFrame({"case_id": list("abcdef"), "cN": ["N0", "N1", "N2", "N1", "N3", "N0"],
                          "pN": ["N0", "N1", "N2", "N2", "N3", "N1"]})
    m = evaluate(pred, truth, n_boot=50)
    r = m["ai_vs_pathological"]
    assert r["n"] == 6
    assert "6 cases" in r["accuracy"]["warning"] and "unreliable" in r["accuracy"]["warning"]
    assert "warning" in r["weighted_kappa_quadratic"]
    assert any(w.startswith("AI vs pathology: 6 case(s), fewer than 10") for w in m["warnings"])
    assert any("Warning: only 6 case(s)" in s for s in summary_sentences(m))
    write_reports(m, tmp_path)
    assert "warning: rests on 6 cases" in (tmp_path / "report.md").read_text()
    # ten cases or more: the overall interval carries no warning
    big = evaluate(pd.concat([pred.assign(case_id=pred.case_id + str(i)) for i in range(2)]),
                   pd.concat([truth.assign(case_id=truth.case_id + str(i)) for i in range(2)]),
                   n_boot=0)
    assert big["ai_vs_pathological"]["n"] == 12
    assert "warning" not in big["ai_vs_pathological"]["accuracy"]


def test_truth_columns_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "pred.csv").write_text("case_id,n_stage\na,N1\n")
    (tmp_path / "truth.csv").write_text("id;clinical\na;N1\n")
    out = tmp_path / "out"
    res = _cli("--pred", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv", "--out", out,
               "--truth-columns", "case_id=id,cN=clinical")
    assert res.returncode == 0, res.stderr
    for bad, expected in (("case_id=id,xN=clinical", "'xN', not one of case_id, cN, pN"),
                          ("case_id=id,cN", "is not NAME=COLUMN"),
                          ("case_id=id,cN=cN_clin", "column 'cN_clin' (given for cN) is missing")):
        res = _cli("--pred", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv",
                   "--out", out, "--truth-columns", bad)
        assert res.returncode == 2
        assert len(res.stderr.strip().splitlines()) == 1 and expected in res.stderr, res.stderr
