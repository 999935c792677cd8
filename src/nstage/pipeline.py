"""The only place that knows the order of the steps.

load -> thorax crop -> anatomy -> landmarks (the frame) -> lesions -> measurements
-> placement (primary / nodes with stations / lung lesions / other) -> positivity
-> staging (N and P(N)) -> report. Every step is a function of its inputs; this module
wires them, times them, and turns "cannot assess" situations into NX with reasons instead
of errors.
"""

from __future__ import annotations

import errno
import importlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from nstage import __version__, staging
from nstage.anatomy.base import Anatomy
from nstage.forked import Forked
from nstage.progress import QUIET, StepReporter
from nstage.progress import reporter as progress_reporter
from nstage.study import Study

if TYPE_CHECKING:  # the analysis modules (scipy, scikit-image) load in the background
    from nstage.placement import Placement, Placements
    from nstage.positivity import NodeCall

OUTPUT_JSON = "n-stage.json"
OUTPUT_OVERLAY = Path("images") / "n-staging-segmentation" / "output.mha"
# Written next to n-stage.json when the CT was read from DICOM (for PACS, OHIF, 3D Slicer).
OUTPUT_DICOM_SEG = "n-staging-segmentation.dcm"
# Every file a run writes into its output folder (relative paths): a rerun removes those it
# does not write again, and never touches any other file.
OUTPUT_FILES = (Path(OUTPUT_JSON), OUTPUT_OVERLAY, Path("n-stage-report.png"),
                Path("n-stage-report.pdf"), Path(OUTPUT_DICOM_SEG))

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
    lesion_checkpoint : {"final", "best"}
        nnU-Net checkpoint of each fold (``checkpoint_final.pth`` / ``checkpoint_best.pth``).
    fast : bool
        TotalSegmentator 3 mm model.
    device : {"auto", "cpu", "cuda"}
    report : bool
        Write the visual report (PNG + PDF) next to the JSON.
    rules : staging.StagingRules
    thresholds : dict or None
        Overrides of ``resources/thresholds.json``.
    anatomy_seg : tuple of Path or None
        Precomputed TotalSegmentator results (folders of masks or multilabel files); their
        classes win and ``anatomy`` fills the rest (see :mod:`nstage.anatomy.precomputed`).
    anatomy_seg_task : str or None
        TotalSegmentator task naming a multilabel file without names in its header.
    progress : bool
        Print one line per step on stderr (``nstage: anatomy ... 3.1 s``) and an elapsed bar
        for long model steps (see :mod:`nstage.progress`); the CLI sets it unless ``--quiet``.
    max_memory_gb : float or None
        Memory available to the run (GB); inputs whose voxels do not fit are refused before
        they are read. None: the container's limit or the physical memory.
    allow_different_studies : bool
        Stage a CT and PET whose PatientID, StudyInstanceUID or FrameOfReferenceUID differ
        (with a note) instead of refusing them.
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
    lesion_checkpoint: str = "final"
    anatomy_seg: tuple[Path, ...] | None = None
    anatomy_seg_task: str | None = None
    progress: bool = False
    max_memory_gb: float | None = None
    allow_different_studies: bool = False


@dataclass(frozen=True)
class NodeResult:
    """A regional node candidate: its placement (station), its positivity call and the
    8th edition category it implies when counted (None otherwise)."""

    placement: Placement
    call: NodeCall
    category: str | None

    @property
    def counted(self) -> bool:
        return self.call.positive and self.category is not None


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
    placements: Placements | None = None
    nodes: list[NodeResult] = field(default_factory=list)


class _Timer:
    def __init__(self, reporter: StepReporter = QUIET) -> None:
        self.timings: dict[str, float] = {}
        self.reporter = reporter

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            with self.reporter.activity(name):
                yield
        finally:
            seconds = time.perf_counter() - t0
            self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
        self.reporter.part_done(name, seconds)  # only after success: no line for a failed step

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


@dataclass(frozen=True)
class UnreadableRegion:
    """Where one input held no finite value (NaN/inf); see :attr:`nstage.study.Study.invalid`.

    Attributes
    ----------
    modality : {"CT", "PET"}
    volume_ml : float
        Volume of those voxels on the modality's own grid (ml).
    z_range_mm : tuple of float
        Lowest and highest voxel centre (mm, LPS: +z superior).
    affects_staging : bool
        The region lies in the thoracic region that is staged (for the PET: inside the body
        there, where a node or the primary could hide).
    """

    modality: str
    volume_ml: float
    z_range_mm: tuple[float, float]
    affects_staging: bool

    def reason(self) -> str:
        where = (f"{self.volume_ml:.1f} ml at z {self.z_range_mm[0]:.0f} to "
                 f"{self.z_range_mm[1]:.0f} mm")
        if self.affects_staging:
            return (f"{self.modality} has no valid values (NaN/inf) in {where}, inside the "
                    "thoracic region that is staged: lesions there cannot be assessed")
        return (f"{self.modality} has no valid values (NaN/inf) in {where}, outside the body "
                "or the thoracic region that is staged: it cannot change the N stage")


