"""Precomputed anatomy: an existing TotalSegmentator result, merged with another backend.

Sites that already run TotalSegmentator (on a GPU cluster, on Grand Challenge) hand its result
to nstage instead of running it again (``--anatomy-seg PATH``, repeatable):

- a folder of per-class binary masks ``<class>.nii.gz`` (TotalSegmentator's default output),
  from any task; the file name is the class name;
- one multilabel file (TotalSegmentator ``--ml``). The class names come from the label table
  TotalSegmentator writes into the NIfTI header, for any task. A file without that table (e.g.
  converted to .mha) is read with TotalSegmentator's own class map of ``task`` (default
  ``total``), which needs the ``models`` extra; nstage keeps no copy of that map.

Every mask is resampled (nearest neighbour) onto the working CT grid; a segmentation that does
not overlap it is refused. Classes the result lacks (absent or empty) come from the fallback
backend (classical unless another is asked for). The given classes win: by name (and
TotalSegmentator's lobes replace the classical whole lungs, its vertebrae the classical spine)
and voxel by voxel; where given classes overlap (masks of different tasks), the larger one keeps
the voxel in the label map, and a class lying mostly inside larger given ones (a landmark mask
such as ``pul_bifurcation`` inside ``pulmonary_artery``) is also kept whole in
``Anatomy.extra_masks``, so ``Anatomy.mask(name)`` always returns the class as given. ``Anatomy.sources`` records which backend produced each class.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.anatomy.base import GROUPS, Anatomy
from nstage.anatomy.totalseg import STAGING_CLASSES
from nstage.errors import GeometryError, InputError, ModelError, UsageError

PRECOMPUTED = "totalsegmentator (precomputed)"
DEFAULT_TASK = "total"
# Grand Challenge socket of the optional precomputed segmentation (one multilabel image).
GC_SOCKET = "anatomy-segmentation"
GC_TASK_ENV = "NSTAGE_ANATOMY_SEG_TASK"

# Classes nstage uses: others in a mask folder are not read (a ``total`` folder holds 117
# files, most of them bones and muscles far from the mediastinum).
USED_CLASSES: frozenset[str] = frozenset(
    set(STAGING_CLASSES) | {m for members in GROUPS.values() for m in members}
    | {"pulmonary_artery", "pul_bifurcation", "pul_left_start", "pul_right_start",
       "lung_airways", "mediastinum", "main_bronchus_left", "main_bronchus_right", "airway"})

# A derived class of another backend that given classes replace as a whole.
SUPERSEDED_BY: dict[str, tuple[str, ...]] = {
    "lung_left": GROUPS["lung_left"][1:],
    "lung_right": GROUPS["lung_right"][1:],
    "spine": GROUPS["spine"][1:],
}
# A given class with at least this fraction of its voxels inside larger given classes is a part
# of them (a landmark mask, a sub-structure): kept whole in extra_masks, not painted over them.
PART_FRACTION = 0.5

_MASK_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class GivenClass:
    """One class of the precomputed segmentation on the working grid (a bounding-box crop)."""

    name: str
    box: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, the crop ``box`` of the working grid
    source: Path

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())


@dataclass
class GivenAnatomy:
    """The classes of a precomputed segmentation on the working grid, before merging."""

    classes: list[GivenClass]
    shape: tuple[int, int, int]
    paths: list[Path]
    empty: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- reading


def _class_name(path: Path) -> str:
    name = path.name
    for ext in _MASK_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _is_mask_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") \
        and path.name.lower().endswith(_MASK_EXTENSIONS)


def _read(path: Path) -> sitk.Image:
    from nstage.io import read_image

    return read_image(path)


def _bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Physical box (min, max xyz mm) covering the voxels, edges included."""
    size = np.array(image.GetSize(), dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def _overlaps(image: sitk.Image, reference: sitk.Image) -> bool:
    lo_a, hi_a = _bounds(image)
    lo_b, hi_b = _bounds(reference)
    return bool(np.all(np.minimum(hi_a, hi_b) > np.maximum(lo_a, lo_b)))


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def _on_grid(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Integer label array of ``image`` on ``reference``'s grid (nearest neighbour)."""
    if not _same_grid(image, reference):
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              image.GetPixelID())
    arr = sitk.GetArrayFromImage(image)
    return arr if np.issubdtype(arr.dtype, np.integer) else np.rint(arr).astype(np.int32)


def _crop_of(mask: np.ndarray) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    from scipy import ndimage as ndi

    found = ndi.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    box = found[0]
    return box, np.ascontiguousarray(mask[box])


def _mask_folder(folder: Path, reference: sitk.Image, out: GivenAnatomy) -> int:
    """Read the used per-class masks of ``folder``; returns how many files overlap the grid."""
    files = [p for p in sorted(folder.iterdir()) if _is_mask_file(p)]
    if not files:
        raise InputError("holds no mask files (<class>.nii.gz)", folder,
                         hint="give TotalSegmentator's output folder or one multilabel file")
    used = [p for p in files if _class_name(p) in USED_CLASSES]
    skipped = len(files) - len(used)
    if skipped:
        out.notes.append(f"{skipped} mask files in {folder.name} name classes nstage does not "
                         "use and were not read")
    overlapping = 0
    for path in used:
        image = _read(path)
        if not _overlaps(image, reference):
            out.notes.append(f"{path.name} does not overlap the CT and was ignored")
            continue
        overlapping += 1
        original = sitk.GetArrayViewFromImage(image)
        if original.size and (original.min() < 0 or original.max() > 1):
            raise InputError(
                f"is not a binary mask (values {original.min()}..{original.max()})", path,
                hint="a folder must hold one 0/1 mask per class (TotalSegmentator's default "
                     "output); give a multilabel segmentation as a file, not in a folder")
        _add(out, _class_name(path), _on_grid(image, reference) > 0, path)
    return overlapping


def _add(out: GivenAnatomy, name: str, mask: np.ndarray, path: Path) -> None:
    crop = _crop_of(mask)
    if crop is None:
        out.empty.append(name)
    else:
        out.classes.append(GivenClass(name, crop[0], crop[1], path))


def header_label_names(path: Path) -> dict[int, str]:
    """Label id -> class name from the label table TotalSegmentator writes into a multilabel
    NIfTI header (a Caret XML extension); empty for other files or without one."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return {}
    import nibabel as nib

    try:
        extensions = nib.load(str(path)).header.extensions
    except Exception:  # an unreadable header is reported when the image itself is read
        return {}
    for ext in extensions:
        names = _caret_label_table(ext.get_content())
        if names:
            return names
    return {}


def _caret_label_table(content) -> dict[int, str]:
    if isinstance(content, bytes):
        content = content.rstrip(b"\x00").decode("utf-8", errors="replace")
    if not isinstance(content, str) or "LabelTable" not in content:
        return {}
    try:
        root = ET.fromstring(content.strip())
    except ET.ParseError:
        return {}
    names = {}
    for label in root.iter("Label"):
        key, text = label.get("Key"), (label.text or "").strip()
        if key is not None and key.strip().lstrip("-").isdigit() and text:
            names[int(key)] = text
    return names


def task_class_map(task: str, path: Path) -> dict[int, str]:
    """TotalSegmentator's own class map of ``task`` (needs the ``models`` extra)."""
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError:
        raise ModelError(
            "a multilabel segmentation without label names in its header needs "
            f"TotalSegmentator's class map of task {task!r}, and TotalSegmentator is not "
            "installed", path,
            hint='pip install "nstage[models]", or give the folder of per-class masks that '
                 "TotalSegmentator writes by default") from None
    if task not in class_map:
        raise UsageError(f"unknown TotalSegmentator task {task!r}",
                         hint="use the task the segmentation was made with, e.g. total, "
                              "heartchambers_highres, lung_vessels")
    return {int(k): str(v) for k, v in class_map[task].items()}


def _multilabel_file(path: Path, reference: sitk.Image, task: str | None,
                     out: GivenAnatomy) -> int:
    names = header_label_names(path)
    how = "label table in its NIfTI header"
    if not names:
        task = task or DEFAULT_TASK
        names = task_class_map(task, path)
        how = f"TotalSegmentator's class map of task {task!r}"
    image = _read(path)
    if not _overlaps(image, reference):
        return 0
    labels = _on_grid(image, reference)
    values = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in values if v not in names]
    if unknown:
        out.notes.append(f"{path.name}: label values {unknown[:8]} not in the "
                         f"{how} were ignored")
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(np.where(labels > 0, labels, 0), max_label=max(values, default=0))
    present = set()
    for v in values:
        name = names.get(v)
        if name is None or name not in USED_CLASSES or boxes[v - 1] is None:
            continue
        box = boxes[v - 1]
        out.classes.append(GivenClass(name, box, np.ascontiguousarray(labels[box] == v), path))
        present.add(name)
    out.empty.extend(n for n in names.values() if n in USED_CLASSES and n not in present)
    out.notes.append(f"{path.name}: class names from the {how}")
    return 1


