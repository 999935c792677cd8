"""Image file headers, and proof that a file holds all the voxels its header declares.

SimpleITK fills what it cannot read of a truncated ``.nii``/``.nii.gz`` with zeros: lost slices
would simply show no uptake. So before an image's voxels are read:

1. :func:`read_header` reads the header alone (size, pixel type, metadata), so the memory
   budget can be checked before any voxel is read (:mod:`nstage.io.limits`).
2. :func:`check_layout` compares what the header declares with the bytes on disk: raw voxel
   data must have exactly the declared length; a MetaImage's compressed data must have the
   length its ``CompressedDataSize`` states (SimpleITK then refuses a stream that decodes
   short); a gzip stream must end with a trailer stating the declared size (a cut file ends
   in the middle of compressed data instead; several gzip members are legal). Where these
   cannot decide (no stated length, several members, or a declared size no deflate stream of
   that length can reach), the stream is decoded once, without keeping it
   (:func:`verify_stream`), which also checks the stream's own checksum.

Decoding every stream a second time would also catch a file damaged in its middle with its
length intact, but costs more than SimpleITK's read itself (about 1.4 s of CPU for a 512^3 CT
and its PET); that is left out, as is anything SimpleITK itself does not check in TIFF,
Analyze pairs, MetaImage file lists and ASCII NRRD.
"""

from __future__ import annotations

import bz2
import gzip
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nstage.errors import InputError

_CHUNK = 1 << 20           # bytes read from disk per step
_MAX_OUT = 1 << 22         # most decompressed bytes held at once while counting
_HEADER_LIMIT = 1 << 16    # text headers (MetaImage, NRRD) longer than this are not parsed
RE_EXPORT = "the file is incomplete or damaged: copy or export it again"


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} TB"  # pragma: no cover


human_bytes = _human


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header declares, read without its voxels.

    Attributes
    ----------
    path : Path
    size : tuple of int
        Voxels per axis (x, y, z[, t]), as SimpleITK reports them.
    dtype : numpy.dtype
        Type of one component as SimpleITK will return it.
    components : int
        Components per voxel (1 for CT/PET).
    metadata : dict of str to str
        The header's other key/value pairs (MetaImage and NRRD fields, NIfTI descrip...).
    """

    path: Path
    size: tuple[int, ...]
    dtype: np.dtype
    components: int = 1
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size, dtype=np.float64))

    @property
    def nbytes(self) -> int:
        """Bytes of voxel data as SimpleITK holds them in memory."""
        return self.voxels * self.components * self.dtype.itemsize

    def describe(self) -> str:
        """E.g. ``512x512x300 int16``."""
        dims = "x".join(str(s) for s in self.size)
        comps = f" x{self.components}" if self.components != 1 else ""
        return f"{dims} {self.dtype.name}{comps}"


def _component_dtype(pixel_id: int) -> np.dtype:
    # A one-voxel image of that pixel type gives the exact numpy type SimpleITK uses.
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).dtype


def read_header(path: str | Path) -> ImageHeader:
    """The header of an image file (no voxel data is read).

    Raises
    ------
    InputError
        Missing file, or a header SimpleITK cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("does not exist" if not path.exists() else "is not a file", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())
        raise InputError(f"cannot be read as an image ({msg[-160:]})", path,
                         hint="give a .mha, .nii.gz or .nrrd file or a DICOM folder") from None
    metadata = {}
    for key in reader.GetMetaDataKeys():
        try:
            metadata[key] = reader.GetMetaData(key)
        except RuntimeError:  # binary fields SimpleITK cannot show as text
            continue
    return ImageHeader(path, tuple(int(s) for s in reader.GetSize()),
                       _component_dtype(reader.GetPixelID()),
                       int(reader.GetNumberOfComponents() or 1), metadata)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class DataLayout:
    """Where an image's voxel bytes are and how they are encoded.

    Attributes
    ----------
    data_file : Path
        The file holding the voxel data (the image file itself, or a detached data file).
    offset : int
        Bytes before the (possibly compressed) voxel stream in ``data_file``.
    encoding : {"raw", "gzip", "zlib", "bzip2"}
    expected : int
        Bytes the stream must hold once decoded (for a gzipped NIfTI, header included).
    compressed_size : int or None
        Length of the compressed stream when the header states it (MetaImage).
    """

    data_file: Path
    offset: int
    encoding: str
    expected: int
    compressed_size: int | None = None


def _name(path: Path) -> str:
    return path.name.lower()


def data_layout(header: ImageHeader) -> DataLayout | None:
    """The voxel data layout of a NIfTI, MetaImage or NRRD file; None for other formats."""
    name = _name(header.path)
    try:
        if name.endswith((".nii", ".nii.gz")):
            return _nifti_layout(header.path)
        if name.endswith((".mha", ".mhd")):
            return _metaimage_layout(header)
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd_layout(header)
    except (OSError, EOFError, ValueError, struct.error, zlib.error):
        # A header SimpleITK accepted but we cannot parse: leave it to SimpleITK.
        return None
    return None


