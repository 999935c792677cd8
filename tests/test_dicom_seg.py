"""DICOM SEG output: read back with pydicom/highdicom and checked frame by frame against the CT
slices it references and the overlay it encodes.

The expected content of every frame is found independently of the writer: from the source
slice the frame names (ReferencedSOPInstanceUID), each pixel's position in mm (that slice's
ImagePositionPatient, ImageOrientationPatient and PixelSpacing) is looked up in the overlay.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import real_path

from nstage.dicom_seg import write_dicom_seg
from nstage.io import load_study

# SNOMED CT codes of DICOM PS3.16 CID 7151 written by hand (what a PACS reads), per overlay value.
EXPECTED_TERMS = {
    1: ("primary tumour", "86049000", "39607008"),  # Neoplasm, Primary; Lung
    2: ("N1 node", "14799000", "59441001"),  # Neoplasm, Secondary; Lymph node
    3: ("N2 node", "14799000", "59441001"),
    4: ("N3 node", "14799000", "59441001"),
    5: ("other FDG-avid lesion (not counted for N)", "52988006", None),  # Lesion
}
RESULT = {"version": "0.1.0", "backends": {"anatomy": "classical", "lesions": "suv"},
          "primary_tumor": {"side": "right", "lobe": None},
          "nodes": [{"station": "7", "label_value": 3}]}


def _flat_pet(ct_dir: Path, path: Path) -> Path:
    """A PET in SUV (1.0 everywhere) covering the CT series: load_study needs a PET."""
    from nstage.io import read_ct

    ct, _ = read_ct(ct_dir)
    lo = np.min([ct.TransformIndexToPhysicalPoint(c) for c in _corners(ct)], axis=0) - 5
    hi = np.max([ct.TransformIndexToPhysicalPoint(c) for c in _corners(ct)], axis=0) + 5
    pet = sitk.Image([24, 24, 24], sitk.sitkFloat32) + 1.0
    pet.SetOrigin(tuple(float(v) for v in lo))
    pet.SetSpacing(tuple(float(v) for v in (hi - lo) / 23.0))
    sitk.WriteImage(pet, str(path))
    return path


def _corners(img: sitk.Image) -> list[tuple[int, int, int]]:
    n = [s - 1 for s in img.GetSize()]
    return [(a, b, c) for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])]


def _frames(seg: pydicom.Dataset) -> list[tuple[int, str, np.ndarray]]:
    """(segment number, referenced source SOPInstanceUID, binary frame) for every frame."""
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out = []
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        out.append((number, str(source.ReferencedSOPInstanceUID), frame.astype(bool)))
    return out


def _expected_frame(source: pydicom.Dataset, study, overlay: np.ndarray, value: int):
    """The overlay == value at each pixel of ``source``, found by physical position."""
    rows, cols = int(source.Rows), int(source.Columns)
    iop = np.array([float(v) for v in source.ImageOrientationPatient])
    ipp = np.array([float(v) for v in source.ImagePositionPatient])
    dr, dc = (float(v) for v in source.PixelSpacing)  # between rows, between columns
    r, c = np.mgrid[0:rows, 0:cols]
    mm = ipp + (c[..., None] * dc) * iop[:3] + (r[..., None] * dr) * iop[3:]
    ct = study.ct
    index = (mm - np.array(ct.GetOrigin())) / np.array(ct.GetSpacing())  # canonical: identity
    i, j, k = (np.rint(index[..., a]).astype(int) for a in range(3))
    inside = ((0 <= i) & (i < overlay.shape[2]) & (0 <= j) & (j < overlay.shape[1])
              & (0 <= k) & (k < overlay.shape[0]))
    expected = np.zeros((rows, cols), bool)
    expected[inside] = overlay[k[inside], j[inside], i[inside]] == value
    return expected


def _check_against_overlay(seg_path: Path, study, overlay: np.ndarray) -> dict[int, set[str]]:
    """Every frame equals the overlay on its source slice; each label fully covered. Returns
    the source SOPInstanceUIDs referenced per overlay value."""
    seg = pydicom.dcmread(seg_path)
    sources = {str(ds.SOPInstanceUID): ds for ds in
               (pydicom.dcmread(f, stop_before_pixels=True) for f in study.meta.ct_dicom_files)}
    value_of = {int(s.SegmentNumber): int(s.TrackingID.split()[-1]) for s in seg.SegmentSequence}
    referenced: dict[int, set[str]] = {v: set() for v in value_of.values()}
    counted = dict.fromkeys(value_of.values(), 0)
    for number, uid, frame in _frames(seg):
        value = value_of[number]
        assert uid in sources, "a frame references a slice that is not in the CT series"
        expected = _expected_frame(sources[uid], study, overlay, value)
        assert np.array_equal(frame, expected), f"segment {number}, slice {uid}"
        referenced[value].add(uid)
        counted[value] += int(frame.sum())
    for value, n in counted.items():
        assert n == int((overlay == value).sum()), f"overlay value {value} not fully encoded"
    assert set(value_of.values()) == {int(v) for v in np.unique(overlay) if v}
    return referenced


def _check_header(seg_path: Path, ct_files: list[str]) -> pydicom.Dataset:
    seg = pydicom.dcmread(seg_path)
    ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.StudyInstanceUID == ct.StudyInstanceUID
    assert seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    assert seg.SeriesInstanceUID != ct.SeriesInstanceUID
    for s in seg.SegmentSequence:
        value = int(s.TrackingID.split()[-1])
        label, type_code, region = EXPECTED_TERMS[value]
        assert s.SegmentLabel == label
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == type_code
        assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        regions = [r.CodeValue for r in s.get("AnatomicRegionSequence", [])]
        assert regions == ([region] if region else [])
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "nstage" and algorithm.AlgorithmVersion == "0.1.0"
        assert s.SegmentAlgorithmType == "AUTOMATIC"
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    assert numbers == list(range(1, len(numbers) + 1))
    return seg


# ------------------------------------------------------------------------ real CT series


def _tumour_slices_and_boxes(ct_dir: Path, box_dir: Path):
    """Annotated tumour boxes (pixel xmin, ymin, xmax, ymax) keyed by the slice's
    SOPInstanceUID (the XML file name), for slices that are in this CT extract."""
    in_ct = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
             for f in ct_dir.glob("*.dcm")}
    boxes = {}
    for xml in box_dir.glob("*.xml"):
        if xml.stem in in_ct:
            bb = ET.parse(xml).getroot().find("object/bndbox")
            boxes[xml.stem] = tuple(int(float(bb.find(t).text))
                                    for t in ("xmin", "ymin", "xmax", "ymax"))
    return boxes


def test_seg_of_a_real_ct_series_references_the_annotated_slices(tmp_path):
    """A0002 (30 real slices): label 1 painted in the annotators' tumour boxes, a node (3) and
    an other lesion (5) elsewhere; the primary's frames must reference exactly the slices
    the annotators boxed (their XML file names), and every frame must match the overlay."""
    ct_dir = real_path("lung-pet-ct-dx-A0002", "ct")
    boxes = _tumour_slices_and_boxes(ct_dir, real_path("lung-pet-ct-dx-A0002", "tumor-boxes"))
    assert boxes
    study = load_study(ct_dir, _flat_pet(ct_dir, tmp_path / "pet.mha"))
    assert len(study.meta.ct_dicom_files) == 30
    overlay = np.zeros(sitk.GetArrayViewFromImage(study.ct).shape, np.uint8)
    for path in study.meta.ct_dicom_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        box = boxes.get(str(ds.SOPInstanceUID))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        # the box corners in mm -> canonical indices (this CT is axial, identity in plane)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        row, col = (float(v) for v in ds.PixelSpacing)
        lo = study.ct.TransformPhysicalPointToIndex((ipp[0] + x0 * col, ipp[1] + y0 * row, ipp[2]))
        hi = study.ct.TransformPhysicalPointToIndex((ipp[0] + x1 * col, ipp[1] + y1 * row, ipp[2]))
        overlay[lo[2], lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = 1
    overlay[2:4, 300:312, 240:252] = 3
    overlay[27, 100:108, 380:390] = 5
    out = write_dicom_seg(overlay, study, RESULT, tmp_path / "seg.dcm")
    seg = _check_header(out, study.meta.ct_dicom_files)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "primary tumour", "N2 node", "other FDG-avid lesion (not counted for N)"]
    assert seg.SegmentSequence[1].SegmentDescription == "N2 node: station 7"
    referenced = _check_against_overlay(out, study, overlay)
    assert referenced[1] == set(boxes)

    import highdicom as hd  # highdicom's own reader agrees

    read = hd.seg.segread(out)
    assert read.number_of_segments == 3
    uid = next(iter(boxes))
    pixels = read.get_pixels_by_source_instance([uid], segment_numbers=[1])
    assert pixels.shape[0] == 1 and pixels[0, ..., 0].sum() > 0


def test_run_on_dicom_writes_seg_next_to_the_json(tmp_path):
    """Whole pipeline on the real A0002 CT series with the synthetic PET of the end-to-end
    tests (annotated tumour SUV 10, a subcarinal node): the SEG next to n-stage.json encodes
    exactly the overlay .mha, and node entries give the slice to find them in PACS."""
    from test_e2e_real_ct import SUBCARINAL, _read_a0002, synthetic_pet

    from nstage.pipeline import RunOptions, run_case

    ct_dir = real_path("lung-pet-ct-dx-A0002", "ct")
    ct, tumour_boxes = _read_a0002()
    sitk.WriteImage(synthetic_pet(ct, tumour_boxes, [SUBCARINAL]), str(tmp_path / "pet.mha"))
    out = tmp_path / "out"
    result = run_case(ct_dir, tmp_path / "pet.mha", out,
                      RunOptions(anatomy="classical", lesions="suv", report=False))
    assert json.loads((out / "n-stage.json").read_text())["n_stage"] == result["n_stage"]
    seg_path = out / "n-staging-segmentation.dcm"
    assert seg_path.is_file()
    study = load_study(ct_dir, tmp_path / "pet.mha")
    overlay_img = sitk.ReadImage(str(out / "images" / "n-staging-segmentation" / "output.mha"))
    overlay = sitk.GetArrayFromImage(overlay_img)  # identity orientation: canonical already
    assert result["primary_tumor"] is not None and (overlay == 1).any()
    _check_header(seg_path, study.meta.ct_dicom_files)
    _check_against_overlay(seg_path, study, overlay)
    # The node's slice: its centroid z on the CT's own slice axis, and that file's number.
    node = next(n for n in result["nodes"] + result["negative_node_candidates"]
                if n["station"] == "7")
    files = study.meta.ct_dicom_files
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
         for f in files]
    k = int(np.argmin(np.abs(np.array(z) - node["centroid_mm"][2])))
    assert node["ct_slice_index"] == k
    assert node["ct_instance_number"] == int(pydicom.dcmread(files[k]).InstanceNumber)


def test_real_ge_pet_ct_study_without_lesions_writes_no_seg(tmp_path):
    """NSCLC Radiogenomics R01-005 (GE DICOM PET/CT of the thighs, SUVmax about 2): NX, an
    empty overlay, and a note instead of an invalid SEG without segments."""
    from nstage.pipeline import RunOptions, run_case

    case = real_path("nsclc-radiogenomics-R01-005")
    result = run_case(case / "petct-ct", case / "petct-pet-ac", tmp_path,
                      RunOptions(anatomy="classical", lesions="suv", report=False))
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(
        str(tmp_path / "images" / "n-staging-segmentation" / "output.mha")))
    seg_path = tmp_path / "n-staging-segmentation.dcm"
    if overlay.any():
        study = load_study(case / "petct-ct", case / "petct-pet-ac")
        _check_header(seg_path, study.meta.ct_dicom_files)
        _check_against_overlay(seg_path, study, overlay)
    else:
        assert not seg_path.exists()
        assert any(n.startswith("DICOM SEG not written: the overlay holds no lesion")
                   for n in result["notes"])


def test_no_seg_for_image_file_input(tmp_path):
    from nstage.phantom import PhantomSpec, make_phantom, write_phantom
    from nstage.pipeline import RunOptions, run_case

    write_phantom(make_phantom(PhantomSpec(nodes=("7",), seed=2)), tmp_path / "ph")
    run_case(tmp_path / "ph" / "input", None, tmp_path / "out",
             RunOptions(anatomy="classical", lesions="suv", report=False))
    assert (tmp_path / "out" / "n-stage.json").is_file()
    assert not (tmp_path / "out" / "n-staging-segmentation.dcm").exists()


# ------------------------------------------------------------------------ rotated series


def _write_series(folder: Path, iop: list[float], n_slices: int = 12, size: int = 48,
                  spacing: float = 4.0, thickness: float = 5.0) -> None:
    """A small synthetic CT series: a water cylinder in air, slices listed head first (the
    first InstanceNumber is the most superior), the given in-plane orientation."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    r, c = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    pixels = np.where((r - centre) ** 2 + (c - centre) ** 2 < (0.4 * size) ** 2, 1024, 0)
    corner = -(size - 1) / 2 * spacing * (row + col)
    for n in range(n_slices):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Rotated", "ROT1"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""
        ds.SeriesNumber, ds.InstanceNumber = 2, n + 1
        ds.Manufacturer = "test"
        ds.ImageOrientationPatient = [float(v) for v in iop]
        z = (n_slices - 1 - n) * thickness  # head first: instance 1 is the top slice
        ds.ImagePositionPatient = [float(v) for v in corner + z * normal]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.save_as(folder / f"slice{n:03d}.dcm", enforce_file_format=True)


