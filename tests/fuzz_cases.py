"""Mutation fuzzing of DICOM CT ingestion: deterministic cases over real CT files and a harness.

Shared by ``tests/test_fuzz_ingest.py`` (a short run in ``make test``) and
``bench/fuzz_ingest.py`` (thousands of cases).

Cases.  Four real files from the shared data folder (``MEDASSIST_SHARED_DATA``, default
``<repo>/../shared/data``; they are read at run time, never copied into the repository) are
mutated by seeded :class:`random.Random` instances: truncation, bit flips, length-field
overflow, sequences nested 300 deep, a PixelData length larger than the file, ``../../x`` UIDs,
VR and transfer-syntax corruption, duplicated elements, zero-length files and random bytes
behind a ``DICM`` preamble.  Case ``i`` of seed ``s`` depends on ``(s, i)`` only, so any case
can be rebuilt alone (``bench/fuzz_ingest.py --dump-case``).

Harness.  All cases run in ONE child process (``python tests/fuzz_cases.py``, configured by
JSON on stdin) that sets ``RLIMIT_AS`` to 2 GiB before it imports :mod:`dicom_io` and arms a
5 s ``SIGALRM`` around each case's ingestion.  Per case the child writes the bytes to its own
sub-folder of a temporary directory, then runs :func:`dicom_io.header.read_header` on the file,
:func:`dicom_io.index.scan` on the folder and :func:`dicom_io.volume.assemble` on every series
found, and checks the outcome against the case's oracle.  Results come back as JSON lines.
The parent restarts the child after a crash, and kills it when it stops answering (a hang in
C code that the alarm cannot interrupt); both are reported as failures of the case in
progress.

Acceptable outcomes: a :class:`~dicom_io.errors.DicomIOError` from ``read_header`` or
``assemble``, the file listed in ``index.rejected`` (``scan`` itself never raises), or a
correct volume (finite, shaped like the header's Rows/Columns, and for mutations that leave
pixels and geometry alone, equal to the volume of the unmutated file).  Everything else is a
failure naming the case.
"""

from __future__ import annotations

import functools
import json
import os
import random
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from dicom_io.index import DicomIndex, SeriesIndex
    from dicom_io.volume import Volume

REPO = Path(__file__).resolve().parents[1]

#: The seed files, by short name, relative to the shared data folder.
SEED_FILES: dict[str, str] = {
    "lung_implicit": "ct/lung-pet-ct-dx/Lung_Dx-A0001/1-01.dcm",
    "ge_explicit": "ct/dcm_qa_ct/GE/01.dcm",
    "j2k": "dicom-edge/pydicom/693_J2KR.dcm",
    "enhanced": "dicom-edge/pydicom/eCT_Supplemental.dcm",
}
SEED_NAMES: tuple[str, ...] = tuple(SEED_FILES)

HANG_LIMIT_S = 5.0
MEMORY_LIMIT_BYTES = 2 << 30
NEST_DEPTH = 300
TRAVERSAL_UID = "../../x"

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_META_GROUP_LENGTH = 0x00020000
_TRANSFER_SYNTAX = 0x00020010
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT",
                       b"UN", b"SV", b"UV"})
_ALL_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
            b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
            b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV")
#: A private group that none of the seed files uses, for the private nested sequence.
_PRIVATE_GROUP = 0x0077
#: A standard SQ (ReferencedImageSequence) for the standard nested sequence.
_STANDARD_SQ = 0x00081140
_UID_TAGS: dict[str, int] = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "MediaStorageSOPInstanceUID": 0x00020003,
}


