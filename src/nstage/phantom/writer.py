"""Write a phantom to disk: Grand Challenge input layout, truth.json, anatomy.mha, labels.json."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import SimpleITK as sitk

from nstage.errors import InputError
from nstage.phantom.spec import Phantom

_NAMESPACE = uuid.UUID("5b0c6f4e-8d0e-4c1a-9a57-2f3c1d2e7a10")


def image_uuid(phantom: Phantom, modality: str) -> str:
    """Deterministic file uuid for a modality of a phantom (same spec and seed, same name)."""
    s = phantom.spec
    key = (f"{modality}|{s.seed}|{s.extent}|{','.join(s.nodes)}|{s.primary_side}|"
           f"{s.primary_lobe}|{','.join(sorted(s.confounders))}")
    if s.realistic:
        key += "|realistic"
    return str(uuid.uuid5(_NAMESPACE, key))


def inputs_json(ct_name: str, pet_name: str) -> list[dict]:
    """The Grand Challenge ``inputs.json``: one socket value per image."""
    def entry(slug: str, title: str, name: str, pk: int) -> dict:
        return {
            "pk": pk,
            "interface": {"title": title, "slug": slug, "kind": "Image", "super_kind": "Image",
                          "relative_path": f"images/{slug}", "pk": pk},
            "image": {"name": name},
            "value": None,
            "file": None,
        }
    return [entry("ct", "CT", ct_name, 1), entry("pet", "PET", pet_name, 2)]


def _write_image(img: sitk.Image, path: Path) -> None:
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    sitk.WriteImage(img, str(tmp), useCompression=True)
    os.replace(tmp, path)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def write_phantom(phantom: Phantom, outdir: str | Path) -> dict[str, Path]:
    """Write ``phantom`` under ``outdir``.

    Layout::

        OUTDIR/input/images/ct/<uuid>.mha     CT, int16 HU (compressed)
        OUTDIR/input/images/pet/<uuid>.mha    PET, float32 SUV (compressed)
        OUTDIR/input/inputs.json              Grand Challenge socket values
        OUTDIR/truth.json                     the truth (see make_phantom)
        OUTDIR/anatomy.mha                    ground-truth anatomy labels on the CT grid
        OUTDIR/labels.json                    label value -> class name
        OUTDIR/lesions.mha                    lesion labels (1 primary, 2.. nodes, confounders)

    Returns
    -------
    dict of str to Path
        Keys ``ct``, ``pet``, ``inputs``, ``truth``, ``anatomy``, ``labels``, ``lesions``,
        ``input`` (the input folder).
    """
    out = Path(outdir)
    inp = out / "input"
    try:
        for d in (inp / "images" / "ct", inp / "images" / "pet"):
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("*.mha"):
                old.unlink()  # each socket folder must hold exactly one image
    except OSError as exc:
        raise InputError(f"cannot create the phantom folder ({exc.strerror})", path=out,
                         hint="choose a writable output folder") from None
    ct_name = f"{image_uuid(phantom, 'ct')}.mha"
    pet_name = f"{image_uuid(phantom, 'pet')}.mha"
    paths = {
        "input": inp,
        "ct": inp / "images" / "ct" / ct_name,
        "pet": inp / "images" / "pet" / pet_name,
        "inputs": inp / "inputs.json",
        "truth": out / "truth.json",
        "anatomy": out / "anatomy.mha",
        "labels": out / "labels.json",
        "lesions": out / "lesions.mha",
    }
    _write_image(phantom.ct, paths["ct"])
    _write_image(phantom.pet, paths["pet"])
    _write_image(phantom.anatomy.to_image(), paths["anatomy"])
    if phantom.lesion_labels is not None:
        les = sitk.GetImageFromArray(phantom.lesion_labels)
        les.CopyInformation(phantom.ct)
        _write_image(les, paths["lesions"])
    _write_json(inputs_json(ct_name, pet_name), paths["inputs"])
    _write_json({str(v): n for v, n in sorted(phantom.anatomy.names.items())}, paths["labels"])
    truth = dict(phantom.truth)
    truth["files"] = {k: str(p.relative_to(out)) for k, p in paths.items() if k != "input"}
    _write_json(truth, paths["truth"])
    return paths
