"""Per-case visual report a clinician can read at a glance (PNG + one-page PDF).

Layout (A4 landscape)
---------------------
- Header: N category (8th and 9th edition) in large type, coloured by category;
  P(N0..N3) as bars; the primary tumour; backends, version, CT window and PET scale;
  a research-use line; for NX the reasons, in red.
- Left: coronal PET maximum-intensity projection (inverted grey, SUVbw colour bar) with
  the primary ("T") and every counted node marked by a ring coloured by N category and
  numbered; labels (number, station, category) sit in gutters beside the image with
  leader lines, so they never cover the MIP. Node candidates that did not count are
  small squares. Below it a table of all regional node candidates.
- Right: one axial CT/PET fusion crop per mark (primary first, then nodes by category
  and SUVmax), centred on the centroid with a fixed 90 mm field (padded beyond the image
  edge), with station, category, SUVmax, short axis, probability and the rules that
  made it count; then the staging trace and the reasons.

Display conventions
-------------------
Radiological: the patient's RIGHT on the image LEFT (labelled "R"/"L"), anterior up in
axial crops, superior up in the MIP. The canonical arrays (see :mod:`nstage.geometry`)
have column index growing to the patient's left, so images are drawn unflipped, placed
by physical extent in mm (LPS), so anisotropic voxels keep their true aspect. CT window
W 400 / L 40 HU (mediastinal). PET in SUVbw on fixed scales (MIP 0-6, fusion 0-8 with
opacity rising from SUV 1 to 4) so cases can be compared.
"""

from __future__ import annotations

import contextlib
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.forked import fork_allowed, start_child
from nstage.geometry import canonical, index_to_mm, mm_to_index

CT_WINDOW = (40.0, 400.0)  # level, width (HU): mediastinal window
MIP_SUV_MAX = 6.0  # SUVbw at which the inverted-grey MIP is black (nodes of 3-4 show mid-grey)
FUSION_SUV_MAX = 8.0  # SUVbw at the top of the fusion colour scale
FUSION_ALPHA = (1.0, 4.0, 0.8)  # PET opacity: 0 at SUV 1, rising to 0.8 at SUV 4 and above
CROP_MM = 90.0  # field of view of each axial crop (square, mm)
MAX_PANELS = 6  # crops: two rows of three (one row when the reasons need the room)
DPI = 120
FIGSIZE = (11.69, 8.27)  # A4 landscape, inches
COLOURS = {"primary": "#c21fc2", "N1": "#f2d600", "N2": "#ff8c00", "N3": "#e8001c",
           "N?": "#8c8c8c", "N0": "#3a7bd5", "NX": "#b00000", "uncounted": "#1f77b4"}
# Text colour on top of each category colour (black on light, white on dark).
TEXT_ON = {"primary": "white", "N1": "black", "N2": "black", "N3": "white", "N?": "white",
           "N0": "white", "NX": "white"}
RANK = {"primary": 0, "N3": 1, "N2": 2, "N1": 3, "N?": 4}
RESEARCH_LINE = "Research tool, not a medical device: not for clinical decisions."
PNG_NAME = "n-stage-report.png"
PDF_NAME = "n-stage-report.pdf"


@dataclass
class Marker:
    """One mark of the report: what, where in the patient, and where it was drawn.

    Attributes
    ----------
    label : str
        Station code (``"4R"``) or ``"primary"``.
    kind : str
        ``"primary"``, ``"N1"``, ``"N2"``, ``"N3"`` or ``"N?"`` (positive, category
        depends on an unknown primary side).
    centroid_mm : tuple of float
        (x, y, z) mm LPS.
    number : str
        Tag shared by the MIP label and the crop title (``"T"`` for the primary, 1, 2, ...).
    png_xy : tuple of float or None
        (column, row) pixel of the centroid on the MIP in the PNG, row 0 at the top.
    crop_xy : tuple of float or None
        (column, row) PNG pixel of the centre of this mark's axial crop (None: no crop).
    mip_box_px : tuple of float or None
        (left, top, right, bottom) PNG pixels of the MIP axes (for orientation checks).
    crop_box_px : tuple of float or None
        (left, top, right, bottom) PNG pixels of this mark's crop (``CROP_MM`` across).
    """

    label: str
    kind: str
    centroid_mm: tuple[float, float, float]
    number: str = ""
    png_xy: tuple[float, float] | None = None
    crop_xy: tuple[float, float] | None = None
    mip_box_px: tuple[float, float, float, float] | None = None
    crop_box_px: tuple[float, float, float, float] | None = None


@dataclass
class _Mark:
    marker: Marker
    entry: dict


# ---------------------------------------------------------------------------------------------
# small pure helpers


def _fmt(value, nd: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.{nd}f}{unit}"


def _marks(result: dict) -> list[_Mark]:
    """Primary first, then positive nodes by severity (N3, N2, N1, N?) and SUVmax."""
    marks: list[_Mark] = []
    primary = result.get("primary_tumor")
    if primary and primary.get("centroid_mm") is not None:
        marks.append(_Mark(Marker("primary", "primary", tuple(primary["centroid_mm"]), "T"),
                           primary))
    nodes = [n for n in result.get("nodes") or [] if n.get("centroid_mm") is not None]

    def key(n: dict) -> tuple[int, float]:
        suv = n.get("suv_max")
        return RANK.get(n.get("n_category") or "N?", 9), -(suv if suv is not None else 0.0)

    for number, node in enumerate(sorted(nodes, key=key), start=1):
        kind = node.get("n_category") or "N?"
        marks.append(_Mark(Marker(str(node.get("station") or "?"), kind,
                                  tuple(node["centroid_mm"]), str(number)), node))
    return marks


