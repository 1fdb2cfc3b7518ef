"""Assemble a CT series into a :class:`Volume` in Hounsfield units with exact geometry."""

from __future__ import annotations

import logging
import math
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pydicom

from dicom_io.config import AssemblyConfig, DicomIOConfig
from dicom_io.errors import (
    DicomIOError,
    DuplicateSliceError,
    MissingGeometryError,
    NotCTImageError,
    PixelDataError,
    SeriesError,
    UnreadableFileError,
)
from dicom_io.geometry import (
    Flag,
    GeometryPlan,
    SliceGeom,
    plain_affine,
    plan_geometry,
    resample_stack,
)
from dicom_io.header import Header
from dicom_io.index import CT_IMAGE_SOP_CLASSES, ENHANCED_CT_SOP_CLASSES, SeriesIndex

log = logging.getLogger(__name__)

_DTYPES = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16,
           (32, 0): np.uint32, (32, 1): np.int32}


@dataclass(frozen=True, slots=True)
class _Slice:
    header: Header
    frame: int
    geom: SliceGeom
    slope: float
    intercept: float


@dataclass(frozen=True)
class Provenance:
    """Where a volume came from and what was done to it."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    #: SOP Instance UIDs in array order; multi-frame planes are ``uid#frame`` (1-based).
    instance_uids: tuple[str, ...]
    source_files: tuple[str, ...]
    transfer_syntaxes: tuple[str, ...]
    flags: tuple[Flag, ...]
    tilt_deg: float
    resampled: bool


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU.

    ``array`` has shape ``(slices, rows, cols)`` and is read-only; its dtype is ``int16`` when
    the HU values are exact integers that fit, otherwise ``float32``.  ``affine`` maps the
    homogeneous index ``(k, i, j, 1)`` to patient coordinates in the DICOM LPS convention
    (x to the patient's left, y to posterior, z to head), in millimetres.
    """

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]
    provenance: Provenance
    orientation_convention: ClassVar[str] = (
        "array (slices, rows, cols); affine maps (k, i, j) to DICOM LPS patient mm"
    )

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")
        self.array.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along (slices, rows, cols)."""
        n = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(n[0]), float(n[1]), float(n[2]))

    @property
    def flags(self) -> tuple[Flag, ...]:
        return self.provenance.flags

    def index_to_lps(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map (k, i, j) indices (shape (..., 3)) to LPS millimetres."""
        idx = np.asarray(index, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def nifti_affine(self) -> npt.NDArray[np.float64]:
        """RAS affine for the array transposed to (cols, rows, slices), as NIfTI expects."""
        a = self.affine[:, [2, 1, 0, 3]].copy()
        a[0:2, :] *= -1  # LPS -> RAS
        return a

    def to_nifti(self) -> Any:
        """A nibabel Nifti1Image in RAS+ (the array transposed to x=cols, y=rows, z=slices)."""
        import importlib

        nib: Any = importlib.import_module("nibabel")
        data = np.ascontiguousarray(self.array.transpose(2, 1, 0))
        img = nib.Nifti1Image(data, self.nifti_affine())
        img.set_qform(self.nifti_affine(), code=1)
        img.set_sform(self.nifti_affine(), code=1)
        img.header.set_xyzt_units("mm")
        return img

    def summary(self) -> dict[str, Any]:
        arr = self.array
        return {
            "series_uid": self.provenance.series_uid,
            "shape": list(self.shape),
            "spacing_mm": [round(v, 6) for v in self.spacing],
            "dtype": str(arr.dtype),
            "hu_min": float(arr.min()),
            "hu_max": float(arr.max()),
            "origin_lps_mm": [round(float(v), 4) for v in self.affine[:3, 3]],
            "z_range_mm": [round(float(v), 4) for v in self._z_range()],
            "orientation_convention": self.orientation_convention,
            "tilt_deg": round(self.provenance.tilt_deg, 3),
            "resampled": self.provenance.resampled,
            "flags": [f.to_dict() for f in self.flags],
            "instances": len(set(u.split("#")[0] for u in self.provenance.instance_uids)),
        }

    def _z_range(self) -> tuple[float, float]:
        k = self.shape[0] - 1
        corners = self.index_to_lps([[0, 0, 0], [k, 0, 0]])
        return float(corners[:, 2].min()), float(corners[:, 2].max())


def _enhanced_slices(h: Header) -> list[_Slice]:
    try:
        ds = pydicom.dcmread(h.path, stop_before_pixels=True) if h.member is None else \
            _read_member_dataset(h, stop_before_pixels=True)
    except Exception as exc:
        raise UnreadableFileError(f"cannot read enhanced CT functional groups ({exc})",
                                  path=h.source) from None
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else pydicom.Dataset()
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != h.number_of_frames:
        raise MissingGeometryError(
            f"PerFrameFunctionalGroupsSequence has {0 if per_frame is None else len(per_frame)} "
            f"items for {h.number_of_frames} frames", path=h.source)

    def pick(item: pydicom.Dataset, seq: str, attr: str) -> Any:
        for src in (item, shared_item):
            s = src.get(seq)
            if s and attr in s[0]:
                return s[0][attr].value
        return None

    def floats(v: Any, n: int, what: str, f: int) -> Any:
        if v is None:
            return None
        try:
            seq = v if isinstance(v, list | tuple | pydicom.multival.MultiValue) else [v]
            vals = tuple(float(x) for x in seq)
        except (TypeError, ValueError):
            raise UnreadableFileError(f"frame {f + 1}: {what} is not numeric",
                                      path=h.source) from None
        if len(vals) != n or not all(math.isfinite(x) for x in vals):
            raise UnreadableFileError(f"frame {f + 1}: {what} must be {n} finite number(s)",
                                      path=h.source)
        return vals

    out = []
    try:
        for f, item in enumerate(per_frame):
            ipp = floats(pick(item, "PlanePositionSequence", "ImagePositionPatient"), 3,
                         "ImagePositionPatient", f)
            iop = floats(pick(item, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                         "ImageOrientationPatient", f)
            ps = floats(pick(item, "PixelMeasuresSequence", "PixelSpacing"), 2,
                        "PixelSpacing", f)
            slope = floats(pick(item, "PixelValueTransformationSequence", "RescaleSlope"), 1,
                           "RescaleSlope", f)
            intercept = floats(pick(item, "PixelValueTransformationSequence",
                                    "RescaleIntercept"), 1, "RescaleIntercept", f)
            if slope is not None and slope[0] == 0.0:
                raise UnreadableFileError(f"frame {f + 1}: RescaleSlope is 0", path=h.source)
            geom = SliceGeom(h.source, h.sop_instance_uid, f + 1, ipp, iop, ps,
                             h.rows or 0, h.columns or 0)
            out.append(_Slice(h, f, geom,
                              slope[0] if slope is not None else h.rescale_slope,
                              intercept[0] if intercept is not None else h.rescale_intercept))
    except DicomIOError:
        raise
    except Exception as exc:  # pydicom converts deferred values lazily and raises many types
        raise UnreadableFileError(f"invalid functional group value ({type(exc).__name__}: "
                                  f"{exc})", path=h.source) from None
    return out


def _slices(series: SeriesIndex) -> list[_Slice]:
    out: list[_Slice] = []
    for h in series.instances:
        if h.sop_class_uid not in CT_IMAGE_SOP_CLASSES:
            raise NotCTImageError(
                f"SOP class {h.sop_class_uid or 'missing'} (modality {h.modality or 'missing'})"
                " is not a CT image; only CT series become HU volumes", path=h.source)
        if h.sop_class_uid in ENHANCED_CT_SOP_CLASSES:
            out.extend(_enhanced_slices(h))
            continue
        if h.number_of_frames != 1:
            raise SeriesError(f"single-frame CT object declares {h.number_of_frames} frames",
                              series_uid=series.series_uid, path=h.source)
        geom = SliceGeom(h.source, h.sop_instance_uid, 0, h.position, h.orientation,
                         h.pixel_spacing, h.rows or 0, h.columns or 0)
        out.append(_Slice(h, 0, geom, h.rescale_slope, h.rescale_intercept))
    return out


def _read_member_dataset(h: Header, stop_before_pixels: bool = False) -> pydicom.Dataset:
    import io

    with zipfile.ZipFile(h.path) as zf:
        data = zf.read(h.member or "")
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)


def _check_pixel_format(h: Header) -> np.dtype[Any]:
    if h.samples_per_pixel not in (None, 1):
        raise PixelDataError(f"SamplesPerPixel {h.samples_per_pixel}: CT must be grayscale",
                             path=h.source)
    if h.photometric not in ("", "MONOCHROME2", "MONOCHROME1"):
        raise PixelDataError(f"PhotometricInterpretation {h.photometric} is not monochrome",
                             path=h.source)
    key = (h.bits_allocated or 16, h.pixel_representation or 0)
    if key not in _DTYPES:
        raise PixelDataError(f"BitsAllocated {key[0]} is not supported", path=h.source)
    if not h.rows or not h.columns:
        raise PixelDataError("Rows/Columns missing or zero", path=h.source)
    return np.dtype(_DTYPES[key]).newbyteorder("<")


def _decode_file(path: str, member: str | None) -> npt.NDArray[Any]:
    """Decode the stored values of all frames (no rescale); runs in worker processes."""
    try:
        if member is None:
            ds = pydicom.dcmread(path)
        else:
            import io

            with zipfile.ZipFile(path) as zf:
                ds = pydicom.dcmread(io.BytesIO(zf.read(member)))
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types on corrupt data
        name = f"{path}!{member}" if member else path
        raise PixelDataError(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})",
                             path=name) from None
    return np.asarray(arr)


