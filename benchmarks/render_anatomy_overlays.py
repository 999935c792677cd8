"""Render classical-anatomy overlays of the real CTs for the record.

Writes ``docs/images/anatomy-<case>.png``: an axial slice and a coronal slice through the carina
(or the image centre when no carina is found) with every label outlined and the carina marked;
for Lung-PET-CT-Dx A0002 the annotated tumour boxes are drawn in the axial view when they lie on
that slice. The case ``phantom`` renders the default thorax phantom.

Usage: ``python benchmarks/render_anatomy_overlays.py [--data ../shared/data/real] [--out docs/images]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nstage.anatomy.classical import segment_classical
from nstage.anatomy.crop import thorax_box
from nstage.commands.anatomy import read_ct
from nstage.geometry import crop, mm_to_index
from nstage.landmarks import find

CASES = {
    "a0002": "lung-pet-ct-dx-A0002/ct",
    "a0001": "lung-pet-ct-dx-A0001/ct.mha",
    "lung1-002": "nsclc-radiomics-LUNG1-002/ct.mha",
    "inlet": "nsclc-radiogenomics-R01-005/chest-ct-inlet",
    "mediastinum-contrast": "totalsegmentator-crops/mediastinum-contrast-ct-1.5mm.nii.gz",
    "heart-contrast": "totalsegmentator-crops/heart-contrast-ct-1.5mm.nii.gz",
}
COLOURS = plt.get_cmap("tab20")


def run_case(path: Path):
    ct, _ = read_ct(path)
    t0 = time.perf_counter()
    work = crop(ct, thorax_box(ct))
    anatomy = segment_classical(work)
    lms = find(anatomy)
    return work, anatomy, lms, time.perf_counter() - t0


def render(name: str, work, anatomy, lms, out: Path, boxes=None) -> Path:
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(work)
    carina = lms.get("carina")
    if carina is not None and carina.point_mm is not None:
        k, j, i = (int(round(v)) for v in mm_to_index(work, carina.point_mm))
    else:
        k, j, i = (s // 2 for s in hu.shape)
    k = int(np.clip(k, 0, hu.shape[0] - 1))
    j = int(np.clip(j, 0, hu.shape[1] - 1))
    sx, sy, sz = work.GetSpacing()
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2))
    views = [
        ("axial", hu[k], anatomy.labels[k], sy / sx),
        ("coronal", hu[:, j, :][::-1], anatomy.labels[:, j, :][::-1], sz / sx),
    ]
    for ax, (view, img, lab, aspect) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", vmin=-1000, vmax=400, aspect=aspect, interpolation="nearest")
        handles = []
        for v, n in sorted(anatomy.names.items()):
            m = lab == v
            if not m.any():
                continue
            colour = COLOURS((v - 1) % 20)
            ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
            handles.append(plt.Line2D([], [], color=colour, label=n))
        if carina is not None and carina.point_mm is not None:
            ck, cj, ci = mm_to_index(work, carina.point_mm)
            if view == "axial":
                ax.plot(ci, cj, "r+", ms=14, mew=2)
            else:
                ax.plot(ci, hu.shape[0] - 1 - ck, "r+", ms=14, mew=2)
        if view == "axial" and boxes:
            for (x0, y0, x1, y1) in boxes.get(k, []):
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow",
                                           lw=1.5, ls="--"))
        ax.set_title(f"{name}: {view} (patient left on the image right)")
        ax.axis("off")
        if view == "coronal":
            ax.legend(handles=handles, loc="lower left", fontsize=7, ncol=2, framealpha=0.6)
    vol = lms.lung_volume_ml
    cz = "none" if carina is None else f"z={carina.z_mm:.0f} mm"
    fig.suptitle(f"classical anatomy, carina {cz} (red +), lungs L {vol.get('left', 0):.0f} ml / "
                 f"R {vol.get('right', 0):.0f} ml")
    fig.tight_layout()
    path = out / f"anatomy-{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def tumour_boxes(case_dir: Path, work) -> dict[int, list[tuple[int, int, int, int]]]:
    """A0002 tumour boxes per working-crop slice (pixel boxes shifted into the crop)."""
    import xml.etree.ElementTree as ET

    import pydicom

    from nstage.geometry import mm_to_index

    boxes: dict[int, list] = {}
    uid_to_file = {}
    for f in (case_dir / "ct").iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uid_to_file[ds.SOPInstanceUID] = ds
    for x in (case_dir / "tumor-boxes").glob("*.xml"):
        ds = uid_to_file.get(x.stem)
        if ds is None:
            continue
        bb = ET.parse(x).getroot().find("object/bndbox")
        x0, y0, x1, y1 = (int(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ps = [float(v) for v in ds.PixelSpacing]  # row, column spacing
        p0 = pos + np.array([x0 * ps[1], y0 * ps[0], 0.0])
        p1 = pos + np.array([x1 * ps[1], y1 * ps[0], 0.0])
        k0, j0, i0 = mm_to_index(work, p0)
        _, j1, i1 = mm_to_index(work, p1)
        boxes.setdefault(int(round(k0)), []).append((i0, j0, i1, j1))
    return boxes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    ap.add_argument("cases", nargs="*", default=[*CASES, "phantom"])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        if name == "phantom":
            from nstage.phantom import PhantomSpec, make_phantom

            ct = make_phantom(PhantomSpec()).ct
            t0 = time.perf_counter()
            work = crop(ct, thorax_box(ct))
            anatomy = segment_classical(work)
            lms = find(anatomy)
            print(f"phantom: {time.perf_counter() - t0:.1f} s -> "
                  f"{render(name, work, anatomy, lms, args.out)}")
            continue
        path = args.data / CASES[name]
        if not path.exists():
            print(f"{name}: {path} missing, skipped")
            continue
        work, anatomy, lms, secs = run_case(path)
        boxes = tumour_boxes(path.parent, work) if name == "a0002" else None
        png = render(name, work, anatomy, lms, args.out, boxes)
        c = lms.get("carina")
        print(f"{name}: {secs:.1f} s, carina {None if c is None else np.round(c.point_mm, 1)}, "
              f"lungs {({k: round(v) for k, v in lms.lung_volume_ml.items()})}, "
              f"present {anatomy.present_names()}, notes {anatomy.notes + lms.notes} -> {png}")


if __name__ == "__main__":
    main()