def _nifti_layout(path: Path) -> DataLayout | None:
    gz = _name(path).endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(544)
    except EOFError:
        head = b""
    if len(head) < 348:
        raise InputError(f"holds only {len(head)} bytes of a NIfTI header (348 expected)",
                         path, hint=RE_EXPORT)
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = int(struct.unpack(order + "q", head[168:176])[0])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]], dtype=np.float64))
    offset = max(offset, 352 if size == 348 else 544)  # the NIfTI minimum for one file
    data_bytes = voxels * (bitpix // 8)
    if gz:
        return DataLayout(path, 0, "gzip", offset + data_bytes)
    return DataLayout(path, offset, "raw", data_bytes)


def _text_header(path: Path, stop) -> tuple[list[tuple[str, str]], int]:
    """``(key, value)`` lines of a text header and the byte offset after the last line read.

    ``stop(key, line)`` returns True on the line that ends the header.
    """
    with open(path, "rb") as fh:
        raw = fh.read(_HEADER_LIMIT)
    pairs, pos = [], 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError("header without end")
        line = raw[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        key, value = _split_pair(line)
        pairs.append((key, value))
        if stop(key, line):
            return pairs, pos
    raise ValueError("header too long or without end")


def _split_pair(line: str) -> tuple[str, str]:
    for sep in (":=", " = ", "=", ":"):
        if sep in line:
            key, value = line.split(sep, 1)
            return key.strip(), value.strip()
    return line.strip(), ""


def _metaimage_layout(header: ImageHeader) -> DataLayout | None:
    path = header.path
    pairs, end = _text_header(path, lambda key, line: key.lower() == "elementdatafile")
    fields = {k.lower(): v for k, v in pairs}
    target = fields.get("elementdatafile", "")
    if target.upper() == "LOCAL":
        data_file, offset = path, end
    elif target and target.upper() != "LIST" and "%" not in target and " " not in target:
        data_file = path.parent / target
        offset = int(fields.get("headersize", "0") or 0)
        if offset < 0:
            return None  # "data at the end of the file": length not known from the start
    else:
        return None
    compressed = fields.get("compresseddata", "false").lower() == "true"
    size = fields.get("compresseddatasize")
    if not data_file.is_file():
        raise InputError(f"its data file {data_file.name} does not exist", path,
                         hint="keep the .mhd file and its data file together")
    return DataLayout(data_file, offset, "zlib" if compressed else "raw", header.nbytes,
                      int(size) if compressed and size else None)


def _nrrd_layout(header: ImageHeader) -> DataLayout | None:
    path = header.path
    detached_ok = _name(path).endswith(".nhdr")
    pairs, end = _text_header(path, lambda key, line: line.strip() == "")
    fields = {k.lower().replace(" ", ""): v for k, v in pairs if not k.startswith("#")}
    encoding = {"raw": "raw", "gz": "gzip", "gzip": "gzip", "bz2": "bzip2",
                "bzip2": "bzip2"}.get(fields.get("encoding", "").lower())
    if encoding is None:
        return None  # ascii/hex/zstd: SimpleITK parses those itself
    if int(fields.get("lineskip", "0") or 0) != 0:
        return None
    byte_skip = int(fields.get("byteskip", "0") or 0)
    target = fields.get("datafile")
    if target:
        if not detached_ok and target == "":
            return None
        if target.upper().startswith("LIST") or " " in target or "%" in target:
            return None
        data_file, offset = path.parent / target, 0
        if not data_file.is_file():
            raise InputError(f"its data file {target} does not exist", path,
                             hint="keep the .nhdr file and its data file together")
    else:
        data_file, offset = path, end
    if byte_skip < 0:
        return None  # "data at the end of the file"
    return DataLayout(data_file, offset + byte_skip, encoding, header.nbytes)


# --------------------------------------------------------------------------- checks


def _truncated(header: ImageHeader, have: int, expected: int, what: str) -> InputError:
    """``what`` completes "is truncated: its voxel data ..."."""
    return InputError(
        f"is truncated: its voxel data {what} {_human(have)} of the {_human(expected)} its "
        f"header declares ({header.describe()})", header.path, hint=RE_EXPORT)


# deflate cannot encode more than about 1032 decoded bytes per stored byte (RFC 1951: a
# 258-byte match costs at least 2 bits); a stream shorter than declared / this cannot decode
# to the declared size.
MAX_DEFLATE_RATIO = 1100


def check_layout(header: ImageHeader, layout: DataLayout | None) -> None:
    """Lengths on disk against what the header declares (see the module docstring).

    Raises
    ------
    InputError
        The data are shorter (or longer) than declared, or a compressed stream is cut off,
        damaged or cannot decode to the declared size.
    """
    if layout is None:
        return
    available = layout.data_file.stat().st_size - layout.offset
    if layout.encoding == "raw":
        if available < layout.expected:
            raise _truncated(header, max(available, 0), layout.expected, "hold only")
        if available > layout.expected:
            raise InputError(
                f"holds {_human(available)} of voxel data but its header declares "
                f"{header.describe()} ({_human(layout.expected)}): the header does not "
                "describe the data", header.path, hint="export the image again")
        return
    if layout.compressed_size is not None and available < layout.compressed_size:
        raise _truncated(header, max(available, 0), layout.compressed_size,
                         "(compressed) hold only")
    deflate = layout.encoding in ("gzip", "zlib")
    impossible = deflate and layout.expected > MAX_DEFLATE_RATIO * max(available, 1)
    if not impossible:
        if layout.compressed_size is not None:
            return  # SimpleITK refuses a MetaImage stream that decodes short
        if layout.encoding == "gzip" and _gzip_trailer_matches(layout):
            return
    problem = verify_stream(header, layout)
    if problem is not None:
        raise problem


def _gzip_trailer_matches(layout: DataLayout) -> bool:
    with open(layout.data_file, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() - layout.offset < 18:
            return False
        fh.seek(-4, 2)
        isize = struct.unpack("<I", fh.read(4))[0]
    return isize == layout.expected % (1 << 32)


def _decompressor(encoding: str):
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "zlib":
        return zlib.decompressobj(zlib.MAX_WBITS)
    return bz2.BZ2Decompressor()


def _feed(dec, data: bytes, bz: bool) -> tuple[int, bytes | None]:
    """Decode ``data``; (bytes decoded, input left after the end of the stream or None)."""
    n = 0
    if bz:
        n += len(dec.decompress(data, _MAX_OUT))
        while not dec.eof and not dec.needs_input:
            n += len(dec.decompress(b"", _MAX_OUT))
    else:
        while data and not dec.eof:
            n += len(dec.decompress(data, _MAX_OUT))
            data = dec.unconsumed_tail
    return n, (dec.unused_data if dec.eof else None)


def _decoded_length(layout: DataLayout) -> tuple[int, bool]:
    """Bytes the stream decodes to (without keeping them), and whether it ended properly.

    gzip streams may hold several members (bgzip); bytes after the last complete stream that
    are not another member are ignored, as gzip and SimpleITK do.

    Raises
    ------
    zlib.error, OSError, EOFError
        The stream is damaged (bad data or checksum).
    """
    total = 0
    bz = layout.encoding == "bzip2"
    dec = _decompressor(layout.encoding)
    between_members = False
    with open(layout.data_file, "rb") as fh:
        fh.seek(layout.offset)
        while data := fh.read(_CHUNK):
            while data:
                if between_members:
                    if layout.encoding != "gzip" or data[:2] != b"\x1f\x8b":
                        return total, True  # trailing bytes after the stream
                    dec, between_members = _decompressor("gzip"), False
                n, rest = _feed(dec, data, bz)
                total += n
                if rest is None:
                    break
                between_members, data = True, rest
    if between_members:
        return total, True
    if not bz:
        total += len(dec.flush())
    return total, dec.eof


def verify_stream(header: ImageHeader, layout: DataLayout | None) -> InputError | None:
    """Decode the whole compressed stream; the problem found, or None when it is complete.

    Checks that the stream ends properly (its own checksum included) and decodes to exactly
    the size the header declares. Raw data need no decoding (:func:`check_layout` covers them).
    """
    if layout is None or layout.encoding == "raw":
        return None
    try:
        length, ended = _decoded_length(layout)
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        return InputError(f"its compressed voxel data are damaged ({exc})", header.path,
                          hint=RE_EXPORT)
    if not ended or length < layout.expected:
        what = "(compressed) end after" if not ended else "(compressed) decode to only"
        return _truncated(header, length, layout.expected, what)
    if length > layout.expected:
        return InputError(
            f"decodes to {_human(length)} but its header declares {header.describe()} "
            f"({_human(layout.expected)}): the header does not describe the data",
            header.path, hint="export the image again")
    return None


_IDENTITY_KEYS = {
    "patient": ("patientid", "0010|0020", "patient_id"),
    "study": ("studyinstanceuid", "0020|000d", "study_instance_uid"),
    "frame_of_reference": ("frameofreferenceuid", "0020|0052", "frame_of_reference_uid"),
}


def identity_from_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Patient and study identity carried by an image file's header fields.

    MetaImage and NRRD files converted from DICOM often keep ``PatientID``,
    ``StudyInstanceUID`` and ``FrameOfReferenceUID`` (by name, or as DICOM tags ``0010|0020``,
    ``0020|000d``, ``0020|0052``). Returns ``{"patient": ..., "study": ...,
    "frame_of_reference": ...}`` for those present and not empty.
    """
    lowered = {re.sub(r"\s+", "", k).lower(): v for k, v in metadata.items()}
    found = {}
    for what, keys in _IDENTITY_KEYS.items():
        for key in keys:
            value = str(lowered.get(key, "") or "").strip().strip("\x00").strip()
            if value:
                found[what] = value
                break
    return found