def _unreadable_regions(study: Study, work_ct: sitk.Image, anatomy: Anatomy
                        ) -> list[UnreadableRegion]:
    """The input regions without a finite value, and whether each can hide what is staged.

    A CT region inside the work box makes the anatomy unreliable there; a PET region inside
    the body within the work box (the ``body`` mask when the anatomy has one) can hide a node
    or the primary. Either makes the study NX (see :func:`stage_study`).
    """
    regions = []
    for modality, mask in sorted(study.invalid.items()):
        arr = sitk.GetArrayViewFromImage(mask)
        slices = np.flatnonzero(arr.any(axis=(1, 2)))
        if slices.size == 0:
            continue
        voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
        z = [mask.TransformIndexToPhysicalPoint((0, 0, int(k)))[2]
             for k in (slices[0], slices[-1])]
        on_work = sitk.Resample(mask, work_ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                sitk.sitkUInt8)
        hit = sitk.GetArrayViewFromImage(on_work) > 0
        if modality == "PET" and anatomy.has("body"):
            hit = hit & anatomy.mask("body")
        regions.append(UnreadableRegion(modality, round(float(arr.sum()) * voxel_ml, 2),
                                        (min(z), max(z)), bool(hit.any())))
    return regions


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
    from nstage import lesions as lesions_mod
    from nstage import placement, positivity, stations
    from nstage.anatomy.crop import thorax_box
    from nstage.geometry import crop, paste

    timer = _Timer(progress_reporter(options.progress))
    reasons: list[str] = []
    thresholds = positivity.load_thresholds(options.thresholds)
    ath = thresholds["assessment"]

    with timer.step("crop"):
        box = thorax_box(study.ct)
        work_ct = crop(study.ct, box)
        work_pet = study.pet_on(work_ct)
        coverage = _pet_coverage(study, work_ct)
    covered = coverage >= ath["min_pet_coverage"]
    if not covered:
        reasons.append(
            f"the PET covers only {coverage:.0%} of the thoracic region of the CT; "
            "nodes outside the PET field of view cannot be assessed"
        )

    with timer.step("anatomy"):
        if anatomy is None:
            anatomy = anatomy_mod.segment(work_ct, backend=options.anatomy, fast=options.fast,
                                          device=options.device, precomputed=options.anatomy_seg,
                                          precomputed_task=options.anatomy_seg_task)
        else:
            anatomy = _anatomy_on_work_grid(anatomy, study.ct, work_ct, box)
    unreadable = _unreadable_regions(study, work_ct, anatomy)
    reasons.extend(r.reason() for r in unreadable)
    lung_ml = {s: anatomy.volume_ml(f"lung_{s}") for s in ("left", "right")}
    thorax_in_view = min(lung_ml.values()) >= ath["min_lung_volume_ml"]
    if not thorax_in_view:
        reasons.append(
            "thorax not in view: lungs of {left:.0f} ml (left) and {right:.0f} ml (right) found, "
            "both lungs are needed to stage the mediastinum".format(**lung_ml)
        )

    # Landmarks and the findings' anatomy masks depend on the anatomy alone: a forked child
    # computes them while the lesions are segmented here (scipy.ndimage holds the GIL, so a
    # thread would mostly wait; without fork they are computed here afterwards).
    side = Forked(_anatomy_side, anatomy, work_ct, thresholds, name="nstage-anatomy-side")
    try:
        with timer.step("lesions"):
            lesion_mask = lesions_mod.segment(
                work_ct, work_pet, anatomy, backend=options.lesions,
                model_dir=options.lesion_model, folds=options.folds, device=options.device,
                thresholds=thresholds, checkpoint=options.lesion_checkpoint,
                pet_native=study.pet,
            )
    except BaseException:
        side.cancel()
        raise
    lms, landmark_s, packed = side.result()
    timer.timings["landmarks"] = round(landmark_s, 3)
    timer.reporter.part_done("landmarks", landmark_s)
    context = findings_mod.measurement_context_from(anatomy, packed)
    # Never stage on a wrong frame (issue 16): anatomy that always holds, checked here.
    frame_failures = _frame_failures(anatomy, lms, thresholds) if thorax_in_view else []
    reasons.extend(f.reason for f in frame_failures)

    with timer.step("findings"):
        # SUVs are measured on the PET's own grid: resampling onto the CT lowers the
        # SUVmax of a small node by up to ~10%.
        component_labels, lesions = findings_mod.measure(
            lesion_mask, work_ct, work_pet, anatomy, thresholds, return_labels=True,
            pet_native=study.pet, context=context)
        placed = placement.place(lesions, lms, thresholds,
                                 stations.station_settings(thresholds),
                                 lesion_mask.reference_suv)

    with timer.step("staging"):
        node_results, nstage, probabilities = _stage(placed, lesion_mask.reference_suv,
                                                     thresholds, options.rules)
    if placed.primary is None:
        reasons.append("no primary tumour found in or next to the lungs")
    elif placed.second_primary is not None:
        reasons.append("tumours of comparable size in both lungs: the side of the primary is "
                       "ambiguous")

    n8, n9 = nstage.n_stage, nstage.n_stage_9th
    all_reasons = list(reasons) + list(nstage.reasons)
    counted = [n for n in node_results if n.call.positive]
    if (not thorax_in_view or not covered or frame_failures
            or any(r.affects_staging for r in unreadable)):
        n8, n9 = "NX", "NX"
    elif placed.primary is None and not counted:
        n8, n9 = "NX", "NX"
        all_reasons.append("N cannot be assessed without a primary tumour or a positive node")

    with timer.step("overlay"):
        overlay_crop = _overlay(component_labels, placed, node_results)
        overlay = paste(study.ct, overlay_crop, box)

    result = _result_dict(
        study=study, options=options, n8=n8, n9=n9, nstage=nstage, placed=placed,
        node_results=node_results, probabilities=probabilities, reasons=all_reasons,
        anatomy=anatomy, landmarks=lms, lesion_mask=lesion_mask, work_ct=work_ct,
        timings=timer.timings, thresholds=thresholds,
    )
    return StageResult(result=result, overlay=overlay, study=study, work_ct=work_ct,
                       work_pet=work_pet, box=box, placements=placed, nodes=node_results)