def _read_native(h: Header, targets: list[tuple[int, int]], stack: npt.NDArray[Any]) -> None:
    """Read uncompressed frames straight into ``stack[n]`` for each ``(n, frame)``."""
    rows, cols = stack.shape[1], stack.shape[2]
    frame_bytes = rows * cols * stack.dtype.itemsize
    need = frame_bytes * h.number_of_frames
    if h.pixel_length is None or h.pixel_offset is None or h.pixel_length < need:
        raise PixelDataError(
            f"PixelData holds {h.pixel_length} bytes, {need} expected for "
            f"{h.number_of_frames} frame(s) of {rows}x{cols}", path=h.source)
    try:
        if h.member is None:
            with open(h.path, "rb", buffering=0) as fh:
                for n, f in targets:
                    fh.seek(h.pixel_offset + f * frame_bytes)
                    got = fh.readinto(memoryview(stack[n]).cast("B"))
                    if got != frame_bytes:
                        raise PixelDataError("file ends inside PixelData", path=h.source)
        else:
            with zipfile.ZipFile(h.path) as zf:
                data = zf.read(h.member)
            for n, f in targets:
                start = h.pixel_offset + f * frame_bytes
                stack[n] = np.frombuffer(data, dtype=stack.dtype, count=rows * cols,
                                         offset=start).reshape(rows, cols)
    except OSError as exc:
        raise UnreadableFileError(f"cannot read pixel data ({exc.strerror})",
                                  path=h.source) from None