def spread(positions: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Move 1-D label positions apart to at least ``gap``, staying within [lo, hi].

    Order is kept; positions move as little as a forward and a backward pass allow.
    When they cannot all fit, the gap shrinks to fill [lo, hi] evenly.
    """
    n = len(positions)
    if n == 0:
        return []
    order = np.argsort(positions, kind="stable")
    y = np.asarray(positions, dtype=float)[order]
    if n > 1 and (hi - lo) / (n - 1) < gap:
        gap = (hi - lo) / (n - 1)
    y[0] = max(y[0], lo)
    for i in range(1, n):
        y[i] = max(y[i], y[i - 1] + gap)
    y[-1] = min(y[-1], hi)
    for i in range(n - 2, -1, -1):
        y[i] = min(y[i], y[i + 1] - gap)
    out = np.empty(n)
    out[order] = y
    return [float(v) for v in out]


def fusion_cmap():
    """'hot' without its black foot and white top: dark red to yellow, so saturated uptake
    stays coloured (never white like bone) and low uptake does not darken the CT."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["hot"](np.linspace(0.2, 0.8, 256)), name="nstage_fusion")


def _fusion_rgba(pet: np.ndarray) -> np.ndarray:
    """PET SUV slice to an RGBA overlay: red to yellow, opacity ramping with SUV."""
    rgba = fusion_cmap()(np.clip(pet / FUSION_SUV_MAX, 0.0, 1.0))
    lo, hi, top = FUSION_ALPHA
    rgba[..., 3] = np.clip((pet - lo) / (hi - lo), 0.0, 1.0) * top
    return rgba


def _axial_crop(arr: np.ndarray, k: int, j: int, i: int, hy: int, hx: int,
                fill: float) -> np.ndarray:
    """Slice ``arr[k]`` over rows j-hy..j+hy and columns i-hx..i+hx, padded with ``fill``."""
    nz, ny, nx = arr.shape
    out = np.full((2 * hy + 1, 2 * hx + 1), fill, dtype=np.float32)
    if not 0 <= k < nz:
        return out
    j0, j1 = max(0, j - hy), min(ny, j + hy + 1)
    i0, i1 = max(0, i - hx), min(nx, i + hx + 1)
    if j0 < j1 and i0 < i1:
        out[j0 - (j - hy):j1 - (j - hy), i0 - (i - hx):i1 - (i - hx)] = arr[k, j0:j1, i0:i1]
    return out


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return bool(a.GetSize() == b.GetSize()
                and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
                and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
                and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def _resampled_crop(pet: sitk.Image, ct: sitk.Image, k: int, j: int, i: int, hy: int,
                    hx: int) -> np.ndarray:
    """PET sampled (linear) on the CT voxels of the window ``_axial_crop`` would cut; 0 outside."""
    ref = sitk.Image([2 * hx + 1, 2 * hy + 1, 1], sitk.sitkFloat32)
    ref.SetSpacing(ct.GetSpacing())
    ref.SetDirection(ct.GetDirection())
    ref.SetOrigin(tuple(float(v) for v in index_to_mm(ct, (k, j - hy, i - hx))))
    out = sitk.Resample(pet, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


# ---------------------------------------------------------------------------------------------
# the figure


def render(result: dict, ct: sitk.Image, pet: sitk.Image, png_path: Path,
           pdf_path: Path | None = None, *, dpi: int = DPI) -> list[Marker]:
    """Draw the report for one case.

    Parameters
    ----------
    result : dict
        The ``n-stage.json`` content (``primary_tumor`` may be null, ``probabilities``
        values null for NX, ``nodes`` empty).
    ct : SimpleITK.Image
        CT in HU (the thoracic work crop is enough). Re-oriented to canonical LPS if needed.
    pet : SimpleITK.Image
        PET in SUVbw, usually on ``ct``'s grid (the pipeline's work PET). On another grid
        the MIP uses the PET's own voxels and each crop samples it onto the CT's.
    png_path, pdf_path : Path
        Outputs, each written atomically (temporary name, then rename). ``pdf_path`` None:
        PNG only.
    dpi : int
        PNG resolution (A4 landscape: 120 dpi gives 1402 x 992 pixels).

    Returns
    -------
    list of Marker
        The primary and positive nodes as drawn, with PNG pixel positions on the MIP and of
        their crop centres.
    """
    # A bare Figure on an Agg canvas: no pyplot, so no global backend switch and no figure
    # registry to leak into when this runs inside someone else's session.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ct = canonical(ct)
    pet = canonical(pet)
    ct_arr = sitk.GetArrayViewFromImage(ct)
    # PET on another grid is sampled per crop (cheap) instead of resampled whole.
    pet_on_ct = _same_grid(pet, ct)
    pet_arr = sitk.GetArrayViewFromImage(pet)
    marks = _marks(result)

    fig = Figure(figsize=FIGSIZE, dpi=dpi)
    FigureCanvasAgg(fig)
    try:
        body_top = _header(fig, result)
        ax_mip = fig.add_axes((0.015, 0.30, 0.41, body_top - 0.33))
        _mip(fig, ax_mip, pet, pet_arr, result, marks)
        _node_table(fig, ax_mip, result, marks)
        paragraphs = detail_paragraphs(result, marks)
        layout = _choose_layout(fig, body_top, paragraphs, len(marks))
        panels = marks[:layout.panels]
        crop_axes = _crops(fig, ct, ct_arr, pet, pet_arr if pet_on_ct else None, result,
                           panels, layout)
        if len(marks) > len(panels):
            rest = ", ".join(f"#{m.marker.number} {m.marker.label} {m.marker.kind}"
                             for m in marks[len(panels):])
            paragraphs.insert(0, Paragraph(f"Not shown as crops (see the MIP): {rest}"))
        _details(fig, layout.details, paragraphs)

        png_path = Path(png_path)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        pdf_done = None
        if pdf_path is not None:
            pdf_path = Path(pdf_path)
            pdf_path.parent.mkdir(parents=True, exist_ok=True)
            pdf_done = _start_pdf(fig, pdf_path, dpi)
        try:
            _save_atomic(fig, png_path, dpi)
        except BaseException:
            if pdf_done is not None:
                with contextlib.suppress(Exception):  # the PNG's error is the one to report
                    pdf_done()
            raise
        if pdf_done is not None:
            pdf_done()
        # Pixel positions from the transforms of the figure just drawn at ``dpi``.
        height = fig.get_size_inches()[1] * dpi

        def box_px(ax) -> tuple[float, float, float, float]:
            bbox = ax.get_window_extent()
            return (float(bbox.x0), float(height - bbox.y1), float(bbox.x1),
                    float(height - bbox.y0))

        for m in marks:
            x, y = ax_mip.transData.transform((m.marker.centroid_mm[0], m.marker.centroid_mm[2]))
            m.marker.png_xy = (float(x), float(height - y))
            m.marker.mip_box_px = box_px(ax_mip)
        for m, ax in zip(panels, crop_axes, strict=True):
            x, y = ax.transData.transform((0.0, 0.0))
            m.marker.crop_xy = (float(x), float(height - y))
            m.marker.crop_box_px = box_px(ax)
    finally:
        fig.clear()
    return [m.marker for m in marks]


def _choose_layout(fig, body_top: float, paragraphs: list[Paragraph], n_marks: int
                   ) -> _Layout:
    """As many rows of crops as the marks need (at most two) when the details fit under
    them at a readable size (>= 4.5 pt), else one row, so every reason is printed in full."""
    fig_w, fig_h = fig.get_size_inches()
    wanted = min(2, -(-n_marks // 3))
    for rows in range(max(wanted, 1), 0, -1):
        layout = _layout(body_top, rows, n_marks > 0)
        _, _, width, height = layout.details
        size, _, fits = fit_paragraphs(paragraphs, width * fig_w * 72.0, height * fig_h * 72.0)
        if fits and size >= 4.5:
            return layout
    return layout


# Longest wait for the PDF (s); it takes about a third of a second.
PDF_TIMEOUT_S = 120.0


def _start_pdf(fig, path: Path, dpi: int):
    """Start saving the figure as PDF; returns a function that waits for it and raises
    RuntimeError when the PDF was not written.

    On Linux a forked child saves the PDF while this process saves the PNG: the two
    renders take about the same time and share nothing once the figure is built.
    Elsewhere the PDF is saved here, before returning.
    """
    if not fork_allowed():
        _save_atomic(fig, path, dpi)
        return lambda: None
    child, receive = start_child(_pdf_child, (fig, path, dpi), "nstage-report-pdf")

    def wait() -> None:
        try:
            if not receive.poll(PDF_TIMEOUT_S):
                child.terminate()
                error = f"saving it took longer than {PDF_TIMEOUT_S:.0f} s"
            else:
                error = receive.recv()
        except EOFError:  # the child died without a word (killed, out of memory)
            child.join()
            error = f"the process saving it ended with exit code {child.exitcode}"
        finally:
            child.join()
            receive.close()
        if error:
            _tmp_path(path).unlink(missing_ok=True)  # a child killed mid-write leaves it
            raise RuntimeError(f"{path.name} not written: {error}")

    return wait


def _pdf_child(fig, path: Path, dpi: int, conn) -> None:
    try:
        _save_atomic(fig, path, dpi)
        conn.send(None)
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    conn.close()


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _save_atomic(fig, path: Path, dpi: int) -> None:
    tmp = _tmp_path(path)
    try:
        fmt = path.suffix.lstrip(".").lower() or "png"
        # Fast zlib level for the PNG: a few % larger file, noticeably quicker to write.
        extra = {"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}
        fig.savefig(tmp, dpi=dpi, format=fmt, **extra)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _badge(ax, x, y, text, kind, fontsize, **kw):
    colour = COLOURS.get(kind, COLOURS["N?"])
    return ax.text(x, y, text, fontsize=fontsize, fontweight="bold",
                   color=TEXT_ON.get(kind, "white"),
                   bbox={"boxstyle": "round,pad=0.25", "facecolor": colour,
                         "edgecolor": "black", "linewidth": 0.6}, **kw)


def _header(fig, result: dict) -> float:
    """Header band; for NX a red banner with the reasons under it. Returns the body top."""
    n8 = result.get("n_stage") or "NX"
    n9 = result.get("n_stage_9th") or n8
    is_nx = n8 == "NX"
    ax = fig.add_axes((0.01, 0.855, 0.2, 0.14))
    ax.axis("off")
    kind8 = n8 if n8 in COLOURS else "N?"
    kind9 = "N2" if n9.startswith("N2") else (n9 if n9 in COLOURS else "N?")
    ax.text(0.0, 0.97, "N stage", fontsize=11, va="top", color="#333333")
    _badge(ax, 0.02, 0.45, n8, kind8, 26, va="center")
    ax.text(0.02, 0.02, "8th edition", fontsize=8, va="bottom", color="#333333")
    _badge(ax, 0.47, 0.45, n9, kind9, 26, va="center")
    ax.text(0.47, 0.02, "9th edition", fontsize=8, va="bottom", color="#333333")

    # P(N0..N3) bars (or why there are none).
    pax = fig.add_axes((0.255, 0.865, 0.15, 0.105))
    probs = result.get("probabilities") or {}
    cats = ["N0", "N1", "N2", "N3"]
    values = [probs.get(c) for c in cats]
    pax.set_title("P(N category)" + (", N2a hatched" if _n2_split(result)
                                     else ""), fontsize=7.5, loc="left", pad=2)
    if all(v is None for v in values):
        pax.axis("off")
        pax.text(0.0, 0.5, "not available" + (" (NX)" if is_nx else ""), fontsize=9,
                 va="center", color="#555555")
    else:
        vals = [float(v) if v is not None else 0.0 for v in values]
        split = _n2_split(result)
        colours = [COLOURS[c] for c in cats]
        if split is not None:  # N2 drawn as N2a (hatched) + N2b, the 9th edition's split
            colours[2] = "none"
        pax.barh(range(4), vals, color=colours, edgecolor="black", linewidth=0.5, height=0.7)
        labels = [_fmt(v, 2) for v in values]
        if split is not None:
            n2a, n2b = split
            pax.barh([2], [n2a], color=COLOURS["N2"], edgecolor="black", linewidth=0.5,
                     height=0.7, hatch="////")
            pax.barh([2], [n2b], left=[n2a], color=COLOURS["N2"], edgecolor="black",
                     linewidth=0.5, height=0.7)
            if n2a + n2b <= 0.4:  # room after the bar (the axes end at 1.25)
                labels[2] += f" (a {_fmt(n2a, 2)}, b {_fmt(n2b, 2)})"
            else:  # inside the segments wide enough to hold it
                for x0, width, name in ((0.0, n2a, "a"), (n2a, n2b, "b")):
                    if width >= 0.2:
                        pax.text(x0 + width / 2, 2, f"{name} {_fmt(width, 2)}", ha="center",
                                 va="center", fontsize=6, fontweight="bold",
                                 bbox={"facecolor": "white", "alpha": 0.8, "pad": 0.3,
                                       "edgecolor": "none"})
        for i, v in enumerate(values):
            pax.text(min(float(v or 0.0), 1.0) + 0.02, i, labels[i], va="center", fontsize=7)
        pax.set_yticks(range(4), cats, fontsize=7)
        pax.invert_yaxis()
        pax.set_xlim(0, 1.25)
        pax.set_xticks([])
        for side in ("top", "right", "bottom"):
            pax.spines[side].set_visible(False)
        pax.tick_params(length=0, pad=2)

    x, y = 0.445, 0.985
    fig.text(x, y, RESEARCH_LINE, fontsize=9, va="top", style="italic", fontweight="bold",
             color="#b00000")
    for text, size, colour, weight, step in _header_lines(result):
        y -= step
        fig.text(x, y, textwrap.shorten(text, {10: 72, 9: 88}.get(size, 100)), fontsize=size,
                 va="top", color=colour, fontweight=weight)
    if not is_nx:
        return 0.84
    fig.text(0.015, 0.848, "\n".join(nx_banner(result)), fontsize=10, va="top", color="#b00000",
             fontweight="bold", linespacing=1.2,
             bbox={"facecolor": "#fde8e8", "edgecolor": "#b00000", "boxstyle": "round,pad=0.3"})
    return 0.79


def _n2_split(result: dict) -> tuple[float, float] | None:
    """(P(N2a), P(N2b)) from ``probabilities_9th`` when the result has them (drawn, never
    computed here)."""
    p9 = result.get("probabilities_9th") or {}
    n2a, n2b = p9.get("N2a"), p9.get("N2b")
    if n2a is None or n2b is None:
        return None
    return float(n2a), float(n2b)


def nx_banner(result: dict, width: int = 118) -> list[str]:
    """The (at most two) lines of the red NX banner: why N cannot be assessed."""
    reasons = result.get("reasons") or ["no reason recorded"]
    lines = textwrap.wrap("NX, cannot be assessed: " + "; ".join(reasons), width)
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), width - 6,
                                            placeholder=" ... (all reasons below)")]
    return lines


def _header_lines(result: dict) -> list[tuple[str, float, str, str, float]]:
    """Header text lines after the research line: (text, size pt, colour, weight, step)."""
    primary = result.get("primary_tumor")
    if primary:
        where = (f"{primary.get('side')} {primary['lobe']} lobe" if primary.get("lobe")
                 else f"{primary.get('side')} lung (lobe not determined)")
        ptext = (f"Primary tumour: {where}, SUVmax {_fmt(primary.get('suv_max'))}, "
                 f"{_fmt(primary.get('volume_ml'))} ml")
        second = primary.get("second_primary")
        if second:
            ptext += (f"; second tumour {second.get('side')} lung "
                      f"(SUVmax {_fmt(second.get('suv_max'))})")
    else:
        ptext = "Primary tumour: none found"
    backends = result.get("backends") or {}
    ref = result.get("reference_suv") or {}
    # Stations in IASLC map order, as the staging trace lists them.
    stations = [str(t.get("station")) for t in result.get("trace") or []]
    if not stations:
        stations = sorted({str(n.get("station")) for n in result.get("nodes") or []})
    ntext = f"Counted nodes: {len(result.get('nodes') or [])}"
    if stations:
        ntext += f" in {len(stations)} station(s): " + ", ".join(stations)
    side_used = result.get("primary_side_used")
    if side_used and side_used != (primary or {}).get("side"):
        ntext += f"  |  primary side used for staging: {side_used}"
    return [
        (ptext, 10, "black", "bold", 0.026),
        (ntext, 9, "black", "normal", 0.025),
        (f"Backends: anatomy {backends.get('anatomy', '?')}, lesions "
         f"{backends.get('lesions', '?')}  |  nstage {result.get('version', '?')}", 8,
         "#333333", "normal", 0.022),
        (f"Reference SUVbw: blood pool {_fmt(ref.get('blood_pool'))}, liver "
         f"{_fmt(ref.get('liver'))}; node threshold {_fmt(ref.get('threshold'))}", 8,
         "#333333", "normal", 0.019),
        (f"CT window W {CT_WINDOW[1]:.0f} / L {CT_WINDOW[0]:.0f} HU  |  PET SUVbw  |  "
         "radiological view: patient's RIGHT on image LEFT", 8, "#1f4e9e", "bold", 0.019),
    ]


def _mip(fig, ax, pet: sitk.Image, pet_arr: np.ndarray, result: dict,
         marks: list[_Mark]) -> None:
    """Coronal MIP placed by physical extent (x mm across, z mm up), labels in gutters."""
    from matplotlib import patheffects

    mip = np.asarray(pet_arr, dtype=np.float32).max(axis=1)  # over y: anterior-posterior
    nz, nx = mip.shape
    sx, _, sz = pet.GetSpacing()
    ox, _, oz = pet.GetOrigin()
    x0, x1 = ox - sx / 2, ox + (nx - 0.5) * sx
    z0, z1 = oz - sz / 2, oz + (nz - 0.5) * sz
    width = x1 - x0
    gutter = 0.24 * width
    im = ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=MIP_SUV_MAX, origin="lower",
                   extent=(x0, x1, z0, z1), aspect="equal", interpolation="antialiased")
    ax.set_xlim(x0 - gutter, x1 + gutter)
    ax.set_ylim(z0, z1)
    ax.set_anchor("N")
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.plot([x0, x1, x1, x0, x0], [z0, z0, z1, z1, z0], color="#999999", linewidth=0.6)
    ax.set_title("Coronal PET MIP (SUVbw)", fontsize=10, fontweight="bold", pad=4)
    for x, text, ha in ((x0 - 0.03 * width, "R", "right"), (x1 + 0.03 * width, "L", "left")):
        ax.text(x, z1, text, ha=ha, va="top", fontsize=13, fontweight="bold", color="#1f4e9e")
    # 50 mm scale bar, bottom right inside the image.
    bar = 50.0 if width > 120 else 20.0
    ax.plot([x1 - 0.04 * width - bar, x1 - 0.04 * width], [z0 + 0.03 * (z1 - z0)] * 2,
            color="black", linewidth=2)
    ax.text(x1 - 0.04 * width - bar / 2, z0 + 0.045 * (z1 - z0), f"{bar:.0f} mm",
            ha="center", va="bottom", fontsize=7)

    stroke = [patheffects.withStroke(linewidth=3.5, foreground="black")]
    # Node candidates that did not count (and other lesions): small hollow squares.
    uncounted = [n for n in (result.get("negative_node_candidates") or [])
                 + (result.get("lung_lesions") or []) + (result.get("other_lesions") or [])
                 if n.get("centroid_mm") is not None]
    if uncounted:
        pts = np.array([n["centroid_mm"] for n in uncounted], dtype=float)
        ax.plot(pts[:, 0], pts[:, 2], linestyle="none", marker="s", markersize=6,
                markerfacecolor="none", markeredgecolor=COLOURS["uncounted"], markeredgewidth=1.2,
                label="not counted")
    # Counted marks: rings with a dark outline so yellow shows on white and on grey.
    for kind in ("primary", "N1", "N2", "N3", "N?"):
        pts = [m.marker.centroid_mm for m in marks if m.marker.kind == kind]
        if not pts:
            continue
        arr = np.array(pts, dtype=float)
        name = {"primary": "primary tumour", "N?": "positive, side unknown"}.get(kind, kind)
        (line,) = ax.plot(arr[:, 0], arr[:, 2], linestyle="none", marker="o",
                          markersize=16 if kind == "primary" else 13,
                          markerfacecolor="none", markeredgecolor=COLOURS[kind],
                          markeredgewidth=2.2, label=name)
        line.set_path_effects(stroke)

    # Labels: in the gutter on the side of the image the mark is on, spread vertically.
    fig_h_in = fig.get_size_inches()[1]
    ax.apply_aspect()
    pos = ax.get_position()
    zspan = z1 - z0
    axes_h_pt = max(pos.height * fig_h_in * 72.0, 1.0)
    gap = 13.0 * zspan / axes_h_pt  # 13 pt between label centres
    centre = 0.5 * (x0 + x1)
    for on_left in (True, False):
        group = [m for m in marks if (m.marker.centroid_mm[0] < centre) == on_left]
        if not group:
            continue
        ys = spread([m.marker.centroid_mm[2] for m in group], gap, z0 + gap / 2, z1 - gap * 1.6)
        lx = x0 - 0.03 * width if on_left else x1 + 0.03 * width
        for m, ly in zip(group, ys, strict=True):
            text = "T primary" if m.marker.kind == "primary" else (
                f"#{m.marker.number} {m.marker.label} {m.marker.kind}")
            _badge(ax, lx, ly, text, m.marker.kind, 7.5, ha="right" if on_left else "left",
                   va="center", zorder=5)
            ax.annotate("", xy=(m.marker.centroid_mm[0], m.marker.centroid_mm[2]),
                        xytext=(lx, ly), zorder=4,
                        arrowprops={"arrowstyle": "-", "color": "black", "linewidth": 0.7,
                                    "shrinkA": 0, "shrinkB": 9})
    if ax.get_legend_handles_labels()[0]:  # nothing found (NX, N0 without lesions): no key
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.005), ncol=6, fontsize=7,
                  frameon=False, handletextpad=0.2, columnspacing=0.9, markerscale=0.7)
    # Colour bar directly under the image, at the image's width.
    ax.apply_aspect()
    pos = ax.get_position()
    frac0 = gutter / (width + 2 * gutter)
    cax = fig.add_axes((pos.x0 + frac0 * pos.width, pos.y0 - 0.055,
                        pos.width * (1 - 2 * frac0), 0.012))
    cbar = fig.colorbar(im, cax=cax, orientation="horizontal", extend="max")
    cbar.set_label("MIP SUVbw (inverted grey)", fontsize=7, labelpad=1)
    cbar.ax.tick_params(labelsize=7, length=2, pad=1)


