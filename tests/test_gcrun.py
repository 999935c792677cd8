"""nstage gc-run: the real gcapi client over HTTPS against a fake platform on 127.0.0.1."""

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
from gc_fake_server import ALGORITHM_SLUG, FakeGrandChallenge, make_certificate

from nstage.errors import NStageError
from nstage.evaluate import evaluate_files
from nstage.gcrun import LEDGER, run_on_grand_challenge

pytest.importorskip("gcapi")
PROJECT = Path(__file__).resolve().parents[1]
TOKEN = "tok-5f0c2d7e-not-a-real-token-91ab"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a test certificate")
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def platform(tls, monkeypatch):
    cert, key = tls
    fake = FakeGrandChallenge(TOKEN, cert, key)
    fake.start()
    # httpx (inside gcapi) trusts the test certificate through the standard variable.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("GC_TOKEN", TOKEN)
    yield fake
    fake.stop()


def make_cohort(root: Path, specs: dict[str, str]) -> Path:
    """Case folders in Grand Challenge layout; the CT bytes tell the fake algorithm what to do."""
    for cid, spec in specs.items():
        (root / cid / "images" / "ct").mkdir(parents=True)
        (root / cid / "images" / "ct" / f"{cid}-ct.mha").write_text(spec)
        if spec != "nopet":
            (root / cid / "images" / "pet").mkdir(parents=True)
            (root / cid / "images" / "pet" / f"{cid}-pet.mha").write_text("pet")
    return root


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv", newline="") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


def _all_text_under(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*")
                   if p.is_file())


def test_cohort_with_rate_limits_and_a_failed_job(platform, tmp_path):
    platform.rate_limit = {"job_create": 1, "job_detail": 2}
    specs = {"a": "N0", "b": "N2 4R,7", "c": "fail", "d": "N1 10R", "e": "nopet"}
    cohort = make_cohort(tmp_path / "cohort", specs)
    out = tmp_path / "out"
    summary = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                     max_active=2, poll_s=0.02, max_poll_s=0.2,
                                     progress=False, deadline_s=120)
    assert (summary.done, summary.failed, summary.active) == (3, 2, 0)
    rows = _rows(out)
    assert [rows[c]["status"] for c in specs] == ["ok", "ok", "error", "ok", "error"]
    assert rows["b"]["n_stage"] == "N2" and rows["b"]["stations"] == "4R;7"
    assert "Time limit exceeded" in rows["c"]["error"]
    assert "images/pet" in rows["e"]["error"]
    case_b = out / "cases" / "b"
    assert json.loads((case_b / "n-stage.json").read_text())["n_stage_9th"] == "N2b"
    overlay = case_b / "images" / "n-staging-segmentation" / "output.mha"
    assert overlay.read_bytes() == b"overlay-of-b-ct.mha"
    # never more than --max-active jobs at once; each case uploaded and started once
    assert platform.max_active_seen <= 2
    assert set(platform.jobs_per_ct().values()) == {1} and len(platform.jobs) == 4
    assert set(platform.uploads_per_file().values()) == {1}
    # rate limits were answered with 429 and honoured (Retry-After: 1 s)
    limited = [i for i, entry in enumerate(platform.log) if entry[3] == 429]
    assert len(limited) == 3
    for i in limited:
        t, method, path, _ = platform.log[i]
        retry = next(e for e in platform.log[i + 1:] if e[1:3] == (method, path))
        assert retry[0] - t >= 0.9
    ledger = json.loads((out / LEDGER).read_text())
    assert ledger["cases"]["c"]["state"] == "failed" and ledger["cases"]["c"]["job"]
    assert TOKEN not in _all_text_under(out)
    # the table feeds nstage evaluate unchanged
    truth = tmp_path / "truth.csv"
    truth.write_text("case_id,cN,pN\na,N0,pN0\nb,cN2,pN2b\nc,N1,pN1\nd,N1,pN2a\ne,N0,N0\n")
    m = evaluate_files(out / "predictions.csv", truth, n_boot=0)
    assert m["ai_vs_pathological"]["n"] == 3
    assert m["ai_vs_pathological"]["accuracy"]["count"] == 2
    # a second run has nothing to do: no new upload, no new job
    before = (len(platform.uploads), len(platform.jobs))
    again = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                   poll_s=0.02, progress=False, deadline_s=30)
    assert (again.done, again.failed) == (3, 2)
    assert (len(platform.uploads), len(platform.jobs)) == before


