"""Progress a user sees: one line per step on stderr, elapsed bars for model steps, case names
in ``nstage batch``, ``--quiet``, and Ctrl-C ending with one line and exit code 130."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from batch_helpers import fake_runner, make_fake_cohort

from nstage import progress
from nstage.batch import run_batch
from nstage.progress import PARTS, USER_STEPS, StepReporter

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^nstage: (?P<step>[a-z]+) \.\.\. (?P<s>[0-9]+\.[0-9]) s$")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory) -> Path:
    """A thorax phantom in Grand Challenge layout (2 nodes; about 3 s to stage)."""
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom

    out = tmp_path_factory.mktemp("progress-phantom")
    write_phantom(make_phantom(PhantomSpec(nodes=("4R", "7"), seed=3)), out)
    return out / "input"


def _interactive_sigint() -> None:
    """In the child before exec: SIGINT as in an interactive shell. A test run started as a
    background job of a non-interactive shell inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt: the Ctrl-C these tests send would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _nstage(*args: str, **kw) -> subprocess.Popen:
    # A new session: the test sends SIGINT to the whole group, as a terminal's Ctrl-C does
    # (child processes such as the report's PDF writer get it too).
    return subprocess.Popen([sys.executable, "-m", "nstage", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
                            preexec_fn=_interactive_sigint, **kw)


# ---------------------------------------------------------------------------- the reporter


def test_parts_become_one_line_per_user_step():
    out = io.StringIO()
    rep = StepReporter(stream=out, bars=False)
    for name, seconds in (("crop", 0.5), ("anatomy", 2.61), ("landmarks", 0.2),
                          ("lesions", 1.0), ("findings", 0.4), ("stations", 0.05),
                          ("staging", 0.01)):
        rep.part_done(name, seconds)
    lines = out.getvalue().splitlines()
    # crop is the first part of the anatomy (3.11 s together); stations the first of staging.
    assert lines == ["nstage: anatomy ... 3.1 s", "nstage: landmarks ... 0.2 s",
                     "nstage: lesions ... 1.0 s", "nstage: findings ... 0.4 s",
                     "nstage: staging ... 0.1 s"]


def test_quiet_reporter_prints_nothing(capsys):
    rep = progress.reporter(False)
    rep.part_done("anatomy", 1.0)
    rep.step("load", 1.0)
    with rep.activity("anatomy"):
        pass
    assert capsys.readouterr().err == ""


def test_every_step_the_pipeline_times_has_a_user_step():
    """A renamed internal step must not silently become a line users were not promised."""
    source = (ROOT / "src" / "nstage" / "pipeline.py").read_text()
    names = set(re.findall(r"timer\.(?:step\(|timed\(|timed,)\s*\"([a-z_]+)\"", source))
    # steps timed by hand in write_outputs ("total" is the sum, not a step)
    names |= set(re.findall(r"timings\[\"([a-z_]+)\"\]\s*=", source)) - {"total"}
    assert {"crop", "anatomy", "landmarks", "lesions", "findings"} <= names
    assert names <= set(PARTS), f"timer steps without a user step: {names - set(PARTS)}"
    assert {PARTS[n][0] for n in names} | {"load", "outputs"} == set(USER_STEPS)


def test_lines_from_threads_stay_whole():
    """The landmarks thread prints while the main thread does: no line may be torn."""
    out = io.StringIO()
    rep = StepReporter(stream=out, bars=False)

    def work(i: int) -> None:
        for _ in range(40):
            rep.part_done("landmarks" if i % 2 else "findings", 0.1 * i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 * 40
    assert all(LINE.match(line) for line in lines)


def test_long_model_step_shows_an_elapsed_bar_then_erases_it(monkeypatch):
    monkeypatch.setattr(progress, "BAR_DELAY_S", 0.2)
    monkeypatch.setattr(progress, "BAR_REFRESH_S", 0.05)
    out = io.StringIO()
    rep = StepReporter(stream=out, bars=True)
    with rep.activity("anatomy"):
        time.sleep(0.6)
    text = out.getvalue()
    assert "\rnstage: anatomy ... 00:00" in text
    assert text.endswith("\r")  # the bar line is cleared when the step ends
    quick = io.StringIO()
    rep = StepReporter(stream=quick, bars=True)
    with rep.activity("lesions"):
        time.sleep(0.05)  # shorter than the delay: nothing drawn
    with rep.activity("findings"):
        time.sleep(0.3)  # not a model step: never a bar
    assert quick.getvalue() == ""


def test_batch_progress_names_each_case(tmp_path, capsys):
    cohort = make_fake_cohort(tmp_path / "cohort", {"case-a": "N2 4R,7", "case-b": "bad",
                                                    "case-c": "N0"})
    run_batch(cohort, tmp_path / "out", {}, runner=fake_runner, progress=True)
    err = capsys.readouterr().err
    assert "nstage batch: case-a: N2 (N2b 9th edition)" in err
    assert "nstage batch: case-c: N0 (N0 9th edition)" in err
    assert re.search(r"nstage batch: case-b: error: .*no PET series found", err)
    assert "running case-" in err  # the bar names the case in flight
    run_batch(cohort, tmp_path / "quiet", {}, runner=fake_runner, progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------- the CLI


def test_run_prints_each_step_once_in_order(phantom_case, tmp_path):
    proc = _nstage("run", "--ct", str(phantom_case), "--out", str(tmp_path / "out"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    steps = [m.group("step") for m in map(LINE.match, err.splitlines()) if m]
    assert sorted(steps) == sorted(USER_STEPS)
    assert steps[0] == "load" and steps[-1] == "outputs"
    # landmarks run beside the lesions: either may end first; the rest keep pipeline order.
    serial = [s for s in steps if s != "landmarks"]
    assert serial == [s for s in USER_STEPS if s != "landmarks"]
    assert steps.index("landmarks") > steps.index("anatomy")


def test_quiet_run_prints_no_progress(phantom_case, tmp_path):
    proc = _nstage("run", "--ct", str(phantom_case), "--out", str(tmp_path / "out"),
                   "--quiet", "--no-report")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not [line for line in err.splitlines() if line.startswith("nstage: ")]
    assert "N stage: N2" in err  # the result itself still prints


def _interrupt_after(args: list[str], marker: str | None, delay: float = 0.0):
    """Start ``nstage *args``; send SIGINT to its process group once a stderr line starts
    with ``marker`` (or after ``delay`` s); return (exit code, stderr lines, signalled)."""
    proc = _nstage(*args)
    lines: list[str] = []
    signalled = False
    if marker is None:
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            signalled = True
    else:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(marker):
                os.killpg(proc.pid, signal.SIGINT)
                signalled = True
                break
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, lines + rest.splitlines(), signalled


@pytest.mark.slow
@pytest.mark.parametrize("after", ["nstage: anatomy", "nstage: staging"])
def test_ctrl_c_during_a_run_ends_with_one_line_and_130(phantom_case, tmp_path, after):
    """SIGINT while the landmarks child runs, and while the overlay, the report PNG and its
    forked PDF writer run: progress lines, then exactly one line, never a traceback."""
    code, lines, signalled = _interrupt_after(
        ["run", "--ct", str(phantom_case), "--out", str(tmp_path / "out")], after)
    assert signalled
    if code == 0:  # finished before the signal was handled: nothing to check
        pytest.skip("the run ended before the interrupt arrived")
    assert code == 130, lines
    assert lines[-1] == "nstage run: interrupted"
    assert all(LINE.match(line) for line in lines[:-1]), lines
    assert not (tmp_path / "out" / "n-stage.json").exists()


@pytest.mark.slow
def test_ctrl_c_quiet_prints_exactly_one_line(phantom_case, tmp_path):
    """Without progress lines stderr holds nothing but the one line, wherever the run was."""
    start = time.perf_counter()
    proc = _nstage("run", "--ct", str(phantom_case), "--out", str(tmp_path / "full"), "-q")
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    full = time.perf_counter() - start
    interrupted = 0
    for n, fraction in enumerate((0.3, 0.6, 0.85)):
        out = tmp_path / f"out{n}"
        code, lines, signalled = _interrupt_after(
            ["run", "--ct", str(phantom_case), "--out", str(out), "-q"], None, fraction * full)
        if code == 0:
            continue  # finished first (a busy machine): the case proves nothing
        interrupted += 1
        assert code == 130 and lines == ["nstage run: interrupted"], lines
        assert not (out / "n-stage.json").exists()
    assert interrupted >= 2


@pytest.mark.slow
def test_ctrl_c_in_batch_with_workers(tmp_path, phantom_case):
    import shutil

    for case in ("a", "b", "c"):
        shutil.copytree(phantom_case, tmp_path / "cohort" / case)
    code, lines, signalled = _interrupt_after(
        ["batch", "--cases", str(tmp_path / "cohort"), "--out", str(tmp_path / "out"),
         "--workers", "2", "--quiet"], None, 4.0)
    assert signalled and code == 130, lines
    assert len(lines) == 1 and lines[0].startswith("nstage batch: stopped by signal 2"), lines
    assert lines[0].endswith("(run the same command again to resume)"), lines
