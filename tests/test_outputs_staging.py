"""The output folder: checked first, written as one step, old outputs removed (issue 19).

Through the CLI and inference.py: a ``--out``/``--output`` that is a file, cannot be written
or has no room ends in exit 2 with one line before any analysis; a disk that fills while the
outputs are written (a write raising ENOSPC, or a real 256 KB tmpfs where mounting is
allowed) ends in exit 2 with nothing new left and an earlier result intact; a rerun with
``--no-report`` removes the earlier report and keeps files nstage does not write. Direct
``write_outputs`` tests check the order of the renames (n-stage.json out first, in last) and
the roll-back when a rename fails.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nstage.io
import nstage.io.outputs as outputs
from nstage.cli import main as cli_main
from nstage.errors import OutputError
from nstage.pipeline import OUTPUT_JSON, OUTPUT_OVERLAY, RunOptions, StageResult, write_outputs

ROOT = Path(__file__).resolve().parents[1]
TEST_INPUT = ROOT / "test" / "input"
OVERLAY = OUTPUT_OVERLAY.as_posix()
REPORT = ["n-stage-report.pdf", "n-stage-report.png"]
FAST = ["--anatomy", "classical", "--lesions", "suv", "--quiet"]  # stderr: the error line only


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, code: int, prefix: str = "nstage run: error: ") -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


# --------------------------------------------------------------------------- a staged case


@pytest.fixture(scope="module")
def staged_case() -> StageResult:
    """test/input loaded, with the expected result and a small overlay (no analysis run)."""
    study = nstage.io.load_study(TEST_INPUT)
    result = json.loads((ROOT / "test" / "expected_output" / OUTPUT_JSON).read_text())
    overlay = np.zeros(study.ct.GetSize()[::-1], np.uint8)
    overlay[50:60, 100:110, 100:110] = 3
    return StageResult(result=result, overlay=overlay, study=study)


def fresh(staged: StageResult) -> StageResult:
    return StageResult(result=copy.deepcopy(staged.result), overlay=staged.overlay,
                       study=staged.study)


def test_json_goes_out_first_and_comes_in_last(staged_case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_outputs(fresh(staged_case), out, RunOptions(report=False))
    moves: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording(src, dst):
        if not Path(src).name.startswith("."):  # not a writer's own temp-file rename
            moves.append((Path(src).name, "aside" if ".previous" in Path(dst).parts else "in"))
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", recording)
    write_outputs(fresh(staged_case), out, RunOptions(report=False))
    # The old result is out of the way before anything else moves, the new one arrives last.
    assert moves == [(OUTPUT_JSON, "aside"), ("output.mha", "aside"), ("output.mha", "in"),
                     (OUTPUT_JSON, "in")]
    assert sorted(files_in(out)) == [OVERLAY, OUTPUT_JSON]


def test_failed_rename_puts_the_old_outputs_back(staged_case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_outputs(fresh(staged_case), out, RunOptions(report=False))
    (out / "my-notes.txt").write_text("mine")
    before = files_in(out)
    real_replace = os.replace
    calls = []

    def failing(src, dst):
        if not Path(src).name.startswith("."):  # not a writer's own temp-file rename
            calls.append(dst)
            if len(calls) == 4:  # old JSON and overlay aside, new overlay in: the JSON fails
                raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing)
    with pytest.raises(OutputError, match="cannot write while moving the outputs into place"):
        write_outputs(fresh(staged_case), out, RunOptions(report=False))
    assert files_in(out) == before


def test_outputs_an_earlier_run_wrote_and_this_one_does_not_are_removed(staged_case,
                                                                        tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in [*REPORT, "n-staging-segmentation.dcm"]:
        (out / name).write_bytes(b"from an earlier run")
    (out / "images" / "n-staging-segmentation").mkdir(parents=True)
    (out / "images" / "n-staging-segmentation" / "viewer-settings.json").write_text("{}")
    (out / "my-notes.txt").write_text("mine")
    write_outputs(fresh(staged_case), out, RunOptions(report=False))
    assert sorted(files_in(out)) == ["images/n-staging-segmentation/output.mha",
                                     "images/n-staging-segmentation/viewer-settings.json",
                                     "my-notes.txt", OUTPUT_JSON]


def test_disk_full_while_writing_leaves_the_earlier_result(staged_case, tmp_path,
                                                           monkeypatch):
    out = tmp_path / "out"
    write_outputs(fresh(staged_case), out, RunOptions(report=False))
    before = files_in(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nstage.io, "write_json_atomic", full)
    with pytest.raises(OutputError) as err:
        write_outputs(fresh(staged_case), out, RunOptions(report=False))
    assert str(err.value) == (
        f"{out}: the disk is full (No space left on device) while writing the outputs; "
        "nothing was written (free some space or choose another output folder)")
    assert files_in(out) == before  # no staging folder, no new overlay beside the old JSON


# --------------------------------------------------------------------------- through the CLI


def test_out_that_is_a_file_is_refused_first(tmp_path, capsys):
    target = tmp_path / "results.json"
    target.write_text("keep")
    code = cli_main(["run", "--ct", str(tmp_path / "missing-ct"), "--out", str(target)])
    line = one_error_line(capsys, code)
    # refused before the (missing) input is even looked at
    assert line == f"nstage run: error: {target}: is a file, not a folder (give a folder for " \
                   "the outputs)"
    assert target.read_text() == "keep"
    code = cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(target / "sub")])
    assert f"cannot be created: {target} is a file" in one_error_line(capsys, code)


def test_inference_output_that_is_a_file(tmp_path):
    target = tmp_path / "output"
    target.write_text("")
    res = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--input",
                          str(TEST_INPUT), "--output", str(target)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr == f"inference.py: error: {target}: is a file, not a folder (give a " \
                         "folder for the outputs)\n"


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount(size_kb, read_only) -> folder on a fresh tmpfs; skips where mounting is denied."""
    mounted: list[Path] = []

    def mount(size_kb: int, read_only: bool = False) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        options = f"size={size_kb}k" + (",ro" if read_only else "")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_folder_that_cannot_be_written_is_refused_first(tmp_path, capsys, mount_tmpfs):
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    else:  # root writes anywhere chmod allows: use a read-only file system
        folder = mount_tmpfs(64, read_only=True)
    for out in (folder, folder / "new"):
        code = cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(out)])
        line = one_error_line(capsys, code)
        assert line.startswith(f"nstage run: error: {out}: cannot ")
        assert "choose a folder you can write to" in line
    assert list(folder.iterdir()) == []