def _anatomy_side(anatomy: Anatomy, work_ct: sitk.Image, thresholds: dict):
    """Landmarks, their seconds, and the findings' anatomy masks (bit-packed: they cross a
    process boundary, :class:`nstage.forked.Forked`)."""
    from nstage import findings, landmarks

    t0 = time.perf_counter()
    lms = landmarks.find(anatomy, thresholds)
    seconds = time.perf_counter() - t0
    return lms, seconds, findings.measurement_context(anatomy, work_ct, thresholds).packed()


def _stage(placed: Placements, reference_suv: dict, thresholds: dict,
           rules: staging.StagingRules):
    """Positivity of every node candidate, the N category from the counted ones, and P(N)
    over node involvement and station alternatives."""
    from nstage import positivity

    side = placed.primary_side
    results = []
    for p in placed.nodes:
        call = positivity.assess(p.lesion, reference_suv, thresholds,
                                 symmetric_hilar=p.symmetric_hilar)
        category = _category_of(p.station.station, side, rules) if call.positive else None
        results.append(NodeResult(p, call, category))
    nstage = staging.n_category(side, [n.placement.station.station for n in results
                                       if n.call.positive], rules)
    probabilities = staging.n_probabilities(
        side, [(n.placement.station.distribution(), n.call.probability) for n in results],
        rules)
    return results, nstage, probabilities


def _frame_failures(anatomy: Anatomy, landmarks, thresholds: dict) -> list:
    """Plausibility failures of the anatomical frame (:mod:`nstage.plausibility`)."""
    from nstage import plausibility

    return plausibility.check_frame(landmarks, plausibility.frame_facts(anatomy),
                                    thresholds["plausibility"])


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


def _overlay(component_labels: np.ndarray, placed: Placements,
             node_results: list[NodeResult]) -> np.ndarray:
    """uint8 overlay on the work grid: 1 primary, 2/3/4 N1/N2/N3 node, 5 other lesion."""
    lut = np.zeros(int(component_labels.max()) + 1, dtype=np.uint8)
    for p in (*placed.others, *placed.lung_lesions):
        lut[p.id] = LABEL_OTHER
    for n in node_results:
        # Node candidates below the criteria, and positive nodes whose category depends on
        # the unknown primary side, are shown but not counted.
        lut[n.placement.id] = LABEL_BY_CATEGORY[n.category] if n.counted else LABEL_OTHER
    for p in (placed.primary, placed.second_primary, *placed.primary_parts):
        if p is not None:
            lut[p.id] = LABEL_PRIMARY
    return lut[component_labels]


