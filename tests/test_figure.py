"""The per-case visual report (nstage.figure): files, marks on the nodes, orientation.

Synthetic canonical CT/PET (tests/figure_cases.py) with hot spheres at known mm positions and
hand-written results for N0, N2b, N3 (more marks than crop panels, one node near the image
corner) and NX (no primary, probabilities null). The checks read the saved PNG back.
"""

from __future__ import annotations

import re
import time
import types
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import SimpleITK as sitk
from figure_cases import Lesion, images, make_case, result

from nstage import figure
from nstage.figure import MAX_PANELS, Marker, nx_banner, render, spread, write_report

CASES = ("N0", "N2b", "N3", "NX")


def _render(case, out: Path, **kw) -> tuple[list[Marker], np.ndarray, float]:
    png, pdf = out / f"{case.name}.png", out / f"{case.name}.pdf"
    t0 = time.perf_counter()
    markers = render(case.result, case.ct, case.pet, png, pdf, **kw)
    seconds = time.perf_counter() - t0
    print(f"render {case.name}: {seconds:.2f} s")
    return markers, mpimg.imread(png)[..., :3], seconds


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("figure")
    cases = {}
    for name in CASES:
        case = make_case(name)
        markers, png, seconds = _render(case, out)
        cases[name] = types.SimpleNamespace(case=case, markers=markers, png=png, seconds=seconds,
                                            png_path=out / f"{name}.png",
                                            pdf_path=out / f"{name}.pdf")
    return cases


# ---------------------------------------------------------------------------------------------
# reading the PNG back