def test_disk_without_room_is_refused_before_the_analysis(capsys, mount_tmpfs):
    small = mount_tmpfs(1024)
    code = cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(small / "out"), *FAST])
    line = one_error_line(capsys, code)
    # CT 256x256x114: 2 bytes per voxel (overlay, DICOM SEG) + 16 MB = 30 MB
    assert line == (f"nstage run: error: {small / 'out'}: its disk has 1.05 MB free, the "
                    "outputs need about 30.9 MB (free some space or choose another output "
                    "folder)")
    assert list(small.iterdir()) == []


@pytest.mark.slow
def test_disk_that_fills_during_the_run_leaves_nothing(capsys, mount_tmpfs, monkeypatch):
    """A real full disk: 256 KB of tmpfs, the free-space check passed (as when another program
    fills the disk during the analysis); the report does not fit."""
    tiny = mount_tmpfs(256)
    monkeypatch.setattr(outputs, "check_free_space", lambda out, needed: None)
    out = tiny / "out"
    code = cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(out), *FAST])
    line = one_error_line(capsys, code)
    assert line.startswith(f"nstage run: error: {out}: the disk is full (No space left on "
                           "device) while writing the outputs; nothing was written")
    assert list(tiny.iterdir()) == []  # not even the output folder


@pytest.mark.slow
def test_disk_full_through_the_cli_keeps_the_earlier_result(tmp_path, capsys, monkeypatch):
    """Runs everywhere (no mount needed): the JSON write fails with ENOSPC after the overlay
    and the report were written into the staging folder."""
    out = tmp_path / "out"
    assert cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    before = files_in(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nstage.io, "write_json_atomic", full)
    code = cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(out), *FAST, "--no-report"])
    line = one_error_line(capsys, code)
    assert line == (f"nstage run: error: {out}: the disk is full (No space left on device) "
                    "while writing the outputs; nothing was written (free some space or "
                    "choose another output folder)")
    assert files_in(out) == before  # the earlier result with its report, byte for byte


@pytest.mark.slow
def test_rerun_without_report_removes_the_old_report_only(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(out), *FAST]) == 0
    assert sorted(files_in(out)) == [OVERLAY, *REPORT, OUTPUT_JSON]
    (out / "my-notes.txt").write_text("mine")
    first = json.loads((out / OUTPUT_JSON).read_text())
    assert cli_main(["run", "--ct", str(TEST_INPUT), "--out", str(out), *FAST,
                     "--no-report"]) == 0
    capsys.readouterr()
    assert sorted(files_in(out)) == [OVERLAY, "my-notes.txt", OUTPUT_JSON]
    second = json.loads((out / OUTPUT_JSON).read_text())
    assert second["timings_s"]["total"] != first["timings_s"]["total"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_unwritable_output_through_inference(tmp_path, mount_tmpfs):
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder = mount_tmpfs(64, read_only=True)
    res = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--input",
                          str(TEST_INPUT), "--output", str(folder)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"inference.py: error: {folder}: cannot be written (")


def test_stale_staging_folders_of_dead_runs_are_removed(tmp_path, staged_case):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = out / f"{outputs.STAGING_PREFIX}{dead}-abcdef12"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "half.mha").write_bytes(b"x")
    live = out / f"{outputs.STAGING_PREFIX}{os.getppid()}-abcdef12"  # a live process's
    live.mkdir()
    write_outputs(fresh(staged_case), out, RunOptions(report=False))
    assert not stale.exists() and live.exists()
    shutil.rmtree(live)
    assert sorted(files_in(out)) == [OVERLAY, OUTPUT_JSON]
