"""nstage batch: resume after a kill, failing cases, parallel = serial, CSV cohorts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_helpers import calls, fake_runner, make_fake_cohort

from nstage.batch import PREDICTION_COLUMNS, discover_cases, run_batch
from nstage.errors import InputError
from nstage.evaluate import evaluate_files

PROJECT = Path(__file__).resolve().parents[1]
SPECS = {"c1": "N0", "c2": "N2 4R,7", "c3": "N1 10R", "c4": "N3 4L"}


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_serial_run_writes_cases_and_predictions(tmp_path):
    cohort = make_fake_cohort(tmp_path / "cohort", SPECS)
    out = tmp_path / "out"
    summary = run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    assert (summary.ok, summary.failed, summary.skipped) == (4, 0, 0)
    rows = _table(out / "predictions.csv")
    assert list(rows[0]) == PREDICTION_COLUMNS
    by_id = {r["case_id"]: r for r in rows}
    assert by_id["c2"]["n_stage"] == "N2" and by_id["c2"]["n_stage_9th"] == "N2b"
    assert by_id["c2"]["stations"] == "4R;7" and by_id["c2"]["p_N2"] == "0.85"
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    for cid in SPECS:
        assert (out / "cases" / cid / "n-stage.json").is_file()
        assert (out / "cases" / cid / "images/n-staging-segmentation/output.mha").is_file()
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]
    # a second run recomputes nothing
    again = run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    assert (again.skipped, again.ok) == (4, 0)
    assert sorted(calls(cohort)) == sorted(SPECS)


def test_broken_cases_are_reported_and_the_others_done(tmp_path):
    specs = {"a": "N1 10R", "b": "crash", "c": "bad", "d": "N2 7"}
    cohort = make_fake_cohort(tmp_path / "cohort", specs)
    out = tmp_path / "out"
    summary = run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    assert (summary.ok, summary.failed) == (2, 2)
    rows = {r["case_id"]: r for r in _table(out / "predictions.csv")}
    assert rows["a"]["status"] == rows["d"]["status"] == "ok"
    assert rows["b"]["status"] == "error"
    assert "RuntimeError: simulated crash" in rows["b"]["error"]
    assert rows["c"]["status"] == "error" and "no PET series found" in rows["c"]["error"]
    assert not (out / "cases" / "b" / "n-stage.json").exists()
    # failed cases are retried on the next run; finished ones are not
    run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    assert calls(cohort).count("a") == 1 and calls(cohort).count("b") == 2


def test_cli_real_pipeline_reports_unreadable_cases_exit_3(tmp_path):
    cohort = tmp_path / "cohort"
    (cohort / "empty").mkdir(parents=True)
    (cohort / "junk" / "images" / "ct").mkdir(parents=True)
    (cohort / "junk" / "images" / "ct" / "x.mha").write_text("not an image")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "nstage", "batch", "--cases", str(cohort),
                          "--out", str(out), "--anatomy", "classical", "--lesions", "suv"],
                         capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert res.returncode == 3, res.stderr
    rows = {r["case_id"]: r for r in _table(out / "predictions.csv")}
    assert set(rows) == {"empty", "junk"}
    assert all(r["status"] == "error" and r["error"] for r in rows.values())
    assert "Traceback" not in res.stderr


def test_resume_after_kill_does_not_recompute_finished_cases(tmp_path):
    cohort = make_fake_cohort(tmp_path / "cohort", SPECS)
    out = tmp_path / "out"
    script = (
        "import sys; from pathlib import Path; from nstage.batch import run_batch; "
        "from batch_helpers import fake_runner; "
        f"run_batch(Path({str(cohort)!r}), Path({str(out)!r}), {{'sleep': 1.5}}, "
        "runner=fake_runner, progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "tests")}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT, env=env)
    first = out / "cases" / "c1" / "n-stage.json"
    try:
        deadline = time.monotonic() + 60
        while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert first.exists(), "the first case never finished"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    mtime = first.stat().st_mtime_ns
    done_before = [c for c in SPECS if (out / "cases" / c / "n-stage.json").exists()]
    assert "c1" in done_before and len(done_before) < len(SPECS)
    summary = run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    assert summary.skipped == len(done_before)
    assert first.stat().st_mtime_ns == mtime
    assert calls(cohort).count("c1") == 1
    rows = _table(out / "predictions.csv")
    assert [r["case_id"] for r in rows] == list(SPECS)
    assert all(r["status"] == "ok" for r in rows)
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]


def test_parallel_gives_the_same_predictions_as_serial(tmp_path):
    cohort = make_fake_cohort(tmp_path / "cohort", {**SPECS, "c5": "crash"})
    run_batch(cohort, tmp_path / "serial", {}, runner=fake_runner, progress=False)
    summary = run_batch(cohort, tmp_path / "parallel", {}, workers=2, runner=fake_runner,
                        progress=False)
    assert (summary.ok, summary.failed) == (4, 1)
    serial = (tmp_path / "serial" / "predictions.csv").read_text()
    parallel = (tmp_path / "parallel" / "predictions.csv").read_text()
    assert serial == parallel


def test_csv_cohort_and_predictions_feed_evaluate(tmp_path):
    make_fake_cohort(tmp_path / "data", {"x1": "N2 7", "x2": "N0"})
    table = tmp_path / "cases.csv"
    table.write_text("case_id,ct,pet\nx1,data/x1,\nx2,data/x2,\nx3,data/missing,\n")
    cases = discover_cases(table)
    assert [c.case_id for c in cases] == ["x1", "x2", "x3"]
    assert cases[0].ct == tmp_path / "data" / "x1" and cases[0].pet is None
    out = tmp_path / "out"
    summary = run_batch(table, out, {}, runner=fake_runner, progress=False)
    assert (summary.ok, summary.failed) == (2, 1)
    assert "not found" in summary.errors["x3"]
    truth = tmp_path / "truth.csv"
    truth.write_text("case_id,cN,pN\nx1,cN2,pN2a\nx2,cN1,pN0\nx3,cN0,pN0\n")
    m = evaluate_files(out / "predictions.csv", truth, n_boot=0)
    assert m["ai_vs_pathological"]["n"] == 2 and m["ai_vs_pathological"]["accuracy"]["count"] == 2
    reason = m["ai_vs_pathological"]["excluded"]["cases"][0]
    assert reason["case_id"] == "x3" and "error" in reason["reason"]


def test_bad_cohorts_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no case folder"):
        discover_cases(tmp_path / "empty")
    (tmp_path / "one" / "images" / "ct").mkdir(parents=True)
    with pytest.raises(InputError, match="one case"):
        discover_cases(tmp_path / "one")
    table = tmp_path / "t.csv"
    table.write_text("case_id,ct,pet\na,x,\na,y,\n")
    with pytest.raises(InputError, match="duplicate case_id 'a'"):
        discover_cases(table)
    table.write_text("id,ct\na,x\n")
    with pytest.raises(InputError, match="'case_id' is missing"):
        discover_cases(table)
    table.write_text("case_id,ct\n../evil,x\n")
    with pytest.raises(InputError, match="folder name"):
        discover_cases(table)


@pytest.mark.slow
def test_real_pipeline_on_phantom_cases_in_parallel(tmp_path):
    """Two phantom studies through the real pipeline with --workers 2, then evaluate."""
    phantom = pytest.importorskip("nstage.phantom")
    cohort = tmp_path / "cohort"
    case = phantom.make_phantom(phantom.PhantomSpec(nodes=("4R", "7"), seed=1))
    phantom.write_phantom(case, cohort / "ph-a")  # writes cohort/ph-a/input/images/...
    # The second case is a copy: building phantoms is the slow part of this test.
    shutil.copytree(cohort / "ph-a", cohort / "ph-b")
    truth = json.loads((cohort / "ph-a" / "truth.json").read_text())
    truth_rows = ["case_id,cN,pN"] + [f"{cid},c{truth['n_stage']},p{truth['n_stage_9th']}"
                                      for cid in ("ph-a", "ph-b")]
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "nstage", "batch", "--cases", str(cohort),
                          "--out", str(out), "--workers", "2", "--anatomy", "classical",
                          "--lesions", "suv", "--no-report"],
                         capture_output=True, text=True, timeout=600, cwd=PROJECT)
    assert res.returncode == 0, res.stderr
    rows = {r["case_id"]: r for r in _table(out / "predictions.csv")}
    assert set(rows) == {"ph-a", "ph-b"}
    assert rows["ph-a"]["n_stage"] == rows["ph-b"]["n_stage"]
    for cid, row in rows.items():
        assert row["status"] == "ok", row["error"]
        result = json.loads((out / "cases" / cid / "n-stage.json").read_text())
        assert row["n_stage"] == result["n_stage"]
        assert row["n_stage_9th"] == result["n_stage_9th"]
        assert float(row["p_N2"]) == pytest.approx(result["probabilities"]["N2"], abs=1e-6)
        assert (out / "cases" / cid / "images/n-staging-segmentation/output.mha").is_file()
    (tmp_path / "truth.csv").write_text("\n".join(truth_rows) + "\n")
    m = evaluate_files(out / "predictions.csv", tmp_path / "truth.csv", n_boot=0)
    assert m["ai_vs_pathological"]["n"] == 2
    assert m["clinical_vs_pathological"]["accuracy"]["count"] == 2
    # a re-run finds both finished and recomputes nothing
    mtimes = {c: (out / "cases" / c / "n-stage.json").stat().st_mtime_ns for c in rows}
    res = subprocess.run([sys.executable, "-m", "nstage", "batch", "--cases", str(cohort),
                          "--out", str(out), "--anatomy", "classical", "--lesions", "suv"],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert res.returncode == 0 and "2 already done" in res.stderr
    assert mtimes == {c: (out / "cases" / c / "n-stage.json").stat().st_mtime_ns for c in rows}


# ---------------------------------------------------------------------------------------------
# Issue 19: nothing left running, one run per folder, spreadsheet-safe cells


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


BATCH_CLI = ("import sys; import nstage.batch as b; from batch_helpers import slow_runner; "
             "b.pipeline_runner = slow_runner; from nstage.cli import main; "
             "sys.exit(main(sys.argv[1:]))")


def _start_slow_batch(cohort: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``nstage batch --workers 2`` whose cases take a minute; returns once two cases run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT / "src"),
                                                        str(PROJECT / "tests")])}
    # SIGINT as in an interactive shell: a test run started as a background job of a
    # non-interactive shell inherits it ignored, and the SIGINT case would wait for nothing.
    proc = subprocess.Popen([sys.executable, "-c", BATCH_CLI, "batch", "--cases", str(cohort),
                             "--out", str(out), "--workers", "2", *extra], cwd=PROJECT,
                            env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(calls(cohort)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    assert len(calls(cohort)) == 2, "the workers never started their cases"
    return proc


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads processes from /proc")


@LINUX_ONLY
def test_sigkill_of_the_parent_leaves_no_worker_and_no_resource_tracker(tmp_path):
    cohort = make_fake_cohort(tmp_path / "cohort", {"a": "N0", "b": "N1 10R", "c": "N0"})
    proc = _start_slow_batch(cohort, tmp_path / "out")
    children = _children(proc.pid)
    kinds = sorted("resource_tracker" if "resource_tracker" in _cmdline(c) else "worker"
                   for c in children)
    assert kinds == ["resource_tracker", "worker", "worker"], [_cmdline(c) for c in children]
    proc.kill()  # SIGKILL: no handler runs in the parent
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(c) for c in children):
        time.sleep(0.1)
    assert [c for c in children if _running(c)] == []


@LINUX_ONLY
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_ends_workers_and_rebuilds_the_table(tmp_path, signum):
    cohort = make_fake_cohort(tmp_path / "cohort", {"a": "N0", "b": "N1 10R", "c": "N0"})
    out = tmp_path / "out"
    proc = _start_slow_batch(cohort, out)
    workers = [int(p) for p in (cohort / "pids.log").read_text().split()]
    proc.send_signal(signum)  # to the parent alone: it must end its workers itself
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == (
        f"nstage batch: stopped by signal {int(signum)}; finished cases are kept in {out} (run "
        "the same command again to resume)")
    assert "Traceback" not in err
    assert [w for w in workers if _running(w)] == []
    # nothing half-done: no attempt folders, no lock; the table lists every case as pending
    assert sorted(p.name for p in out.iterdir()) == ["cases", "predictions.csv"]
    assert list((out / "cases").iterdir()) == []
    assert [r["status"] for r in _table(out / "predictions.csv")] == ["pending"] * 3


@LINUX_ONLY
def test_second_batch_on_the_same_folder_is_refused_naming_lock_and_pid(tmp_path):
    cohort = make_fake_cohort(tmp_path / "cohort", {"a": "N0", "b": "N1 10R", "c": "N0"})
    out = tmp_path / "out"
    first = _start_slow_batch(cohort, out)
    try:
        res = subprocess.run([sys.executable, "-m", "nstage", "batch", "--cases", str(cohort),
                              "--out", str(out)], capture_output=True, text=True, timeout=120,
                             cwd=PROJECT)
        assert res.returncode == 2
        assert res.stderr == (
            f"nstage batch: error: {out / '.nstage.lock'}: another 'nstage batch' (PID "
            f"{first.pid}) is writing into this output folder (wait for it to finish or use "
            "another --out; delete this lock file only if no such process runs)\n")
        assert len(calls(cohort)) == 2  # the second run computed nothing
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert not (out / ".nstage.lock").exists()


def test_lock_of_a_dead_run_is_taken_over(tmp_path):
    cohort = make_fake_cohort(tmp_path / "cohort", {"a": "N0"})
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (out / ".nstage.lock").write_text(json.dumps({"pid": int(dead), "command": "nstage batch"}))
    summary = run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    assert summary.ok == 1
    assert sorted(p.name for p in out.iterdir()) == ["cases", "predictions.csv"]


def test_output_folder_that_is_a_file_is_refused_before_the_cohort(tmp_path):
    target = tmp_path / "out"
    target.write_text("keep")
    res = subprocess.run([sys.executable, "-m", "nstage", "batch", "--cases",
                          str(tmp_path / "no-such-cohort"), "--out", str(target)],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert res.returncode == 2
    assert res.stderr == (f"nstage batch: error: {target}: is a file, not a folder (give a "
                          "folder for the outputs)\n")
    assert target.read_text() == "keep"


FORMULA_IDS = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "'quoted", "plain-id"]


def test_predictions_cells_cannot_run_as_formulas(tmp_path):
    specs = {cid: "N2 4R,7" for cid in FORMULA_IDS}
    cohort = make_fake_cohort(tmp_path / "cohort", specs)
    out = tmp_path / "out"
    run_batch(cohort, out, {}, runner=fake_runner, progress=False)
    lines = (out / "predictions.csv").read_text().splitlines()
    text_cells = [ln.split(",")[0] for ln in lines[1:]]
    # Case folders are taken in name order: ' + - = @ p
    assert text_cells == ["''quoted", "'+SUM(A1)", "'-2+3", "'=1+1", "'@cmd", "plain-id"]
    for line in lines[1:]:
        cells = next(csv.reader([line]))
        assert not cells[0].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert cells[5] == "0.85"  # p_N2: the numeric columns stay numbers
    # nstage evaluate reads the ids back as they were
    truth = tmp_path / "truth.csv"
    truth.write_text("case_id,cN,pN\n" + "".join(f'"{c}",N2,pN2\n' for c in FORMULA_IDS))
    m = evaluate_files(out / "predictions.csv", truth, n_boot=0)
    assert m["ai_vs_pathological"]["n"] == len(FORMULA_IDS)
    assert m["ai_vs_pathological"]["accuracy"]["count"] == len(FORMULA_IDS)


def test_error_messages_in_the_table_are_safe_too(tmp_path):
    from nstage.batch import write_predictions

    out = tmp_path / "out"
    out.mkdir()
    write_predictions(out, ["x"], {"x": ("error", "-rf: =cmd|' /C calc'!A0")})
    rows = _table(out / "predictions.csv")
    assert rows[0]["error"] == "'-rf: =cmd|' /C calc'!A0"
    assert rows[0]["status"] == "error"