def _slice_text(entry: dict, result: dict, short: bool = False) -> str:
    """Where to find a lesion in a viewer: z (mm) and the slice of the input CT (1-based, as
    viewers count), with the DICOM image number when the CT was DICOM."""
    centroid = entry.get("centroid_mm") or [None] * 3
    parts = [f"z {_fmt(centroid[2])} mm"]
    index = entry.get("ct_slice_index")
    if index is not None:
        size = (result.get("inputs") or {}).get("ct_size") or []
        of = f"/{size[2]}" if len(size) == 3 else ""
        parts.append(f"slice {index + 1}{of}" if short else f"CT slice {index + 1}{of}")
    number = entry.get("ct_instance_number")
    if number is not None:
        parts.append(f"image {number}" if short else f"DICOM image {number}")
    return ", ".join(parts)


def _node_table(fig, ax_mip, result: dict, marks: list[_Mark]) -> None:
    """All regional node candidates, counted first, as a compact text table under the MIP."""
    counted = [(m.marker.number, m.entry, m.marker.kind) for m in marks
               if m.marker.kind != "primary"]
    negatives = sorted(result.get("negative_node_candidates") or [],
                       key=lambda n: -(n.get("suv_max") or 0.0))
    rows = [f"{'#':>2} {'stn':<4} {'N':<3} {'SUVmax':>6} {'SA mm':>5} {'P':>4} {'conf':>4} "
            f"{'z mm':>7} {'slice':>5}  counted"]

    def row(number, entry, kind, counted_text):
        index = entry.get("ct_slice_index")
        return (f"{number:>2} {entry.get('station') or '?':<4} {kind:<3} "
                f"{_fmt(entry.get('suv_max')):>6} {_fmt(entry.get('short_axis_mm')):>5} "
                f"{_fmt(entry.get('probability'), 2):>4} "
                f"{_fmt(entry.get('station_confidence'), 2):>4} "
                f"{_fmt((entry.get('centroid_mm') or [None] * 3)[2]):>7} "
                f"{'-' if index is None else index + 1:>5}  {counted_text}")

    for number, entry, kind in counted:
        rows.append(row(number, entry, kind, "yes"))
    for entry in negatives:
        rows.append(row("-", entry, "-", "no"))
    others = result.get("other_lesions") or []
    limit = 11
    extra = len(rows) - 1 - limit
    rows = rows[:limit + 1]
    if extra > 0:
        rows.append(f"   ... {extra} more in n-stage.json")
    if len(rows) == 1:
        rows.append("   no regional node candidate found")
    lung = result.get("lung_lesions") or []
    if lung:
        rows.append(f"   {len(lung)} other lung lesion(s) (T descriptor / M1a), not nodes")
    if others:
        rows.append(f"   {len(others)} other FDG-avid lesion(s), not regional nodes")
    rows += ["P: probability the node is involved; conf: station confidence;",
             "slice: of the input CT as given, 1-based"]
    ax_mip.apply_aspect()
    top = ax_mip.get_position().y0 - 0.095
    fig.text(0.03, top, "Regional node candidates", fontsize=8.5, fontweight="bold", va="top")
    fig.text(0.03, top - 0.022, "\n".join(rows), fontsize=6.6, family="monospace", va="top",
             linespacing=1.15)


