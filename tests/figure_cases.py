"""Synthetic canonical CT/PET images and hand-written ``n-stage.json`` results for the
visual report (tests/test_figure.py and benchmarks/bench_figure.py).

Geometry: canonical LPS, identity direction, the patient centred at x = y = 0 mm
(+x patient LEFT, +y posterior, +z superior). The CT is a crude thorax (body ellipse,
two lungs, mediastinum, spine, trachea); the PET has physiological background and a
hot sphere (SUVbw) at every lesion of the case, so marks can be checked against pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from nstage import staging


@dataclass(frozen=True)
class Lesion:
    """A hot sphere: centre (x, y, z) mm LPS, radius mm, SUVmax."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    suv: float


@dataclass
class Case:
    """A synthetic case: images plus the result a pipeline would have written."""

    name: str
    ct: sitk.Image
    pet: sitk.Image
    result: dict
    lesions: dict[str, Lesion] = field(default_factory=dict)  # key: "primary" or station


def images(lesions: list[Lesion], *, size_xyz=(96, 96, 60), spacing_xyz=(2.0, 2.0, 3.0),
           seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """CT (HU, int16) and PET (SUVbw, float32) on the same canonical grid centred at 0 mm."""
    sx, sy, sz = spacing_xyz
    nx, ny, nz = size_xyz
    origin = np.array([-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz])
    x = origin[0] + np.arange(nx) * sx
    y = origin[1] + np.arange(ny) * sy
    z = origin[2] + np.arange(nz) * sz
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    half_x, half_y = (nx - 1) / 2 * sx, (ny - 1) / 2 * sy
    body = (xx / (0.92 * half_x)) ** 2 + (yy / (0.75 * half_y)) ** 2 <= 1.0
    body = np.broadcast_to(body, (nz, ny, nx))
    zlo, zhi = z[0] + 0.12 * (z[-1] - z[0]), z[0] + 0.85 * (z[-1] - z[0])
    in_z = (zz > zlo) & (zz < zhi)
    lung = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cx = sign * 0.47 * half_x
        lung[side] = (((xx - cx) / (0.33 * half_x)) ** 2 + ((yy - 0.05 * half_y) / (0.55 * half_y)) ** 2
                      <= 1.0) & in_z
    lungs = lung["right"] | lung["left"]
    spine = ((xx ** 2 + (yy - 0.55 * half_y) ** 2) <= (0.15 * half_y) ** 2)
    trachea = ((xx ** 2 + (yy + 0.15 * half_y) ** 2) <= 8.0 ** 2) & (zz > zlo + 0.55 * (zhi - zlo))
    ct = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    ct[body] = -90.0  # mediastinal fat / soft tissue
    ct[np.broadcast_to(lungs, ct.shape)] = -850.0
    ct[np.broadcast_to(spine & body, ct.shape)] = 450.0
    ct[np.broadcast_to(trachea, ct.shape)] = -1000.0
    pet = np.zeros((nz, ny, nx), dtype=np.float32)
    pet[body] = 1.0
    pet[np.broadcast_to(lungs, pet.shape)] = 0.4
    mediastinum = body & ~lungs & (np.abs(xx) < 0.25 * half_x) & in_z
    pet[np.broadcast_to(mediastinum, pet.shape)] = 1.8  # blood pool
    for lesion in lesions:
        cx, cy, cz = lesion.centre_mm
        sphere = (xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= lesion.radius_mm ** 2
        sphere = np.broadcast_to(sphere, ct.shape)
        ct[sphere] = 40.0
        pet[sphere] = lesion.suv
    pet = ndi.gaussian_filter(pet, sigma=(0.7, 1.0, 1.0))
    rng = np.random.default_rng(seed)
    ct += rng.normal(0.0, 12.0, ct.shape).astype(np.float32)
    out = []
    for arr in (ct.astype(np.int16), pet.astype(np.float32)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(s) for s in spacing_xyz))
        img.SetOrigin(tuple(float(o) for o in origin))
        out.append(img)
    return out[0], out[1]


def _node(station: str, lesion: Lesion, category: str | None, probability: float, nid: int,
          why: str) -> dict:
    side = staging.station_side(station)
    return {
        "id": nid, "station": station, "side": side, "n_category": category,
        "suv_max": lesion.suv, "suv_peak": round(lesion.suv * 0.8, 2),
        "suv_mean": round(lesion.suv * 0.6, 2),
        "volume_ml": round(4 / 3 * np.pi * lesion.radius_mm ** 3 / 1000, 2),
        "short_axis_mm": 2 * lesion.radius_mm, "centroid_mm": list(lesion.centre_mm),
        "label_value": {"N1": 2, "N2": 3, "N3": 4}.get(category or "", 0 if category is None
                                                        else 5),
        "probability": probability, "station_confidence": 0.8, "direct_extension": False,
        "reason": (f"{station} ({side}): {category or 'not counted'}; {why}; "
                   f"centroid within the {station} region of the station map"),
    }


def result(*, primary: tuple[str, Lesion] | None, nodes: dict[str, tuple[Lesion, float]],
           negatives: dict[str, tuple[Lesion, float]] | None = None,
           reasons: list[str] | None = None, nx: bool = False) -> dict:
    """An ``n-stage.json``-shaped dict; categories and trace from :mod:`nstage.staging`.

    ``nodes`` maps a station to (lesion, probability) of a positive node; ``negatives``
    the same for candidates below the criteria.
    """
    side = primary[0] if primary else "unknown"
    stage = staging.n_category(side, list(nodes), staging.DEFAULT_RULES)
    n8, n9 = ("NX", "NX") if nx else (stage.n_stage, stage.n_stage_9th)
    node_entries = []
    for nid, (station, (lesion, prob)) in enumerate(nodes.items(), start=2):
        category, _ = staging.node_category(station, side, staging.DEFAULT_RULES)
        node_entries.append(_node(station, lesion, category if category != "NX" else None,
                                  prob, nid, f"SUVmax {lesion.suv:g} >= threshold 2.9"))
    neg_entries = [_node(s, les, None, p, 50 + n, f"SUVmax {les.suv:g} < threshold 2.9")
                   for n, (s, (les, p)) in enumerate((negatives or {}).items())]
    if nx:
        probs = {k: None for k in ("N0", "N1", "N2", "N3")}
    else:
        probs = {"N0": 0.05, "N1": 0.05, "N2": 0.05, "N3": 0.05}
        probs[n8] = 0.85
    primary_entry = None
    if primary:
        les = primary[1]
        primary_entry = {
            "side": primary[0], "lobe": "upper", "suv_max": les.suv,
            "suv_peak": round(les.suv * 0.85, 2),
            "volume_ml": round(4 / 3 * np.pi * les.radius_mm ** 3 / 1000, 2),
            "short_axis_mm": 2 * les.radius_mm, "centroid_mm": list(les.centre_mm),
            "label_value": 1, "second_primary": None,
        }
    return {
        "n_stage": n8, "n_stage_9th": n9, "primary_tumor": primary_entry,
        "nodes": node_entries, "negative_node_candidates": neg_entries, "other_lesions": [],
        "probabilities": probs, "trace": [t.to_dict() for t in stage.trace],
        "reasons": list(reasons or []) + list(stage.reasons), "primary_side_used": side,
        "backends": {"anatomy": "classical", "lesions": "suv"}, "version": "0.1.0",
        "reference_suv": {"blood_pool": 1.8, "liver": 2.3, "threshold": 2.9},
    }


def make_case(name: str, **image_kw) -> Case:
    """One of ``"N0"``, ``"N2b"``, ``"N3"`` (9 marks: more than the crop panels) or ``"NX"``.

    Positions are fractions of the field so the same case works at any image size.
    """
    size = image_kw.get("size_xyz", (96, 96, 60))
    spacing = image_kw.get("spacing_xyz", (2.0, 2.0, 3.0))
    hx, hy, hz = ((n - 1) / 2 * s for n, s in zip(size, spacing, strict=True))

    def at(fx: float, fy: float, fz: float, r: float, suv: float) -> Lesion:
        return Lesion((round(fx * hx, 1), round(fy * hy, 1), round(fz * hz, 1)), r, suv)

    right_primary = at(-0.5, 0.0, 0.35, 12.0, 11.0)
    left_primary = at(0.5, -0.05, 0.3, 11.0, 9.5)
    lesions: dict[str, Lesion]
    if name == "N0":
        neg = {"4R": (at(-0.12, -0.1, 0.25, 4.0, 2.0), 0.08)}
        res = result(primary=("right", right_primary), nodes={}, negatives=neg)
        lesions = {"primary": right_primary, "4R": neg["4R"][0]}
    elif name == "N2b":
        nodes = {"4R": (at(-0.13, -0.1, 0.2, 6.0, 6.5), 0.9),
                 "7": (at(0.0, 0.15, -0.15, 6.0, 5.0), 0.8),
                 "10R": (at(-0.22, 0.05, 0.0, 5.0, 4.0), 0.7)}
        res = result(primary=("right", right_primary), nodes=nodes)
        lesions = {"primary": right_primary, **{s: v[0] for s, v in nodes.items()}}
    elif name == "N3":
        nodes = {"1L": (at(0.83, -0.4, 0.85, 5.0, 5.5), 0.8),  # near the image corner
                 "2R": (at(-0.1, -0.15, 0.55, 5.0, 4.5), 0.7),
                 "4R": (at(-0.13, -0.1, 0.2, 6.0, 6.0), 0.9),
                 "4L": (at(0.13, -0.1, 0.2, 6.0, 5.5), 0.85),
                 "5": (at(0.2, -0.25, 0.1, 5.0, 4.0), 0.7),
                 "7": (at(0.0, 0.15, -0.15, 6.0, 5.0), 0.8),
                 "10L": (at(0.22, 0.05, 0.0, 5.0, 4.5), 0.75),
                 "11L": (at(0.32, 0.1, -0.2, 4.0, 3.5), 0.6)}
        res = result(primary=("left", left_primary), nodes=nodes,
                     negatives={"10R": (at(-0.22, 0.05, 0.0, 3.0, 2.2), 0.1)})
        lesions = {"primary": left_primary, **{s: v[0] for s, v in nodes.items()}}
    elif name == "NX":
        neg = {"4L": (at(0.13, -0.1, 0.2, 4.0, 2.1), 0.1)}
        res = result(primary=None, nodes={}, negatives=neg, nx=True,
                     reasons=["no primary tumour found in or next to the lungs",
                              "N cannot be assessed without a primary tumour or a positive node"])
        lesions = {"4L": neg["4L"][0]}
    else:
        raise ValueError(f"unknown case {name!r}")
    ct, pet = images(list(lesions.values()), **image_kw)
    return Case(name, ct, pet, res, lesions)


#: Phantom studies staged by the real pipeline (classical anatomy, SUV lesions) for the slow
#: report test and the example figures in docs/images (PhantomSpec keyword arguments).
PHANTOM_CASES: dict[str, dict] = {
    "N0": {"nodes": (), "primary_side": "right", "seed": 2},
    "N2b": {"nodes": ("4R", "7"), "primary_side": "right", "seed": 3},
    "N3": {"nodes": ("4R", "4L", "10L"), "primary_side": "left", "seed": 5},
    "NX": {"nodes": (), "primary_side": "none", "seed": 6},  # no primary: NX
}


def stage_phantom(name: str):
    """Make the phantom of :data:`PHANTOM_CASES` ``name`` and stage it; returns
    (StageResult, Phantom)."""
    from nstage.phantom import PhantomSpec, make_phantom
    from nstage.pipeline import RunOptions, stage_study
    from nstage.study import ImageGeometry, Study, StudyMeta

    kwargs = dict(PHANTOM_CASES[name])
    for attempt in range(5):
        try:
            phantom = make_phantom(PhantomSpec(**{**kwargs, "seed": kwargs["seed"] + attempt}))
            break
        except RuntimeError as exc:
            # The phantom layout sometimes finds no room for a node at one seed; these tests
            # are about the report, so take the next seed rather than fail on that.
            if "no room" not in str(exc) or attempt == 4:
                raise
    study = Study(phantom.ct, phantom.pet, ImageGeometry.of(phantom.ct),
                  StudyMeta(ct_source=f"phantom {name}", pet_source=f"phantom {name}",
                            suv_source="phantom (SUVbw by construction)"))
    return stage_study(study, RunOptions(anatomy="classical", lesions="suv")), phantom
