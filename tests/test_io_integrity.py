"""Images that are incomplete, damaged or too large are refused before staging (issue 19).

Through the CLI (``nstage run``, in-process, and as a subprocess where what a native library
prints to the process's stderr matters) and ``inference.py``: exit code 2, one line on stderr
naming the file and the problem, and nothing left in the output folder. Small synthetic
images in tmp_path; the refusals happen before any analysis, so no realistic PET is needed.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_io_refusals import body_ct, body_pet, image, write

from nstage.cli import main as cli_main
from nstage.errors import InputError
from nstage.io import load_study, read_image
from nstage.io.integrity import data_layout, read_header, verify_stream
from nstage.io.limits import INPUT_SHARE, MemoryLimit, cgroup_limit, memory_limit

ROOT = Path(__file__).resolve().parents[1]


def noisy_ct(shape=(40, 64, 64), seed=0) -> np.ndarray:
    """A CT-like int16 volume whose compressed stream is long enough to cut anywhere."""
    arr = body_ct(shape)
    rng = np.random.default_rng(seed)
    arr[1:-1, 2:-2, 2:-2] += rng.normal(0, 25, size=arr[1:-1, 2:-2, 2:-2].shape).astype(np.int16)
    return arr


def pair(tmp_path: Path, ct_name: str, compress: bool = True) -> tuple[Path, Path]:
    """CT (compressed where the format allows) and PET files."""
    ct = tmp_path / ct_name
    sitk.WriteImage(image(noisy_ct()), str(ct), compress)
    pet = write(image(body_pet((40, 64, 64))), tmp_path / "pet.mha")
    return ct, pet


def cut(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def refused_by_run(capsys, ct: Path, pet: Path, out: Path, *expected: str) -> str:
    code = cli_main(["run", "--ct", str(ct), "--pet", str(pet), "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists()  # no output folder made, so nothing half-written
    return lines[0]


# --------------------------------------------------------------------------- truncated / damaged


@pytest.mark.parametrize(("name", "compress"), [
    ("ct.nii.gz", True), ("ct.nii", False), ("ct.mha", True), ("ct.mha", False),
    ("ct.nrrd", True), ("ct.nrrd", False)])
def test_truncated_ct_is_refused_naming_the_file(tmp_path, capsys, name, compress):
    ct, pet = pair(tmp_path, name, compress)
    assert (data_layout(read_header(ct)).encoding != "raw") == compress
    cut(ct, 0.6)
    line = refused_by_run(capsys, ct, pet, tmp_path / "out", str(ct), "is truncated",
                          "40 int16", "copy or export it again")
    assert line.startswith("nstage run: error: ")


def test_truncated_mha_without_compressed_size_is_refused_in_one_line(tmp_path):
    """A MetaImage whose header does not state the compressed length (other writers) is
    decoded before SimpleITK reads it, so ITK never prints its own complaint."""
    ct, pet = pair(tmp_path, "ct.mha")
    header, _, data = ct.read_bytes().partition(b"ElementDataFile = LOCAL\n")
    header = b"".join(ln + b"\n" for ln in header.split(b"\n")
                      if ln and not ln.startswith(b"CompressedDataSize"))
    ct.write_bytes(header + b"ElementDataFile = LOCAL\n" + data[:len(data) // 2])
    assert data_layout(read_header(ct)).compressed_size is None
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "nstage", "run", "--ct", str(ct), "--pet",
                          str(pet), "--out", str(out)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr  # nothing from the C++ library
    assert str(ct) in res.stderr and "is truncated" in res.stderr
    assert not out.exists()


def test_stream_that_cannot_reach_the_declared_size_is_refused_in_one_line(tmp_path):
    """Within the memory budget, but 1 KB of zlib data cannot decode to 33 MB: refused from
    the file's length, before SimpleITK allocates the image (or prints its own complaint)."""
    ct = crafted_huge_mha(tmp_path / "ct.mha", size=(256, 256, 256))
    pet = write(image(body_pet()), tmp_path / "pet.mha")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "nstage", "run", "--ct", str(ct), "--pet",
                          str(pet), "--out", str(out)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    assert res.stderr == (
        f"nstage run: error: {ct}: is truncated: its voxel data (compressed) decode to only "
        "1 KB of the 33.6 MB its header declares (256x256x256 int16) (the file is incomplete "
        "or damaged: copy or export it again)\n")
    assert not out.exists()