@dataclass(frozen=True)
class _Layout:
    """The right-hand column: crop rows, then the colour bar band, then the details text."""

    rows: int  # rows of crops (3 per row)
    top: float  # figure fraction where the first row's images start (below its titles)
    details: tuple[float, float, float, float]  # left, bottom, width, height (figure fraction)

    @property
    def panels(self) -> int:
        return 3 * self.rows

    @property
    def crops_bottom(self) -> float:
        return self.top - self.rows * CELL_H


RIGHT = (0.45, 0.99)  # left and right edge of the right-hand column (figure fraction)
IMG_H = 0.165  # crop image height (figure fraction): 1.36 in
CELL_H = IMG_H + 0.075  # image, three lines of text under it, the next row's title
BAND_H = 0.05  # colour bar and caption under the crops


def _layout(body_top: float, rows: int, any_panel: bool) -> _Layout:
    top = body_top - 0.025  # room for the first row's titles
    left, right = RIGHT
    if not any_panel:
        rows = 0
    bottom = top - rows * CELL_H - (BAND_H if rows else 0.06)
    return _Layout(rows, top, (left + 0.005, 0.012, right - left - 0.01, bottom - 0.012))


def _crops(fig, ct: sitk.Image, ct_arr, pet: sitk.Image, pet_arr, result: dict,
           panels: list[_Mark], layout: _Layout) -> list:
    """Axial CT/PET fusion crops, 3 per row on the right; returns their axes.

    ``pet_arr`` is the PET array when the PET is on the CT grid, else None (sampled per crop).
    """
    from matplotlib import cm, colors, patches, patheffects

    left, right = RIGHT
    top = layout.top
    ncols = 3
    cell_w = (right - left) / ncols
    fig_w, fig_h = fig.get_size_inches()
    img_h = IMG_H
    img_w = img_h * fig_h / fig_w  # square in inches
    axes = []
    sx, sy, _ = ct.GetSpacing()
    hx, hy = round(CROP_MM / 2 / sx), round(CROP_MM / 2 / sy)
    level, width = CT_WINDOW
    for n, m in enumerate(panels):
        r, c = divmod(n, ncols)
        x0 = left + c * cell_w
        y0 = top - r * CELL_H - img_h
        ax = fig.add_axes((x0, y0, img_w, img_h))
        axes.append(ax)
        kf, jf, if_ = mm_to_index(ct, m.marker.centroid_mm)
        k, j, i = round(kf), round(jf), round(if_)
        ct_crop = _axial_crop(ct_arr, k, j, i, hy, hx, -1024.0)
        if pet_arr is not None:
            pet_crop = _axial_crop(pet_arr, k, j, i, hy, hx, 0.0)
        else:
            pet_crop = _resampled_crop(pet, ct, k, j, i, hy, hx)
        # Extent in mm relative to the centroid: x to the patient's left, y posterior down.
        dx, dy = (i - if_) * sx, (j - jf) * sy
        extent = (dx - (hx + 0.5) * sx, dx + (hx + 0.5) * sx,
                  dy + (hy + 0.5) * sy, dy - (hy + 0.5) * sy)
        ax.imshow(ct_crop, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                  extent=extent, interpolation="bilinear")
        ax.imshow(_fusion_rgba(pet_crop), extent=extent, interpolation="bilinear")
        half = CROP_MM / 2
        ax.set_xlim(-half, half)
        ax.set_ylim(half, -half)  # anterior (smaller y) at the top
        ax.set_xticks([])
        ax.set_yticks([])
        colour = COLOURS.get(m.marker.kind, COLOURS["N?"])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)
        entry = m.entry
        radius = 0.5 * float(entry.get("short_axis_mm") or 0.0)
        if entry.get("volume_ml"):
            radius = max(radius, (3 * 1000.0 * float(entry["volume_ml"]) / (4 * np.pi)) ** (1 / 3))
        ring = patches.Circle((0.0, 0.0), min(max(radius, 3.0) + 4.0, 0.4 * half), fill=False,
                              edgecolor=colour, linewidth=1.4, linestyle=(0, (4, 2)))
        ring.set_path_effects([patheffects.withStroke(linewidth=3, foreground="black")])
        ax.add_patch(ring)
        tag = {"color": "white", "fontweight": "bold",
               "bbox": {"facecolor": "black", "alpha": 0.55, "edgecolor": "none", "pad": 0.8}}
        for xt, t, ha in ((-half + 1.5, "R", "left"), (half - 1.5, "L", "right")):
            ax.text(xt, 0, t, ha=ha, va="center", fontsize=8.5, **tag)
        ax.text(0, -half + 1.5, "A", ha="center", va="top", fontsize=7.5, **tag)
        ax.plot([half - 24, half - 4], [half - 5, half - 5], color="white", linewidth=2)
        if n == 0:  # same scale in every crop: say it once
            ax.text(half - 14, half - 7, "20 mm", fontsize=6, ha="center", va="bottom",
                    color="white", bbox={"facecolor": "black", "alpha": 0.4,
                                         "edgecolor": "none", "pad": 0.5})
        title, lines = _panel_text(m, result)
        ax.set_title(title, fontsize=9.5, fontweight="bold", color="black", loc="left", pad=3,
                     bbox={"facecolor": colour, "alpha": 0.35, "edgecolor": "none",
                           "pad": 1.5})
        fig.text(x0, y0 - 0.006, "\n".join(lines), fontsize=6.8, va="top", linespacing=1.15)
    if not panels:
        fig.text(left + 0.01, top - 0.01, "No primary tumour and no counted node to show.",
                 fontsize=12, va="top", color="#555555")
        return axes
    band = layout.crops_bottom + 0.012
    cax = fig.add_axes((left + 0.005, band - 0.012, 0.17, 0.011))
    sm = cm.ScalarMappable(norm=colors.Normalize(0, FUSION_SUV_MAX), cmap=fusion_cmap())
    cbar = fig.colorbar(sm, cax=cax, orientation="horizontal", extend="max")
    lo, hi, _ = FUSION_ALPHA
    cbar.set_label("Fusion PET SUVbw", fontsize=7, labelpad=1)
    cbar.ax.tick_params(labelsize=7, length=2, pad=1)
    fig.text(left + 0.2, band + 0.002,
             f"Axial CT/PET fusion, {CROP_MM:.0f} mm field centred on each lesion (dashed "
             f"ring).\nCT W {CT_WINDOW[1]:.0f} / L {CT_WINDOW[0]:.0f} HU; PET clear "
             f"below SUV {lo:g}, most opaque from SUV {hi:g}.\nR = patient right, A = anterior, "
             "white bar 20 mm.",
             fontsize=7, va="top", linespacing=1.2)
    return axes