def _r(x: float | None, nd: int = 2) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), nd)


def _pt(p) -> list[float]:
    return [round(float(v), 1) for v in p]


def ct_slice_of(point_mm, study: Study) -> tuple[int | None, int | None]:
    """The slice of the INPUT CT holding ``point_mm``, as a user finds it in a viewer.

    Returns
    -------
    (index, instance_number)
        0-based index along the third axis of the CT grid as given (``Study.ct_geometry``,
        not the canonical copy), None outside the CT; and that slice's DICOM InstanceNumber
        (the image number PACS shows) when the CT was read from DICOM, else None.
    """
    g = study.ct_geometry
    direction = np.reshape(g.direction, (3, 3))
    # ITK: point = origin + direction @ (spacing * index)
    index = np.linalg.solve(direction, np.subtract(point_mm, g.origin)) / np.asarray(g.spacing)
    k = int(round(float(index[2])))
    if not 0 <= k < g.size[2]:
        return None, None
    numbers = study.meta.ct_instance_numbers
    return k, (numbers[k] if k < len(numbers) else None)


def _node_entry(n: NodeResult, study: Study) -> dict:
    p, call, les = n.placement, n.call, n.placement.lesion
    slice_index, instance_number = ct_slice_of(les.centroid_mm, study)
    st = p.station
    label = LABEL_BY_CATEGORY[n.category] if n.counted else LABEL_OTHER
    if n.counted:
        reason = f"{n.category}: {call.reason}; station {st.reason}"
    elif call.positive:
        reason = (f"not counted: category depends on the side of the primary, which is unknown; "
                  f"station {st.reason}")
    else:
        reason = f"not counted: {call.reason}; station {st.reason}"
    return {
        "id": les.id,
        "station": st.station,
        "side": st.side,
        "n_category": n.category if call.positive else None,
        "suv_max": _r(les.suv_max),
        "suv_peak": _r(les.suv_peak),
        "suv_mean": _r(les.suv_mean),
        "volume_ml": _r(les.volume_ml),
        "tlg": _r(les.tlg),
        "short_axis_mm": _r(les.short_axis_mm, 1),
        "centroid_mm": _pt(les.centroid_mm),
        "ct_slice_index": slice_index,
        "ct_instance_number": instance_number,
        "label_value": label,
        "probability": call.probability,
        "station_confidence": _r(st.confidence, 3),
        "station_approximated": st.approximated,
        "alternatives": [{"station": a.station, "probability": _r(a.probability, 3),
                          "boundary": a.boundary, "distance_mm": a.distance_mm}
                         for a in st.alternatives],
        "direct_extension": p.contiguous_with_primary,
        "symmetric_hilar": p.symmetric_hilar,
        "reason": " ".join(f"{p.reason}; {reason}".split()),
    }


def _lesion_brief(p: Placement, label: int) -> dict:
    les = p.lesion
    entry = {
        "id": les.id,
        "suv_max": _r(les.suv_max),
        "suv_peak": _r(les.suv_peak),
        "volume_ml": _r(les.volume_ml),
        "short_axis_mm": _r(les.short_axis_mm, 1),
        "centroid_mm": _pt(les.centroid_mm),
        "label_value": label,
        "reason": " ".join(p.reason.split()),
    }
    if p.kind == "lung_lesion":
        entry.update(side=p.side, relation=p.relation, second_primary=p.second_primary)
    return entry


def _primary_entry(placed: Placements) -> dict | None:
    primary, second = placed.primary, placed.second_primary
    if primary is None:
        return None
    les = primary.lesion
    return {
        "id": les.id,
        "side": primary.side,
        "lobe": _lobe_of(les),
        "zone": primary.zone,
        "suv_max": _r(les.suv_max),
        "suv_peak": _r(les.suv_peak),
        "volume_ml": _r(les.volume_ml + sum(p.lesion.volume_ml for p in placed.primary_parts)),
        "short_axis_mm": _r(les.short_axis_mm, 1),
        "centroid_mm": _pt(les.centroid_mm),
        "label_value": LABEL_PRIMARY,
        "reason": " ".join(primary.reason.split()),
        "parts": [{"id": p.id, "volume_ml": _r(p.lesion.volume_ml), "reason": p.reason}
                  for p in placed.primary_parts],
        "second_primary": None if second is None else {
            "side": second.side,
            "suv_max": _r(second.lesion.suv_max),
            "volume_ml": _r(second.lesion.volume_ml),
            "centroid_mm": _pt(second.lesion.centroid_mm),
        },
    }


