"""The only place that knows the order of the steps.

load -> thorax crop -> anatomy -> landmarks -> lesions -> findings -> positivity
-> stations -> staging -> report. Every step is a function of its inputs; this
module wires them, times them, and turns "cannot assess" situations into NX
with reasons instead of errors.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from nstage import __version__, staging
from nstage.anatomy.base import Anatomy
from nstage.study import Study

if TYPE_CHECKING:  # the analysis modules (scipy, scikit-image) load in the background
    from nstage.findings import Findings, Lesion
    from nstage.stations import StationAssignment

# Below this the lungs are not really in view (a slab, a neck or abdomen scan).
MIN_LUNG_VOLUME_ML = 300.0
# Fraction of the thoracic work region the PET must cover to assess nodes.
MIN_PET_COVERAGE = 0.6

OUTPUT_JSON = "n-stage.json"
OUTPUT_OVERLAY = Path("images") / "n-staging-segmentation" / "output.mha"

# Overlay values (DESIGN.md, "Output contract").
LABEL_PRIMARY = 1
LABEL_BY_CATEGORY = {"N1": 2, "N2": 3, "N3": 4}
LABEL_OTHER = 5


@dataclass(frozen=True)
class RunOptions:
    """What to run and how.

    Attributes
    ----------
    anatomy : {"auto", "classical", "totalsegmentator"}
    lesions : {"auto", "suv", "nnunet"}
    lesion_model : Path or None
        nnU-Net v2 trained-model folder (default: ``/opt/ml/model/lesions`` when present).
    folds : tuple of int or None
        nnU-Net folds to use (None: all present).
    fast : bool
        TotalSegmentator 3 mm model.
    device : {"auto", "cpu", "cuda"}
    report : bool
        Write the visual report (PNG + PDF) next to the JSON.
    rules : staging.StagingRules
    thresholds : dict or None
        Overrides of ``resources/thresholds.json``.
    """

    anatomy: str = "auto"
    lesions: str = "auto"
    lesion_model: Path | None = None
    folds: tuple[int, ...] | None = None
    fast: bool = False
    device: str = "auto"
    report: bool = True
    rules: staging.StagingRules = staging.DEFAULT_RULES
    thresholds: dict | None = None


@dataclass
class NodeResult:
    """A regional node candidate with its station and category."""

    lesion: Lesion
    station: StationAssignment
    category: str | None  # N1/N2/N3 for positive nodes, None otherwise


@dataclass
class StageResult:
    """Everything a run produced, for writers and the visual report.

    ``overlay`` is on the canonical full CT grid (``study.ct``).
    """

    result: dict
    overlay: np.ndarray
    study: Study
    work_ct: sitk.Image | None = None
    work_pet: sitk.Image | None = None
    box: tuple[slice, slice, slice] | None = None
    findings: Findings | None = None
    nodes: list[NodeResult] = field(default_factory=list)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def timed(self, name: str, fn, *args, **kwargs):
        with self.step(name):
            return fn(*args, **kwargs)


def _pet_coverage(study: Study, work_ct: sitk.Image) -> float:
    """Fraction of the work region's voxel centres that lie inside the PET field of view.

    Inside means within the PET's voxel edges, as for the nearest-neighbour resampling used
    for grids that are not axis-aligned; aligned grids are counted per axis, without
    resampling a volume of ones.
    """
    pet = study.pet
    identity = np.eye(3).ravel()
    if np.allclose(pet.GetDirection(), identity) and np.allclose(work_ct.GetDirection(),
                                                                 identity):
        fraction = 1.0
        for axis in range(3):
            centres = (work_ct.GetOrigin()[axis]
                       + np.arange(work_ct.GetSize()[axis]) * work_ct.GetSpacing()[axis])
            index = (centres - pet.GetOrigin()[axis]) / pet.GetSpacing()[axis]
            fraction *= float(np.mean((index >= -0.5) & (index < pet.GetSize()[axis] - 0.5)))
        return fraction
    ones = sitk.Image(pet.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(pet)
    inside = sitk.Resample(ones, work_ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                           sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(inside).mean())


def stage_study(study: Study, options: RunOptions = RunOptions(),
                anatomy: Anatomy | None = None) -> StageResult:
    """Run the whole analysis on a loaded study; never writes files.

    Returns NX with reasons (not an exception) when the study is readable but
    cannot be staged: thorax not in view, PET not covering the thorax, no primary.

    Parameters
    ----------
    study : Study
    options : RunOptions
    anatomy : Anatomy, optional
        A given anatomy (e.g. a phantom's ground truth) used instead of running the
        ``options.anatomy`` backend, to separate station logic from segmentation errors.
        It must be on the full CT grid (``study.ct``) or already on the thoracic work grid;
        a full-grid anatomy is cropped to the work box here.
    """
    from nstage import anatomy as anatomy_mod
    from nstage import findings as findings_mod
    from nstage import landmarks as landmarks_mod
    from nstage import lesions as lesions_mod
    from nstage import positivity, stations
    from nstage.anatomy.crop import thorax_box
    from nstage.geometry import crop, paste

    timer = _Timer()
    reasons: list[str] = []
    thresholds = positivity.load_thresholds(options.thresholds)
    full_shape = study.ct.GetSize()[::-1]

    with timer.step("crop"):
        box = thorax_box(study.ct)
        work_ct = crop(study.ct, box)
        work_pet = study.pet_on(work_ct)
        coverage = _pet_coverage(study, work_ct)
    if coverage < MIN_PET_COVERAGE:
        reasons.append(
            f"the PET covers only {coverage:.0%} of the thoracic region of the CT; "
            "nodes outside the PET field of view cannot be assessed"
        )

    with timer.step("anatomy"):
        if anatomy is None:
            anatomy = anatomy_mod.segment(work_ct, backend=options.anatomy, fast=options.fast,
                                          device=options.device)
        else:
            anatomy = _anatomy_on_work_grid(anatomy, study.ct, work_ct, box)
    lung_ml = {s: anatomy.volume_ml(f"lung_{s}") for s in ("left", "right")}
    thorax_in_view = min(lung_ml.values()) >= MIN_LUNG_VOLUME_ML
    if not thorax_in_view:
        reasons.append(
            "thorax not in view: lungs of {left:.0f} ml (left) and {right:.0f} ml (right) found, "
            "both lungs are needed to stage the mediastinum".format(**lung_ml)
        )

    # Landmarks and the findings' anatomy masks depend on the anatomy alone: a second thread
    # computes them while the lesions are segmented (numpy and scipy release the GIL in
    # their loops, so on two cores they cost almost no wall time).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nstage-anatomy-side") as pool:
        landmarks_job = pool.submit(timer.timed, "landmarks", landmarks_mod.find, anatomy)
        context_job = pool.submit(findings_mod.measurement_context, anatomy, work_ct,
                                  thresholds)
        with timer.step("lesions"):
            lesion_mask = lesions_mod.segment(
                work_ct, work_pet, anatomy, backend=options.lesions,
                model_dir=options.lesion_model, folds=options.folds, device=options.device,
                thresholds=thresholds,
            )
        lms = landmarks_job.result()
        context = context_job.result()

    with timer.step("findings"):
        # SUVs are measured on the PET's own grid: resampling onto the CT lowers the
        # SUVmax of a small node by up to ~10%.
        component_labels, lesions = findings_mod.measure(
            lesion_mask, work_ct, work_pet, anatomy, thresholds, return_labels=True,
            pet_native=study.pet, context=context)
        found = findings_mod.classify(lesions, anatomy, lms, thresholds)

    node_results: list[NodeResult] = []
    others: list[Lesion] = list(found.others)
    with timer.step("stations"):
        for lesion in found.nodes:
            assignment = stations.assign(lesion, lms)
            if assignment.station is None:
                lesion.kind = "other"
                lesion.kind_reason = assignment.reason
                others.append(lesion)
                continue
            positive, probability, why = positivity.assess(
                lesion, lesion_mask.reference_suv, thresholds)
            lesion.positive, lesion.probability, lesion.positivity_reason = positive, probability, why
            node_results.append(NodeResult(lesion, assignment, None))

    primary = found.primary
    if primary is None:
        primary_side = "unknown"
        reasons.append("no primary tumour found in or next to the lungs")
    elif found.second_primary is not None and found.second_primary.side != primary.side:
        primary_side = "unknown"
        reasons.append("tumours in both lungs: the side of the primary is ambiguous")
    else:
        primary_side = primary.side if primary.side in ("left", "right") else "unknown"

    with timer.step("staging"):
        positive_nodes = [n for n in node_results if n.lesion.positive]
        nstage = staging.n_category(primary_side, [n.station.station for n in positive_nodes],
                                    options.rules)
        for n in positive_nodes:
            n.category = _category_of(n.station.station, primary_side, options.rules)
        probabilities = staging.category_probabilities(
            primary_side,
            [(n.station.station, n.lesion.probability) for n in node_results],
            options.rules,
        )

    n8, n9 = nstage.n_stage, nstage.n_stage_9th
    all_reasons = list(reasons) + list(nstage.reasons)
    if not thorax_in_view or coverage < MIN_PET_COVERAGE:
        n8, n9 = "NX", "NX"
    elif primary is None and not positive_nodes:
        n8, n9 = "NX", "NX"
        all_reasons.append("N cannot be assessed without a primary tumour or a positive node")
    if n8 == "NX":
        probabilities = {k: None for k in ("N0", "N1", "N2", "N3")}

    with timer.step("overlay"):
        overlay_crop = _overlay(component_labels, primary, found.second_primary, node_results,
                                others)
        overlay = paste(study.ct, overlay_crop, box)

    result = _result_dict(
        study=study, options=options, n8=n8, n9=n9, nstage=nstage, primary=primary,
        second_primary=found.second_primary, node_results=node_results, others=others,
        probabilities=probabilities, reasons=all_reasons, anatomy=anatomy, landmarks=lms,
        lesion_mask=lesion_mask, work_ct=work_ct, box=box, full_shape=full_shape,
        timings=timer.timings, notes=list(found.notes),
    )
    return StageResult(result=result, overlay=overlay, study=study, work_ct=work_ct,
                       work_pet=work_pet, box=box, findings=found, nodes=node_results)


def _anatomy_on_work_grid(anatomy: Anatomy, full_ct: sitk.Image, work_ct: sitk.Image,
                          box: tuple[slice, slice, slice]) -> Anatomy:
    """A given anatomy on the work grid: cropped by ``box`` when it is on the full CT grid."""
    work_shape = work_ct.GetSize()[::-1]
    if anatomy.labels.shape == work_shape:
        return anatomy
    if anatomy.labels.shape != full_ct.GetSize()[::-1]:
        raise ValueError(f"given anatomy of shape {anatomy.labels.shape} is on neither the CT "
                         f"grid {full_ct.GetSize()[::-1]} nor the work grid {work_shape}")
    return replace(
        anatomy,
        labels=np.ascontiguousarray(anatomy.labels[box]),
        reference=work_ct,
        extra_masks={k: np.ascontiguousarray(m[box]) for k, m in anatomy.extra_masks.items()},
        notes=list(anatomy.notes),
    )


def _category_of(station: str, primary_side: str, rules: staging.StagingRules) -> str | None:
    """8th edition category a positive node implies; None when it depends on an unknown side."""
    category, _ = staging.node_category(station, primary_side, rules)
    return category if category in LABEL_BY_CATEGORY else None


def _overlay(component_labels: np.ndarray, primary: Lesion | None, second: Lesion | None,
             node_results: list[NodeResult], others: list[Lesion]) -> np.ndarray:
    """uint8 overlay on the work grid: 1 primary, 2/3/4 N1/N2/N3 node, 5 other lesion."""
    lut = np.zeros(int(component_labels.max()) + 1, dtype=np.uint8)
    for lesion in others:
        lut[lesion.id] = LABEL_OTHER
    for n in node_results:
        if n.lesion.positive and n.category in LABEL_BY_CATEGORY:
            lut[n.lesion.id] = LABEL_BY_CATEGORY[n.category]
        else:
            # Positive nodes whose category depends on the unknown primary side, and
            # node candidates below the criteria, are shown but not counted.
            lut[n.lesion.id] = LABEL_OTHER
    for p in (primary, second):
        if p is not None:
            lut[p.id] = LABEL_PRIMARY
    return lut[component_labels]


def _r(x: float | None, nd: int = 2) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), nd)


def _pt(p) -> list[float]:
    return [round(float(v), 1) for v in p]


def _node_entry(n: NodeResult) -> dict:
    les = n.lesion
    label = LABEL_BY_CATEGORY.get(n.category, LABEL_OTHER) if les.positive else LABEL_OTHER
    if les.positive and n.category:
        reason = f"{n.category}: {les.positivity_reason}; station {n.station.reason}"
    elif les.positive:
        reason = (f"not counted: category depends on the side of the primary, which is unknown; "
                  f"station {n.station.reason}")
    else:
        reason = f"not counted: {les.positivity_reason}; station {n.station.reason}"
    return {
        "id": les.id,
        "station": n.station.station,
        "side": n.station.side,
        "n_category": n.category if les.positive else None,
        "suv_max": _r(les.suv_max),
        "suv_peak": _r(les.suv_peak),
        "suv_mean": _r(les.suv_mean),
        "volume_ml": _r(les.volume_ml),
        "tlg": _r(les.tlg),
        "short_axis_mm": _r(les.short_axis_mm, 1),
        "centroid_mm": _pt(les.centroid_mm),
        "label_value": label,
        "probability": _r(les.probability, 3),
        "station_confidence": _r(n.station.confidence, 2),
        "station_approximated": n.station.approximated,
        "direct_extension": bool(les.direct_extension),
        "reason": " ".join(reason.split()),
    }


def _lesion_brief(les: Lesion, label: int) -> dict:
    return {
        "id": les.id,
        "suv_max": _r(les.suv_max),
        "suv_peak": _r(les.suv_peak),
        "volume_ml": _r(les.volume_ml),
        "short_axis_mm": _r(les.short_axis_mm, 1),
        "centroid_mm": _pt(les.centroid_mm),
        "label_value": label,
        "reason": " ".join((les.kind_reason or "").split()),
    }


def _result_dict(*, study, options, n8, n9, nstage, primary, second_primary, node_results,
                 others, probabilities, reasons, anatomy, landmarks, lesion_mask, work_ct, box,
                 full_shape, timings, notes) -> dict:
    primary_entry = None
    if primary is not None:
        primary_entry = {
            "side": primary.side,
            "lobe": _lobe_of(primary),
            "suv_max": _r(primary.suv_max),
            "suv_peak": _r(primary.suv_peak),
            "volume_ml": _r(primary.volume_ml),
            "short_axis_mm": _r(primary.short_axis_mm, 1),
            "centroid_mm": _pt(primary.centroid_mm),
            "label_value": LABEL_PRIMARY,
            "second_primary": None if second_primary is None else {
                "side": second_primary.side,
                "suv_max": _r(second_primary.suv_max),
                "volume_ml": _r(second_primary.volume_ml),
                "centroid_mm": _pt(second_primary.centroid_mm),
            },
        }
    positive = [n for n in node_results if n.lesion.positive]
    negative = [n for n in node_results if not n.lesion.positive]
    carina = landmarks.get("carina")
    return {
        "n_stage": n8,
        "n_stage_9th": n9,
        "primary_tumor": primary_entry,
        "nodes": [_node_entry(n) for n in sorted(positive, key=lambda n: n.lesion.id)],
        "negative_node_candidates": [_node_entry(n) for n in negative],
        "other_lesions": [_lesion_brief(o, LABEL_OTHER) for o in others],
        "suppressed_uptake": [u.to_dict() for u in lesion_mask.suppressed],
        "probabilities": {k: _r(v, 4) for k, v in probabilities.items()},
        "trace": [
            {"station": t.station, "side": t.station_side, "category": t.category,
             "rule": t.rule} for t in nstage.trace
        ],
        "reasons": reasons,
        "primary_side_used": nstage.primary_side,
        "backends": {"anatomy": anatomy.backend, "lesions": lesion_mask.backend},
        "version": __version__,
        "edition_rules": staging.edition_rules(options.rules),
        "reference_suv": {k: _r(v, 3) for k, v in lesion_mask.reference_suv.items()},
        "landmarks": {
            "carina_mm": None if carina is None or carina.point_mm is None
            else _pt(carina.point_mm),
            "approximated": sorted(k for k, v in landmarks.points.items() if v.approximated),
        },
        "inputs": {
            "ct": study.meta.ct_source,
            "pet": study.meta.pet_source,
            "suv_source": study.meta.suv_source,
            "ct_size": list(study.ct_geometry.size),
            "thorax_crop_size": list(work_ct.GetSize()),
        },
        "notes": list(study.meta.notes) + list(anatomy.notes) + list(landmarks.notes)
        + list(lesion_mask.notes) + notes,
        "timings_s": timings,
    }


def _lobe_of(lesion: Lesion) -> str | None:
    best, frac = None, 0.0
    for name, f in lesion.inside.items():
        if name.startswith("lung_") and "lobe" in name and f > frac:
            best, frac = name, f
    if best is None:
        return None
    return best.split("_")[1]  # lung_upper_lobe_left -> upper


def write_outputs(staged: StageResult, out_dir: Path, options: RunOptions,
                  started: float | None = None) -> dict:
    """Write the overlay, the visual report and n-stage.json, each atomically.

    The result is validated against the schema before anything is written, and the JSON
    goes last: its presence means the case finished (``nstage batch`` resumes on it).
    A failure to draw the visual report is recorded in ``notes``, not fatal: the report
    is an extra, the JSON and overlay are the contract.
    """
    from nstage.io import write_json_atomic, write_label_image
    from nstage.schema import validate_result

    out_dir = Path(out_dir)
    validate_result(staged.result)
    t0 = time.perf_counter()
    write_label_image(staged.overlay, staged.study.ct, staged.study.ct_geometry,
                      out_dir / OUTPUT_OVERLAY)
    if options.report:
        error = _draw_report(staged, out_dir)
        if error:
            staged.result["notes"].append(f"visual report not written: {error}")
    timings = staged.result["timings_s"]
    timings["write"] = round(time.perf_counter() - t0, 3)
    if started is not None:
        timings["total"] = round(time.perf_counter() - started, 3)
    write_json_atomic(staged.result, out_dir / OUTPUT_JSON)
    return staged.result


def _draw_report(staged: StageResult, out_dir: Path) -> str | None:
    """Write the visual report; the error as one line, or None when it was written."""
    from nstage.figure import write_report

    try:
        write_report(staged, out_dir)
    except Exception as exc:  # the figure must never cost the user the result
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


# Imported in a background thread while the images are read: about 0.4 s for scipy and
# scikit-image, 0.4 s for matplotlib, that reading (decompression, which releases the GIL)
# hides.
_ANALYSIS_MODULES = ("nstage.anatomy.classical", "nstage.lesions.suv", "nstage.findings",
                     "nstage.landmarks", "nstage.stations", "nstage.positivity")
_REPORT_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg",
                   "matplotlib.backends.backend_pdf", "nstage.figure")


def _preload(report: bool) -> threading.Thread:
    """Start importing the modules the run needs next; join the thread before staging.

    Meanwhile the caller only reads the images, which imports nothing but the I/O modules
    (pydicom for DICOM): no module is imported from both threads, so no import waits on
    the other thread's.
    """
    def work() -> None:
        for name in _ANALYSIS_MODULES + (_REPORT_MODULES if report else ()):
            try:
                importlib.import_module(name)
            except Exception:  # the real import later raises it, with context
                return

    thread = threading.Thread(target=work, name="nstage-preload")
    thread.start()
    return thread


def run_case(ct: str | Path, pet: str | Path | None, out_dir: str | Path,
             options: RunOptions = RunOptions(), *, override=None) -> dict:
    """Load, stage and write one case. Raises :class:`nstage.errors.NStageError` on bad input.

    Parameters
    ----------
    ct, pet : path
        CT and PET (files or DICOM folders), or a Grand Challenge input folder / DICOM
        study folder as ``ct`` with ``pet=None``.
    out_dir : path
        Receives ``n-stage.json``, ``images/n-staging-segmentation/output.mha`` and, with
        ``options.report``, ``n-stage-report.png`` / ``.pdf``.
    override : nstage.io.SUVOverride, optional
        Weight/dose/times for PET images without usable headers.
    """
    from nstage.io import load_study

    t0 = time.perf_counter()
    preloading = _preload(options.report)
    try:
        study = load_study(ct, pet, override=override)
    finally:
        preloading.join()
    t_load = round(time.perf_counter() - t0, 3)
    staged = stage_study(study, options)
    staged.result["timings_s"] = {"load": t_load, **staged.result["timings_s"]}
    return write_outputs(staged, Path(out_dir), options, started=t0)


def options_with(options: RunOptions, **changes) -> RunOptions:
    return replace(options, **changes)
