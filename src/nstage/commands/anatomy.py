"""``nstage anatomy``: segment the thoracic anatomy of a CT and find the station landmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

from nstage.progress import add_quiet_arg

PREVIEW_NAME = "anatomy-preview.png"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "anatomy", help="segment thoracic anatomy from a CT and find station landmarks",
        description="Writes DIR/anatomy.mha (labels on the CT's grid), DIR/labels.json "
                    "(value -> name) and DIR/landmarks.json (carina_mm, lung_volume_ml and "
                    "every landmark with how it was found).")
    p.add_argument("--ct", required=True, type=Path, metavar="CT",
                   help="CT image file (.mha, .nii.gz, .nrrd) or DICOM folder")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    # --anatomy as in nstage run/batch, so the same advice works for every command.
    p.add_argument("--backend", "--anatomy", dest="backend",
                   choices=["auto", "classical", "totalsegmentator"], default="auto",
                   help="auto: TotalSegmentator when its weights are present, else classical")
    p.add_argument("--fast", action="store_true", help="TotalSegmentator's 3 mm model")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where TotalSegmentator runs")
    p.add_argument("--no-crop", dest="crop", action="store_false",
                   help="segment the whole CT instead of the thorax box")
    add_precomputed_args(p)
    p.add_argument("--preview", action="store_true",
                   help=f"also write DIR/{PREVIEW_NAME}: coronal and axial CT through the "
                        "carina with the labels and every landmark level drawn and named")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def add_precomputed_args(p: argparse.ArgumentParser) -> None:
    """``--anatomy-seg`` and ``--anatomy-seg-task`` (shared with ``nstage run``)."""
    p.add_argument("--anatomy-seg", action="append", type=Path, default=None, metavar="PATH",
                   help="an existing TotalSegmentator result for this CT: its output folder of "
                        "per-class masks, or one multilabel file (--ml); repeat for several "
                        "tasks. Its classes win; the anatomy backend (auto: classical) fills "
                        "what it lacks")
    p.add_argument("--anatomy-seg-task", default=None, metavar="TASK",
                   help="TotalSegmentator task of a multilabel file whose header has no label "
                        "names (default: total; needs the models extra)")


def read_ct(path: str | Path):
    """Read a CT alone (image file or DICOM folder) in HU, canonical LPS orientation.

    Returns
    -------
    (SimpleITK.Image, ImageGeometry)
        The canonical CT (float32 HU) and the grid as given, to write outputs onto.

    Raises
    ------
    InputError
        Missing or unreadable input, or a folder without a CT series.
    """
    import SimpleITK as sitk

    from nstage.errors import InputError
    from nstage.geometry import canonical
    from nstage.io import read_image
    from nstage.io.dicom import choose_ct, find_series, read_series
    from nstage.study import ImageGeometry

    path = Path(path)
    if not path.exists():
        raise InputError("does not exist", path, hint="give a CT image file or DICOM folder")
    if path.is_dir():
        series = find_series(path)
        chosen, _ = choose_ct(series, path)
        image = read_series(chosen).image
    else:
        image = read_image(path)
    image = sitk.Cast(image, sitk.sitkFloat32)
    return canonical(image), ImageGeometry.of(image)


def landmarks_to_json(landmarks, anatomy=None) -> dict:
    """``landmarks.json`` content: carina, lung volumes, every landmark, trachea, bronchi.

    With ``anatomy``, every landmark also says which backend measured it
    (``source_backend``; null when approximated).
    """
    from nstage.landmarks import source_backend

    carina = landmarks.get("carina")
    doc = {
        "carina_mm": None if carina is None or carina.point_mm is None
        else [round(v, 2) for v in carina.point_mm],
        "lung_volume_ml": {k: round(v, 1) for k, v in landmarks.lung_volume_ml.items()},
        "landmarks": {
            name: {"z_mm": round(lm.z_mm, 2), "method": lm.method, "source": lm.source,
                   "point_mm": None if lm.point_mm is None
                   else [round(v, 2) for v in lm.point_mm]}
            for name, lm in sorted(landmarks.points.items())
        },
        "trachea": [{k: v if isinstance(v, bool) else round(v, 2) for k, v in vars(t).items()}
                    for t in landmarks.trachea],
        "bronchi": {side: [[round(v, 2) for v in p] for p in pts]
                    for side, pts in landmarks.bronchi.items()},
        "notes": list(landmarks.notes),
    }
    if anatomy is not None:
        for name, entry in doc["landmarks"].items():
            entry["source_backend"] = source_backend(name, landmarks.points[name], anatomy)
    return doc


def run(args: argparse.Namespace) -> int:
    import time

    from nstage import anatomy as anatomy_mod
    from nstage import landmarks as landmarks_mod
    from nstage.anatomy.crop import thorax_box
    from nstage.errors import InputError
    from nstage.geometry import crop, paste
    from nstage.io import write_json_atomic, write_label_image
    from nstage.progress import reporter

    progress = reporter(not args.quiet)
    t0 = time.perf_counter()
    ct, geometry = read_ct(args.ct)
    progress.step("load", time.perf_counter() - t0)
    t_step = time.perf_counter()
    size = ct.GetSize()
    box = thorax_box(ct) if args.crop else (slice(0, size[2]), slice(0, size[1]),
                                            slice(0, size[0]))
    work = crop(ct, box)
    with progress.activity("anatomy"):
        anatomy = anatomy_mod.segment(work, backend=args.backend, fast=args.fast,
                                      device=args.device, precomputed=args.anatomy_seg,
                                      precomputed_task=args.anatomy_seg_task)
    progress.step("anatomy", time.perf_counter() - t_step)
    t_step = time.perf_counter()
    lms = landmarks_mod.find(anatomy)
    progress.step("landmarks", time.perf_counter() - t_step)
    t_step = time.perf_counter()
    labels = paste(ct, anatomy.labels, box, dtype=anatomy.labels.dtype)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})", out) from None
    doc = landmarks_to_json(lms, anatomy)
    doc["backend"] = anatomy.backend
    if anatomy.sources:
        doc["class_sources"] = dict(sorted(anatomy.sources.items()))
    doc["anatomy_notes"] = list(anatomy.notes)
    doc["thorax_box"] = [[s.start, s.stop] for s in box]
    if args.preview:
        from nstage.anatomy_preview import render

        render(ct, labels, anatomy.names, lms, out / PREVIEW_NAME, box=box,
               title=f"{Path(args.ct).name}, {anatomy.backend} anatomy", notes=anatomy.notes)
    doc["seconds"] = round(time.perf_counter() - t0, 2)
    # Landmarks and names first, the image last: a crash leaves no label map without them.
    write_json_atomic({str(v): n for v, n in sorted(anatomy.names.items())},
                      out / "labels.json")
    write_json_atomic(doc, out / "landmarks.json")
    write_label_image(labels, ct, geometry, out / "anatomy.mha")
    progress.step("outputs", time.perf_counter() - t_step)
    carina = doc["carina_mm"]
    print(f"anatomy ({anatomy.backend}) -> {out}: carina {carina}, lungs "
          f"{doc['lung_volume_ml']} ml, {doc['seconds']} s"
          + (f", preview {out / PREVIEW_NAME}" if args.preview else ""))
    return 0
