"""Per-case visual report a clinician can read at a glance (PNG + one-page PDF).

Layout: a header (N 8th/9th edition, P(N0..N3), backends, research-use line, NX
reasons), a coronal PET maximum-intensity projection with the primary and each node
marked, coloured by N category and labelled with its station, and one axial CT/PET
fusion crop per node (and the primary) with station, SUVmax, short axis and the
rule that made it count.

Display conventions: radiological (the patient's RIGHT on the image LEFT, labelled
"R"/"L"); the canonical arrays (see :mod:`nstage.geometry`) already have column index
growing to the patient's left, so images are drawn without a flip. CT window
W 400 / L 40 HU (mediastinal), PET in SUVbw with a colour bar.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.geometry import mm_to_index

CT_WINDOW = (40.0, 400.0)  # level, width (HU)
CROP_MM = 90.0
MAX_PANELS = 6
COLOURS = {"primary": "#d62fd6", "N1": "#f2d600", "N2": "#ff8c00", "N3": "#e8001c",
           "other": "#00c8e8"}
RESEARCH_LINE = "Research tool, not a medical device: not for clinical decisions."
PNG_NAME = "n-stage-report.png"
PDF_NAME = "n-stage-report.pdf"


@dataclass
class Marker:
    """A mark on the coronal MIP: what, where (mm LPS) and where it was drawn (PNG pixels)."""

    label: str
    kind: str
    centroid_mm: tuple[float, float, float]
    png_xy: tuple[float, float] | None = None  # pixel (column, row) in the PNG, row 0 at top


def _marks(result: dict) -> list[tuple[str, str, dict]]:
    marks = []
    if result.get("primary_tumor"):
        marks.append(("primary", "primary", result["primary_tumor"]))
    for node in result.get("nodes", []):
        marks.append((node["station"], node["n_category"] or "other", node))
    return marks


def render(result: dict, ct: sitk.Image, pet: sitk.Image, png_path: Path,
           pdf_path: Path | None = None, *, dpi: int = 100) -> list[Marker]:
    """Draw the report for one case.

    Parameters
    ----------
    result : dict
        The ``n-stage.json`` content.
    ct : SimpleITK.Image
        CT in HU, canonical orientation (the thoracic work crop is enough).
    pet : SimpleITK.Image
        PET in SUVbw on ``ct``'s grid, canonical orientation.
    png_path, pdf_path : Path
        Outputs (written atomically: temporary name, then rename).

    Returns
    -------
    list of Marker
        The marks drawn on the MIP with their PNG pixel positions (for checks).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import gridspec

    ct_arr = sitk.GetArrayViewFromImage(ct)
    pet_arr = sitk.GetArrayViewFromImage(pet)
    sx, _, sz = pet.GetSpacing()
    marks = _marks(result)
    panels = marks[:MAX_PANELS]

    fig = plt.figure(figsize=(11.69, 8.27), dpi=dpi)  # A4 landscape
    outer = gridspec.GridSpec(2, 2, figure=fig, height_ratios=[0.16, 0.84],
                              width_ratios=[0.36, 0.64], left=0.03, right=0.98, top=0.98,
                              bottom=0.03, hspace=0.08, wspace=0.06)
    _header(fig.add_subplot(outer[0, :]), result)

    # Coronal MIP: max over y (anterior-posterior); rows z (superior up), columns x.
    mip = pet_arr.max(axis=1)
    ax = fig.add_subplot(outer[1, 0])
    vmax = max(5.0, float(np.percentile(mip, 99.9)))
    nz, nx = mip.shape
    im = ax.imshow(mip, cmap="gray_r", vmin=0, vmax=vmax, origin="lower",
                   extent=(-0.5, nx - 0.5, -0.5, nz - 0.5), aspect=sz / sx,
                   interpolation="bilinear")
    ax.set_title("PET MIP (coronal), SUVbw", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    _side_labels(ax)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cbar.set_label("SUVbw", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    markers: list[Marker] = []
    for label, kind, entry in marks:
        k, _, i = mm_to_index(pet, entry["centroid_mm"])
        colour = COLOURS.get(kind, COLOURS["other"])
        ax.plot([i], [k], marker="o", markersize=14, markerfacecolor="none",
                markeredgecolor=colour, markeredgewidth=2)
        ax.annotate(label, (i, k), xytext=(9, 6), textcoords="offset points", color=colour,
                    fontsize=8, fontweight="bold")
        markers.append(Marker(label, kind, tuple(entry["centroid_mm"]), (float(i), float(k))))

    # Axial fusion crops.
    if panels:
        ncols = 3
        nrows = int(np.ceil(len(panels) / ncols))
        inner = gridspec.GridSpecFromSubplotSpec(nrows, ncols, subplot_spec=outer[1, 1],
                                                 hspace=0.35, wspace=0.08)
        for n, (label, kind, entry) in enumerate(panels):
            _fusion_panel(fig.add_subplot(inner[n // ncols, n % ncols]), ct, ct_arr, pet_arr,
                          label, kind, entry, vmax)
        if len(marks) > MAX_PANELS:
            fig.text(0.98, 0.01, f"+{len(marks) - MAX_PANELS} more in n-stage.json",
                     ha="right", fontsize=8)
    else:
        ax2 = fig.add_subplot(outer[1, 1])
        ax2.axis("off")
        ax2.text(0.02, 0.95, "No primary tumour and no positive node to show.",
                 va="top", fontsize=11)

    # PNG pixel positions of the markers (row 0 at the top of the PNG).
    fig.canvas.draw()
    height = fig.get_size_inches()[1] * dpi
    for m in markers:
        x, y = ax.transData.transform(m.png_xy)
        m.png_xy = (float(x), float(height - y))

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(fig, png_path, dpi)
    if pdf_path is not None:
        _save_atomic(fig, Path(pdf_path), dpi)
    plt.close(fig)
    return markers


def _save_atomic(fig, path: Path, dpi: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."))
    tmp.replace(path)


def _header(ax, result: dict) -> None:
    ax.axis("off")
    n8, n9 = result["n_stage"], result["n_stage_9th"]
    probs = result.get("probabilities") or {}
    ptxt = "  ".join(f"P({k})={v:.2f}" for k, v in probs.items() if v is not None) or "n/a"
    backends = result.get("backends", {})
    ax.text(0.0, 1.0, f"N stage {n8} (8th ed.)  /  {n9} (9th ed.)", fontsize=18,
            fontweight="bold", va="top",
            color="#b00000" if n8 == "NX" else "black")
    primary = result.get("primary_tumor")
    ptext = "no primary tumour found" if not primary else (
        f"primary: {primary['side']} lung"
        + (f", {primary['lobe']} lobe" if primary.get("lobe") else "")
        + f", SUVmax {primary['suv_max']}")
    ax.text(0.0, 0.58, f"{ptext}   |   {ptxt}", fontsize=9, va="top")
    ax.text(0.0, 0.36,
            f"anatomy: {backends.get('anatomy')}   lesions: {backends.get('lesions')}   "
            f"nstage {result.get('version')}   CT window W{CT_WINDOW[1]:.0f}/L{CT_WINDOW[0]:.0f} HU",
            fontsize=8, va="top", color="#333333")
    reasons = result.get("reasons") or []
    if n8 == "NX" and reasons:
        ax.text(0.0, 0.17, textwrap.shorten("NX because: " + "; ".join(reasons), 230),
                fontsize=8.5, va="top", color="#b00000")
    ax.text(1.0, 1.0, RESEARCH_LINE, fontsize=8, va="top", ha="right", style="italic",
            color="#b00000")


def _side_labels(ax) -> None:
    for x, text in ((0.02, "R"), (0.98, "L")):
        ax.text(x, 0.98, text, transform=ax.transAxes, ha="center", va="top", fontsize=10,
                fontweight="bold", color="#1f4e9e",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def _fusion_panel(ax, ct, ct_arr, pet_arr, label, kind, entry, vmax) -> None:
    k, j, i = np.round(mm_to_index(ct, entry["centroid_mm"])).astype(int)
    nz, ny, nx = ct_arr.shape
    k = int(np.clip(k, 0, nz - 1))
    sx, sy, _ = ct.GetSpacing()
    hx, hy = int(CROP_MM / 2 / sx), int(CROP_MM / 2 / sy)
    j0, j1 = max(0, j - hy), min(ny, j + hy)
    i0, i1 = max(0, i - hx), min(nx, i + hx)
    level, width = CT_WINDOW
    ct_crop = np.asarray(ct_arr[k, j0:j1, i0:i1], dtype=float)
    pet_crop = np.asarray(pet_arr[k, j0:j1, i0:i1], dtype=float)
    extent = (i0 - 0.5, i1 - 0.5, j1 - 0.5, j0 - 0.5)
    ax.imshow(ct_crop, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
              extent=extent, aspect=sy / sx, interpolation="bilinear")
    ax.imshow(np.ma.masked_less(pet_crop, 1.0), cmap="hot", vmin=0, vmax=vmax, alpha=0.55,
              extent=extent, aspect=sy / sx, interpolation="bilinear")
    colour = COLOURS.get(kind, COLOURS["other"])
    ax.plot([i], [j], marker="+", markersize=16, color=colour, markeredgewidth=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    _side_labels(ax)
    short = entry.get("short_axis_mm")
    title = (f"{label}  {kind if kind != 'primary' else ''}  SUVmax {entry.get('suv_max')}"
             + (f"  SA {short} mm" if short is not None else ""))
    ax.set_title(" ".join(title.split()), fontsize=8.5, color=colour, fontweight="bold")
    rule = entry.get("reason") or ""
    if kind == "primary":
        rule = f"primary tumour, {entry.get('side')} lung, {entry.get('volume_ml')} ml"
    ax.set_xlabel(textwrap.fill(textwrap.shorten(rule, 150), 48), fontsize=6.5)


def write_report(staged, out_dir: Path) -> dict[str, Path]:
    """Write ``n-stage-report.png`` and ``.pdf`` for a :class:`nstage.pipeline.StageResult`."""
    out_dir = Path(out_dir)
    if staged.work_ct is not None and staged.work_pet is not None:
        ct, pet = staged.work_ct, staged.work_pet
    else:
        ct = staged.study.ct
        pet = staged.study.pet_on(ct)
    png, pdf = out_dir / PNG_NAME, out_dir / PDF_NAME
    render(staged.result, ct, pet, png, pdf)
    return {"png": png, "pdf": pdf}