@pytest.mark.parametrize("iop", [
    [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0],  # rows to the patient's right, columns anterior
    [0.0, 1.0, 0.0, 1.0, 0.0, 0.0],  # transposed in plane
])
def test_seg_of_a_rotated_series_stays_in_place(tmp_path, iop):
    """Where the CT grid is not the canonical one, each frame must still hold, pixel for
    pixel, the overlay at that pixel's position in the patient."""
    ct_dir = tmp_path / "ct"
    _write_series(ct_dir, iop)
    study = load_study(ct_dir, _flat_pet(ct_dir, tmp_path / "pet.mha"))
    overlay = np.zeros(sitk.GetArrayViewFromImage(study.ct).shape, np.uint8)
    overlay[8:11, 5:12, 30:40] = 1  # superior, anterior, patient-left: asymmetric on purpose
    overlay[1:3, 30:36, 6:14] = 4  # inferior, posterior, patient-right
    out = write_dicom_seg(overlay, study, RESULT, tmp_path / "seg.dcm")
    _check_header(out, study.meta.ct_dicom_files)
    _check_against_overlay(out, study, overlay)


def test_empty_overlay_writes_nothing(tmp_path):
    ct_dir = tmp_path / "ct"
    _write_series(ct_dir, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], n_slices=4, size=16)
    study = load_study(ct_dir, _flat_pet(ct_dir, tmp_path / "pet.mha"))
    overlay = np.zeros(sitk.GetArrayViewFromImage(study.ct).shape, np.uint8)
    assert write_dicom_seg(overlay, study, RESULT, tmp_path / "seg.dcm") is None
    assert list(tmp_path.glob("*seg*")) == []