def _where_primary(entry: dict) -> str:
    side = entry.get("side")
    if entry.get("lobe"):
        return f"{side} {entry['lobe']} lobe"
    return f"{side} lung, lobe not determined (anatomy without lobes)"


def _panel_text(m: _Mark, result: dict) -> tuple[str, list[str]]:
    """Title and the three short lines under one crop (the full reason is in the details)."""
    entry = m.entry
    if m.marker.kind == "primary":
        where = (f"{entry.get('side')} {entry['lobe']} lobe" if entry.get("lobe")
                 else f"{entry.get('side')} lung (lobe n/a)")
        return "T  primary tumour", [
            f"SUVmax {_fmt(entry.get('suv_max'))} | {_fmt(entry.get('volume_ml'))} ml | "
            f"SA {_fmt(entry.get('short_axis_mm'), 1, ' mm')}",
            where,
            _slice_text(entry, result, short=True)]
    station = str(entry.get("station") or "?")
    approx = " (approx.)" if entry.get("station_approximated") else ""
    return f"#{m.marker.number}  station {station}  {m.marker.kind}", [
        f"SUVmax {_fmt(entry.get('suv_max'))} | SA {_fmt(entry.get('short_axis_mm'), 1, ' mm')}"
        f" | P {_fmt(entry.get('probability'), 2)}",
        f"station confidence {_fmt(entry.get('station_confidence'), 2)}{approx}",
        _slice_text(entry, result, short=True)]