def shared_data_dir() -> Path:
    """The shared data folder: ``$MEDASSIST_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("MEDASSIST_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data").resolve()


# --------------------------------------------------------------------------------------------
# A small element walker: where every element, item and length field of a (valid) seed lies.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Element:
    """One element (or sequence item, delimiter, pixel fragment) of a seed file."""

    tag: int
    kind: str  # "element", "item", "fragment" or "delimiter"
    offset: int  # first byte of the tag
    vr: bytes | None  # the explicit VR, None for implicit VR, items and delimiters
    length_offset: int
    length_size: int  # 2 or 4
    length: int  # as declared (0xFFFFFFFF for undefined)
    value_offset: int
    end: int  # first byte after the element, its items and its delimiter
    depth: int  # 0 at the top level

    @property
    def label(self) -> str:
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


class _ElementWalker:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.out: list[Element] = []

    def elements(self, pos: int, end: int, explicit: bool, depth: int,
                 stop_group: int | None = None) -> int:
        data = self.data
        while pos < end:
            group, elem = struct.unpack_from("<HH", data, pos)
            tag = (group << 16) | elem
            if stop_group is not None and group != stop_group:
                return pos
            if tag == _ITEM_DELIM:
                self.out.append(Element(tag, "delimiter", pos, None, pos + 4, 4,
                                        struct.unpack_from("<L", data, pos + 4)[0], pos + 8,
                                        pos + 8, depth))
                return pos + 8
            vr: bytes | None = None
            if explicit:
                vr = data[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    length_offset, length_size, value = pos + 8, 4, pos + 12
                else:
                    length_offset, length_size, value = pos + 6, 2, pos + 8
            else:
                length_offset, length_size, value = pos + 4, 4, pos + 8
            fmt = "<L" if length_size == 4 else "<H"
            length = struct.unpack_from(fmt, data, length_offset)[0]
            index = len(self.out)
            self.out.append(Element(tag, "element", pos, vr, length_offset, length_size, length,
                                    value, value, depth))
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:
                    stop = self.fragments(value, depth + 1)
                else:
                    stop = self.items(value, None, explicit and vr != b"UN", depth + 1)
            else:
                stop = value + length
                looks_like_sq = vr == b"SQ" or (vr in (None, b"UN") and length >= 8
                                                and data[value:value + 4] == b"\xfe\xff\x00\xe0")
                if looks_like_sq:
                    self.items(value, stop, explicit and vr == b"SQ", depth + 1)
            if stop > len(data):
                raise ValueError(f"seed element at {pos} runs past the end of the file")
            self.out[index] = Element(tag, "element", pos, vr, length_offset, length_size,
                                      length, value, stop, depth)
            pos = stop
        return pos

    def items(self, pos: int, end: int | None, explicit: bool, depth: int) -> int:
        data = self.data
        while end is None or pos < end:
            group, elem, length = struct.unpack_from("<HHL", data, pos)
            tag = (group << 16) | elem
            if tag == _SEQ_DELIM:
                self.out.append(Element(tag, "delimiter", pos, None, pos + 4, 4, length,
                                        pos + 8, pos + 8, depth))
                return pos + 8
            if tag != _ITEM:
                raise ValueError(f"expected an item at byte {pos}")
            index = len(self.out)
            self.out.append(Element(tag, "item", pos, None, pos + 4, 4, length, pos + 8,
                                    pos + 8, depth))
            if length == _UNDEFINED:
                stop = self.elements(pos + 8, len(data), explicit, depth)
            else:
                stop = pos + 8 + length
                self.elements(pos + 8, stop, explicit, depth)
            self.out[index] = Element(tag, "item", pos, None, pos + 4, 4, length, pos + 8,
                                      stop, depth)
            pos = stop
        return pos

    def fragments(self, pos: int, depth: int) -> int:
        data = self.data
        while True:
            group, elem, length = struct.unpack_from("<HHL", data, pos)
            tag = (group << 16) | elem
            if tag == _SEQ_DELIM:
                self.out.append(Element(tag, "delimiter", pos, None, pos + 4, 4, length,
                                        pos + 8, pos + 8, depth))
                return pos + 8
            self.out.append(Element(tag, "fragment", pos, None, pos + 4, 4, length, pos + 8,
                                    pos + 8 + length, depth))
            pos += 8 + length


def walk_elements(data: bytes) -> tuple[list[Element], bool]:
    """Every element of a valid Part 10 file (meta and data set) and whether the data set is
    explicit VR.  Only for the seed files: malformed input raises."""
    if data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    walker = _ElementWalker(data)
    pos = walker.elements(132, len(data), True, 0, stop_group=0x0002)
    ts = next((data[e.value_offset:e.value_offset + e.length] for e in walker.out
               if e.tag == _TRANSFER_SYNTAX), b"")
    explicit = ts.rstrip(b"\x00 ").decode("ascii") != IMPLICIT_VR_LE
    walker.elements(pos, len(data), explicit, 0)
    return walker.out, explicit


@dataclass(frozen=True)
class Seed:
    """A seed file: its bytes and where its elements lie."""

    name: str
    path: Path
    data: bytes
    elements: tuple[Element, ...]
    explicit: bool

    @functools.cached_property
    def top(self) -> tuple[Element, ...]:
        return tuple(e for e in self.elements if e.depth == 0 and e.kind == "element")

    @functools.cached_property
    def pixel(self) -> Element:
        return next(e for e in self.top if e.tag == _PIXEL_DATA)

    @property
    def encapsulated(self) -> bool:
        return self.pixel.length == _UNDEFINED

    @functools.cached_property
    def meta_end(self) -> int:
        return max(e.end for e in self.top if e.tag >> 16 == 0x0002)

    def find(self, tag: int) -> Element | None:
        return next((e for e in self.top if e.tag == tag), None)


def load_seeds(data_dir: Path | None = None) -> dict[str, Seed]:
    """Read the seed files from the shared data folder (FileNotFoundError names a missing one)."""
    root = data_dir or shared_data_dir()
    seeds: dict[str, Seed] = {}
    for name, rel in SEED_FILES.items():
        path = root / rel
        data = path.read_bytes()
        elements, explicit = walk_elements(data)
        seeds[name] = Seed(name, path, data, tuple(elements), explicit)
    return seeds


# --------------------------------------------------------------------------------------------
# Byte-level edits.
# --------------------------------------------------------------------------------------------


def _pack_length(size: int, value: int) -> bytes:
    return struct.pack("<L" if size == 4 else "<H", value)


def set_length(data: bytes, elem: Element, value: int) -> bytes:
    """``data`` with the length field of ``elem`` overwritten by ``value`` (nothing else moves)."""
    return (data[:elem.length_offset] + _pack_length(elem.length_size, value)
            + data[elem.length_offset + elem.length_size:])


def _fix_meta_length(seed: Seed, data: bytes, delta: int) -> bytes:
    group_length = seed.find(_META_GROUP_LENGTH)
    if group_length is None or delta == 0:
        return data
    old = struct.unpack_from("<L", data, group_length.value_offset)[0]
    return (data[:group_length.value_offset] + struct.pack("<L", old + delta)
            + data[group_length.value_offset + 4:])


def replace_value(seed: Seed, elem: Element, value: bytes, pad: bytes = b"\x00") -> bytes:
    """The seed with the value of ``elem`` (at any depth, of defined length) replaced, padded
    to even length; the defined lengths of the enclosing items and sequences, and the file
    meta group length for a change in group 0002, follow."""
    if len(value) % 2:
        value += pad
    delta = len(value) - (elem.end - elem.value_offset)
    buf = bytearray(seed.data)
    for outer in seed.elements:  # length fields before elem: the splice does not move them
        if (outer.kind in ("element", "item") and outer.value_offset <= elem.offset
                and elem.end <= outer.end and outer is not elem
                and outer.length != _UNDEFINED):
            struct.pack_into("<L" if outer.length_size == 4 else "<H", buf,
                             outer.length_offset, outer.length + delta)
    buf[elem.length_offset:elem.end] = _pack_length(elem.length_size, len(value)) + value
    out = bytes(buf)
    if elem.tag >> 16 == 0x0002:
        out = _fix_meta_length(seed, out, delta)
    return out


def remove_element(seed: Seed, data: bytes, elem: Element) -> bytes:
    """``data`` (the seed, edited only after ``elem``) without the top-level ``elem``."""
    out = data[:elem.offset] + data[elem.end:]
    if elem.tag >> 16 == 0x0002:
        out = _fix_meta_length(seed, out, -(elem.end - elem.offset))
    return out


def flip_bits(data: bytes, positions: Sequence[int], rng: random.Random) -> bytes:
    buf = bytearray(data)
    for p in positions:
        buf[p] ^= 1 << rng.randrange(8)
    return bytes(buf)


@functools.lru_cache(maxsize=16)
def nested_sequence_bytes(implicit: bool, undefined: bool, private: bool,
                          depth: int = NEST_DEPTH) -> tuple[int, bytes]:
    """A top-level SQ element nested ``depth`` levels deep, encoded by pydicom.

    Returns the tag the bytes must be inserted before (the first tag they hold) and the
    bytes: a private creator plus a private SQ in group 0077, or ReferencedImageSequence.
    """
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element
    from pydicom.sequence import Sequence as PydicomSequence

    creator = (_PRIVATE_GROUP << 16) | 0x0010
    sq_tag = (_PRIVATE_GROUP << 16) | 0x1001 if private else _STANDARD_SQ
    current = Dataset()
    current.add_new(0x00080100, "SH", "FUZZ")  # CodeValue in the innermost item
    for _ in range(depth):
        item = Dataset()
        if private:
            item.add_new(creator, "LO", "MEDASSIST FUZZ")
        current.is_undefined_length_sequence_item = undefined
        item.add_new(sq_tag, "SQ", PydicomSequence([current]))
        item[sq_tag].is_undefined_length = undefined
        current = item
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20 * depth + 1000))
    try:
        for elem in current:
            write_data_element(fp, elem)
    finally:
        sys.setrecursionlimit(old_limit)
    return (creator if private else sq_tag), fp.getvalue()


# --------------------------------------------------------------------------------------------
# Cases and mutators.
# --------------------------------------------------------------------------------------------


class Oracle(StrEnum):
    """What a case may end in (a typed error is acceptable unless said otherwise)."""

    #: A typed error, or a correct volume: finite, shaped like the header's Rows/Columns.
    VALID = "valid"
    #: A typed error, or a volume equal to the unmutated file's (pixels and geometry untouched).
    EQUAL = "equal"
    #: Only pixel bytes changed: the volume must be read, with the unmutated geometry and at
    #: most ``flips`` voxels different.
    PIXELS = "pixels"
    #: The file must not yield a volume; with ``expect`` set, one of those errors must be seen.
    REJECT = "reject"
    #: The unmutated file: the reference volume must be read (a control for the harness).
    EXACT = "exact"


@dataclass(frozen=True)
class FuzzCase:
    """One mutated file."""

    name: str
    seed: str
    mutation: str
    data: bytes = field(repr=False)
    oracle: Oracle
    #: Error class names of which one must be seen (REJECT only; empty: any typed error).
    expect: tuple[str, ...] = ()
    #: Number of flipped bytes (PIXELS only).
    flips: int = 0

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as ``(name, bytes)``."""
        return iter((self.name, self.data))