def _most_probable(n8: str, n9: str, probabilities, counted: list[NodeResult]) -> dict:
    """The most probable categories, and why the reported stage differs when it does."""
    top8, top9 = probabilities.most_probable()
    agrees = n8 == "NX" or (probabilities.n8[n8] >= probabilities.n8[top8] - 1e-9
                            and probabilities.n9[n9] >= probabilities.n9[top9] - 1e-9)
    why = None
    if not agrees:
        why = (f"the stage counts each node with p >= 0.5 ({len(counted)} counted); "
               f"P({top8}) = {probabilities.n8[top8]:.2f} is larger than P({n8}) = "
               f"{probabilities.n8[n8]:.2f} because several uncertain nodes or station "
               "alternatives add up")
    return {"n_stage": top8, "n_stage_9th": top9, "agrees_with_stage": agrees,
            "why_not": why}


def _result_dict(*, study, options, n8, n9, nstage, placed, node_results, probabilities,
                 reasons, anatomy, landmarks, lesion_mask, work_ct, timings,
                 thresholds) -> dict:
    from nstage.thresholds import differences

    positive = [n for n in node_results if n.call.positive]
    negative = [n for n in node_results if not n.call.positive]
    carina = landmarks.get("carina")
    nx = n8 == "NX"
    return {
        "n_stage": n8,
        "n_stage_9th": n9,
        "primary_tumor": _primary_entry(placed),
        "nodes": [_node_entry(n, study) for n in sorted(positive, key=lambda n: n.placement.id)],
        "negative_node_candidates": [_node_entry(n, study) for n in negative],
        "lung_lesions": [_lesion_brief(p, LABEL_OTHER) for p in placed.lung_lesions],
        "other_lesions": [_lesion_brief(p, LABEL_OTHER) for p in placed.others],
        "probabilities": {k: None if nx else _r(v, 4) for k, v in probabilities.n8.items()},
        "probabilities_9th": {k: None if nx else _r(v, 4)
                              for k, v in probabilities.n9.items()},
        "most_probable": None if nx else _most_probable(n8, n9, probabilities, positive),
        "suppressed_uptake": [u.to_dict() for u in lesion_mask.suppressed],
        "trace": [
            {"station": t.station, "side": t.station_side, "category": t.category,
             "rule": t.rule} for t in nstage.trace
        ],
        "reasons": reasons,
        "primary_side_used": nstage.primary_side,
        "backends": {"anatomy": anatomy.backend, "lesions": lesion_mask.backend},
        "lesion_model": lesion_mask.model,
        "version": __version__,
        "edition_rules": staging.edition_rules(options.rules),
        "thresholds_changed": differences(thresholds),
        "reference_suv": {k: _r(v, 3) for k, v in lesion_mask.reference_suv.items()},
        "landmarks": {
            "carina_mm": None if carina is None or carina.point_mm is None
            else _pt(carina.point_mm),
            "approximated": sorted(k for k, v in landmarks.points.items() if v.approximated),
            "table": landmarks.table(),
        },
        "inputs": {
            "ct": study.meta.ct_source,
            "pet": study.meta.pet_source,
            "suv_source": study.meta.suv_source,
            "ct_size": list(study.ct_geometry.size),
            "thorax_crop_size": list(work_ct.GetSize()),
        },
        "notes": list(study.meta.notes) + list(anatomy.notes) + list(landmarks.notes)
        + list(lesion_mask.notes) + list(placed.notes),
        "timings_s": timings,
    }


def _lobe_of(lesion) -> str | None:
    best, frac = None, 0.0
    for name, f in lesion.inside.items():
        if name.startswith("lung_") and "lobe" in name and f > frac:
            best, frac = name, f
    if best is None:
        return None
    return best.split("_")[1]  # lung_upper_lobe_left -> upper