def _node_rule(entry: dict, trace_rule: str) -> list[str]:
    """Why a node counted, one item per reason: the category rule (from the staging trace),
    the positivity reasons, the station confidence, then the station reasons.

    The node ``reason`` is ``"; "``-separated; a leading "4R (right): N2" or "N2: " repeats
    the panel title and is dropped.
    """
    reason = " ".join(str(entry.get("reason") or "").split())
    station = str(entry.get("station") or "")
    parts = [p.strip() for p in reason.split("; ") if p.strip()]
    if parts and parts[0].startswith(f"{station} (") and len(parts[0]) <= len(station) + 24:
        parts = parts[1:]
    if parts:
        parts[0] = re.sub(r"^(N[0-3X?][ab]?|not counted)\s*:\s*", "", parts[0])

    def is_station_reason(p: str) -> bool:
        return p.startswith((f"{station} (", f"station {station} ("))

    conf = entry.get("station_confidence")
    if conf is not None:
        approx = " (approximated landmarks)" if entry.get("station_approximated") else ""
        at = next((n for n, p in enumerate(parts) if is_station_reason(p)), len(parts))
        parts.insert(at, f"station confidence {_fmt(conf, 2)}{approx}")
    if trace_rule:
        # Without the 9th edition note after "; ": the header gives N2a/N2b.
        parts.insert(0, trace_rule.split("; ")[0])
    return parts


