"""Header parsing without pixel decoding.

:func:`read_header` reads only the attributes that indexing and volume assembly need, and
the byte offset of the pixel data.  For the common encodings (Explicit and Implicit VR Little
Endian, and encapsulated syntaxes whose data set is Explicit VR Little Endian) a bounded
element walker reads the header: it skips every value it does not need by its length and
never decodes pixels.  Anything else (big endian, deflate, files without a meta header) goes
through pydicom.  Both paths produce the same :class:`Header`; a test checks they agree on
every real file.

Every structural problem raises :class:`~dicom_io.errors.UnreadableFileError` naming the file.
The walker only moves forward and limits nesting, so no input can make it loop or recurse
without bound.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_io.errors import UnreadableFileError

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE,
                             DEFLATED_EXPLICIT_VR_LE})
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

MAX_SEQUENCE_DEPTH = 32
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT",
                       b"UN", b"SV", b"UV"})
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010

# tag -> (keyword, VR) for every attribute the header keeps.
_WANTED: dict[int, tuple[str, str]] = {
    0x00020002: ("MediaStorageSOPClassUID", "UI"),
    0x00020003: ("MediaStorageSOPInstanceUID", "UI"),
    0x00020010: ("TransferSyntaxUID", "UI"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180060: ("KVP", "DS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181120: ("GantryDetectorTilt", "DS"),
    0x00181210: ("ConvolutionKernel", "SH"),
    0x00200010: ("StudyID", "SH"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00280301: ("BurnedInAnnotation", "CS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
KEYWORDS: tuple[str, ...] = tuple(kw for kw, _ in _WANTED.values())
_STRUCT_HH = struct.Struct("<HH")
_STRUCT_HHL = struct.Struct("<HHL")
_STRUCT_H = struct.Struct("<H")
_STRUCT_L = struct.Struct("<L")
_STRUCT_EXPLICIT = struct.Struct("<HH2sH")


@dataclass(frozen=True, slots=True)
class Header:
    """The attributes of one DICOM file that dicom_io uses, plus where its pixels are.

    ``patient_id``, ``accession_number`` and ``patient_birth_date`` are identifiers (and
    ``patient_sex`` is PHI beside them): keep them out of logs.
    """

    path: str
    member: str | None
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    image_type: tuple[str, ...]
    series_description: str
    series_number: int | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    samples_per_pixel: int | None
    photometric: str
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    number_of_frames: int
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    rescale_slope: float
    rescale_intercept: float
    kernel: str
    gantry_tilt: float | None
    burned_in_annotation: str
    kvp: float | None
    manufacturer: str
    study_date: str
    patient_id: str = field(repr=False)
    accession_number: str = field(repr=False)
    #: Offset of the PixelData value in the file (None if there is no pixel data).
    pixel_offset: int | None = None
    #: Length of the PixelData value (None when encapsulated, i.e. undefined length).
    pixel_length: int | None = None
    #: PatientBirthDate as stored (YYYYMMDD; "" where absent, e.g. de-identified)
    patient_birth_date: str = field(default="", repr=False)
    #: PatientSex upper-cased ("M", "F", "O"; "" where absent)
    patient_sex: str = field(default="", repr=False)

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class_uid == DICOMDIR_SOP_CLASS

    @property
    def is_native(self) -> bool:
        """True if the pixel data is uncompressed little endian, readable at its offset."""
        return (
            self.transfer_syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE)
            and self.pixel_offset is not None
            and self.pixel_length is not None
        )

    @property
    def source(self) -> str:
        """A display name for the file (the zip member after ``!`` if any)."""
        return f"{self.path}!{self.member}" if self.member else self.path


class _Fallback(Exception):
    """The walker does not handle this encoding; pydicom must."""


class _NeedMore(Exception):
    """Only a prefix of the file was read and the header goes on past it."""


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").rstrip(" \x00").strip()


def _values(raw: bytes) -> list[str]:
    return [v.strip(" \x00") for v in raw.decode("latin-1").split("\\")]


def _convert(kw: str, vr: str, raw: bytes, path: str) -> Any:
    try:
        if vr == "US":
            if len(raw) < 2:
                raise ValueError("short US value")
            return _STRUCT_H.unpack_from(raw)[0]
        if vr == "DS":
            vals = [v for v in _values(raw) if v]
            if not vals:
                return None
            nums = tuple(float(v) for v in vals)
            return nums if kw in ("ImagePositionPatient", "ImageOrientationPatient",
                                  "PixelSpacing") else nums[0]
        if vr == "IS":
            vals = [v for v in _values(raw) if v]
            return int(float(vals[0])) if vals else None
        if kw == "ImageType":
            return tuple(v.upper() for v in _values(raw) if v)
        return _text(raw)
    except (ValueError, struct.error) as exc:
        raise UnreadableFileError(f"invalid {kw} value ({exc})", path=path) from None


class _Walker:
    """Forward-only little-endian element walker over an in-memory buffer."""

    __slots__ = ("buf", "end", "file_size", "found", "path", "pixel_length", "pixel_offset")

    def __init__(self, buf: bytes, path: str, file_size: int) -> None:
        self.buf = buf
        self.end = len(buf)
        self.file_size = file_size
        self.path = path
        self.found: dict[str, Any] = {}
        self.pixel_offset: int | None = None
        self.pixel_length: int | None = None

    def fail(self, msg: str) -> UnreadableFileError:
        return UnreadableFileError(msg, path=self.path)

    def walk(self, pos: int, end: int, explicit: bool, depth: int, top: bool,
             stop_group: int | None = None) -> int:
        """Walk elements from ``pos`` to ``end``; return the position after the last one.

        Inside an undefined-length item the walk ends at the item delimiter.  With
        ``stop_group`` the walk returns at the first element of another group.
        """
        buf = self.buf
        wanted = _WANTED
        found = self.found
        bufend = self.end
        unpack_hhl = _STRUCT_HHL.unpack_from
        unpack_exp = _STRUCT_EXPLICIT.unpack_from
        unpack_l = _STRUCT_L.unpack_from
        long_vrs = _LONG_VRS
        while pos < end:
            if pos + 8 > bufend:
                raise self._need()
            if explicit:
                group, elem, vr, length = unpack_exp(buf, pos)
                if stop_group is not None and group != stop_group:
                    return pos
                if group == 0xFFFE:  # item tags carry no VR
                    length = unpack_l(buf, pos + 4)[0]
                    vr = b""
                    pos += 8
                elif vr in long_vrs:
                    if pos + 12 > bufend:
                        raise self._need()
                    length = unpack_l(buf, pos + 8)[0]
                    pos += 12
                else:
                    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                        raise self.fail(f"invalid VR {vr!r} for tag ({group:04X},{elem:04X})")
                    pos += 8
            else:
                group, elem, length = unpack_hhl(buf, pos)
                vr = b""
                pos += 8
            tag = (group << 16) | elem
            if group == 0xFFFE:
                if tag == _ITEM_DELIM:
                    return pos
                raise self.fail(f"unexpected item tag at byte {pos - 8}")
            if tag == _PIXEL_DATA and top:
                self.pixel_offset = pos
                self.pixel_length = None if length == _UNDEFINED else length
                if length != _UNDEFINED and pos + length > self.file_size:
                    raise self.fail(
                        f"PixelData declares {length} bytes but the file ends after "
                        f"{self.file_size - pos}"
                    )
                return bufend
            if length == _UNDEFINED:
                if explicit and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                    raise self.fail(f"undefined length on VR {vr!r} at byte {pos}")
                # An undefined-length UN value is an implicit VR sequence (PS3.5 6.2.2).
                pos = self._skip_sequence(pos, explicit and vr == b"SQ", depth + 1)
                continue
            if pos + length > bufend:
                if bufend < self.file_size:
                    raise _NeedMore()
                raise self.fail(
                    f"element ({group:04X},{elem:04X}) declares {length} bytes but the file "
                    f"ends after {bufend - pos}"
                )
            if top and tag in wanted:
                kw, want_vr = wanted[tag]
                if kw not in found:
                    found[kw] = _convert(kw, want_vr, buf[pos:pos + length], self.path)
            pos += length
        return pos

    def _need(self) -> Exception:
        """The buffer ended: ask for the whole file if only a prefix was read."""
        if self.end < self.file_size:
            return _NeedMore()
        return self.fail("truncated: the file ends inside the header")

    def _skip_sequence(self, pos: int, explicit: bool, depth: int) -> int:
        if depth > MAX_SEQUENCE_DEPTH:
            raise self.fail(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
        buf = self.buf
        while True:
            if pos + 8 > self.end:
                if self.end < self.file_size:
                    raise _NeedMore()
                raise self.fail("sequence not terminated before the end of the file")
            tag_g, tag_e, length = _STRUCT_HHL.unpack_from(buf, pos)
            tag = (tag_g << 16) | tag_e
            pos += 8
            if tag == _SEQ_DELIM:
                return pos
            if tag != _ITEM:
                raise self.fail(f"expected an item in a sequence at byte {pos - 8}")
            if length == _UNDEFINED:
                pos = self.walk(pos, self.end, explicit, depth, top=False)
            else:
                if pos + length > self.end:
                    if self.end < self.file_size:
                        raise _NeedMore()
                    raise self.fail("sequence item runs past the end of the file")
                self.walk(pos, pos + length, explicit, depth, top=False)
                pos += length


def _walk_buffer(buf: bytes, path: str, file_size: int
                 ) -> tuple[dict[str, Any], int | None, int | None]:
    if len(buf) < 132 or buf[128:132] != b"DICM":
        if len(buf) < file_size:
            raise _NeedMore
        raise _Fallback
    w = _Walker(buf, path, file_size)
    pos = w.walk(132, len(buf), explicit=True, depth=0, top=True, stop_group=0x0002)
    ts = w.found.get("TransferSyntaxUID")
    if not ts:
        raise _Fallback
    if ts in (EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE):
        raise _Fallback
    explicit = ts != IMPLICIT_VR_LE
    w.walk(pos, len(buf), explicit=explicit, depth=0, top=True)
    return w.found, w.pixel_offset, w.pixel_length


def _from_pydicom(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    meta = getattr(ds, "file_meta", None)
    for tag, (kw, vr) in _WANTED.items():
        src = meta if (tag >> 16) == 0x0002 else ds
        if src is None or tag not in src:
            continue
        elem = src[tag]
        value = elem.value
        if value is None or value == "":
            continue
        if vr == "US":
            out[kw] = int(value[0] if isinstance(value, list | tuple) else value)
        elif vr == "DS":
            vals = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
            nums = tuple(float(v) for v in vals)
            out[kw] = nums if kw in ("ImagePositionPatient", "ImageOrientationPatient",
                                     "PixelSpacing") else nums[0]
        elif vr == "IS":
            v = value[0] if isinstance(value, pydicom.multival.MultiValue) else value
            out[kw] = int(float(v))
        elif kw == "ImageType":
            vals = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
            out[kw] = tuple(str(v).strip().upper() for v in vals if str(v).strip())
        else:
            out[kw] = str(value).strip()
    return out


_CRITICAL_NUMBERS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                     "RescaleSlope", "RescaleIntercept")
_OPTIONAL_NUMBERS = ("SliceThickness", "SpacingBetweenSlices", "GantryDetectorTilt", "KVP")


def _build(found: dict[str, Any], path: str, member: str | None,
           pixel_offset: int | None, pixel_length: int | None) -> Header:
    def s(kw: str) -> str:
        v = found.get(kw)
        return v if isinstance(v, str) else ""

    def opt_int(kw: str) -> int | None:
        v = found.get(kw)
        return v if isinstance(v, int) else None

    def opt_float(kw: str) -> float | None:
        v = found.get(kw)
        return float(v) if isinstance(v, float | int) else None

    def vec(kw: str, n: int) -> Any:
        v = found.get(kw)
        if v is None:
            return None
        if not isinstance(v, tuple) or len(v) != n:
            raise UnreadableFileError(f"{kw} must have {n} values, got {v!r}",
                                      path=f"{path}!{member}" if member else path)
        return v

    source = f"{path}!{member}" if member else path
    for kw in _CRITICAL_NUMBERS:
        v = found.get(kw)
        nums = v if isinstance(v, tuple) else (v,) if isinstance(v, float) else ()
        if any(not math.isfinite(x) for x in nums):
            raise UnreadableFileError(f"{kw} holds a non-finite number", path=source)
    for kw in _OPTIONAL_NUMBERS:
        v = found.get(kw)
        if isinstance(v, float) and not math.isfinite(v):
            found[kw] = None
    slope = found.get("RescaleSlope")
    intercept = found.get("RescaleIntercept")
    if slope == 0.0:
        raise UnreadableFileError("RescaleSlope is 0", path=source)
    frames = found.get("NumberOfFrames")
    return Header(
        path=path,
        member=member,
        transfer_syntax=s("TransferSyntaxUID"),
        sop_class_uid=s("SOPClassUID") or s("MediaStorageSOPClassUID"),
        sop_instance_uid=s("SOPInstanceUID") or s("MediaStorageSOPInstanceUID"),
        study_uid=s("StudyInstanceUID"),
        series_uid=s("SeriesInstanceUID"),
        frame_of_reference_uid=s("FrameOfReferenceUID"),
        modality=s("Modality").upper(),
        image_type=found.get("ImageType", ()),
        series_description=s("SeriesDescription"),
        series_number=opt_int("SeriesNumber"),
        instance_number=opt_int("InstanceNumber"),
        rows=opt_int("Rows"),
        columns=opt_int("Columns"),
        samples_per_pixel=opt_int("SamplesPerPixel"),
        photometric=s("PhotometricInterpretation").upper(),
        bits_allocated=opt_int("BitsAllocated"),
        bits_stored=opt_int("BitsStored"),
        pixel_representation=opt_int("PixelRepresentation"),
        number_of_frames=frames if isinstance(frames, int) and frames > 0 else 1,
        pixel_spacing=vec("PixelSpacing", 2),
        slice_thickness=opt_float("SliceThickness"),
        spacing_between_slices=opt_float("SpacingBetweenSlices"),
        position=vec("ImagePositionPatient", 3),
        orientation=vec("ImageOrientationPatient", 6),
        rescale_slope=float(slope) if isinstance(slope, float) else 1.0,
        rescale_intercept=float(intercept) if isinstance(intercept, float) else 0.0,
        kernel=s("ConvolutionKernel"),
        gantry_tilt=opt_float("GantryDetectorTilt"),
        burned_in_annotation=s("BurnedInAnnotation").upper(),
        kvp=opt_float("KVP"),
        manufacturer=s("Manufacturer"),
        study_date=s("StudyDate"),
        patient_id=s("PatientID"),
        accession_number=s("AccessionNumber"),
        pixel_offset=pixel_offset,
        pixel_length=pixel_length,
        patient_birth_date=s("PatientBirthDate"),
        patient_sex=s("PatientSex").upper(),
    )


def header_from_dataset(ds: Dataset, path: str, member: str | None = None) -> Header:
    """A :class:`Header` from a pydicom data set (no pixel offset is known)."""
    return _build(_from_pydicom(ds), path, member, None, None)


def parse_header(buf: bytes, path: str, member: str | None = None,
                 file_size: int | None = None) -> Header:
    """Parse the header of a DICOM file from ``buf``.

    ``buf`` holds the whole file, or only its first bytes when ``file_size`` (the full size)
    is larger; then :class:`_NeedMore` is raised if the header runs past the prefix.

    Raises:
        UnreadableFileError: the bytes are not DICOM or are malformed.
    """
    name = f"{path}!{member}" if member else path
    size = len(buf) if file_size is None else file_size
    try:
        found, offset, length = _walk_buffer(buf, name, size)
    except _Fallback:
        if len(buf) < size:
            raise _NeedMore from None
        return _parse_with_pydicom(buf, path, member)
    except (struct.error, IndexError) as exc:
        raise UnreadableFileError(f"malformed DICOM structure ({exc})", path=name) from None
    if offset is None and "TransferSyntaxUID" in found and not found.get("SOPClassUID") \
            and not found.get("MediaStorageSOPClassUID"):
        raise UnreadableFileError("no SOP Class UID: not a DICOM composite object", path=name)
    return _build(found, path, member, offset, length)


def _parse_with_pydicom(buf: bytes, path: str, member: str | None) -> Header:
    import io

    name = f"{path}!{member}" if member else path
    try:
        ds = pydicom.dcmread(io.BytesIO(buf), force=True, stop_before_pixels=True)
        # Touch every wanted element so deferred-value errors surface here.
        found = _from_pydicom(ds)
    except InvalidDicomError as exc:
        raise UnreadableFileError(f"not a DICOM file ({exc})", path=name) from None
    except UnreadableFileError:
        raise
    except Exception as exc:  # pydicom raises many types (zlib.error, BytesLengthException, …)
        raise UnreadableFileError(f"malformed DICOM ({type(exc).__name__}: {exc})",
                                  path=name) from None
    if not found.get("SOPClassUID") and not found.get("MediaStorageSOPClassUID"):
        if buf[128:132] != b"DICM":
            raise UnreadableFileError(
                "not a DICOM file: no 'DICM' marker and no SOP Class UID in what parses as a "
                "data set", path=name)
        raise UnreadableFileError("no SOP Class UID: not a DICOM composite object", path=name)
    if not found.get("TransferSyntaxUID"):
        implicit, little = ds.original_encoding
        found["TransferSyntaxUID"] = (
            IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE if little else EXPLICIT_VR_BE
        )
    return _build(found, path, member, None, None)


PREFIX_BYTES = 64 * 1024


def read_header(path: str | Path) -> Header:
    """Read the header of the DICOM file at ``path`` (pixels are neither read nor decoded).

    Only the first 64 KiB are read unless the header is longer.

    Raises:
        UnreadableFileError: the file cannot be read or is not valid DICOM.
    """
    p = str(path)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            buf = fh.read(PREFIX_BYTES)
            if len(buf) < size:
                try:
                    return parse_header(buf, p, file_size=size)
                except _NeedMore:
                    buf += fh.read()
    except OSError as exc:
        raise UnreadableFileError(f"cannot read file ({exc.strerror})", path=p) from None
    return parse_header(buf, p)