def load_precomputed(paths: Sequence[str | Path], reference: sitk.Image, *,
                     task: str | None = None) -> GivenAnatomy:
    """Read precomputed TotalSegmentator results onto ``reference``'s grid.

    Parameters
    ----------
    paths : sequence of path
        Folders of per-class masks and/or multilabel files.
    reference : SimpleITK.Image
        The canonical working CT whose grid the classes are resampled onto.
    task : str, optional
        TotalSegmentator task whose class map names a multilabel file without a label table
        in its header (default ``total``).

    Raises
    ------
    InputError
        A path is missing, an empty folder, not an image, or a folder mask is not binary.
    GeometryError
        None of the given segmentations overlaps the CT.
    ModelError
        A multilabel file without names while TotalSegmentator is not installed.
    """
    out = GivenAnatomy(classes=[], shape=tuple(reference.GetSize()[::-1]),
                       paths=[Path(p) for p in paths])
    overlapping = 0
    for path in out.paths:
        if path.is_dir():
            overlapping += _mask_folder(path, reference, out)
        elif path.is_file():
            overlapping += _multilabel_file(path, reference, task, out)
        else:
            raise InputError("does not exist", path,
                             hint="give TotalSegmentator's output folder or multilabel file")
    if not overlapping:
        where = ", ".join(str(p) for p in out.paths)
        lo, hi = _bounds(reference)
        raise GeometryError(
            "the precomputed anatomy does not overlap the CT (x {:.0f}..{:.0f}, y {:.0f}..{:.0f}, "
            "z {:.0f}..{:.0f} mm)".format(*np.column_stack([lo, hi]).ravel()), where,
            hint="give the segmentation made from this CT (same patient coordinates)")
    return out