def _gray_dark(png: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels of the inverted-grey MIP darker than ``threshold`` (colour marks excluded)."""
    spread_rgb = png.max(axis=-1) - png.min(axis=-1)
    return (png.mean(axis=-1) < threshold) & (spread_rgb < 0.08)


def _dark_centroid(png: np.ndarray, xy, radius: int = 6, threshold: float = 0.7):
    """Centroid (x, y) of dark grey pixels within ``radius`` px of ``xy``, and their count.

    The radius stays inside the marker ring (inner edge about 8 px, drawn with a black outline)
    so only the MIP under the mark counts."""
    x, y = round(xy[0]), round(xy[1])
    win = png[y - radius:y + radius + 1, x - radius:x + radius + 1]
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    mask = _gray_dark(win, threshold) & (xx ** 2 + yy ** 2 <= radius ** 2)
    if not mask.any():
        return None, 0
    return (x + float(xx[mask].mean()), y + float(yy[mask].mean())), int(mask.sum())


def _is_hot(png: np.ndarray, xy) -> bool:
    """PET overlay colour (red to yellow) in the 3 x 3 pixels at ``xy``."""
    x, y = round(xy[0]), round(xy[1])
    r, g, b = png[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
    return bool(r > 0.6 and r - b > 0.3)


# ---------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("name", CASES)
def test_png_and_pdf_are_written(rendered, name):
    r = rendered[name]
    assert r.png.shape[:2] == (992, 1402)  # A4 landscape (11.69 x 8.27 in) at 120 dpi
    assert r.png_path.stat().st_size > 30_000
    pdf = r.pdf_path.read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1  # one page
    assert not list(r.png_path.parent.glob(".*.tmp"))  # atomic writes left nothing behind
    assert r.seconds < 15.0  # the 3 s target is measured by benchmarks/bench_figure.py


# ---------------------------------------------------------------------------------------------
# marks on the MIP


@pytest.mark.parametrize("name", CASES)
def test_marks_fall_on_the_hot_spheres(rendered, name):
    r = rendered[name]
    expected = {"primary"} if r.case.result["primary_tumor"] else set()
    expected |= {n["station"] for n in r.case.result["nodes"]}
    assert {m.label for m in r.markers} == expected
    for m in r.markers:
        lesion = r.case.lesions[m.label]
        assert m.centroid_mm == pytest.approx(lesion.centre_mm)
        centre, count = _dark_centroid(r.png, m.png_xy)
        assert centre is not None and count >= 40, f"{m.label}: no dark MIP blob at the mark"
        assert np.hypot(centre[0] - m.png_xy[0], centre[1] - m.png_xy[1]) < 2.5, m.label


@pytest.mark.parametrize("name", ["N2b", "N3"])
def test_mip_is_radiological(rendered, name):
    """Patient-left lesions (x > 0 mm) are drawn right of the image centre, and vice versa."""
    r = rendered[name]
    for m in r.markers:
        left, _, right, _ = m.mip_box_px
        centre = 0.5 * (left + right)  # the MIP gutters are symmetric about the image
        if m.centroid_mm[0] > 5:
            assert m.png_xy[0] > centre + 5, m.label
        elif m.centroid_mm[0] < -5:
            assert m.png_xy[0] < centre - 5, m.label
        # superior is up
    by_label = {m.label: m for m in r.markers}
    if name == "N3":
        assert by_label["1L"].png_xy[1] < by_label["7"].png_xy[1]  # 1L is above 7


def test_marks_near_the_image_corner_are_drawn(rendered):
    """1L of the N3 case lies 16 mm from the lateral and 13 mm from the top image edge."""
    m = next(m for m in rendered["N3"].markers if m.label == "1L")
    left, top, right, bottom = m.mip_box_px
    assert left < m.png_xy[0] < right and top < m.png_xy[1] < bottom
    assert m.crop_xy is not None and _is_hot(rendered["N3"].png, m.crop_xy)


# ---------------------------------------------------------------------------------------------
# axial crops


@pytest.mark.parametrize("name", ["N0", "N2b", "N3"])
def test_crops_are_centred_on_the_lesions(rendered, name):
    r = rendered[name]
    with_crop = [m for m in r.markers if m.crop_xy is not None]
    assert len(with_crop) == min(len(r.markers), MAX_PANELS)
    for m in with_crop:
        assert _is_hot(r.png, m.crop_xy), f"{m.label}: crop centre shows no PET uptake"
        left, top, right, bottom = m.crop_box_px
        assert right - left == pytest.approx(bottom - top, abs=2)  # square: 90 x 90 mm
        assert m.crop_xy[0] == pytest.approx(0.5 * (left + right), abs=1.5)
        assert m.crop_xy[1] == pytest.approx(0.5 * (top + bottom), abs=1.5)


def test_crop_is_radiological(rendered):
    """In the 4R crop of the N3 case the 4L node (24.7 mm to the patient's left) is to the
    right of centre, and the same distance to the left (right lung edge) is not hot."""
    r = rendered["N3"]
    m = next(m for m in r.markers if m.label == "4R")
    left, _, right, _ = m.crop_box_px
    px_per_mm = (right - left) / figure.CROP_MM
    dx = (r.case.lesions["4L"].centre_mm[0] - r.case.lesions["4R"].centre_mm[0]) * px_per_mm
    x, y = m.crop_xy
    assert _is_hot(r.png, (x + dx, y))
    assert not _is_hot(r.png, (x - dx, y))


def test_more_marks_than_panels(rendered):
    r = rendered["N3"]
    assert len(r.markers) == 9 > MAX_PANELS
    assert all(m.png_xy is not None for m in r.markers)
    assert [m.crop_xy is not None for m in r.markers] == [True] * MAX_PANELS + [False] * 3
    # Primary first, then N3 before N2 before N1; numbers follow that order.
    kinds = [m.kind for m in r.markers]
    assert kinds == ["primary", "N3", "N3", "N3", "N2", "N2", "N2", "N1", "N1"]
    assert [m.number for m in r.markers] == ["T"] + [str(n) for n in range(1, 9)]


# ---------------------------------------------------------------------------------------------
# NX and empty cases


def test_nx_without_marks(rendered):
    r = rendered["NX"]
    assert r.markers == []
    assert r.case.result["primary_tumor"] is None
    assert all(v is None for v in r.case.result["probabilities"].values())


def _red_text_pixels(png: np.ndarray, top: float, bottom: float) -> int:
    band = png[int(top * png.shape[0]):int(bottom * png.shape[0])]
    return int(((band[..., 0] > 0.55) & (band[..., 1] < 0.25) & (band[..., 2] < 0.25)).sum())


def test_nx_reasons_are_shown_prominently(rendered):
    """A red banner under the header for NX (figure height 15-21 % from the top), none for N2b."""
    assert _red_text_pixels(rendered["NX"].png, 0.15, 0.21) > 300
    assert _red_text_pixels(rendered["N2b"].png, 0.15, 0.21) < 30


def test_nx_banner_text():
    reasons = ["thorax not in view: lungs of 20 ml (left) and 15 ml (right) found",
               "the PET covers only 30% of the thoracic region of the CT"]
    lines = nx_banner({"n_stage": "NX", "reasons": reasons})
    assert lines[0].startswith("NX, cannot be assessed: thorax not in view")
    assert "PET covers only 30%" in " ".join(lines)
    many = nx_banner({"n_stage": "NX", "reasons": [f"reason number {i} " * 4 for i in range(9)]})
    assert len(many) == 2 and many[1].endswith("(all reasons below)")
    assert nx_banner({"n_stage": "NX", "reasons": []})[0].endswith("no reason recorded")


def test_nx_with_nodes_and_null_fields(tmp_path):
    """NX although a primary and a node were found (e.g. PET not covering the thorax): marks
    are still drawn; null SUV / short axis / probability print as n/a instead of failing."""
    case = make_case("N2b")
    res = dict(case.result, n_stage="NX", n_stage_9th="NX",
               probabilities={k: None for k in ("N0", "N1", "N2", "N3")},
               reasons=["the PET covers only 40% of the thoracic region of the CT"])
    res["nodes"] = [dict(n, short_axis_mm=None, probability=None, suv_max=None)
                    for n in res["nodes"]]
    markers = render(res, case.ct, case.pet, tmp_path / "nx.png", None)
    assert len(markers) == 4 and (tmp_path / "nx.png").exists()
    assert not (tmp_path / "nx.pdf").exists()
    assert _red_text_pixels(mpimg.imread(tmp_path / "nx.png")[..., :3], 0.15, 0.21) > 300


# ---------------------------------------------------------------------------------------------
# geometry: anisotropic voxels, PET on its own grid


def test_anisotropic_voxels_keep_true_proportions(tmp_path):
    """1.5 x 1.5 x 3 mm voxels: the MIP is drawn in mm, so pixels per mm are the same across
    (x) and up (z), and the 24 mm primary sphere is round in the PNG."""
    case = make_case("N2b", size_xyz=(128, 128, 60), spacing_xyz=(1.5, 1.5, 3.0))
    markers, png, _ = _render(case, tmp_path)
    by = {m.label: m for m in markers}
    a, b = by["primary"], by["7"]  # far apart in both x and z
    sx = abs(a.png_xy[0] - b.png_xy[0]) / abs(a.centroid_mm[0] - b.centroid_mm[0])
    sz = abs(a.png_xy[1] - b.png_xy[1]) / abs(a.centroid_mm[2] - b.centroid_mm[2])
    assert sx == pytest.approx(sz, rel=0.03)
    # Extent of the dark primary blob along its row and its column (ring excluded: colour).
    x, y = round(a.png_xy[0]), round(a.png_xy[1])
    row = _gray_dark(png[y:y + 1, x - 40:x + 41], 0.5)[0]
    col = _gray_dark(png[y - 40:y + 41, x:x + 1], 0.5)[:, 0]
    assert row.sum() >= 6 and col.sum() >= 6
    assert row.sum() == pytest.approx(col.sum(), rel=0.25)
    for m in markers:
        centre, _ = _dark_centroid(png, m.png_xy)
        assert centre is not None and np.hypot(*np.subtract(centre, m.png_xy)) < 2.5
        assert _is_hot(png, m.crop_xy)


def test_pet_on_its_own_grid(tmp_path):
    """A PET on a coarser, shifted grid (as read, before resampling) still lines up with the
    CT: the MIP uses the PET voxels, each crop samples the PET onto the CT voxels."""
    case = make_case("N2b")
    pet = sitk.Resample(case.pet, [50, 50, 48], sitk.Transform(), sitk.sitkLinear,
                        (-98.0, -97.0, -95.0), (4.0, 4.0, 4.0), case.pet.GetDirection(), 0.0,
                        sitk.sitkFloat32)
    markers = render(case.result, case.ct, pet, tmp_path / "grid.png", None)
    png = mpimg.imread(tmp_path / "grid.png")[..., :3]
    for m in markers:
        centre, _ = _dark_centroid(png, m.png_xy)
        assert centre is not None and np.hypot(*np.subtract(centre, m.png_xy)) < 3.0, m.label
        assert _is_hot(png, m.crop_xy), m.label


# ---------------------------------------------------------------------------------------------
# pure helpers and the pipeline entry point


def test_spread_keeps_order_gap_and_bounds():
    ys = spread([5.0, 5.5, 4.0, 30.0, 30.2], gap=2.0, lo=0.0, hi=31.0)
    order = np.argsort([5.0, 5.5, 4.0, 30.0, 30.2], kind="stable")
    placed = np.asarray(ys)[order]
    assert np.all(np.diff(placed) >= 2.0 - 1e-9)
    assert min(ys) >= 0.0 and max(ys) <= 31.0
    assert spread([10.0], 2.0, 0.0, 20.0) == [10.0]  # nothing to move
    crowded = spread(list(np.zeros(11)), gap=5.0, lo=0.0, hi=10.0)  # cannot fit: even spacing
    assert crowded == pytest.approx(np.linspace(0.0, 10.0, 11))
    assert spread([], 1.0, 0.0, 1.0) == []


def test_axial_crop_pads_beyond_the_image_and_stays_centred():
    arr = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    crop = figure._axial_crop(arr, 2, 0, 6, 2, 3, -1024.0)
    assert crop.shape == (5, 7)
    assert crop[2, 3] == arr[2, 0, 6]  # the requested voxel is the centre
    assert np.all(crop[:2] == -1024.0) and np.all(crop[:, 4:] == -1024.0)
    assert np.all(figure._axial_crop(arr, 9, 3, 3, 1, 1, 0.0) == 0.0)  # slice outside


def test_write_report_uses_the_work_images(tmp_path):
    case = make_case("N0")
    staged = types.SimpleNamespace(result=case.result, work_ct=case.ct, work_pet=case.pet,
                                   study=None)
    paths = write_report(staged, tmp_path)
    assert paths == {"png": tmp_path / figure.PNG_NAME, "pdf": tmp_path / figure.PDF_NAME}
    assert all(p.stat().st_size > 10_000 for p in paths.values())


def test_hand_written_results_match_the_schema():
    """The synthetic results carry the fields the report reads, with valid categories."""
    res = result(primary=("right", Lesion((-40.0, 0.0, 30.0), 10.0, 8.0)),
                 nodes={"4L": (Lesion((12.0, -8.0, 20.0), 5.0, 5.0), 0.8)})
    assert res["n_stage"] == "N3" and res["nodes"][0]["n_category"] == "N3"
    ct, pet = images([], size_xyz=(16, 16, 8))
    assert ct.GetSize() == pet.GetSize() == (16, 16, 8)


# ---------------------------------------------------------------------------------------------
# end to end: phantoms staged by the real pipeline


@pytest.mark.slow
@pytest.mark.parametrize("name", ["N0", "N2b", "N3", "NX"])
def test_report_of_a_staged_phantom(name, tmp_path):
    """Phantom -> pipeline (classical anatomy, SUV lesions) -> report: the marks sit on the
    PET uptake of the pipeline's own work images and near the phantom's true lesions."""
    from figure_cases import stage_phantom

    staged, phantom = stage_phantom(name)
    res = staged.result
    assert res["n_stage_9th"] == name, (
        f"the pipeline staged the {name} phantom as {res['n_stage_9th']}; reasons {res['reasons']}")
    paths = write_report(staged, tmp_path)  # what nstage run / inference.py write
    assert all(p.stat().st_size > 10_000 for p in paths.values())

    t0 = time.perf_counter()
    markers = render(res, staged.work_ct, staged.work_pet, tmp_path / "check.png", None)
    print(f"phantom {name}: render {time.perf_counter() - t0:.2f} s, work grid "
          f"{staged.work_ct.GetSize()}, {len(markers)} marks")
    png = mpimg.imread(tmp_path / "check.png")[..., :3]
    assert len(markers) == len(res["nodes"]) + (res["primary_tumor"] is not None)
    truth = [phantom.truth["primary"]["centroid_mm"]] if phantom.truth.get("primary") else []
    truth += [n["centroid_mm"] for n in phantom.truth["nodes"]]
    for m in markers:
        centre, count = _dark_centroid(png, m.png_xy)
        assert centre is not None and count >= 40, f"{m.label}: no PET uptake under the mark"
        assert np.hypot(*np.subtract(centre, m.png_xy)) < 2.5, m.label
        assert _is_hot(png, m.crop_xy), f"{m.label}: crop centre shows no PET uptake"
        nearest = min(np.linalg.norm(np.subtract(m.centroid_mm, t)) for t in truth)
        assert nearest < 15.0, f"{m.label}: {nearest:.0f} mm from the nearest true lesion"
    if name == "NX":
        assert markers == [] and res["reasons"]
        assert _red_text_pixels(png, 0.15, 0.21) > 300


# ---------------------------------------------------------------------------------------------
# Full reasons, slice positions, the primary's lobe, 9th edition probabilities


def _long_case():
    """The N3 case (8 counted nodes) with reasons as long as the pipeline writes them."""
    case = make_case("N3")
    reason = ("N3: SUVmax 6.8 > blood pool 1.7 (x3.9) and >= 2.5; short axis 19 mm (>= 10 mm "
              "supports); station {s} (right): lower paratracheal: 47 mm right of the left "
              "tracheal border (x=+8), below the brachiocephalic crossing, above the azygos lower "
              "border; 18 mm from the approximated 4R/10R boundary, lower confidence; landmarks: "
              "brachiocephalic crossing z=-703 (approximated: no left brachiocephalic vein "
              "segmented: carina + 50 mm (it crosses the trachea just above the aortic arch)), "
              "azygos lower border z=-753 (approximated: no azygos class in any backend: carina "
              "level); approximated: brachiocephalic crossing, azygos lower border; END-{s}")
    for i, node in enumerate(case.result["nodes"]):
        node["reason"] = reason.format(s=node["station"])
        node["ct_slice_index"], node["ct_instance_number"] = 10 + i, 90 - i
    case.result["inputs"] = {"ct_size": [96, 96, 60]}
    return case


def _words(text: str) -> list[str]:
    return " ".join(text.split()).split(" ")


def test_every_reason_is_printed_in_full():
    case = _long_case()
    marks = figure._marks(case.result)
    paragraphs = figure.detail_paragraphs(case.result, marks)
    for node in case.result["nodes"]:
        body = next(p.body for p in paragraphs if p.head.startswith("#") and
                    f" {node['station']} " in p.head)
        # every part of the node's reason is there, word for word (the leading "N3:" is in
        # the heading), ending with its last word
        assert f"END-{node['station']}" in body
        for part in node["reason"].split("; ")[1:]:
            assert " ".join(part.split()) in " ".join(body.split())
    for size_box in ((450.0, 170.0), (450.0, 60.0), (200.0, 40.0)):
        size, lines, _ = figure.fit_paragraphs(paragraphs, *size_box)
        chars = int(size_box[0] / (figure.MONO_ADVANCE * size))
        assert all(len(text) <= chars for text, *_ in lines)  # wrapped, never clipped
        joined = _words(" ".join(text for text, *_ in lines))
        expected = _words(" ".join(f"{p.head} {p.body}" for p in paragraphs))
        assert joined == expected  # nothing lost, nothing cut


def test_long_case_stays_one_page(tmp_path):
    case = _long_case()
    markers = render(case.result, case.ct, case.pet, tmp_path / "r.png", tmp_path / "r.pdf")
    pdf = (tmp_path / "r.pdf").read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) == 1
    assert len(markers) == 9
    assert sum(m.crop_xy is not None for m in markers) >= 3  # crops give way to the reasons


def test_node_slice_position_and_primary_lobe_are_written():
    case = _long_case()
    result = case.result
    marks = figure._marks(result)
    heads = [p.head for p in figure.detail_paragraphs(result, marks)]
    node = result["nodes"][0]
    number = next(m.marker.number for m in marks if m.entry is node)
    head = next(h for h in heads if h.startswith(f"#{number} "))
    # input CT slice 1-based (index 10 -> slice 11 of 60), and the DICOM image number
    assert f"z {node['centroid_mm'][2]:.1f} mm, CT slice 11/60, DICOM image 90" in head
    assert "P 0.80" in head or f"P {node['probability']:.2f}" in head
    assert f"station confidence {node['station_confidence']:.2f}" in head
    assert any(h.startswith("T primary tumour: left upper lobe") for h in heads)
    result["primary_tumor"]["lobe"] = None
    heads = [p.head for p in figure.detail_paragraphs(result, figure._marks(result))]
    assert any("left lung, lobe not determined" in h for h in heads)


def test_ninth_edition_probabilities_are_drawn_when_present(tmp_path):
    """probabilities_9th (written by the pipeline, never computed here) splits the N2 bar."""
    case = make_case("N2b")
    png = {}
    for name, extra in (("plain", {}), ("ninth", {"probabilities_9th": {
            "N0": 0.05, "N1": 0.05, "N2a": 0.25, "N2b": 0.60, "N3": 0.05}})):
        render({**case.result, **extra}, case.ct, case.pet, tmp_path / f"{name}.png", None)
        png[name] = mpimg.imread(tmp_path / f"{name}.png")[..., :3]
    diff = np.any(np.abs(png["plain"] - png["ninth"]) > 0.05, axis=-1)
    rows, cols = np.nonzero(diff)
    h, w = diff.shape
    # the changes are in the P(N) box of the header (figure x 0.21-0.45, y top 0-0.15)
    assert rows.size > 50
    assert rows.max() < 0.15 * h and cols.min() > 0.21 * w and cols.max() < 0.45 * w


@pytest.mark.parametrize("box", [(0.455, 0.012, 0.53, 0.27), (0.455, 0.012, 0.53, 0.06)])
def test_details_text_stays_inside_its_box(box):
    """Measured on the drawn text: the fitted reasons end inside the box (or, when even the
    smallest size cannot hold them, they run on, never cut, and only downwards)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    case = _long_case()
    paragraphs = figure.detail_paragraphs(case.result, figure._marks(case.result))
    fig = Figure(figsize=figure.FIGSIZE, dpi=figure.DPI)
    canvas = FigureCanvasAgg(fig)
    figure._details(fig, box, paragraphs)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    left, bottom, w, h = box
    fig_w, fig_h = fig.get_size_inches()
    _, _, fits = figure.fit_paragraphs(paragraphs, w * fig_w * 72, h * fig_h * 72)
    for text in fig.texts:
        extent = text.get_window_extent(renderer)
        assert extent.x1 <= (left + w) * width + 1  # wrapped within the width
        assert extent.y1 <= (bottom + h) * height + 1
        if fits:
            assert extent.y0 >= bottom * height - 1