def test_nifti_header_declaring_more_slices_than_written_is_refused(tmp_path, capsys):
    ct, pet = pair(tmp_path, "ct.nii.gz")
    # Re-compress the complete file minus its last slices: a valid gzip stream whose
    # decoded size is shorter than the header declares (no truncation of the stream).
    raw = gzip.decompress(ct.read_bytes())
    ct.write_bytes(gzip.compress(raw[:-64 * 64 * 2 * 3]))
    refused_by_run(capsys, ct, pet, tmp_path / "out", str(ct), "is truncated",
                   "decode to only")


def test_complete_files_in_every_format_load_unchanged(tmp_path):
    arr = noisy_ct()
    pet = write(image(body_pet((40, 64, 64))), tmp_path / "pet.mha")
    for name in ("ct.nii.gz", "ct.nii", "ct.mha", "ct.nrrd"):
        ct = write(image(arr), tmp_path / name)
        study = load_study(ct, pet)
        assert np.array_equal(sitk.GetArrayViewFromImage(study.ct), arr), name


def test_multi_member_gzip_is_complete(tmp_path):
    """bgzip-style files hold several gzip members; the trailer of the last one does not give
    the total size, so the whole stream is decoded and accepted."""
    arr = noisy_ct()
    ct = write(image(arr), tmp_path / "ct.nii.gz")
    raw = gzip.decompress(ct.read_bytes())
    half = len(raw) // 2
    ct.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    assert np.array_equal(sitk.GetArrayFromImage(read_image(ct)), arr)
    header = read_header(ct)
    assert verify_stream(header, data_layout(header)) is None


def test_truncated_ct_in_grand_challenge_input_through_inference(tmp_path):
    inp = tmp_path / "input"
    ct = write(image(noisy_ct()), inp / "images" / "ct" / "ct.mha")
    write(image(body_pet((40, 64, 64))), inp / "images" / "pet" / "pet.mha")
    cut(ct, 0.5)
    out = tmp_path / "output"
    out.mkdir()
    res = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--input", str(inp),
                          "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"inference.py: error: {ct}: is truncated")
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- memory budget


def crafted_huge_mha(path: Path, size=(2048, 2048, 1024)) -> Path:
    """A MetaImage of a few hundred bytes whose header declares 8.6 GB of int16 voxels."""
    data = zlib.compress(bytes(1000))
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\n"
              "BinaryDataByteOrderMSB = False\nCompressedData = True\n"
              f"CompressedDataSize = {len(data)}\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n"
              "Offset = 0 0 0\nElementSpacing = 1 1 1\n"
              f"DimSize = {size[0]} {size[1]} {size[2]}\nElementType = MET_SHORT\n"
              "ElementDataFile = LOCAL\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + data)
    return path


# Peak RSS of this process image: VmHWM (ru_maxrss would also count the parent's memory,
# which Linux carries across the fork/exec that started it).
PEAK_RSS = """
import resource, sys
from pathlib import Path
from nstage.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status")
lines = status.read_text().splitlines() if status.exists() else []
hwm = [int(ln.split()[1]) for ln in lines if ln.startswith("VmHWM:")]
peak = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"peak-rss-kb {peak}", file=sys.stderr)
sys.exit(code)
"""


def test_huge_declared_size_is_refused_before_reading(tmp_path):
    ct = crafted_huge_mha(tmp_path / "huge.mha")
    assert ct.stat().st_size < 1000
    pet = write(image(body_pet()), tmp_path / "pet.mha")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", PEAK_RSS, "run", "--ct", str(ct), "--pet",
                          str(pet), "--out", str(out), "--max-memory-gb", "8"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = res.stderr.splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 2, res.stderr  # the error line and the test's own RSS line
    assert lines[0].startswith(f"nstage run: error: {ct}: declares 2048x2048x1024 int16")
    assert "8.59 GB" in lines[0] and "2 GB" in lines[0] and "--max-memory-gb" in lines[0]
    peak_gb = int(lines[1].split()[1]) / 1024**2
    assert peak_gb < 1.0, f"peak RSS {peak_gb:.2f} GB: the voxels were allocated"
    assert not out.exists()


