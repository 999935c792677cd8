"""``anatomy-preview.png``: a picture to check the anatomy and the landmarks of one CT at a glance.

Panels (matplotlib Agg, no display needed):

- coronal CT through the carina, the anatomy labels as coloured outlines over a light fill,
  and every landmark level as a horizontal line named in the right-hand gutter: solid for a
  measured landmark, dashed (and orange) for an approximated one; landmark points (carina,
  hila) as crosses;
- axial CT at the carina level with the same labels and the carina marked;
- the list of landmarks: level (z, mm), measured or approximated, and how it was found.

A wrong landmark shows at once: a carina line in the neck, an aortic-arch top below the carina,
two levels that should differ drawn on top of each other.

Display: radiological (patient's RIGHT on the image LEFT), superior up in the coronal view,
anterior up in the axial one, every view placed by physical extent in mm so anisotropic voxels
keep their true proportions. CT window W 1500 / L -300 HU (lung and mediastinum both visible).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.geometry import canonical, mm_to_index

PNG_NAME = "anatomy-preview.png"
CT_WINDOW = (-300.0, 1500.0)  # level, width (HU)
DPI = 100
FIGSIZE = (19.0, 9.5)  # inches
# CT shown above and below the anatomy's thoracic box (mm): enough to see the neck or the
# abdomen that a wrong landmark may have landed in.
CONTEXT_MM = 60.0
MEASURED_COLOUR = "#00c8ff"
APPROXIMATED_COLOUR = "#ff9f1a"
# Label name prefixes drawn (and listed) as one structure.
_GROUPED = (("rib_", "ribs"), ("vertebrae_", "vertebrae"), ("costal_cartilages", "ribs"))


def structure_of(name: str) -> str:
    """The structure a label is drawn as: ribs and vertebrae grouped, others as named."""
    for prefix, group in _GROUPED:
        if name.startswith(prefix):
            return group
    return name


def _structures(labels: np.ndarray, names: dict[int, str]) -> dict[str, list[int]]:
    """Present structure -> its label values, in label order."""
    present = set(np.unique(labels).tolist())
    out: dict[str, list[int]] = {}
    for value, name in sorted(names.items()):
        if value in present and value != 0:
            out.setdefault(structure_of(name), []).append(value)
    return out


def _colours(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def _overlay_rgba(labels2d: np.ndarray, structures: dict[str, list[int]],
                  colours: dict[str, tuple]) -> np.ndarray:
    """RGBA: each structure's outline opaque and its inside lightly tinted."""
    from scipy import ndimage

    rgba = np.zeros(labels2d.shape + (4,), dtype=np.float32)
    for name, values in structures.items():
        mask = np.isin(labels2d, values)
        if not mask.any():
            continue
        edge = mask & ~ndimage.binary_erosion(mask)
        colour = np.array(colours[name][:3], dtype=np.float32)
        rgba[mask, :3] = colour
        rgba[mask, 3] = 0.18
        rgba[edge, :3] = colour
        rgba[edge, 3] = 1.0
    return rgba