def _cli(out: Path, cohort: Path, base_url: str, env: dict, *extra: str):
    return [sys.executable, "-m", "nstage", "gc-run", "--algorithm", ALGORITHM_SLUG,
            "--cases", str(cohort), "--out", str(out), "--base-url", base_url,
            "--poll-seconds", "0.05", *extra]


def test_restart_in_the_middle_never_uploads_a_case_twice(platform, tmp_path):
    specs = {f"p{i}": f"N{i % 4}" for i in range(4)}
    cohort = make_cohort(tmp_path / "cohort", specs)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    platform.hold.set()  # jobs keep running until the restart
    proc = subprocess.Popen(_cli(out, cohort, platform.base_url, env, "--max-active", "2"),
                            cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if len(platform.jobs) >= 2 and (out / LEDGER).exists():
                states = json.loads((out / LEDGER).read_text())["cases"]
                if sum(bool(e.get("job")) for e in states.values()) >= 2:
                    break
            time.sleep(0.05)
        assert len(platform.jobs) == 2, "the first run did not start two jobs"
    finally:
        proc.send_signal(signal.SIGKILL)
        first_out, first_err = proc.communicate(timeout=30)
    assert not (out / "cases" / "p0" / "n-stage.json").exists()
    platform.hold.clear()
    res = subprocess.run(_cli(out, cohort, platform.base_url, env, "--max-active", "2"),
                         cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert "done=4" in res.stderr and "queued=" in res.stderr  # the progress bar's counts
    assert set(platform.jobs_per_ct().values()) == {1} and len(platform.jobs) == 4
    assert set(platform.uploads_per_file().values()) == {1} and len(platform.uploads) == 8
    rows = _rows(out)
    assert all(r["status"] == "ok" for r in rows.values()) and len(rows) == 4
    assert [rows[c]["n_stage"] for c in specs] == ["N0", "N1", "N2", "N3"]
    for text in (first_out, first_err, res.stdout, res.stderr, _all_text_under(out)):
        assert TOKEN not in text
    # the token did reach the platform, in the Authorization header only
    assert f"BEARER {TOKEN}" in platform.auth_headers


def test_wrong_or_missing_token_exit_2(platform, tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N0"})
    wrong = "wrong-token-3c9e1f"
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "GC_TOKEN": wrong}
    res = subprocess.run(_cli(tmp_path / "out", cohort, platform.base_url, env), cwd=PROJECT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "refused the API token from $GC_TOKEN (HTTP 401: Invalid token.)" in res.stderr
    assert wrong not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert not platform.uploads and not platform.jobs
    assert not (tmp_path / "out").exists()  # nothing written when the platform refuses
    env.pop("GC_TOKEN")
    res = subprocess.run(_cli(tmp_path / "out", cohort, platform.base_url, env,
                              "--token-env", "MY_GC_TOKEN"),
                         cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "MY_GC_TOKEN" in res.stderr and "not set" in res.stderr


def test_unknown_algorithm_is_a_clear_error(platform, tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N0"})
    with pytest.raises(NStageError, match="algorithm 'no-such-algo' not found"):
        run_on_grand_challenge(cohort, tmp_path / "out", "no-such-algo",
                               base_url=platform.base_url, progress=False, deadline_s=10)
    with pytest.raises(NStageError, match="belongs to algorithm"):
        (tmp_path / "out2").mkdir()
        (tmp_path / "out2" / LEDGER).write_text(json.dumps({"algorithm": "other", "cases": {}}))
        run_on_grand_challenge(cohort, tmp_path / "out2", ALGORITHM_SLUG,
                               base_url=platform.base_url, progress=False, deadline_s=10)


def test_stop_waiting_leaves_jobs_for_the_next_run(platform, tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N1 10R", "b": "N3 4L"})
    out = tmp_path / "out"
    platform.hold.set()
    summary = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                     poll_s=0.02, max_poll_s=0.05, progress=False,
                                     deadline_s=0.5)
    assert (summary.done, summary.active) == (0, 2)
    rows = _rows(out)
    assert {r["status"] for r in rows.values()} == {"running"}
    platform.hold.clear()
    summary = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                     poll_s=0.02, max_poll_s=0.05, progress=False,
                                     deadline_s=60)
    assert (summary.done, summary.active) == (2, 0)
    assert [r["n_stage"] for r in _rows(out).values()] == ["N1", "N3"]
    assert len(platform.jobs) == 2 and len(platform.uploads) == 4


# ---------------------------------------------------------------------------------------------
# Job creation is not idempotent: a request whose answer is lost must not create a second job.


def test_connection_reset_after_the_job_was_created_makes_no_second_job(platform, tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N2 4R,7", "b": "N0"})
    out = tmp_path / "out"
    platform.reset_after_create = 1  # case a: job created, the answer never arrives
    summary = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                     poll_s=0.02, max_poll_s=0.05, progress=False,
                                     deadline_s=60)
    assert platform.reset_after_create == 0, "the fake never reset a connection"
    assert (summary.done, summary.failed) == (2, 0)
    assert platform.jobs_per_ct() == {"a-ct.mha": 1, "b-ct.mha": 1}
    rows = _rows(out)
    assert rows["a"]["n_stage"] == "N2" and rows["a"]["stations"] == "4R;7"
    ledger = json.loads((out / LEDGER).read_text())["cases"]
    assert ledger["a"]["job"] in platform.jobs and ledger["a"]["state"] == "done"
    assert sorted(p.name for p in out.iterdir()) == ["cases", LEDGER, "predictions.csv"]


def test_server_error_after_the_job_was_created_makes_no_second_job(platform, tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N1 10R"})
    platform.error_after_create = 1  # 502 although the job exists (gcapi must not re-send)
    summary = run_on_grand_challenge(cohort, tmp_path / "out", ALGORITHM_SLUG,
                                     base_url=platform.base_url, poll_s=0.02, max_poll_s=0.05,
                                     progress=False, deadline_s=60)
    assert platform.error_after_create == 0
    assert (summary.done, summary.failed) == (1, 0)
    assert platform.jobs_per_ct() == {"a-ct.mha": 1}
    posts = [e for e in platform.log if e[1:3] == ("POST", "/api/v1/algorithms/jobs/")]
    assert [e[3] for e in posts] == [502]


def test_restart_from_creating_state_finds_the_job_instead_of_creating_another(platform,
                                                                               tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N3 4L", "b": "N1 10R"})
    out = tmp_path / "out"
    # First run: the answer to a's creation is lost and the run stops right away, leaving a
    # in "creating" (as a run killed at that moment would); the job's inputs are still being
    # imported, so a job list does not show them yet.
    platform.reset_after_create = 1
    platform.inputs_pending.set()
    platform.hold.set()
    first = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                   max_active=1, poll_s=0.02, progress=False, deadline_s=0)
    ledger = json.loads((out / LEDGER).read_text())["cases"]
    assert ledger["a"]["state"] == "creating" and ledger["a"]["job"] is None
    assert ledger["a"]["marker"] and first.done == 0
    assert len(platform.jobs) == 1
    # Second run while the inputs are still pending: the job cannot be matched yet, so the
    # case waits instead of creating a second one.
    run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                           max_active=1, poll_s=0.02, max_poll_s=0.05, progress=False,
                           deadline_s=0.5)
    assert platform.jobs_per_ct() == {"a-ct.mha": 1}
    assert json.loads((out / LEDGER).read_text())["cases"]["a"]["state"] == "creating"
    # Third run once the inputs are imported: the job is found by its marker and collected.
    platform.release_inputs()
    platform.hold.clear()
    summary = run_on_grand_challenge(cohort, out, ALGORITHM_SLUG, base_url=platform.base_url,
                                     max_active=1, poll_s=0.02, max_poll_s=0.05,
                                     progress=False, deadline_s=60)
    assert (summary.done, summary.failed) == (2, 0)
    assert platform.jobs_per_ct() == {"a-ct.mha": 1, "b-ct.mha": 1}
    assert [r["n_stage"] for r in _rows(out).values()] == ["N3", "N1"]
    assert set(platform.uploads_per_file().values()) == {1}


def test_second_run_on_a_locked_folder_is_refused(platform, tmp_path):
    cohort = make_cohort(tmp_path / "cohort", {"a": "N0"})
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nstage.batch import OutputLock; "
         f"lock = OutputLock({str(out)!r}, 'nstage gc-run'); lock.acquire(); print('held', "
         "flush=True); time.sleep(60)"],
        cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}
        res = subprocess.run(_cli(out, cohort, platform.base_url, env), cwd=PROJECT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2
        assert res.stderr == (
            f"nstage gc-run: error: {out / '.nstage.lock'}: another 'nstage gc-run' (PID "
            f"{holder.pid}) is writing into this output folder (wait for it to finish or use "
            "another --out; delete this lock file only if no such process runs)\n")
        assert not platform.uploads and not platform.jobs
    finally:
        holder.kill()
        holder.communicate(timeout=30)