def write_outputs(staged: StageResult, out_dir: Path, options: RunOptions,
                  started: float | None = None) -> dict:
    """Write the overlay, the visual report and n-stage.json into ``out_dir`` as one step.

    The result is validated against the schema before anything is written. Every file is
    written into a staging folder inside ``out_dir`` and moved in at the end, n-stage.json
    last (its presence means the case finished: ``nstage batch`` resumes on it); outputs of an
    earlier run that this run does not write are removed (:mod:`nstage.io.outputs`). A failure
    leaves ``out_dir`` as it was. A failure to draw the visual report is recorded in
    ``notes``, not fatal: the report is an extra, the JSON and overlay are the contract.

    Raises
    ------
    nstage.errors.OutputError
        The outputs cannot be written (disk full, no permission); nothing new is left.
    """
    from nstage.io.outputs import OutputStaging, output_error
    from nstage.schema import validate_result

    out_dir = Path(out_dir)
    validate_result(staged.result)
    t0 = time.perf_counter()
    with OutputStaging(out_dir, OUTPUT_FILES, Path(OUTPUT_JSON)) as staging:
        try:
            _write_files(staged, staging.path, options, t0, started)
        except (OSError, RuntimeError) as exc:  # RuntimeError: SimpleITK's writers
            raise output_error(exc, out_dir, "writing the outputs") from None
        staging.commit()
    timings = staged.result["timings_s"]
    progress_reporter(options.progress).step("outputs",
                                             timings["write"] + timings.get("overlay", 0.0))
    return staged.result


def _write_files(staged: StageResult, folder: Path, options: RunOptions, t0: float,
                 started: float | None) -> None:
    """Every output into ``folder`` (the staging folder, never the output folder itself):
    each writer gets ``folder``; n-stage.json is written last."""
    from nstage.io import write_json_atomic, write_label_image

    write_label_image(staged.overlay, staged.study.ct, staged.study.ct_geometry,
                      folder / OUTPUT_OVERLAY)
    if staged.study.meta.ct_dicom_files:
        error = _write_dicom_seg(staged, folder / OUTPUT_DICOM_SEG)
        if error:
            staged.result["notes"].append(f"DICOM SEG not written: {error}")
    if options.report:
        error = _draw_report(staged, folder)
        if error:
            staged.result["notes"].append(f"visual report not written: {error}")
    timings = staged.result["timings_s"]
    timings["write"] = round(time.perf_counter() - t0, 3)
    if started is not None:
        timings["total"] = round(time.perf_counter() - started, 3)
    write_json_atomic(staged.result, folder / OUTPUT_JSON)


def _write_dicom_seg(staged: StageResult, path: Path) -> str | None:
    """Write the overlay as a DICOM SEG of the CT series; the error as one line, or None.

    Like the visual report an extra: PACS users need it, but a study highdicom cannot
    describe must not cost them the JSON and the overlay.
    """
    from nstage.dicom_seg import write_dicom_seg

    try:
        written = write_dicom_seg(staged.overlay, staged.study, staged.result, path)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None if written else "the overlay holds no lesion (a SEG needs one segment)"


def _draw_report(staged: StageResult, out_dir: Path) -> str | None:
    """Write the visual report; the error as one line, or None when it was written."""
    from nstage.figure import write_report

    try:
        write_report(staged, out_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise  # a full disk fails the whole write, not just the figure
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    except Exception as exc:  # the figure must never cost the user the result
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


# Imported in a background thread while the images are read: about 0.4 s for scipy and
# scikit-image, 0.4 s for matplotlib, that reading (decompression, which releases the GIL)
# hides.
_ANALYSIS_MODULES = ("nstage.anatomy.classical", "nstage.lesions.suv", "nstage.findings",
                     "nstage.placement",
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

    The output folder is checked first (a folder, writable), its free space once the CT's size
    is known, both before any analysis; the inputs' sizes and identities before their voxels
    are read (:func:`nstage.io.load_study`).

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
    from nstage.io.outputs import check_free_space, check_output_folder, expected_output_bytes

    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    t0 = time.perf_counter()
    preloading = _preload(options.report)
    try:
        study = load_study(ct, pet, override=override, max_memory_gb=options.max_memory_gb,
                           allow_different_studies=options.allow_different_studies)
    finally:
        preloading.join()
    check_free_space(out_dir, expected_output_bytes(study.ct_geometry.size))
    t_load = round(time.perf_counter() - t0, 3)
    progress_reporter(options.progress).step("load", t_load)
    staged = stage_study(study, options)
    staged.result["timings_s"] = {"load": t_load, **staged.result["timings_s"]}
    return write_outputs(staged, out_dir, options, started=t0)


def options_with(options: RunOptions, **changes) -> RunOptions:
    return replace(options, **changes)