@dataclass(frozen=True)
class Paragraph:
    """One block of the details text: ``head`` in bold, then ``body`` (wrapped, indented)."""

    head: str
    body: str = ""
    colour: str = "black"


def detail_paragraphs(result: dict, marks: list[_Mark]) -> list[Paragraph]:
    """Everything the report explains in words, complete: the primary, every counted node
    with its slice, P, station confidence and FULL reason, the staging trace, and what
    limited the assessment (or why NX)."""
    out: list[Paragraph] = []
    reasons = result.get("reasons") or []
    if reasons:
        head = "NX because:" if result.get("n_stage") == "NX" else "Limitations:"
        out.append(Paragraph(head, " | ".join(reasons), "#b00000"))
    trace = {t.get("station"): t.get("rule", "") for t in result.get("trace") or []}
    for m in marks:
        e = m.entry
        if m.marker.kind == "primary":
            out.append(Paragraph(
                f"T primary tumour: {_where_primary(e)}; {_slice_text(e, result)}",
                f"SUVmax {_fmt(e.get('suv_max'))}, {_fmt(e.get('volume_ml'))} ml, short axis "
                f"{_fmt(e.get('short_axis_mm'), 1, ' mm')}"))
            continue
        station = str(e.get("station") or "?")
        out.append(Paragraph(
            f"#{m.marker.number} {station} {m.marker.kind}: {_slice_text(e, result)}; "
            f"P {_fmt(e.get('probability'), 2)}; station confidence "
            f"{_fmt(e.get('station_confidence'), 2)}",
            "; ".join(_node_rule(e, trace.get(station, "")))))
    if trace:
        out.append(Paragraph("Staging trace:", " | ".join(
            f"{t.get('station')} -> {t.get('category')}: {t.get('rule')}"
            for t in result.get("trace") or [])))
    elif result.get("n_stage") == "N0":
        out.append(Paragraph("No positive regional node: N0."))
    return out