def _fix_bits(stack: npt.NDArray[Any], bits: int, alloc: int, signed: bool,
              lo: int, hi: int) -> bool:
    """Mask or sign-extend, in place, values stored in fewer bits than allocated (as pydicom).

    ``lo``/``hi`` are the stack's extremes; returns True if anything was changed.
    """
    if bits >= alloc:
        return False
    if signed:
        if -(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1:
            return False
        shift = alloc - bits
        np.left_shift(stack, shift, out=stack)
        np.right_shift(stack, shift, out=stack)
        return True
    if hi < (1 << bits):
        return False
    np.bitwise_and(stack, (1 << bits) - 1, out=stack)
    return True


def _read_all(slices: list[_Slice], cfg: AssemblyConfig
              ) -> tuple[npt.NDArray[Any], tuple[int, int] | None]:
    """Stored values for every slice, in the order given: shape (n, rows, cols).

    Also returns the stack's (min, max), or None if bit fixing changed the values.
    """
    first = slices[0].header
    dtype = _check_pixel_format(first)
    for sl in slices[1:]:
        if _check_pixel_format(sl.header) != dtype:
            raise PixelDataError("BitsAllocated/PixelRepresentation differ within the series",
                                 path=sl.header.source)
    rows, cols = int(first.rows or 0), int(first.columns or 0)
    if max(rows, cols) > cfg.max_matrix:
        raise PixelDataError(f"matrix {rows}x{cols} exceeds assembly.max_matrix "
                             f"({cfg.max_matrix})", path=first.source)
    frame_bytes = rows * cols * dtype.itemsize
    for sl in slices:
        h = sl.header
        if h.is_native and (h.pixel_length or 0) < frame_bytes * h.number_of_frames:
            raise PixelDataError(
                f"PixelData holds {h.pixel_length} bytes, {frame_bytes * h.number_of_frames} "
                f"expected for {h.number_of_frames} frame(s) of {rows}x{cols}", path=h.source)
    # Group the planes by file so each file is opened (and decoded) once.
    by_file: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
    headers: dict[tuple[str, str | None], Header] = {}
    for n, sl in enumerate(slices):
        key = (sl.header.path, sl.header.member)
        by_file.setdefault(key, []).append((n, sl.frame))
        headers[key] = sl.header
    compressed = [k for k in by_file if not headers[k].is_native]
    stack = np.empty((len(slices), rows, cols), dtype=dtype)
    native_bits: dict[int, list[int]] = {}
    for key, items in by_file.items():
        h = headers[key]
        if h.is_native:
            _read_native(h, items, stack)
            bits = h.bits_stored or h.bits_allocated or 16
            native_bits.setdefault(bits, []).extend(n for n, _ in items)
    if compressed:
        workers = min(cfg.decode_workers, len(compressed))
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                decoded = list(pool.map(_decode_file, [k[0] for k in compressed],
                                        [k[1] for k in compressed]))
        else:
            decoded = [_decode_file(p, m) for p, m in compressed]
        for key, arr in zip(compressed, decoded, strict=True):
            h = headers[key]
            arr = arr.reshape((-1, rows, cols)) if arr.ndim in (2, 3) else arr
            if arr.shape[1:] != (rows, cols) or arr.shape[0] != h.number_of_frames:
                raise PixelDataError(
                    f"decoded pixel data has shape {arr.shape}, expected "
                    f"{h.number_of_frames}x{rows}x{cols}", path=h.source)
            for n, f in by_file[key]:
                stack[n] = arr[f].astype(dtype, copy=False)
    # One min/max pass serves the bit check here and the rescale after (when nothing changed).
    extremes: tuple[int, int] | None = (int(stack.min()), int(stack.max()))
    alloc = dtype.itemsize * 8
    for bits, idx in native_bits.items():
        if bits >= alloc or extremes is None:
            continue
        part = stack if len(idx) == len(slices) else stack[idx]
        if _fix_bits(part, bits, alloc, dtype.kind == "i", *extremes):
            if part is not stack:
                stack[idx] = part
            extremes = None  # values changed: let the rescale measure them again
    return stack, extremes


def _to_hu(stack: npt.NDArray[Any], slopes: npt.NDArray[np.float64],
           intercepts: npt.NDArray[np.float64],
           extremes: tuple[int, int] | None = None) -> npt.NDArray[Any]:
    """Apply RescaleSlope/Intercept once, vectorised; int16 when exact, float32 otherwise.

    ``extremes`` is the stack's (min, max) if already known.
    """
    if np.all(slopes == 1.0) and np.all(intercepts == np.rint(intercepts)):
        smin, smax = extremes if extremes is not None else (int(stack.min()), int(stack.max()))
        lo = smin + int(intercepts.min())
        hi = smax + int(intercepts.max())
        if lo >= -32768 and hi <= 32767:
            if stack.dtype == np.int16 or (stack.dtype == np.uint16 and smax < 32768):
                hu = stack.view(np.int16)
            else:
                hu = stack.astype(np.int16)
            if np.all(intercepts == intercepts[0]):
                hu += np.int16(intercepts[0])
            else:
                hu += intercepts.astype(np.int16)[:, None, None]
            return hu
    out = stack.astype(np.float32)
    out *= slopes.astype(np.float32)[:, None, None]
    out += intercepts.astype(np.float32)[:, None, None]
    if not np.isfinite(out).all():
        raise PixelDataError("RescaleSlope/RescaleIntercept give values outside float32 range")
    return out


def _merge_duplicates(stack: npt.NDArray[Any], plan: GeometryPlan, slices: list[_Slice],
                      series_uid: str) -> list[int]:
    """Check duplicate planes are identical; return the positions (in ``plan.order``) kept."""
    pos_in_order = {idx: n for n, idx in enumerate(plan.order)}
    drop: set[int] = set()
    for group in plan.duplicates:
        ref = pos_in_order[group[0]]
        for other in group[1:]:
            o = pos_in_order[other]
            if not np.array_equal(stack[ref], stack[o]):
                raise DuplicateSliceError(
                    "two slices share one position but their pixels differ; cannot choose",
                    series_uid=series_uid, path=slices[other].header.source)
            drop.add(o)
    return [n for n in range(len(plan.order)) if n not in drop]


def assemble(series: SeriesIndex, config: DicomIOConfig | None = None) -> Volume:
    """Build the HU :class:`Volume` of one indexed series.

    Raises:
        SeriesError subclasses for geometry problems, PixelDataError, UnreadableFileError.
    """
    cfg = (config or DicomIOConfig()).assembly
    slices = _slices(series)
    if not slices:
        raise SeriesError("series has no image planes", series_uid=series.series_uid)
    h0 = series.first
    fallback = h0.spacing_between_slices or h0.slice_thickness
    plan = plan_geometry([s.geom for s in slices], cfg, series.series_uid, fallback)
    ordered = [slices[i] for i in plan.order]
    raw, extremes = _read_all(ordered, cfg)
    slopes = np.asarray([s.slope for s in ordered], dtype=np.float64)
    intercepts = np.asarray([s.intercept for s in ordered], dtype=np.float64)
    hu = _to_hu(raw, slopes, intercepts, extremes)
    if plan.duplicates:
        # Compared in HU: equal stored values with different rescale are different images.
        keep = _merge_duplicates(hu, plan, slices, series.series_uid)
        hu = hu[keep]
        ordered = [ordered[n] for n in keep]
    flags = list(plan.flags)
    if plan.resample:
        arr, affine, padded = resample_stack(hu.astype(np.float32, copy=False), plan,
                                             cfg.pad_hu)
        if padded > 0:
            flags.append(Flag("padded_outside_slab",
                              f"{padded:.1%} of the resampled grid lies outside the acquired "
                              f"slab and holds {cfg.pad_hu} HU"))
    else:
        arr, affine = hu, plain_affine(plan)
    header_tilt = h0.gantry_tilt or 0.0
    if abs(header_tilt) > cfg.tilt_tol_deg and plan.tilt_deg <= cfg.tilt_tol_deg:
        flags.append(Flag("gantry_tilt_header_only",
                          f"GantryDetectorTilt says {header_tilt} deg but slice positions show "
                          "no shear"))
    if any(s.header.photometric == "MONOCHROME1" for s in ordered):
        flags.append(Flag("monochrome1", "PhotometricInterpretation MONOCHROME1 (unusual for CT)"))
    uids = tuple(s.header.sop_instance_uid + (f"#{s.frame + 1}"
                                              if s.header.number_of_frames > 1 else "")
                 for s in ordered)
    prov = Provenance(
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        frame_of_reference_uid=h0.frame_of_reference_uid,
        instance_uids=uids,
        source_files=tuple(dict.fromkeys(s.header.source for s in ordered)),
        transfer_syntaxes=tuple(sorted({s.header.transfer_syntax for s in ordered})),
        flags=tuple(flags),
        tilt_deg=plan.tilt_deg,
        resampled=plan.resample,
    )
    log.info("assembled series (%d planes -> shape %s, %d flags)", len(ordered),
             arr.shape, len(flags))
    return Volume(arr, affine, prov)


def load_volume(path: str | Path, series_uid: str | None = None,
                config: DicomIOConfig | None = None) -> Volume:
    """Index ``path``, choose the diagnostic series (or ``series_uid``) and assemble it.

    Raises:
        NoDiagnosticSeriesError: nothing passes the selection rules.
        AmbiguousInputError: several studies and no ``series_uid``.
        SeriesNotFoundError: ``series_uid`` is not in the input.
    """
    from dicom_io.index import scan
    from dicom_io.select import select_single

    cfg = config or DicomIOConfig()
    index = scan(path)
    if series_uid is not None:
        from dicom_io.errors import SeriesNotFoundError

        series = index.series(series_uid)
        if series is None:
            raise SeriesNotFoundError(f"series {series_uid} is not in the input", path=path)
    else:
        series = select_single(index, cfg.selection)
    return assemble(series, cfg)


def read_source(source: str) -> bytes:
    """The bytes of one of :attr:`Provenance.source_files`: a file, or a zip archive's member
    named ``archive.zip!member`` (the first ``!`` after which the prefix is a zip file).

    Raises:
        UnreadableFileError: the file or member cannot be read.
    """
    from dicom_io.errors import UnreadableFileError

    if Path(source).is_file():
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise UnreadableFileError(f"cannot read the file ({exc.strerror})",
                                      path=source) from None
    at = source.find("!")
    while at != -1:
        archive, member = source[:at], source[at + 1:]
        if Path(archive).is_file() and zipfile.is_zipfile(archive):
            try:
                with zipfile.ZipFile(archive) as zf:
                    return zf.read(member)
            except (KeyError, zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                raise UnreadableFileError(f"cannot read the archive member ({exc})",
                                          path=source) from None
        at = source.find("!", at + 1)
    raise UnreadableFileError("no such file or archive member", path=source)


__all__ = ["Provenance", "Volume", "assemble", "load_volume", "read_source"]