@dataclass(frozen=True)
class Mutation:
    detail: str
    data: bytes
    oracle: Oracle
    expect: tuple[str, ...] = ()
    flips: int = 0


Mutator = Callable[[random.Random, Seed, "str | None"], Mutation]


def _pick(rng: random.Random, variant: str | None, options: Sequence[str]) -> str:
    if variant is None:
        return rng.choice(list(options))
    if variant not in options:
        raise ValueError(f"unknown variant {variant!r}; one of {list(options)}")
    return variant


def _header_offset(rng: random.Random, seed: Seed) -> int:
    """A byte offset inside the header (after the DICM marker, before the pixel value)."""
    return rng.randrange(132, seed.pixel.value_offset)


def m_truncate_header(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("random", "element_boundary", "preamble"))
    if how == "random":
        cut = _header_offset(rng, seed)
    elif how == "element_boundary":
        cut = rng.choice([e.offset for e in seed.top])
    else:
        cut = rng.randrange(0, 132)
    return Mutation(f"{how}@{cut}", seed.data[:cut], Oracle.REJECT)


def m_truncate_pixels(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("random", "last_bytes"))
    end = len(seed.data)
    cut = rng.randrange(seed.pixel.value_offset, end) if how == "random" else \
        end - rng.randint(1, 16)
    # A native file that ends early is missing pixels; an encapsulated one may still hold a
    # whole code stream (only the delimiter lost), but any volume read must then be the same.
    oracle = Oracle.EQUAL if seed.encapsulated else Oracle.REJECT
    return Mutation(f"{how}@{cut}", seed.data[:cut], oracle)


def _flip_count(rng: random.Random) -> int:
    return rng.choice((1, 1, 1, 2, 3, 8))