# ------------------------------------------------------------------------------- merging


def _superseded(name: str, given: set[str]) -> bool:
    return name in given or any(m in given for m in SUPERSEDED_BY.get(name, ()))


def merge(given: GivenAnatomy, fallback: Anatomy) -> Anatomy:
    """One Anatomy from the given classes and the fallback backend's (see module docstring).

    Label values: the given classes first (1, 2, ... in the order read), then the fallback's
    classes that are kept; uint8 unless more than 255 classes.
    """
    if fallback.labels.shape != given.shape:
        raise ValueError(f"fallback anatomy {fallback.labels.shape} and precomputed classes "
                         f"{given.shape} are on different grids")
    names_given = list(dict.fromkeys(c.name for c in given.classes))
    given_set = set(names_given)
    kept = {v: n for v, n in fallback.names.items() if not _superseded(n, given_set)}
    n_values = len(names_given) + len(kept)
    dtype = np.uint8 if n_values <= 255 else np.uint16
    value_of = {n: i + 1 for i, n in enumerate(names_given)}
    lut = np.zeros(max(int(fallback.labels.max()), max(fallback.names, default=0)) + 1,
                   dtype=dtype)
    names = {value_of[n]: n for n in names_given}
    for offset, (v, n) in enumerate(sorted(kept.items())):
        lut[v] = len(names_given) + 1 + offset
        names[int(lut[v])] = n
    labels = lut[fallback.labels]
    extra = dict(fallback.extra_masks)
    parts = _paint_given(labels, given, value_of)
    for name, mask in parts.items():
        painted = labels == value_of[name]
        if not painted.any():
            names.pop(value_of[name], None)
        extra[name] = mask | painted
    present = set(names.values()) | set(extra)
    sources = {n: PRECOMPUTED for n in names_given if n in present}
    sources.update({n: fallback.source_of(n) for n in kept.values()})
    notes = _merge_notes(given, names_given, kept, fallback)
    return Anatomy(labels=labels, names=names, reference=fallback.reference,
                   backend=f"{PRECOMPUTED} + {fallback.backend}", extra_masks=extra,
                   notes=notes, sources=sources)


