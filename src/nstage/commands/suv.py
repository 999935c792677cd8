"""``nstage suv``: convert a PET series to SUV body weight and show how."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "suv",
        help="convert a PET DICOM series to an SUVbw image",
        description="Convert a PET series (DICOM folder; or a Bq/ml image file with --weight and "
                    "--dose) to SUV body weight, write it as an image, and print the factor "
                    "and the times used. With --ct, the CT + PET pair is loaded and checked "
                    "as `nstage run` would.",
    )
    p.add_argument("pet", type=Path, metavar="PET",
                   help="PET DICOM folder (or image file; or a Grand Challenge input / DICOM "
                        "study folder holding CT and PET)")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUT.mha",
                   help="output SUV image (.mha, .nii.gz, .nrrd)")
    p.add_argument("--ct", type=Path, default=None,
                   help="CT file or DICOM folder: also load and check the CT + PET pair")
    g = p.add_argument_group("SUV inputs for PET without usable headers (replace header values)")
    g.add_argument("--weight", type=float, default=None, metavar="KG", help="patient weight (kg)")
    g.add_argument("--dose", type=float, default=None, metavar="MBQ",
                   help="injected dose (MBq) at injection time")
    g.add_argument("--injection-time", default=None, metavar="HHMMSS",
                   help="injection time (HHMMSS, HH:MM:SS or ISO datetime)")
    g.add_argument("--scan-time", default=None, metavar="HHMMSS",
                   help="scan start time, for image files without headers")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    import SimpleITK as sitk

    from nstage.errors import UsageError
    from nstage.geometry import canonical
    from nstage.io import SUVOverride, load_pet_suv, load_study, write_image_atomic
    from nstage.io.writers import _image_suffix

    _image_suffix(args.out)  # refuse a bad extension before any work
    override = None
    if any(v is not None for v in (args.weight, args.dose, args.injection_time, args.scan_time)):
        override = SUVOverride.from_cli(args.weight, args.dose, args.injection_time,
                                        args.scan_time)
    if args.out.resolve() == args.pet.resolve():
        raise UsageError("the output would overwrite the input", args.out)

    pet_path = Path(args.pet)
    combined = args.ct is None and pet_path.is_dir() and _holds_ct(pet_path)
    if args.ct is not None or combined:
        study = load_study(args.ct if args.ct is not None else pet_path,
                           None if args.ct is None else pet_path, override=override)
        image, notes, source = study.pet, study.meta.notes, study.meta.pet_source
        factor_text = (f"SUVbw factor {study.meta.suv_factor:.6g}" if study.meta.suv_factor
                       else "no conversion (PET declared as SUV)")
        print(f"CT: {study.meta.ct_source} ({'x'.join(map(str, study.ct.GetSize()))} voxels)")
    else:
        image, factor, notes, source = load_pet_suv(pet_path, override=override)
        factor_text = factor.describe() if factor else "no conversion (PET declared as SUV)"
    image = canonical(sitk.Cast(image, sitk.sitkFloat32))
    write_image_atomic(image, args.out, compress=True)
    arr = sitk.GetArrayViewFromImage(image)
    print(f"PET: {source}")
    print(factor_text)
    for note in notes:
        if not note.startswith("SUV: "):  # the factor line above already says it
            print(f"  note: {note}")
    print(f"SUVmax {float(arr.max()):.3g}; wrote {args.out}")
    return 0


def _holds_ct(folder: Path) -> bool:
    """True for a Grand Challenge input folder or a DICOM folder that also holds a CT series."""
    from nstage.io.dicom import find_series
    from nstage.io.readers import is_gc_folder

    if is_gc_folder(folder):
        return True
    return any(s.modality == "CT" for s in find_series(folder))