def test_memory_flag_decides_what_fits(tmp_path):
    ct = write(image(noisy_ct()), tmp_path / "ct.mha")  # 40x64x64 int16: 328 KB
    pet = write(image(body_pet((40, 64, 64))), tmp_path / "pet.mha")  # float32: 655 KB
    with pytest.raises(InputError, match="CT and PET together 983 KB"):
        load_study(ct, pet, max_memory_gb=0.003)  # 0.75 MB for the inputs
    load_study(ct, pet, max_memory_gb=0.004)  # 1 MB: fits


def test_huge_image_refused_through_inference_with_its_flag(tmp_path):
    inp = tmp_path / "input"
    crafted_huge_mha(inp / "images" / "ct" / "ct.mha", size=(512, 512, 2000))  # 1.05 GB
    write(image(body_pet()), inp / "images" / "pet" / "pet.mha")
    out = tmp_path / "output"
    out.mkdir()
    cmd = [sys.executable, str(ROOT / "inference.py"), "--input", str(inp), "--output",
           str(out)]
    res = subprocess.run([*cmd, "--max-memory-gb", "4"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "declares 512x512x2000 int16 voxels, 1.05 GB" in res.stderr
    assert list(out.iterdir()) == []
    # The environment variable sets the same limit in the container.
    env = {**os.environ, "NSTAGE_MAX_MEMORY_GB": "4"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "1 GB the inputs may take with 4 GB" in res.stderr


def _cgroup_tree(root: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc_file = root / "proc-self-cgroup"
    proc_file.write_text(proc)
    return root / "sys-fs-cgroup", proc_file


def test_memory_limit_from_cgroup_v2_v1_or_physical(tmp_path):
    # cgroup v2: the smallest memory.max from the process's group up to the root.
    root, proc = _cgroup_tree(tmp_path / "v2", {
        "sys-fs-cgroup/memory.max": "max\n",
        "sys-fs-cgroup/job/memory.max": "8589934592\n",
        "sys-fs-cgroup/job/task/memory.max": "max\n"}, "0::/job/task\n")
    assert cgroup_limit(root, proc) == (8589934592, "cgroup v2 memory.max")
    limit = memory_limit(cgroup_root=root, proc_cgroup=proc)
    assert limit.nbytes == min(8589934592, os.sysconf("SC_PAGE_SIZE")
                               * os.sysconf("SC_PHYS_PAGES"))
    # cgroup v1: memory.limit_in_bytes; "no limit" is a huge number.
    root, proc = _cgroup_tree(tmp_path / "v1", {
        "sys-fs-cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "sys-fs-cgroup/memory/docker/abc/memory.limit_in_bytes": "4294967296\n"},
        "4:memory:/docker/abc\n0::/\n")
    assert cgroup_limit(root, proc) == (4294967296, "cgroup v1 memory.limit_in_bytes")
    # No limit anywhere: the machine's memory.
    root, proc = _cgroup_tree(tmp_path / "none", {
        "sys-fs-cgroup/memory.max": "max\n"}, "0::/\n")
    assert cgroup_limit(root, proc) is None
    assert memory_limit(cgroup_root=root, proc_cgroup=proc).source == "physical memory"
    # The flag wins, and the inputs may take a quarter.
    assert memory_limit(8.0) == MemoryLimit(8_000_000_000, "--max-memory-gb")
    assert MemoryLimit(8_000_000_000, "x").input_budget == 8_000_000_000 * INPUT_SHARE == 2e9


def test_bad_memory_flag_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["run", "--ct", "x", "--out", str(tmp_path), "--max-memory-gb", "0"])
    assert stop.value.code == 2
    assert "--max-memory-gb: must be more than 0" in capsys.readouterr().err
