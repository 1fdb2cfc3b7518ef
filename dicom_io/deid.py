"""De-identification of DICOM files per DICOM PS3.15 Annex E.

Implements the Basic Application Level Confidentiality Profile with three options:

* Retain Longitudinal Temporal Information with Modified Dates (dates shifted per patient),
* Retain Patient Characteristics (sex, age, size, weight, ethnic group, smoking status, ...),
* Clean Descriptors (free-text descriptors kept only when they pass a conservative check).

The attribute table (PS3.15 Table E.1-1) lives in :mod:`dicom_io._annex_e`; this module applies
it at every sequence depth and adds rules by value representation for attributes the table does
not list (every UID is remapped, every date shifted, every person name emptied, every private
attribute removed).  See ``docs/deid.md`` for the choices made and their reasons.

Pseudonyms, UIDs and the date shift are derived with HMAC-SHA256 under a secret
:class:`DeidKey`: the same input and key always give the same output, so the instances of a
study stay one study across runs, and nobody without the key can reverse or recompute them.

Nothing here logs or records a value taken from the input: :class:`DeidChange` holds the tag,
keyword, action and location only, and the log carries counts, pseudonymous IDs and new UIDs.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from dicom_io import _annex_e as annex_e
from dicom_io.errors import (
    BurnedInAnnotationError,
    DeidentificationError,
    InvalidUIDError,
    UnreadableFileError,
)
from dicom_io.uids import uid_path, validate_uid

__all__ = [
    "DATE_SHIFT_MAX_DAYS",
    "DATE_SHIFT_MIN_DAYS",
    "DeidChange",
    "DeidFileRecord",
    "DeidKey",
    "DeidOptions",
    "DeidReport",
    "DeidResult",
    "DeidSkippedFile",
    "deidentify_dataset",
    "deidentify_file",
    "deidentify_path",
    "is_safe_descriptor",
    "load_deid_options",
    "remap_uid",
]

logger = logging.getLogger(__name__)

#: Dates move back in time by a per-patient number of days in
#: ``[DATE_SHIFT_MIN_DAYS, DATE_SHIFT_MAX_DAYS]`` (``date_shift_days`` is the negative of it).
DATE_SHIFT_MIN_DAYS: Final = 1
DATE_SHIFT_MAX_DAYS: Final = 1095

#: Implementation Version Name written into the file meta of every output file.
IMPLEMENTATION_VERSION_NAME: Final = "MEDASSIST_DEID"

_MAX_DEPTH: Final = 32
_DUMMY_TEXT: Final = "DEIDENTIFIED"
_DUMMY_DATE: Final = "19000101"
_DUMMY_DATETIME: Final = "19000101000000"
_DUMMY_TIME: Final = "000000"
_DUMMY_BYTES: Final = b"\x00" * 8

_TEXT_VRS: Final = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UT"})
_STRING_VRS: Final = _TEXT_VRS | frozenset({"CS", "PN", "UR", "AS", "DA", "DT", "TM", "DS", "IS"})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

_SECONDARY_CAPTURE_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
)
_DICOMDIR_CLASS: Final = "1.2.840.10008.1.3.10"

# Tags handled outside the table walk.
_PATIENT_NAME: Final = 0x00100010
_PATIENT_ID: Final = 0x00100020
_BURNED_IN_ANNOTATION: Final = 0x00280301
_TIMEZONE_OFFSET: Final = 0x00080201
_TOP_LEVEL_REWRITTEN: Final = frozenset(
    {
        0x00120062,  # PatientIdentityRemoved
        0x00120063,  # DeidentificationMethod
        0x00120064,  # DeidentificationMethodCodeSequence
        0x00280303,  # LongitudinalTemporalInformationModified
    }
)

# Sequences of references to other instances that Table E.1-1 lets us empty (X/Z, X/Z/D) but
# that are kept with remapped UIDs instead, so the de-identified set stays linked.
_REFERENCE_SEQUENCES: Final = frozenset(
    {
        0x00081110,  # ReferencedStudySequence
        0x00081111,  # ReferencedPerformedProcedureStepSequence
    }
)

# UI attributes that name a class, syntax or coding resource (not an instance): never remapped
# unless Table E.1-1 says so.
_DEFINITIONAL_UID_KEYWORDS: Final = frozenset(
    {
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "EncryptedContentTransferSyntaxUID",
        "MACCalculationTransferSyntaxUID",
        "PrivateInformationCreatorUID",
    }
)

# Code Sequence Macro attributes: controlled terminology, kept inside cleaned sequences.
_CODE_MACRO_KEYWORDS: Final = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "ContextIdentifier",
        "MappingResource",
        "MappingResourceName",
        "ContextGroupExtensionFlag",
        "ContextGroupExtensionCreatorUID",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
    }
)

_FILE_META_KEPT: Final = (
    "FileMetaInformationVersion",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
)


# --------------------------------------------------------------------------------------------
# Options, key and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeidOptions:
    """What to retain and what to clean, beyond the Basic Profile.

    Attributes:
        retain_longitudinal_modified_dates: shift dates and datetimes by a per-patient offset
            (Retain Longitudinal Temporal Information with Modified Dates Option); when False,
            dates are emptied or removed per the Basic Profile.
        retain_patient_characteristics: keep sex, age, size, weight, ethnic group, smoking and
            pregnancy status (Retain Patient Characteristics Option).
        clean_descriptors: keep free-text descriptors that pass :func:`is_safe_descriptor`
            (Clean Descriptors Option); when False they are removed per the Basic Profile.
        clean_pixels: for images flagged with burned-in annotation, blank
            ``pixel_clean_regions`` (or every whole frame if none are given) instead of
            refusing with :class:`~dicom_io.errors.BurnedInAnnotationError`.
        remove_private_tags: remove every private attribute (odd group), at every depth, as the
            Basic Profile requires.  False keeps them and flags the result.
        pixel_clean_regions: rectangles ``(x, y, width, height)`` in pixels (x = column,
            y = row) to blank in every frame when ``clean_pixels`` applies.
    """

    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = True
    clean_pixels: bool = False
    remove_private_tags: bool = True
    pixel_clean_regions: tuple[tuple[int, int, int, int], ...] = ()

    def __post_init__(self) -> None:
        for region in self.pixel_clean_regions:
            if len(region) != 4 or any(not isinstance(v, int) or v < 0 for v in region):
                raise DeidentificationError(
                    f"pixel_clean_regions entry {region!r} is invalid; give (x, y, width, "
                    "height) as four non-negative integers"
                )
            if region[2] == 0 or region[3] == 0:
                raise DeidentificationError(
                    f"pixel_clean_regions entry {region!r} has zero width or height; "
                    "give a rectangle that covers the annotation"
                )


class DeidKey:
    """The secret behind every pseudonym, UID and date shift.

    Keep it outside the de-identified data: whoever holds it can link outputs back to the
    inputs they came from (by recomputing), though not invert them.  ``repr`` shows only a
    fingerprint, never the secret.
    """

    MIN_BYTES: Final = 32
    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray):
            raise DeidentificationError("the de-identification key must be bytes")
        if len(secret) < self.MIN_BYTES:
            raise DeidentificationError(
                f"the de-identification key has {len(secret)} bytes; at least {self.MIN_BYTES} "
                "are needed (make one with DeidKey.generate())"
            )
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> DeidKey:
        """A new random key of 32 bytes from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(cls.MIN_BYTES))

    @classmethod
    def from_file(cls, path: str | Path) -> DeidKey:
        """Read a key file: hexadecimal text (64+ hex digits) or raw bytes (32+ bytes).

        Raises:
            DeidentificationError: the file is missing, unreadable, or holds too short a key.
        """
        p = Path(path)
        try:
            data = p.read_bytes()
            mode = p.stat().st_mode
        except FileNotFoundError:
            raise DeidentificationError(
                "key file not found; create one with DeidKey.generate().save(path)", path=p
            ) from None
        except OSError as exc:
            raise DeidentificationError(
                f"cannot read key file ({exc.strerror}); check its permissions", path=p
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                "de-identification key file is readable by group or others; "
                "restrict it with chmod 600"
            )
        text = data.strip()
        if text and all(chr(b) in string.hexdigits for b in text):
            if len(text) % 2:
                raise DeidentificationError(
                    "key file holds an odd number of hex digits; it must hold whole bytes",
                    path=p,
                )
            secret = bytes.fromhex(text.decode("ascii"))
            if len(secret) < cls.MIN_BYTES:
                raise DeidentificationError(
                    f"key file holds a {len(secret)}-byte hex key; at least {cls.MIN_BYTES} "
                    f"bytes ({2 * cls.MIN_BYTES} hex digits) are needed",
                    path=p,
                )
            return cls(secret)
        if len(data) < cls.MIN_BYTES:
            raise DeidentificationError(
                f"key file holds {len(data)} bytes; at least {cls.MIN_BYTES} raw bytes or "
                f"{2 * cls.MIN_BYTES} hex digits are needed",
                path=p,
            )
        return cls(data)

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the key as hex text to ``path`` with permissions 0600.

        Raises:
            DeidentificationError: the file exists and ``overwrite`` is False, or it cannot
                be written.
        """
        p = Path(path)
        if p.exists() and not overwrite:
            raise DeidentificationError(
                "key file already exists; refusing to replace a key (outputs made with it "
                "could no longer be matched); pass overwrite=True to replace it",
                path=p,
            )
        payload = (self._secret.hex() + "\n").encode("ascii")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".deidkey-", dir=p.parent)
        except OSError as exc:
            raise DeidentificationError(
                f"cannot write key file ({exc.strerror}); check the folder exists and is "
                "writable",
                path=p,
            ) from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(p)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise DeidentificationError(f"cannot write key file ({exc.strerror})", path=p) from None

    @property
    def fingerprint(self) -> str:
        """A short public identifier of the key (a hash of it), to tell keys apart."""
        return hashlib.sha256(b"medassist-deid-fingerprint\x00" + self._secret).hexdigest()[:12]

    def digest(self, domain: str, data: str) -> bytes:
        """HMAC-SHA256 of ``data`` in the namespace ``domain``."""
        msg = domain.encode("ascii") + b"\x00" + data.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"DeidKey(<secret hidden>, fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeidKey):
            return NotImplemented
        return hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> Any:
        raise TypeError("DeidKey is not picklable; pass the key file path instead")


@dataclass(frozen=True)
class DeidChange:
    """One attribute changed by de-identification.  Never holds the old or the new value.

    Attributes:
        tag: ``"(GGGG,EEEE)"``.
        keyword: the DICOM keyword, or ``""`` for private and unknown tags.
        action: the action applied: ``X`` removed, ``Z`` emptied, ``D`` dummy or pseudonym,
            ``U`` UID replaced, ``C`` cleaned (date shifted or descriptor replaced).
        path: the location, e.g. ``"ReferencedStudySequence[0].ReferencedSOPInstanceUID"``.
    """

    tag: str
    keyword: str
    action: str
    path: str


@dataclass
class DeidResult:
    """The outcome of de-identifying one dataset.

    Attributes:
        dataset: the de-identified copy (the input is not modified).
        changes: every attribute removed, emptied or replaced.
        pseudo_patient_id: the pseudonymous Patient ID (also written as Patient's Name).
        date_shift_days: days added to every date (negative); secret in effect: whoever
            knows it can recover the original dates, so it is kept out of reports.
        flags: notable conditions, e.g. ``"burned_in_annotation_cleaned"``.
    """

    dataset: Dataset
    changes: list[DeidChange]
    pseudo_patient_id: str
    date_shift_days: int
    flags: list[str]


# --------------------------------------------------------------------------------------------
# Derivations
# --------------------------------------------------------------------------------------------


def _remap_uid(key: DeidKey, uid: str) -> str:
    """A ``2.25.`` UID derived from ``uid`` under ``key`` (an RFC 9562 version-8 UUID)."""
    value = int.from_bytes(key.digest("uid", uid)[:16], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8 (custom)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC variant
    return f"2.25.{value}"


def remap_uid(key: DeidKey, uid: str) -> str:
    """The UID that de-identification under ``key`` gives ``uid`` (the same in every file
    and run), so that a record kept beside de-identified files can name them."""
    return _remap_uid(key, uid)


def _pseudo_patient_id(key: DeidKey, patient_id: str) -> str:
    return "DEID" + key.digest("patient-id", patient_id)[:8].hex().upper()


def _date_shift_days(key: DeidKey, patient_id: str) -> int:
    span = DATE_SHIFT_MAX_DAYS - DATE_SHIFT_MIN_DAYS + 1
    raw = int.from_bytes(key.digest("date-shift", patient_id)[:8], "big")
    return -(DATE_SHIFT_MIN_DAYS + raw % span)


# --------------------------------------------------------------------------------------------
# Clean Descriptors: a conservative allow-list check
# --------------------------------------------------------------------------------------------

_SAFE_WORDS_TEXT: Final = """
    a an and as at by for from in into of on or per the to via vs w wo with without no non
    not only all both left right lt rt bilateral bilat l r upper lower mid middle anterior
    posterior ant post ap pa lat lateral medial inferior superior proximal distal
    ct cta ctp ctv ctu pet mr mri mra cr dx dr us nm spect xa rf mg pt sc ot sr seg rt
    scan scans scout scouts topogram topo localizer localiser locator surview scanogram
    axial ax coronal cor sagittal sag oblique obl transverse tra trans reformat reformats
    reformatted mpr mip minip vr vrt avg average thin thick slab slice slices section
    recon recons reconstruction reconstructions reconstructed iterative filtered fbp
    head brain skull cranial cerebral neuro neck cervical orbit orbits sinus sinuses
    paranasal facial face maxillofacial mandible temporal iac petrous dental teeth
    chest thorax thoracic lung lungs pulmonary pleura pleural mediastinum mediastinal
    cardiac heart coronary coronaries aorta aortic thoracoabdominal abdomen abdominal abd
    pelvis pelvic abdpelvis liver hepatic pancreas pancreatic renal kidney kidneys adrenal
    adrenals spleen bladder urinary colon colonography bowel enterography stomach
    prostate uterus ovary urogram urography spine spinal lumbar sacrum sacral coccyx
    extremity extremities upper lower arm forearm hand hands wrist elbow shoulder hip
    hips knee knees leg legs ankle ankles foot feet pelvic bone bones joint joints
    vascular vessel vessels artery arteries arterial vein veins venous venogram runoff
    carotid carotids circle willis angio angiography angiogram perfusion embolism pe
    whole body wb trunk soft tissue tissues fat muscle
    contrast enhanced enhancement unenhanced noncontrast nc ce iv oral rectal po bolus
    pre post precontrast postcontrast native plain phase phases early late delay delayed
    portal portovenous pv nephrographic excretory equilibrium washout timing test tracker
    arterial late hepatic
    helical spiral sequential axial cine dynamic gated ecg ekg triggered retrospective
    prospective flash dual energy de spectral mono monoenergetic kev virtual vnc iodine
    water calcium score scoring cac inspiration expiration insp exp inspiratory expiratory
    breath hold prone supine decubitus
    low dose ld ldct ultra standard std routine high resolution hr hrct res sharp smooth
    soft detail edge kernel filter window wl ww lung mediastinum bone brain
    iterative asir asirv idose imr admire safire aidr veo dlir truefidelity
    mm cm ml mgy mas ma kv kvp s sec msec ms sl sp pitch fov dfov matrix
    protocol series study exam examination image images imaging screening staging
    followup follow up trauma stroke oncology onc biopsy guided guidance intervention
    research phantom qa qc calibration test
    isovue omnipaque visipaque ultravist optiray iomeron optiject xenetix imeron iopamidol
    iohexol iodixanol iopromide ioversol iomeprol gadavist dotarem magnevist multihance
    prohance omniscan eovist primovist gadolinium barium gastrografin readicat
    fc ya yb yc yd br hr qr kr bl ub ue ur
"""
#: Words a descriptor may contain (case-insensitive).  Anything else (a name, a place, an
#: unknown abbreviation) makes the whole value fail the check.
SAFE_DESCRIPTOR_WORDS: Final[frozenset[str]] = frozenset(_SAFE_WORDS_TEXT.split())

_DESCRIPTOR_TOKEN = re.compile(r"[A-Za-z]+|[0-9]+(?:\.[0-9]+)?|\S")
_DESCRIPTOR_PUNCT: Final = frozenset("+-_/.,:;()[]%#&*=<>~")
_DATE_LIKE = re.compile(r"\d{1,4}\s*[-/.]\s*\d{1,2}\s*[-/.]\s*\d{1,4}|(?<!\d)(19|20)\d{2}(?!\d)")
_MAX_DESCRIPTOR_LEN: Final = 64


def is_safe_descriptor(value: str) -> bool:
    """True if ``value`` looks like a plain technical descriptor with no identifying content.

    Conservative by design: every alphabetic word must be in :data:`SAFE_DESCRIPTOR_WORDS`
    (single letters are allowed, for kernel names like ``B30f``), numbers may have at most
    four integer digits, nothing may look like a date or a year, only common punctuation is
    allowed, and the value may not exceed 64 characters.  Anything else fails and is removed.
    """
    text = value.strip()
    if not text:
        return True
    if len(text) > _MAX_DESCRIPTOR_LEN or "^" in text or "@" in text:
        return False
    if _DATE_LIKE.search(text):
        return False
    for token in _DESCRIPTOR_TOKEN.findall(text):
        if token[0].isalpha():
            if not token.isascii():
                return False
            if len(token) > 1 and token.lower() not in SAFE_DESCRIPTOR_WORDS:
                return False
        elif token[0].isdigit():
            if len(token.split(".")[0]) > 4:
                return False
        elif token not in _DESCRIPTOR_PUNCT:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------

_DT_RE = re.compile(
    r"^(?P<y>\d{4})(?P<m>\d{2})?(?P<d>\d{2})?(?P<rest>(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)"
    r"(?P<tz>[+-]\d{4})?$"
)


def _shift_date_text(value: str, days: int) -> str | None:
    """Shift one DA value (``YYYYMMDD``, legacy ``YYYY.MM.DD``); None if it is not a date."""
    text = value.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        shifted = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return shifted.strftime("%Y%m%d") if 1 <= shifted.year <= 9999 else None


def _shift_datetime_text(value: str, days: int) -> str | None:
    """Shift the date part of one DT value, keeping its precision, time and offset."""
    match = _DT_RE.match(value.strip())
    if match is None:
        return None
    year, month, day = match.group("y"), match.group("m"), match.group("d")
    try:
        base = date(int(year), int(month or 1), int(day or 1))
        shifted = base + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if not 1 <= shifted.year <= 9999:
        return None
    out = f"{shifted.year:04d}"
    if month is not None:
        out += f"{shifted.month:02d}"
    if day is not None:
        out += f"{shifted.day:02d}"
    return out + match.group("rest") + (match.group("tz") or "")


def _shift_range(
    value: str, days: int, shift_one: Callable[[str, int], str | None]
) -> str | None:
    """Shift a value that may be a range ``A-B`` (query form); None if any part fails."""
    text = value.strip()
    if "-" in text and not re.search(r"[+-]\d{4}$", text):
        parts = text.split("-")
        if len(parts) == 2:
            shifted = [shift_one(p, days) if p else "" for p in parts]
            if any(s is None for s in shifted):
                return None
            return "-".join(str(s) for s in shifted)
    return shift_one(text, days)


# --------------------------------------------------------------------------------------------
# The walker
# --------------------------------------------------------------------------------------------


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _set_values(elem: DataElement, values: list[Any]) -> None:
    elem.value = values[0] if len(values) == 1 else values


@dataclass
class _Walk:
    key: DeidKey
    options: DeidOptions
    pseudo_id: str
    shift_days: int
    changes: list[DeidChange] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    uid_cache: dict[str, str] = field(default_factory=dict)

    # -- bookkeeping -------------------------------------------------------------------------

    def flag(self, text: str) -> None:
        if text not in self.flags:
            self.flags.append(text)

    def record(self, elem: DataElement, action: str, path: str) -> None:
        self.changes.append(DeidChange(_tag_text(int(elem.tag)), elem.keyword or "", action, path))

    def new_uid(self, uid: str) -> str:
        cached = self.uid_cache.get(uid)
        if cached is None:
            cached = _remap_uid(self.key, uid)
            self.uid_cache[uid] = cached
        return cached

    # -- actions -----------------------------------------------------------------------------

    def remove(self, ds: Dataset, elem: DataElement, path: str) -> None:
        del ds[elem.tag]
        self.record(elem, "X", path)

    def empty(self, elem: DataElement, path: str) -> None:
        if elem.is_empty:
            return  # already zero length: nothing to change or record
        if elem.VR == "SQ":
            elem.value = DicomSequence([])
        elif elem.VR in _STRING_VRS or elem.VR in ("UI",):
            elem.value = ""
        elif elem.VR in _BINARY_VRS:
            elem.value = b""
        else:
            elem.value = None
        self.record(elem, "Z", path)

    def dummy(self, ds: Dataset, elem: DataElement, path: str, depth: int) -> None:
        vr = elem.VR
        if vr == "SQ":
            self.walk_sequence(elem, path, depth, strict=True)
            return
        if vr == "UI":
            self.remap(elem, path)
            return
        if vr in _TEXT_VRS or vr in ("CS", "PN", "UR"):
            value: Any = "" if vr == "UR" else _DUMMY_TEXT
        elif vr == "DA":
            value = _DUMMY_DATE
        elif vr == "DT":
            value = _DUMMY_DATETIME
        elif vr == "TM":
            value = _DUMMY_TIME
        elif vr == "AS":
            value = "000Y"
        elif vr in ("DS", "IS"):
            value = "0"
        elif vr in _BINARY_VRS:
            value = _DUMMY_BYTES
        elif vr == "AT":
            self.remove(ds, elem, path)
            return
        else:
            value = 0
        elem.value = value
        self.record(elem, "D", path)

    def remap(self, elem: DataElement, path: str) -> None:
        values = [str(v) for v in _values(elem)]
        if not values or all(not v for v in values):
            return
        _set_values(elem, [self.new_uid(v) if v else v for v in values])
        self.record(elem, "U", path)

    def shift_dates(self, ds: Dataset, elem: DataElement, path: str) -> None:
        values = [str(v) for v in _values(elem)]
        if not values or all(not v.strip() for v in values):
            return
        shift_one = _shift_date_text if elem.VR == "DA" else _shift_datetime_text
        shifted = [_shift_range(v, self.shift_days, shift_one) if v.strip() else v for v in values]
        if any(s is None for s in shifted):
            # An unparseable date cannot be shifted safely: remove it rather than keep it.
            self.flag("unparseable_date_removed")
            self.remove(ds, elem, path)
            return
        _set_values(elem, [str(s) for s in shifted])
        self.record(elem, "C", path)

    def clean_text(
        self, ds: Dataset, elem: DataElement, path: str, depth: int, fallback: str
    ) -> None:
        values = [str(v) for v in _values(elem)]
        if all(is_safe_descriptor(v) for v in values):
            return
        self.apply(ds, elem, fallback, path, depth)

    # -- the action dispatcher ---------------------------------------------------------------

    def apply(self, ds: Dataset, elem: DataElement, action: str, path: str, depth: int,
              basic: str = "X") -> None:
        vr = elem.VR
        if action == "K":
            if vr == "SQ":
                self.walk_sequence(elem, path, depth, strict=False)
        elif action == "X":
            self.remove(ds, elem, path)
        elif action in ("Z", "X/Z", "X/Z/D", "Z/D"):
            if vr == "SQ" and int(elem.tag) in _REFERENCE_SEQUENCES:
                # A cleaned copy is a permitted "non-zero length dummy value": the items keep
                # only class UIDs and remapped instance UIDs, so the reference still resolves.
                self.walk_sequence(elem, path, depth, strict=True)
            else:
                # Zero length is as safe as removal and keeps type 2 attributes conformant.
                self.empty(elem, path)
        elif action == "X/D":
            self.remove(ds, elem, path)
        elif action == "D":
            self.dummy(ds, elem, path, depth)
        elif action == "U":
            if vr == "UI":
                self.remap(elem, path)
            else:
                self.remove(ds, elem, path)
        elif action == "X/Z/U*":
            # Keep the reference, replacing the contained instance UIDs, so references still
            # resolve to the de-identified instances.
            if vr == "SQ":
                self.walk_sequence(elem, path, depth, strict=False)
            elif vr == "UI":
                self.remap(elem, path)
            else:
                self.remove(ds, elem, path)
        elif action == "C":
            self.clean(ds, elem, path, depth, basic)
        else:  # pragma: no cover - the table is validated by the tests
            raise DeidentificationError(f"unknown Annex E action {action!r} in the table")

    def clean(self, ds: Dataset, elem: DataElement, path: str, depth: int, basic: str) -> None:
        vr = elem.VR
        if vr in ("DA", "DT"):
            if self.options.retain_longitudinal_modified_dates:
                self.shift_dates(ds, elem, path)
            else:
                self.apply(ds, elem, basic, path, depth)
        elif vr == "TM":
            return  # whole-day shifts leave the time of day unchanged
        elif int(elem.tag) == _TIMEZONE_OFFSET:
            self.remove(ds, elem, path)  # the offset hints at a location
        elif vr == "SQ":
            self.walk_sequence(elem, path, depth, strict=True)
        elif vr in _TEXT_VRS:
            self.clean_text(ds, elem, path, depth, basic)
        else:
            self.apply(ds, elem, basic, path, depth)

    # -- rules -------------------------------------------------------------------------------

    def action_for(self, rule: annex_e.AnnexERule | annex_e.AnnexEGroupRule) -> str:
        if isinstance(rule, annex_e.AnnexEGroupRule):
            return rule.basic
        action: str = rule.basic
        opts = self.options
        if opts.retain_longitudinal_modified_dates and rule.dates is not None:
            action = rule.dates
        if opts.retain_patient_characteristics and rule.chars is not None:
            action = rule.chars
        if opts.clean_descriptors and rule.desc is not None:
            action = rule.desc
        return action

    def walk(self, ds: Dataset, prefix: str, depth: int, *, top: bool, strict: bool) -> None:
        if depth > _MAX_DEPTH:
            raise DeidentificationError(
                f"sequences nest deeper than {_MAX_DEPTH} levels; the file is malformed or "
                "hostile and cannot be de-identified safely"
            )
        for tag in list(ds.keys()):
            if tag not in ds:
                continue
            elem = ds[tag]
            itag = int(tag)
            group, element = itag >> 16, itag & 0xFFFF
            name = elem.keyword or _tag_text(itag)
            path = f"{prefix}.{name}" if prefix else name

            if group == 0x0002:
                del ds[tag]  # file meta belongs in file_meta; rebuilt separately
                continue
            if BaseTag(itag).is_private:
                if self.options.remove_private_tags:
                    self.remove(ds, elem, path)
                    continue
                self.flag("private_tags_retained")
                self.by_vr(ds, elem, path, depth, strict=strict)
                continue
            if element == 0x0000:
                del ds[tag]  # group lengths are deprecated and would be wrong after edits
                continue
            if top and group == 0x0000:
                # Command elements have no place in a stored data set (and cannot be written).
                self.remove(ds, elem, path)
                continue
            if 0x6000 <= group <= 0x601E or 0x5000 <= group <= 0x501E:
                # Overlays and curves may carry burned-in identification; Table E.1-1 removes
                # their data and comments, and the rest of the group is useless without them.
                self.flag("overlays_or_curves_removed")
                self.remove(ds, elem, path)
                continue
            if top and itag in _TOP_LEVEL_REWRITTEN:
                del ds[tag]  # rewritten at the end
                continue
            if itag == _PATIENT_ID:
                if top:
                    elem.value = self.pseudo_id
                else:
                    elem.value = _pseudo_patient_id(self.key, str(elem.value or ""))
                self.record(elem, "D", path)
                continue
            if itag == _PATIENT_NAME:
                if top:
                    elem.value = self.pseudo_id
                    self.record(elem, "D", path)
                else:
                    self.empty(elem, path)
                continue
            if top and itag == _BURNED_IN_ANNOTATION:
                continue  # decided by the pixel check

            rule = annex_e.rule_for(itag)
            if rule is not None:
                basic = rule.basic
                self.apply(ds, elem, self.action_for(rule), path, depth, basic)
            else:
                self.by_vr(ds, elem, path, depth, strict=strict)

    def by_vr(self, ds: Dataset, elem: DataElement, path: str, depth: int, *,
              strict: bool) -> None:
        """Rules for attributes Table E.1-1 does not list, by value representation."""
        vr = elem.VR
        keyword = elem.keyword or ""
        if vr == "SQ":
            self.walk_sequence(elem, path, depth, strict=strict)
        elif vr == "UI":
            if (
                keyword.endswith(("ClassUID", "TransferSyntaxUID"))
                or keyword in _DEFINITIONAL_UID_KEYWORDS
                or all(str(v) in UID_dictionary for v in _values(elem))
            ):
                return
            self.remap(elem, path)
        elif vr in ("DA", "DT"):
            if self.options.retain_longitudinal_modified_dates:
                self.shift_dates(ds, elem, path)
            else:
                self.remove(ds, elem, path)
        elif vr == "PN":
            if any(str(v).strip() for v in _values(elem)):
                self.empty(elem, path)
        elif strict and vr in _TEXT_VRS and keyword not in _CODE_MACRO_KEYWORDS:
            values = [str(v) for v in _values(elem)]
            if not all(is_safe_descriptor(v) for v in values):
                self.dummy(ds, elem, path, depth)

    def walk_sequence(self, elem: DataElement, path: str, depth: int, *, strict: bool) -> None:
        for index, item in enumerate(elem.value or []):
            self.walk(item, f"{path}[{index}]", depth + 1, top=False, strict=strict)


@contextmanager
def _quiet_value_validation() -> Iterator[None]:
    """Stop pydicom from warning about invalid values while reading: its warnings (and log
    records) quote the offending value, which may be identifying."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


# --------------------------------------------------------------------------------------------
# Burned-in annotation and pixel cleaning
# --------------------------------------------------------------------------------------------


def _burned_in_reason(ds: Dataset) -> str | None:
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "BurnedInAnnotation is YES"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in _SECONDARY_CAPTURE_CLASSES and burned != "NO":
        return "the image is a Secondary Capture without BurnedInAnnotation NO"
    return None


def _clean_pixels(ds: Dataset, regions: tuple[tuple[int, int, int, int], ...]) -> str:
    """Blank ``regions`` (or every whole frame) in place; returns a description for the flag."""
    if "PixelData" not in ds:
        raise DeidentificationError(
            "burned-in annotation is flagged but there is no Pixel Data to clean; "
            "exclude the object instead"
        )
    if int(ds.get("BitsAllocated", 0) or 0) not in (8, 16, 32):
        raise DeidentificationError(
            "cannot clean pixels with Bits Allocated other than 8, 16 or 32; exclude the object"
        )
    meta = getattr(ds, "file_meta", None)
    syntax: UID | None = None
    if meta is not None and "TransferSyntaxUID" in meta:
        syntax = UID(str(meta.TransferSyntaxUID))
    if syntax is not None and syntax.is_compressed:
        # Decoding is unavoidable here; the output is written uncompressed.
        ds.decompress(generate_instance_uid=False)
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax is not None and not syntax.is_little_endian:
        raise DeidentificationError(
            "cannot clean pixels of a big-endian file; convert it to little endian first"
        )
    arr = np.array(ds.pixel_array, copy=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    view = arr.reshape(frames, rows, cols, samples)
    blank = view.min()
    if regions:
        for x, y, width, height in regions:
            view[:, y : min(y + height, rows), x : min(x + width, cols), :] = blank
        how = f"{len(regions)} region(s) blanked"
    else:
        view[...] = blank
        how = "whole frames blanked"
    data = view.tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    if samples > 1:
        ds.PlanarConfiguration = 0
    return how


# --------------------------------------------------------------------------------------------
# Public API: one dataset
# --------------------------------------------------------------------------------------------


def _method_codes(options: DeidOptions, pixels_cleaned: bool) -> list[tuple[str, str]]:
    codes = [annex_e.CODE_BASIC_PROFILE]
    if pixels_cleaned:
        codes.append(annex_e.CODE_CLEAN_PIXEL_DATA)
    if options.clean_descriptors:
        codes.append(annex_e.CODE_CLEAN_DESCRIPTORS)
    if options.retain_longitudinal_modified_dates:
        codes.append(annex_e.CODE_RETAIN_MODIFIED_DATES)
    if options.retain_patient_characteristics:
        codes.append(annex_e.CODE_RETAIN_PATIENT_CHARACTERISTICS)
    return codes


def _rebuild_file_meta(out: Dataset, walker: _Walk) -> None:
    old = getattr(out, "file_meta", None)
    meta = FileMetaDataset()
    if old is not None:
        for keyword in _FILE_META_KEPT:
            if keyword in old:
                setattr(meta, keyword, getattr(old, keyword))
    if "SOPClassUID" in out and "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = out.SOPClassUID
    old_instance = str(old.get("MediaStorageSOPInstanceUID", "") or "") if old is not None else ""
    if old_instance:
        meta.MediaStorageSOPInstanceUID = UID(walker.new_uid(old_instance))
    elif "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    out.file_meta = meta
    if isinstance(out, FileDataset):
        out.preamble = b"\x00" * 128
        out.filename = None


def deidentify_dataset(
    ds: Dataset, key: DeidKey, options: DeidOptions | None = None
) -> DeidResult:
    """De-identify a copy of ``ds`` per PS3.15 Annex E; ``ds`` itself is not modified.

    Raises:
        BurnedInAnnotationError: the image says (or, as a Secondary Capture, may have)
            burned-in annotation and ``options.clean_pixels`` is False.
        DeidentificationError: the dataset cannot be de-identified safely.
    """
    with _quiet_value_validation():
        return _deidentify(ds, key, DeidOptions() if options is None else options)


def _deidentify(ds: Dataset, key: DeidKey, opts: DeidOptions) -> DeidResult:
    if not isinstance(key, DeidKey):
        raise DeidentificationError("key must be a DeidKey (see DeidKey.from_file)")
    reason = _burned_in_reason(ds)
    if reason is not None and not opts.clean_pixels:
        raise BurnedInAnnotationError(
            f"{reason}: the pixels may show identifying text; exclude the object, or pass "
            "DeidOptions(clean_pixels=True, pixel_clean_regions=...) to blank the annotation"
        )

    out = copy.deepcopy(ds)
    original_id = str(ds.get("PatientID", "") or "")
    pseudo_id = _pseudo_patient_id(key, original_id)
    shift = _date_shift_days(key, original_id) if opts.retain_longitudinal_modified_dates else 0
    walker = _Walk(key=key, options=opts, pseudo_id=pseudo_id, shift_days=shift)
    if not original_id.strip():
        walker.flag("missing_patient_id")

    pixels_cleaned = False
    if reason is not None:
        walker.flag("burned_in_annotation")
        how = _clean_pixels(out, opts.pixel_clean_regions)
        pixels_cleaned = True
        walker.flag("burned_in_annotation_cleaned")
        logger.info("pixel data cleaned for burned-in annotation: %s", how)

    walker.walk(out, "", 0, top=True, strict=False)

    if "PatientID" not in out:
        out.PatientID = pseudo_id
    if "PatientName" not in out:
        out.PatientName = pseudo_id
    out.PatientIdentityRemoved = "YES"
    codes = _method_codes(opts, pixels_cleaned)
    out.DeidentificationMethod = [meaning for _, meaning in codes] + ["medassist dicom_io.deid"]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    out.DeidentificationMethodCodeSequence = DicomSequence(items)
    out.LongitudinalTemporalInformationModified = (
        "MODIFIED" if opts.retain_longitudinal_modified_dates else "REMOVED"
    )
    if pixels_cleaned:
        out.BurnedInAnnotation = "NO"
    _rebuild_file_meta(out, walker)

    logger.debug(
        "de-identified dataset for pseudonymous patient %s: %d attribute(s) changed",
        pseudo_id,
        len(walker.changes),
    )
    return DeidResult(
        dataset=out,
        changes=walker.changes,
        pseudo_patient_id=pseudo_id,
        date_shift_days=shift,
        flags=walker.flags,
    )


# --------------------------------------------------------------------------------------------
# Public API: files and folders
# --------------------------------------------------------------------------------------------


def _read_dicom(src: Path) -> Dataset:
    try:
        with _quiet_value_validation():
            ds = pydicom.dcmread(src)
    except FileNotFoundError:
        raise UnreadableFileError("file not found; check the path", path=src) from None
    except IsADirectoryError:
        raise UnreadableFileError("is a folder; use deidentify_path for folders", path=src) \
            from None
    except InvalidDicomError:
        raise UnreadableFileError(
            "not a DICOM Part 10 file (no 'DICM' prefix or file meta); only Part 10 files are "
            "de-identified",
            path=src,
        ) from None
    except OSError as exc:
        raise UnreadableFileError(f"cannot read file ({exc.strerror})", path=src) from None
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnreadableFileError(
            f"malformed DICOM ({type(exc).__name__}); the file cannot be parsed", path=src
        ) from None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
        raise UnreadableFileError(
            "is a DICOMDIR (media directory); it is not de-identified, rebuild it for the output",
            path=src,
        )
    return ds


def _write_atomic(ds: Dataset, dst: Path) -> None:
    """Write ``ds`` to a temporary file beside ``dst``, then rename it over ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".deid-", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def deidentify_file(
    src: str | Path, dst: str | Path, key: DeidKey, options: DeidOptions | None = None
) -> DeidResult:
    """De-identify the DICOM file ``src`` and write the result to ``dst`` atomically.

    Raises:
        UnreadableFileError: ``src`` is not a readable DICOM Part 10 file.
        BurnedInAnnotationError: see :func:`deidentify_dataset`.
        DeidentificationError: de-identification or writing failed.
    """
    src_p, dst_p = Path(src), Path(dst)
    ds = _read_dicom(src_p)
    try:
        result = deidentify_dataset(ds, key, options)
    except DeidentificationError as exc:
        if exc.path is not None:
            raise
        raise type(exc)(exc.reason, path=src_p) from None
    try:
        _write_atomic(result.dataset, dst_p)
    except OSError as exc:
        raise DeidentificationError(
            f"cannot write the de-identified file ({exc.strerror}); check the output folder",
            path=dst_p,
        ) from None
    except Exception as exc:
        raise DeidentificationError(
            f"cannot encode the de-identified dataset ({type(exc).__name__})", path=src_p
        ) from None
    return result


@dataclass(frozen=True)
class DeidFileRecord:
    """One input file written to the output folder."""

    source: str
    output: str
    pseudo_patient_id: str
    changes: tuple[DeidChange, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class DeidSkippedFile:
    """One input file not written, and why."""

    source: str
    reason: str
    flags: tuple[str, ...] = ()


@dataclass
class DeidReport:
    """What :func:`deidentify_path` did.

    The report names source files (paths relative to the input), which may themselves be
    identifying: keep it with the source data, or call ``to_json(include_source_paths=False)``
    before sharing it.  It never holds attribute values or the date shift.
    """

    input_path: str
    output_dir: str
    options: DeidOptions
    key_fingerprint: str
    written: list[DeidFileRecord] = field(default_factory=list)
    skipped: list[DeidSkippedFile] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        """Every flag raised by any file, sorted."""
        found = {f for rec in self.written for f in rec.flags}
        found |= {f for rec in self.skipped for f in rec.flags}
        return sorted(found)

    def to_json(self, *, include_source_paths: bool = True) -> dict[str, Any]:
        """A JSON-serialisable summary: counts, per-file changed tags, skipped files, flags."""

        def source(index: int, path: str) -> str:
            return path if include_source_paths else f"#{index}"

        def change(c: DeidChange) -> dict[str, str]:
            return {"tag": c.tag, "keyword": c.keyword, "action": c.action, "path": c.path}

        return {
            "profile": [m for _, m in _method_codes(self.options, False)],
            "options": {
                "retain_longitudinal_modified_dates":
                    self.options.retain_longitudinal_modified_dates,
                "retain_patient_characteristics": self.options.retain_patient_characteristics,
                "clean_descriptors": self.options.clean_descriptors,
                "clean_pixels": self.options.clean_pixels,
                "remove_private_tags": self.options.remove_private_tags,
            },
            "key_fingerprint": self.key_fingerprint,
            "counts": {
                "files_seen": len(self.written) + len(self.skipped),
                "written": len(self.written),
                "skipped": len(self.skipped),
                "patients": len({r.pseudo_patient_id for r in self.written}),
                "changes": sum(len(r.changes) for r in self.written),
            },
            "files": [
                {
                    "source": source(i, r.source),
                    "output": r.output,
                    "pseudo_patient_id": r.pseudo_patient_id,
                    "flags": list(r.flags),
                    "changes": [change(c) for c in r.changes],
                }
                for i, r in enumerate(self.written)
            ],
            "skipped": [
                {"source": source(i, s.source), "reason": s.reason, "flags": list(s.flags)}
                for i, s in enumerate(self.skipped)
            ],
            "flags": self.flags,
        }


def _iter_files(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Every file under ``root`` but ``exclude``, through symbolic links to folders too (as
    :func:`dicom_io.index.scan` reads a study), each real folder once (a link loop ends)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if exclude is not None:
            dirnames[:] = [d for d in dirnames if (here / d).resolve() != exclude]
        dirnames.sort()
        for name in sorted(filenames):
            yield here / name


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def deidentify_path(
    src: str | Path, out_dir: str | Path, key: DeidKey, options: DeidOptions | None = None
) -> DeidReport:
    """De-identify a DICOM file or every DICOM file under a folder (recursively).

    Each file is written to ``out_dir/<new StudyInstanceUID>/<new SeriesInstanceUID>/
    <new SOPInstanceUID>.dcm``.  Files that are not DICOM, unreadable, refused (burned-in
    annotation) or fail are listed in the report with a reason; the run goes on.

    Raises:
        DeidentificationError: ``src`` does not exist.
    """
    src_p, out_p = Path(src), Path(out_dir)
    opts = DeidOptions() if options is None else options
    if not src_p.exists():
        raise DeidentificationError(
            "input not found; pass a DICOM file or a folder of DICOM files", path=src_p
        )
    report = DeidReport(
        input_path=str(src_p),
        output_dir=str(out_p),
        options=opts,
        key_fingerprint=key.fingerprint,
    )
    if src_p.is_dir():
        root = src_p
        out_resolved, src_resolved = out_p.resolve(), src_p.resolve()
        if out_resolved == src_resolved:
            raise DeidentificationError(
                "the output folder is the input folder; choose a separate output folder so "
                "de-identified files are never mixed with (or re-read as) originals",
                path=src_p,
            )
        inside = out_resolved.is_relative_to(src_resolved)
        # Listed before anything is written, and without the output folder if it is inside.
        files: list[Path] = list(_iter_files(src_p, out_resolved if inside else None))
    else:
        root = src_p.parent
        files = [src_p]

    written_paths: set[Path] = set()
    for index, path in enumerate(files):
        rel = _relative(path, root)

        def skip(reason: str, flags: tuple[str, ...] = (), *, _i: int = index,
                 _rel: str = rel) -> None:
            report.skipped.append(DeidSkippedFile(_rel, reason, flags))
            logger.warning("skipped input file #%d: %s", _i, reason)

        try:
            ds = _read_dicom(path)
        except UnreadableFileError as exc:
            skip(exc.reason)
            continue
        try:
            result = deidentify_dataset(ds, key, opts)
        except BurnedInAnnotationError as exc:
            skip(exc.reason, ("burned_in_annotation",))
            continue
        except DeidentificationError as exc:
            skip(exc.reason)
            continue
        except Exception as exc:  # never let one bad file stop the run
            skip(f"de-identification failed ({type(exc).__name__})")
            continue
        out_ds = result.dataset
        try:
            dst = uid_path(
                out_p,
                validate_uid(out_ds.get("StudyInstanceUID"), what="StudyInstanceUID"),
                validate_uid(out_ds.get("SeriesInstanceUID"), what="SeriesInstanceUID"),
            ) / (validate_uid(out_ds.get("SOPInstanceUID"), what="SOPInstanceUID") + ".dcm")
        except InvalidUIDError:
            skip("missing or invalid Study/Series/SOP Instance UID; cannot name the output")
            continue
        if dst in written_paths:
            skip("duplicate SOP Instance UID: this instance was already written from another "
                 "input file")
            continue
        try:
            _write_atomic(out_ds, dst)
        except OSError as exc:
            skip(f"cannot write output ({exc.strerror})")
            continue
        except Exception as exc:
            skip(f"cannot encode the de-identified dataset ({type(exc).__name__})")
            continue
        written_paths.add(dst)
        report.written.append(
            DeidFileRecord(
                source=rel,
                output=dst.relative_to(out_p).as_posix(),
                pseudo_patient_id=result.pseudo_patient_id,
                changes=tuple(result.changes),
                flags=tuple(result.flags),
            )
        )
        logger.debug(
            "wrote instance %s of series %s (patient %s)",
            out_ds.SOPInstanceUID,
            out_ds.SeriesInstanceUID,
            result.pseudo_patient_id,
        )
    logger.info(
        "de-identification done: %d file(s) written, %d skipped",
        len(report.written),
        len(report.skipped),
    )
    return report


def load_deid_options(path: str | Path) -> DeidOptions:
    """Read :class:`DeidOptions` from a YAML file (keys at the top level or under ``deid``).

    Raises:
        dicom_io.errors.ConfigError: the file is unreadable or holds unknown keys.
    """
    from dicom_io.config import from_mapping, read_yaml

    raw = read_yaml(path)
    data = raw.get("deid", raw)
    return from_mapping(DeidOptions, data, where="deid")
