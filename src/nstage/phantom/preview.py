"""A picture of a phantom for a person to check: CT slices with the anatomy outlined, PET MIP.

Panels: coronal CT through the carina, axial CT at the aortic arch and just below the carina
(anatomy outlines in colour, nodes and primary in red), and a coronal PET maximum-intensity
projection with the nodes marked. Written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.geometry import mm_to_index

_OUTLINED = ("trachea", "main_bronchus_left", "main_bronchus_right", "aorta", "pulmonary_artery",
             "superior_vena_cava", "brachiocephalic_vein_left", "brachiocephalic_vein_right",
             "esophagus", "heart", "sternum", "thyroid_gland", "liver", "lung_upper_lobe_right",
             "lung_middle_lobe_right", "lung_lower_lobe_right", "lung_upper_lobe_left",
             "lung_lower_lobe_left", "kidney_left", "kidney_right", "urinary_bladder", "brain",
             "spleen", "clavicula_left", "clavicula_right")


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def render(phantom, png_path: str | Path) -> Path:
    """Render ``phantom`` (a :class:`nstage.phantom.Phantom`) to ``png_path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct = sitk.GetArrayFromImage(phantom.ct).astype(np.float32)
    pet = sitk.GetArrayFromImage(phantom.pet)
    anat = phantom.anatomy
    truth = phantom.truth
    les = phantom.lesion_labels
    sx, sy, sz = phantom.ct.GetSpacing()
    carina = truth["landmarks"]["carina_mm"]
    kc, jc, _ = np.round(mm_to_index(phantom.ct, carina)).astype(int)
    arch_z = 0.5 * (truth["landmarks"]["aortic_arch_top_z_mm"]
                    + truth["landmarks"]["aortic_arch_bottom_z_mm"])
    k_arch = int(round(mm_to_index(phantom.ct, [carina[0], carina[1], arch_z])[0]))
    k_low = int(np.clip(kc - round(15.0 / sz), 0, ct.shape[0] - 1))
    names = [n for n in _OUTLINED if anat.has(n)]
    cmap = plt.get_cmap("tab20")
    colours = {n: cmap(i % 20) for i, n in enumerate(names)}

    def show(ax, img, extent, title, masks, lesion_mask, aspect):
        ax.imshow(np.clip(img, -1000, 600), cmap="gray", vmin=-1000, vmax=400, extent=extent,
                  origin="upper", aspect=aspect, interpolation="nearest")
        for n, m in masks.items():
            o = _outline(m)
            if o.any():
                rgba = np.zeros(o.shape + (4,))
                rgba[o] = colours[n]
                ax.imshow(rgba, extent=extent, origin="upper", aspect=aspect,
                          interpolation="nearest")
        if lesion_mask is not None and lesion_mask.any():
            o = _outline(lesion_mask)
            rgba = np.zeros(o.shape + (4,))
            rgba[o] = (1.0, 0.0, 0.0, 1.0)
            ax.imshow(rgba, extent=extent, origin="upper", aspect=aspect,
                      interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    fig, axes = plt.subplots(1, 4, figsize=(20, 6.2))
    nz, ny, nx = ct.shape
    # coronal: rows z (superior at top), columns x (patient right on the image left)
    jc = int(np.clip(jc, 0, ny - 1))
    cor = ct[::-1, jc, :]
    ext_c = (0, nx * sx, 0, nz * sz)
    masks = {n: anat.mask(n)[::-1, jc, :] for n in names}
    show(axes[0], cor, ext_c, "coronal CT through the carina", masks,
         None if les is None else les[::-1, jc, :] > 0, "equal")
    for ax, k, title in ((axes[1], k_arch, "axial CT at the aortic arch"),
                         (axes[2], k_low, "axial CT 15 mm below the carina")):
        k = int(np.clip(k, 0, nz - 1))
        ext_a = (0, nx * sx, ny * sy, 0)
        masks = {n: anat.mask(n)[k] for n in names}
        show(ax, ct[k], ext_a, title, masks, None if les is None else les[k] > 0, "equal")
    psx, psy, psz = phantom.pet.GetSpacing()
    mip = pet.max(axis=1)[::-1]
    axes[3].imshow(mip, cmap="gray_r", vmin=0, vmax=max(6.0, float(np.percentile(mip, 99.5))),
                   extent=(0, mip.shape[1] * psx, 0, mip.shape[0] * psz), aspect="equal")
    for node in truth["nodes"] + ([truth["primary"]] if truth["primary"] else []):
        k, _, i = mm_to_index(phantom.pet, node["centroid_mm"])
        y = (k + 0.5) * psz
        colour = "red" if node.get("counts", True) or "lobe" in node else "orange"
        axes[3].plot(i * psx + psx / 2, y, "o", mfc="none", mec=colour, ms=12)
        label = node.get("station", "primary")
        axes[3].text(i * psx + psx / 2 + 8, y, label, color=colour, fontsize=8)
    axes[3].set_title("coronal PET MIP (SUV); red: counting nodes / primary", fontsize=9)
    axes[3].set_xticks([])
    axes[3].set_yticks([])
    spec = phantom.spec
    fig.suptitle(
        f"nstage phantom seed {spec.seed}, {spec.extent}: primary {spec.primary_side} "
        f"{spec.primary_lobe if spec.primary_side != 'none' else ''}; nodes "
        f"{', '.join(spec.nodes) or 'none'}; expected {truth['n_stage']} / {truth['n_stage_9th']}"
        f" (patient right on image left)", fontsize=11)
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
