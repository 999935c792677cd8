"""``nstage anatomy --preview``: the picture that shows a wrong landmark at a glance.

Checked on the rendered PNG itself: every landmark level is a horizontal line across the
coronal image at its z, in the measured colour (solid) or the approximated colour (dashed,
so with gaps), and named; the views are centred on the carina.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_path

from nstage.anatomy_preview import APPROXIMATED_COLOUR, MEASURED_COLOUR, render
from nstage.landmarks import Landmark, Landmarks

ROOT = Path(__file__).resolve().parents[1]


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def _line_fraction(png: np.ndarray, row: float, columns: tuple[float, float],
                   colour: str) -> float:
    """Fraction of the image columns on PNG row ``row`` (or the next) in ``colour``."""
    c0, c1 = int(np.ceil(columns[0])) + 2, int(np.floor(columns[1])) - 2
    best = 0.0
    for r in (int(np.floor(row)), int(np.ceil(row))):
        pixels = png[r, c0:c1, :3]
        close = np.all(np.abs(pixels - _rgb(colour)) < 0.12, axis=-1)
        best = max(best, float(close.mean()))
    return best


def _check_levels(preview) -> None:
    png = mpimg.imread(preview.png)
    rows = {}
    for level in preview.levels:
        rows.setdefault(round(level.row_px), []).append(level)
    checked = 0
    for row, levels in rows.items():
        near = [lv for lv in preview.levels if abs(lv.row_px - row) < 3 and lv not in levels]
        if near or len({lv.approximated for lv in levels}) > 1:
            continue  # two kinds of line within 3 px: the colours mix, nothing to tell apart
        level = levels[0]
        colour = APPROXIMATED_COLOUR if level.approximated else MEASURED_COLOUR
        fraction = _line_fraction(png, level.row_px, preview.image_columns_px, colour)
        if level.approximated:
            assert 0.3 < fraction < 0.85, (level, fraction)  # dashed: coloured with gaps
        else:
            assert fraction > 0.85, (level, fraction)  # solid across the image
        top, bottom = preview.axes_rows_px
        assert top <= level.row_px <= bottom
        assert level.name in level.label and ("approx." in level.label) == level.approximated
        checked += 1
    assert checked >= 3


def _anatomy_cli(ct: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "nstage", "anatomy", "--ct", str(ct),
                           "--out", str(out), "--preview", *extra], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_preview_of_a_phantom(tmp_path):
    """Phantom CT (its own truth: carina where the phantom put it)."""
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom

    paths = write_phantom(make_phantom(PhantomSpec(nodes=("4R",), seed=5)), tmp_path / "ph")
    ct = next((tmp_path / "ph" / "input" / "images" / "ct").glob("*.mha"))
    res = _anatomy_cli(ct, tmp_path / "out", "--anatomy", "classical")
    assert res.returncode == 0, res.stderr
    png = tmp_path / "out" / "anatomy-preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [line.split()[1] for line in res.stderr.splitlines() if line.startswith("nstage: ")]
    assert steps == ["load", "anatomy", "landmarks", "outputs"]
    landmarks = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    truth = json.loads(Path(paths["truth"]).read_text())
    assert abs(landmarks["carina_mm"][2] - truth["landmarks"]["carina_mm"][2]) < 10
    quiet = _anatomy_cli(ct, tmp_path / "quiet", "--anatomy", "classical", "--quiet")
    assert quiet.returncode == 0 and "nstage: " not in quiet.stderr


def _classical_preview(ct_path: Path, out: Path):
    from nstage import anatomy as anatomy_mod
    from nstage import landmarks as landmarks_mod
    from nstage.anatomy.crop import thorax_box
    from nstage.commands.anatomy import read_ct
    from nstage.geometry import crop, paste

    ct, _ = read_ct(ct_path)
    box = thorax_box(ct)
    anatomy = anatomy_mod.segment(crop(ct, box), backend="classical")
    lms = landmarks_mod.find(anatomy)
    labels = paste(ct, anatomy.labels, box, dtype=np.uint8)
    return render(ct, labels, anatomy.names, lms, out, box=box, title=ct_path.parent.name,
                  notes=anatomy.notes), lms, ct


@pytest.mark.parametrize("case", ["lung-pet-ct-dx-A0001", "nsclc-radiomics-LUNG1-002"])
def test_preview_of_real_ct_draws_every_level_where_it_is(tmp_path, case):
    preview, lms, ct = _classical_preview(real_path(case, "ct.mha"), tmp_path / "p.png")
    drawn = {lv.name for lv in preview.levels}
    # every landmark is drawn, or named as lying outside the view (beyond the CT)
    assert drawn | set(preview.outside) == set(lms.points) and not drawn & set(preview.outside)
    z_top = ct.TransformIndexToPhysicalPoint((0, 0, ct.GetSize()[2] - 1))[2]
    z_bottom = ct.TransformIndexToPhysicalPoint((0, 0, 0))[2]
    for name in preview.outside:
        assert not min(z_top, z_bottom) <= lms.points[name].z_mm <= max(z_top, z_bottom)
    assert any(lv.approximated for lv in preview.levels)
    assert any(not lv.approximated for lv in preview.levels)
    # higher z is drawn higher up (smaller row): superior up
    ordered = sorted(preview.levels, key=lambda lv: -lv.z_mm)
    assert all(a.row_px <= b.row_px + 1e-6 for a, b in zip(ordered, ordered[1:], strict=False))
    _check_levels(preview)
    assert preview.through_carina == (lms.get("carina") is not None)


def test_preview_without_landmarks_says_carina_not_found(tmp_path):
    ct = sitk.Image([40, 30, 20], sitk.sitkInt16) - 1000
    ct.SetSpacing((2.0, 2.0, 5.0))
    labels = np.zeros((20, 30, 40), np.uint8)
    labels[5:15, 10:20, 5:15] = 1
    preview = render(ct, labels, {1: "lung_right"}, Landmarks(), tmp_path / "p.png")
    assert not preview.through_carina and preview.levels == []
    assert mpimg.imread(preview.png).shape[:2] == (950, 1900)


def test_levels_outside_the_view_are_listed_not_drawn(tmp_path):
    ct = sitk.Image([40, 30, 20], sitk.sitkInt16) - 1000
    ct.SetSpacing((2.0, 2.0, 5.0))
    labels = np.zeros((20, 30, 40), np.uint8)
    lms = Landmarks(points={
        "carina": Landmark("carina", 50.0, "measured", "test", (40.0, 30.0, 50.0)),
        "aortic_arch_top": Landmark("aortic_arch_top", 400.0, "approximated", "far above"),
    })
    preview = render(ct, labels, {}, lms, tmp_path / "p.png")
    assert [lv.name for lv in preview.levels] == ["carina"]
    assert preview.outside == ["aortic_arch_top"]