def spread(positions: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label positions moved apart to at least ``gap`` within [lo, hi], order kept."""
    from nstage.figure import spread as figure_spread

    return figure_spread(positions, gap, lo, hi)


def _carina_index(ct: sitk.Image, landmarks) -> tuple[int, int, int] | None:
    carina = landmarks.get("carina")
    if carina is None or carina.point_mm is None:
        return None
    k, j, i = np.round(mm_to_index(ct, carina.point_mm)).astype(int)
    size = ct.GetSize()[::-1]
    return (int(np.clip(k, 0, size[0] - 1)), int(np.clip(j, 0, size[1] - 1)),
            int(np.clip(i, 0, size[2] - 1)))


def _fallback_index(labels: np.ndarray, names: dict[int, str],
                    ct: sitk.Image) -> tuple[int, int, int]:
    """Without a carina: the centre of the lungs (else of the image)."""
    lungs = np.isin(labels, [v for v, n in names.items() if n.startswith("lung")])
    if lungs.any():
        return tuple(int(round(v)) for v in np.argwhere(lungs).mean(axis=0))
    return tuple(n // 2 for n in ct.GetSize()[::-1])


def render(ct: sitk.Image, labels: np.ndarray, names: dict[int, str], landmarks,
           png_path: str | Path, *, box: tuple[slice, slice, slice] | None = None,
           title: str = "", notes: list[str] | tuple[str, ...] = ()) -> Preview:
    """Draw the anatomy preview of one CT.

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU, canonical LPS (the whole CT as read).
    labels : numpy.ndarray
        Anatomy labels on ``ct``'s grid, array order ``[z, y, x]``.
    names : dict of int to str
        Label value -> class name (``Anatomy.names``).
    landmarks : nstage.landmarks.Landmarks
        Levels and points in mm LPS.
    png_path : path
        Output PNG, written atomically (temporary name, then rename).
    box : tuple of slice, optional
        The thoracic box the anatomy was segmented in (drawn dotted; the coronal view shows it
        with :data:`CONTEXT_MM` above and below).
    title : str
        Extra text for the title line (backend, file name).
    notes : list of str
        The anatomy backend's notes (what it did not find), listed under the landmarks.

    Returns
    -------
    Preview
        The PNG path and where each landmark level was drawn (for checks).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ct = canonical(ct)
    arr = sitk.GetArrayViewFromImage(ct)
    if labels.shape != arr.shape:
        raise ValueError(f"labels of shape {labels.shape} are not on the CT grid {arr.shape}")
    structures = _structures(labels, names)
    colours = _colours(list(structures))
    centre = _carina_index(ct, landmarks)
    k, j, _ = centre if centre is not None else _fallback_index(labels, names, ct)
    if box is None:
        box = tuple(slice(0, n) for n in arr.shape)

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax_cor = fig.add_axes((0.025, 0.06, 0.36, 0.85))
    ax_cor.set_anchor("W")
    ax_ax = fig.add_axes((0.575, 0.40, 0.22, 0.50))
    drawn = _coronal(ax_cor, ct, arr, labels, landmarks, structures, colours, j, box)
    _axial(ax_ax, ct, arr, labels, landmarks, structures, colours, k)
    _legend(fig, structures, colours)
    _landmark_list(fig, landmarks, notes)
    carina = landmarks.get("carina")
    where = ("through the carina" if centre is not None
             else "carina NOT FOUND: views through the centre of the lungs")
    fig.text(0.01, 0.985, f"nstage anatomy preview{': ' + title if title else ''}  |  views "
             f"{where}  |  radiological view: patient's RIGHT on image LEFT", fontsize=12,
             fontweight="bold", va="top", color="black" if carina is not None else "#b00000")
    fig.text(0.01, 0.955, "landmark levels: solid = measured from the segmentation, dashed "
             "orange = approximated from another landmark and a typical distance", fontsize=10,
             va="top", color="#333333")
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        tmp.replace(out)
        height = fig.get_size_inches()[1] * DPI
        bbox = ax_cor.get_window_extent()
        x_left, x_right = (ax_cor.transData.transform((x, 0.0))[0] for x in drawn.x_range)
        levels = [DrawnLevel(lm.name, lm.z_mm, lm.approximated,
                             float(height - ax_cor.transData.transform((0.0, lm.z_mm))[1]),
                             label) for lm, label in drawn.levels]
        return Preview(out, levels, (float(x_left), float(x_right)),
                       (float(height - bbox.y1), float(height - bbox.y0)), centre is not None,
                       drawn.outside)
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()


@dataclass
class DrawnLevel:
    """A landmark level as drawn on the coronal view: ``row_px`` from the PNG's top."""

    name: str
    z_mm: float
    approximated: bool
    row_px: float
    label: str


@dataclass
class Preview:
    """What :func:`render` drew: the PNG, the landmark levels on the coronal view, that
    view's image columns and rows (PNG pixels), and whether a carina was there to centre on."""

    png: Path
    levels: list[DrawnLevel]
    image_columns_px: tuple[float, float]
    axes_rows_px: tuple[float, float]
    through_carina: bool
    outside: list[str]


@dataclass
class _Drawn:
    levels: list
    x_range: tuple[float, float]
    outside: list[str]


def _extent_coronal(ct: sitk.Image) -> tuple[float, float, float, float]:
    sx, _, sz = ct.GetSpacing()
    ox, _, oz = ct.GetOrigin()
    nx, _, nz = ct.GetSize()
    return ox - sx / 2, ox + (nx - 0.5) * sx, oz - sz / 2, oz + (nz - 0.5) * sz


def _window() -> dict:
    level, width = CT_WINDOW
    return {"cmap": "gray", "vmin": level - width / 2, "vmax": level + width / 2}


def _coronal(ax, ct, arr, labels, landmarks, structures, colours, j: int,
             box: tuple[slice, slice, slice]) -> _Drawn:
    """Coronal CT at row ``j`` with labels, every landmark level named in a gutter on the
    right (outside the image, so no name covers the anatomy)."""
    x0, x1, z0, z1 = _extent_coronal(ct)
    extent = (x0, x1, z0, z1)
    ax.imshow(np.asarray(arr[:, j, :], dtype=np.float32), origin="lower", extent=extent,
              interpolation="bilinear", **_window())
    ax.imshow(_overlay_rgba(labels[:, j, :], structures, colours), origin="lower",
              extent=extent, interpolation="nearest")
    sx, _, sz = ct.GetSpacing()
    ox, _, oz = ct.GetOrigin()
    bz0 = oz + (box[0].start - 0.5) * sz
    bz1 = oz + (box[0].stop - 0.5) * sz
    bx0 = ox + (box[2].start - 0.5) * sx
    bx1 = ox + (box[2].stop - 0.5) * sx
    ax.plot([bx0, bx1, bx1, bx0, bx0], [bz0, bz0, bz1, bz1, bz0], color="#ffe600",
            linestyle=":", linewidth=1.2)
    ax.text(bx0 + 3, bz0 + 3, "anatomy box", color="#ffe600", fontsize=8, va="bottom")
    vz0, vz1 = max(z0, bz0 - CONTEXT_MM), min(z1, bz1 + CONTEXT_MM)
    ax.set_xlim(x0, x1)
    ax.set_ylim(vz0, vz1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.tick_params(labelsize=8)
    ax.set_ylabel("z (mm, superior up)", fontsize=9)
    ax.set_title(f"coronal CT through the carina (y = {_y_mm(ct, j):.0f} mm)", fontsize=11)
    ax.text(x0 + 4, vz1 - 4, "R", color="white", fontsize=13, fontweight="bold", va="top")
    ax.text(x1 - 4, vz1 - 4, "L", color="white", fontsize=13, fontweight="bold", va="top",
            ha="right")

    items = sorted(landmarks.points.values(), key=lambda lm: -lm.z_mm)
    inside = [lm for lm in items if vz0 <= lm.z_mm <= vz1]
    outside = [lm for lm in items if not vz0 <= lm.z_mm <= vz1]
    ax.apply_aspect()
    pos = ax.get_position()
    height_pt = pos.height * ax.figure.get_size_inches()[1] * 72.0
    gap = 10.5 * (vz1 - vz0) / max(height_pt, 1.0)  # 10.5 pt between label centres
    ys = spread([lm.z_mm for lm in inside], gap, vz0 + gap / 2, vz1 - gap / 2)
    width = x1 - x0
    tx = x1 + 0.08 * width
    drawn = _Drawn([], (x0, x1), [lm.name for lm in outside])
    for lm, ty in zip(inside, ys, strict=True):
        colour = APPROXIMATED_COLOUR if lm.approximated else MEASURED_COLOUR
        style = (0, (5, 3)) if lm.approximated else "solid"
        ax.plot([x0, x1], [lm.z_mm, lm.z_mm], color=colour, linestyle=style, linewidth=1.4)
        ax.plot([x1, tx - 0.01 * width], [lm.z_mm, ty], color=colour, linewidth=0.8,
                clip_on=False)
        kind = "approx." if lm.approximated else "measured"
        label = f"{lm.name}  z {lm.z_mm:.0f}  ({kind})"
        drawn.levels.append((lm, label))
        ax.text(tx, ty, label, fontsize=8, va="center",
                color="black", fontweight="normal" if lm.approximated else "bold",
                clip_on=False,
                bbox={"facecolor": colour, "alpha": 0.35, "edgecolor": "none", "pad": 0.8})
        if lm.point_mm is not None:
            ax.plot(lm.point_mm[0], lm.point_mm[2], marker="x", markersize=9,
                    markeredgewidth=2.2, color=colour)
    if outside:
        names = ", ".join(f"{lm.name} (z {lm.z_mm:.0f})" for lm in outside)
        ax.text(x0, vz0 - 0.02 * (vz1 - vz0), textwrap.fill(f"outside this view: {names}", 90),
                fontsize=8, va="top", color="#b00000")
    return drawn


def _y_mm(ct: sitk.Image, j: int) -> float:
    return float(ct.GetOrigin()[1] + j * ct.GetSpacing()[1])


def _axial(ax, ct, arr, labels, landmarks, structures, colours, k: int) -> None:
    """Axial CT at slice ``k`` (the carina level) with labels; anterior up."""
    sx, sy, sz = ct.GetSpacing()
    ox, oy, oz = ct.GetOrigin()
    nx, ny = ct.GetSize()[:2]
    extent = (ox - sx / 2, ox + (nx - 0.5) * sx, oy + (ny - 0.5) * sy, oy - sy / 2)
    ax.imshow(np.asarray(arr[k], dtype=np.float32), extent=extent, interpolation="bilinear",
              **_window())
    ax.imshow(_overlay_rgba(labels[k], structures, colours), extent=extent,
              interpolation="nearest")
    carina = landmarks.get("carina")
    if carina is not None and carina.point_mm is not None:
        ax.plot(carina.point_mm[0], carina.point_mm[1], marker="x", markersize=11,
                markeredgewidth=2.5, color=MEASURED_COLOUR if not carina.approximated
                else APPROXIMATED_COLOUR)
    level = landmarks.trachea_at(oz + k * sz)
    if level is not None and abs(level.z_mm - (oz + k * sz)) <= 2 * sz:
        # The left tracheal border splits 2R/4R from 2L/4L (CLINICAL.md).
        ax.axvline(level.left_border_x_mm, color="#ffffff", linestyle=":", linewidth=1.0)
        ax.text(level.left_border_x_mm + 2, extent[3] + 6, "left tracheal border", fontsize=7,
                color="white", va="top")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"axial CT at the carina level (z = {oz + k * sz:.0f} mm)", fontsize=11)
    ax.text(extent[0] + 4, (extent[2] + extent[3]) / 2, "R", color="white", fontsize=12,
            fontweight="bold", va="center")
    ax.text(extent[1] - 4, (extent[2] + extent[3]) / 2, "L", color="white", fontsize=12,
            fontweight="bold", va="center", ha="right")
    ax.text((extent[0] + extent[1]) / 2, extent[3] + 4, "A", color="white", fontsize=11,
            fontweight="bold", va="top", ha="center")


def _legend(fig, structures: dict[str, list[int]], colours: dict[str, tuple]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[n], edgecolor="black", linewidth=0.4, label=n)
               for n in structures]
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.575, 0.375), ncol=2,
                   fontsize=8, frameon=False, title="anatomy labels", title_fontsize=9,
                   handlelength=1.2, columnspacing=1.0, labelspacing=0.3)