MONO_ADVANCE = 0.6  # DejaVu Sans Mono: every glyph advances 0.6 em, so wrapping is exact
LINE_SPACING = 1.22


def fit_paragraphs(paragraphs: list[Paragraph], width_pt: float, height_pt: float, *,
                   largest: float = 7.0, smallest: float = 2.5
                   ) -> tuple[float, list[tuple[str, str, str]], bool]:
    """Wrap every paragraph in full at the largest monospace size that fits the box.

    Returns
    -------
    size_pt, lines, fits
        Font size, the lines as (text, colour, weight), and whether they fit (False only
        when even ``smallest`` does not: nothing is cut, the text runs lower).
    """
    size = largest
    while True:
        chars = max(int(width_pt / (MONO_ADVANCE * size)), 20)
        lines: list[tuple[str, str, str]] = []
        for para in paragraphs:
            lines += [(t, para.colour, "bold")
                      for t in textwrap.wrap(para.head, chars, break_on_hyphens=False)]
            lines += [(t, para.colour, "normal")
                      for t in textwrap.wrap(para.body, chars, initial_indent="   ",
                                             subsequent_indent="   ", break_on_hyphens=False)]
        fits = len(lines) * size * LINE_SPACING <= height_pt
        if fits or size <= smallest:
            return size, lines, fits
        size = round(size - 0.25, 2)


def _details(fig, box: tuple[float, float, float, float],
             paragraphs: list[Paragraph]) -> float:
    """Draw the paragraphs in ``box`` (left, bottom, width, height; figure fraction) at the
    size that fits; returns that size (pt)."""
    left, bottom, width, height = box
    fig_w, fig_h = fig.get_size_inches()
    size, lines, _ = fit_paragraphs(paragraphs, width * fig_w * 72.0, height * fig_h * 72.0)
    # One text object per style, blank where another style's line goes: the same monospace
    # metrics keep the lines aligned, and a few objects draw much faster than one per line.
    for style in dict.fromkeys((colour, weight) for _, colour, weight in lines):
        text = "\n".join(t if (c, w) == style else "" for t, c, w in lines)
        fig.text(left, bottom + height, text, fontsize=size, family="monospace",
                 color=style[0], fontweight=style[1], va="top", linespacing=LINE_SPACING)
    return size


def write_report(staged, out_dir: Path) -> dict[str, Path]:
    """Write ``n-stage-report.png`` and ``.pdf`` for a :class:`nstage.pipeline.StageResult`.

    Uses the thoracic work crop (CT and PET on its grid) when the pipeline made one, else
    the whole study.
    """
    out_dir = Path(out_dir)
    if staged.work_ct is not None and staged.work_pet is not None:
        ct, pet = staged.work_ct, staged.work_pet
    else:
        ct = staged.study.ct
        pet = staged.study.pet_on(ct)
    png, pdf = out_dir / PNG_NAME, out_dir / PDF_NAME
    render(staged.result, ct, pet, png, pdf)
    return {"png": png, "pdf": pdf}