def m_bitflip_header(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    positions = sorted(_header_offset(rng, seed) for _ in range(_flip_count(rng)))
    return Mutation(f"at{positions}", flip_bits(seed.data, positions, rng), Oracle.VALID)


def m_bitflip_anywhere(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    positions = sorted(rng.randrange(len(seed.data)) for _ in range(_flip_count(rng)))
    # The preamble is ignored by definition: flips there must not change what is read.
    oracle = Oracle.EQUAL if positions[-1] < 128 else Oracle.VALID
    return Mutation(f"at{positions}", flip_bits(seed.data, positions, rng), oracle)


def m_bitflip_pixels(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    start = seed.pixel.value_offset
    positions = sorted({rng.randrange(start, len(seed.data)) for _ in range(_flip_count(rng))})
    data = flip_bits(seed.data, positions, rng)
    if seed.encapsulated:  # a damaged code stream may decode to anything, or fail
        return Mutation(f"at{positions}", data, Oracle.VALID)
    return Mutation(f"at{positions}", data, Oracle.PIXELS, flips=len(positions))


def m_length_overflow(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("max", "max_signed", "plus_one", "zero"))
    wanted = [e for e in seed.top if e.tag != _PIXEL_DATA]
    elem = rng.choice(wanted if rng.random() < 0.5 else list(seed.elements))
    full = 0xFFFFFFFF if elem.length_size == 4 else 0xFFFF
    value = {"max": full, "max_signed": full >> 1, "plus_one": (elem.length + 1) & full,
             "zero": 0}[how]
    detail = f"{elem.kind}{elem.label}@{elem.offset}:{elem.length:#x}->{value:#x}"
    return Mutation(detail, set_length(seed.data, elem, value), Oracle.VALID)


NEST_VARIANTS = ("defined-private", "undefined-private", "defined-standard",
                 "undefined-standard")


def m_nested_sequence(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, NEST_VARIANTS)
    undefined, private = how.startswith("undefined"), how.endswith("private")
    first_tag, blob = nested_sequence_bytes(not seed.explicit, undefined, private)
    data = seed.data
    same = seed.find(first_tag)
    if same is not None:  # the seed has this sequence: replace it
        data = data[:same.offset] + blob + data[same.end:]
    else:
        at = next(e.offset for e in seed.top if e.tag > first_tag)
        data = data[:at] + blob + data[at:]
    # Only a sequence the reader may skip was added: a volume, if read, must be the same.
    return Mutation(f"{how}x{NEST_DEPTH}", data, Oracle.EQUAL)


def m_pixel_length_overflow(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("plus_two", "plus_random", "max_signed", "max_defined"))
    left = len(seed.data) - seed.pixel.value_offset
    value = {"plus_two": left + 2, "plus_random": left + 2 * rng.randint(1, 1 << 20),
             "max_signed": 0x7FFFFFFE, "max_defined": 0xFFFFFFFE}[how]
    return Mutation(f"{how}:{value:#x}>{left:#x}", set_length(seed.data, seed.pixel, value),
                    Oracle.REJECT, expect=("UnreadableFileError", "PixelDataError"))


UID_VARIANTS = (*_UID_TAGS, "MediaStorageSOPInstanceUID_only")


def m_uid_traversal(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    where = _pick(rng, variant, UID_VARIANTS)
    value = TRAVERSAL_UID.encode()
    if variant is None and rng.random() < 0.25:
        value = rng.choice([b"..\\..\\x", b"1.2.3/../../x", b"/../../x", b"1.2.840/x"])
    if where == "MediaStorageSOPInstanceUID_only":
        # The data set loses SOPInstanceUID, so the header falls back to the meta UID.
        sop = seed.find(_UID_TAGS["SOPInstanceUID"])
        media = seed.find(_UID_TAGS["MediaStorageSOPInstanceUID"])
        assert sop is not None and media is not None
        data = replace_value(seed, media, value)
        shift = len(data) - len(seed.data)
        moved = Element(sop.tag, sop.kind, sop.offset + shift, sop.vr, sop.length_offset + shift,
                        sop.length_size, sop.length, sop.value_offset + shift, sop.end + shift,
                        sop.depth)
        return Mutation(f"{where}={value.decode()}", remove_element(seed, data, moved),
                        Oracle.REJECT, expect=("InvalidUIDError",))
    elem = seed.find(_UID_TAGS[where])
    assert elem is not None
    data = replace_value(seed, elem, value)
    if where == "MediaStorageSOPInstanceUID":
        # The data set's own SOPInstanceUID is used; the file reads as before.
        return Mutation(f"{where}={value.decode()}", data, Oracle.EQUAL)
    return Mutation(f"{where}={value.decode()}", data, Oracle.REJECT,
                    expect=("InvalidUIDError",))


def m_vr_corrupt(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    candidates = [e for e in seed.elements if e.vr is not None]
    elem = rng.choice(candidates)
    new = rng.choice([*_ALL_VRS, b"\x00\x00", b"ZZ", b"ob", rng.randbytes(2)])
    data = seed.data[:elem.offset + 4] + new + seed.data[elem.offset + 6:]
    return Mutation(f"{elem.label}@{elem.offset}:{elem.vr!r}->{new!r}", data, Oracle.VALID)


TRANSFER_SYNTAXES = (IMPLICIT_VR_LE, EXPLICIT_VR_LE, "1.2.840.10008.1.2.2",
                     "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4", "", "removed")


def m_ts_swap(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    ts = seed.find(_TRANSFER_SYNTAX)
    assert ts is not None
    current = seed.data[ts.value_offset:ts.end].rstrip(b"\x00 ").decode()
    new = _pick(rng, variant, [t for t in TRANSFER_SYNTAXES if t != current])
    if new == "removed":
        data = remove_element(seed, seed.data, ts)
    else:
        data = replace_value(seed, ts, new.encode())
    return Mutation(f"{current}->{new or 'empty'}", data, Oracle.VALID)


def m_duplicate_element(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("adjacent", "elsewhere"))
    candidates = [e for e in seed.top if e.tag != _PIXEL_DATA]
    elem = rng.choice(candidates)
    blob = seed.data[elem.offset:elem.end]
    if how == "adjacent":
        at = elem.end
    else:  # another boundary in the same section (file meta or data set), before PixelData
        in_meta = elem.tag >> 16 == 0x0002
        bounds = [e.offset for e in seed.top
                  if (e.tag >> 16 == 0x0002) == in_meta and e.tag != _PIXEL_DATA]
        bounds.append(seed.meta_end if in_meta else seed.pixel.offset)
        at = rng.choice(bounds)
    data = seed.data
    if elem.tag >> 16 == 0x0002 and at <= seed.meta_end:  # before the insertion moves it
        data = _fix_meta_length(seed, data, len(blob))
    data = data[:at] + blob + data[at:]
    # An exact copy carries no new information: a volume, if read, must be the same.
    return Mutation(f"{how}:{elem.label}@{elem.offset}->{at}", data, Oracle.EQUAL)


#: Extreme or invalid values for the attributes that indexing and assembly use (they are
#: replaced wherever they occur, also inside the functional groups of enhanced CT).
_EXTREMES: dict[int, tuple[str, tuple[str, ...]]] = {
    0x00280010: ("US", ("0", "1", "32768", "65535")),  # Rows
    0x00280011: ("US", ("0", "1", "32768", "65535")),  # Columns
    0x00280100: ("US", ("0", "1", "7", "32", "64", "65535")),  # BitsAllocated
    0x00280101: ("US", ("0", "17", "65535")),  # BitsStored
    0x00280103: ("US", ("2", "65535")),  # PixelRepresentation
    0x00280002: ("US", ("0", "3")),  # SamplesPerPixel
    0x00280008: ("IS", ("0", "-1", "3", "2147483647", "99999999999")),  # NumberOfFrames
    0x00281053: ("DS", ("nan", "inf", "-inf", "1e308", "1e39", "0")),  # RescaleSlope
    0x00281052: ("DS", ("nan", "inf", "1e308", "-1e39")),  # RescaleIntercept
    0x00280030: ("DS", ("0\\0", "nan\\1", "1e308\\1e308", "-1\\-1", "1", "1e-300\\1")),
    0x00200032: ("DS", ("nan\\0\\0", "inf\\0\\0", "1e308\\-1e308\\1e308", "0\\0",
                        "0\\0\\1e-300")),  # ImagePositionPatient
    0x00200037: ("DS", ("0\\0\\0\\0\\0\\0", "nan\\0\\0\\0\\1\\0",
                        "1\\0\\0\\1\\0\\0", "1e308\\0\\0\\0\\1e308\\0",
                        "1\\0\\0\\0\\0\\1")),  # ImageOrientationPatient
    0x00180050: ("DS", ("0", "nan", "1e-300", "-5", "inf")),  # SliceThickness
    0x00180088: ("DS", ("0", "nan", "1e-300", "-5")),  # SpacingBetweenSlices
    0x00181120: ("DS", ("nan", "1e308", "90")),  # GantryDetectorTilt
}


def m_extreme_value(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("one", "one", "one", "one", "matrix"))
    if how == "matrix":  # Rows and Columns both huge: a matrix far larger than the file
        side = rng.choice((32768, 65535))
        buf = bytearray(seed.data)
        for e in seed.elements:
            if e.tag in (0x00280010, 0x00280011) and e.length == 2:
                struct.pack_into("<H", buf, e.value_offset, side)
        return Mutation(f"matrix={side}x{side}", bytes(buf), Oracle.VALID)
    candidates = [e for e in seed.elements if e.tag in _EXTREMES and e.kind == "element"
                  and e.length != _UNDEFINED]
    elem = rng.choice(candidates)
    vr, values = _EXTREMES[elem.tag]
    text = rng.choice(values)
    if vr == "US":
        value, pad = struct.pack("<H", int(text)), b"\x00"
    else:
        value, pad = text.encode(), b" "
    data = replace_value(seed, elem, value, pad)
    return Mutation(f"{elem.label}@{elem.offset}(depth{elem.depth})={text}", data, Oracle.VALID)


def m_zero_length(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    return Mutation("empty", b"", Oracle.REJECT, expect=("UnreadableFileError",))


def m_random_dicm(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    how = _pick(rng, variant, ("random_body", "seed_meta_random_body"))
    size = rng.choice((0, 1, 7, 64, rng.randrange(4096), rng.randrange(70_000)))
    if how == "random_body":
        preamble = bytes(128) if rng.random() < 0.5 else rng.randbytes(128)
        data = preamble + b"DICM" + rng.randbytes(size)
    else:
        data = seed.data[:seed.meta_end] + rng.randbytes(size)
    return Mutation(f"{how}+{size}", data, Oracle.REJECT)


def m_chunk_delete(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    at = _header_offset(rng, seed)
    n = rng.choice((1, 2, 4, 8, rng.randint(1, 256)))
    return Mutation(f"{n}@{at}", seed.data[:at] + seed.data[at + n:], Oracle.VALID)


def m_chunk_insert(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    at = rng.choice([e.offset for e in seed.top]) if rng.random() < 0.5 else \
        _header_offset(rng, seed)
    blob = rng.randbytes(rng.choice((1, 2, 4, 8, rng.randint(1, 256))))
    return Mutation(f"{len(blob)}@{at}", seed.data[:at] + blob + seed.data[at:], Oracle.VALID)


def m_identity(rng: random.Random, seed: Seed, variant: str | None) -> Mutation:
    return Mutation("unmutated", seed.data, Oracle.EXACT)


#: The mutators used for numbered cases, in round-robin order.
MUTATORS: dict[str, Mutator] = {
    "truncate_header": m_truncate_header,
    "truncate_pixels": m_truncate_pixels,
    "bitflip_header": m_bitflip_header,
    "bitflip_anywhere": m_bitflip_anywhere,
    "bitflip_pixels": m_bitflip_pixels,
    "length_overflow": m_length_overflow,
    "nested_sequence": m_nested_sequence,
    "pixel_length_overflow": m_pixel_length_overflow,
    "uid_traversal": m_uid_traversal,
    "vr_corrupt": m_vr_corrupt,
    "extreme_value": m_extreme_value,
    "ts_swap": m_ts_swap,
    "duplicate_element": m_duplicate_element,
    "zero_length": m_zero_length,
    "random_dicm": m_random_dicm,
    "chunk_delete": m_chunk_delete,
    "chunk_insert": m_chunk_insert,
}
#: Named-only mutators (not drawn for numbered cases).
EXTRA_MUTATORS: dict[str, Mutator] = {"identity": m_identity}
#: Harness self-tests: they sabotage the child instead of ingesting (see ``_selftest``).
SELFTESTS = ("raise", "hang", "hang_blocked", "oom", "exit")


def make_case(index: int, seed: int, seeds: dict[str, Seed]) -> FuzzCase:
    """Numbered case ``index`` of run ``seed``: mutators in round-robin, seed files in turn."""
    names = list(MUTATORS)
    mutation = names[index % len(names)]
    seed_name = SEED_NAMES[(index // len(names)) % len(SEED_NAMES)]
    rng = random.Random(f"medassist-fuzz:{seed}:{index}")
    m = MUTATORS[mutation](rng, seeds[seed_name], None)
    return FuzzCase(f"{index:05d}-{mutation}-{seed_name}-{m.detail}", seed_name, mutation,
                    m.data, m.oracle, m.expect, m.flips)


def make_named_case(spec: str, seeds: dict[str, Seed]) -> FuzzCase:
    """A hand-picked case: ``mutation[:variant]@seed``, for example
    ``nested_sequence:undefined-private@j2k``, or ``selftest:<what>`` (see :data:`SELFTESTS`)."""
    if spec.startswith("selftest:"):
        what = spec.split(":", 1)[1]
        if what not in SELFTESTS:
            raise ValueError(f"unknown self-test {what!r}")
        return FuzzCase(spec, "", "selftest", what.encode(), Oracle.VALID)
    head, _, seed_name = spec.partition("@")
    mutation, _, variant = head.partition(":")
    mutator = MUTATORS.get(mutation) or EXTRA_MUTATORS.get(mutation)
    if mutator is None or seed_name not in seeds:
        raise ValueError(f"bad case spec {spec!r}: mutation{sorted(MUTATORS)} @ seed{SEED_NAMES}")
    m = mutator(random.Random(spec), seeds[seed_name], variant or None)
    return FuzzCase(f"{spec}-{m.detail}", seed_name, mutation, m.data, m.oracle, m.expect,
                    m.flips)


def build_case(case_id: str, seed: int, seeds: dict[str, Seed]) -> FuzzCase:
    """A case from its id: a number (a numbered case of run ``seed``) or a named spec."""
    return make_case(int(case_id), seed, seeds) if case_id.isdigit() else \
        make_named_case(case_id, seeds)


def iter_cases(n: int, seed: int, seeds: dict[str, Seed], start: int = 0
               ) -> Iterator[FuzzCase]:
    """Numbered cases ``start`` .. ``start + n - 1`` (each yields as ``(name, bytes)`` too)."""
    for i in range(start, start + n):
        yield make_case(i, seed, seeds)


# --------------------------------------------------------------------------------------------
# The child: runs cases under the memory limit and the hang guard.
# --------------------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case runs past the hang limit (not an Exception, so that no
    ``except Exception`` in dicom_io can swallow it)."""


def _on_alarm(signum: int, frame: object) -> NoReturn:
    raise CaseTimeout


def _tail(exc: BaseException, limit: int = 3000) -> str:
    """The traceback from the first dicom_io frame on (or its last frames)."""
    frames = traceback.extract_tb(exc.__traceback__)
    first = next((n for n, f in enumerate(frames) if "dicom_io" in f.filename), 0)
    lines = traceback.format_list(frames[first:])
    lines += traceback.format_exception_only(type(exc), exc)
    text = "".join(lines)
    return text if len(text) <= limit else "..." + text[-limit:]


def _failure(kind: str, step: str, exc: BaseException | None = None, detail: str = ""
             ) -> dict[str, str]:
    out = {"kind": kind, "step": step, "type": "" if exc is None else type(exc).__name__,
           "message": detail or ("" if exc is None else str(exc)[:500])}
    if exc is not None:
        out["traceback"] = _tail(exc)
    return out


def _exception_failure(step: str, exc: Exception) -> dict[str, str]:
    kind = "memory" if isinstance(exc, MemoryError) else "exception"
    return _failure(kind, step, exc)


def _selftest(what: str, timeout_s: float) -> None:
    if what == "raise":
        raise ValueError("self-test: an untyped exception")
    if what == "hang":
        time.sleep(timeout_s * 10)
    if what == "hang_blocked":  # like a hang in C code: the alarm cannot interrupt it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    if what == "oom":
        bytearray(MEMORY_LIMIT_BYTES + (1 << 30))
    if what == "exit":
        os._exit(3)


@dataclass
class _State:
    """What a case's ingestion got to (kept out of the JSON record)."""

    step: str = "setup"
    index: DicomIndex | None = None
    volumes: list[tuple[SeriesIndex, Volume]] = field(default_factory=list)


class _Runner:
    """Ingests cases (in the child) and checks them against their oracles."""

    def __init__(self, seeds: dict[str, Seed], workdir: Path, timeout_s: float,
                 keep_dir: Path | None) -> None:
        self.seeds = seeds
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.keep_dir = keep_dir
        self.refs: dict[str, Volume] = {}

    def reference(self, name: str) -> Volume:
        """The volume of the unmutated seed, read through the same path as the cases."""
        from dicom_io.index import scan
        from dicom_io.volume import assemble

        if name not in self.refs:
            folder = self.workdir / f"reference-{name}"
            folder.mkdir()
            (folder / "case.dcm").write_bytes(self.seeds[name].data)
            index = scan(folder)
            series = index.all_series()
            if len(series) != 1 or index.rejected:
                raise RuntimeError(f"seed {name} does not index as one series: "
                                   f"{index.to_dict()['rejected']}")
            self.refs[name] = assemble(series[0])
        return self.refs[name]

    def run(self, case: FuzzCase, n: int) -> dict[str, Any]:
        folder = self.workdir / f"case-{n:06d}"
        folder.mkdir()
        path = folder / "case.dcm"
        path.write_bytes(case.data)
        record: dict[str, Any] = {
            "name": case.name, "seed": case.seed, "mutation": case.mutation,
            "oracle": case.oracle.value, "size": len(case.data), "header": None,
            "rejected": [], "series": 0, "volumes": [], "assemble_errors": [], "failures": [],
        }
        state = _State()
        started = time.perf_counter()
        try:
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            try:
                self._ingest(case, folder, path, record, state)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except CaseTimeout:
            record["failures"].append(_failure(
                "hang", state.step, detail=f"{state.step} ran past {self.timeout_s} s"))
        record["seconds"] = round(time.perf_counter() - started, 4)
        if not record["failures"] and case.mutation != "selftest":
            record["failures"].extend(self._check(case, record, state))
        if record["failures"] and self.keep_dir is not None:
            self.keep_dir.mkdir(parents=True, exist_ok=True)
            (self.keep_dir / f"{case.name[:120].replace('/', '_')}.dcm").write_bytes(case.data)
        shutil.rmtree(folder, ignore_errors=True)
        record["outcome"] = _outcome(record)
        return record

    def _ingest(self, case: FuzzCase, folder: Path, path: Path, record: dict[str, Any],
                state: _State) -> None:
        from dicom_io.errors import DicomIOError
        from dicom_io.header import read_header
        from dicom_io.index import scan
        from dicom_io.volume import assemble

        failures: list[dict[str, str]] = record["failures"]
        if case.mutation == "selftest":
            state.step = "selftest"
            try:
                _selftest(case.data.decode(), self.timeout_s)
            except Exception as exc:
                failures.append(_exception_failure("selftest", exc))
            return
        state.step = "read_header"
        try:
            read_header(path)
            record["header"] = "ok"
        except DicomIOError as exc:
            record["header"] = type(exc).__name__
        except Exception as exc:
            failures.append(_exception_failure("read_header", exc))
        state.step = "scan"
        try:
            index = scan(folder)
        except Exception as exc:  # scan must list a bad file, never raise for it
            failures.append(_exception_failure("scan", exc))
            return
        record["rejected"] = [[r.error, r.reason[:300]] for r in index.rejected]
        record["dicomdirs"] = len(index.dicomdirs)
        all_series = index.all_series()
        record["series"] = len(all_series)
        record["instances"] = sum(len(s.instances) for s in all_series)
        state.index = index
        for series in all_series:
            state.step = f"assemble({series.series_uid[:40]})"
            try:
                state.volumes.append((series, assemble(series)))
            except DicomIOError as exc:
                record["assemble_errors"].append([type(exc).__name__, exc.reason[:300]])
            except Exception as exc:
                failures.append(_exception_failure("assemble", exc))
        record["volumes"] = [{"shape": list(v.shape), "dtype": str(v.array.dtype)}
                             for _, v in state.volumes]

    def _check(self, case: FuzzCase, record: dict[str, Any], state: _State
               ) -> list[dict[str, str]]:
        """Invariants that hold for every case, then the case's oracle."""
        import numpy as np

        from dicom_io.uids import is_valid_uid

        index, volumes = state.index, state.volumes
        assert index is not None
        bad: list[str] = []
        accounted = record["instances"] + len(record["rejected"]) + record["dicomdirs"]
        if accounted != 1:
            bad.append(f"the file is accounted for {accounted} times (series + rejected)")
        rejected_errors = [err for err, _ in record["rejected"]]
        header = record["header"]
        if header != "ok" and rejected_errors != [header]:
            bad.append(f"read_header raised {header} but scan rejected {rejected_errors}")
        if header == "ok" and rejected_errors not in ([], ["InvalidUIDError"]):
            bad.append(f"read_header succeeded but scan rejected {rejected_errors}")
        for series in index.all_series():
            for h in series.instances:
                for kw, uid in (("StudyInstanceUID", h.study_uid),
                                ("SeriesInstanceUID", h.series_uid),
                                ("SOPInstanceUID", h.sop_instance_uid)):
                    if not is_valid_uid(uid):
                        bad.append(f"indexed series holds {kw} {uid!r}")
        for series, vol in volumes:
            arr = vol.array
            h = series.first
            if arr.dtype not in (np.dtype(np.int16), np.dtype(np.float32)):
                bad.append(f"volume dtype {arr.dtype}")
            if arr.shape[0] < 1 or arr.shape[1:] != (h.rows, h.columns):
                bad.append(f"volume shape {arr.shape} but header Rows/Columns "
                           f"{h.rows}x{h.columns}")
            if not vol.provenance.resampled and arr.shape[0] != series.n_images:
                bad.append(f"unresampled volume has {arr.shape[0]} slices for "
                           f"{series.n_images} images")
            if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
                bad.append("volume holds non-finite values")
            if not bool(np.isfinite(vol.affine).all()):
                bad.append("volume affine is not finite")
        seen = set(rejected_errors) | {err for err, _ in record["assemble_errors"]}
        if header not in (None, "ok"):
            seen.add(header)
        if case.oracle in (Oracle.EQUAL, Oracle.EXACT, Oracle.PIXELS):
            ref = self.reference(case.seed)
            if case.oracle is not Oracle.EQUAL and len(volumes) != 1:
                bad.append(f"expected one volume, got {len(volumes)} (errors: {sorted(seen)})")
            for _, vol in volumes:
                if vol.shape != ref.shape or not np.allclose(vol.affine, ref.affine,
                                                             atol=1e-6):
                    bad.append(f"volume shape {vol.shape} / affine differ from the unmutated "
                               f"{ref.shape}")
                    continue
                diff = int(np.count_nonzero(vol.array.astype(np.float64)
                                            != ref.array.astype(np.float64)))
                allowed = case.flips if case.oracle is Oracle.PIXELS else 0
                if diff > allowed:
                    bad.append(f"{diff} voxels differ from the unmutated volume "
                               f"(at most {allowed} allowed)")
        if case.oracle is Oracle.REJECT:
            if volumes:
                bad.append(f"a volume {volumes[0][1].shape} was read from a file that must be "
                           "rejected")
            if case.expect and not seen & set(case.expect):
                bad.append(f"expected one of {list(case.expect)}, saw {sorted(seen) or 'none'}")
        return [_failure("wrong_result", "check", detail=b) for b in bad]


def _outcome(record: dict[str, Any]) -> str:
    if record["failures"]:
        f = record["failures"][0]
        return f"FAIL:{f['kind']}:{f['type'] or f['step']}"
    if record["volumes"]:
        return "volume"
    if record["assemble_errors"]:
        return f"assemble:{record['assemble_errors'][0][0]}"
    if record["rejected"]:
        return f"rejected:{record['rejected'][0][0]}"
    return "nothing_indexed"


def child_main() -> int:
    """The child process: JSON config on stdin, one JSON line per event on stdout."""
    config = json.loads(sys.stdin.read())
    limit = int(config["mem_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def emit(event: dict[str, Any]) -> None:
        proto.write(json.dumps(event) + "\n")
        proto.flush()

    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    signal.signal(signal.SIGALRM, _on_alarm)
    # dicom_io is imported here, under the memory limit, before any case.
    import importlib

    importlib.import_module("dicom_io.volume")

    seeds = load_seeds(Path(config["data_dir"]))
    keep = Path(config["keep_dir"]) if config.get("keep_dir") else None
    # The parent owns (and removes) the work folder, also when this process is killed.
    work = Path(config["work_dir"])
    work.mkdir()
    runner = _Runner(seeds, work, float(config["timeout_s"]), keep)
    for name in seeds:
        runner.reference(name)
    emit({"event": "ready", "references": {
        k: {"shape": list(v.shape), "dtype": str(v.array.dtype)}
        for k, v in runner.refs.items()}})
    for n, case_id in enumerate(config["ids"]):
        gen_started = time.perf_counter()
        try:
            case = build_case(case_id, int(config["seed"]), seeds)
        except Exception as exc:  # a bug in this file, not in dicom_io
            emit({"event": "result", "id": case_id, "name": case_id,
                  "mutation": "?", "seed": "", "oracle": "", "outcome": "FAIL:generator",
                  "seconds": 0.0,
                  "failures": [_failure("generator", "build_case", exc)]})
            continue
        emit({"event": "start", "id": case_id, "name": case.name, "seed": case.seed,
              "mutation": case.mutation, "oracle": case.oracle.value})
        record = runner.run(case, n)
        record["gen_seconds"] = round(time.perf_counter() - gen_started
                                      - record["seconds"], 4)
        emit({"event": "result", "id": case_id, **record})
    emit({"event": "done",
          "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    return 0


# --------------------------------------------------------------------------------------------
# The parent: starts the child, watches it, collects the results.
# --------------------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """The results of :func:`run_fuzz`."""

    results: list[dict[str, Any]]
    wall_seconds: float
    #: Peak RSS (KiB) that the children reported for themselves, and RUSAGE_CHILDREN's.
    child_maxrss_kib: int
    children_maxrss_kib: int
    restarts: int
    references: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["failures"]]

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.results}

    def outcome_counts(self) -> Counter[str]:
        return Counter(r["outcome"] for r in self.results)

    def slowest(self) -> dict[str, Any] | None:
        return max(self.results, key=lambda r: r.get("seconds", 0.0), default=None)

    def failure_text(self, limit: int = 40) -> str:
        lines = [f"{len(self.failures)} of {len(self.results)} fuzz cases failed:"]
        for r in self.failures[:limit]:
            for f in r["failures"]:
                lines.append(f"- case {r['name']} [{f['kind']} in {f['step']}] "
                             f"{f['type']}: {f['message']}")
                if f.get("traceback"):
                    lines.append("    " + f["traceback"].strip().replace("\n", "\n    "))
        if len(self.failures) > limit:
            lines.append(f"... and {len(self.failures) - limit} more")
        return "\n".join(lines)


class _ChildGone(Exception):
    pass


def _read_line(proc: subprocess.Popen[bytes], sel: selectors.BaseSelector, buf: bytearray,
               timeout: float) -> dict[str, Any] | None:
    """The next JSON line from the child; None on timeout; _ChildGone at end of output."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            return None
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise _ChildGone
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    event: dict[str, Any] = json.loads(line)
    return event


def _stderr_tail(err: IO[bytes], limit: int = 1500) -> str:
    err.seek(0)
    return err.read().decode("utf-8", "replace")[-limit:]


def run_fuzz(*, cases: int = 0, seed: int = 0, start: int = 0, named: Sequence[str] = (),
             data_dir: Path | None = None, timeout_s: float = HANG_LIMIT_S,
             mem_bytes: int = MEMORY_LIMIT_BYTES, grace_s: float = 20.0,
             startup_s: float = 180.0, keep_dir: Path | None = None,
             progress: Callable[[int, dict[str, Any]], None] | None = None) -> FuzzReport:
    """Run numbered cases ``start`` .. ``start + cases - 1`` of run ``seed`` and the ``named``
    cases in one child process (restarted after a crash or an unanswered hang)."""
    pending = [*(str(i) for i in range(start, start + cases)), *named]
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    base = {"seed": seed, "timeout_s": timeout_s, "mem_bytes": mem_bytes,
            "data_dir": str(data_dir or shared_data_dir()),
            "keep_dir": str(keep_dir) if keep_dir else None}
    results: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    child_rss = restarts = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medassist-fuzz-") as work:
        child_rss, restarts = _run_children(pending, base, env, Path(work), results,
                                            references, timeout_s, grace_s, startup_s,
                                            progress)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return FuzzReport(results, time.perf_counter() - started, child_rss, children, restarts,
                      references)


def _run_children(pending: list[str], base: dict[str, Any], env: dict[str, str], work: Path,
                  results: list[dict[str, Any]], references: dict[str, Any], timeout_s: float,
                  grace_s: float, startup_s: float,
                  progress: Callable[[int, dict[str, Any]], None] | None) -> tuple[int, int]:
    """Start children until every pending case has a result; (peak RSS, restarts)."""
    child_rss = restarts = 0
    while pending:
        work_dir = work / f"child-{restarts}"
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps({**base, "ids": pending,
                                         "work_dir": str(work_dir)}).encode())
            proc.stdin.close()
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            buf = bytearray()
            current: str | None = None
            started_case: dict[str, Any] = {}
            problem: str | None = None
            waiting = startup_s
            try:
                while True:
                    event = _read_line(proc, sel, buf, waiting)
                    if event is None:
                        problem = "hang"
                        break
                    kind = event["event"]
                    if kind == "ready":
                        references.update(event["references"])
                        waiting = timeout_s + grace_s
                    elif kind == "start":
                        current, started_case = event["id"], event
                    elif kind == "result":
                        event.pop("event")
                        results.append(event)
                        pending.remove(event["id"])
                        current = None
                        if progress is not None:
                            progress(len(results), event)
                    elif kind == "done":
                        child_rss = max(child_rss, int(event["maxrss_kib"]))
                        break
            except _ChildGone:
                problem = "crash"
            finally:
                sel.close()
                if proc.poll() is None and problem != "crash" and not (
                        problem is None and not pending):
                    proc.kill()  # unanswered, or the parent itself is being interrupted
                rc = proc.wait()
                proc.stdout.close()
            if problem is None and not pending:
                break
            if current is None:  # the child failed outside any case: nothing to skip
                raise RuntimeError(f"fuzz child failed before a case ({problem}, rc={rc}):\n"
                                   f"{_stderr_tail(err)}")
            message = (f"no answer within {timeout_s + grace_s:.0f} s; child killed"
                       if problem == "hang" else f"child process died (exit status {rc})")
            results.append({
                **{k: started_case.get(k, "") for k in ("name", "seed", "mutation", "oracle")},
                "id": current,
                "seconds": timeout_s + grace_s if problem == "hang" else 0.0,
                "outcome": f"FAIL:{problem}", "failures": [{
                    "kind": problem or "crash", "step": "child", "type": "",
                    "message": message, "traceback": _stderr_tail(err)}],
            })
            pending.remove(current)
            shutil.rmtree(work_dir, ignore_errors=True)
            restarts += 1
    return child_rss, restarts


if __name__ == "__main__":
    sys.exit(child_main())
