"""What a run writes: overlay, visual report and n-stage.json, and how a report that cannot
be drawn is handled (nstage.pipeline.write_outputs)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import types

import pytest

from nstage import figure
from nstage.pipeline import OUTPUT_JSON, OUTPUT_OVERLAY, RunOptions, write_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def staged():
    from figure_cases import stage_phantom

    staged, _ = stage_phantom("N2b")
    return staged


def _fresh(staged):
    """A copy whose result can be written (write_outputs adds notes and timings)."""
    return dataclasses.replace(staged, result=copy.deepcopy(staged.result))


def _notes(out):
    return json.loads((out / OUTPUT_JSON).read_text())["notes"]


def test_run_writes_overlay_report_and_json(staged, tmp_path):
    result = write_outputs(_fresh(staged), tmp_path, RunOptions())
    assert (tmp_path / OUTPUT_OVERLAY).stat().st_size > 0
    for name in (figure.PNG_NAME, figure.PDF_NAME):
        assert (tmp_path / name).stat().st_size > 10_000, name
    written = json.loads((tmp_path / OUTPUT_JSON).read_text())
    assert written["n_stage_9th"] == result["n_stage_9th"] == "N2b"
    assert not [n for n in written["notes"] if "visual report" in n]
    assert written["timings_s"]["write"] > 0
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_no_report_writes_no_figure(staged, tmp_path):
    write_outputs(_fresh(staged), tmp_path, RunOptions(report=False))
    assert (tmp_path / OUTPUT_JSON).exists() and (tmp_path / OUTPUT_OVERLAY).exists()
    assert not (tmp_path / figure.PNG_NAME).exists()


def test_report_error_becomes_a_note_and_the_result_is_still_written(staged, tmp_path,
                                                                     monkeypatch):
    def broken(staged, out_dir):
        raise RuntimeError("no usable font\nfound")

    monkeypatch.setattr(figure, "write_report", broken)
    write_outputs(_fresh(staged), tmp_path, RunOptions())
    assert "visual report not written: RuntimeError: no usable font found" in _notes(tmp_path)
    assert (tmp_path / OUTPUT_OVERLAY).exists()
    assert not (tmp_path / figure.PNG_NAME).exists()


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the PDF is saved by a child process only on Linux")


def _recording_saves(monkeypatch, die_on_pdf: bool = False):
    """Make figure._save_atomic record (process id, suffix) of each save, then save as usual
    (or, with ``die_on_pdf``, end the process saving the PDF as the kernel would)."""
    saves: list[tuple[int, str]] = []
    original = figure._save_atomic

    def recorded(fig, path, dpi):
        saves.append((os.getpid(), path.suffix))
        if die_on_pdf and path.suffix == ".pdf":
            os._exit(9)
        return original(fig, path, dpi)

    monkeypatch.setattr(figure, "_save_atomic", recorded)
    return saves


@LINUX_ONLY
def test_pdf_is_saved_by_a_child_process_while_the_png_is_saved_here(staged, tmp_path,
                                                                     monkeypatch):
    saves = _recording_saves(monkeypatch)
    write_outputs(_fresh(staged), tmp_path, RunOptions())
    assert saves == [(os.getpid(), ".png")], "the PDF was not saved in parallel"
    for name in (figure.PNG_NAME, figure.PDF_NAME):
        assert (tmp_path / name).stat().st_size > 10_000, name
    assert (tmp_path / figure.PDF_NAME).read_bytes().startswith(b"%PDF")


@LINUX_ONLY
def test_pdf_process_dying_becomes_a_note(staged, tmp_path, monkeypatch):
    _recording_saves(monkeypatch, die_on_pdf=True)
    write_outputs(_fresh(staged), tmp_path, RunOptions())
    notes = [n for n in _notes(tmp_path) if "visual report" in n]
    assert notes == [f"visual report not written: RuntimeError: {figure.PDF_NAME} not written: "
                     "the process saving it ended with exit code 9"]
    assert (tmp_path / OUTPUT_OVERLAY).exists()
    assert (tmp_path / figure.PNG_NAME).exists()
    assert not (tmp_path / figure.PDF_NAME).exists()
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_both_files_are_saved_here_where_fork_is_not_allowed(staged, tmp_path, monkeypatch):
    saves = _recording_saves(monkeypatch)
    monkeypatch.setattr(figure, "fork_allowed", lambda: False)
    write_outputs(_fresh(staged), tmp_path, RunOptions())
    assert sorted(saves) == [(os.getpid(), ".pdf"), (os.getpid(), ".png")]
    for name in (figure.PNG_NAME, figure.PDF_NAME, OUTPUT_JSON):
        assert (tmp_path / name).exists(), name


# ---------------------------------------------------------------------------------------------
# PET field of view


def _image(size, origin=(0.0, 0.0, 0.0), direction=None):
    import SimpleITK as sitk

    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize("direction", [None, (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)],
                         ids=["axis-aligned", "rotated"])
def test_pet_coverage_is_the_fraction_of_work_voxels_inside_the_pet(direction):
    from nstage.pipeline import _pet_coverage

    ct = _image((10, 8, 20), direction=direction)
    for pet_size, pet_origin, expected in [((10, 8, 10), (0.0, 0.0, 0.0), 0.5),
                                           ((10, 8, 40), (0.0, 0.0, -5.0), 1.0),
                                           ((5, 8, 20), (0.0, 0.0, 0.0), 0.5),
                                           ((10, 8, 10), (0.0, 0.0, 30.0), 0.0)]:
        pet = _image(pet_size, pet_origin, direction)
        study = types.SimpleNamespace(pet=pet)
        assert _pet_coverage(study, ct) == pytest.approx(expected), (pet_size, pet_origin)


def test_pet_covering_a_third_of_the_thorax_stages_nx_with_the_reason(staged):
    from nstage.pipeline import stage_study

    pet = staged.study.pet
    nz = pet.GetSize()[2]
    top_third = pet[:, :, 2 * nz // 3:]  # keeps the geometry of those slices
    study = dataclasses.replace(staged.study, pet=top_third)
    result = stage_study(study, RunOptions(anatomy="classical", lesions="suv")).result
    assert result["n_stage"] == result["n_stage_9th"] == "NX"
    assert any(r.startswith("the PET covers only") for r in result["reasons"]), result["reasons"]
    assert all(v is None for v in result["probabilities"].values())


def test_allocator_setting_applies_on_glibc_and_is_harmless_elsewhere():
    import platform

    from nstage.memory import reuse_freed_memory

    applied = reuse_freed_memory()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert applied is glibc
    assert reuse_freed_memory() is applied  # idempotent


def test_numpy_huge_page_advice_is_switched_off_unless_the_user_chose(monkeypatch):
    try:
        from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage

    from nstage.memory import avoid_huge_page_stalls

    before = _get_madvise_hugepage()
    try:
        _set_madvise_hugepage(True)
        monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
        assert avoid_huge_page_stalls() is True
        assert _get_madvise_hugepage() is False
        _set_madvise_hugepage(True)
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # the user's choice is kept
        assert avoid_huge_page_stalls() is False
        assert _get_madvise_hugepage() is True
    finally:
        _set_madvise_hugepage(before)