def _landmark_list(fig, landmarks, anatomy_notes=()) -> None:
    """Every landmark with its level, method and source, wrapped (nothing cut)."""
    lines = []
    for lm in sorted(landmarks.points.values(), key=lambda p: -p.z_mm):
        kind = "APPROXIMATED" if lm.approximated else "measured"
        lines.append((f"{lm.name}: z {lm.z_mm:.1f}, {kind}", lm.approximated))
        lines.extend((f"    {part}", lm.approximated)
                     for part in textwrap.wrap(lm.source, 44))
    lung = ", ".join(f"{side} {ml:.0f} ml" for side, ml in landmarks.lung_volume_ml.items())
    footer = [f"lungs: {lung}"] if lung else []
    footer += [f"note: {n}" for n in landmarks.notes]
    footer += [f"anatomy: {n}" for n in anatomy_notes]
    lines += [(f"{part}", False) for text in footer for part in textwrap.wrap(text, 50)]
    if not landmarks.points:
        lines.insert(0, ("no landmark found", True))
    y, bottom, spacing = 0.93, 0.01, 1.3
    height_pt = (y - bottom) * fig.get_size_inches()[1] * 72.0
    # Shrink the type until every line fits: the list is never cut.
    size = min(8.0, height_pt / (spacing * max(len(lines), 1)))
    step = size * spacing / 72.0 / fig.get_size_inches()[1]
    fig.text(0.80, y + 0.005, "landmarks (top to bottom)", fontsize=10, fontweight="bold",
             va="bottom")
    for text, approximated in lines:
        fig.text(0.80, y, text, fontsize=size, va="top", family="monospace",
                 color="#b35900" if approximated else "black")
        y -= step