def _paint_given(labels: np.ndarray, given: GivenAnatomy,
                 value_of: dict[str, int]) -> dict[str, np.ndarray]:
    """Paint the given classes over ``labels`` (in place): over the fallback's classes
    everywhere, over each other larger classes first. Return the parts: classes lying mostly
    inside other given ones, whose whole masks are kept beside the label map (full grid)."""
    n_given = len(value_of)
    parts: dict[str, np.ndarray] = {}
    for cls in sorted(given.classes, key=lambda c: -c.voxels):
        v = value_of[cls.name]
        region = labels[cls.box]
        given_there = (region >= 1) & (region <= n_given)
        inside_other = int((cls.mask & given_there & (region != v)).sum())
        if inside_other >= PART_FRACTION * cls.voxels:
            full = parts.setdefault(cls.name, np.zeros(given.shape, dtype=bool))
            full[cls.box] |= cls.mask
        region[cls.mask & ~given_there] = v
    return parts


def _merge_notes(given: GivenAnatomy, names_given: list[str], kept: dict[int, str],
                 fallback: Anatomy) -> list[str]:
    where = ", ".join(p.name for p in given.paths)
    notes = [f"precomputed TotalSegmentator classes from {where}: "
             f"{', '.join(sorted(names_given)) or 'none'}"]
    empty = sorted(set(given.empty) - set(names_given))
    if empty:
        notes.append(f"empty in the precomputed segmentation: {', '.join(empty[:12])}"
                     f"{' ...' if len(empty) > 12 else ''}")
    filled = sorted(set(kept.values()))
    notes.append(f"from the {fallback.backend} backend: {', '.join(filled) or 'nothing'}")
    return notes + list(given.notes) + [f"{fallback.backend}: {n}" for n in fallback.notes]


# ------------------------------------------------------------------------------- inputs


def gc_anatomy_segmentation(input_dir: str | Path) -> Path | None:
    """The optional precomputed segmentation of a Grand Challenge input folder, or None.

    ``INPUT/images/anatomy-segmentation/<one image>`` (a multilabel image with
    TotalSegmentator's class ids), or the ``anatomy-segmentation`` socket's file named in
    ``INPUT/inputs.json``.
    """
    folder = Path(input_dir)
    candidates = [folder / "images" / GC_SOCKET]
    manifest = folder / "inputs.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            entries = []  # the study reader reports a broken manifest
        for entry in entries if isinstance(entries, list) else []:
            interface = entry.get("interface", entry) if isinstance(entry, dict) else {}
            if isinstance(interface, dict) and str(interface.get("slug", "")) == GC_SOCKET:
                rel = interface.get("relative_path") or entry.get("relative_path")
                if rel:
                    candidates.insert(0, folder / str(rel))
    for cand in candidates:
        if cand.is_file() and _is_mask_file(cand):
            return cand
        if cand.is_dir():
            files = [p for p in sorted(cand.iterdir()) if _is_mask_file(p)]
            if len(files) > 1:
                raise InputError(f"holds {len(files)} images; exactly one multilabel "
                                 "segmentation is expected", cand)
            if files:
                return files[0]
    return None


def with_gc_anatomy_segmentation(options, input_dir: str | Path):
    """``options`` (a :class:`~nstage.pipeline.RunOptions`) with the Grand Challenge input's
    precomputed segmentation, when there is one and none was given otherwise; the task of a
    multilabel image without label names from ``$NSTAGE_ANATOMY_SEG_TASK``."""
    import os
    from dataclasses import replace

    if options.anatomy_seg:
        return options
    found = gc_anatomy_segmentation(input_dir)
    if found is None:
        return options
    task = os.environ.get(GC_TASK_ENV, "").strip() or options.anatomy_seg_task
    return replace(options, anatomy_seg=(found,), anatomy_seg_task=task)
